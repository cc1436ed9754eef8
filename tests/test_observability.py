"""Rules, Alertmanager config, dashboards and metrics against the real binaries.

promtool checks and unit-tests the rules, amtool checks the Alertmanager config, promtool lints a
live node's /metrics, and a real Prometheus (file_sd from ``pushsvc prometheus-targets``) scrapes
two live nodes of a Redis cluster and a ``pushsvc monitor`` process (short intervals, canary on)
while WebSocket clients and publishes make traffic; then every PromQL expression of the overview
and of the delivery dashboard must return data, the loss panels a 0-valued series.

How much the metrics cost a node is measured by the fan-out benchmark in bench/, not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cli.export import RUNBOOK_PLACEHOLDER
from tests.support import (
    API_KEY,
    ROOT,
    UNIT,
    NodeHandle,
    RedisServer,
    free_port,
    launch_node,
    pushsvc_command,
    start_redis,
    wait_until,
)
from tests.wire import Wire

ALERTS = ROOT / "alerts"
RULES = ALERTS / "pushsvc.rules.yml"
DASHBOARDS = ROOT / "dashboards"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
RATE_INTERVAL = "20s"  # $__rate_interval with a 1 s scrape interval


def binary(name: str) -> str:
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
    )
    assert found, (
        f"{name} is not installed: run scripts/system-deps.sh (Debian prometheus packages)"
    )
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, check=False, capture_output=True, text=True, timeout=60 * UNIT, cwd=ROOT
    )


def alerting_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def dashboard(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DASHBOARDS / f"{name}.json").read_text())
    return loaded


def expressions(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, variables substituted."""
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in (("$__rate_interval", RATE_INTERVAL), ("$__range", "1h"),
                               ("$job", "pushsvc"), ("$node", ".*")):  # fmt: skip
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unsubstituted variable in {panel['title']}: {expr}"
            out.append((panel["title"], expr))
    return out


# -- static checks --------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    r = run(binary("promtool"), "check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_test_rules() -> None:
    tests = sorted(str(p) for p in (ALERTS / "tests").glob("*.yml"))
    assert tests
    r = run(binary("promtool"), "test", "rules", *tests)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in (ALERTS / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {r["alert"] for r in alerting_rules()}
    assert names - firing == set(), "never tested firing"
    assert names - quiet == set(), "never tested quiet"


def test_every_alert_has_severity_summary_description_and_a_runbook_section() -> None:
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line[3:].strip().lower()).replace(" ", "-")
        for line in RUNBOOKS.read_text().splitlines()
        if line.startswith("## ")
    }
    for rule in alerting_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], name
        page, _, anchor = notes["runbook_url"].partition("#")
        assert page == RUNBOOK_PLACEHOLDER + "/runbooks.md", (name, notes["runbook_url"])
        assert anchor in anchors, (name, notes["runbook_url"])


