"""A small builder of Grafana dashboard JSON (schemaVersion 39): Prometheus targets, a few panel kinds laid out
left to right in rows of 24 columns, and query variables. Only what the fleet dashboard uses; the JSON is what
Grafana's own export writes for the same panels."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

SCHEMA_VERSION = 39
GRID_COLUMNS = 24
DATASOURCE_VARIABLE = "datasource"
DATASOURCE = {"type": "prometheus", "uid": "${" + DATASOURCE_VARIABLE + "}"}


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""
    instant: bool = False  # one value per series (a table or bar gauge), not a range


@dataclass(frozen=True)
class Threshold:
    value: Optional[float]  # None: the base step
    color: str


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # timeseries | stat | bargauge
    targets: Sequence[Target]
    unit: str = "short"
    description: str = ""
    width: int = 12
    height: int = 8
    thresholds: Sequence[Threshold] = ()
    threshold_line: bool = False  # draw the thresholds as lines (timeseries)
    decimals: Optional[int] = None
    options: Dict[str, Any] = field(default_factory=dict)


def query_variable(name: str, label: str, query: str, default: str = "", multi: bool = False) -> Dict[str, Any]:
    """A variable whose values are a label's values (`label_values(metric{...}, label)`); multi adds "All"."""
    current = {"selected": True, "text": ["All"], "value": ["$__all"]} if multi else {"selected": True, "text": default,
                                                                                         "value": default}
    return {"type": "query", "name": name, "label": label, "datasource": DATASOURCE,
            "query": {"query": query, "refId": f"{name}-values"}, "definition": query, "refresh": 2, "sort": 1,
            "multi": multi, "includeAll": multi, "current": current, "hide": 0}


class Dashboard:
    def __init__(self, uid: str, title: str, description: str = "", tags: Sequence[str] = (), refresh: str = "1m",
                 time_from: str = "now-6h") -> None:
        self.uid, self.title, self.description = uid, title, description
        self.tags, self.refresh, self.time_from = list(tags), refresh, time_from
        self.variables: List[Dict[str, Any]] = [{
            "type": "datasource", "name": DATASOURCE_VARIABLE, "label": "Prometheus", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1}]
        self.panels: List[Dict[str, Any]] = []
        self._x = self._y = self._row_height = 0

    def variable(self, spec: Dict[str, Any]) -> Dashboard:
        self.variables.append(spec)
        return self

    def row(self, title: str) -> Dashboard:
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "id": len(self.panels) + 1,
                            "gridPos": {"x": 0, "y": self._y, "w": GRID_COLUMNS, "h": 1}, "panels": []})
        self._y += 1
        return self

    def add(self, panel: Panel) -> Dashboard:
        if panel.width > GRID_COLUMNS or panel.width < 1:
            raise ValueError(f"panel {panel.title!r}: width {panel.width} must be 1-{GRID_COLUMNS} grid columns")
        if self._x + panel.width > GRID_COLUMNS:
            self._newline()
        self.panels.append(self._panel_json(panel, {"x": self._x, "y": self._y, "w": panel.width, "h": panel.height}))
        self._x += panel.width
        self._row_height = max(self._row_height, panel.height)
        return self

    def _newline(self) -> None:
        if self._x:
            self._y += self._row_height
        self._x = self._row_height = 0

    def _panel_json(self, panel: Panel, grid: Dict[str, int]) -> Dict[str, Any]:
        defaults: Dict[str, Any] = {"unit": panel.unit}
        if panel.decimals is not None:
            defaults["decimals"] = panel.decimals
        if panel.thresholds:
            defaults["thresholds"] = {"mode": "absolute",
                                      "steps": [{"value": t.value, "color": t.color} for t in panel.thresholds]}
        if panel.kind == "timeseries":
            defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0, "showPoints": "never",
                                  "thresholdsStyle": {"mode": "line" if panel.threshold_line else "off"}}
        return {
            "id": len(self.panels) + 1, "type": panel.kind, "title": panel.title, "description": panel.description,
            "datasource": DATASOURCE, "gridPos": grid,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": dict(panel.options),
            "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": t.expr, "legendFormat": t.legend,
                         "instant": t.instant, "range": not t.instant, "editorMode": "code"}
                        for i, t in enumerate(panel.targets)],
        }

    def to_json(self) -> Dict[str, Any]:
        return {
            "uid": self.uid, "title": self.title, "description": self.description, "tags": self.tags,
            "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": False, "graphTooltip": 1,
            "refresh": self.refresh, "time": {"from": self.time_from, "to": "now"}, "timezone": "utc",
            "templating": {"list": self.variables}, "annotations": {"list": []}, "links": [],
            "panels": self.panels,
        }


def targets_of(dashboard: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Every query target of a dashboard's panels (rows' nested panels too), for checks."""
    out = []
    for panel in dashboard["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            out += p.get("targets", [])
    return out
