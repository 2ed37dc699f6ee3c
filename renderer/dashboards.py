"""Grafana dashboards of a version (kai.yaml `monitoring.dashboards: true`).

Each running version gets one ConfigMap, `<version>-dashboards`, labelled
``grafana_dashboard: "1"``: the label Grafana's dashboard sidecar (kube-prometheus-stack's,
the grafana Helm chart's) watches, loading each of its keys as a dashboard file. It holds:

* the version's dashboard, built here (:func:`version_dashboard`): rate, errors and p50/p99
  latency per rpc (the entrypoint's metrics), per-step latency and queue wait per node, the
  nodes' failed messages, and the replicas of its Deployments (kube-state-metrics'
  ``kube_deployment_status_replicas``); key ``<project>-<version>.json``;
* the version's own dashboards, as KRE shipped them from the .krt's
  ``metrics/dashboards/*.json`` (:func:`own_dashboards`): each file as it is, once it reads
  as a JSON object; key ``<project>-<version>-<file name>``.

The JSON is deterministic: keys sorted, no timestamps, ids by position, and the dashboard's
uid a hash of the namespace, project and version (unique in one Grafana). Queries select
the version's series by ``namespace`` (the label Prometheus gives every pod it scrapes, by
PodMonitor or by annotation) and ``version`` (runner.metrics puts it on every metric).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .plan import CONFIGMAP_LIMIT, PlanError, VersionPlan, amount, configmap_key, labels
from .problems import Problem

DASHBOARD_LABEL = "grafana_dashboard"  # the Grafana sidecar's default label
DASHBOARD_LABEL_VALUE = "1"
OWN_DIR = "metrics/dashboards"  # in the version: its own dashboards, *.json
SCHEMA_VERSION = 39  # Grafana's dashboard JSON model
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PANEL_HEIGHT = 8
PANEL_WIDTH = 12  # of Grafana's 24 columns: two panels a row


class DashboardError(PlanError):
    """A dashboard of the version cannot be shipped: one problem, at its file's position."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def configmap_name(version: str) -> str:
    return f"{version}-dashboards"


# --- the version's dashboard -------------------------------------------------------------


def _selector(plan: VersionPlan, extra: str = "") -> str:
    parts = [f'namespace="{plan.namespace}"', f'version="{plan.version}"']
    if extra:
        parts.append(extra)
    return "{" + ", ".join(parts) + "}"


def _quantiles(metric: str, by: str, selector: str) -> list[tuple[str, str]]:
    """p50 and p99 of histogram `metric`, per `by`: (expression, legend) pairs."""
    legend = " ".join(f"{{{{{label}}}}}" for label in by.split(", "))
    return [(f"histogram_quantile({q}, sum by ({by}, le) "
             f"(rate({metric}_bucket{selector}[$__rate_interval])))", f"p{p} {legend}")
            for q, p in (("0.5", "50"), ("0.99", "99"))]


def _panel(index: int, title: str, unit: str, description: str,
           queries: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "gridPos": {"h": PANEL_HEIGHT, "w": PANEL_WIDTH, "x": (index % 2) * PANEL_WIDTH,
                    "y": (index // 2) * PANEL_HEIGHT},
        "id": index + 1,
        "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi"}},
        "targets": [{"datasource": DATASOURCE, "expr": expr, "legendFormat": legend,
                     "refId": chr(ord("A") + i)} for i, (expr, legend) in enumerate(queries)],
        "title": title,
        "type": "timeseries",
    }


