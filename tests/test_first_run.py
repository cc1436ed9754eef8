"""A fresh node is quiet and its dashboards have data from the first scrape.

- third-party libraries (httpx, APScheduler, uvicorn's access log) log nothing at INFO;
- the embedded monitor's canary does not publish before the node's API listens;
- ``--max-connections`` defaults to what the open-files limit holds, and the warning comes only
  when a value that does not fit was given;
- every labelled counter is exposed at 0 for each label value the code records (a source scan
  keeps the tables of known values complete).
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

from monitor import metrics as monitor_metrics
from pushsvc.settings import FD_RESERVE, Settings
from pushsvc.telemetry import metrics
from tests.support import ROOT, NodeHandle, start_node, wait_until

THIRD_PARTY = ("httpx", "httpcore", "apscheduler", "uvicorn.access")


@pytest.fixture(scope="module")
def fresh() -> tuple[NodeHandle, str]:
    """A node with its embedded monitor, after its canary arrived; its log, after it stopped."""
    with start_node(monitor_interval=1, canary_interval=0.5) as node:
        up = f'pushsvc_monitor_canary_up{{node="{node.node_id}"}} 1.0'
        wait_until(lambda: up in scrape(node))
        text = scrape(node)
        for _ in range(3):
            assert node.api("GET", "/v1/nodes").status_code == 200
    return node, text


def scrape(node: NodeHandle) -> str:
    return httpx.get(node.internal_url + "/metrics", timeout=5).text


def records(log: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def test_third_party_libraries_log_nothing_at_info(fresh: tuple[NodeHandle, str]) -> None:
    node, _ = fresh
    logged = records(node.log())
    assert logged, node.log()
    noisy = [r for r in logged if str(r["logger"]).startswith(THIRD_PARTY) and r["level"] == "info"]
    assert noisy == [], noisy[:3]


def test_the_canary_publishes_once_the_api_listens(fresh: tuple[NodeHandle, str]) -> None:
    node, _ = fresh
    refused = [r for r in records(node.log()) if str(r["msg"]).startswith("canary publish")]
    assert refused == [], refused


def test_labelled_counters_are_exposed_at_zero(fresh: tuple[NodeHandle, str]) -> None:
    _, text = fresh
    for name, (_, values) in metrics.KNOWN_LABELS.items():
        label = re.search(rf"^{name}{{(\w+)=", text, re.MULTILINE)
        assert label, name
        for value in values:
            assert re.search(rf'^{name}{{{label.group(1)}="{value}"}} \d', text, re.MULTILINE), (
                name,
                value,
            )


def test_the_monitors_labelled_counters_are_exposed_at_zero() -> None:
    text = generate_latest(monitor_metrics.REGISTRY).decode()
    for check in monitor_metrics.CHECKS:
        assert f'pushsvc_monitor_bucket_checks_total{{check="{check}"}}' in text
    for job in monitor_metrics.JOBS:
        assert f'pushsvc_monitor_errors_total{{job="{job}"}}' in text
    for alert in monitor_metrics.ALERTS:
        for state in monitor_metrics.ALERT_STATES:
            series = f'pushsvc_monitor_alerts_sent_total{{alertname="{alert}",state="{state}"}}'
            assert series in text


# -- the tables of known label values are complete ----------------------------------------------


def source(*folders: str) -> str:
    return "\n".join(
        path.read_text() for folder in folders for path in sorted((ROOT / folder).rglob("*.py"))
    )


def test_every_frame_rejection_reason_is_known() -> None:
    text = source("pushsvc")
    slugs = set(re.findall(r'FrameError\([^)]*slug="(\w+)"', text))
    slugs |= set(re.findall(r'frames_rejected\.labels\("(\w+)"\)', text))
    assert {"malformed_json", "rate_limited", "frame_too_large"} <= slugs  # the scan works
    assert slugs <= set(metrics.FRAME_REJECTIONS), slugs - set(metrics.FRAME_REJECTIONS)


def test_every_error_status_of_the_api_is_known() -> None:
    text = source("pushsvc/http")
    statuses = set(re.findall(r"(?:ApiError|error_response|HTTPException)\(\s*(\d{3})", text))
    statuses |= set(re.findall(r'http_errors\.labels\("(\d{3})"\)', text))
    assert {"401", "404", "422"} <= statuses  # the scan works
    known = set(metrics.HTTP_ERROR_STATUSES)
    assert statuses <= known, statuses - known


def test_every_connection_result_and_monitor_alert_is_known() -> None:
    results = set(re.findall(r'connections_opened\.labels\("(\w+)"\)', source("pushsvc")))
    assert "ok" in results
    assert results <= set(metrics.CONNECTION_RESULTS), results - set(metrics.CONNECTION_RESULTS)
    alerts_py = (ROOT / "monitor" / "alerts.py").read_text()
    names = set(re.findall(r'return Alert\(\s*"(\w+)"', alerts_py))
    assert names == set(monitor_metrics.ALERTS)
    jobs = set(re.findall(r'errors\.labels\("(\w+)"\)', source("monitor")))
    assert jobs == set(monitor_metrics.JOBS)


# -- --max-connections --------------------------------------------------------------------------


def test_the_max_connections_default_fits_the_open_files_limit() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert Settings().max_connections <= min(100_000, hard - FD_RESERVE)
    assert "max_connections" not in Settings().model_fields_set


def test_a_default_node_does_not_warn_and_a_max_connections_beyond_the_limit_does(
    fresh: tuple[NodeHandle, str],
) -> None:
    node, _ = fresh
    assert "exceeds what one process can hold" not in node.log()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with start_node(max_connections=hard + 1) as big:
        log = big.log()
    assert "exceeds what one process can hold" in " ".join(log.split()), log


def test_the_monitors_alerts_link_to_runbook_sections_that_exist() -> None:
    from monitor import alerts
    from monitor.reconcile import NodeLoss

    base = "https://wiki.example/pushsvc/docs"
    made = [
        alerts.delivery_loss("n1", NodeLoss(expected=10, unfanned=1, lost=0, samples=[]), base),
        alerts.node_stalled("n1", 30.0, base),
        alerts.heartbeat_missing("n1", 30.0, base),
    ]
    assert {a.name for a in made} == set(monitor_metrics.ALERTS)
    sections = {
        line[3:].strip().lower()
        for line in (ROOT / "docs" / "runbooks.md").read_text().splitlines()
        if line.startswith("## ")
    }
    for alert in made:
        page, _, anchor = dict(alert.annotations)["runbook_url"].partition("#")
        assert page == base + "/runbooks.md"
        assert anchor in sections, anchor


@pytest.mark.parametrize(
    ("level", "third_party", "websockets"),
    [
        ("INFO", "WARNING", "WARNING"),
        ("WARNING", "WARNING", "WARNING"),
        ("DEBUG", "DEBUG", "WARNING"),
    ],
)
def test_log_levels_of_third_party_libraries(level: str, third_party: str, websockets: str) -> None:
    probe = (
        "import logging; from pushsvc.telemetry import logging as jsonlog;"
        f"jsonlog.setup({level!r});"
        "print(*(logging.getLevelName(logging.getLogger(n).level) for n in"
        " ('httpx', 'httpcore', 'apscheduler', 'uvicorn.access', 'websockets')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.split() == [third_party] * 4 + [websockets]


def test_a_node_without_its_static_files_says_so(tmp_path: Path) -> None:
    with start_node(static_dir=tmp_path) as node:
        log = " ".join(node.log().split())
        assert httpx.get(node.http_url + "/client/pushsvc.js", timeout=5).status_code == 404
    assert f"no pushsvc.js in {tmp_path}" in log, log
