"""The monitor's pure parts, by tables: reconciliation arithmetic, check schedule, alert plans,
canary tracks. No event loop, no I/O."""

from __future__ import annotations

import pytest

from monitor.alerts import Alert, AlertBook, delivery_loss
from monitor.canary import CanaryTrack, canary_user
from monitor.reconcile import FANOUT, FINAL, LOSS, Policy, Reconciler, gap, reconcile
from pushsvc.broker.base import Pair
from pushsvc.core.streams import valid_name

POLICY = Policy(ack_timeout=10, max_attempts=5, grace=10, reconnect_window=60, late_check=120)
B = 1_000_000  # a bucket start (unix s)


def pair(device: str, node: str = "a", *, sent: bool = True, acked: bool = False,
         expires: float = B + 86_400, message: str = "m1") -> Pair:  # fmt: skip
    return Pair(message_id=message, device=device, node=node, sent=sent, acked=acked,
                expires_at=expires)  # fmt: skip


@pytest.mark.parametrize(
    ("check", "due"),
    [(FANOUT, B + 5 + 10 + 10), (LOSS, B + 5 + 50 + 60 + 10), (FINAL, B + 5 + 50 + 60 + 10 + 120)],
)
def test_checks_are_due_after_the_deadlines(check: int, due: float) -> None:
    assert POLICY.due(B, check) == due


@pytest.mark.parametrize(
    ("tally", "expected_gap"),
    [
        ({}, 0),
        ({"a": {"expected": 3, "sent": 3, "acked": 3}}, 0),
        ({"a": {"expected": 3, "sent": 3, "acked": 1}}, 2),
        # expected on a, acked after a reconnect on b: the cluster has no gap
        ({"a": {"expected": 2, "sent": 2, "acked": 1}, "b": {"acked": 1}}, 0),
        ({"a": {"published": 5}}, 0),
    ],
)
def test_gap_is_cluster_wide(tally: dict[str, dict[str, int]], expected_gap: int) -> None:
    assert gap(tally) == expected_gap


@pytest.mark.parametrize(
    ("check", "pairs", "now", "want"),
    [
        # never written: unfanned from the fan-out check on
        (FANOUT, [pair("d1", sent=False)], B + 30, {"a": (1, 0, 0)}),
        # written, not acked: pending at the fan-out check, lost at the loss check
        (FANOUT, [pair("d1")], B + 30, {}),
        (LOSS, [pair("d1")], B + 200, {"a": (0, 1, 0)}),
        (FINAL, [pair("d1", "b")], B + 400, {"b": (0, 1, 0)}),
        # acked pairs are fine, whoever acked
        (LOSS, [pair("d1", acked=True), pair("d2", sent=False, acked=True)], B + 200, {}),
        # expired before anyone acked: expired, neither lost nor unfanned
        (LOSS, [pair("d1", expires=B + 100), pair("d2", sent=False, expires=B + 100)], B + 200,
         {"a": (0, 0, 2)}),
        # each pair counts for the node that owes it
        (LOSS, [pair("d1", "a"), pair("d2", "b", sent=False), pair("d3", "b")], B + 200,
         {"a": (0, 1, 0), "b": (1, 1, 0)}),
    ],
)  # fmt: skip
def test_reconcile_classifies_missing_pairs(
    check: int, pairs: list[Pair], now: float, want: dict[str, tuple[int, int, int]]
) -> None:
    report = reconcile(B, check, {"a": {"expected": 3}}, pairs, now)
    got = {
        n: (c.unfanned, c.lost, c.expired)
        for n, c in report.nodes.items()
        if c.unfanned or c.lost or c.expired
    }
    assert got == want
    for node, counts in report.nodes.items():
        assert len(counts.samples) == counts.unfanned + counts.lost, node
        assert all(m.node == node for m in counts.samples)


