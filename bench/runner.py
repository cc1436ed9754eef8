"""Shared pieces of the benchmarks that drive ``bench.fanout`` or their own nodes: running a fan-out
run as a child process and reading its JSON, which code the server runs, and the run's header.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson

from bench import procstat, provenance
from bench.report import log
from bench.workers import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def code_env(server_code: Path | None) -> dict[str, str]:
    """Environment that makes a server import ``pushsvc`` and ``cli`` from ``server_code`` (a copy
    of the source tree, e.g. ``git archive`` of a commit) instead of the working tree."""
    if server_code is None:
        return {}
    return {"PYTHONPATH": str(server_code.resolve()), "PYTHONSAFEPATH": "1"}


def header(name: str, label: str, params: dict[str, object]) -> dict[str, object]:
    """The common top of every result document: machine, code, parameters."""
    return {
        "benchmark": name,
        "label": label,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": procstat.machine_info(),
        "code": {**provenance.git_state(REPO_ROOT), "packages": provenance.package_versions()},
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in params.items()},
    }


def split_fanout_args(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """``argv`` (default: this command line) split at ``--``: this tool's arguments, and those it
    passes on to every ``bench.fanout`` run."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        return args, []
    cut = args.index("--")
    return args[:cut], args[cut + 1 :]


def run_fanout(args: list[str], json_path: Path, timeout: float) -> dict[str, object]:
    """Run ``python -m bench.fanout ARGS --json JSON_PATH`` (its table and log go to our stderr)
    and return its result document with ``exit_status`` added."""
    cmd = [sys.executable, "-m", "bench.fanout", *args, "--json", str(json_path)]
    log(f"running: {' '.join(cmd)}")
    try:
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, stdout=sys.stderr, check=False, timeout=timeout + 120
        )
        status: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        status = None
    if not json_path.exists():
        return {"exit_status": status, "notes": ["bench.fanout wrote no result"]}
    doc = orjson.loads(json_path.read_bytes())
    if not isinstance(doc, dict):
        return {"exit_status": status, "notes": ["bench.fanout wrote no JSON object"]}
    doc["exit_status"] = status
    return doc


def dig(doc: object, *path: str) -> object:
    """``doc[p0][p1]…`` or ``None`` where a key is missing."""
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def num(value: object) -> float:
    """A JSON number as a float, NaN otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return float("nan")


def raise_fd_limit() -> None:
    import resource  # noqa: PLC0415 (POSIX only)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pin_self(cpus: list[int]) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
