"""Autoscaling: krt.yml and kai.yaml fields, their layering and every validation message with
its position; the KEDA ScaledObject (checked against the bundled CRD schema), the HPAs, the
Deployments that name no replicas, PodDisruptionBudgets, the entrypoint's readiness with a
node that may sleep, and `kai dev`'s process count."""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from test_projectfile import problems as kai_problems
from test_projectfile import write
from test_render import by_kind, make_version
from test_validate import KRT, write_version

from renderer.autoscaling import (
    HPA,
    Autoscaling,
    AutoscalingOverride,
    AutoscalingSettings,
    MonitoringEndpoint,
    Trigger,
    monitoring_endpoint,
    node_triggers,
)
from renderer.checks import SCALEDOBJECT_SCHEMA, check_object
from renderer.cli.dev import autoscaled_replicas, render_local, rendered_specs
from renderer.cli.devconfig import DevConfig
from renderer.krt import Version, Workflow
from renderer.plan import PlanError, build_plan
from renderer.project import Nats, Project
from renderer.projectfile import dump_project, edit_project, load_project
from renderer.render import SYNC_WAVE, render_project, render_version
from renderer.scheduling import ProcessSettings, ResourceOverride, Resources
from renderer.validate import load_version, validate_path
from runner import contract
from runner.readiness import NodeWatch, Step, steps_of
from runner.transport.memory import MemoryBroker, MemoryTransport

HEAD = "project: demo\nnamespace: kai-demo\n"
K8S = "1.35"
FILE = "rendered/demo/greeter-v1/scaledobject-greeter-v1-etl.yaml"
STREAM = "KAI_demo_greeter-v1_py-greeting"
ECHO_STREAM = "KAI_demo_greeter-v1_py-echo"
F = "greeter-v1/krt.yml"
REPO_KRT = "versions/greeter-v1/krt.yml"

# etl autoscales in krt.yml (line 10); output has fixed replicas
KRT_AUTO = KRT.replace(
    "    src: src/etl/main.py\n",
    "    src: src/etl/main.py\n"
    "    autoscaling: {minReplicas: 0, maxReplicas: 5, pendingPerReplica: 3}\n")


def project_of(tmp_path: Path, text: str) -> Project:
    return load_project(write(tmp_path / "repo", HEAD + text))


def version_of(tmp_path: Path, krt: str = KRT_AUTO) -> Version:
    return load_version(write_version(tmp_path / "v" / "greeter-v1", krt), tmp_path)


def objects(project: Project, version: Version) -> list[dict[str, Any]]:
    return render_version(project, build_plan(project, version))


def named(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """The objects of `kind` by process (entrypoint, etl, output)."""
    return {o["metadata"]["name"].removeprefix("greeter-v1-"): o for o in by_kind(objs, kind)}


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container["env"]}


STARTED = "versions:\n  greeter-v1:\n    state: started\n"


# --- krt.yml -----------------------------------------------------------------------------------


def test_krt_yml_autoscaling_loads(tmp_path: Path) -> None:
    version = version_of(tmp_path)
    etl, output = version.nodes
    assert etl.autoscaling == AutoscalingOverride(0, 5, 3)
    assert output.autoscaling is None
    assert version_of(tmp_path / "b", KRT_AUTO.replace(
        "minReplicas: 0, maxReplicas: 5, pendingPerReplica: 3", "maxReplicas: 2")
    ).nodes[0].autoscaling == AutoscalingOverride(max_replicas=2)


def _krt_lines(tmp_path: Path, autoscaling: str, extra: str = "") -> list[str]:
    krt = KRT.replace("    src: src/etl/main.py\n",
                      f"    src: src/etl/main.py\n{extra}    autoscaling: {autoscaling}\n")
    return validate_path(write_version(tmp_path / "greeter-v1", krt), tmp_path).lines()


@pytest.mark.parametrize(("autoscaling", "says"), [
    ("{minReplicas: 3, maxReplicas: 2}",
     f"{F}:10:48: nodes[0].autoscaling.maxReplicas: must be at least minReplicas (3), got 2"),
    ("{minReplicas: -1, maxReplicas: 2}",
     f"{F}:10:32: nodes[0].autoscaling.minReplicas: must be at least 0, got -1"),
    ("{maxReplicas: 0}", f"{F}:10:32: nodes[0].autoscaling.maxReplicas: must be at least 1, got 0"),
    ("{maxReplicas: 2, pendingPerReplica: 0}",
     f"{F}:10:54: nodes[0].autoscaling.pendingPerReplica: must be at least 1, got 0"),
    ("{minReplicas: 1}",
     f"{F}:10:18: nodes[0].autoscaling.maxReplicas: required field is missing (e.g. "
     "maxReplicas: 10)"),
    ("{maxReplicas: 2, cpuUtilization: 50}",
     f'{F}:10:35: nodes[0].autoscaling.cpuUtilization: unknown field "cpuUtilization"; '
     "allowed: minReplicas, maxReplicas, pendingPerReplica"),
    ("{maxReplicas: two}",
     f'{F}:10:32: nodes[0].autoscaling.maxReplicas: expected an integer, got a string ("two")'),
])
def test_krt_yml_autoscaling_problems(tmp_path: Path, autoscaling: str, says: str) -> None:
    assert _krt_lines(tmp_path, autoscaling) == [says]