def test_without_detail_the_counters_decide_per_node() -> None:
    tally = {
        "a": {"expected": 5, "sent": 4, "acked": 2},
        "b": {"expected": 1, "sent": 1, "acked": 1},
    }
    fanout = reconcile(B, FANOUT, tally, None, B + 30)
    assert (fanout.nodes["a"].unfanned, fanout.nodes["a"].lost) == (1, 0)
    loss = reconcile(B, LOSS, tally, None, B + 200)
    assert (loss.nodes["a"].unfanned, loss.nodes["a"].lost, loss.nodes["b"].missing) == (1, 2, 0)
    clean = reconcile(B, LOSS, {"a": {"expected": 2, "acked": 2}}, None, B + 200)
    assert clean.nodes["a"].missing == 0


def test_samples_are_bounded() -> None:
    pairs = [pair(f"d{i}", sent=False, message=f"m{i}") for i in range(50)]
    report = reconcile(B, FANOUT, {}, pairs, B + 30)
    assert report.nodes["a"].unfanned == 50 and len(report.nodes["a"].samples) == 5


def test_reconciler_schedules_each_check_once_and_folds_missed_ones() -> None:
    r = Reconciler(POLICY, since=B)
    assert r.due(B + 24) == []
    assert r.due(B + 25) == [(B, FANOUT)]
    r.apply(reconcile(B, FANOUT, {}, None, B + 25))
    assert r.due(B + 26) == []
    assert r.due(B + 30) == [(B + 5, FANOUT)]
    # a monitor that was away: the loss check of B, the fan-out checks of what followed
    due = r.due(B + 125)
    assert due[0] == (B, LOSS) and (B + 5, LOSS) not in due
    assert all(check == FANOUT for _, check in due[1:])
    r.apply(reconcile(B, FINAL, {}, None, B + 500))
    assert (B, FINAL) not in r.due(B + 500) and r.due(B + 500)[0][0] == B + 5


def test_increments_only_grow_and_late_records_add_up() -> None:
    r = Reconciler(POLICY, since=B)
    tally = {"a": {"expected": 2, "sent": 2, "acked": 1}}
    first = r.apply(reconcile(B, FANOUT, tally, [pair("d1")], B + 25))
    assert first.by_node == {"a": {"expected": 2, "sent": 2, "acked": 1}}
    lost = r.apply(reconcile(B, LOSS, tally, [pair("d1")], B + 135))
    assert lost.by_node == {"a": {"lost": 1}}
    # a late ack arrives: the pair is no longer missing; counters never go back
    healed = {"a": {"expected": 2, "sent": 2, "acked": 2}}
    late = r.apply(reconcile(B, FINAL, healed, [], B + 255))
    assert late.by_node == {"a": {"acked": 1}}


def test_losses_follow_the_latest_report_of_each_bucket_within_the_window() -> None:
    r = Reconciler(POLICY, since=B)
    tally = {"a": {"expected": 1000}}
    r.apply(reconcile(B, FANOUT, tally, [pair("d1", sent=False)], B + 25))
    r.apply(reconcile(B + 5, FANOUT, {"a": {"expected": 1000}, "b": {"expected": 10}}, [], B + 30))
    losses = r.losses(B + 30, window=60)
    assert losses["a"].missing == 1 and losses["a"].expected == 2000
    assert losses["a"].ratio == 1 / 2000 and losses["b"].missing == 0
    assert [m.device for m in losses["a"].samples] == ["d1"]
    # the device reconnected and acked: the next report of the bucket shows it healed
    r.apply(reconcile(B, LOSS, tally, [], B + 135))
    assert r.losses(B + 135, window=300)["a"].missing == 0
    # and reports older than the window are forgotten
    r.apply(reconcile(B + 10, FANOUT, tally, [pair("d9", sent=False)], B + 35))
    assert r.losses(B + 35 + 59, window=60)["a"].missing == 1
    assert r.losses(B + 35 + 61, window=60)["a"].missing == 0


def alert(node: str = "n1", note: str = "x") -> Alert:
    return Alert("PushNodeStalled", node, "critical", (("summary", note),))


