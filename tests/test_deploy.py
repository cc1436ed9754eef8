"""The deployment files in ``deploy/`` against the real programs that read them.

nginx (Debian ``nginx-light``): the shipped config, rendered with test ports, paths and a
certificate made by openssl, passes ``nginx -t``; then a real nginx runs it in front of real nodes:
a WebSocket over wss, the redirect of plain http, the internal API and its allow-list, the refused
paths, and the per-address connection and request limits are checked through it.
The environment example must list every setting; the systemd units are bounded (memory, tasks,
no core dumps), read their secrets only from their environment file, and are checked with
``systemd-analyze verify`` where that exists.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from pydantic_settings import SettingsConfigDict
from websockets.exceptions import InvalidStatus

from cli.secret_flags import SECRET_FLAGS
from pushsvc.errors import ConfigError
from pushsvc.settings import MonitorSettings, NodeSettings, Settings, SharedSettings
from tests.support import ROOT, UNIT, NodeHandle, free_port, start_node, wait_until
from tests.wire import Wire

DEPLOY = ROOT / "deploy"
NGINX_CONF = DEPLOY / "nginx.conf"
ENV_EXAMPLE = DEPLOY / "pushsvc.env.example"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
PUBLIC_REFUSAL = "not served on the public listener"
# The shipped placeholders a test replaces (each must be in the file, see replace_exactly).
CERTIFICATES = (
    "/etc/ssl/pushsvc/fullchain.pem",
    "/etc/ssl/pushsvc/internal-fullchain.pem",
)
KEYS = ("/etc/ssl/pushsvc/privkey.pem", "/etc/ssl/pushsvc/internal-privkey.pem")
LISTED_SYSTEM = "10.0.30.15"  # a placeholder of the private allow-list


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    assert found, "nginx is not installed (apt-get install nginx-light)"
    return found


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost, made by openssl."""

    cert: Path
    key: Path

    @classmethod
    def make(cls, directory: Path) -> Certificate:
        openssl = shutil.which("openssl")
        assert openssl, "openssl is not installed (scripts/system-deps.sh installs it)"
        cert, key = directory / "cert.pem", directory / "key.pem"
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=30 * UNIT,
        )  # fmt: skip
        return cls(cert, key)

    def trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return Certificate.make(tmp_path_factory.mktemp("pki"))


# -- rendering the shipped config for a test run --------------------------------------------


def replace_exactly(text: str, old: str, new: str) -> str:
    """Replace ``old`` (which must be there) so an edit of the shipped file cannot go unseen."""
    assert old in text, f"the shipped config no longer contains {old!r}"
    return text.replace(old, new)


def with_servers(text: str, upstream: str, addresses: list[str]) -> str:
    """Swap the ``server`` lines of ``upstream`` for ``addresses``, keeping the first's options."""
    block = re.search(rf"upstream {upstream} \{{\n(.*?)\n    \}}", text, re.DOTALL)
    assert block, f"no upstream {upstream} in the shipped config"
    lines = block.group(1).split("\n")
    servers = [i for i, line in enumerate(lines) if re.match(r"\s*server\s+\S+", line)]
    assert servers, f"upstream {upstream} lists no server"
    first = re.match(r"(\s*)server\s+\S+(.*);", lines[servers[0]])
    assert first
    indent, options = first.groups()
    new = [f"{indent}server {address}{options};" for address in addresses]
    kept = [line for i, line in enumerate(lines) if i not in servers]
    at = servers[0]
    body = "\n".join(kept[:at] + new + kept[at:])
    return text[: block.start(1)] + body + text[block.end(1) :]


