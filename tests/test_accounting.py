"""The delivery accounting as one table: sequences of ledger records and the tallies they add up
to (docs/monitoring.md).

Each row runs here through the pure fold (:mod:`pushsvc.core.accounting`, no event loop), and in
the contract suite through every broker's ledger (tests/test_broker_contract.py), so the memory
ledger and the Redis ledger script are checked against the same rows. Rows name their messages
``M`` and ``N`` (one publish bucket) and ``U`` (an id without a publish time); :func:`bind` gives
them real ids and a live expiry.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import msgspec
import pytest

from pushsvc.core.accounting import (
    Accepted,
    Acked,
    Delta,
    Expected,
    Expired,
    LedgerEvent,
    Published,
    Sent,
    SentCount,
    Tallies,
    Tally,
    bucket_of,
    tally,
)


def p(m: str = "M", *, ack: bool = True) -> Published:
    return Published(m, "queue.called", 0.0, 0.0, ack, {"user:p1": "1-0"})


def accepted(node: str, m: str = "M", *, ack: bool = True) -> Accepted:
    return Accepted(m, node, ack)


def sent(device: str, session: str, node: str, attempt: int = 1, m: str = "M") -> Sent:
    return Sent(m, device, session, node, 1.0, attempt)


def acked(device: str, session: str, node: str, m: str = "M") -> Acked:
    return Acked(m, device, session, node, 2.0)


def expected(device: str, session: str, node: str, m: str = "M") -> Expected:
    return Expected(m, device, session, node, 1.0)


def expired(device: str, node: str, m: str = "M") -> Expired:
    return Expired(m, device, node)


@dataclass(frozen=True)
class Row:
    name: str
    events: list[LedgerEvent]
    tally: Tally  # of the bucket of M and N


A1 = {"expected": 1, "sent": 1}

TABLE = [
    Row(
        "published, sent, acked",
        [p(), accepted("a"), sent("phone", "s1", "a"), acked("phone", "s1", "a")],
        {"a": {"published": 1, **A1, "acked": 1}},
    ),
    Row(
        "sent and acked before their published",
        [sent("phone", "s1", "a"), acked("phone", "s1", "a"), p(), accepted("a")],
        {"a": {"published": 1, **A1, "acked": 1}},
    ),
    Row(
        "accepted again by a retried flush",
        [p(), accepted("a"), accepted("a")],
        {"a": {"published": 1}},
    ),
    Row(
        "the same sent again by a retried flush",
        [p(), sent("phone", "s1", "a"), sent("phone", "s1", "a")],
        {"a": A1},
    ),
    Row(
        "replayed to the device's new session on another node",
        [p(), sent("phone", "s1", "a"), sent("phone", "s2", "b")],
        {"a": A1},
    ),
    Row(
        "acked from two sessions of one device",
        [
            p(),
            sent("phone", "s1", "a"),
            sent("phone", "s2", "b"),
            acked("phone", "s2", "b"),
            acked("phone", "s1", "a"),
        ],
        {"a": A1, "b": {"acked": 1}},
    ),
    Row(
        "acked twice by a retried flush",
        [p(), sent("phone", "s1", "a"), acked("phone", "s1", "a"), acked("phone", "s1", "a")],
        {"a": {**A1, "acked": 1}},
    ),
    Row("acked with no write recorded", [p(), acked("phone", "s1", "a")], {"a": {"acked": 1}}),
    Row(
        "each redelivery counts, on its node",
        [
            p(),
            sent("phone", "s1", "a"),
            sent("phone", "s1", "a", 2),
            sent("phone", "s1", "a", 3),
            sent("phone", "s2", "b", 2),
        ],
        {"a": {**A1, "redelivered": 2}, "b": {"redelivered": 1}},
    ),
    Row(
        "a redelivery recorded before the first write",
        [p(), sent("phone", "s1", "a", 2), sent("phone", "s1", "a")],
        {"a": {**A1, "redelivered": 1}},
    ),
    Row("attempt 0 is not a redelivery", [p(), sent("phone", "s1", "a", 0)], {"a": A1}),
    Row(
        "owed on a, written by b",
        [p(), expected("tablet", "s3", "a"), sent("tablet", "s4", "b"), acked("tablet", "s4", "b")],
        {"a": {"expected": 1}, "b": {"sent": 1, "acked": 1}},
    ),
    Row(
        "owed twice, written twice",
        [
            p(),
            expected("tablet", "s3", "a"),
            expected("tablet", "s4", "b"),
            sent("tablet", "s4", "b"),
            sent("tablet", "s3", "a"),
        ],
        {"a": {"expected": 1}, "b": {"sent": 1}},
    ),
    Row(
        "owed after it was written",
        [p(), sent("tablet", "s3", "a"), expected("tablet", "s4", "b")],
        {"a": A1},
    ),
    Row("owed, never written", [p(), expected("watch", "s5", "b")], {"b": {"expected": 1}}),
    Row(
        "owed before its published, then written",
        [expected("watch", "s5", "b"), p(), sent("watch", "s5", "b")],
        {"b": A1},
    ),
    Row(
        "expired once per device",
        [p(), expired("laptop", "b"), expired("laptop", "a"), expired("tv", "b")],
        {"b": {"expired": 2}},
    ),
    Row(
        "expired after it was owed",
        [p(), expected("laptop", "s1", "a"), expired("laptop", "b")],
        {"a": {"expected": 1}, "b": {"expired": 1}},
    ),
    Row(
        "ack:false writes are counted per node, not per device",
        [p(ack=False), accepted("a", ack=False), SentCount("M", "a", 3), SentCount("M", "b", 2)],
        {"a": {"published": 1}},
    ),
    Row(
        "two messages, one bucket",
        [
            p(),
            p("N"),
            accepted("a"),
            accepted("b", "N"),
            sent("phone", "s1", "a"),
            sent("phone", "s1", "a", m="N"),
            acked("phone", "s1", "a", "N"),
            expected("tablet", "s2", "b", "N"),
        ],
        {
            "a": {"published": 1, "expected": 2, "sent": 2, "acked": 1},
            "b": {"published": 1, "expected": 1},
        },
    ),
    Row(
        "an id without a publish time is not accounted",
        [
            p("U"),
            accepted("a", "U"),
            sent("phone", "s1", "a", m="U"),
            sent("phone", "s1", "a", 2, "U"),
            expected("tablet", "s2", "a", "U"),
            acked("phone", "s1", "a", "U"),
            expired("tv", "a", "U"),
        ],
        {},
    ),
]


def bind(events: list[LedgerEvent], now: float) -> tuple[dict[str, str], list[LedgerEvent]]:
    """The row's messages as real ids (``M`` and ``N`` published at ``now``, ``U`` with no
    publish time) and its events with those ids, each Published expiring ten minutes on."""
    ms = int(now * 1000)
    ids = {
        "M": f"{ms:012x}{secrets.token_hex(10)}",
        "N": f"{ms:012x}{secrets.token_hex(10)}",
        "U": f"u-{secrets.token_hex(10)}",
    }
    out: list[LedgerEvent] = []
    for event in events:
        if isinstance(event, Published):
            out.append(
                msgspec.structs.replace(
                    event, message_id=ids[event.message_id], ts=now, expires=now + 600
                )
            )
        else:
            out.append(msgspec.structs.replace(event, message_id=ids[event.message_id]))
    return ids, out


@pytest.mark.parametrize("row", [pytest.param(row, id=row.name) for row in TABLE])
def test_the_fold_adds_each_row_up_to_its_tally(row: Row) -> None:
    ids, events = bind(row.events, 1_765_000_000.0)
    bucket = bucket_of(ids["M"])
    assert bucket is not None
    assert tally(events) == ({bucket: row.tally} if row.tally else {})


@pytest.mark.parametrize("row", [pytest.param(row, id=row.name) for row in TABLE])
def test_the_deltas_are_what_the_tallies_add(row: Row) -> None:
    _, events = bind(row.events, 1_765_000_000.0)
    tallies = Tallies()
    summed: dict[int, Tally] = {}
    for event in events:
        for delta in tallies.apply(event):
            assert delta.n == 1
            by_node = summed.setdefault(delta.bucket, {}).setdefault(delta.node, {})
            by_node[delta.counter] = by_node.get(delta.counter, 0) + delta.n
    assert summed == tallies.by_bucket


def test_markers_are_forgotten_with_their_message_and_tallies_with_their_bucket() -> None:
    (_, events) = bind(
        [p(), accepted("a"), sent("phone", "s1", "a"), acked("phone", "s1", "a")], 1_765_000_000.0
    )
    m = events[0].message_id
    bucket = bucket_of(m)
    assert bucket is not None
    tallies = Tallies()
    for event in events:
        tallies.apply(event)
    assert tallies.owners(m) == {"phone": "a"} and tallies.acked("phone", m)
    assert tallies.published == {bucket: {m}}
    tallies.forget(m)
    assert tallies.owners(m) == {} and not tallies.acked("phone", m)
    # forgotten: the same records count as new (a ledger forgets a message with its trail)
    assert tallies.apply(events[3]) == [Delta(bucket, "a", "acked")]
    tallies.drop(bucket)
    assert tallies.by_bucket == {} and tallies.published == {}
