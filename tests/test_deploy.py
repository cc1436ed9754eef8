"""The deployment files in ``deploy/`` against the real programs that read them.

nginx (Debian ``nginx-light``): the shipped config, rendered with test ports and paths, passes
``nginx -t``, with and without the TLS snippet; then a real nginx runs it in front of two real
nodes and a WebSocket client, the internal API and the refused paths are checked through it.
The environment example must list every setting; the systemd units are checked with
``systemd-analyze verify`` where that exists.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic_settings import SettingsConfigDict

from pushsvc.errors import ConfigError
from pushsvc.settings import MonitorSettings, NodeSettings, Settings, SharedSettings
from tests.support import ROOT, UNIT, NodeHandle, free_port, start_node, wait_until
from tests.wire import Wire

DEPLOY = ROOT / "deploy"
NGINX_CONF = DEPLOY / "nginx.conf"
TLS_CONF = DEPLOY / "nginx-tls.conf"
ENV_EXAMPLE = DEPLOY / "pushsvc.env.example"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
PUBLIC_REFUSAL = "not served on the public listener"


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    assert found, "nginx is not installed (apt-get install nginx-light)"
    return found


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
    public_port: int
    private_port: int
    tls_port: int | None = None

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def public(self) -> str:
        return f"http://127.0.0.1:{self.public_port}"

    @property
    def private(self) -> str:
        return f"http://127.0.0.1:{self.private_port}"

    def argv(self, *extra: str) -> list[str]:
        directives = f"pid {self.prefix}/nginx.pid;"
        return [
            nginx_binary(),
            "-p", f"{self.prefix}/", "-c", str(self.conf), "-e", str(self.prefix / "error.log"),
            "-g", directives, *extra,
        ]  # fmt: skip


def render(edge: Edge, clients: list[str], internals: list[str], tls: Path | None = None) -> str:
    """The shipped nginx.conf with test listeners, upstreams, logs and temp paths."""
    text = NGINX_CONF.read_text()
    temp = "".join(
        f"\n    {kind}_temp_path {edge.prefix}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = replace_exactly(text, "\nhttp {", "\nhttp {" + temp)
    text = replace_exactly(text, "listen 80;", f"listen 127.0.0.1:{edge.public_port};")
    text = replace_exactly(text, "listen 10.0.0.5:8000;", f"listen 127.0.0.1:{edge.private_port};")
    text = replace_exactly(text, "/var/log/nginx/", f"{edge.prefix}/")
    text = with_servers(text, "pushsvc_clients", clients)
    text = with_servers(text, "pushsvc_internal", internals)
    if tls is not None:
        text = replace_exactly(text, "# include /etc/nginx/pushsvc-tls.conf;", f"include {tls};")
    return text


def render_tls(edge: Edge, cert: Path, key: Path) -> str:
    text = TLS_CONF.read_text()
    text = replace_exactly(text, "listen 443 ssl;", f"listen 127.0.0.1:{edge.tls_port} ssl;")
    text = replace_exactly(text, "/etc/ssl/pushsvc/fullchain.pem", str(cert))
    return replace_exactly(text, "/etc/ssl/pushsvc/privkey.pem", str(key))


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


def seconds(value: str) -> float:
    """An nginx or systemd time value (``120s``, ``2m``, ``30``) in seconds."""
    found = re.fullmatch(r"(\d+)(ms|s|m|h)?", value.strip())
    assert found, f"not a simple time value: {value!r}"
    number, unit = found.groups()
    return float(number) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[unit]


# -- the config as written ------------------------------------------------------------------


def test_upstreams_are_not_sticky_and_balance_by_connections() -> None:
    text = NGINX_CONF.read_text()
    live = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    for upstream in ("pushsvc_clients", "pushsvc_internal"):
        block = re.search(rf"upstream {upstream} \{{(.*?)\}}", live, re.DOTALL)
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


def test_shipped_config_passes_nginx_t(tmp_path: Path) -> None:
    edge = Edge(tmp_path, free_port(), free_port())
    edge.conf.write_text(render(edge, ["127.0.0.1:9", "127.0.0.1:10"], ["127.0.0.1:11"]))
    result = nginx_test(edge)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_tls_snippet_passes_nginx_t(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is not installed (scripts/system-deps.sh installs it)"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30 * UNIT,
    )  # fmt: skip
    edge = Edge(tmp_path, free_port(), free_port(), tls_port=free_port())
    tls = tmp_path / "pushsvc-tls.conf"
    tls.write_text(render_tls(edge, cert, key))
    edge.conf.write_text(render(edge, ["127.0.0.1:9"], ["127.0.0.1:11"], tls=tls))
    result = nginx_test(edge)
    assert result.returncode == 0, result.stderr


# -- a real nginx in front of two real nodes --------------------------------------------------


@dataclass
class Cluster:
    edge: Edge
    nodes: list[NodeHandle]


@contextlib.contextmanager
def nginx_in_front_of(nodes: list[NodeHandle]) -> Iterator[Edge]:
    """A real nginx running the shipped config in front of ``nodes``; stopped by its PID."""
    with tempfile.TemporaryDirectory(prefix="pushsvc-nginx-") as tmp:
        edge = Edge(Path(tmp), free_port(), free_port())
        edge.conf.write_text(
            render(
                edge,
                [f"127.0.0.1:{n.port}" for n in nodes],
                [f"127.0.0.1:{n.internal_port}" for n in nodes],
            )
        )
        out = edge.prefix / "nginx.out"
        with out.open("wb") as log:
            proc = subprocess.Popen(edge.argv("-g", "daemon off;"), stdout=log, stderr=log)
        try:
            wait_until(lambda: proc.poll() is not None or _answers(edge.public + "/healthz"))
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
def cluster() -> Iterator[Cluster]:
    with start_node() as a, start_node() as b, nginx_in_front_of([a, b]) as edge:
        yield Cluster(edge, [a, b])


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=UNIT).status_code == 200
    except httpx.HTTPError:
        return False


async def test_websockets_through_nginx_spread_over_both_nodes(cluster: Cluster) -> None:
    a, b = cluster.nodes
    url = f"ws://127.0.0.1:{cluster.edge.public_port}/ws"
    wires = []
    try:
        for i in range(10):
            # one at a time, so the finally closes what did open
            wires.append(await Wire.open(url, a.token(f"spread{i}"), device=f"d{i}"))  # noqa: PERF401
        placed = Counter(w.welcome["node"] for w in wires)
        assert set(placed) == {a.node_id, b.node_id}, placed
        assert min(placed.values()) >= 3, placed  # least_conn with a shared zone: near even
        # Frames flow both ways through the proxy: ping/pong, and a published message.
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


async def test_a_draining_node_sends_its_clients_through_nginx_to_the_other() -> None:
    """A rolling restart seen from a patient: 1001 from the node, reconnect lands elsewhere."""
    with start_node() as a, start_node() as b, nginx_in_front_of([a, b]) as edge:
        url = f"ws://127.0.0.1:{edge.public_port}/ws"
        wires = []
        try:
            for i in range(4):
                wires.append(await Wire.open(url, a.token(f"drain{i}"), device=f"d{i}"))  # noqa: PERF401
            on_a = next(w for w in wires if w.welcome["node"] == a.node_id)
            a.proc.send_signal(signal.SIGTERM)  # drain; the loop stays free to answer the close
            code, _, seen = await on_a.closed()
            assert code == 1001, seen
            assert a.stop() == 0
            back = await Wire.open(url, b.token(on_a.welcome["user"]), device="d-back")
            wires.append(back)
            assert back.welcome["node"] == b.node_id
        finally:
            for wire in wires:
                await wire.ws.close()


def test_public_side_serves_the_client_routes(cluster: Cluster) -> None:
    public = cluster.edge.public
    r = httpx.get(public + "/healthz", timeout=5 * UNIT)
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    r = httpx.get(public + "/demo/", timeout=5 * UNIT)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    r = httpx.get(public + "/client/pushsvc.js", timeout=5 * UNIT)
    assert r.status_code == 200
    assert "javascript" in r.headers["content-type"]
    r = httpx.get(public + "/", timeout=5 * UNIT)
    assert (r.status_code, r.headers["location"].endswith("/demo/")) == (302, True)
    # A plain GET on /ws reaches a node, which says it speaks WebSocket only.
    assert httpx.get(public + "/ws", timeout=5 * UNIT).status_code == 426


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
    r = httpx.request(
        method,
        cluster.edge.public + path,
        headers={"Authorization": f"Bearer {a.api_key}"},
        json={"to": {"users": ["p1"]}, "event": "x", "data": {}, "user": "p1"},
        timeout=5 * UNIT,
    )
    assert r.status_code == 404
    assert r.json()["error"]["message"] == PUBLIC_REFUSAL  # nginx refused; no node was asked


def test_private_side_balances_the_internal_api(cluster: Cluster) -> None:
    a, b = cluster.nodes
    private = cluster.edge.private
    body = {"to": {"users": ["private1"]}, "event": "lab.ready", "data": {"ok": True}}
    r = httpx.post(private + "/v1/messages", json=body, timeout=5 * UNIT)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    key = {"Authorization": f"Bearer {a.api_key}"}
    answered = set()
    for _ in range(6):
        r = httpx.get(private + "/readyz", timeout=5 * UNIT)
        assert r.status_code == 200
        answered.add(r.json()["node"])
    assert answered == {a.node_id, b.node_id}
    r = httpx.post(private + "/v1/messages", json=body, headers=key, timeout=5 * UNIT)
    assert r.status_code == 202, r.text
    assert r.json()["id"]
    r = httpx.get(private + "/metrics", timeout=5 * UNIT)
    assert r.status_code == 404
    assert "internal port" in r.json()["error"]["message"]


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
def test_systemd_unit(unit: Path, tmp_path: Path) -> None:
    text = unit.read_text()
    values = {
        k: v for k, v in re.findall(r"^(\w+)=(.*)$", text, re.MULTILINE) if k != "Environment"
    }
    assert values["KillSignal"] == "SIGTERM"
    assert values["Restart"] == "on-failure"
    assert values["NoNewPrivileges"] == "yes"
    assert values["ProtectSystem"] == "strict"
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