@dataclass
class Edge:
    """Where a rendered nginx listens and keeps its files."""

    prefix: Path
    certificate: Certificate
    redirect_port: int = field(default_factory=free_port)
    public_port: int = field(default_factory=free_port)
    private_port: int = field(default_factory=free_port)

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def plain(self) -> str:
        return f"http://127.0.0.1:{self.redirect_port}"

    @property
    def public(self) -> str:
        return f"https://127.0.0.1:{self.public_port}"

    @property
    def ws(self) -> str:
        return f"wss://127.0.0.1:{self.public_port}/ws"

    @property
    def private(self) -> str:
        return f"https://127.0.0.1:{self.private_port}"

    def client(self, source: str = "127.0.0.1") -> httpx.Client:
        """An HTTPS client that trusts this edge and connects from ``source``."""
        transport = httpx.HTTPTransport(verify=self.certificate.trust(), local_address=source)
        return httpx.Client(transport=transport, timeout=5 * UNIT)

    async def wire(self, token: str | None, device: str, source: str = "127.0.0.1") -> Wire:
        return await Wire.open(
            self.ws, token, device=device, ssl=self.certificate.trust(), local_addr=(source, 0)
        )

    def argv(self, *extra: str) -> list[str]:
        directives = f"pid {self.prefix}/nginx.pid;"
        return [
            nginx_binary(),
            "-p", f"{self.prefix}/", "-c", str(self.conf), "-e", str(self.prefix / "error.log"),
            "-g", directives, *extra,
        ]  # fmt: skip


