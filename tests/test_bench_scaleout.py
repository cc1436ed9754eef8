"""The arithmetic of ``python -m bench.scaleout``: its run order, its Redis counters and its
per-message figures (no node is started)."""

from __future__ import annotations

import math

import pytest

from bench.scaleout import Reading, calls_by_command, figures, plan, table_row


@pytest.mark.parametrize(
    ("counts", "with_before", "expected"),
    [
        ([2, 4, 8], False, [(2, "now"), (4, "now"), (8, "now")]),
        ([2, 4], True, [(2, "before"), (2, "now"), (4, "before"), (4, "now")]),
        ([3], True, [(3, "before"), (3, "now")]),
    ],
)
def test_before_and_now_alternate_per_node_count(
    counts: list[int], with_before: bool, expected: list[tuple[int, str]]
) -> None:
    assert plan(counts, with_before) == expected


def test_commandstats_become_calls_per_command() -> None:
    info = {
        "cmdstat_xadd": "calls=120,usec=900,usec_per_call=7.50,rejected_calls=0,failed_calls=0",
        "cmdstat_script|load": "calls=2,usec=10",
        "cmdstat_odd": "usec=3",
        "redis_version": "7.0.15",
    }
    assert calls_by_command(info) == {"xadd": 120, "script|load": 2}


def test_figures_are_per_accepted_message() -> None:
    start = Reading([1.0, 2.0], [10.0, 10.0], 1_000, {"xadd": 5, "publish": 5, "info": 1}, 3.0)
    calls = {"xadd": 1_005, "publish": 1_005, "info": 1}
    end = Reading([1.5, 2.25], [1_010.0, 510.0], 4_000, calls, 3.04)
    f = figures(1_000, start, end)
    assert f["node_cpu_us_per_message"] == [500.0, 250.0]
    assert f["node_cpu_us_per_message_sum"] == 750.0
    assert f["node_cpu_us_per_message_mean"] == 375.0
    assert f["node_cpu_us_per_message_max"] == 500.0
    assert f["received_share"] == [1.0, 0.5]
    assert f["received_share_mean"] == 0.75
    assert f["received_share_max"] == 1.0
    assert f["redis_commands_per_message"] == 3.0
    assert f["redis_calls_per_message"] == {"publish": 1.0, "xadd": 1.0}
    assert f["redis_cpu_us_per_message"] == pytest.approx(40.0)
    assert math.isnan(f["node_cpu_net_us_per_message_sum"])  # type: ignore[arg-type]


def test_the_net_figure_takes_the_idle_cpu_of_the_window_away() -> None:
    start = Reading([1.0, 2.0], [0.0, 0.0], 0, {}, at=100.0)
    end = Reading([1.5, 2.25], [0.0, 0.0], 0, {}, at=110.0)  # 10 s: idle 0.2 and 0.01 CPU-s
    f = figures(1_000, start, end, idle=[0.02, 0.001])
    assert f["node_cpu_net_us_per_message"] == pytest.approx([300.0, 240.0])
    assert f["node_cpu_net_us_per_message_sum"] == pytest.approx(540.0)


def test_a_node_without_the_bus_counter_has_no_share() -> None:
    start = Reading([0.0], [math.nan], 0, {})
    f = figures(10, start, Reading([0.001], [math.nan], 20, {}))
    assert math.isnan(f["received_share_max"])  # type: ignore[arg-type]
    assert f["redis_commands_per_message"] == 2.0
    assert math.isnan(f["redis_cpu_us_per_message"])  # type: ignore[arg-type]


def test_a_table_row_reads_a_step() -> None:
    step = {
        "nodes": 4, "arm": "now", "published": 2400, "missing": 0,
        "node_cpu_us_per_message_sum": 1358.2, "node_cpu_us_per_message_mean": 339.6,
        "node_cpu_us_per_message_max": 342.4, "received_share_mean": 0.25,
        "received_share_max": 0.31, "redis_commands_per_message": 13.364,
        "redis_cpu_us_per_message": 81.4, "latency_ms": {"p50": 2.61, "p99": 16.7},
    }  # fmt: skip
    step["node_cpu_net_us_per_message_sum"] = 1200.4
    assert table_row(step) == [
        "4", "now", "1358", "1200", "340 / 342", "0.25 / 0.31", "13.36", "81", "2.6 / 16.7", "0 of 2400",
    ]  # fmt: skip
