"""The reconciliation arithmetic: pure, no I/O, ``now`` passed in (docs/monitoring.md).

Nodes count, per bucket of publish time and per node, the (message, device) pairs they expected,
wrote and saw acked (:data:`pushsvc.broker.base.COUNTERS`). A bucket is looked at three times:

1. **fan-out check**, ``ack_timeout + grace`` after the bucket ends: a pair expected and never
   written is *unfanned* (the node owed it and did not write it: bus loss, a wedged node);
2. **loss check**, ``ack_timeout * max_attempts + reconnect_window + grace`` after the bucket
   ends: a pair written and never acked — after every redelivery, and after the device had its
   window to reconnect and get it from its inbox — is *lost*;
3. **late check**, ``late_check`` seconds after that: once more, for records that arrived late
   (a node's accounting held back by a Redis outage). Then the bucket is final.

At every check a pair whose message expired before it was acked is *expired* (the device was
offline until the ttl), never lost. Totals come from the counters; which pairs are missing, and
which node owes them, from the per-pair detail (:class:`pushsvc.broker.base.Pair`), read only for
a bucket whose counters show a gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pushsvc.broker.base import BUCKET_SECONDS, Pair, Tally

FANOUT, LOSS, FINAL = 1, 2, 3  # the checks of a bucket, in order
SAMPLES = 5  # missing pairs named per node and bucket


@dataclass(frozen=True, slots=True)
class Policy:
    ack_timeout: float
    max_attempts: int
    grace: float
    reconnect_window: float
    late_check: float

    def due(self, bucket: int, check: int) -> float:
        """When ``check`` of ``bucket`` (its start, unix s) is due."""
        end = bucket + BUCKET_SECONDS
        if check == FANOUT:
            return end + self.ack_timeout + self.grace
        loss = end + self.ack_timeout * self.max_attempts + self.reconnect_window + self.grace
        return loss if check == LOSS else loss + self.late_check


@dataclass(frozen=True, slots=True)
class Missing:
    """One pair that was not delivered: ``kind`` is unfanned, lost or expired."""

    message_id: str
    device: str
    node: str
    kind: str


@dataclass(slots=True)
class NodeCounts:
    """One node's part of a bucket: its counters and the missing pairs it owes."""

    counters: dict[str, int] = field(default_factory=dict)
    unfanned: int = 0
    lost: int = 0
    expired: int = 0
    samples: list[Missing] = field(default_factory=list)

    @property
    def missing(self) -> int:
        return self.unfanned + self.lost


@dataclass(slots=True)
class BucketReport:
    bucket: int
    check: int
    at: float
    nodes: dict[str, NodeCounts]
    pending: int = 0  # written, not acked, still inside redelivery or the reconnect window

    def totals(self, counter: str) -> int:
        return sum(n.counters.get(counter, 0) for n in self.nodes.values())


def gap(tally: Tally) -> int:
    """Expected pairs not acked, cluster-wide: above 0, the detail must be read."""
    expected = sum(c.get("expected", 0) for c in tally.values())
    acked = sum(c.get("acked", 0) for c in tally.values())
    return max(0, expected - acked)


def reconcile(
    bucket: int, check: int, tally: Tally, pairs: list[Pair] | None, now: float
) -> BucketReport:
    """The report of ``check`` of ``bucket`` at ``now`` from its counters and, when the counters
    show a gap, the detail of its pairs (None: not read, or not available)."""
    nodes = {node: NodeCounts(counters=dict(c)) for node, c in tally.items()}
    report = BucketReport(bucket, check, now, nodes)
    if pairs is None:
        if gap(tally):
            _from_counters(report, tally)
        return report
    for pair in pairs:
        if pair.acked:
            continue
        counts = nodes.setdefault(pair.node, NodeCounts())
        if now >= pair.expires_at:
            kind = "expired"
            counts.expired += 1
        elif not pair.sent:
            kind = "unfanned"
            counts.unfanned += 1
        elif check >= LOSS:
            kind = "lost"
            counts.lost += 1
        else:
            report.pending += 1
            continue
        if kind != "expired" and len(counts.samples) < SAMPLES:
            counts.samples.append(Missing(pair.message_id, pair.device, pair.node, kind))
    return report


def _from_counters(report: BucketReport, tally: Tally) -> None:
    """Without detail (trails gone): each node's own counters, unfanned = expected - sent and,
    from the loss check on, lost = sent - acked."""
    for node, c in tally.items():
        counts = report.nodes[node]
        counts.unfanned = max(0, c.get("expected", 0) - c.get("sent", 0))
        if report.check >= LOSS:
            counts.lost = max(0, c.get("sent", 0) - c.get("acked", 0))


