"""What the node says about itself on ``/metrics``: GC pauses per phase, counters, histograms."""

from __future__ import annotations

from bench import stats
from bench.report import Results, Row
from bench.targets import TARGET_GC_MS


class GcTrail:
    """The server's garbage collections per phase, from ``pushsvc_gc_pause_seconds``."""

    HIST = "pushsvc_gc_pause_seconds"

    def __init__(self, start: stats.Samples) -> None:
        self._last = self._read(start)
        self.phases: dict[str, dict[str, object]] = {}

    def _read(self, samples: stats.Samples) -> tuple[dict[str, float], dict[str, float]]:
        return (
            stats.by_label(samples, self.HIST + "_count", "generation"),
            stats.by_label(samples, self.HIST + "_sum", "generation"),
        )

    def record(self, name: str, samples: stats.Samples) -> None:
        counts, sums = self._read(samples)
        prev_counts, prev_sums = self._last
        self._last = (counts, sums)
        self.phases[name] = {
            "max_pause_seconds_so_far": stats.gauge_max(samples, "pushsvc_gc_pause_max_seconds"),
            "generations": {
                gen: {
                    "collections": counts[gen] - prev_counts.get(gen, 0.0),
                    "seconds": sums.get(gen, 0.0) - prev_sums.get(gen, 0.0),
                }
                for gen in sorted(counts)
            },
        }

    def seconds(self, name: str) -> tuple[float, float]:
        """Collections and pause seconds (all generations) during phase ``name``."""
        gens = self.phases.get(name, {}).get("generations", {})
        assert isinstance(gens, dict)
        return (
            sum(float(g["collections"]) for g in gens.values()),
            sum(float(g["seconds"]) for g in gens.values()),
        )


def gc_figures(before: stats.Samples, after: stats.Samples, res: Results) -> None:
    worst = stats.gauge_max(after, "pushsvc_gc_pause_max_seconds")
    hist = "pushsvc_gc_pause_seconds"
    gc = {
        "max_seconds": worst,
        # Interpolated within buckets, so capped by the exact maximum.
        "p50_seconds": _cap(stats.histogram_quantile(after, hist, 0.5), worst),
        "p99_seconds": _cap(stats.histogram_quantile(after, hist, 0.99), worst),
        "count": stats.metric_total(after, hist + "_count"),
        "count_before_ramp": stats.metric_total(before, hist + "_count"),
        "sum_seconds": stats.metric_total(after, hist + "_sum"),
    }
    res.doc["gc"] = gc
    if worst is None:
        res.rows.append(
            Row("worst GC pause", "n/a (no pushsvc_gc_pause_max_seconds)", f"≤ {TARGET_GC_MS:g} ms")
        )
        res.notes.append("the server exports no pushsvc_gc_pause_max_seconds gauge")
        return
    ms = worst * 1e3
    p99 = gc["p99_seconds"]
    extra = f" (p99 ≈ {p99 * 1e3:.1f} ms, {gc['count']:.0f} collections)" if p99 else ""
    res.rows.append(
        Row(
            "worst GC pause",
            f"{ms:.1f} ms{extra}",
            f"≤ {TARGET_GC_MS:g} ms",
            met=ms <= TARGET_GC_MS,
        )
    )


SERVER_COUNTERS = (
    "pushsvc_connections",
    "pushsvc_connections_opened_total",
    "pushsvc_connections_closed_total",
    "pushsvc_messages_published_total",
    "pushsvc_messages_sent_total",
    "pushsvc_messages_acked_total",
    "pushsvc_redeliveries_total",
    "pushsvc_outbox_overflows_total",
)


def server_view(before: stats.Samples, after: stats.Samples) -> dict[str, object]:
    """The node's own account of the run, for cross-checking the clients' figures."""
    view: dict[str, object] = {}
    for name in SERVER_COUNTERS:
        view[name] = {
            "before": stats.metric_total(before, name),
            "after": stats.metric_total(after, name),
        }
    for hist in ("pushsvc_fanout_duration_seconds", "pushsvc_delivery_latency_seconds"):
        view[hist] = {
            "p50": stats.histogram_quantile(after, hist, 0.5),
            "p99": stats.histogram_quantile(after, hist, 0.99),
            "count": stats.metric_total(after, hist + "_count"),
        }
    return view


def _cap(value: float | None, limit: float | None) -> float | None:
    if value is None or limit is None:
        return value
    return min(value, limit)
