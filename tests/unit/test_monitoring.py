"""kai.yaml `monitoring:`: a PodMonitor per version (checked against the bundled CRD schema),
or prometheus.io/* annotations on the pods."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from renderer.checks import PODMONITOR_SCHEMA, check_object
from renderer.problems import InputError
from renderer.project import Monitoring
from renderer.projectfile import dump_project, load_project
from renderer.render import SYNC_WAVE, render_project
from tests.unit.test_render import by_kind, make_project, make_version, rendered

K8S = "1.35"
FILE = "rendered/demo/greeter-v1/podmonitor-greeter-v1.yaml"


def _podmonitor(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    (pm,) = by_kind(rendered(tmp_path, monitoring=Monitoring(pod_monitor=True, **kw)),
                    "PodMonitor")
    return pm


def _paths(obj: dict[str, Any]) -> list[str]:
    return [p.path for p in check_object(FILE, obj, K8S)]


# --- the PodMonitor ------------------------------------------------------------------------------


def test_a_podmonitor_scrapes_every_pod_of_the_version_on_its_web_port(tmp_path: Path) -> None:
    objs = rendered(tmp_path, monitoring=Monitoring(pod_monitor=True))
    (pm,) = by_kind(objs, "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["name"] == "greeter-v1"
    assert pm["metadata"]["namespace"] == "demo-ns"
    assert pm["metadata"]["annotations"][SYNC_WAVE] == "1"  # after the Deployments (0)
    selector = pm["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/part-of": "demo",
                        "app.kubernetes.io/version": "greeter-v1"}
    assert pm["spec"]["podMetricsEndpoints"] == [{"path": "/metrics", "port": "metrics"},
                                                 {"path": "/metrics", "port": "web"}]
    # it selects every pod of the version, and each pod has one of the ports, serving the
    # runner's web server (KAI_WEB_PORT: /healthz, /readyz, /metrics)
    deployments = by_kind(objs, "Deployment")
    assert len(deployments) == 3
    for dep in deployments:
        pod = dep["spec"]["template"]
        assert selector.items() <= pod["metadata"]["labels"].items()
        assert "annotations" not in pod["metadata"]  # no second scrape by annotation
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        wanted = "web" if dep["metadata"]["name"].endswith("-entrypoint") else "metrics"
        assert named[wanted] == int(env["KAI_WEB_PORT"])
    assert check_object(FILE, pm, K8S) == []


def test_its_labels_are_kais_and_the_extra_ones(tmp_path: Path) -> None:
    pm = _podmonitor(tmp_path, labels={"release": "kube-prometheus-stack"})
    labels = pm["metadata"]["labels"]
    assert labels["release"] == "kube-prometheus-stack"
    assert labels["app.kubernetes.io/managed-by"] == "kai"
    assert labels["app.kubernetes.io/version"] == "greeter-v1"


def test_each_version_gets_its_own_and_a_stopped_one_none(tmp_path: Path) -> None:
    v1, v2, v3 = (make_version(tmp_path, n) for n in ("greeter-v1", "greeter-v2", "greeter-v3"))
    project = make_project(tmp_path, {"greeter-v1": "published", "greeter-v2": "started",
                                      "greeter-v3": "stopped"},
                           monitoring=Monitoring(pod_monitor=True))
    tree = render_project(project, {v.name: v for v in (v1, v2, v3)})
    assert sorted(p for p in tree if "podmonitor" in p) == [
        "greeter-v1/podmonitor-greeter-v1.yaml", "greeter-v2/podmonitor-greeter-v2.yaml"]


# --- checked against the CRD schema ------------------------------------------------------------


def test_a_podmonitor_without_a_selector_fails_the_check(tmp_path: Path) -> None:
    pm = _podmonitor(tmp_path)
    del pm["spec"]["selector"]
    (problem,) = check_object(FILE, pm, K8S)
    assert problem.file == FILE and problem.path == "spec"
    assert "'selector' is a required property (the PodMonitor CRD schema, strict)" in (
        problem.message)


def test_a_podmonitor_without_spec_fails_the_check(tmp_path: Path) -> None:
    pm = _podmonitor(tmp_path)
    del pm["spec"]
    assert set(_paths(pm)) == {"(object)", "spec.podMetricsEndpoints"}


@pytest.mark.parametrize(("change", "path", "says"), [
    (lambda pm: pm["spec"].update(selector={}), "spec.selector",
     "selects every pod of the namespace"),
    (lambda pm: pm["spec"].pop("podMetricsEndpoints"), "spec.podMetricsEndpoints",
     "is required"),
    (lambda pm: pm["spec"].update(podMetricsEndpoints=[]), "spec.podMetricsEndpoints",
     "is required"),
    (lambda pm: pm["spec"]["podMetricsEndpoints"][0].pop("port"), "spec.podMetricsEndpoints[0]",
     "names no port"),
    (lambda pm: pm["spec"].update(podMetricEndpoints=[]), "spec",
     "'podMetricEndpoints' was unexpected"),  # strict: a typo is not silently dropped
    (lambda pm: pm["spec"]["podMetricsEndpoints"][0].update(port=9090),
     "spec.podMetricsEndpoints[0].port", "is not of type 'string'"),
    (lambda pm: pm["spec"]["podMetricsEndpoints"][0].update(scheme="ftp"),
     "spec.podMetricsEndpoints[0].scheme", "is not one of"),
    (lambda pm: pm["spec"]["podMetricsEndpoints"][0].update(interval="often"),
     "spec.podMetricsEndpoints[0].interval", "does not match"),
    (lambda pm: pm.update(apiVersion="monitoring.coreos.com/v1alpha1"), "apiVersion",
     "must be monitoring.coreos.com/v1"),
    (lambda pm: pm["metadata"].update(name="Bad_Name"), "metadata.name",
     "is not a valid Kubernetes name"),
])
def test_what_the_podmonitor_check_refuses(tmp_path: Path, change: Any, path: str,
                                           says: str) -> None:
    pm = copy.deepcopy(_podmonitor(tmp_path))
    change(pm)
    problems = [p for p in check_object(FILE, pm, K8S) if p.path == path]
    assert problems and says in problems[0].message, check_object(FILE, pm, K8S)


def test_the_bundled_crd_schema_is_a_schema_and_says_where_it_came_from() -> None:
    text = resources.files("renderer.schemas").joinpath(PODMONITOR_SCHEMA).read_text()
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    assert "prometheus-operator" in schema["$comment"]
    assert "monitoring.coreos.com_podmonitors.yaml" in schema["$comment"]
    assert schema["properties"]["spec"]["required"] == ["selector"]


# --- without a PodMonitor: annotations ---------------------------------------------------------


def test_without_a_podmonitor_the_pods_carry_scrape_annotations(tmp_path: Path) -> None:
    objs = rendered(tmp_path)
    assert by_kind(objs, "PodMonitor") == []
    ports = {}
    for dep in by_kind(objs, "Deployment"):
        pod = dep["spec"]["template"]
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert annotations["prometheus.io/port"] == env["KAI_WEB_PORT"]
        ports[dep["metadata"]["name"]] = annotations["prometheus.io/port"]
        # the Deployment's own annotations are untouched
        assert set(dep["metadata"]["annotations"]) == {SYNC_WAVE}
    assert ports == {"greeter-v1-entrypoint": "8080", "greeter-v1-etl": "9090",
                     "greeter-v1-output": "9090"}


def test_switching_the_podmonitor_changes_only_the_pod_annotations(tmp_path: Path) -> None:
    plain = {o["metadata"]["name"] + o["kind"]: o for o in rendered(tmp_path)}
    monitored = {o["metadata"]["name"] + o["kind"]: o
                 for o in rendered(tmp_path, monitoring=Monitoring(pod_monitor=True))}
    assert set(monitored) - set(plain) == {"greeter-v1PodMonitor"}
    for key, obj in plain.items():
        other = copy.deepcopy(monitored[key])
        if obj["kind"] == "Deployment":
            other["spec"]["template"]["metadata"]["annotations"] = (
                obj["spec"]["template"]["metadata"]["annotations"])
        assert other == obj, key


# --- kai.yaml ---------------------------------------------------------------------------------


def test_monitoring_in_kai_yaml(tmp_path: Path) -> None:
    head = "project: demo\nnamespace: kai-demo\n"
    (tmp_path / "kai.yaml").write_text(head + "monitoring: {podMonitor: true}\n")
    assert load_project(tmp_path).monitoring == Monitoring(pod_monitor=True)
    (tmp_path / "kai.yaml").write_text(
        head + "monitoring:\n  podMonitor: yes please\n  labels: {app.kubernetes.io/name: x}\n"
               "  scrape: true\n")
    with pytest.raises(InputError) as info:
        load_project(tmp_path, tmp_path)
    assert [str(p) for p in info.value.problems] == [
        'kai.yaml:4:15: monitoring.podMonitor: expected true or false, got a string ("yes '
        'please")',
        'kai.yaml:6:3: monitoring.scrape: unknown field "scrape"; allowed: podMonitor, labels, '
        'dashboards',
    ]
    (tmp_path / "kai.yaml").write_text(
        head + "monitoring:\n  podMonitor: true\n  labels: {app.kubernetes.io/name: x}\n")
    with pytest.raises(InputError) as info:
        load_project(tmp_path, tmp_path)
    assert [str(p) for p in info.value.problems] == [
        "kai.yaml:5:12: monitoring.labels[\"app.kubernetes.io/name\"]: app.kubernetes.io/* "
        "labels are the ones kai sets on every object; use another key",
    ]


def test_monitoring_round_trips(tmp_path: Path) -> None:
    project = replace(make_project(tmp_path, {"greeter-v1": "started"}),
                      monitoring=Monitoring(True, {"release": "prom"}))
    (tmp_path / "kai.yaml").write_text(dump_project(project))
    assert load_project(tmp_path) == project
