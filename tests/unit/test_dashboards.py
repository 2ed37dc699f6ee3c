"""kai.yaml `monitoring.dashboards`: a Grafana dashboard per version and the version's own
metrics/dashboards/*.json, in one ConfigMap labelled for Grafana's sidecar."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from renderer.checks import check_object
from renderer.dashboards import OWN_DIR, version_dashboard
from renderer.plan import build_plan
from renderer.project import Monitoring, Project
from renderer.projectfile import dump_project, load_project
from renderer.render import RenderError, render_project
from runner import metrics
from tests.unit.test_render import make_project, make_version

ON = Monitoring(dashboards=True)
FILE = "greeter-v1/configmap-greeter-v1-dashboards.yaml"


def _tree(tmp_path: Path, monitoring: Monitoring = ON, **states: str) -> dict[str, bytes]:
    states = states or {"greeter-v1": "started"}
    versions = {name: make_version(tmp_path, name) for name in states}
    project = make_project(tmp_path, states, monitoring=monitoring)
    return render_project(project, versions)


def _configmap(tree: dict[str, bytes], file: str = FILE) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load(tree[file])
    return obj


def _own(tmp_path: Path, name: str, text: str | bytes, version: str = "greeter-v1") -> Path:
    folder = tmp_path / "versions" / version / OWN_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_a_version_gets_its_dashboard_in_a_configmap_for_grafanas_sidecar(
        tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    cm = _configmap(tree)
    assert cm["kind"] == "ConfigMap"
    assert cm["metadata"]["namespace"] == "demo-ns"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kai"
    assert list(cm["data"]) == ["demo-greeter-v1.json"]
    model = json.loads(cm["data"]["demo-greeter-v1.json"])
    assert model["title"] == "KAI demo / greeter-v1"
    assert check_object(f"rendered/demo/{FILE}", cm, "1.35") == []
    assert "greeter-v1/configmap-greeter-v1-dashboards.yaml" in tree
    assert FILE in yaml.safe_load(tree["kustomization.yaml"])["resources"]


def test_the_dashboard_shows_rate_errors_latency_steps_queue_wait_and_replicas(
        tmp_path: Path) -> None:
    model = json.loads(_configmap(_tree(tmp_path))["data"]["demo-greeter-v1.json"])
    exprs = {panel["title"]: [t["expr"] for t in panel["targets"]] for panel in model["panels"]}
    sel = 'namespace="demo-ns", version="greeter-v1"'
    assert exprs["Requests per second, by rpc"] == [
        f"sum by (rpc) (rate(kai_entrypoint_requests_total{{{sel}}}[$__rate_interval]))"]
    assert 'code!="OK"' in exprs["Errors per second, by rpc and code"][0]
    for title, metric in (("Latency p50 / p99, by rpc", "kai_entrypoint_request_seconds"),
                          ("Step latency p50 / p99, by node", "kai_node_step_seconds"),
                          ("Queue wait p50 / p99, by node", "kai_node_queue_wait_seconds")):
        p50, p99 = exprs[title]
        assert p50.startswith("histogram_quantile(0.5, ") and f"{metric}_bucket{{{sel}}}" in p50
        assert p99.startswith("histogram_quantile(0.99, ") and f"{metric}_bucket{{{sel}}}" in p99
    replicas = exprs["Replicas, by Deployment"]
    assert replicas[0] == ('max by (deployment) (kube_deployment_status_replicas{namespace='
                           '"demo-ns", deployment=~"greeter-v1-entrypoint|greeter-v1-etl|'
                           'greeter-v1-output"})')
    ids = [panel["id"] for panel in model["panels"]]
    assert ids == list(range(1, len(ids) + 1))
    positions = {(p["gridPos"]["x"], p["gridPos"]["y"]) for p in model["panels"]}
    assert len(positions) == len(ids)  # no panel on top of another


def test_every_metric_the_dashboard_queries_is_one_the_runner_exports(tmp_path: Path) -> None:
    """A metric renamed in runner.metrics must not leave the dashboard empty."""
    text = _configmap(_tree(tmp_path))["data"]["demo-greeter-v1.json"]
    exported = {m._name for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    queried = set(re.findall(r"\b(kai_[a-z_]+?)(?:_total|_bucket)?\{", text))
    assert queried and queried <= exported, sorted(queried - exported)
    labels = {label for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)
              for label in m._labelnames}
    for by in re.findall(r"by \(([^)]*)\)", text):
        assert {x.strip() for x in by.split(",")} - {"le", "deployment"} <= labels, by


def test_the_json_is_deterministic_sorted_and_carries_no_timestamp(tmp_path: Path) -> None:
    first = _tree(tmp_path)[FILE]
    assert _tree(tmp_path)[FILE] == first
    text = _configmap({FILE: first})["data"]["demo-greeter-v1.json"]
    model = json.loads(text)
    assert json.dumps(model, sort_keys=True, indent=2, ensure_ascii=False) + "\n" == text
    assert not re.search(r"\d{4}-\d{2}-\d{2}|\d{10}", text)


def test_each_version_has_its_own_uid_and_a_stopped_one_no_dashboard(tmp_path: Path) -> None:
    tree = _tree(tmp_path, **{"greeter-v1": "published", "greeter-v2": "started",
                              "greeter-v3": "stopped"})
    uids = set()
    for version in ("greeter-v1", "greeter-v2"):
        cm = _configmap(tree, f"{version}/configmap-{version}-dashboards.yaml")
        model = json.loads(cm["data"][f"demo-{version}.json"])
        assert len(model["uid"]) <= 40  # Grafana's limit
        uids.add(model["uid"])
    assert len(uids) == 2
    assert not [p for p in tree if p.startswith("greeter-v3/")]
    version = make_version(tmp_path, "greeter-v1")
    other = make_project(tmp_path, {"greeter-v1": "started"}, monitoring=ON)
    moved = Project(**{**vars(other), "namespace": "elsewhere"})
    assert (version_dashboard(build_plan(other, version))["uid"]
            != version_dashboard(build_plan(moved, version))["uid"])


def test_without_monitoring_dashboards_there_is_none(tmp_path: Path) -> None:
    _own(tmp_path, "broken.json", "{")  # not even read
    tree = _tree(tmp_path, Monitoring())
    assert not [p for p in tree if "dashboards" in p]


def test_the_versions_own_dashboards_ship_as_they_are(tmp_path: Path) -> None:
    own = '{"title": "KRE model",\n "panels": []}\n'
    _own(tmp_path, "model.json", own)
    _own(tmp_path, "drift_v2.json", "{}")
    _own(tmp_path, "notes.txt", "not a dashboard")
    cm = _configmap(_tree(tmp_path))
    assert sorted(cm["data"]) == ["demo-greeter-v1-drift_5Fv2.json", "demo-greeter-v1-model.json",
                                  "demo-greeter-v1.json"]
    assert cm["data"]["demo-greeter-v1-model.json"] == own
    assert cm["data"]["demo-greeter-v1-drift_5Fv2.json"] == "{}"


@pytest.mark.parametrize(("text", "expected"), [
    ('{\n  "title": "x",\n  "panels": [1, 2,]\n}\n',
     "versions/greeter-v1/metrics/dashboards/bad.json:3:19: not valid JSON: Expecting value"),
    ('{"title": "x"} trailing',
     "versions/greeter-v1/metrics/dashboards/bad.json:1:16: not valid JSON: Extra data"),
    ("[1, 2]", "versions/greeter-v1/metrics/dashboards/bad.json:1:1: holds a JSON list, but a "
               "Grafana dashboard is a JSON object"),
    (b'{"title": "\xff"}', "versions/greeter-v1/metrics/dashboards/bad.json: is not UTF-8 "
                           "text (byte 12); a Grafana dashboard is a JSON file"),
])
def test_a_bad_dashboard_is_refused_with_its_position(tmp_path: Path, text: str | bytes,
                                                      expected: str) -> None:
    _own(tmp_path, "good.json", "{}")
    _own(tmp_path, "bad.json", text)
    with pytest.raises(RenderError) as info:
        _tree(tmp_path)
    assert [str(p) for p in info.value.problems] == [expected]


def test_a_symlink_out_of_the_version_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.json"
    outside.write_text("{}")
    link = tmp_path / "versions" / "greeter-v1" / OWN_DIR / "leak.json"
    make_version(tmp_path)
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    with pytest.raises(RenderError) as info:
        _tree(tmp_path)
    (problem,) = info.value.problems
    assert problem.file == "versions/greeter-v1/metrics/dashboards/leak.json"
    assert "not a file inside the version" in problem.message


def test_dashboards_in_kai_yaml_load_and_round_trip(tmp_path: Path) -> None:
    head = "project: demo\nnamespace: kai-demo\n"
    (tmp_path / "kai.yaml").write_text(head + "monitoring: {dashboards: true}\n")
    loaded = load_project(tmp_path)
    assert loaded.monitoring == Monitoring(dashboards=True)
    (tmp_path / "kai.yaml").write_text(dump_project(loaded))
    assert load_project(tmp_path) == loaded
