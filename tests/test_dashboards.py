"""The dashboards in ``dashboards/`` against Grafana's own dashboard model, without a Grafana.

``grafana-foundation-sdk`` is Grafana's generated model of dashboards, panels and queries. Each
file must decode into it and encode back to itself (a key the model does not know, such as a
misspelled option, is dropped and fails), every value must have its field's type (an enum one of
its values), every panel must be a panel type the model knows, on the ``$datasource`` Prometheus
variable, with ``$__rate_interval`` or ``$__range`` windows only, and every PromQL expression must name only metrics the project exports (node and monitor
``/metrics`` of a real node, the monitor's registry, the recording rules of ``alerts/``). That the expressions return data from live
nodes is tested by ``tests/test_observability.py``.
"""

from __future__ import annotations

import enum
import json
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from grafana_foundation_sdk.cog import runtime
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import prometheus
from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from monitor import metrics as monitor_metrics
from tests.support import ROOT, UNIT, start_node

DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
RULES = ROOT / "alerts" / "pushsvc.rules.yml"
#: Keys Grafana writes that the model leaves out, with what they must hold instead.
#: ``definition``: the variable editor's display copy of a query variable's ``query``.
UNMODELLED = {"definition"}

register_default_plugins()


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def dropped(original: Any, encoded: Any, path: str = "$") -> list[str]:
    """Where ``encoded`` lost or changed what ``original`` had (keys it adds are defaults)."""
    if isinstance(original, dict):
        if not isinstance(encoded, dict):
            return [f"{path}: became {type(encoded).__name__}"]
        out = []
        for key, value in original.items():
            if key in UNMODELLED:
                continue
            if key not in encoded:
                out.append(f"{path}.{key}: not in Grafana's model")
            else:
                out += dropped(value, encoded[key], f"{path}.{key}")
        return out
    if isinstance(original, list):
        if not isinstance(encoded, list) or len(encoded) != len(original):
            return [f"{path}: the list changed"]
        return [
            p
            for i, (a, b) in enumerate(zip(original, encoded, strict=True))
            for p in dropped(a, b, f"{path}[{i}]")
        ]
    return [] if original == encoded else [f"{path}: {original!r} became {encoded!r}"]


def is_model(value: object) -> bool:
    return type(value).__module__.startswith("grafana_foundation_sdk.models.")


