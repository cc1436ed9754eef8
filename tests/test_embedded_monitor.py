"""A single node on the in-memory broker runs the monitor inside its own process."""

from __future__ import annotations

import httpx

from tests.support import start_node, wait_until


def test_a_single_node_reconciles_and_probes_itself() -> None:
    with start_node(monitor_interval=1, canary_interval=0.5, monitor_grace=1) as node:

        def scraped() -> str:
            return httpx.get(node.internal_url + "/metrics", timeout=5).text

        up = f'pushsvc_monitor_canary_up{{node="{node.node_id}"}} 1.0'
        arrived = f'pushsvc_monitor_canary_latency_seconds_count{{node="{node.node_id}"}}'
        wait_until(lambda: up in scraped())
        wait_until(lambda: (t := scraped()) and arrived in t and f"{arrived} 0.0" not in t)
        text = scraped()
        assert "pushsvc_connections " in text  # the node's own metrics are still there
        # the canary is a real session of the node, visible to operators like any other
        sessions = node.api("GET", "/v1/sessions").json()["sessions"]
        assert any(s["node"] == node.node_id for s in sessions)
