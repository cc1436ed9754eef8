"""The operator commands against a real two-node cluster on a real redis-server: one patient's
sessions on both nodes, a kick across nodes, a trail across nodes, a drain, check-config with a
real Alertmanager, and ``top`` in a real terminal (tmux), on a pipe and on a recording console."""

from __future__ import annotations

import asyncio
import datetime
import io
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from click.testing import Result
from rich.console import Console
from typer.testing import CliRunner

from cli.cluster import Cluster, operator_settings
from cli.main import app
from cli.top import watch
from pushsvc.broker.base import NodeInfo, SessionInfo, bucket_of
from tests.support import (
    API_KEY,
    ROOT,
    UNIT,
    NodeHandle,
    RedisServer,
    free_port,
    launch_node,
    pushsvc_command,
    start_alertmanager,
    start_redis,
    wait_until,
)
from tests.wire import Wire

pytestmark = pytest.mark.redis

FAST = {"registry_interval": 0.5, "ack_timeout": 2, "heartbeat": 30, "drain_timeout": 3}
TRACED = {"OTEL_TRACES_EXPORTER": "console"}


@dataclass
class Operator:
    """Runs ``pushsvc`` commands in-process with the cluster's environment."""

    redis: RedisServer

    @property
    def env(self) -> dict[str, str | None]:
        return {
            "PUSHSVC_REDIS_URL": self.redis.url,
            "PUSHSVC_API_KEYS": API_KEY,
            "PUSHSVC_REGISTRY_INTERVAL": "0.5",
            "PUSHSVC_API_URL": None,
            "PUSHSVC_API_KEY": None,
            "COLUMNS": "220",
        }

    def __call__(self, *args: str, **env: str | None) -> Result:
        return CliRunner().invoke(app, list(args), env={**self.env, **env})

    async def run(self, *args: str, **env: str | None) -> Result:
        """In a thread: the devices' event loop keeps running meanwhile."""
        return await asyncio.to_thread(self, *args, **env)

    def json(self, *args: str, **env: str | None) -> Any:
        result = self(*args, "--json", **env)
        assert result.exit_code == 0, result.output
        return orjson.loads(result.stdout)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with start_redis() as server:
        yield server


@pytest.fixture(scope="module")
def pair(redis: RedisServer) -> Iterator[list[NodeHandle]]:
    """node-a traces its publishes, node-b does not."""
    a = launch_node(redis_url=redis.url, node_id="node-a", env=TRACED, **FAST)
    b = launch_node(redis_url=redis.url, node_id="node-b", **FAST)
    try:
        yield [a, b]
    finally:
        a.stop()
        b.stop()


@pytest.fixture(scope="module")
def op(redis: RedisServer, pair: list[NodeHandle]) -> Operator:
    wait_until(lambda: len(Operator(redis).json("nodes")["nodes"]) == 2)
    return Operator(redis)


def uid(prefix: str = "p") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def no_traceback(result: Result) -> str:
    """The one error line of a failed command."""
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- nodes ---------------------------------------------------------------------------------------


def test_nodes_lists_every_node_from_redis_or_from_the_api(
    op: Operator, pair: list[NodeHandle]
) -> None:
    a, b = pair
    listed = {n["id"]: n for n in op.json("nodes")["nodes"]}
    assert set(listed) == {"node-a", "node-b"}
    assert listed["node-b"]["internal_addr"] == f"127.0.0.1:{b.internal_port}"
    assert {n["status"] for n in listed.values()} == {"up"}
    assert all(n["uptime"] > 0 and n["version"] for n in listed.values())
    # the API alone gives the same list
    via_api = op.json("nodes", "--api-url", a.internal_url, PUSHSVC_REDIS_URL=None)
    assert {n["id"] for n in via_api["nodes"]} == set(listed)
    table = op("nodes")
    assert table.exit_code == 0
    for word in ("node-a", "node-b", f"127.0.0.1:{a.port}", "broker lag", "up"):
        assert word in table.stdout