def mistyped(value: Any, hint: Any, path: str) -> list[str]:
    """Where ``value`` (decoded by the SDK, so plain JSON below the model objects) is not of
    ``hint``, the model's annotation; model objects are checked field by field."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or hint is object:
        found: list[str] = []
    elif origin in (typing.Union, types.UnionType):
        if value is None:
            return [] if type(None) in args else [f"{path}: null is not {hint}"]
        candidates = [a for a in args if a is not type(None)]
        same = [a for a in candidates if isinstance(a, type) and type(value) is a]
        if len(same or candidates) == 1:  # the one member that applies: say what is wrong in it
            return mistyped(value, (same or candidates)[0], path)
        options = [mistyped(value, arg, path) for arg in args]
        found = [] if any(not o for o in options) else [f"{path}: {value!r} is not {hint}"]
    elif origin is typing.Literal:
        found = [] if value in args else [f"{path}: {value!r} is not one of {args}"]
    elif origin is list:
        if not isinstance(value, list):
            return [f"{path}: {value!r} is not a list"]
        found = [p for i, v in enumerate(value) for p in mistyped(v, args[0], f"{path}[{i}]")]
    elif origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not an object"]
        found = [p for k, v in value.items() for p in mistyped(v, args[1], f"{path}.{k}")]
    elif hint is type(None):
        found = [] if value is None else [f"{path}: {value!r} is not null"]
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        allowed = {m.value for m in hint}
        found = [] if value in allowed else [f"{path}: {value!r} is not one of {sorted(allowed)}"]
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        found = [] if ok else [f"{path}: {value!r} is not a number"]
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        found = [] if ok else [f"{path}: {value!r} is not an integer"]
    elif hint in (str, bool):
        found = [] if isinstance(value, hint) else [f"{path}: {value!r} is not {hint.__name__}"]
    elif isinstance(hint, type) and not isinstance(value, hint):
        found = [f"{path}: {type(value).__name__} is not {hint.__name__}"]
    else:
        found = []
    if is_model(value) and not found:
        hints = typing.get_type_hints(type(value))
        found = [
            p
            for name, h in hints.items()
            for p in mistyped(getattr(value, name), h, f"{path}.{name}")
        ]
    return found


#: Series Prometheus itself adds for every scrape target.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "info": ("_info",),
}


def series_names(families: Iterable[Metric]) -> set[str]:
    """Every series name of ``families``, labelled ones with no sample yet included."""
    names: set[str] = set()
    for family in families:
        names |= {family.name + s for s in _SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """What a real node's ``/metrics`` shows (its scrape-time gauges too), the monitor's
    registry, the recording rules of ``alerts/`` and Prometheus's own per-target series."""
    with start_node() as node:
        text = httpx.get(node.internal_url + "/metrics", timeout=5 * UNIT).text
    names = series_names(text_string_to_metric_families(text))
    names |= series_names(monitor_metrics.REGISTRY.collect())
    groups = yaml.safe_load(RULES.read_text())["groups"]
    names |= {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}
    assert "pushsvc_fanout_backlog" in names and "pushsvc_monitor_canary_up" in names
    return names | SCRAPE_SERIES


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAMES = re.compile(r"(?<![\w:$.])([A-Za-z_:][\w:]*)\b(?!\s*\()")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
             "and", "or", "unless", "inf", "nan"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: no strings, label matchers, ranges, label lists,
    functions (a name before ``(``), keywords, numbers or ``$variables``."""
    text = _STRINGS.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = _LABEL_LISTS.sub("", text)
    return {n for n in _NAMES.findall(text) if n.lower() not in _KEYWORDS}


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (node) (rate(pushsvc_messages_sent_total{job=~"$job"}[$__rate_interval]))',
         {"pushsvc_messages_sent_total"}),
        ("histogram_quantile(0.99, sum by (le) (rate(a_bucket[5m]))) > bool 0.5",
         {"a_bucket"}),
        ('label_replace(up{x="y z"}, "dst", "$1", "src", "(.*)") or on(node) vector(0)', {"up"}),
        ("pushsvc:ack_error_ratio:rate5m / ignoring(window) b offset 1h", {"pushsvc:ack_error_ratio:rate5m", "b"}),
        ("1e3 * time() - max(c)", {"c"}),
    ],
)  # fmt: skip
def test_metric_names_of_an_expression(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_there_are_dashboards() -> None:
    assert {p.name for p in DASHBOARDS} >= {"pushsvc-overview.json", "pushsvc-delivery.json"}


def check_model(raw: dict[str, Any]) -> list[str]:
    """What is wrong with ``raw`` as Grafana's dashboard model."""
    board = Dashboard.from_json(raw)
    encoded = json.loads(JSONEncoder().encode(board))
    problems = dropped(raw, encoded) + mistyped(board, Dashboard, "$")
    for variable in raw.get("templating", {}).get("list", []):
        if "definition" in variable and variable["definition"] != variable_query(variable):
            problems.append(f"variable {variable['name']}: definition is not its query")
    return problems


def variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    return str(query["query"] if isinstance(query, dict) else query)


def check_panels(raw: dict[str, Any], known: set[str]) -> list[str]:
    """Panel types, data sources and the metric names of every query."""
    problems = []
    board = Dashboard.from_json(raw)
    assert board.panels, "a dashboard without panels"
    variables = {v["name"]: v for v in raw["templating"]["list"]}
    if (variables["datasource"]["type"], variables["datasource"]["query"]) != (
        "datasource", "prometheus",
    ):  # fmt: skip
        problems.append("the datasource variable does not pick a Prometheus data source")
    ids = [p.id_val for p in board.panels]
    if len(ids) != len(set(ids)):
        problems.append(f"panel ids repeat: {sorted(ids)}")
    for panel in board.panels:
        if isinstance(panel, RowPanel):
            continue
        assert isinstance(panel, Panel)
        where = f"panel {panel.id_val} ({panel.title})"
        if runtime.panelcfg_config(panel.type_val) is None:
            problems.append(f"{where}: {panel.type_val!r} is not a panel type Grafana has")
        if panel.datasource is None or (panel.datasource.type_val, panel.datasource.uid) != (
            "prometheus", "${datasource}",
        ):  # fmt: skip
            problems.append(f"{where}: not on the $datasource Prometheus variable")
        for target in panel.targets or []:
            if not isinstance(target, prometheus.Dataquery):
                problems.append(f"{where}: a query that is not PromQL ({type(target).__name__})")
                continue
            if target.datasource is None or target.datasource.uid != "${datasource}":
                problems.append(f"{where}: query {target.ref_id} not on $datasource")
            windows = set(re.findall(r"\[([^\]]+)\]", target.expr))
            if not windows <= {"$__rate_interval", "$__range"}:
                problems.append(f"{where}: a fixed range {sorted(windows)} in {target.ref_id}")
            unknown = sorted(metric_names(target.expr) - known)
            problems += [f"{where}: {name} is not a metric pushsvc exports" for name in unknown]
    for variable in raw["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable_query(variable))
            assert inner, f"variable {variable['name']}: not a label_values() query"
            unknown = sorted(metric_names(inner.group(1)) - known)
            problems += [
                f"variable {variable['name']}: {n} is not an exported metric" for n in unknown
            ]
    return problems


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_is_grafanas_model(path: Path) -> None:
    raw = load(path)
    assert raw["uid"] == path.stem  # links between the dashboards and bookmarks use it
    assert check_model(raw) == []


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_is_a_known_type_on_the_datasource_reading_exported_metrics(
    path: Path, exported: set[str]
) -> None:
    assert check_panels(load(path), exported) == []


def corrupt(raw: dict[str, Any], how: str) -> dict[str, Any]:
    board = json.loads(json.dumps(raw))
    panel = next(p for p in board["panels"] if p["type"] == "timeseries")
    if how == "misspelled key":
        panel["fieldConfig"]["defaults"]["custom"]["lineWidht"] = 2
    elif how == "wrong type":
        panel["gridPos"]["h"] = "8"
    elif how == "bad enum":
        panel["options"]["legend"]["displayMode"] = "sideways"
    elif how == "unknown panel":
        panel["type"] = "timeseriez"
    elif how == "other datasource":
        panel["datasource"] = {"type": "loki", "uid": "logs"}
    elif how == "unknown variable metric":
        variable = next(v for v in board["templating"]["list"] if v["type"] == "query")
        variable["query"]["query"] = "label_values(pushsvc_nodes_info, node)"
        variable["definition"] = variable["query"]["query"]
    elif how == "stale definition":
        variable = next(v for v in board["templating"]["list"] if v["type"] == "query")
        variable["definition"] = "label_values(up, node)"
    elif how == "fixed range":
        panel["targets"][0]["expr"] = "rate(pushsvc_messages_sent_total[5m])"
    elif how == "unknown metric":
        panel["targets"][0]["expr"] = "rate(pushsvc_messages_sentt_total[$__rate_interval])"
    return board


@pytest.mark.parametrize(
    ("how", "said"),
    [
        ("misspelled key", ".custom.lineWidht: not in Grafana's model"),
        ("wrong type", ".grid_pos.h: '8' is not an integer"),
        ("bad enum", ".legend.display_mode: 'sideways' is not one of"),
        ("unknown panel", "'timeseriez' is not a panel type Grafana has"),
        ("other datasource", "not on the $datasource Prometheus variable"),
        ("unknown metric", "pushsvc_messages_sentt_total is not a metric pushsvc exports"),
        ("unknown variable metric", "pushsvc_nodes_info is not an exported metric"),
        ("stale definition", "definition is not its query"),
        ("fixed range", "a fixed range ['5m']"),
    ],
)
def test_a_corrupted_dashboard_fails(how: str, said: str, exported: set[str]) -> None:
    for path in DASHBOARDS:
        assert check_model(load(path)) + check_panels(load(path), exported) == []
        raw = corrupt(load(path), how)
        problems = check_model(raw) + check_panels(raw, exported)
        assert any(said in p for p in problems), problems
