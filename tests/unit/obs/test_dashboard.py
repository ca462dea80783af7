"""The Grafana dashboard asks only for metrics that exist, and shows every one of them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from streams.obs.metrics import ALL

DASHBOARD = Path(__file__).parents[3] / "compose" / "grafana" / "postwire-dashboard.json"
# the series a metric type exposes, after the family name prometheus_client reports
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def exposed() -> dict[str, str]:
    """Series name -> family name, for every metric postwire defines."""
    names = {}
    for metric in ALL:
        (family,) = metric.describe()
        for suffix in SUFFIXES[family.type]:
            names[family.name + suffix] = family.name
    return names


def exprs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for v in node.values() for e in exprs(v)]
    if isinstance(node, list):
        return [e for v in node for e in exprs(v)]
    return []


def test_every_expression_uses_defined_metrics_and_every_metric_is_shown() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = exprs(dashboard)
    assert len(queries) >= 10
    series = exposed()
    used = set()
    for query in queries:
        for name in re.findall(r"\bpostwire_[a-z0-9_]+", query):
            assert name in series, f"{name} in {query!r} is not defined in streams/obs/metrics.py"
            used.add(series[name])
    assert used == {metric.describe()[0].name for metric in ALL}


def test_the_dashboard_is_importable_as_is() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