def test_a_node_listed_with_an_old_heartbeat_is_stale_and_its_sessions_come_from_the_registry(
    op: Operator, redis: RedisServer
) -> None:
    from pushsvc.brokers import redis_broker
    from pushsvc.settings import Settings

    ghost = NodeInfo(
        id="node-ghost", client_addr="127.0.0.1:1", internal_addr=f"127.0.0.1:{free_port()}",
        pid=1, version="0.1.0", started=time.time() - 60, heartbeat=time.time() - 5,
    )  # fmt: skip
    session = SessionInfo(
        id="ghost-session", node=ghost.id, user="ghost-user", device="pager",
        remote="127.0.0.1:2", connected_at=time.time() - 30,
    )  # fmt: skip

    async def register(up: bool) -> None:
        broker = redis_broker(Settings(redis_url=redis.url))
        try:
            if up:
                await broker.registry.register(ghost, ttl=30)
                await broker.registry.add_sessions([session])
            else:
                await broker.registry.deregister(ghost.id)
        finally:
            await broker.close()

    asyncio.run(register(True))
    try:
        result = op("nodes", "--json")
        assert result.exit_code == 1  # unhealthy
        states = {n["id"]: n["status"] for n in orjson.loads(result.stdout)["nodes"]}
        assert states == {"node-a": "up", "node-b": "up", "node-ghost": "heartbeat stale"}
        assert "heartbeat stale" in op("nodes").stdout
        listed = op("sessions", "--user", "ghost-user", "--json")
        assert listed.exit_code == 0, listed.output
        body = orjson.loads(listed.stdout)
        assert [(s["id"], s["live"]) for s in body["sessions"]] == [("ghost-session", False)]
        assert "node-ghost" in body["unanswered"]
        assert "node node-ghost did not answer" in listed.stderr
    finally:
        asyncio.run(register(False))


# -- sessions, publish, trace, kick ------------------------------------------------------------


async def test_one_patients_sessions_on_both_nodes_appear_together_with_live_counters(
    op: Operator, pair: list[NodeHandle]
) -> None:
    a, b = pair
    user = uid()
    phone = await Wire.open(a.client_url, a.token(user), device="phone")
    laptop = await Wire.open(b.client_url, b.token(user), device="laptop")
    published = await op.run(
        "publish", "--user", user, "--event", "queue.called", "--data", '{"room": "205"}',
        "--api-url", a.internal_url,
    )  # fmt: skip
    assert published.exit_code == 0, published.output
    message_id = published.stdout.strip()
    assert (await phone.recv_msg())["id"] == message_id
    assert (await laptop.recv_msg())["id"] == message_id
    await phone.ack(message_id)

    def listed() -> list[dict[str, Any]]:
        body = op.json("sessions", "--user", user)
        sessions: list[dict[str, Any]] = body["sessions"]
        return sessions if sessions and sessions[0]["acked"] == 1 else []

    sessions = await asyncio.to_thread(wait_until, listed)
    by_device = {s["device"]: s for s in sessions}
    assert set(by_device) == {"phone", "laptop"}
    assert by_device["phone"]["node"] == "node-a" and by_device["laptop"]["node"] == "node-b"
    assert all(s["live"] and s["user"] == user for s in sessions)
    p, lp = by_device["phone"], by_device["laptop"]
    assert (p["sent"], p["acked"], p["pending"]) == (1, 1, 0) and p["last_ack"] is not None
    assert (lp["sent"], lp["acked"], lp["pending"]) == (1, 0, 1) and lp["last_ack"] is None
    table = await op.run("sessions", "--user", user)
    assert table.exit_code == 0
    for word in (
        phone.welcome["session"],
        laptop.welcome["session"],
        "node-a",
        "node-b",
        "pending",
    ):
        assert word in table.stdout
    only_b = await asyncio.to_thread(op.json, "sessions", "--user", user, "--node", "node-b")
    assert [s["device"] for s in only_b["sessions"]] == ["laptop"]
    nobody = await op.run("sessions", "--user", uid("nobody"))
    assert nobody.exit_code == 1 and "no open session" in nobody.stdout

    # the laptop does not ack: the message is written again, then it acks
    assert (await laptop.recv_msg(timeout=6 * UNIT))["id"] == message_id
    await laptop.ack(message_id)

    def settled() -> Any:
        body = op.json("trace", message_id)
        return body if body["trail"]["state"] == "acked" else None

    trace = await asyncio.to_thread(wait_until, settled)
    assert {d["node"] for d in trace["trail"]["devices"]} == {"node-a", "node-b"}
    fan = {r["node"]: r for r in trace["fan_out"]}
    assert set(fan) == {"node-a", "node-b"}
    assert (fan["node-a"]["redeliveries"], fan["node-b"]["redeliveries"]) == (0, 1)
    assert fan["node-b"]["sent"] == 2 and trace["redeliveries"] == 1
    assert len(trace["trace_id"]) == 32 and trace["traceparent"].split("-")[1] == trace["trace_id"]
    shown = await op.run("trace", message_id)
    assert shown.exit_code == 0
    for word in ("fan-out per node", "node-a", "node-b", "phone", "laptop", "acked",
                 trace["trace_id"], "redeliveries"):  # fmt: skip
        assert word in shown.stdout, word

    # published through node-b, which does not trace
    untraced = await op.run("publish", "--user", user, "--event", "x", "--api-url", b.internal_url)
    shown = await op.run("trace", untraced.stdout.strip())
    assert shown.exit_code == 0 and "not traced" in shown.stdout
    await phone.close()
    await laptop.close()