def test_krt_yml_replicas_and_autoscaling_exclude_each_other(tmp_path: Path) -> None:
    assert _krt_lines(tmp_path, "{maxReplicas: 4}", extra="    replicas: 2\n") == [
        f"{F}:10:5: nodes[0].replicas: fixed replicas and autoscaling exclude each other, and "
        "this node autoscales too; keep one (autoscaling's minReplicas and maxReplicas bound "
        "the count)",
    ]


# --- kai.yaml ------------------------------------------------------------------------------------


def test_kai_yaml_autoscaling_loads_and_round_trips(tmp_path: Path) -> None:
    text = HEAD + (
        "nats:\n"
        "  url: nats://nats.kai-system.svc:4222\n"
        "  monitoring: https://nats-headless.kai-system.svc:8223\n"
        "  account: KAI\n"
        "autoscaling: {engine: hpa}   # keep me\n"
        "versions:\n"
        "  greeter-v1:\n"
        "    state: started\n"
        "    entrypoint: {autoscaling: {minReplicas: 2, maxReplicas: 6, cpuUtilization: 70}}\n"
        "    nodes:\n"
        "      etl: {autoscaling: {maxReplicas: 8, cpuUtilization: 60}}\n"
        "      output: {replicas: 2}\n")
    project = load_project(write(tmp_path / "repo", text))
    assert project.autoscaling == AutoscalingSettings(HPA)
    assert (project.nats.monitoring, project.nats.account) == (
        "https://nats-headless.kai-system.svc:8223", "KAI")
    vs = project.versions["greeter-v1"]
    assert vs.entrypoint.autoscaling == AutoscalingOverride(2, 6, cpu_utilization=70)
    assert vs.nodes["etl"].autoscaling == AutoscalingOverride(max_replicas=8, cpu_utilization=60)
    assert vs.nodes["output"] == ProcessSettings(replicas=2)
    dumped = dump_project(project)
    assert load_project(write(tmp_path / "again", dumped)) == replace(
        project, root=tmp_path / "again")
    # an edit keeps the lines it does not change, comments too
    edited = edit_project(text, replace(project, versions={
        "greeter-v1": replace(vs, state="published")}))
    assert "autoscaling: {engine: hpa}   # keep me\n" in edited
    assert "cpuUtilization: 60" in edited
    # left at their defaults, the sections stay out of a fresh file
    assert "autoscaling" not in dump_project(Project("demo", "kai-demo"))
    assert "account" not in dump_project(Project("demo", "kai-demo"))


def test_kai_yaml_autoscaling_problems(tmp_path: Path) -> None:
    assert kai_problems(tmp_path / "a", HEAD + (
        "autoscaling: {engine: knative}\n"                                # line 3
        "versions:\n"
        "  a-v1:\n"
        "    entrypoint: {autoscaling: {minReplicas: 0, maxReplicas: 3}}\n"  # line 6
        "    nodes:\n"
        "      etl: {autoscaling: {minReplicas: 0}}\n"
        "  b-v1:\n"
        "    entrypoint: {autoscaling: {minReplicas: 2}}\n"               # line 10
        "    nodes: {etl: {autoscaling: {maxReplicas: 2, pendingPerReplica: two}}}\n"
    )) == [
        'kai.yaml:3:23: autoscaling.engine: must be one of: keda, hpa; got "knative"',
        "kai.yaml:6:45: versions.a-v1.entrypoint.autoscaling.minReplicas: must be at least 1, "
        "got 0",
        "kai.yaml:10:31: versions.b-v1.entrypoint.autoscaling.maxReplicas: required field is "
        "missing (e.g. maxReplicas: 6)",
        "kai.yaml:11:68: versions.b-v1.nodes.etl.autoscaling.pendingPerReplica: expected an "
        'integer, got a string ("two")',
    ]


