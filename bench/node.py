"""The node (or nodes) under test as one run sees them: URLs, credentials, PIDs, metrics."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from bench import procstat, server, stats
from bench.api import ApiClient
from bench.options import Options
from bench.report import log
from bench.workers import WorkerGroup

DISTURBED_SHARE = 0.10
QUIET_PROBE_S = 0.3


@dataclass
class Node:
    """What the run talks to, however it was obtained."""

    client_urls: list[str]
    internal_urls: list[str]
    api_key: str | None
    token_secret: str | None
    root_pids: list[int]
    include_children: bool
    started: server.StartedServer | None = None
    token_private_key: str | None = None
    """PEM private key the clients mint RS256 / ES256 tokens with (the node has its public key)."""
    helper_pids: list[int] = field(default_factory=list)
    """Processes of the system under test that are not the node (e.g. its redis-server): their
    CPU time is not counted as disturbance, nor as the server's."""

    def pids(self) -> list[int]:
        pids = [p for p in self.root_pids if procstat.alive(p)]
        if self.include_children:
            for pid in list(pids):
                pids.extend(procstat.descendants(pid))
        return sorted(set(pids))


async def scrape(node: Node) -> stats.Samples:
    """Merge ``/metrics`` of every internal URL (values of the same series are listed apart)."""
    merged: stats.Samples = {}
    for url in node.internal_urls:
        try:
            async with ApiClient(url, None, size=1) as api:
                resp = await api.get("/metrics")
        except OSError as exc:
            log(f"GET {url}/metrics failed: {exc}")
            continue
        if resp.status != 200:
            log(f"GET {url}/metrics: HTTP {resp.status}")
            continue
        for name, values in stats.parse_metrics(resp.body.decode()).items():
            merged.setdefault(name, []).extend(values)
    return merged


async def wait_quiet(node: Node, group: WorkerGroup, limit_s: float) -> float:
    """Wait (up to ``limit_s``) until other processes use less than :data:`DISTURBED_SHARE`
    of a CPU over a short probe; return the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        window = procstat.Window(node.pids(), group.pids, node.helper_pids)
        await asyncio.sleep(QUIET_PROBE_S)
        other = window.close()["other_cpu_seconds"]
        if isinstance(other, float) and other < DISTURBED_SHARE * QUIET_PROBE_S:
            break
    return time.monotonic() - start


def key_pair(algorithm: str) -> tuple[str, str]:
    """A new (private, public) PEM pair for ``algorithm``: RSA 2048 for RS256, P-256 for ES256."""
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if algorithm == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    private_pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    public_pem = (
        private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    )
    return private_pem, public_pem


async def attach_or_start(opts: Options) -> Node:
    if not opts.start_server:
        if not opts.server_pids:
            log("no --server-pid: memory and CPU figures will be missing")
        if opts.pin_server:
            for pid in opts.server_pids:
                procstat.pin(pid, opts.server_cpus)
        return Node(
            opts.client_urls,
            opts.internal_urls,
            opts.api_key,
            opts.token_secret,
            opts.server_pids,
            opts.include_children,
            helper_pids=opts.helper_pids,
        )
    secret = opts.token_secret or secrets.token_urlsafe(32)
    api_key = opts.api_key or secrets.token_urlsafe(24)
    env = {
        "PUSHSVC_API_KEYS": api_key,
        "PUSHSVC_TOKEN_SECRET": secret,
        "PUSHSVC_HEARTBEAT": f"{opts.heartbeat:g}",
        **opts.server_env,
    }
    private_key = None
    if opts.token_algorithm != "HS256":
        private_key, public_key = key_pair(opts.token_algorithm)
        public_path = opts.json_path.with_suffix(".token-keys.pem")
        public_path.parent.mkdir(parents=True, exist_ok=True)
        public_path.write_text(public_key)
        env["PUSHSVC_TOKEN_PUBLIC_KEYS"] = str(public_path)
    log_path = opts.json_path.with_suffix(".server.log")
    started = server.start(
        opts.server_cmd, env, opts.server_cpus, log_path, opts.server_args, opts.server_workers
    )
    log(f"started server pid {started.pid}: {' '.join(started.command)} (log {log_path})")
    node = Node(
        [started.client_url],
        started.internal_urls,
        api_key,
        secret,
        [started.pid],
        opts.include_children,
        started,
        helper_pids=opts.helper_pids,
        token_private_key=private_key,
    )
    try:
        ready = await server.wait_ready(started, 60.0)
    except BaseException:
        started.stop()
        raise
    log(f"server ready after {ready:.1f} s")
    return node