async def test_kick_closes_a_session_on_the_other_node_and_every_session_of_a_patient(
    op: Operator, pair: list[NodeHandle]
) -> None:
    a, b = pair
    user = uid()
    on_a = await Wire.open(a.client_url, a.token(user), device="phone")
    on_b = await Wire.open(b.client_url, b.token(user), device="laptop")
    on_b2 = await Wire.open(b.client_url, b.token(user), device="tablet")
    # asked through node-a, the session lives on node-b
    kicked = await op.run("kick", on_b.welcome["session"], "--api-url", a.internal_url)
    assert kicked.exit_code == 0, kicked.output
    assert "node-b" in kicked.stdout and "4010" in kicked.stdout
    code, _, _ = await on_b.closed()
    assert code == 4010
    # every session of the patient, on both nodes
    await asyncio.to_thread(
        wait_until, lambda: len(op.json("sessions", "--user", user)["sessions"]) == 2
    )
    everyone = await asyncio.to_thread(op.json, "kick", "--user", user)
    assert {c["node"] for c in everyone["closing"]} == {"node-a", "node-b"}
    assert {c["session"] for c in everyone["closing"]} == {
        on_a.welcome["session"],
        on_b2.welcome["session"],
    }
    for wire in (on_a, on_b2):
        code, _, _ = await wire.closed()
        assert code == 4010
    gone = await op.run("kick", on_a.welcome["session"])
    assert gone.exit_code == 1 and "no open session" in no_traceback(gone)
    nobody = await op.run("kick", "--user", user)
    assert nobody.exit_code == 1 and "no open session of user" in no_traceback(nobody)


async def test_revoke_closes_the_patients_sessions_and_refuses_the_old_token(
    op: Operator, pair: list[NodeHandle]
) -> None:
    a, b = pair
    user = uid()
    old = a.token(user)
    on_b = await Wire.open(b.client_url, old)
    revoked = await op.run("revoke", user, "--api-url", a.internal_url)
    assert revoked.exit_code == 0, revoked.output
    assert user in revoked.stdout and "4001" in revoked.stdout
    code, _, seen = await on_b.closed()
    assert (code, seen[-1]["code"]) == (4001, "token_revoked")
    again = await asyncio.to_thread(op.json, "revoke", user)
    assert again["user"] == user and again["not_before"] >= revoked_after(revoked.stdout)
    bad = await op.run("revoke", "no such user!")
    assert bad.exit_code != 0 and no_traceback(bad).strip()


def revoked_after(stdout: str) -> int:
    """The not_before the human output shows, as unix seconds."""
    shown = re.search(r"before (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", stdout)
    assert shown is not None, stdout
    when = datetime.datetime.strptime(shown[1] + " +0000", "%Y-%m-%d %H:%M:%S %z")
    return int(when.timestamp())