def test_kai_yaml_rules_beyond_the_schema(tmp_path: Path) -> None:
    body = (
        "versions:\n"
        "  a-v1:\n"
        "    entrypoint: {autoscaling: {minReplicas: 4, maxReplicas: 3}}\n"       # line 5
        "    nodes:\n"
        "      etl: {replicas: 2, autoscaling: {maxReplicas: 3}}\n"              # line 7
        "      model: {autoscaling: {minReplicas: 5, maxReplicas: 4, cpuUtilization: 50}}\n"
    )
    both = ("fixed replicas and autoscaling exclude each other, and this node autoscales too; "
            "keep one (autoscaling's minReplicas and maxReplicas bound the count)")
    assert kai_problems(tmp_path / "keda", HEAD + body) == [
        "kai.yaml:5:61: versions.a-v1.entrypoint.autoscaling.maxReplicas: must be at least "
        "minReplicas (4), got 3",
        f"kai.yaml:7:13: versions.a-v1.nodes.etl.replicas: {both}",
        "kai.yaml:8:58: versions.a-v1.nodes.model.autoscaling.maxReplicas: must be at least "
        "minReplicas (5), got 4",
        "kai.yaml:8:61: versions.a-v1.nodes.model.autoscaling.cpuUtilization: is for "
        "autoscaling.engine hpa (an HPA on CPU); with keda, the default engine, a node scales "
        "on the work waiting: set pendingPerReplica",
    ]
    assert kai_problems(tmp_path / "hpa", HEAD + "autoscaling: {engine: hpa}\n" + (
        "versions:\n"
        "  a-v1:\n"
        "    nodes:\n"
        "      etl: {autoscaling: {minReplicas: 0, maxReplicas: 3, pendingPerReplica: 5}}\n"
        "      model: {autoscaling: {maxReplicas: 3, cpuUtilization: 50}}\n"
    )) == [
        "kai.yaml:7:40: versions.a-v1.nodes.etl.autoscaling.minReplicas: 0 (scale to zero) "
        "needs KEDA, but kai.yaml autoscaling.engine is hpa, which keeps at least 1 replica; "
        "set it to 1 or more, or use engine keda",
        "kai.yaml:7:59: versions.a-v1.nodes.etl.autoscaling.pendingPerReplica: is for "
        "autoscaling.engine keda (the work waiting); with hpa a node scales on CPU: set "
        "cpuUtilization",
    ]


@pytest.mark.parametrize(("monitoring", "says"), [
    ("'nats:99999'", '"nats:99999" has no valid port: give host:port, the port from 1 to 65535 '
                     "(8222 when left out)"),
    ("'nats:0'", '"nats:0": port 0 is no port; give one from 1 to 65535'),
    ("'http://:8222'", "does not match the pattern"),
    ("'nats.svc/jsz'", "does not match the pattern"),
])
def test_the_monitoring_endpoint_needs_a_host_and_port(tmp_path: Path, monitoring: str,
                                                       says: str) -> None:
    (line,) = kai_problems(tmp_path, HEAD + f"nats: {{monitoring: {monitoring}}}\n")
    assert line.startswith("kai.yaml:3:20: nats.monitoring: ") and says in line, line


# --- where kai.yaml meets krt.yml --------------------------------------------------------------


def repo_lines(tmp_path: Path, kai: str, krt: str = KRT_AUTO) -> list[str]:
    root = tmp_path / "repo"
    write_version(root / "versions" / "greeter-v1", krt)
    write(root, HEAD + kai)
    return validate_path(root, root).lines()


def test_kai_yaml_over_krt_yml(tmp_path: Path) -> None:
    assert repo_lines(tmp_path / "a", STARTED + (
        "    nodes:\n"
        "      etl: {autoscaling: {minReplicas: 6}}\n"            # line 7: over krt's max 5
        "      output: {autoscaling: {pendingPerReplica: 2}}\n"   # krt.yml: no autoscaling
    )) == [
        "kai.yaml:7:40: versions.greeter-v1.nodes.etl.autoscaling.minReplicas: 6 is more "
        "than maxReplicas (5, from versions/greeter-v1/krt.yml "
        "nodes[0].autoscaling.maxReplicas); lower it or raise maxReplicas",
        "kai.yaml:8:16: versions.greeter-v1.nodes.output.autoscaling: needs maxReplicas: node "
        "output does not autoscale in krt.yml, so kai.yaml says how far it may scale",
    ]
    krt = KRT_AUTO.replace("minReplicas: 0", "minReplicas: 4")
    assert repo_lines(tmp_path / "b", STARTED + (
        "    nodes: {etl: {autoscaling: {maxReplicas: 3}}}\n"), krt) == [
        "kai.yaml:6:46: versions.greeter-v1.nodes.etl.autoscaling.maxReplicas: must be at "
        "least minReplicas (4, from versions/greeter-v1/krt.yml "
        "nodes[0].autoscaling.minReplicas), got 3",
    ]
    # fine: both keys from kai.yaml, or kai.yaml's replicas turning krt.yml's autoscaling off
    assert repo_lines(tmp_path / "c", STARTED + (
        "    nodes: {etl: {autoscaling: {minReplicas: 6, maxReplicas: 9}}}\n")) == []
    assert repo_lines(tmp_path / "d", STARTED + "    nodes: {etl: {replicas: 2}}\n") == []