def test_amtool_check_config() -> None:
    r = run(binary("amtool"), "check-config", str(ALERTS / "alertmanager.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


# -- live: two nodes, a real Prometheus -----------------------------------------------------

FAST = {"registry_interval": 0.5, "ack_timeout": 1, "heartbeat": 5, "drain_timeout": 2}
MONITOR = {
    "ack_timeout": 1, "monitor_interval": 1, "monitor_grace": 1, "reconnect_window": 2,
    "late_check": 2, "canary_interval": 1, "canary_stall": 5, "alert_resend": 2, "lease_ttl": 3,
}  # fmt: skip


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with start_redis() as server:
        yield server


@pytest.fixture(scope="module")
def cluster(redis: RedisServer) -> Iterator[list[NodeHandle]]:
    nodes = [launch_node(redis_url=redis.url, node_id=f"obs-{n}", **FAST) for n in "ab"]
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


class MonitorProcess:
    def __init__(self, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.port = port
        self.proc = proc
        self.log = log

    def healthy(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text(errors="replace")
        try:
            r = httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=UNIT)
        except httpx.HTTPError:
            return False
        return r.status_code == 200


@pytest.fixture(scope="module")
def monitor(redis: RedisServer, cluster: list[NodeHandle]) -> Iterator[MonitorProcess]:
    """``pushsvc monitor`` on the cluster's Redis, canary on, no Alertmanager."""
    port = free_port()
    values = {"redis_url": redis.url, "api_keys": API_KEY, "monitor_port": port,
              "monitor_id": "obs-monitor", **MONITOR}  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    env.update({f"PUSHSVC_{k.upper()}": str(v) for k, v in values.items()})
    with tempfile.TemporaryDirectory(prefix="pushsvc-monitor-") as tmp:
        log = Path(tmp) / "monitor.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "cli", "monitor"], env=env,
                                    stdout=out, stderr=out, cwd=ROOT)  # fmt: skip
        handle = MonitorProcess(port, proc, log)
        try:
            wait_until(handle.healthy, 15 * UNIT, 0.1)
            yield handle
        finally:
            proc.terminate()
            try:
                proc.wait(10 * UNIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Prometheus:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log

    def query(self, expr: str) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10 * UNIT)
        body: dict[str, Any] = r.json()
        return body

    def value(self, expr: str) -> float:
        result = self.query(expr)["data"]["result"]
        return float(result[0]["value"][1]) if result else float("nan")


@pytest.fixture(scope="module")
def prometheus(
    redis: RedisServer, cluster: list[NodeHandle], monitor: MonitorProcess
) -> Iterator[Prometheus]:
    with tempfile.TemporaryDirectory(prefix="pushsvc-prom-") as tmp:
        targets = Path(tmp) / "pushsvc.json"
        r = run(*pushsvc_command(), "prometheus-targets", "--redis-url", redis.url,
                "--output", str(targets))  # fmt: skip
        assert r.returncode == 0, r.stderr
        groups = json.loads(targets.read_text())
        assert {g["labels"]["node"] for g in groups} == {"obs-a", "obs-b"}
        config = Path(tmp) / "prometheus.yml"
        config.write_text(
            json.dumps({
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [{
                    "job_name": "pushsvc",
                    "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
                }, {
                    "job_name": "pushsvc-monitor",
                    "static_configs": [{"targets": [f"127.0.0.1:{monitor.port}"]}],
                }],
            })  # JSON is YAML
        )  # fmt: skip
        port = free_port()
        log = Path(tmp) / "prometheus.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [binary("prometheus"), f"--config.file={config}",
                 f"--storage.tsdb.path={Path(tmp) / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=out, stderr=out,
            )  # fmt: skip
        server = Prometheus(f"http://127.0.0.1:{port}", proc, log)
        try:
            wait_until(lambda: _ready(server), 20 * UNIT, 0.1)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(10 * UNIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _ready(server: Prometheus) -> bool:
    assert server.proc.poll() is None, server.log.read_text()
    try:
        return httpx.get(server.url + "/-/ready", timeout=UNIT).status_code == 200
    except httpx.HTTPError:
        return False


async def traffic(nodes: list[NodeHandle]) -> int:
    """Sessions on both nodes, publishes through both, acks (one late: a redelivery), an offline
    inbox replay, a broadcast, and closes with several codes. Returns the acks sent."""
    a, b = nodes
    acks = 0
    a.publish({"to": {"users": ["inbox"]}, "event": "lab.ready", "data": {}})  # waits offline
    devices = []
    for i, node in enumerate((a, b, a, b)):
        token = node.token(f"p{i % 2}", ["clinic-205"])
        devices.append(await Wire.open(node.client_url, token, f"dev{i}"))
    for n in range(6):
        node = nodes[n % 2]
        node.publish({"to": {"users": ["p0", "p1"]}, "event": "queue.called", "data": {"n": n}})
    node_b_topic = b.publish({"to": {"topics": ["clinic-205"]}, "event": "board", "data": {}})
    assert node_b_topic["id"]
    for i, wire in enumerate(devices):
        got = await wire.messages(7)
        for m in got:
            if m["ack"] and not (i == 0 and m["data"] == {"n": 0}):
                await wire.ack(m["id"])
                acks += 1
    late = await devices[0].recv_msg(5 * UNIT)  # redelivered after ack_timeout
    assert late["data"] == {"n": 0}
    await devices[0].ack(late["id"])
    acks += 1
    inbox = await Wire.open(b.client_url, b.token("inbox"), "lab")
    (replayed,) = await inbox.messages(1)
    assert replayed["replay"] is True
    await inbox.ack(replayed["id"])
    acks += 1
    # closes: normal (1000), by the operator (4010), a bad token (4001), a bad frame (4003)
    await inbox.close()
    session = devices[1].welcome["session"]
    assert b.api("DELETE", f"/v1/sessions/{session}").status_code == 202
    code, _, _ = await devices[1].closed()
    assert code == 4010
    bad = await Wire.open(a.client_url, None)
    await bad.send({"type": "hello", "token": "not-a-token", "device": "x"})
    assert (await bad.closed())[0] == 4001
    rude = await Wire.open(a.client_url, a.token("p0"), "rude")
    await rude.send("{not json")
    assert (await rude.closed())[0] == 4003
    unauthorized = await asyncio.to_thread(
        httpx.get, a.internal_url + "/v1/nodes", timeout=5 * UNIT
    )
    assert unauthorized.status_code == 401
    for wire in (devices[0], devices[2], devices[3]):
        await wire.close()
    return acks


@pytest.mark.redis
def test_promtool_check_metrics_on_a_live_node(cluster: list[NodeHandle]) -> None:
    text = httpx.get(cluster[0].internal_url + "/metrics", timeout=5 * UNIT).text
    assert "pushsvc_messages_ack_requested_total" in text
    r = subprocess.run([binary("promtool"), "check", "metrics"], check=False, input=text,
                       capture_output=True, text=True, timeout=30 * UNIT)  # fmt: skip
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def without_data(prometheus: Prometheus, board: str) -> list[str]:
    """The expressions of ``board`` that return no series (each must run)."""
    missing = []
    for title, expr in expressions(dashboard(board)):
        answer = prometheus.query(expr)
        assert answer["status"] == "success", (title, expr, answer)
        if not answer["data"]["result"]:
            missing.append(f"{title}: {expr}")
    return missing


@pytest.mark.redis
def test_prometheus_scrapes_two_nodes_and_the_monitor_and_every_panel_has_data(
    cluster: list[NodeHandle], monitor: MonitorProcess, prometheus: Prometheus
) -> None:
    wait_until(lambda: prometheus.value('count(up{job="pushsvc"} == 1)') == 2, 20 * UNIT, 0.2)
    wait_until(lambda: prometheus.value('up{job="pushsvc-monitor"}') == 1, 20 * UNIT, 0.2)
    up = prometheus.query('up{job="pushsvc"}')["data"]["result"]
    assert {s["metric"]["node"] for s in up} == {"obs-a", "obs-b"}
    acks = asyncio.run(traffic(cluster))
    wait_until(
        lambda: prometheus.value('sum(pushsvc_messages_acked_total{job="pushsvc"})') >= acks,
        15 * UNIT, 0.2,
    )  # fmt: skip
    time.sleep(2)  # a couple more scrapes, so every rate has two samples after the traffic

    missing = without_data(prometheus, "pushsvc-overview")
    assert not missing, "overview panels without data:\n" + "\n".join(missing)

    # the monitor: both nodes canaried, the traffic's deliveries reconciled as acked
    nodes = 'node=~"obs-a|obs-b"'
    wait_until(lambda: prometheus.value(f"sum(pushsvc_monitor_canary_up{{{nodes}}})") == 2,
               20 * UNIT, 0.2)  # fmt: skip
    wait_until(
        lambda: prometheus.value(f"sum(pushsvc_monitor_acked_deliveries_total{{{nodes}}})")
        >= acks,
        30 * UNIT, 0.2,
    )  # fmt: skip
    with contextlib.suppress(TimeoutError):  # the assertion below names what is missing
        wait_until(lambda: not without_data(prometheus, "pushsvc-delivery"), 10 * UNIT, 0.5)
    missing = without_data(prometheus, "pushsvc-delivery")
    assert not missing, "delivery panels without data:\n" + "\n".join(missing)
    board = dict(expressions(dashboard("pushsvc-delivery")))
    # nothing was lost: the per-node counters the monitor starts at 0 give 0-valued series
    for title in ("Lost deliveries", "Unfanned deliveries"):
        assert prometheus.value(board[title]) == 0, title
    by_node = prometheus.query(board["Lost and unfanned by node"])["data"]["result"]
    assert {s["metric"]["node"] for s in by_node} >= {"obs-a", "obs-b"}
    assert prometheus.value(board["Canaries up"]) >= 2
    p99 = prometheus.value(board["Canary latency p99"])
    assert math.isfinite(p99) and 0 < p99 < 10, p99

    # the rules evaluate cleanly against the real series, and the SLI saw the traffic
    rules = httpx.get(prometheus.url + "/api/v1/rules", timeout=5 * UNIT).json()["data"]["groups"]
    broken = [(r["name"], r.get("lastError")) for g in rules for r in g["rules"]
              if r["health"] == "err"]  # fmt: skip
    assert not broken
    wait_until(lambda: prometheus.query("pushsvc:ack_error_ratio:rate5m")["data"]["result"],
               10 * UNIT, 0.2)  # fmt: skip
    assert 0 <= prometheus.value("pushsvc:ack_error_ratio:rate5m") <= 0.5


def bus_received(node: NodeHandle) -> float:
    text = httpx.get(node.internal_url + "/metrics", timeout=5 * UNIT).text
    (line,) = [x for x in text.splitlines() if x.startswith("pushsvc_bus_messages_received_total ")]
    return float(line.split()[1])


async def risen_to(nodes: list[NodeHandle], before: list[float], wanted: list[float]) -> None:
    """Wait until each node's bus counter rose by ``wanted`` since ``before``, then a little
    longer, and check that it rose by exactly that."""
    deadline = time.monotonic() + 10 * UNIT
    risen = [bus_received(n) - b for n, b in zip(nodes, before, strict=True)]
    while time.monotonic() < deadline and any(r < w for r, w in zip(risen, wanted, strict=True)):
        await asyncio.sleep(0.05)
        risen = [bus_received(n) - b for n, b in zip(nodes, before, strict=True)]
    await asyncio.sleep(0.3 * UNIT)  # anything more that was coming has come
    risen = [bus_received(n) - b for n, b in zip(nodes, before, strict=True)]
    assert risen == wanted


@pytest.fixture
def quiet_pair() -> Iterator[list[NodeHandle]]:
    """Two nodes on a Redis of the test's own: nothing else publishes to them."""
    with start_redis() as server:
        nodes = [launch_node(redis_url=server.url, node_id=f"routed-{n}", **FAST) for n in "ab"]
        try:
            yield nodes
        finally:
            for node in nodes:
                node.stop()


@pytest.mark.redis
async def test_a_node_receives_from_the_bus_only_what_its_sessions_read(
    quiet_pair: list[NodeHandle],
) -> None:
    """Routed delivery: a patient's messages reach only the node that holds the patient's
    session (published on the other one), a broadcast every node with a session, and a node
    whose last reader left receives nothing more of that stream."""
    a, b = quiet_pair
    user, other = f"routed-{os.getpid()}-b", f"routed-{os.getpid()}-a"
    on_b = await Wire.open(b.client_url, b.token(user, []), device="phone")
    on_a = await Wire.open(a.client_url, a.token(other, []), device="tab")
    try:
        before = [bus_received(a), bus_received(b)]
        for n in range(5):
            body = {"to": {"users": [user]}, "event": "bus.count", "data": {"n": n}, "ack": False}
            assert a.api("POST", "/v1/messages", json=body).status_code == 202
        assert [m["data"]["n"] for m in await on_b.messages(5)] == [0, 1, 2, 3, 4]
        await risen_to([a, b], before, [0, 5])

        before = [bus_received(a), bus_received(b)]
        body = {"to": {"all": True}, "event": "bus.count", "data": {"n": 5}, "ack": False}
        assert b.api("POST", "/v1/messages", json=body).status_code == 202
        assert [m["data"]["n"] for m in await on_a.messages(1)] == [5]
        assert [m["data"]["n"] for m in await on_b.messages(1)] == [5]
        await risen_to([a, b], before, [1, 1])

        await on_b.close()
        await asyncio.sleep(0.3 * UNIT)  # the session's end reaches node b, which unsubscribes
        before = [bus_received(a), bus_received(b)]
        body = {"to": {"users": [user]}, "event": "bus.count", "data": {"n": 6}, "ack": False}
        assert a.api("POST", "/v1/messages", json=body).status_code == 202
        await risen_to([a, b], before, [0, 0])
    finally:
        await on_a.close()
        await on_b.close()