def test_publish_to_topics_and_everyone(op: Operator) -> None:
    topic = op.json("publish", "--topic", "clinic-205", "--event", "queue.position", "--data", "3")
    assert list(topic["streams"]) == ["topic:clinic-205"]
    everyone = op.json("publish", "--all", "--event", "notice", "--no-ack", "--ttl", "60")
    assert list(everyone["streams"]) == ["all"]
    assert op.json("trace", everyone["id"])["trail"]["ack"] is False
    key, user = uid("key"), uid()  # the same request twice (another one would be a conflict)
    first, again = (op("publish", "--user", user, "--event", "e", "--idempotency-key", key)
                    for _ in range(2))  # fmt: skip
    assert first.exit_code == again.exit_code == 0
    assert first.stdout == again.stdout and "duplicate" in again.stderr


# -- errors: one line, the right exit code -------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "code", "says"),
    [
        (["nodes", "--redis-url", "redis://127.0.0.1:{port}/0"], {}, 1, "cannot reach Redis at"),
        (
            ["sessions"],
            {"PUSHSVC_REDIS_URL": "redis://:pw@127.0.0.1:{port}/0"},
            1,
            ":***@127.0.0.1",
        ),
        (
            ["trace", "x", "--api-url", "http://127.0.0.1:{port}"],
            {"PUSHSVC_REDIS_URL": None},
            1,
            "cannot reach the API at http://127.0.0.1:",
        ),
        (["nodes", "--redis-url", "mysql://x"], {}, 2, "invalid Redis URL"),
        (["nodes"], {"PUSHSVC_REDIS_URL": None}, 2, "give --redis-url"),
        (["sessions"], {"PUSHSVC_API_KEY": "wrong"}, 2, "refused the key"),
        (
            ["publish", "--event", "e", "--user", "p"],
            {"PUSHSVC_API_KEY": "wrong"},
            2,
            "refused the key",
        ),
        (["publish", "--api-key", ""], {"PUSHSVC_API_KEYS": None}, 2, "Missing option"),
        (["publish", "--event", "e", "--user", "p"], {"PUSHSVC_API_KEYS": None}, 2, "no API key"),
        (["publish", "--event", "e", "--user", "p", "--data", "{"], {}, 2, "--data is not JSON"),
        (["publish", "--event", "e", "--user", "p", "--all"], {}, 2, "exactly one of"),
        (["publish", "--event", "bad event!", "--all"], {}, 2, "event"),
        (["kick", "s1", "--user", "p"], {}, 2, "not both"),
        (["trace", "no-such-message"], {}, 1, "no message 'no-such-message'"),
        (["drain", "no-such-node"], {}, 1, "no live node 'no-such-node'"),
        (["nodes"], {"PUSHSVC_REGISTRY_INTERVAL": "-1"}, 2, "invalid settings"),
        (["stats", "--since", "soon"], {}, 2, "--since 'soon'"),
        (
            ["stats", "--api-url", "http://127.0.0.1:{port}"],
            {"PUSHSVC_REDIS_URL": None},
            2,
            "give --redis-url",
        ),
    ],
)
def test_errors_say_what_is_wrong_in_one_line(
    op: Operator, args: list[str], env: dict[str, str | None], code: int, says: str
) -> None:
    port = str(free_port())
    env = {k: v and v.replace("{port}", port) for k, v in env.items()}
    result = op(*(a.replace("{port}", port) for a in args), **env)
    assert result.exit_code == code, result.output
    if "Missing option" in says:  # Typer's own usage error
        assert says in result.output
        return
    assert says in no_traceback(result)


# -- drain ---------------------------------------------------------------------------------------


async def test_drain_closes_the_nodes_sessions_with_1001(op: Operator, redis: RedisServer) -> None:
    c = await asyncio.to_thread(launch_node, redis_url=redis.url, node_id="node-c", **FAST)
    try:
        wire = await Wire.open(c.client_url, c.token(uid()), device="phone")
        await asyncio.to_thread(
            wait_until,
            lambda: any(
                n["id"] == "node-c" and n["connections"] == 1 for n in op.json("nodes")["nodes"]
            ),
        )
        drained = await op.run("drain", "node-c", "--wait", "--timeout", str(10 * UNIT))
        assert drained.exit_code == 0, drained.output
        assert "node-c is draining" in drained.stdout and "holds no session" in drained.stdout
        code, _, _ = await wire.closed()
        assert code == 1001
        listed = await asyncio.to_thread(op.json, "nodes")
        states = {n["id"]: n["status"] for n in listed["nodes"]}
        assert states["node-c"] == "draining" and states["node-a"] == "up"
    finally:
        await asyncio.to_thread(c.stop)