def test_krt_yml_scale_to_zero_under_the_hpa_engine(tmp_path: Path) -> None:
    hpa = "autoscaling: {engine: hpa}\n"
    assert repo_lines(tmp_path / "a", hpa + STARTED) == [
        f"{REPO_KRT}:10:32: nodes[0].autoscaling.minReplicas: 0 (scale to zero) needs KEDA, "
        "but kai.yaml autoscaling.engine is hpa, which keeps at least 1 replica; set it to 1 "
        "or more, or use engine keda",
    ]
    # kai.yaml may lift it, or fix the count
    assert repo_lines(tmp_path / "b", hpa + STARTED + (
        "    nodes: {etl: {autoscaling: {minReplicas: 1}}}\n")) == []
    assert repo_lines(tmp_path / "c", hpa + STARTED + "    nodes: {etl: {replicas: 1}}\n") == []


# --- the layers ---------------------------------------------------------------------------------


def test_kai_yaml_overrides_krt_yml_key_by_key(tmp_path: Path) -> None:
    project = project_of(tmp_path, STARTED + "    nodes: {etl: {autoscaling: {maxReplicas: 9}}}\n")
    etl = next(p for p in build_plan(project, version_of(tmp_path)).nodes if p.node == "etl")
    assert etl.autoscaling == Autoscaling("keda", 0, 9, 3, triggers=(Trigger(STREAM, "s0-etl"),))


def test_kai_yaml_replicas_turn_krt_yml_autoscaling_off(tmp_path: Path) -> None:
    project = project_of(tmp_path, STARTED + "    nodes: {etl: {replicas: 3}}\n")
    objs = objects(project, version_of(tmp_path))
    assert by_kind(objs, "ScaledObject") == []
    assert named(objs, "Deployment")["etl"]["spec"]["replicas"] == 3
    # and the entrypoint has no node that may sleep
    assert contract.ENV_SCALE_TO_ZERO not in env_of(named(objs, "Deployment")["entrypoint"])


def test_kai_yaml_autoscaling_overrides_krt_yml_replicas(tmp_path: Path) -> None:
    krt = KRT.replace("    src: src/etl/main.py\n", "    src: src/etl/main.py\n    replicas: 4\n")
    project = project_of(tmp_path, STARTED + "    nodes: {etl: {autoscaling: {maxReplicas: 6}}}\n")
    objs = objects(project, version_of(tmp_path, krt))
    (so,) = by_kind(objs, "ScaledObject")
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (1, 6)
    assert "replicas" not in named(objs, "Deployment")["etl"]["spec"]


# --- rendering: KEDA -------------------------------------------------------------------------


def two_workflow_version(tmp_path: Path) -> Version:
    """etl runs step 0 of py-greeting and steps 0 and 1 of py-echo (etl, etl, output)."""
    version = make_version(tmp_path)
    etl = replace(version.nodes[0], autoscaling=AutoscalingOverride(0, 5, 3))
    return replace(version, nodes=(etl, version.nodes[1]), workflows=(
        *version.workflows, Workflow("py-echo", "PyEcho", ("etl", "etl", "output"))))


def test_a_scaledobject_per_autoscaled_node(tmp_path: Path) -> None:
    project = project_of(tmp_path, STARTED)
    objs = objects(project, two_workflow_version(tmp_path))
    (so,) = by_kind(objs, "ScaledObject")
    deployment = named(objs, "Deployment")["etl"]
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert so["metadata"]["name"] == deployment["metadata"]["name"] == "greeter-v1-etl"
    assert so["metadata"]["namespace"] == "kai-demo"
    assert so["metadata"]["labels"] == deployment["metadata"]["labels"]
    assert so["metadata"]["annotations"] == {SYNC_WAVE: "1"}  # after the Deployments (0)
    assert deployment["metadata"]["annotations"][SYNC_WAVE] == "0"
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": "greeter-v1-etl"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 5)
    common = {"natsServerMonitoringEndpoint": "nats.kai-system.svc:8222", "account": "$G",
              "lagThreshold": "3", "activationLagThreshold": "0"}
    assert spec["triggers"] == [
        {"type": "nats-jetstream", "metadata": {**common, "stream": s, "consumer": c}}
        for s, c in ((ECHO_STREAM, "s0-etl"), (ECHO_STREAM, "s1-etl"), (STREAM, "s0-etl"))]
    assert check_object(FILE, so, K8S) == []
    # the names are the runner's own (runner.contract), as its nodes consume them
    assert node_triggers("demo", "greeter-v1", (
        contract.Workflow("py-greeting", "PyGreet", ("etl", "output")),
        contract.Workflow("py-echo", "PyEcho", ("etl", "etl", "output"))), "etl") == (
        Trigger(contract.stream_name("demo", "greeter-v1", "py-echo"),
                contract.consumer_name(0, "etl")),
        Trigger(ECHO_STREAM, contract.consumer_name(1, "etl")),
        Trigger(STREAM, contract.consumer_name(0, "etl")))