def test_alert_book_fires_resends_updates_and_resolves() -> None:
    book = AlertBook(resend=60)
    (fire,) = book.plan([alert()], now=1000)
    assert (fire.starts_at, fire.ends_at, fire.resolved) == (1000, 1240, False)
    assert book.plan([alert()], now=1030) == []  # nothing new, not yet time to resend
    (again,) = book.plan([alert()], now=1060)
    assert (again.starts_at, again.ends_at) == (1000, 1300)
    (changed,) = book.plan([alert(note="y")], now=1061)  # new annotations go out at once
    assert changed.alert.annotations == (("summary", "y"),) and changed.starts_at == 1000
    (gone,) = book.plan([], now=1100)
    assert (gone.starts_at, gone.ends_at, gone.resolved) == (1000, 1100, True)
    assert book.plan([], now=1200) == []


def test_alert_book_retries_what_did_not_get_through() -> None:
    book = AlertBook(resend=60)
    sends = book.plan([alert("n1"), alert("n2")], now=0)
    book.failed(sends)
    assert len(book.plan([alert("n1"), alert("n2")], now=1)) == 2  # re-sent, not waiting 60 s
    resolved = book.plan([alert("n2")], now=2)
    assert [s.resolved for s in resolved] == [True]
    book.failed(resolved)
    (retry,) = book.plan([alert("n2")], now=3)
    assert retry.resolved and retry.alert.node == "n1" and retry.ends_at == 2
    # an alert that comes back before its resolution got through is simply active
    book.failed(book.plan([], now=4))
    (back,) = book.plan([alert("n2")], now=5)
    assert not back.resolved and back.starts_at == 5


def test_delivery_loss_annotations_name_counts_ratio_samples_and_runbook() -> None:
    from monitor.reconcile import Missing, NodeLoss

    loss = NodeLoss(expected=2000, unfanned=2, lost=1,
                    samples=[Missing("m1", "phone", "a", "unfanned")])  # fmt: skip
    a = delivery_loss("a", loss)
    notes = dict(a.annotations)
    assert a.labels() == {"alertname": "PushDeliveryLoss", "node": "a", "severity": "critical",
                          "service": "pushsvc"}  # fmt: skip
    assert (notes["unfanned"], notes["lost"], notes["expected"]) == ("2", "1", "2000")
    assert notes["ratio"] == "0.001500" and "m1 (unfanned, device phone)" in notes["samples"]
    assert notes["runbook_url"] == "https://pushsvc.invalid/docs/runbooks.md#pushdeliveryloss"
    published = delivery_loss("a", loss, "https://wiki.example/pushsvc/docs/")
    link = dict(published.annotations)["runbook_url"]
    assert link == "https://wiki.example/pushsvc/docs/runbooks.md#pushdeliveryloss"


def test_canary_track_up_stalled_latency_and_lost() -> None:
    t = CanaryTrack(since=100, stall=20)
    assert t.up(119) and not t.up(120)  # never heard from: judged from its start
    t.sent("c1", 110)
    assert t.arrived("c1", published_at=110.0, at=110.25) == 0.25
    assert t.up(129) and not t.up(131)
    t.arrived("c2", published_at=130, at=130.1)  # arrived before the API answered
    t.sent("c2", 130)
    t.sent("c3", 131)
    assert t.overdue(150) == 0 and t.overdue(151) == 1 and t.lost == 1
    assert t.published == {}


@pytest.mark.parametrize("node_id", ["web1:4242", "w-0", "x" * 200, "ünï cødé/..."])
def test_canary_users_are_valid_and_distinct(node_id: str) -> None:
    user = canary_user(node_id)
    assert valid_name(user) and user != canary_user(node_id + "1")


def test_a_reconciler_active_again_counts_nothing_twice_and_skips_what_it_missed() -> None:
    r = Reconciler(POLICY, since=B)
    tally = {"a": {"expected": 2, "sent": 1, "acked": 1}}
    first = r.apply(reconcile(B, FANOUT, tally, [pair("d2", sent=False)], B + 25))
    assert first.by_node == {"a": {"expected": 2, "sent": 1, "acked": 1, "unfanned": 1}}
    r.resume(since=B - 600)  # standby for a moment: nothing changes
    again = r.apply(reconcile(B, LOSS, tally, [pair("d2", sent=False)], B + 135))
    assert again.by_node == {}  # the same counts: nothing added
    r.resume(since=B + 1000)  # standby for long: the buckets before are left to the other monitor
    assert r.due(B + 1100)[0] == (B + 1000, FANOUT)
