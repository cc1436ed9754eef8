"""Fan-out benchmark: N WebSocket clients on one node (or several), then broadcasts and
user-targeted messages.

Run from the repository root::

    python -m bench.fanout --start-server -n 19000
    python -m bench.fanout -n 2000 --client-url ws://127.0.0.1:8080/ws \\
        --internal-url http://127.0.0.1:8081 --api-key KEY --token-secret SECRET --server-pid PID

It reports server RSS per connection, server CPU per handshake, publish → last client latency of a
broadcast, publish → client latency of user-targeted messages and the worst GC pause, as a table
on stdout and as JSON (``bench/results/fanout-<UTC time>.json`` unless ``--json`` says otherwise).

Method. Clients run in ``--client-procs`` worker processes (``bench.wsload``) pinned to
``--client-cpus``, each binding its connections to its own source address (127.0.0.2, .3, …).
Server memory is ``VmRSS`` (summed over the server PIDs and their children) after the ramp minus
before, one settle period after each; CPU is the server's utime+stime over the ramp and the settle
after it. Each divided by the connections that got ``welcome``. Broadcast latency runs from
``time.time_ns()`` just before the publish request is written to the arrival of the frame at each
client, as the client's event loop hands over the bytes (same machine clock). The worst GC pause is
the node's own ``pushsvc_gc_pause_max_seconds`` gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench import procstat, provenance
from bench.api import ApiClient
from bench.broadcast import broadcast_phase
from bench.common import Close, GetStatus, Status, clients_at_end
from bench.node import Node, attach_or_start, scrape
from bench.options import Options, parse_args
from bench.phases import mint_over_http, ramp_phase, setups, user_phase
from bench.profile import Profile
from bench.report import Results, Row, log, print_table, rows_json, write_json
from bench.servermetrics import GcTrail, gc_figures, server_view
from bench.workers import REPO_ROOT, WorkerGroup


@contextlib.asynccontextmanager
async def phase(
    name: str, opts: Options, node: Node, gc: GcTrail, res: Results
) -> AsyncIterator[None]:
    """Profile phase ``name`` if asked to, and record the server's collections during it."""
    prof = None
    if opts.profile == name:
        ext = {"flamegraph": "svg", "speedscope": "speedscope.json", "raw": "txt"}[
            opts.profile_format
        ]
        out = opts.json_path.with_suffix(f".{name}.{ext}")
        prof = Profile.start(node.pids(), out, opts.profile_format)
        if prof is None:
            res.notes.append("py-spy not found: no profile taken")
        else:
            log(f"profiling the server during {name} with py-spy")
    try:
        yield
    finally:
        if prof is not None:
            path = prof.stop()
            res.doc["profile"] = str(path) if path else None
            log(f"profile: {path or f'none written, see {prof.log}'}")
        gc.record(name, await scrape(node))


async def measure(opts: Options, node: Node, res: Results) -> None:
    if node.internal_urls and not node.api_key:
        log("no --api-key: publishing will probably be refused")
    async with ApiClient(node.internal_urls[0], node.api_key, size=32) as api:
        tokens = None
        if node.token_secret is None and node.token_private_key is None:
            tokens = await mint_over_http(api, opts)
        group = await WorkerGroup.start(setups(opts, node, tokens))
        try:
            res.doc["affinity"] = {
                "server": {p: procstat.affinity(p) for p in node.pids()},
                "clients": {p: procstat.affinity(p) for p in group.pids},
                "benchmark": procstat.affinity(os.getpid()),
            }
            overlap = {c for p in node.pids() for c in procstat.affinity(p)} & set(opts.client_cpus)
            if overlap:
                res.notes.append(f"server and clients share CPUs {sorted(overlap)}")
            metrics_before = await scrape(node)
            gc = GcTrail(metrics_before)
            async with phase("ramp", opts, node, gc, res):
                connected = await ramp_phase(opts, node, group, res)
            if not connected:
                raise RuntimeError("no connection was opened")
            async with phase("broadcast", opts, node, gc, res):
                await broadcast_phase(opts, node, group, api, res)
            async with phase("user", opts, node, gc, res):
                await user_phase(opts, node, group, api, connected, res)
            res.doc["gc_by_phase"] = gc.phases
            collections, seconds = gc.seconds("ramp")
            if collections:
                ok = max(1, len(connected))
                res.rows.append(
                    Row(
                        "server GC during the ramp",
                        f"{collections:.0f} collections, {seconds * 1e3:.0f} ms "
                        f"({seconds * 1e6 / ok:.0f} µs per handshake)",
                    )
                )
            metrics_after = await scrape(node)
            gc_figures(metrics_before, metrics_after, res)
            res.doc["server_metrics"] = server_view(metrics_before, metrics_after)
            clients = clients_at_end(await group.call(GetStatus(), Status))
            res.doc["clients"] = clients
            if closed := clients["closed_during_run"]:
                res.notes.append(f"connections closed during the run: {closed}")
            pids = node.pids()
            if pids:
                res.doc["memory_at_end_kib"] = procstat.sample(pids).rss_kib
            await group.call(Close(timeout=10.0), Status)
        finally:
            await group.stop(15.0)


async def run(opts: Options) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if opts.client_cpus:
        os.sched_setaffinity(0, opts.client_cpus)
    res = Results()
    res.doc.update(
        {
            "benchmark": "fanout",
            "label": opts.label,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": procstat.machine_info(),
            "code": {**provenance.git_state(REPO_ROOT), "packages": provenance.package_versions()},
            "parameters": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in asdict(opts).items()
                if k not in ("api_key", "token_secret")
            },
        }
    )
    node: Node | None = None
    status = 0
    try:
        async with asyncio.timeout(opts.timeout):
            node = await attach_or_start(opts)
            res.doc["server"] = {
                "command": node.started.command if node.started else None,
                "client_urls": node.client_urls,
                "internal_urls": node.internal_urls,
                "pids": node.pids(),
            }
            await measure(opts, node, res)
    except TimeoutError:
        res.notes.append(f"stopped by the global timeout of {opts.timeout:g} s")
        status = 2
    except Exception as exc:
        res.notes.append(f"failed: {exc!r}")
        log(f"failed: {exc!r}")
        status = 2
    finally:
        if node is not None and node.started is not None:
            code = node.started.stop(15.0)
            log(f"server stopped (exit status {code})")
            res.doc["server_log"] = str(node.started.log_path)
    res.doc["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    res.doc["table"] = rows_json(res.rows)
    res.doc["notes"] = res.notes
    write_json(opts.json_path, res.doc)
    title = (
        f"pushsvc fan-out · N={opts.connections:,} · "
        f"{res.doc['machine']['cpu_model'] if isinstance(res.doc['machine'], dict) else ''}"
    )
    print_table(title, res.rows)
    for note in res.notes:
        print(f"note: {note}")
    print(f"JSON: {opts.json_path}")
    if status == 0 and opts.check and any(r.met is False for r in res.rows):
        status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: PLC0415 (optional speed-up)

        return uvloop.run(run(opts))
    return asyncio.run(run(opts))


if __name__ == "__main__":
    sys.exit(main())