# -- check-config --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alertmanager() -> Iterator[str]:
    with start_alertmanager() as am:
        yield am.url


def test_check_config_reaches_redis_every_node_and_alertmanager(
    op: Operator, alertmanager: str
) -> None:
    report = op.json("check-config", "--alertmanager-url", alertmanager)
    assert report["ok"] is True
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status == {
        "settings": "ok", "token secret": "warn", "api key": "ok", "redis": "ok",
        "registry": "ok", "api": "ok", "node node-a": "ok", "node node-b": "ok",
        "alertmanager": "ok",
    }  # fmt: skip
    table = op("check-config", "--alertmanager-url", alertmanager)
    assert table.exit_code == 0 and "Alertmanager" in table.stdout


def test_check_config_says_what_is_unreachable(op: Operator) -> None:
    port = free_port()
    result = op("check-config", "--alertmanager-url", f"http://127.0.0.1:{port}", "--json",
                PUSHSVC_TOKEN_SECRET="short")  # fmt: skip
    assert result.exit_code == 1
    checks = {c["name"]: c for c in orjson.loads(result.stdout)["checks"]}
    assert checks["alertmanager"]["status"] == "fail"
    assert f"cannot reach http://127.0.0.1:{port}" in checks["alertmanager"]["detail"]
    assert checks["token secret"]["status"] == "fail"
    dead = op("check-config", "--redis-url", f"redis://127.0.0.1:{port}/0")
    assert dead.exit_code == 1 and "cannot reach Redis" in dead.stdout


# -- stats ---------------------------------------------------------------------------------------


async def test_stats_counts_each_bucket_and_shows_a_lost_delivery(
    op: Operator, pair: list[NodeHandle]
) -> None:
    a, b = pair
    user = uid()
    phone = await Wire.open(a.client_url, a.token(user), device="phone")
    laptop = await Wire.open(b.client_url, b.token(user), device="laptop")  # never acks
    published = await op.run("publish", "--user", user, "--event", "lab.ready")
    message_id = published.stdout.strip()
    await phone.ack((await phone.recv_msg())["id"])
    assert (await laptop.recv_msg())["id"] == message_id
    bucket = bucket_of(message_id)
    # the monitor's deadlines, short: the loss check of the bucket comes right after it ends
    quick = {"PUSHSVC_ACK_TIMEOUT": "0.5", "PUSHSVC_MAX_ATTEMPTS": "1",
             "PUSHSVC_RECONNECT_WINDOW": "0", "PUSHSVC_MONITOR_GRACE": "0"}  # fmt: skip

    def checked() -> tuple[Result, dict[str, Any]] | None:
        result = op("stats", "--since", "2m", "--json", **quick)
        rows = orjson.loads(result.stdout)["buckets"]
        row = next((r for r in rows if r["bucket"] == bucket), None)
        return (result, row) if row and row["check"] != "open" and row["lost"] else None

    result, row = await asyncio.to_thread(wait_until, checked, 20 * UNIT)
    assert result.exit_code == 1  # a delivery was lost
    assert row["published"] >= 1 and row["expected"] >= 2 and row["sent"] >= 2
    assert row["acked"] >= 1 and row["lost"] >= 1 and row["ack_ratio"] < 1
    shown = await op.run("stats", "--since", "2m", **quick)
    assert shown.exit_code == 1
    for word in ("bucket", "published", "expected", "lost", "expired", "ack ratio", "total"):
        assert word in shown.stdout
    await phone.close()
    await laptop.close()


# -- top -----------------------------------------------------------------------------------------