def test_a_node_in_no_workflow_has_nothing_to_scale_on(tmp_path: Path) -> None:
    version = version_of(tmp_path)
    version = replace(version, workflows=(Workflow("py-out", "PyGreet", ("output",)),))
    with pytest.raises(PlanError, match="node etl autoscales on the work waiting for it, but no "
                                        "workflow runs it"):
        build_plan(project_of(tmp_path, STARTED), version)


def test_the_activation_threshold_comes_with_scale_to_zero_only(tmp_path: Path) -> None:
    project = project_of(tmp_path, STARTED + "    nodes: {etl: {autoscaling: {minReplicas: 2}}}\n")
    (so,) = by_kind(objects(project, version_of(tmp_path)), "ScaledObject")
    (trigger,) = so["spec"]["triggers"]
    assert "activationLagThreshold" not in trigger["metadata"]
    assert so["spec"]["minReplicaCount"] == 2


@pytest.mark.parametrize(("nats", "endpoint", "https"), [
    ("{url: 'nats://nats.other.svc:4333'}", "nats.other.svc:8222", False),
    ("{url: 'tls://a.example.com,tls://b.example.com'}", "a.example.com:8222", False),
    ("{monitoring: nats-headless.kai-system.svc}", "nats-headless.kai-system.svc:8222", False),
    ("{monitoring: 'http://10.0.0.7:8300'}", "10.0.0.7:8300", False),
    ("{monitoring: 'https://nats.kai-system.svc:8443', account: ABCD}",
     "nats.kai-system.svc:8443", True),
])
def test_the_monitoring_endpoint_and_account(tmp_path: Path, nats: str, endpoint: str,
                                             https: bool) -> None:
    project = project_of(tmp_path, f"nats: {nats}\n" + STARTED)
    (so,) = by_kind(objects(project, version_of(tmp_path)), "ScaledObject")
    meta = so["spec"]["triggers"][0]["metadata"]
    assert meta["natsServerMonitoringEndpoint"] == endpoint
    assert meta.get("useHttps") == ("true" if https else None)
    assert meta["account"] == ("ABCD" if "account" in nats else "$G")


def test_monitoring_endpoint_derivation() -> None:
    assert monitoring_endpoint("nats://[::1]:4222") == MonitoringEndpoint("[::1]:8222")
    assert monitoring_endpoint("nats://x", "[fd00::1]:9") == MonitoringEndpoint("[fd00::1]:9")
    assert monitoring_endpoint("") == MonitoringEndpoint("nats.kai-system.svc:8222")


def test_an_autoscaled_deployment_names_no_replicas(tmp_path: Path) -> None:
    project = project_of(tmp_path, STARTED + "    entrypoint: {autoscaling: {maxReplicas: 3}}\n")
    deployments = named(objects(project, version_of(tmp_path)), "Deployment")
    assert "replicas" not in deployments["etl"]["spec"]
    assert "replicas" not in deployments["entrypoint"]["spec"]
    assert deployments["output"]["spec"]["replicas"] == 1  # fixed


# --- rendering: HPAs -----------------------------------------------------------------------


