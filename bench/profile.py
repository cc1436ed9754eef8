"""Optional sampling profile of the server during one benchmark phase, with ``py-spy``.

py-spy runs in non-blocking mode (it does not stop the server to sample it) on the CPUs of the
benchmark, and writes a flame graph when the phase ends. Without py-spy installed the profile is
skipped with a note.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path


def py_spy_executable() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    if local.exists():
        return str(local)
    return shutil.which("py-spy")


class Profile:
    """A running ``py-spy record``; :meth:`stop` ends it and returns the flame graph path."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, log: Path) -> None:
        self.proc = proc
        self.out = out
        self.log = log

    @classmethod
    def start(
        cls, pids: list[int], out: Path, fmt: str = "flamegraph", rate: int = 200
    ) -> Profile | None:
        exe = py_spy_executable()
        if exe is None or not pids:
            return None
        log = out.with_suffix(".py-spy.log")
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                [exe, "record", "--nonblocking", "--rate", str(rate), "--format", fmt,
                 "--output", str(out), "--pid", str(pids[0]),
                 *(["--subprocesses"] if len(pids) > 1 else [])],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        return cls(proc, out, log)

    def stop(self, grace: float = 30.0) -> Path | None:
        """Ask py-spy to finish (SIGINT), wait for the flame graph; ``None`` if it wrote none."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.out if self.out.exists() else None
