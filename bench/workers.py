"""Parent side of the load workers: spawn ``python -m bench.wsload`` processes and talk to them.

Each worker gets its commands on stdin and answers on stdout (see ``bench.common``); its stderr
goes to the benchmark's stderr. Closing a worker's stdin makes it close its connections and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import msgspec

from bench import procstat
from bench.common import Command, Ready, Reply, Setup, WorkerFailed

REPO_ROOT = Path(__file__).resolve().parent.parent
LINE_LIMIT = 256 * 1024 * 1024

R = TypeVar("R", bound=Reply)


async def spawn_module(module: str, limit: int) -> asyncio.subprocess.Process:
    """Start ``python -m module`` from the repository root, stdin and stdout piped (lines up to
    ``limit`` bytes), stderr inherited; it is killed when this process dies."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
        limit=limit,
        preexec_fn=procstat.die_with_parent,  # prctl only, safe before exec
    )


async def stop_process(proc: asyncio.subprocess.Process, grace: float) -> None:
    """Close ``proc``'s stdin (it exits at EOF), wait up to ``grace`` seconds, then kill it by
    its PID and reap it."""
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        async with asyncio.timeout(grace):
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


class WorkerError(Exception):
    """A load worker failed, exited early, or answered out of turn."""


class WorkerProc:
    """One running load worker process."""

    _decoder = msgspec.json.Decoder(Reply)

    def __init__(self, index: int, proc: asyncio.subprocess.Process) -> None:
        self.index = index
        self.proc = proc

    @classmethod
    async def spawn(cls, index: int) -> WorkerProc:
        return cls(index, await spawn_module("bench.wsload", LINE_LIMIT))

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def send(self, cmd: Command) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(msgspec.json.encode(cmd) + b"\n")
        await stdin.drain()

    async def recv(self, kind: type[R]) -> R:
        stdout = self.proc.stdout
        assert stdout is not None
        line = await stdout.readline()
        if not line:
            code = await self.proc.wait()
            raise WorkerError(f"worker {self.index} exited with {code}")
        reply = self._decoder.decode(line)
        if isinstance(reply, WorkerFailed):
            raise WorkerError(f"worker {self.index}: {reply.error}")
        if not isinstance(reply, kind):
            raise WorkerError(f"worker {self.index} answered {type(reply).__name__}")
        return reply

    async def call(self, cmd: Command, kind: type[R]) -> R:
        await self.send(cmd)
        return await self.recv(kind)

    async def stop(self, grace: float) -> None:
        """Close stdin, wait up to ``grace`` seconds, then kill this worker (by its PID)."""
        await stop_process(self.proc, grace)


class WorkerGroup:
    """All load workers of a run; every call goes to all of them concurrently."""

    def __init__(self, workers: list[WorkerProc]) -> None:
        self.workers = workers

    @classmethod
    async def start(cls, setups: list[Setup]) -> WorkerGroup:
        """Spawn one worker per setup and wait until each has minted its tokens."""
        group = cls([])
        try:
            for setup in setups:
                group.workers.append(await WorkerProc.spawn(setup.worker))
            await group.call_each(setups, Ready)
        except BaseException:
            await group.stop(2.0)
            raise
        return group

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    async def call_each(self, cmds: Sequence[Command], kind: type[R]) -> list[R]:
        """Send ``cmds[i]`` to worker ``i``; return the replies in worker order."""
        pairs = zip(self.workers, cmds, strict=True)
        return list(await asyncio.gather(*(w.call(c, kind) for w, c in pairs)))

    async def call(self, cmd: Command, kind: type[R]) -> list[R]:
        return await self.call_each([cmd] * len(self.workers), kind)

    async def stop(self, grace: float) -> None:
        await asyncio.gather(*(w.stop(grace) for w in self.workers), return_exceptions=True)