def version_dashboard(plan: VersionPlan) -> dict[str, Any]:
    """The Grafana dashboard (JSON model) of one version."""
    sel = _selector(plan)
    errors = _selector(plan, 'code!="OK"')
    failed = _selector(plan, 'outcome!="ok"')
    deployments = "|".join(sorted(p.name for p in plan.processes))
    kube = f'{{namespace="{plan.namespace}", deployment=~"{deployments}"}}'
    panels = [
        ("Requests per second, by rpc", "reqps",
         "gRPC calls the entrypoint answered, every status code.",
         [(f"sum by (rpc) (rate(kai_entrypoint_requests_total{sel}[$__rate_interval]))",
           "{{rpc}}")]),
        ("Errors per second, by rpc and code", "reqps",
         "gRPC calls answered with a status other than OK.",
         [(f"sum by (rpc, code) (rate(kai_entrypoint_requests_total{errors}"
           "[$__rate_interval]))", "{{rpc}} {{code}}")]),
        ("Latency p50 / p99, by rpc", "s",
         "End to end at the entrypoint: from receiving a call to answering it.",
         _quantiles("kai_entrypoint_request_seconds", "rpc", sel)),
        ("Step latency p50 / p99, by node", "s",
         "A node's step: from taking its message to having passed its output on (or "
         "answered) and acked it.",
         _quantiles("kai_node_step_seconds", "workflow, node", sel)),
        ("Queue wait p50 / p99, by node", "s",
         "From a step's message being published to the start of the node's handler.",
         _quantiles("kai_node_queue_wait_seconds", "workflow, node", sel)),
        ("Failed messages per second, by node and outcome", "short",
         "Messages a node did not pass on: handler errors, undecodable input, expired "
         "deadlines, outputs too large.",
         [(f"sum by (workflow, node, outcome) (rate(kai_node_messages_total{failed}"
           "[$__rate_interval]))", "{{workflow}} {{node}} {{outcome}}")]),
        ("Replicas, by Deployment", "short",
         "kube-state-metrics: the replicas of the version's Deployments, and how many are "
         "available.",
         [(f"max by (deployment) (kube_deployment_status_replicas{kube})", "{{deployment}}"),
          (f"max by (deployment) (kube_deployment_status_replicas_available{kube})",
           "{{deployment}} available")]),
    ]
    digest = hashlib.sha256(f"{plan.namespace}/{plan.project}/{plan.version}".encode())
    return {
        "annotations": {"list": []},
        "description": f"KAI version {plan.version} of project {plan.project} "
                       f"(namespace {plan.namespace}), rendered by kai.",
        "editable": True,
        "panels": [_panel(i, *panel) for i, panel in enumerate(panels)],
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["kai", plan.project],
        "templating": {"list": [{
            "current": {}, "hide": 0, "label": "Data source", "name": "datasource",
            "options": [], "query": "prometheus", "refresh": 1, "type": "datasource",
        }]},
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "title": f"KAI {plan.project} / {plan.version}",
        "uid": f"kai-{digest.hexdigest()[:20]}",
        "version": 1,
    }


def dashboard_json(model: dict[str, Any]) -> str:
    """A dashboard as its file holds it: sorted keys, two-space indent, a final newline."""
    return json.dumps(model, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


# --- the version's own dashboards ---------------------------------------------------------


def own_dashboards(directory: Path, shown: str) -> dict[str, str]:
    """The version's `metrics/dashboards/*.json` (file name -> text), sorted by name.

    Each must be UTF-8 text holding one JSON object; a symlink must lead to a file inside
    the version. `shown` is how problems name the version's folder (`versions/<v>`).
    Raises DashboardError with the first problem (and its line and column for bad JSON).
    """
    folder = directory / OWN_DIR
    if not folder.is_dir():
        return {}
    root = os.path.realpath(directory)
    out: dict[str, str] = {}
    total = 0
    for path in sorted(folder.glob("*.json")):
        where = f"{shown}/{OWN_DIR}/{path.name}"
        real = os.path.realpath(path)
        if not real.startswith(root + os.sep) or not os.path.isfile(real):
            raise DashboardError(Problem(where, message=(
                "is not a file inside the version (a symlink leading out, or a folder); "
                "put the dashboard's JSON file itself there")))
        total += os.path.getsize(real)
        if total > CONFIGMAP_LIMIT:
            raise DashboardError(Problem(where, message=(
                f"the dashboards in {OWN_DIR} take more than {amount(CONFIGMAP_LIMIT)}, "
                "what one ConfigMap holds; ship fewer or smaller ones")))
        out[path.name] = _dashboard_text(Path(real).read_bytes(), where)
    return out


def _dashboard_text(data: bytes, where: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DashboardError(Problem(where, message=(
            f"is not UTF-8 text (byte {exc.start + 1}); a Grafana dashboard is a JSON "
            "file"))) from None
    try:
        model = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DashboardError(Problem(where, exc.lineno, exc.colno,
                                     message=f"not valid JSON: {exc.msg}")) from None
    if not isinstance(model, dict):
        raise DashboardError(Problem(where, 1, 1, message=(
            f"holds a JSON {type(model).__name__}, but a Grafana dashboard is a JSON "
            "object")))
    return text


# --- the ConfigMap ------------------------------------------------------------------------


def dashboards_data(plan: VersionPlan) -> dict[str, str]:
    """The ConfigMap's data: the version's dashboard, then its own, by key."""
    prefix = f"{plan.project}-{plan.version}"
    data = {configmap_key(f"{prefix}.json"): dashboard_json(version_dashboard(plan))}
    for name, text in plan.dashboards.items():
        data[configmap_key(f"{prefix}-{name}")] = text
    return dict(sorted(data.items()))


def configmap_labels(plan: VersionPlan) -> dict[str, str]:
    """kai's labels of the ConfigMap, and the Grafana sidecar's."""
    name = configmap_name(plan.version)
    return {**labels(plan.project, plan.version, "monitoring", "dashboards", name),
            DASHBOARD_LABEL: DASHBOARD_LABEL_VALUE}
