"""The arithmetic of ``python -m bench.scaleout``: its run order, its Redis counters and its
per-message figures, each Cluster master's among them (no node or Redis is started)."""

from __future__ import annotations

import math

import pytest

from bench.scaleout import Reading, calls_by_command, figures, plan, server_rows, table_row
from bench.scaleout_cluster import (
    Holding,
    ServerReading,
    holdings,
    parse_info,
    reading,
    server_figures,
    summed,
)
from pushsvc.broker.keys import Keyspace, key_slot


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


CLUSTER_NODES = """\
a1 127.0.0.1:7002@17002 master - 0 1 2 connected 5461-10922
a2 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
r1 127.0.0.1:7004@17004 slave a1 0 1 2 connected
a3 127.0.0.1:7003@17003 master - 0 1 3 connected 10923-16383 [77->-a1]
r2 127.0.0.1:7005@17005 slave a2 0 1 1 connected
"""


def test_each_master_holds_the_partitions_its_slots_hold() -> None:
    tags = Keyspace().tags
    control = key_slot(Keyspace(one_slot=True).nodes)
    layout = holdings(CLUSTER_NODES, tags, control)
    assert [(h.address, h.role) for h in layout] == [
        ("127.0.0.1:7001", "master"), ("127.0.0.1:7002", "master"),
        ("127.0.0.1:7003", "master"), ("127.0.0.1:7004", "replica"),
        ("127.0.0.1:7005", "replica"),
    ]  # fmt: skip
    assert [h.partitions for h in layout[:3]] == [
        (0, 1, 2, 3, 4), (5, 6, 7, 8, 9, 10), (11, 12, 13, 14, 15),
    ]  # fmt: skip
    assert control == 10022
    assert [h.control for h in layout] == [False, True, False, False, False]


def test_a_reading_takes_commands_cpu_and_calls_from_info() -> None:
    text = (
        "# Stats\r\ntotal_commands_processed:1200\r\n# CPU\r\nused_cpu_sys:1.25\r\n"
        "used_cpu_user:2.5\r\n# Commandstats\r\ncmdstat_xadd:calls=7,usec=9\r\n"
    )
    r = reading("127.0.0.1:7001", parse_info(text))
    assert r == ServerReading("127.0.0.1:7001", 1200, 3.75, {"xadd": 7})
    assert math.isnan(reading("x", {}).cpu_seconds)


def test_each_master_has_its_share_of_the_masters_work() -> None:
    layout = [
        Holding("m1", "master", (0, 1, 2, 3, 4, 5), control=True),
        Holding("m2", "master", (6, 7, 8, 9, 10)),
        Holding("m3", "master", (11, 12, 13, 14, 15)),
        Holding("r1", "replica"),
    ]
    start = [ServerReading(h.address, 100, 1.0, {"xadd": 1}) for h in layout]
    end = [
        ServerReading("m1", 6_100, 1.3, {"xadd": 1_001, "spublish": 1_000}),
        ServerReading("m2", 2_100, 1.1, {"xadd": 501}),
        ServerReading("m3", 2_100, 1.1, {"xadd": 501}),
        ServerReading("r1", 4_100, 1.05, {}),
    ]
    rows = server_figures(1_000, layout, start, end)
    assert [r["commands_per_message"] for r in rows] == [6.0, 2.0, 2.0, 4.0]
    assert [r["cpu_us_per_message"] for r in rows] == pytest.approx([300.0, 100.0, 100.0, 50.0])
    assert [r.get("command_share") for r in rows] == [0.6, 0.2, 0.2, None]
    assert [r.get("cpu_share") for r in rows] == pytest.approx([0.6, 0.2, 0.2, None])
    assert [r.get("partition_share") for r in rows] == [0.375, 0.3125, 0.3125, None]
    assert [r["calls_per_message"] for r in rows] == [
        {"spublish": 1.0, "xadd": 1.0}, {"xadd": 0.5}, {"xadd": 0.5}, {},
    ]  # fmt: skip
    total = summed(end, layout)
    assert (total.commands, total.calls) == (10_300, {"xadd": 2_003, "spublish": 1_000})
    assert total.cpu_seconds == pytest.approx(3.5)


def test_the_master_table_has_a_line_per_master_and_one_for_the_replicas() -> None:
    layout = [Holding("m1", "master", (0, 1, 2, 3, 4, 5), control=True), Holding("r1", "replica")]
    start = [ServerReading("m1", 0, 0.0, {}), ServerReading("r1", 0, 0.0, {})]
    end = [ServerReading("m1", 12_000, 0.15, {}), ServerReading("r1", 9_000, 0.066, {})]
    step = {"nodes": 2, "arm": "before", "redis_servers": server_figures(1_000, layout, start, end)}
    assert server_rows(step) == [
        ["2", "before", "master m1", "6 (0.38) + control", "12.00", "1.00", "150", "1.00"],
        ["2", "before", "1 replicas", "", "9.00", "", "66", ""],
    ]
    assert server_rows({"nodes": 2, "arm": "now"}) == []
