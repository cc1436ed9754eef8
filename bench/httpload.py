"""HTTP/1.1 load worker: keep-alive connections that each send one POST after another.

Started by ``bench.publish_api`` as ``python -m bench.httpload``; reads one JSON :class:`Job` line
on stdin and writes one JSON :class:`Done` line on stdout. Each connection writes a request (bodies
taken in turn from ``bodies``), reads the whole response, and sends the next; only responses that
complete inside the measured window (after ``warmup`` seconds, for ``duration`` seconds) count.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter

import msgspec

from bench import stats


class Job(msgspec.Struct, frozen=True):
    host: str
    port: int
    path: str
    api_key: str
    bodies: list[str]
    connections: int
    warmup: float
    duration: float
    cpus: list[int]


class Done(msgspec.Struct, frozen=True):
    requests: int
    """Responses completed inside the window."""
    statuses: dict[str, int]
    errors: dict[str, int]
    seconds: float
    latency_ms: dict[str, float | int]
    sample_status_body: str


def _requests(job: Job) -> list[bytes]:
    out = []
    for body in job.bodies:
        raw = body.encode()
        head = (
            f"POST {job.path} HTTP/1.1\r\nHost: {job.host}:{job.port}\r\n"
            f"Authorization: Bearer {job.api_key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(raw)}\r\n\r\n"
        )
        out.append(head.encode() + raw)
    return out


async def _run(job: Job) -> Done:
    reqs = _requests(job)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    start, end = t0 + job.warmup, t0 + job.warmup + job.duration
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    lat_ns: list[int] = []
    sample = [""]

    async def conn(index: int) -> None:
        reader, writer = await asyncio.open_connection(job.host, job.port, limit=2**22)
        i = index
        try:
            while loop.time() < end:
                req = reqs[i % len(reqs)]
                i += 1
                t = time.perf_counter_ns()
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                status = head[9:12].decode()
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                done = loop.time()
                if start <= done < end:
                    statuses[status] += 1
                    lat_ns.append(time.perf_counter_ns() - t)
                    if status not in ("200", "202") and not sample[0]:
                        sample[0] = f"{status} {body[:300]!r}"
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors[type(exc).__name__] += 1
        finally:
            writer.close()

    await asyncio.gather(*(conn(i) for i in range(job.connections)))
    ms = [t / 1e6 for t in lat_ns]
    return Done(
        requests=sum(statuses.values()),
        statuses=dict(statuses),
        errors=dict(errors),
        seconds=job.duration,
        latency_ms=stats.summary(ms),
        sample_status_body=sample[0],
    )


def main() -> None:
    job = msgspec.json.decode(sys.stdin.buffer.readline(), type=Job)
    if job.cpus:
        os.sched_setaffinity(0, job.cpus)
    try:
        import uvloop  # noqa: PLC0415 (optional speed-up)
    except ImportError:
        done = asyncio.run(_run(job))
    else:
        done = uvloop.run(_run(job))
    sys.stdout.buffer.write(msgspec.json.encode(done) + b"\n")
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