@dataclass(slots=True)
class _Seen:
    check: int = 0
    report: BucketReport | None = None


@dataclass(slots=True)
class Increments:
    """What a report adds to the monitor's counters, per node (every counter only grows)."""

    by_node: dict[str, dict[str, int]] = field(default_factory=dict)


REPORTED = ("expected", "sent", "acked", "unfanned", "lost")


@dataclass(slots=True)
class NodeLoss:
    """A node's missing deliveries over the recent reports (what PushDeliveryLoss says)."""

    expected: int = 0
    unfanned: int = 0
    lost: int = 0
    samples: list[Missing] = field(default_factory=list)

    @property
    def missing(self) -> int:
        return self.unfanned + self.lost

    @property
    def ratio(self) -> float:
        return self.missing / self.expected if self.expected else 1.0


class Reconciler:
    """Which bucket checks are due, and what the reports add up to. ``since``: the first bucket
    to look at (unix s; a monitor starting up looks back a while)."""

    def __init__(self, policy: Policy, since: float) -> None:
        self.policy = policy
        self._next = int(since) // BUCKET_SECONDS * BUCKET_SECONDS  # first bucket not final
        self._seen: dict[int, _Seen] = {}
        self._reported: dict[tuple[int, str], dict[str, int]] = {}  # (bucket, node) -> counts
        self._recent: list[BucketReport] = []

    def resume(self, since: float) -> None:
        """Active again after a spell as standby: look no further back than ``since``. What
        this reconciler counted before (per bucket and node) stays counted: a bucket checked
        again only adds what grew since, never its counts a second time."""
        first = int(since) // BUCKET_SECONDS * BUCKET_SECONDS
        if first > self._next:
            self._seen = {b: v for b, v in self._seen.items() if b >= first}
            self._next = first

    def due(self, now: float) -> list[tuple[int, int]]:
        """(bucket, check) pairs to run now, oldest first: the latest check due of each bucket
        that has not had it (a check that was missed is folded into the next)."""
        out = []
        bucket = self._next
        while self.policy.due(bucket, FANOUT) <= now:
            check = max(c for c in (FANOUT, LOSS, FINAL) if self.policy.due(bucket, c) <= now)
            if check > self._seen.get(bucket, _Seen()).check:
                out.append((bucket, check))
            bucket += BUCKET_SECONDS
        return out

    def apply(self, report: BucketReport) -> Increments:
        """Take ``report`` in; return what it adds to the counters."""
        seen = self._seen.setdefault(report.bucket, _Seen())
        seen.check = max(seen.check, report.check)
        seen.report = report
        self._recent.append(report)
        while self._next in self._seen and self._seen[self._next].check >= FINAL:
            del self._seen[self._next]
            self._next += BUCKET_SECONDS
        increments = Increments()
        for node, counts in report.nodes.items():
            now = {name: counts.counters.get(name, 0) for name in REPORTED[:3]}
            now |= {"unfanned": counts.unfanned, "lost": counts.lost}
            before = self._reported.setdefault((report.bucket, node), dict.fromkeys(REPORTED, 0))
            delta = {k: now[k] - before[k] for k in REPORTED if now[k] > before[k]}
            for k, v in delta.items():
                before[k] += v
            if delta:
                increments.by_node[node] = delta
        return increments

    def losses(self, now: float, window: float) -> dict[str, NodeLoss]:
        """Per node, the missing deliveries of the latest report of each bucket reported within
        the last ``window`` seconds; old reports are forgotten here."""
        horizon = now - window
        self._recent = [r for r in self._recent if r.at >= horizon]
        latest: dict[int, BucketReport] = {}
        for r in self._recent:
            if r.bucket not in latest or r.check >= latest[r.bucket].check:
                latest[r.bucket] = r
        self._reported = {k: v for k, v in self._reported.items() if k[0] >= self._next - 3600}
        out: dict[str, NodeLoss] = {}
        for report in sorted(latest.values(), key=lambda r: r.bucket):
            for node, counts in report.nodes.items():
                loss = out.setdefault(node, NodeLoss())
                loss.expected += counts.counters.get("expected", 0)
                loss.unfanned += counts.unfanned
                loss.lost += counts.lost
                room = SAMPLES - len(loss.samples)
                loss.samples += counts.samples[: max(0, room)]
        return out