def test_engine_hpa_renders_an_hpa_on_cpu(tmp_path: Path) -> None:
    krt = KRT_AUTO.replace("minReplicas: 0", "minReplicas: 2")
    project = project_of(tmp_path, "autoscaling: {engine: hpa}\n" + STARTED + (
        "    nodes: {output: {autoscaling: {maxReplicas: 4, cpuUtilization: 65}}}\n"))
    objs = objects(project, version_of(tmp_path, krt))
    assert by_kind(objs, "ScaledObject") == []
    hpas = named(objs, "HorizontalPodAutoscaler")
    assert sorted(hpas) == ["etl", "output"]
    etl = hpas["etl"]
    assert etl["apiVersion"] == "autoscaling/v2"
    assert etl["metadata"]["annotations"] == {SYNC_WAVE: "1"}
    assert etl["spec"] == {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                           "name": "greeter-v1-etl"},
        "minReplicas": 2, "maxReplicas": 5,
        "metrics": [{"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]}
    assert hpas["output"]["spec"]["metrics"][0]["resource"]["target"][
        "averageUtilization"] == 65
    assert (hpas["output"]["spec"]["minReplicas"], hpas["output"]["spec"]["maxReplicas"]) == (1, 4)
    for hpa in hpas.values():
        assert check_object("hpa.yaml", hpa, K8S) == []


def test_the_entrypoint_scales_on_cpu_whatever_the_engine(tmp_path: Path) -> None:
    project = project_of(tmp_path, STARTED + (
        "    entrypoint: {autoscaling: {minReplicas: 2, maxReplicas: 6, cpuUtilization: 70}}\n"))
    objs = objects(project, version_of(tmp_path))
    (hpa,) = by_kind(objs, "HorizontalPodAutoscaler")
    assert hpa["metadata"]["name"] == "greeter-v1-entrypoint"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "greeter-v1-entrypoint"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    assert [o["metadata"]["name"] for o in by_kind(objs, "ScaledObject")] == ["greeter-v1-etl"]
    assert check_object("hpa.yaml", hpa, K8S) == []


def test_an_hpa_needs_a_cpu_request(tmp_path: Path) -> None:
    project = replace(project_of(tmp_path, STARTED + (
        "    entrypoint: {autoscaling: {maxReplicas: 2}}\n")),
        resources=Resources(requests={"memory": "128Mi"}))
    with pytest.raises(PlanError, match=r"greeter-v1: entrypoint scales on CPU use \(an HPA\), "
                                        r".* requests no cpu; add requests.cpu"):
        build_plan(project, version_of(tmp_path))
    # a node under KEDA needs none
    project = replace(project, versions={"greeter-v1": replace(
        project.versions["greeter-v1"], entrypoint=ProcessSettings())})
    assert build_plan(project, version_of(tmp_path)).nodes[0].autoscaling is not None
    # its own request is enough
    project = replace(project, versions={"greeter-v1": replace(
        project.versions["greeter-v1"], entrypoint=ProcessSettings(
            ResourceOverride({"cpu": "250m"}), autoscaling=AutoscalingOverride(max_replicas=2)))})
    assert build_plan(project, version_of(tmp_path)).entrypoint.autoscaling is not None


def test_validation_says_an_hpa_lacks_a_cpu_request(tmp_path: Path) -> None:
    no_cpu = "resources: {requests: {memory: 128Mi}}\n"
    needs = ("scales on CPU use (an HPA), which Kubernetes measures against the CPU request, "
             "but its container requests no cpu; add requests.cpu")
    krt = KRT_AUTO.replace("minReplicas: 0", "minReplicas: 1")
    assert repo_lines(tmp_path / "a", "autoscaling: {engine: hpa}\n" + no_cpu + STARTED + (
        "    nodes: {output: {autoscaling: {maxReplicas: 2}}}\n"), krt) == [
        f"kai.yaml:8:22: versions.greeter-v1.nodes.output.autoscaling: node output {needs}",
        f"{REPO_KRT}:10:5: nodes[0].autoscaling: node etl {needs}",
    ]
    # a node's own request is enough; under keda none is needed
    with_cpu = krt.replace("    autoscaling:", "    resources: {requests: {cpu: 50m}}\n"
                                              "    autoscaling:")
    assert repo_lines(tmp_path / "b", "autoscaling: {engine: hpa}\n" + no_cpu + STARTED,
                      with_cpu) == []
    assert repo_lines(tmp_path / "c", no_cpu + STARTED, krt) == []
    assert kai_problems(tmp_path / "d", HEAD + no_cpu + STARTED + (
        "    entrypoint: {autoscaling: {maxReplicas: 2}}\n")) == [
        f"kai.yaml:7:18: versions.greeter-v1.entrypoint.autoscaling: the entrypoint {needs}"]


# --- PodDisruptionBudget and spread -----------------------------------------------------------


def test_an_autoscaled_process_that_may_reach_two_replicas_is_spread(tmp_path: Path) -> None:
    project = project_of(tmp_path, STARTED + (
        "    entrypoint: {autoscaling: {maxReplicas: 1}}\n"
        "    nodes: {output: {autoscaling: {maxReplicas: 2}}}\n"))
    objs = objects(project, version_of(tmp_path))  # etl: 0 to 5
    assert sorted(named(objs, "PodDisruptionBudget")) == ["etl", "output"]
    deployments = named(objs, "Deployment")
    assert {name: "topologySpreadConstraints" in d["spec"]["template"]["spec"]
            for name, d in deployments.items()} == {"entrypoint": False, "etl": True,
                                                    "output": True}


# --- the ScaledObject against the CRD schema ---------------------------------------------------


def _scaledobject(tmp_path: Path) -> dict[str, Any]:
    project = project_of(tmp_path, STARTED)
    (so,) = by_kind(objects(project, version_of(tmp_path)), "ScaledObject")
    return so


def _without_max(spec: dict[str, Any], low: int) -> None:
    del spec["maxReplicaCount"]
    spec["minReplicaCount"] = low


@pytest.mark.parametrize(("change", "path", "says"), [
    (lambda so: so["spec"].update(maxReplicas=3), "spec",
     "'maxReplicas' was unexpected"),
    (lambda so: so["spec"].pop("scaleTargetRef"), "spec", "'scaleTargetRef' is a required"),
    (lambda so: so["spec"].update(triggers=[]), "spec.triggers", "should be non-empty"),
    (lambda so: so["spec"].update(minReplicaCount=-1), "spec.minReplicaCount",
     "less than the minimum of 0"),
    (lambda so: so["spec"].update(minReplicaCount=6), "spec.minReplicaCount",
     "must be at most maxReplicaCount"),
    (lambda so: _without_max(so["spec"], 101), "spec.minReplicaCount",
     "must be at most maxReplicaCount"),  # KEDA's default maxReplicaCount is 100
    (lambda so: so["spec"]["triggers"][0]["metadata"].update(lagThreshold=3),
     "spec.triggers[0].metadata.lagThreshold", "is not of type 'string'"),
    (lambda so: so["spec"]["triggers"][0]["metadata"].update(lagThreshold="three"),
     "spec.triggers[0].metadata.lagThreshold", "is not a whole number"),
    (lambda so: so["spec"]["triggers"][0]["metadata"].pop("stream"),
     "spec.triggers[0].metadata.stream", "is required by KEDA's nats-jetstream scaler"),
    (lambda so: so["spec"]["triggers"][0]["metadata"].pop("account"),
     "spec.triggers[0].metadata.account", "(or accountID)"),
    (lambda so: so["spec"]["triggers"][0]["metadata"].update(useHttps="yes"),
     "spec.triggers[0].metadata.useHttps", 'must be "true" or "false"'),
    (lambda so: so["spec"]["triggers"][0].pop("type"), "spec.triggers[0]",
     "'type' is a required property"),
    (lambda so: so["spec"]["scaleTargetRef"].update(name=""), "spec.scaleTargetRef.name",
     "should be non-empty"),
    (lambda so: so.update(apiVersion="keda.sh/v1beta1"), "apiVersion",
     "must be keda.sh/v1alpha1"),
])
def test_what_the_scaledobject_check_refuses(tmp_path: Path, change: Any, path: str,
                                             says: str) -> None:
    so = copy.deepcopy(_scaledobject(tmp_path))
    change(so)
    found = check_object(FILE, so, K8S)
    assert any(p.path == path and says in p.message for p in found), found


def test_a_broken_scaledobject_fails_the_render(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from renderer import render

    original = render.render_template

    def broken(template: str, /, **context: Any) -> dict[str, Any]:
        obj = original(template, **context)
        if obj["kind"] == "ScaledObject":
            obj["spec"]["minReplicas"] = 0  # an HPA's name, not KEDA's
        return obj

    monkeypatch.setattr(render, "render_template", broken)
    project = project_of(tmp_path, STARTED)
    with pytest.raises(render.RenderError) as info:
        render_project(project, {"greeter-v1": version_of(tmp_path)})
    assert [str(p) for p in info.value.problems] == [
        "rendered/demo/greeter-v1/scaledobject-greeter-v1-etl.yaml: spec: Additional "
        "properties are not allowed ('minReplicas' was unexpected) (the KEDA ScaledObject CRD "
        "schema, strict)"]


def test_the_bundled_crd_schema_is_a_schema_and_says_where_it_came_from() -> None:
    text = resources.files("renderer.schemas").joinpath(SCALEDOBJECT_SCHEMA).read_text()
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    assert "kedacore/keda" in schema["$comment"]
    assert "config/crd/bases/keda.sh_scaledobjects.yaml at commit " in schema["$comment"]
    assert schema["properties"]["spec"]["required"] == ["scaleTargetRef", "triggers"]
    assert "description" not in text.replace(schema["$comment"], "")


def test_the_tree_lists_the_autoscalers(tmp_path: Path) -> None:
    project = project_of(tmp_path, STARTED + "    entrypoint: {autoscaling: {maxReplicas: 3}}\n")
    tree = render_project(project, {"greeter-v1": version_of(tmp_path)})
    for rel in ("greeter-v1/scaledobject-greeter-v1-etl.yaml",
                "greeter-v1/horizontalpodautoscaler-greeter-v1-entrypoint.yaml"):
        assert rel in tree and f"- {rel}".encode() in tree["kustomization.yaml"]


# --- scale to zero: the entrypoint and kai dev -------------------------------------------------


def test_the_entrypoint_knows_the_nodes_that_may_sleep(tmp_path: Path) -> None:
    deployments = named(objects(project_of(tmp_path, STARTED), version_of(tmp_path)),
                        "Deployment")
    assert env_of(deployments["entrypoint"])[contract.ENV_SCALE_TO_ZERO] == "etl"
    for node in ("etl", "output"):  # the nodes' own pods do not change with it
        assert contract.ENV_SCALE_TO_ZERO not in env_of(deployments[node])
    env = contract.RunnerEnv.from_environ(env_of(deployments["entrypoint"]))
    assert env.scale_to_zero == ("etl",)
    assert [(s.consumer, s.scales_to_zero) for s in steps_of(env)] == [
        ("s0-etl", True), ("s1-output", False)]


def test_a_sleeping_nodes_step_is_up_while_its_consumer_exists(tmp_path: Path) -> None:
    env = contract.RunnerEnv(project="p", version="v", version_dir=str(tmp_path), proto="x",
                             workflows=(contract.Workflow("wf", "Run", ("etl", "out")),),
                             scale_to_zero=("etl",))

    async def scenario() -> None:
        broker = MemoryBroker()
        transport = MemoryTransport(broker, env)
        await transport.connect("entrypoint")
        watch = NodeWatch(transport, [Step(s.stream, s.consumer, s.node, s.scales_to_zero)
                                      for s in steps_of(env)])
        assert not await watch.poll() and watch.down() == ["etl", "out"]  # no consumers yet
        await transport.ensure_work_stream("wf")
        await transport.ensure_consumer("wf", 0, "etl")  # what the entrypoint does for it
        await transport.ensure_consumer("wf", 1, "out")
        await watch.poll()
        assert watch.down() == ["out"]  # etl is up with no replica; out needs one pulling

    asyncio.run(asyncio.wait_for(scenario(), 30))


def _dev_objects(tmp_path: Path, krt: str, project: Project | None = None) -> list[dict[str, Any]]:
    return render_local(project or Project("dev", "dev"), version_of(tmp_path, krt))[1]


def test_kai_dev_starts_one_process_of_a_node_that_may_sleep(tmp_path: Path) -> None:
    objs = _dev_objects(tmp_path, KRT_AUTO)
    specs = {s.name: s.replicas for s in rendered_specs(
        objs, tmp_path / "work", "nats://127.0.0.1:1", DevConfig({}, {}), 7000, 7001)}
    assert specs == {"greeter-v1-entrypoint": 1, "greeter-v1-etl": 1, "greeter-v1-output": 1}
    # its minimum when above one (what the cluster keeps while idle), and an HPA's too
    krt = KRT_AUTO.replace("minReplicas: 0", "minReplicas: 3").replace(
        "    src: src/output/main.py\n", "    src: src/output/main.py\n    replicas: 2\n")
    objs = _dev_objects(tmp_path / "b", krt)
    assert autoscaled_replicas(objs) == {"greeter-v1-etl": 3}
    specs = {s.name: s.replicas for s in rendered_specs(
        objs, tmp_path / "work-b", "nats://127.0.0.1:1", DevConfig({}, {}), 7000, 7001)}
    assert specs == {"greeter-v1-entrypoint": 1, "greeter-v1-etl": 3, "greeter-v1-output": 2}
    hpa = {"kind": "HorizontalPodAutoscaler",
           "spec": {"scaleTargetRef": {"name": "x"}, "maxReplicas": 4}}
    so = {"kind": "ScaledObject", "spec": {"scaleTargetRef": {"name": "y"}}}
    assert autoscaled_replicas([hpa, so]) == {"x": 1, "y": 1}  # the kinds' own defaults, or 1


def test_kai_dev_runs_a_sleeping_node_with_the_cluster_environment(tmp_path: Path) -> None:
    objs = _dev_objects(tmp_path, KRT_AUTO, Project("dev", "dev", nats=Nats(monitoring="x:1")))
    specs = {s.name: s for s in rendered_specs(
        objs, tmp_path / "work", "nats://127.0.0.1:1", DevConfig({}, {}), 7000, 7001)}
    assert specs["greeter-v1-entrypoint"].env[contract.ENV_SCALE_TO_ZERO] == "etl"
    assert specs["greeter-v1-etl"].replicas == 1
