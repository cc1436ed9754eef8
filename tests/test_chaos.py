"""The fault campaign (``python -m bench.chaos``): its judge, its schedule, and a short campaign.

The short campaign runs three real nodes, a persistent redis-server, Alertmanager and the monitor
for 75 s of load under every fault class (:data:`CI_FAULTS`, each at least once) and asserts every
delivery guarantee (docs/benchmarks.md, "Fault campaign").
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pytest

from bench.chaos import options
from bench.chaos_check import dropped, judge, logged_drops, missing_pairs, refusal_window
from bench.chaos_faults import ALL_FAULTS, DROP_FRACTION, FAULTS, Fault, schedule
from bench.chaos_load import Device, Publisher, Sent
from tests.support import ROOT, UNIT

CI_FAULTS = FAULTS  # every fault class
NOWHERE = "http://127.0.0.1:9"  # discard port: trails cannot be read there


def device(user: str, name: str, node: str = "n0", topics: tuple[str, ...] = ()) -> Device:
    return Device(user, name, node, "ws://127.0.0.1:9/ws", "token", topics)


def publisher(*sent: Sent, ids: dict[str, set[str]] | None = None) -> Publisher:
    p = Publisher("c0", [], ["p0", "p1"], random.Random(0))
    p.accepted = list(sent)
    p.ids_by_key = ids if ids is not None else {s.key: {s.id} for s in sent}
    return p


def sent(msg_id: str, key: str, users: tuple[str, ...] = ("p0",), at: float = 100.0) -> Sent:
    return Sent(msg_id, "c0", key, users, (), at, 1)


def test_schedule_is_replayable_and_covers_every_fault_first() -> None:
    one = schedule(7, 100, 3, 10, list(FAULTS), 8)
    assert one == schedule(7, 100, 3, 10, list(FAULTS), 8)
    assert one != schedule(8, 100, 3, 10, list(FAULTS), 8)
    assert sorted(f.kind for f in one[: len(FAULTS)]) == sorted(FAULTS)
    assert [f.at for f in one] == [8.0 * i for i in range(1, len(one) + 1)]
    assert all(f.at <= 92 for f in one)
    assert schedule(7, 100, 3, 10, [], 8) == []


@pytest.mark.parametrize(
    ("stream", "data", "topics", "misrouted"),
    [
        ("user:p0", {"users": ["p0"]}, (), False),
        ("user:p0", {"users": ["p1", "p0"]}, (), False),
        ("user:p1", {"users": ["p1"]}, (), True),  # another patient's stream
        ("user:p0", {"users": ["p1"]}, (), True),  # on its stream, addressed to someone else
        ("topic:board", {"topics": ["board"]}, ("board",), False),
        ("topic:board", {"topics": ["board"]}, (), True),  # a topic its token does not list
        ("user:p0", "not an object", (), True),
    ],
)
def test_a_device_flags_what_was_not_addressed_to_it(
    stream: str, data: object, topics: tuple[str, ...], misrouted: bool
) -> None:
    d = device("p0", "p0-d0", topics=topics)
    d._take("m1", stream, data)
    assert "m1" in d.received
    assert bool(d.misrouted) is misrouted


def test_the_judge_passes_a_clean_run_and_fails_each_broken_guarantee() -> None:
    a, b = device("p0", "p0-d0"), device("p0", "p0-d1", node="n1")
    for d in (a, b):
        d._take("m1", "user:p0", {"users": ["p0"], "key": "k1", "caller": "c0"})
    clean = judge([publisher(sent("m1", "k1"))], [a, b], [], NOWHERE, {}, set())
    assert not clean.failed, clean.rows
    assert {r["result"] for r in clean.rows} == {"PASS", "n/a"}

    missing = judge([publisher(sent("m1", "k1"), sent("m2", "k2"))], [a, b], [], NOWHERE, {}, set())
    row = next(r for r in missing.rows if r["invariant"] == "every 202'd id delivered")
    assert (row["result"], row["value"]) == ("FAIL", 2)
    blind = next(r for r in missing.rows if r["invariant"] == "monitor: real loss reported")
    assert blind["result"] == "FAIL"  # the monitor's /metrics ({}) said nothing about them

    double = judge(
        [publisher(sent("m1", "k1"), ids={"k1": {"m1", "m9"}})], [a, b], [], NOWHERE, {}, set()
    )
    assert next(r for r in double.rows if r["invariant"].startswith("one id"))["result"] == "FAIL"

    other = publisher(sent("m2", "k1"))  # another caller, the same key string: its own id
    other.caller = "c1"
    a._take("m2", "user:p0", {"users": ["p0"], "key": "k1", "caller": "c1"})
    two = judge([publisher(sent("m1", "k1")), other], [a], [], NOWHERE, {}, set())
    assert next(r for r in two.rows if r["invariant"].startswith("one id"))["result"] == "PASS"

    answered = publisher(sent("m1", "k1"))
    answered.statuses.update({"202": 1, "503": 4, "409": 1, "ConnectError": 2})
    assert not judge([answered], [a, b], [], NOWHERE, {}, set()).failed
    answered.statuses["500"] = 1
    odd = judge([answered], [a, b], [], NOWHERE, {}, set())
    assert next(r for r in odd.rows if r["invariant"].startswith("publish"))["result"] == "FAIL"

    a._take(
        "m7", "user:p0", {"users": ["p0"], "key": "k1", "caller": "c0"}
    )  # a second id for k1, seen only
    unseen = judge([publisher(sent("m1", "k1"))], [a, b], [], NOWHERE, {}, set())
    assert next(r for r in unseen.rows if r["invariant"].startswith("one id"))["value"] == 1


def test_the_judge_holds_the_monitor_to_the_losses_it_was_given() -> None:
    ids = [f"m{i}" for i in range(200)]
    lost = next(i for i in ids if _dropped(i))
    a = device("p0", "p0-d0", node="n0")
    for i in ids:
        if i != lost:
            a._take(i, "user:p0", {"users": ["p0"], "key": i, "caller": "c0"})
    pub = publisher(*(sent(i, i) for i in ids))
    window = Fault(5, "drop", 0, 5, window=(90.0, 110.0), node_id="n0")
    counts = {"unfanned": 1.0, "lost": 0.0, "canary_lost": 0.0}
    zero = dict.fromkeys(counts, 0.0)

    def rows(said: dict[str, dict[str, float]], alerts: set[str]) -> dict[str, str]:
        verdict = judge([pub], [a], [window], NOWHERE, said, alerts)
        return {r["invariant"]: r["result"] for r in verdict.rows}

    assert rows({"n0": counts}, set())["monitor: injected loss reported"] == "PASS"
    assert rows({"n0": zero}, {"n0"})["monitor: injected loss reported"] == "PASS"  # alert only
    assert rows({"n0": zero}, set())["monitor: injected loss reported"] == "FAIL"
    assert rows({"n0": counts, "n1": counts}, set())["monitor: no false loss"] == "FAIL"
    excused = {"n0": counts, "n1": counts | {"canary_lost": 1.0}}
    assert rows(excused, set())["monitor: no false loss"] == "PASS"  # its own canary was lost
    assert missing_pairs([pub], [a])[1] == len(ids)


def _dropped(message_id: str) -> bool:
    return zlib.crc32(message_id.encode()) / 2**32 < DROP_FRACTION


@pytest.mark.redis
@pytest.mark.timeout(int(300 * UNIT))
def test_a_short_campaign_keeps_every_guarantee(tmp_path: Path) -> None:
    report = tmp_path / "chaos.json"
    campaign = "--seed 11 --duration 75 --nodes 3 --devices 12 --rate 8 --fault-every 7"
    argv = [sys.executable, "-m", "bench.chaos", *campaign.split(), "--report", str(report)]
    argv += ["--faults", ",".join(CI_FAULTS), "--settle", f"{30 * UNIT:g}"]
    done = subprocess.run(
        argv, check=False, cwd=ROOT, capture_output=True, text=True, timeout=280 * UNIT
    )
    assert report.exists(), done.stdout + done.stderr
    result = json.loads(report.read_text())
    assert done.returncode == 0, done.stdout
    assert {r["invariant"]: r["result"] for r in result["verdict"]} == {
        "every 202'd id delivered": "PASS",
        "no misrouted message": "PASS",
        "one id per (caller, key)": "PASS",
        "publish answers 202 or 503": "PASS",
        "monitor: no false loss": "PASS",
        "monitor: injected loss reported": "PASS",
        "monitor: real loss reported": "n/a",
    }, done.stdout
    kinds = Counter(f["kind"] for f in result["faults"])
    assert set(kinds) == set(CI_FAULTS), done.stdout
    assert not [f for f in result["faults"] if f["outcome"].startswith("error")], done.stdout
    facts = result["facts"]
    assert facts["published_202"] >= 200, facts
    assert facts["reconnects"] > 0, facts  # the faults reached the devices
    assert facts["injected_missing_pairs"] > 0, facts  # and the deliberate losses happened
    assert facts["devices_ended"] == [], facts


@pytest.mark.parametrize(
    ("argv", "ok"),
    [
        (["--faults", "kill,drop"], True),
        (["--faults", "kill,meteor"], False),
        (["--nodes", "1"], False),
        (["--faults", "failover"], False),  # a standalone redis-server has nobody to promote
        (["--redis", "sentinel", "--faults", "kill,drop"], True),
        (["--redis", "raft", "--faults", "kill,drop"], False),
    ],
)
def test_the_campaign_refuses_what_it_cannot_run(argv: list[str], ok: bool) -> None:
    if ok:
        assert options(argv).fault_list == ["kill", "drop"]
    else:
        with pytest.raises(SystemExit) as exc:
            options(argv)
        assert exc.value.code == 2


def test_a_dropped_delivery_replayed_after_the_fan_out_check_counts_as_missed() -> None:
    msg_id = next(f"m{i}" for i in range(100) if _dropped(f"m{i}"))
    window = Fault(5, "drop", 0, 5, window=(90.0, 110.0), node_id="n0")
    said = {"n0": {"unfanned": 1.0, "lost": 0.0, "canary_lost": 0.0}}
    for delay, verdict in ((1.0, "FAIL"), (30.0, "PASS")):
        a = device("p0", "p0-d0", node="n0")
        a._take(msg_id, "user:p0", {"users": ["p0"], "key": "k", "caller": "c0"})
        a.received[msg_id] = 100.0 + delay  # a restart of n0 replayed it this late
        rows = judge([publisher(sent(msg_id, "k"))], [a], [window], NOWHERE, said, set()).rows
        assert next(r for r in rows if r["invariant"] == "monitor: no false loss")["result"] == (
            verdict
        )


def test_what_a_node_logged_as_dropped_is_what_counts_as_dropped(tmp_path: Path) -> None:
    """A message published long before a node's drop window can be dropped in it (a replay to a
    device that resumed there): the node's log says so, whatever the publish time."""
    lines = [
        {"ts": 1.0, "level": "warning", "msg": "delivery dropped by a fault", "message_id": "m1"},
        {"ts": 2.0, "level": "warning", "msg": "bus gap", "stream": "user:p0"},
        {"ts": 3.0, "level": "warning", "msg": "delivery dropped by a fault", "message_id": "m2"},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\nnot json delivery dropped by a fault\n"
    (tmp_path / "n0.log").write_text(text)
    (tmp_path / "n1.log").write_text("")
    logged = logged_drops(tmp_path)
    assert logged == {"n0": {"m1", "m2"}, "n1": set()}
    window = Fault(5, "drop", 0, 5, window=(190.0, 200.0), node_id="n0")
    early = sent("m1", "k", at=100.0)  # 202'd 90 s before the window opened
    assert dropped(early, device("p0", "p0-d0", node="n0"), [window], logged)
    assert not dropped(early, device("p0", "p0-d1", node="n1"), [window], logged)
    assert not dropped(sent("m3", "k3", at=195.0), device("p0", "p0-d0"), [window], logged)
    assert logged_drops(None) is None


def test_the_topology_chooses_the_default_faults_and_replicas() -> None:
    standalone, cluster = options([]), options(["--redis", "cluster"])
    assert (standalone.fault_list, standalone.min_replicas) == (list(FAULTS), 0)
    assert (cluster.fault_list, cluster.min_replicas) == (list(ALL_FAULTS), 1)
    assert "failover" in cluster.fault_list
    assert options(["--redis", "sentinel", "--min-replicas", "0"]).min_replicas == 0


KILLED = 100.0


@pytest.mark.parametrize(
    ("answers", "first_202", "last_refused", "refused"),
    [
        # (sent, answered, status) after a kill at 100 s; the next fault began at 130 s
        ([(101.0, 101.1, "503"), (102.0, 102.5, "202")], 2.5, 1.1, 2.5),
        # a 202 in flight at the kill does not end the window, a later refusal extends it
        (
            [(99.9, 100.2, "202"), (101, 101, "503"), (103, 103, "202"), (103, 104, "503")],
            3.0,
            4.0,
            4.0,
        ),
        ([(101.0, 106.0, "ReadTimeout"), (106.1, 106.2, "202")], 6.2, 6.0, 6.2),
        ([(95.0, 96.0, "503"), (131.0, 131.5, "503"), (101.0, 101.0, "202")], 1.0, None, 1.0),
        ([], None, None, None),
    ],
)
def test_the_refusal_window_runs_from_the_kill_to_the_last_refusal_or_first_202(
    answers: list[tuple[float, float, str]],
    first_202: float | None,
    last_refused: float | None,
    refused: float | None,
) -> None:
    w = refusal_window(answers, KILLED, 130.0)
    assert (w["first_202_s"], w["last_refused_s"], w["refused_s"]) == (
        first_202,
        last_refused,
        refused,
    )


def test_the_judge_holds_a_failover_to_the_refusal_limit() -> None:
    for took, result in ((3.0, "PASS"), (7.0, "FAIL")):
        p = publisher()
        p.answers = [(101.0, 101.0, "503"), (KILLED + took, KILLED + took, "202")]
        f = Fault(5, "failover", 0, 0, began=99.0, killed_at=KILLED, failover={"old": "a"})
        v = judge([p], [], [f], NOWHERE, {}, set(), 200.0, refusal_limit=5.0)
        row = next(r for r in v.rows if r["invariant"].startswith("failover"))
        assert (row["result"], row["value"]) == (result, f"{took:g} s")
        assert v.facts["failover_refused_s"] == [took]
    quiet = judge([publisher()], [], [], NOWHERE, {}, set())
    assert not any(r["invariant"].startswith("failover") for r in quiet.rows)
    assert "failover_refused_s" not in quiet.facts
    broken = Fault(5, "failover", 0, 0, began=99.0, outcome="error: TimeoutError()")
    v = judge([publisher()], [], [broken], NOWHERE, {}, set(), 200.0)
    assert next(r for r in v.rows if r["invariant"].startswith("failover"))["result"] == "FAIL"