def render(
    edge: Edge, clients: list[str], internals: list[str], changes: dict[str, str] | None = None
) -> str:
    """The shipped nginx.conf with test listeners, certificates, upstreams, logs and temp paths,
    then ``changes`` (each old text must be in the file)."""
    text = NGINX_CONF.read_text()
    temp = "".join(
        f"\n    {kind}_temp_path {edge.prefix}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = replace_exactly(text, "\nhttp {", "\nhttp {" + temp)
    text = replace_exactly(text, "listen 80;", f"listen 127.0.0.1:{edge.redirect_port};")
    text = replace_exactly(text, "listen 443 ssl;", f"listen 127.0.0.1:{edge.public_port} ssl;")
    text = replace_exactly(
        text, "listen 10.0.0.5:8443 ssl;", f"listen 127.0.0.1:{edge.private_port} ssl;"
    )
    for cert in CERTIFICATES:
        text = replace_exactly(text, cert, str(edge.certificate.cert))
    for key in KEYS:
        text = replace_exactly(text, key, str(edge.certificate.key))
    text = replace_exactly(text, "/var/www/acme", f"{edge.prefix}/acme")
    text = replace_exactly(text, "/var/log/nginx/", f"{edge.prefix}/")
    text = with_servers(text, "pushsvc_clients", clients)
    text = with_servers(text, "pushsvc_internal", internals)
    for old, new in (changes or {}).items():
        text = replace_exactly(text, old, new)
    return text


def nginx_test(edge: Edge) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        edge.argv("-t"), capture_output=True, text=True, timeout=20 * UNIT, check=False
    )


def directive(block: str, name: str) -> list[str]:
    return re.findall(rf"^\s*{name}\s+([^;]*);", block, re.MULTILINE)


def location(text: str, head: str) -> str:
    """The body of ``location <head> { ... }`` (no nested blocks in the shipped config)."""
    found = re.search(rf"location {re.escape(head)} \{{(.*?)\}}", text, re.DOTALL)
    assert found, f"no location {head}"
    return found.group(1)


def server(text: str, listen: str) -> str:
    """The body of the ``server`` block whose first ``listen`` starts with ``listen``, up to its
    closing brace (the shipped servers' braces sit at four spaces)."""
    found = re.search(rf"\n    server \{{\n((?:(?!\n    \}}).)*?listen {re.escape(listen)}.*?)\n    \}}",
                      text, re.DOTALL)  # fmt: skip
    assert found, f"no server listening on {listen}"
    return found.group(1)


def live(text: str) -> str:
    """``text`` without comments."""
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def seconds(value: str) -> float:
    """An nginx or systemd time value (``120s``, ``2m``, ``30``) in seconds."""
    found = re.fullmatch(r"(\d+)(ms|s|m|h)?", value.strip())
    assert found, f"not a simple time value: {value!r}"
    number, unit = found.groups()
    return float(number) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[unit]


# -- the config as written ------------------------------------------------------------------


def test_upstreams_are_not_sticky_and_balance_by_connections() -> None:
    text = live(NGINX_CONF.read_text())
    for upstream in ("pushsvc_clients", "pushsvc_internal"):
        block = re.search(rf"upstream {upstream} \{{(.*?)\}}", text, re.DOTALL)
        assert block, upstream
        body = block.group(1)
        assert "least_conn;" in body, upstream
        assert directive(body, "zone"), f"{upstream}: least_conn needs a shared zone"
        for sticky in ("ip_hash", "hash", "sticky"):
            assert not directive(body, sticky), f"{upstream} uses {sticky}"


def test_websocket_location_upgrades_and_outlives_the_heartbeat() -> None:
    ws = location(NGINX_CONF.read_text(), "= /ws")
    assert directive(ws, "proxy_pass") == ["http://pushsvc_clients"]
    assert directive(ws, "proxy_http_version") == ["1.1"]
    headers = dict(h.split(None, 1) for h in directive(ws, "proxy_set_header"))
    assert headers["Upgrade"] == "$http_upgrade"
    assert headers["Connection"] == "$connection_upgrade"
    assert {"X-Forwarded-For", "X-Forwarded-Proto", "X-Real-IP", "Host"} <= headers.keys()
    assert directive(ws, "proxy_buffering") == ["off"]
    heartbeat = Settings.model_fields["heartbeat"].default
    # The node writes a ping every heartbeat: only a wedged node is silent for several of them.
    (read,) = directive(ws, "proxy_read_timeout")
    assert seconds(read) >= 3 * heartbeat
    (send,) = directive(ws, "proxy_send_timeout")
    assert seconds(send) >= 3 * heartbeat


def test_every_server_but_the_redirect_speaks_tls_with_marked_placeholders() -> None:
    text = NGINX_CONF.read_text()
    plain = live(server(text, "80;"))
    assert directive(plain, "listen") == ["80"]
    assert "proxy_pass" not in plain  # it reaches no node: redirect (and ACME files) only
    assert "return 301 https://$host$request_uri" in location(plain, "/")
    for listen in ("443 ssl;", "10.0.0.5:8443 ssl;"):
        block = server(text, listen)
        for name in ("ssl_certificate", "ssl_certificate_key"):
            lines = [line for line in block.splitlines() if line.strip().startswith(name + " ")]
            assert len(lines) == 1, (listen, name)
            assert "PLACEHOLDER" in lines[0], lines[0]
        assert all(" ssl" in value for value in directive(live(block), "listen")), listen
    assert directive(live(text), "ssl_protocols") == ["TLSv1.2 TLSv1.3"]


def test_the_public_server_limits_connections_and_rates_per_address() -> None:
    text = live(NGINX_CONF.read_text())
    zones = {
        m.group(2): m.group(1)
        for m in re.finditer(r"limit_(?:conn|req)_zone (\S+) zone=(\w+):", text)
    }
    assert set(zones.values()) == {"$binary_remote_addr"}, zones
    public = server(text, "443 ssl;")
    (conn,) = directive(public, "limit_conn")
    assert conn.split()[0] in zones
    assert directive(public, "limit_conn_status") == ["429"]
    assert directive(public, "limit_req_status") == ["429"]
    for head in ("= /ws", "= /healthz", "^~ /demo/", "^~ /client/", "= /"):
        (limit,) = directive(location(public, head), "limit_req")
        assert limit.split()[0].removeprefix("zone=") in zones, head


def test_the_private_server_allows_loopback_and_listed_private_networks_only() -> None:
    private = server(NGINX_CONF.read_text(), "10.0.0.5:8443 ssl;")
    rules = re.findall(r"^\s*(allow|deny)\s+([^;]+);(.*)$", private, re.MULTILINE)
    assert rules[-1][:2] == ("deny", "all")
    allowed = [(address, comment) for rule, address, comment in rules if rule == "allow"]
    assert {"127.0.0.1", "::1"} <= {address for address, _ in allowed}
    for address, comment in allowed:
        network = ipaddress.ip_network(address)
        assert network.is_loopback or (network.is_private and "PLACEHOLDER" in comment), address
        assert network.num_addresses <= 256 or network.is_loopback, f"{address} is not tight"


def test_shipped_config_passes_nginx_t(tmp_path: Path, certificate: Certificate) -> None:
    edge = Edge(tmp_path, certificate)
    edge.conf.write_text(render(edge, ["127.0.0.1:9", "127.0.0.1:10"], ["127.0.0.1:11"]))
    result = nginx_test(edge)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


# -- a real nginx in front of two real nodes --------------------------------------------------


@dataclass
class Cluster:
    edge: Edge
    nodes: list[NodeHandle]


@contextlib.contextmanager
def nginx_in_front_of(
    nodes: list[NodeHandle], certificate: Certificate, changes: dict[str, str] | None = None
) -> Iterator[Edge]:
    """A real nginx running the shipped config in front of ``nodes``; stopped by its PID."""
    with tempfile.TemporaryDirectory(prefix="pushsvc-nginx-") as tmp:
        edge = Edge(Path(tmp), certificate)
        edge.conf.write_text(
            render(
                edge,
                [f"127.0.0.1:{n.port}" for n in nodes],
                [f"127.0.0.1:{n.internal_port}" for n in nodes],
                changes,
            )
        )
        out = edge.prefix / "nginx.out"
        with out.open("wb") as log:
            proc = subprocess.Popen(edge.argv("-g", "daemon off;"), stdout=log, stderr=log)
        try:
            with edge.client() as client:
                wait_until(lambda: proc.poll() is not None or _answers(client, edge.public))
            assert proc.poll() is None, out.read_text()
            yield edge
        finally:
            proc.send_signal(signal.SIGTERM)  # fast shutdown: open WebSockets are cut
            try:
                proc.wait(10 * UNIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def cluster(certificate: Certificate) -> Iterator[Cluster]:
    # One business system's placeholder becomes a second loopback address the test can use.
    listed = {f"allow {LISTED_SYSTEM};": "allow 127.0.0.3;"}
    with (
        start_node() as a,
        start_node() as b,
        nginx_in_front_of([a, b], certificate, listed) as edge,
    ):
        yield Cluster(edge, [a, b])


def _answers(client: httpx.Client, base: str) -> bool:
    try:
        return client.get(base + "/healthz", timeout=UNIT).status_code == 200
    except httpx.HTTPError:
        return False


async def test_websockets_through_nginx_spread_over_both_nodes(cluster: Cluster) -> None:
    a, b = cluster.nodes
    wires = []
    try:
        for i in range(10):
            # one at a time, so the finally closes what did open
            wires.append(await cluster.edge.wire(a.token(f"spread{i}"), device=f"d{i}"))  # noqa: PERF401
        placed = Counter(w.welcome["node"] for w in wires)
        assert set(placed) == {a.node_id, b.node_id}, placed
        assert min(placed.values()) >= 3, placed  # least_conn with a shared zone: near even
        # Frames flow both ways through the proxy over wss: ping/pong, and a published message.
        await wires[0].send({"type": "ping"})
        assert (await wires[0].recv())["type"] == "pong"
        for wire in (
            wires[0],
            next(w for w in wires if w.welcome["node"] != wires[0].welcome["node"]),
        ):
            holder = a if wire.welcome["node"] == a.node_id else b
            sent = holder.publish(
                {"to": {"users": [wire.welcome["user"]]}, "event": "queue.called", "data": {"n": 1}}
            )
            got = await wire.recv_msg()
            assert got["id"] == sent["id"]
            await wire.ack(got["id"])
    finally:
        for wire in wires:
            await wire.ws.close()


async def test_a_draining_node_sends_its_clients_through_nginx_to_the_other(
    certificate: Certificate,
) -> None:
    """A rolling restart seen from a patient: 1001 from the node, reconnect lands elsewhere."""
    with start_node() as a, start_node() as b, nginx_in_front_of([a, b], certificate) as edge:
        wires = []
        try:
            for i in range(4):
                wires.append(await edge.wire(a.token(f"drain{i}"), device=f"d{i}"))  # noqa: PERF401
            on_a = next(w for w in wires if w.welcome["node"] == a.node_id)
            a.proc.send_signal(signal.SIGTERM)  # drain; the loop stays free to answer the close
            code, _, seen = await on_a.closed()
            assert code == 1001, seen
            assert a.stop() == 0
            back = await edge.wire(b.token(on_a.welcome["user"]), device="d-back")
            wires.append(back)
            assert back.welcome["node"] == b.node_id
        finally:
            for wire in wires:
                await wire.ws.close()


def test_plain_http_only_redirects_to_https(cluster: Cluster) -> None:
    for path in ("/ws", "/demo/?token=x", "/v1/messages", "/healthz"):
        r = httpx.get(cluster.edge.plain + path, timeout=5 * UNIT)
        assert r.status_code == 301, path
        assert r.headers["location"] == "https://127.0.0.1" + path
    r = httpx.post(cluster.edge.plain + "/v1/messages", json={}, timeout=5 * UNIT)
    assert r.status_code == 301  # nothing reaches a node in clear text
    challenge = cluster.edge.prefix / "acme/.well-known/acme-challenge/t0ken"
    challenge.parent.mkdir(parents=True)
    cluster.edge.prefix.chmod(0o755)  # nginx started as root serves files as `user www-data`
    challenge.write_text("t0ken.thumbprint")
    r = httpx.get(cluster.edge.plain + "/.well-known/acme-challenge/t0ken", timeout=5 * UNIT)
    assert (r.status_code, r.text) == (200, "t0ken.thumbprint")


def test_public_side_serves_the_client_routes(cluster: Cluster) -> None:
    with cluster.edge.client() as client:
        public = cluster.edge.public
        r = client.get(public + "/healthz")
        assert (r.status_code, r.json()) == (200, {"status": "ok"})
        assert r.headers["strict-transport-security"].startswith("max-age=")
        r = client.get(public + "/demo/")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        r = client.get(public + "/client/pushsvc.js")
        assert r.status_code == 200
        assert "javascript" in r.headers["content-type"]
        r = client.get(public + "/")
        assert (r.status_code, r.headers["location"].endswith("/demo/")) == (302, True)
        # A plain GET on /ws reaches a node, which says it speaks WebSocket only.
        assert client.get(public + "/ws").status_code == 426


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/messages"),
        ("GET", "/v1/nodes"),
        ("POST", "/v1/tokens"),
        ("GET", "/v1"),
        ("GET", "/metrics"),
        ("GET", "/readyz"),
        ("GET", "/docs"),
        ("GET", "/redoc"),
        ("GET", "/openapi.json"),
        ("POST", "/demo/api/token"),
        ("GET", "/something-else"),
    ],
)
def test_public_side_refuses_the_internal_api(cluster: Cluster, method: str, path: str) -> None:
    a = cluster.nodes[0]
    with cluster.edge.client() as client:
        r = client.request(
            method,
            cluster.edge.public + path,
            headers={"Authorization": f"Bearer {a.api_key}"},
            json={"to": {"users": ["p1"]}, "event": "x", "data": {}, "user": "p1"},
        )
    assert r.status_code == 404
    assert r.json()["error"]["message"] == PUBLIC_REFUSAL  # nginx refused; no node was asked


def test_private_side_balances_the_internal_api(cluster: Cluster) -> None:
    a, b = cluster.nodes
    private = cluster.edge.private
    body = {"to": {"users": ["private1"]}, "event": "lab.ready", "data": {"ok": True}}
    with cluster.edge.client() as client:
        r = client.post(private + "/v1/messages", json=body)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
        key = {"Authorization": f"Bearer {a.api_key}"}
        answered = set()
        for _ in range(6):
            r = client.get(private + "/readyz")
            assert r.status_code == 200
            answered.add(r.json()["node"])
        assert answered == {a.node_id, b.node_id}
        r = client.post(private + "/v1/messages", json=body, headers=key)
        assert r.status_code == 202, r.text
        assert r.json()["id"]
        r = client.get(private + "/metrics")
        assert r.status_code == 404
        assert "internal port" in r.json()["error"]["message"]


def test_private_side_refuses_an_address_not_in_the_allow_list(cluster: Cluster) -> None:
    a = cluster.nodes[0]
    key = {"Authorization": f"Bearer {a.api_key}"}
    body = {"to": {"users": ["private2"]}, "event": "lab.ready", "data": {}}
    with cluster.edge.client("127.0.0.2") as outsider:  # loopback, but not 127.0.0.1
        for method, path in (("GET", "/readyz"), ("POST", "/v1/messages"), ("GET", "/v1/nodes")):
            r = outsider.request(method, cluster.edge.private + path, headers=key, json=body)
            assert r.status_code == 403, path
            assert r.json()["error"]["code"] == "forbidden"
        # The same address reaches the public side: only the private one is fenced.
        assert outsider.get(cluster.edge.public + "/healthz").status_code == 200
    with cluster.edge.client("127.0.0.3") as listed:  # the listed business system
        r = listed.post(cluster.edge.private + "/v1/messages", headers=key, json=body)
        assert r.status_code == 202, r.text


# -- limits per client address ------------------------------------------------------------------

# The shipped limits, made small enough to reach in a test (the directives stay the shipped ones).
SMALL_LIMITS = {
    "limit_conn pushsvc_conn 100;": "limit_conn pushsvc_conn 2;",
    "zone=pushsvc_upgrade:10m rate=2r/s;": "zone=pushsvc_upgrade:10m rate=1r/m;",
    "zone=pushsvc_upgrade burst=30 nodelay;": "zone=pushsvc_upgrade burst=5 nodelay;",
    "zone=pushsvc_static:10m rate=10r/s;": "zone=pushsvc_static:10m rate=1r/m;",
    "zone=pushsvc_static burst=50 nodelay;": "zone=pushsvc_static burst=3 nodelay;",
}


@pytest.fixture(scope="module")
def limited(certificate: Certificate) -> Iterator[Cluster]:
    with start_node() as node, nginx_in_front_of([node], certificate, SMALL_LIMITS) as edge:
        yield Cluster(edge, [node])


def assert_too_many(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limited"
    assert int(r.headers["retry-after"]) > 0


def test_over_the_request_rate_an_address_gets_429_and_others_do_not(limited: Cluster) -> None:
    edge = limited.edge
    # The fixture's readiness probe spent one /healthz from 127.0.0.1: use other addresses.
    with edge.client("127.0.0.4") as greedy, edge.client("127.0.0.5") as other:
        answers = [greedy.get(edge.public + "/client/pushsvc.js").status_code for _ in range(6)]
        assert answers[:4] == [200] * 4  # the first request and a burst of 3
        assert_too_many(greedy.get(edge.public + "/demo/"))  # one zone for the static routes
        assert other.get(edge.public + "/client/pushsvc.js").status_code == 200
        # Upgrades have their own zone: a plain GET /ws reaches a node (426) until it is spent.
        upgrades = [greedy.get(edge.public + "/ws").status_code for _ in range(7)]
        assert upgrades[:6] == [426] * 6  # the first request and a burst of 5
        assert_too_many(greedy.get(edge.public + "/ws"))


async def test_over_the_connection_limit_an_address_is_refused_and_others_go_on(
    limited: Cluster,
) -> None:
    edge = limited.edge
    node = limited.nodes[0]
    first = await edge.wire(node.token("conn1"), device="d1", source="127.0.0.6")
    second = await edge.wire(node.token("conn2"), device="d2", source="127.0.0.6")
    try:
        with pytest.raises(InvalidStatus) as refused:
            await edge.wire(node.token("conn3"), device="d3", source="127.0.0.6")
        assert refused.value.response.status_code == 429
        # Another address is not held back, and the open sessions still carry messages.
        other = await edge.wire(node.token("conn4"), device="d4", source="127.0.0.7")
        await other.ws.close()
        sent = node.publish({"to": {"users": ["conn1"]}, "event": "queue.called", "data": {}})
        assert (await first.recv_msg())["id"] == sent["id"]
        # A closed session frees its slot.
        await second.ws.close()
        third = await edge.wire(node.token("conn3"), device="d3", source="127.0.0.6")
        await third.ws.close()
    finally:
        await first.ws.close()
        await second.ws.close()


# -- environment example and systemd units ------------------------------------------------------


def env_lines() -> tuple[dict[str, str], dict[str, str]]:
    """(set, commented) ``PUSHSVC_*`` assignments of the example, names lower-cased."""
    live: dict[str, str] = {}
    commented: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if m := re.fullmatch(r"PUSHSVC_([A-Z_]+)=(.*)", line):
            assert "#" not in m.group(2), f"inline comment in {line!r} would become the value"
            live[m.group(1).lower()] = m.group(2)
        elif m := re.fullmatch(r"# PUSHSVC_([A-Z_]+)=(.*)", line):
            commented[m.group(1).lower()] = m.group(2)
    return live, commented


#: Every process's settings model, by field: one environment file serves them all.
MODELS: dict[str, type[SharedSettings]] = {
    name: model for model in (MonitorSettings, NodeSettings) for name in model.model_fields
}


def test_env_example_lists_every_setting_once() -> None:
    live, commented = env_lines()
    assert not live.keys() & commented.keys()
    assert sorted(live.keys() | commented.keys()) == sorted(MODELS)


def test_env_example_comments_show_the_defaults() -> None:
    _, commented = env_lines()
    for name, value in commented.items():
        model = MODELS[name]
        field = model.model_fields[name]
        if field.default_factory is not None:
            continue
        assert getattr(model.model_validate({name: value}), name) == field.default, name


def test_env_example_parses_and_refuses_to_start_without_secrets() -> None:
    class FromFile(Settings):
        model_config = SettingsConfigDict(env_file=ENV_EXAMPLE, env_prefix="PUSHSVC_")

    settings = FromFile()
    assert settings.redis_url
    assert settings.workers > 1
    with pytest.raises(ConfigError):
        settings.require_secrets()


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_unit_takes_secrets_only_from_its_environment_file(unit: Path) -> None:
    text = unit.read_text()
    assert re.findall(r"^EnvironmentFile=(.*)$", text, re.MULTILINE) == ["/etc/pushsvc/pushsvc.env"]
    (start,) = re.findall(r"^ExecStart=(.*)$", text, re.MULTILINE)
    for secret in SECRET_FLAGS:
        assert not re.search(rf"{secret.flag}(=|\s|$)", start), f"{secret.flag} in ExecStart"
    assert "@" not in start  # no credentials in a URL either
    inline = re.findall(r"^Environment=(\w+)=", text, re.MULTILINE)
    assert not {"PUSHSVC_" + s.param.upper() for s in SECRET_FLAGS} & set(inline), inline
    assert not {"PUSHSVC_WEBHOOK_SECRET", "PUSHSVC_API_KEY"} & set(inline), inline


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_unit(unit: Path, tmp_path: Path) -> None:
    text = unit.read_text()
    values = {
        k: v for k, v in re.findall(r"^(\w+)=(.*)$", text, re.MULTILINE) if k != "Environment"
    }
    assert values["KillSignal"] == "SIGTERM"
    assert values["Restart"] == "on-failure"
    assert values["NoNewPrivileges"] == "yes"
    assert values["ProtectSystem"] == "strict"
    # Bounds: the kernel stops a runaway process, and no core dump holds keys or messages.
    assert re.fullmatch(r"\d+[KMG]", values["MemoryMax"]), values["MemoryMax"]
    assert int(values["TasksMax"]) > 0
    assert values["LimitCORE"] == "0"
    if "monitor" not in unit.name:  # a node: drain, flush and deregister before SIGKILL
        stop = seconds(values["TimeoutStopSec"])
        assert stop >= Settings.model_fields["drain_timeout"].default + 15
        assert int(values["LimitNOFILE"]) >= 65536
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # verification is a bonus where systemd is installed
    rendered = tmp_path / unit.name.replace("@.", "@8081.")  # a template: verify an instance
    rendered.write_text(
        text.replace("/opt/pushsvc/.venv/bin/pushsvc", shutil.which("true") or "/bin/true")
    )
    result = subprocess.run(
        [analyze, "verify", str(rendered)],
        capture_output=True, text=True, timeout=30 * UNIT, check=False,
    )  # fmt: skip
    problems = [
        line for line in result.stderr.splitlines() if unit.name in line or rendered.name in line
    ]
    assert result.returncode == 0 and not problems, result.stderr
