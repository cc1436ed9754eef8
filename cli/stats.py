"""``pushsvc stats``: the delivery accounting per time bucket, as the monitor reconciles it.

Nodes count, per bucket of publish time (:data:`~pushsvc.broker.base.BUCKET_SECONDS`) and per node,
messages published and (message, device) pairs expected, sent, acked, redelivered and expired
(``{p}tally:<bucket>`` in :mod:`pushsvc.broker.keys`). :func:`read_stats` reads the buckets of the
last ``since`` seconds and applies the monitor's arithmetic (:mod:`monitor.reconcile`) with the
same deadlines, so the numbers here are the ones it alerts on:

- a bucket is ``open`` until its fan-out check is due (``ack_timeout`` + grace after it ends);
  then ``unfanned`` (expected, never written) is known;
- from its loss check (after every redelivery and the devices' reconnect window) ``lost``
  (written, never acked) is known: only then, and only for a bucket whose counters show a gap, is
  the per-pair detail read, so a pair whose message expired first counts as ``expired``, not lost;
- ``expired`` also counts devices that connected after the message's ttl.

The ack ratio is acked / expected. Exit 1 when a delivery was lost or never fanned out in the
window, or when the cluster keeps no accounting.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import typer

from cli.api import UsageError
from cli.cluster import AsJson, Cluster, cluster_flags, operator_settings, run
from cli.output import emit_json, out, table
from cli.settings import fail
from monitor.reconcile import FANOUT, FINAL, LOSS, Policy, gap, reconcile
from pushsvc.broker.base import BUCKET_SECONDS, Ledger
from pushsvc.errors import BrokerError

CHECKS = {0: "open", FANOUT: "fanned out", LOSS: "checked", FINAL: "final"}


@dataclass(frozen=True)
class BucketStats:
    """One bucket's accounting, summed over the nodes. None: not known yet (see the module)."""

    bucket: int  # its start, unix seconds
    check: str
    published: int
    expected: int
    sent: int
    acked: int
    redelivered: int
    unfanned: int | None
    lost: int | None
    expired: int

    @property
    def ack_ratio(self) -> float | None:
        return self.acked / self.expected if self.expected else None


def parse_since(text: str) -> float:
    """``15m``, ``90s``, ``2h``, ``1d`` (or plain seconds) as seconds; ValueError otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    text = text.strip().lower()
    factor = units.get(text[-1:], 0)
    number = float(text[:-1] if factor else text)
    value = number * (factor or 1)
    if not value > 0:
        raise ValueError("it must be positive")
    return value


def latest_check(policy: Policy, bucket: int, now: float) -> int:
    """The latest check of ``bucket`` that is due at ``now`` (0: none yet)."""
    return max((c for c in (FANOUT, LOSS, FINAL) if policy.due(bucket, c) <= now), default=0)


async def read_stats(ledger: Ledger, policy: Policy, since: float, now: float) -> list[BucketStats]:
    """The buckets of the last ``since`` seconds that have any accounting, oldest first."""
    first = int(now - since) // BUCKET_SECONDS * BUCKET_SECONDS
    buckets = list(range(first, int(now) + 1, BUCKET_SECONDS))
    tallies = await ledger.tallies(buckets)
    found = []
    for bucket in buckets:
        tally = tallies.get(bucket)
        if not tally:
            continue
        check = latest_check(policy, bucket, now)
        pairs = None
        if check >= LOSS and gap(tally):  # lost is decided: which pairs, and did they expire?
            pairs = await ledger.pairs(await ledger.bucket_messages(bucket))
        report = reconcile(bucket, max(check, FANOUT), tally, pairs, now)

        def total(counter: str, tally: Any = tally) -> int:
            return sum(c.get(counter, 0) for c in tally.values())

        nodes = report.nodes.values()
        found.append(
            BucketStats(
                bucket=bucket,
                check=CHECKS[check],
                published=total("published"),
                expected=total("expected"),
                sent=total("sent"),
                acked=total("acked"),
                redelivered=total("redelivered"),
                unfanned=sum(n.unfanned for n in nodes) if check >= FANOUT else None,
                lost=sum(n.lost for n in nodes) if check >= LOSS else None,
                expired=total("expired") + sum(n.expired for n in nodes),
            )
        )
    return found


@cluster_flags()
def stats(
    since: Annotated[str, typer.Option(help="How far back: 15m, 2h, 1d.")] = "15m",
    as_json: AsJson = False,
    **flags: Any,
) -> None:
    """Per time bucket: published / expected / sent / acked / lost / expired and the ack ratio."""
    try:
        window = parse_since(since)
    except ValueError as exc:
        fail(f"--since {since!r}: {exc}")
    settings = operator_settings(**flags)
    policy = Policy(
        ack_timeout=settings.ack_timeout,
        max_attempts=settings.max_attempts,
        grace=settings.monitor_grace,
        reconnect_window=settings.reconnect_window,
        late_check=settings.late_check,
    )
    now = time.time()
    rows = run(_read(Cluster(settings), policy, window, now))
    totals = summed(rows)
    if as_json:
        emit_json({
            "since": window, "bucket_seconds": BUCKET_SECONDS,
            "buckets": [{**asdict(r), "ack_ratio": r.ack_ratio} for r in rows],
            "totals": {**totals, "ack_ratio": ratio(totals)},
        })  # fmt: skip
    elif rows:
        out.print(render(rows, totals))
    else:
        out.print(f"nothing was published in the last {since}")
    if totals["lost"] or totals["unfanned"]:
        raise typer.Exit(1)


async def _read(cluster: Cluster, policy: Policy, window: float, now: float) -> list[BucketStats]:
    async with cluster:
        if not cluster.has_redis:
            raise UsageError("stats reads the accounting in Redis: give --redis-url")
        try:
            return await read_stats(cluster.redis.ledger, policy, window, now)
        except BrokerError as exc:
            raise cluster.redis_down(exc) from None


COLUMNS = ("published", "expected", "sent", "acked", "redelivered", "unfanned", "lost", "expired")


def summed(rows: list[BucketStats]) -> dict[str, int]:
    return {c: sum(getattr(r, c) or 0 for r in rows) for c in COLUMNS}


def ratio(totals: dict[str, int]) -> float | None:
    return totals["acked"] / totals["expected"] if totals["expected"] else None


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}" if value < 1 else "100%"


def render(rows: list[BucketStats], totals: dict[str, int]) -> Any:
    t = table("bucket", *(">" + c for c in COLUMNS), ">ack ratio", "state")
    for r in rows:
        when = time.strftime("%H:%M:%S", time.localtime(r.bucket))
        cells = [getattr(r, c) for c in COLUMNS]
        shown = ["…" if v is None else str(v) for v in cells]
        for i, c in enumerate(COLUMNS):
            if c in ("unfanned", "lost") and cells[i]:
                shown[i] = f"[bold red]{cells[i]}[/]"
        t.add_row(when, *shown, _ratio(r.ack_ratio), r.check)
    t.add_row("[bold]total[/]", *(str(totals[c]) for c in COLUMNS), _ratio(ratio(totals)), "")
    return t
