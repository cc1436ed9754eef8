"""The operator commands' pure parts, with tables: node states, rates, fan-out, formatting."""

from __future__ import annotations

import pytest

from cli.api import Refused, base_url
from cli.cluster import api_candidate, node_status, redacted
from cli.output import after, duration, seconds
from cli.stats import parse_since
from cli.top import COUNTERS, Sample, counters_of, rates
from cli.trace import NodeFanOut, fan_out
from pushsvc.broker.base import NodeInfo
from pushsvc.core import offsets
from pushsvc.node.operations import trace_id
from pushsvc.records import DeviceDelivery, MessageTrail

NOW = 1_800_000_000.0


def node(
    id_: str, heartbeat: float = NOW, state: str = "up", addr: str = "10.0.0.1:8081"
) -> NodeInfo:
    return NodeInfo(
        id=id_, client_addr="10.0.0.1:8080", internal_addr=addr, pid=1, version="0.1.0",
        started=NOW - 60, heartbeat=heartbeat, state=state,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("heartbeat_age", "state", "expected"),
    [
        (0.0, "up", "up"),
        (3.9, "up", "up"),  # within two periods of 2 s
        (4.1, "up", "heartbeat stale"),
        (1.0, "draining", "draining"),
        (9.0, "draining", "heartbeat stale"),  # the one to act on wins
    ],
)
def test_node_status(heartbeat_age: float, state: str, expected: str) -> None:
    assert node_status(node("n", NOW - heartbeat_age, state), NOW, 2.0) == expected


def test_the_api_node_is_up_fresh_and_routable() -> None:
    nodes = [
        node("stale", NOW - 10),
        node("draining", NOW, "draining"),
        node("wildcard", NOW, addr="0.0.0.0:8081"),
        node("older", NOW - 1),
        node("fresh", NOW - 0.5),
    ]
    chosen = api_candidate(nodes, NOW, 2.0)
    assert chosen is not None and chosen.id == "fresh"
    assert api_candidate(nodes[:3], NOW, 2.0) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("15m", 900), ("90s", 90), ("2h", 7200), ("1d", 86_400), ("30", 30), (" 1.5M ", 90)],
)
def test_since(value: str, expected: float) -> None:
    assert parse_since(value) == expected


@pytest.mark.parametrize("value", ["", "m", "-5m", "0", "soon", "5y"])
def test_since_refuses(value: str) -> None:
    with pytest.raises(ValueError):
        parse_since(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, "0s"), (59.9, "59s"), (62, "1m 02s"), (3723, "1h 02m"), (90_061, "1d 01h")],
)
def test_duration(value: float, expected: str) -> None:
    assert duration(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "-"), (0.0, "0 ms"), (0.00042, "420 µs"), (0.0123, "12 ms"), (1.234, "1.23 s")],
)
def test_seconds(value: float | None, expected: str) -> None:
    assert seconds(value) == expected
    assert after(None, NOW) == "-" and after(NOW + 0.004, NOW) == "+4 ms"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("redis://:s3cret@db:6379/0", "redis://:***@db:6379/0"),
        ("redis://user:pw@db/0", "redis://user:***@db/0"),
        ("redis://db:6379/0", "redis://db:6379/0"),
    ],
)
def test_redis_passwords_never_printed(given: str, expected: str) -> None:
    assert redacted(given) == expected


def test_api_urls() -> None:
    assert base_url("10.0.0.1:8081") == "http://10.0.0.1:8081"
    assert base_url("https://api.example/") == "https://api.example"
    assert Refused(401, "unauthorized", "x").exit_code == 2
    assert Refused(422, "invalid_body", "x").exit_code == 2
    assert Refused(404, "not_found", "x").exit_code == 1
    assert Refused(503, "broker_unavailable", "x").exit_code == 1


def test_fan_out_groups_the_trail_by_node() -> None:
    trail = MessageTrail(
        id="m", event="e", published_at=NOW, expires_at=NOW + 60, ack=True,
        streams={"user:p1": "1-0"}, state="partially_acked",
        devices=[
            DeviceDelivery(user="p1", device="phone", session="s1", node="a", sent_at=NOW + 0.002, acked_at=NOW + 0.01, attempts=1, push_sent_at=None),
            DeviceDelivery(user="p1", device="laptop", session="s2", node="b", sent_at=NOW + 0.003, acked_at=None, attempts=3, push_sent_at=None),
            DeviceDelivery(user="p1", device="tab", session="s3", node="b", sent_at=NOW + 0.001, acked_at=NOW + 2, attempts=2, push_sent_at=None),
        ],
        sent_by_node={"c": 4},
    )  # fmt: skip
    assert fan_out(trail) == [
        NodeFanOut("a", sessions=1, sent=1, acked=1, redeliveries=0, first_sent=NOW + 0.002),
        NodeFanOut("b", sessions=2, sent=5, acked=1, redeliveries=3, first_sent=NOW + 0.001),
        NodeFanOut("c", sessions=0, sent=4, acked=0, redeliveries=0, first_sent=None),
    ]


EXPOSITION = """\
# HELP pushsvc_messages_published_total Messages accepted
# TYPE pushsvc_messages_published_total counter
pushsvc_messages_published_total 10.0
# TYPE pushsvc_messages_sent_total counter
pushsvc_messages_sent_total 25.0
# TYPE pushsvc_messages_acked_total counter
pushsvc_messages_acked_total 20.0
# TYPE pushsvc_redeliveries_total counter
pushsvc_redeliveries_total 1.0
# TYPE pushsvc_connections_closed_total counter
pushsvc_connections_closed_total{code="4010"} 3.0
"""


def test_counters_of_an_exposition() -> None:
    assert counters_of(EXPOSITION) == {
        "pushsvc_messages_published_total": 10.0,
        "pushsvc_messages_sent_total": 25.0,
        "pushsvc_messages_acked_total": 20.0,
        "pushsvc_redeliveries_total": 1.0,
    }


def test_rates_between_samples() -> None:
    def at(t: float, **by_node: float) -> Sample:
        counters = {n: dict.fromkeys(COUNTERS.values(), v) for n, v in by_node.items()}
        return Sample(at=t, now=NOW + t, nodes=[], counters=counters)

    first = at(0.0, a=10.0, b=50.0)
    assert rates(None, first)["a"]["sent/s"] is None  # one sample says nothing about a rate
    later = rates(first, at(2.0, a=30.0, b=5.0, c=1.0))
    assert later["a"]["sent/s"] == 10.0
    assert later["b"]["sent/s"] is None  # went back: the node restarted
    assert later["c"]["acked/s"] is None  # new node


@pytest.mark.parametrize(
    ("offset", "before"),
    [
        ("1700000000000-5", "1700000000000-4"),
        ("1700000000000-0", "1699999999999-18446744073709551615"),
        ("0-0", None),
    ],
)
def test_the_offset_before(offset: str, before: str | None) -> None:
    assert offsets.preceding(offset) == before


@pytest.mark.parametrize(
    ("traceparent", "expected"),
    [
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        ("", ""),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", ""),
        ("garbage", ""),
    ],
)
def test_trace_id(traceparent: str, expected: str) -> None:
    assert trace_id(traceparent) == expected
