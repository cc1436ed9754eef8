"""Small statistics for benchmark figures, and reading Prometheus text exposition."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from prometheus_client.parser import text_string_to_metric_families


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of already sorted values (``q`` in [0, 1]); NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary(values: Iterable[float]) -> dict[str, float | int]:
    """Count, min, p50, p90, p99, p99.9, max and mean."""
    s = sorted(values)
    if not s:
        return {"count": 0}
    return {
        "count": len(s),
        "min": s[0],
        "p50": quantile(s, 0.50),
        "p90": quantile(s, 0.90),
        "p99": quantile(s, 0.99),
        "p999": quantile(s, 0.999),
        "max": s[-1],
        "mean": sum(s) / len(s),
    }


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    if not s:
        return math.nan
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse_metrics(text: str) -> Samples:
    """Prometheus text format → sample name → ``[(labels, value), ...]``."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def gauge_max(samples: Samples, name: str) -> float | None:
    """The largest value of ``name`` over all its label sets, or ``None`` if absent."""
    values = [v for _, v in samples.get(name, [])]
    return max(values) if values else None


def histogram_quantile(samples: Samples, name: str, q: float) -> float | None:
    """Estimate quantile ``q`` of histogram ``name`` (buckets summed over labels, as Prometheus
    interpolates linearly within a bucket). ``None`` if the histogram is absent or empty."""
    buckets: dict[float, float] = {}
    for labels, value in samples.get(name + "_bucket", []):
        le = float(labels["le"])
        buckets[le] = buckets.get(le, 0.0) + value
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def metric_total(samples: Samples, name: str) -> float | None:
    """Sum of ``name`` over all its label sets, or ``None`` if absent."""
    values = [v for _, v in samples.get(name, [])]
    return sum(values) if values else None


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """``name`` summed per value of ``label`` (series without the label count under ``""``)."""
    out: dict[str, float] = {}
    for labels, value in samples.get(name, []):
        key = labels.get(label, "")
        out[key] = out.get(key, 0.0) + value
    return out