async def test_top_renders_frames_with_rates_on_a_recording_console(
    op: Operator, pair: list[NodeHandle], redis: RedisServer
) -> None:
    a, _ = pair
    console = Console(record=True, file=io.StringIO(), width=160, force_terminal=True)
    keys: asyncio.Queue[str] = asyncio.Queue()
    settings = operator_settings(redis_url=redis.url, api_keys=API_KEY, registry_interval=0.5)

    async def operate() -> None:
        await asyncio.sleep(0.5 * UNIT)
        for _ in range(5):
            await asyncio.to_thread(a.publish, {"to": {"all": True}, "event": "tick"})
        await asyncio.sleep(0.6 * UNIT)
        keys.put_nowait("x")  # ignored
        keys.put_nowait("q")

    async with Cluster(settings) as cluster:
        started = time.monotonic()
        await asyncio.gather(watch(cluster, console, 0.25 * UNIT, keys), operate())
        assert time.monotonic() - started < 5 * UNIT
    text = console.export_text()
    assert text.count("pushsvc top") >= 3  # several frames
    for word in ("node-a", "node-b", "published/s", "acked/s", "cluster", "q quits"):
        assert word in text
    frames = text.split("pushsvc top")
    assert any(_rate_of(f, "node-a") > 0 for f in frames)  # a's publishes show as a rate


def _rate_of(frame: str, node: str) -> float:
    for line in frame.splitlines():
        cells = line.split()
        if cells and cells[0] == node and len(cells) > 4:
            try:
                return float(cells[4])  # published/s
            except ValueError:
                return 0.0
    return 0.0


def _top_command(redis: RedisServer) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    env |= {"PUSHSVC_REDIS_URL": redis.url, "PUSHSVC_API_KEYS": API_KEY, "COLUMNS": "160"}
    return [*pushsvc_command(), "top", "--interval", "0.3"], env


def test_top_quits_on_q_from_a_pipe(op: Operator, redis: RedisServer) -> None:
    command, env = _top_command(redis)
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    time.sleep(1.5 * UNIT)
    assert proc.poll() is None  # still watching
    out, err = proc.communicate(b"q", timeout=10 * UNIT)
    assert proc.returncode == 0, err
    assert b"node-a" in out and b"Traceback" not in err  # the last frame stays on a pipe


@pytest.mark.parametrize("key", ["q", "C-c"])
def test_top_quits_cleanly_in_a_terminal(op: Operator, redis: RedisServer, key: str) -> None:
    tmux = shutil.which("tmux")
    assert tmux, "tmux is not installed (apt-get install tmux)"
    command, env = _top_command(redis)
    name = f"pushsvc-top-{secrets.token_hex(3)}"
    socket_dir = tempfile.mkdtemp(prefix="pushsvc-tmux-")
    tm = [tmux, "-S", f"{socket_dir}/sock"]
    exports = " ".join(f"{k}={v}" for k, v in env.items() if k.startswith("PUSHSVC_"))
    script = (f"cd {ROOT} && env {exports} {' '.join(command)}; echo EXIT=$?; "
              "stty -a | tr ' ;' '\\n\\n' | grep -x -e -icanon -e icanon -e echo -e -echo; "
              "echo DONE; sleep 60")  # fmt: skip
    subprocess.run([*tm, "new-session", "-d", "-s", name, "-x", "160", "-y", "30", script],
                   check=True, env=env)  # fmt: skip

    def screen() -> str:
        out = subprocess.run(
            [*tm, "capture-pane", "-p", "-t", name], capture_output=True, check=False
        )
        return out.stdout.decode()

    try:
        shown = wait_until(lambda: "node-b" in (s := screen()) and s, 15 * UNIT)
        assert "pushsvc top" in shown and "node-a" in shown and "q quits" in shown
        subprocess.run([*tm, "send-keys", "-t", name, key], check=True)
        after = wait_until(lambda: "DONE" in (s := screen()) and s, 10 * UNIT)
        assert "EXIT=0" in after, after
        assert "Traceback" not in after
        lines = after.split()
        assert "icanon" in lines and "echo" in lines, after  # the terminal is back to normal
    finally:
        subprocess.run([*tm, "kill-server"], capture_output=True, check=False)
        shutil.rmtree(socket_dir, ignore_errors=True)
