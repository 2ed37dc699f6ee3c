"""Resources per node and scheduling: kai.yaml and krt.yml fields, their precedence, every
validation message with its position, GPU nodes, PodDisruptionBudgets and topology spread."""

from __future__ import annotations

import re
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_projectfile import problems as kai_problems
from test_projectfile import write
from test_render import by_kind, make_version
from test_validate import KRT, write_version

from renderer.cli import main
from renderer.krt import Version
from renderer.plan import PlanError, build_plan
from renderer.project import Project
from renderer.projectfile import dump_project, edit_project, load_project
from renderer.render import render_project, render_version
from renderer.scheduling import (
    Excess,
    Gpu,
    ProcessSettings,
    ResourceOverride,
    Resources,
    Scheduling,
    Toleration,
    excesses,
    merge,
)
from renderer.schemacheck import load_schema
from renderer.units import QUANTITY_PATTERN, parse_quantity
from renderer.validate import validate_path

HEAD = "project: demo\nnamespace: kai-demo\n"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def project_of(tmp_path: Path, text: str) -> Project:
    return load_project(write(tmp_path / "repo", HEAD + text))


def objects(project: Project, version: Version) -> list[dict[str, Any]]:
    return render_version(project, build_plan(project, version))


def deployments(project: Project, version: Version) -> dict[str, dict[str, Any]]:
    """The version's Deployments by process (entrypoint, etl, output)."""
    return {d["metadata"]["name"].removeprefix(f"{version.name}-"): d
            for d in by_kind(objects(project, version), "Deployment")}


def pod(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def resources(deployment: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = pod(deployment)["containers"][0]["resources"]
    return out


def with_node(version: Version, name: str, **changes: Any) -> Version:
    nodes = tuple(replace(n, **changes) if n.name == name else n for n in version.nodes)
    return replace(version, nodes=nodes)


# --- quantities ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "amount"), [
    ("100m", Fraction(1, 10)), ("1", 1), ("0.5", Fraction(1, 2)), (".5", Fraction(1, 2)),
    ("5.", 5), ("512Mi", 512 * 1024**2), ("1Gi", 1024**3), ("1k", 1000), ("2M", 2 * 10**6),
    ("1E", 10**18), ("1Ei", 1024**6), ("1e3", 1000), ("1E3", 1000), ("1e-2", Fraction(1, 100)),
    ("25n", Fraction(25, 10**9)), ("3u", Fraction(3, 10**6)), ("0", 0),
])
def test_parse_quantity(text: str, amount: Fraction) -> None:
    assert re.search(QUANTITY_PATTERN, text)
    assert parse_quantity(text) == amount


@pytest.mark.parametrize("text", ["", "-1", "+1", "1 m", "1mi", "1KB", "1K", "Mi", ".", "1e",
                                  "1e1000", "1.2.3", "0x10", "١"])
def test_not_a_quantity(text: str) -> None:
    assert not re.search(QUANTITY_PATTERN, text)
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity(text)


def test_space_around_a_quantity_is_ignored() -> None:
    assert parse_quantity("1Mi\n") == parse_quantity(" 1Mi ") == 1024**2


def test_both_schemas_use_the_one_quantity_pattern() -> None:
    for name in ("kai.schema.json", "krt.schema.json"):
        assert load_schema(name)["$defs"]["quantity"]["pattern"] == QUANTITY_PATTERN
    assert load_schema("kai.schema.json")["$defs"]["tmpSize"]["pattern"] == QUANTITY_PATTERN


def test_excesses_compare_quantities_not_text() -> None:
    assert excesses([Resources({"cpu": "1500m", "memory": "1Gi"},
                               {"cpu": "2", "memory": "1024Mi"})]) == []
    assert excesses([Resources({"cpu": "1.5"}, {"cpu": "1500m"})]) == []
    found = excesses([Resources({"cpu": "2", "memory": "2G"}, {"cpu": "1999m", "memory": "2Gi"})])
    assert found == [Excess("cpu", "2", "1999m", 0, 0)]  # 2G < 2Gi


def test_merging_is_key_by_key_and_later_layers_win() -> None:
    base = Resources()
    krt = ResourceOverride({"memory": "256Mi"}, {"memory": "1Gi", "cpu": "2"})
    kai = ResourceOverride(limits={"memory": "2Gi"})
    assert merge(base, krt, kai) == Resources({"cpu": "100m", "memory": "256Mi"},
                                              {"cpu": "2", "memory": "2Gi"})
    assert merge(base) == base
    # the culprit is the field of the later layer; the request when both share one
    e = excesses([base, ResourceOverride(limits={"memory": "64Mi"})])[0]
    assert (e.culprit, e.other) == (("limits", 1), ("requests", 0))
    e = excesses([base, ResourceOverride(requests={"cpu": "4"})])[0]
    assert (e.culprit, e.other) == (("requests", 1), ("limits", 0))
    e = excesses([ResourceOverride({"cpu": "2"}, {"cpu": "1"})])[0]
    assert (e.culprit, e.other) == (("requests", 0), ("limits", 0))


# --- precedence: kai.yaml node > krt.yml node > project default ----------------------------


def test_precedence_per_key(tmp_path: Path) -> None:
    project = project_of(tmp_path, (
        "resources: {requests: {cpu: 200m, memory: 128Mi}, limits: {cpu: '1', memory: 512Mi}}\n"
        "versions:\n"
        "  greeter-v1:\n"
        "    state: started\n"
        "    entrypoint: {resources: {requests: {cpu: 50m}}}\n"
        "    nodes:\n"
        "      etl: {resources: {limits: {memory: 2Gi}}}\n"
    ))
    version = with_node(make_version(tmp_path), "etl", resources=ResourceOverride(
        {"memory": "256Mi"}, {"memory": "1Gi", "cpu": "2"}))
    deps = deployments(project, version)
    assert resources(deps["etl"]) == {  # project cpu request; krt.yml memory, cpu limit; kai.yaml
        "requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "2Gi"}}
    assert resources(deps["output"]) == {  # nothing per node: the project default
        "requests": {"cpu": "200m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
    assert resources(deps["entrypoint"]) == {
        "requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}


def test_a_project_block_replaces_the_built_in_block(tmp_path: Path) -> None:
    """As before per-node resources: kai.yaml `resources.requests` is the whole block."""
    project = project_of(tmp_path, "resources: {requests: {cpu: 200m}}\n"
                                   "versions: {greeter-v1: {state: started}}\n")
    deps = deployments(project, make_version(tmp_path))
    assert resources(deps["etl"]) == {"requests": {"cpu": "200m"},
                                      "limits": {"cpu": "1", "memory": "512Mi"}}


def test_krt_yml_node_resources_are_read(tmp_path: Path) -> None:
    krt = KRT.replace("    src: src/etl/main.py\n", (
        "    src: src/etl/main.py\n"
        "    resources:\n"
        "      requests: {cpu: 250m, ephemeral-storage: 1Gi}\n"
        "      limits: {memory: 1Gi}\n"))
    folder = write_version(tmp_path / "greeter-v1", krt)
    report = validate_path(folder, tmp_path)
    assert report.ok, report.lines()
    etl = report.versions[0].version.node("etl")
    assert etl.resources == ResourceOverride({"cpu": "250m", "ephemeral-storage": "1Gi"},
                                             {"memory": "1Gi"})
    assert report.versions[0].version.node("output").resources == ResourceOverride()


def test_a_block_scalar_quantity_loses_its_newline(tmp_path: Path) -> None:
    """`cpu: |` then `1` is "1\n" in YAML, which a schema's `$` lets through."""
    project = project_of(tmp_path, (
        "resources:\n  limits:\n    cpu: |\n      1\n"
        "versions:\n  greeter-v1:\n    state: started\n"
        "    nodes: {etl: {tmpSize: \"1Gi\\n\", resources: {requests: {cpu: \"2\\n\"}}}}\n"))
    assert project.resources.limits == {"cpu": "1"}
    assert project.versions["greeter-v1"].nodes["etl"] == ProcessSettings(
        ResourceOverride(requests={"cpu": "2"}), "1Gi")
    krt = KRT.replace("    src: src/etl/main.py\n", "    src: src/etl/main.py\n"
                      "    resources:\n      limits:\n        memory: |\n          1Gi\n")
    version = validate_path(write_version(tmp_path / "v", krt), tmp_path).versions[0].version
    assert version.node("etl").resources == ResourceOverride(limits={"memory": "1Gi"})


# --- validation, with positions -------------------------------------------------------------

KRT_RESOURCES = KRT.replace("    src: src/etl/main.py\n", (
    "    src: src/etl/main.py\n"
    "    resources:\n"                                  # line 10
    "      requests: {cpu: 500m, memory: 256Mi}\n"      # line 11
    "      limits: {cpu: '2', memory: 1Gi}\n"))         # line 12
ETL = "versions/greeter-v1/krt.yml"
REFUSED = "Kubernetes refuses a request above its limit: lower the request or raise the limit"


def repo(root: Path, kai: str, krt: str = KRT_RESOURCES) -> Path:
    write_version(root / "versions" / "greeter-v1", krt)
    write(root, HEAD + kai)
    return root


def repo_lines(tmp_path: Path, kai: str, krt: str = KRT_RESOURCES) -> list[str]:
    root = repo(tmp_path / "repo", kai, krt)
    return validate_path(root, root).lines()


def render_lines(tmp_path: Path) -> list[str]:
    """`kai render` on the repo validate_lines made: its error lines."""
    result = CliRunner().invoke(main, ["render", "--repo", str(tmp_path / "repo")])
    assert result.exit_code == 1, result.output
    return [line for line in result.stderr.splitlines() if line.startswith(("kai.yaml", "vers"))]


def test_bad_quantities(tmp_path: Path) -> None:
    krt = KRT_RESOURCES.replace("cpu: 500m", "cpu: 500 m").replace("cpu: '2'", "cpu: 2")
    hint = f'does not match the pattern {QUANTITY_PATTERN}: a Kubernetes quantity in quotes, ' \
        'like "100m", "1" or "512Mi" (e.g. 100m)'
    assert repo_lines(tmp_path, "versions: {greeter-v1: {state: started}}\n", krt) == [
        f'{ETL}:11:23: nodes[0].resources.requests.cpu: "500 m" {hint}',
        f"{ETL}:12:21: nodes[0].resources.limits.cpu: expected a string, got an integer (2); "
        'put it in quotes if it is meant as text: "2"',
    ]
    assert kai_problems(tmp_path / "kai", HEAD + (
        "versions:\n"
        "  a-v1:\n"
        "    nodes:\n"
        "      etl: {resources: {limits: {memory: 1GB}}, tmpSize: lots}\n"
    )) == [
        f'kai.yaml:6:42: versions.a-v1.nodes.etl.resources.limits.memory: "1GB" {hint}',
        f'kai.yaml:6:58: versions.a-v1.nodes.etl.tmpSize: "lots" does not match the pattern '
        f'{QUANTITY_PATTERN}: a size like "1Gi" or "512Mi", in quotes (e.g. 1Gi)',
    ]
    assert kai_problems(tmp_path / "zero", HEAD + "versions: {a-v1: {entrypoint: {tmpSize: '0'},"
                                                  " nodes: {etl: {tmpSize: 0Mi}}}}\n") == [
        'kai.yaml:3:41: versions.a-v1.entrypoint.tmpSize: must be more than 0, got "0"',
        'kai.yaml:3:70: versions.a-v1.nodes.etl.tmpSize: must be more than 0, got "0Mi"',
    ]


def test_requests_above_limits_in_krt_yml(tmp_path: Path) -> None:
    krt = KRT_RESOURCES.replace("memory: 256Mi", "memory: 2Gi").replace("cpu: '2'", "cpu: 250m")
    folder = write_version(tmp_path / "greeter-v1", krt)
    assert validate_path(folder, tmp_path).lines() == [
        f"greeter-v1/krt.yml:11:23: nodes[0].resources.requests.cpu: 500m is more than "
        f"limits.cpu (250m); {REFUSED}",
        f"greeter-v1/krt.yml:11:37: nodes[0].resources.requests.memory: 2Gi is more than "
        f"limits.memory (1Gi); {REFUSED}",
    ]


def test_a_krt_yml_limit_under_the_project_request(tmp_path: Path) -> None:
    """Found where kai.yaml and the version meet: at the krt.yml field, naming kai.yaml's."""
    krt = KRT_RESOURCES.replace("      requests: {cpu: 500m, memory: 256Mi}\n", "")
    kai = "resources: {requests: {memory: 2Gi}, limits: {memory: 4Gi}}\n" \
          "versions: {greeter-v1: {state: started}}\n"
    expected = [f"{ETL}:11:34: nodes[0].resources.limits.memory: 1Gi is less than "
                f"requests.memory (2Gi, from kai.yaml resources.requests.memory); {REFUSED}"]
    assert repo_lines(tmp_path, kai, krt) == expected
    assert render_lines(tmp_path) == expected
    # from the built-in default when kai.yaml sets no requests
    krt = krt.replace("memory: 1Gi", "memory: 64Mi")
    assert repo_lines(tmp_path / "b", "versions: {greeter-v1: {state: stopped}}\n", krt) == [
        f"{ETL}:11:34: nodes[0].resources.limits.memory: 64Mi is less than requests.memory "
        f"(128Mi, from the built-in default requests.memory); {REFUSED}"]


def test_requests_above_limits_after_a_kai_yaml_override(tmp_path: Path) -> None:
    kai = (
        "versions:\n"
        "  greeter-v1:\n"
        "    state: started\n"
        "    nodes:\n"
        "      etl: {resources: {requests: {cpu: '3'}, limits: {memory: 128Mi}}}\n"
    )
    expected = [
        f"kai.yaml:7:41: versions.greeter-v1.nodes.etl.resources.requests.cpu: 3 is more than "
        f"limits.cpu (2, from {ETL} nodes[0].resources.limits.cpu); {REFUSED}",
        f"kai.yaml:7:64: versions.greeter-v1.nodes.etl.resources.limits.memory: 128Mi is less "
        f"than requests.memory (256Mi, from {ETL} nodes[0].resources.requests.memory); "
        f"{REFUSED}",
    ]
    assert repo_lines(tmp_path, kai) == expected
    assert render_lines(tmp_path) == expected
    # raising the limit too makes it fine
    fixed = kai.replace("limits: {memory: 128Mi}", "limits: {cpu: '4', memory: 256Mi}")
    assert repo_lines(tmp_path / "ok", fixed) == []


def test_requests_above_limits_in_kai_yaml_alone(tmp_path: Path) -> None:
    """The project default, an override on its own and the entrypoint over the project."""
    assert kai_problems(tmp_path, HEAD + (
        "resources: {requests: {memory: 1Gi}}\n"
        "versions:\n"
        "  a-v1:\n"
        "    nodes: {etl: {resources: {requests: {cpu: '2'}, limits: {cpu: '1'}}}}\n"
    )) == [
        f"kai.yaml:3:32: resources.requests.memory: 1Gi is more than limits.memory (512Mi, "
        f"from the built-in default limits.memory); {REFUSED}",
        f"kai.yaml:6:47: versions.a-v1.nodes.etl.resources.requests.cpu: 2 is more than "
        f"limits.cpu (1); {REFUSED}",
    ]
    # said at the field kai.yaml writes, whichever side the built-in default gives
    assert kai_problems(tmp_path / "b", HEAD + "resources: {limits: {memory: 64Mi}}\n") == [
        f"kai.yaml:3:30: resources.limits.memory: 64Mi is less than requests.memory (128Mi, "
        f"from the built-in default requests.memory); {REFUSED}"]
    entrypoint = "versions:\n  a-v1:\n    entrypoint: {resources: {limits: {cpu: 50m}}}\n"
    assert kai_problems(tmp_path / "c", HEAD + entrypoint) == [
        f"kai.yaml:5:44: versions.a-v1.entrypoint.resources.limits.cpu: 50m is less than "
        f"requests.cpu (100m, from the built-in default requests.cpu); {REFUSED}"]
    assert kai_problems(tmp_path / "d", HEAD + "resources: {requests: {cpu: 10m}}\n"
                                              + entrypoint.replace("50m", "5m")) == [
        f"kai.yaml:6:44: versions.a-v1.entrypoint.resources.limits.cpu: 5m is less than "
        f"requests.cpu (10m, from kai.yaml resources.requests.cpu); {REFUSED}"]


def test_a_node_kai_yaml_sets_must_be_the_versions(tmp_path: Path) -> None:
    kai = "versions:\n  greeter-v1:\n    state: started\n    nodes: {etl: {}, outptu: {}}\n"
    expected = ['kai.yaml:6:22: versions.greeter-v1.nodes.outptu: greeter-v1 has no node '
                '"outptu" (its nodes: etl, output); fix the name or remove the entry']
    assert repo_lines(tmp_path, kai) == expected
    assert render_lines(tmp_path) == expected
    # and the plan refuses it too (kai dev plans without kai validate)
    project = load_project(tmp_path / "repo")
    with pytest.raises(PlanError, match=re.escape(
            'versions.greeter-v1.nodes.outptu: greeter-v1 has no node "outptu"')):
        build_plan(project, make_version(tmp_path))


def test_the_plan_refuses_requests_above_limits() -> None:
    version = make_version(Path("/nonexistent"))
    project = Project("demo", "demo", versions={})
    bad = with_node(version, "etl", resources=ResourceOverride(limits={"memory": "64Mi"}))
    with pytest.raises(PlanError, match=r"greeter-v1: node etl: requests.memory 128Mi is more "
                                        r"than limits.memory 64Mi"):
        build_plan(project, bad)


def test_schema_errors(tmp_path: Path) -> None:
    assert kai_problems(tmp_path, HEAD + (
        "gpu: {resource: gpu, count: 2}\n"
        "nodeSelector: {'-bad': x, ok: 'no spaces'}\n"
        "tolerations: [{key: a, operator: In}, {effect: NoRun}]\n"
        "imagePullSecrets: [regcred, regcred]\n"
        "priorityClassName: High\n"
        "versions:\n"
        "  a-v1:\n"
        "    serviceAccountName: Bad_Name\n"
        "    nodes: {etl: {replicas: 0, cpu: '1'}}\n"
        "    entrypoint: {replicas: 2}\n"
    )) == [
        'kai.yaml:3:17: gpu.resource: "gpu" does not match the pattern '
        + load_schema("kai.schema.json")["properties"]["gpu"]["properties"]["resource"]["pattern"]
        + ": an extended resource name: a domain, '/', and a name (e.g. nvidia.com/gpu)",
        'kai.yaml:3:22: gpu.count: unknown field "count"; allowed: resource, nodeSelector, '
        "tolerations",
        'kai.yaml:4:16: nodeSelector["-bad"]: "-bad" does not match the pattern '
        + load_schema("kai.schema.json")["$defs"]["qualifiedName"]["pattern"]
        + ": a qualified name: an optional prefix (a DNS subdomain) and '/', then letters, "
        "digits, '-', '_' and '.' (at most 63), starting and ending with a letter or digit "
        "(e.g. kubernetes.io/arch)",
        'kai.yaml:4:31: nodeSelector.ok: "no spaces" does not match the pattern '
        + load_schema("kai.schema.json")["$defs"]["labelValue"]["pattern"]
        + ": a label value: letters, digits, '-', '_' and '.', starting and ending with a "
        "letter or digit (e.g. feast-online)",
        'kai.yaml:5:34: tolerations[0].operator: must be one of: Equal, Exists; got "In"',
        'kai.yaml:5:48: tolerations[1].effect: must be one of: NoSchedule, PreferNoSchedule, '
        'NoExecute; got "NoRun"',
        'kai.yaml:6:29: imagePullSecrets[1]: "regcred" is listed twice',
        'kai.yaml:7:20: priorityClassName: "High" does not match the pattern '
        + load_schema("kai.schema.json")["$defs"]["subdomain"]["pattern"]
        + ": a DNS-1123 subdomain: lowercase letters, digits, '-' and '.' (e.g. greeter-tls)",
        'kai.yaml:10:25: versions.a-v1.serviceAccountName: "Bad_Name" does not match the '
        "pattern " + load_schema("kai.schema.json")["$defs"]["subdomain"]["pattern"]
        + ": a DNS-1123 subdomain: lowercase letters, digits, '-' and '.' (e.g. greeter-tls)",
        "kai.yaml:11:29: versions.a-v1.nodes.etl.replicas: must be at least 1, got 0",
        'kai.yaml:11:32: versions.a-v1.nodes.etl.cpu: unknown field "cpu"; allowed: '
        "resources, tmpSize, replicas, autoscaling",
        'kai.yaml:12:18: versions.a-v1.entrypoint.replicas: unknown field "replicas"; '
        "allowed: resources, tmpSize, autoscaling",
    ]


def test_toleration_rules(tmp_path: Path) -> None:
    assert kai_problems(tmp_path, HEAD + (
        "tolerations:\n"
        "  - {key: dedicated, operator: Exists, value: ml}\n"
        "  - {value: ml}\n"
        "  - {key: spot, value: 'true', effect: NoSchedule, tolerationSeconds: 60}\n"
        "  - {operator: Exists}\n"
        "  - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, "
        "tolerationSeconds: 30}\n"
        "gpu:\n"
        f"  tolerations: [{{key: {'a' * 254}/gpu, operator: Exists}}]\n"
        "versions:\n"
        "  a-v1:\n"
        "    tolerations: [{key: x, operator: Exists, value: y}]\n"
        f"    nodeSelector: {{{'b' * 254}/zone: a}}\n"
    )) == [
        "kai.yaml:4:40: tolerations[0].value: must be left out with `operator: Exists`, "
        "which matches any value",
        "kai.yaml:5:5: tolerations[1]: a toleration without `key` must have `operator: "
        "Exists` (it then tolerates every taint)",
        "kai.yaml:6:52: tolerations[2].tolerationSeconds: is only for `effect: NoExecute` "
        "(how long the pod stays on a node tainted so)",
        "kai.yaml:10:23: gpu.tolerations[0].key: its prefix is 254 characters long; at most "
        "253 are allowed",
        "kai.yaml:13:46: versions.a-v1.tolerations[0].value: must be left out with "
        "`operator: Exists`, which matches any value",
        f'kai.yaml:14:20: versions.a-v1.nodeSelector["{"b" * 254}/zone"]: its prefix is 254 '
        "characters long; at most 253 are allowed",
    ]


# --- GPU -----------------------------------------------------------------------------------


def test_gpu_defaults(tmp_path: Path) -> None:
    project = project_of(tmp_path, "versions: {greeter-v1: {state: started}}\n")
    assert project.gpu == Gpu()
    deps = deployments(project, make_version(tmp_path, gpu=True))
    out = deps["output"]
    assert resources(out) == {"requests": {"cpu": "100m", "memory": "128Mi", "nvidia.com/gpu": "1"},
                              "limits": {"cpu": "1", "memory": "512Mi", "nvidia.com/gpu": "1"}}
    assert pod(out)["tolerations"] == [GPU_TOLERATION]
    assert "nodeSelector" not in pod(out)
    assert out["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    for cpu in (deps["etl"], deps["entrypoint"]):
        assert "strategy" not in cpu["spec"]
        assert "tolerations" not in pod(cpu) and "nodeSelector" not in pod(cpu)
        assert "nvidia.com/gpu" not in resources(cpu)["limits"]


def test_gpu_settings(tmp_path: Path) -> None:
    project = project_of(tmp_path, (
        "gpu:\n"
        "  resource: amd.com/gpu\n"
        "  nodeSelector: {konstellation.io/gpu: 'true', zone: a}\n"
        "nodeSelector: {zone: b, kubernetes.io/arch: amd64}\n"
        "tolerations: [{key: dedicated, value: ml, effect: NoSchedule}]\n"
        "versions:\n"
        "  greeter-v1:\n"
        "    state: started\n"
        "    nodes: {output: {resources: {limits: {memory: 8Gi}}}}\n"
    ))
    deps = deployments(project, make_version(tmp_path, gpu=True))
    out = pod(deps["output"])
    assert resources(deps["output"]) == {
        "requests": {"cpu": "100m", "memory": "128Mi", "amd.com/gpu": "1"},
        "limits": {"cpu": "1", "memory": "8Gi", "amd.com/gpu": "1"}}
    # the default toleration follows the resource; the project's come first
    assert out["tolerations"] == [
        {"key": "dedicated", "value": "ml", "effect": "NoSchedule"},
        {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    # gpu.nodeSelector on top of the project's (its `zone` wins)
    assert out["nodeSelector"] == {"konstellation.io/gpu": "true", "zone": "a",
                                   "kubernetes.io/arch": "amd64"}
    etl = pod(deps["etl"])
    assert etl["nodeSelector"] == {"zone": "b", "kubernetes.io/arch": "amd64"}
    assert etl["tolerations"] == [{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}]


def test_gpu_tolerations_replace_the_default(tmp_path: Path) -> None:
    project = project_of(tmp_path, (
        "gpu: {tolerations: [{key: sku, operator: Equal, value: gpu, effect: NoSchedule}]}\n"
        "versions: {greeter-v1: {state: started}}\n"))
    out = pod(deployments(project, make_version(tmp_path, gpu=True))["output"])
    assert out["tolerations"] == [
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]
    project = project_of(tmp_path / "none", "gpu: {tolerations: []}\n"
                                            "versions: {greeter-v1: {state: started}}\n")
    out = pod(deployments(project, make_version(tmp_path, gpu=True))["output"])
    assert "tolerations" not in out


# --- scheduling fields, per project and per version -----------------------------------------

SCHEDULING = (
    "serviceAccountName: kai-runner\n"
    "imagePullSecrets: [regcred]\n"
    "nodeSelector: {pool: ml}\n"
    "tolerations: [{key: dedicated, operator: Equal, value: ml, effect: NoSchedule}]\n"
    "priorityClassName: kai-normal\n"
)


def test_scheduling_per_project(tmp_path: Path) -> None:
    project = project_of(tmp_path, SCHEDULING + "versions: {greeter-v1: {state: started}}\n")
    assert project.scheduling == Scheduling(
        "kai-runner", ("regcred",), {"pool": "ml"},
        (Toleration("dedicated", "Equal", "ml", "NoSchedule"),), "kai-normal")
    deps = deployments(project, make_version(tmp_path))
    assert set(deps) == {"entrypoint", "etl", "output"}
    for dep in deps.values():
        spec = pod(dep)
        assert spec["serviceAccountName"] == "kai-runner"
        assert spec["automountServiceAccountToken"] is True  # workload identity needs it
        assert spec["imagePullSecrets"] == [{"name": "regcred"}]
        assert spec["nodeSelector"] == {"pool": "ml"}
        assert spec["tolerations"] == [
            {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]
        assert spec["priorityClassName"] == "kai-normal"


def test_scheduling_per_version_replaces_the_projects(tmp_path: Path) -> None:
    project = project_of(tmp_path, SCHEDULING + (
        "versions:\n"
        "  greeter-v1:\n"
        "    state: started\n"
        "    serviceAccountName: greeter\n"
        "    imagePullSecrets: []\n"
        "    nodeSelector: {pool: cpu}\n"
        "    tolerations: []\n"
        "  greeter-v2: {state: started, priorityClassName: kai-high}\n"
    ))
    one = pod(deployments(project, make_version(tmp_path))["etl"])
    assert one["serviceAccountName"] == "greeter"
    assert one["nodeSelector"] == {"pool": "cpu"}  # replaced, not merged
    assert "imagePullSecrets" not in one and "tolerations" not in one  # [] clears
    assert one["priorityClassName"] == "kai-normal"  # not set: the project's
    two = pod(deployments(project, make_version(tmp_path, "greeter-v2"))["etl"])
    assert two["priorityClassName"] == "kai-high"
    assert two["serviceAccountName"] == "kai-runner" and two["nodeSelector"] == {"pool": "ml"}


def test_no_scheduling_fields_by_default(tmp_path: Path) -> None:
    project = project_of(tmp_path, "versions: {greeter-v1: {state: started}}\n")
    for dep in deployments(project, make_version(tmp_path)).values():
        spec = pod(dep)
        assert spec["automountServiceAccountToken"] is False
        for key in ("serviceAccountName", "imagePullSecrets", "nodeSelector", "tolerations",
                    "priorityClassName", "topologySpreadConstraints"):
            assert key not in spec
        assert "strategy" not in dep["spec"]


# --- /tmp size --------------------------------------------------------------------------------


def test_tmp_size_per_node_and_entrypoint(tmp_path: Path) -> None:
    project = project_of(tmp_path, (
        "versions:\n"
        "  greeter-v1:\n"
        "    state: started\n"
        "    entrypoint: {tmpSize: 64Mi}\n"
        "    nodes: {etl: {tmpSize: 2Gi}}\n"))
    deps = deployments(project, make_version(tmp_path))
    sizes = {name: next(v["emptyDir"]["sizeLimit"] for v in pod(d)["volumes"]
                        if v["name"] == "tmp") for name, d in deps.items()}
    assert sizes == {"entrypoint": "64Mi", "etl": "2Gi", "output": "256Mi"}


# --- replicas: PodDisruptionBudget and topology spread ----------------------------------------


def test_three_replicas_get_a_disruption_budget_and_a_spread(tmp_path: Path) -> None:
    project = project_of(tmp_path, "versions: {greeter-v1: {state: started}}\n")
    version = make_version(tmp_path, replicas=3)
    objs = objects(project, version)
    (pdb,) = by_kind(objs, "PodDisruptionBudget")
    dep = next(d for d in by_kind(objs, "Deployment")
               if d["metadata"]["name"] == "greeter-v1-output")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["metadata"]["name"] == "greeter-v1-output"
    assert pdb["metadata"]["namespace"] == "kai-demo"
    assert pdb["metadata"]["labels"] == dep["metadata"]["labels"]
    assert pdb["metadata"]["annotations"] == {"argocd.argoproj.io/sync-wave": "0"}
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": dep["spec"]["selector"]}
    assert pod(dep)["topologySpreadConstraints"] == [{
        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": dep["spec"]["selector"]}]
    for other in by_kind(objs, "Deployment"):
        if other is not dep:
            assert "topologySpreadConstraints" not in pod(other)


def test_one_replica_gets_neither(tmp_path: Path) -> None:
    project = project_of(tmp_path, "versions: {greeter-v1: {state: started}}\n")
    objs = objects(project, make_version(tmp_path, replicas=1))
    assert by_kind(objs, "PodDisruptionBudget") == []
    assert all("topologySpreadConstraints" not in pod(d) for d in by_kind(objs, "Deployment"))


def test_kai_yaml_replicas_override_krt_yml(tmp_path: Path) -> None:
    project = project_of(tmp_path, (
        "versions:\n"
        "  greeter-v1:\n"
        "    state: started\n"
        "    nodes: {etl: {replicas: 2}, output: {replicas: 1}}\n"))
    objs = objects(project, make_version(tmp_path, replicas=4))
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in by_kind(objs, "Deployment")}
    assert replicas == {"greeter-v1-entrypoint": 1, "greeter-v1-etl": 2, "greeter-v1-output": 1}
    assert [p["metadata"]["name"] for p in by_kind(objs, "PodDisruptionBudget")] == [
        "greeter-v1-etl"]


def test_the_tree_lists_the_disruption_budget(tmp_path: Path) -> None:
    project = project_of(tmp_path, "versions: {greeter-v1: {state: started}}\n")
    tree = render_project(project, {"greeter-v1": make_version(tmp_path, replicas=2)})
    assert "greeter-v1/poddisruptionbudget-greeter-v1-output.yaml" in tree
    assert b"- greeter-v1/poddisruptionbudget-greeter-v1-output.yaml" in tree["kustomization.yaml"]


# --- kai.yaml round trips ------------------------------------------------------------------

EVERYTHING = (
    "gpu:\n"
    "  resource: nvidia.com/mig-1g.5gb\n"
    "  nodeSelector: {konstellation.io/gpu: 'true'}\n"
    "  tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]\n"
    + SCHEDULING +
    "versions:\n"
    "  greeter-v1:\n"
    "    state: started    # keep me\n"
    "    serviceAccountName: greeter\n"
    "    tolerations: [{key: spot, operator: Exists, effect: NoExecute, "
    "tolerationSeconds: 120}]\n"
    "    entrypoint: {resources: {limits: {memory: 1Gi}}, tmpSize: 64Mi}\n"
    "    nodes:\n"
    "      etl: {resources: {requests: {cpu: 250m}}, tmpSize: 1Gi, replicas: 3}\n"
    "      output: {}\n"
)


def test_everything_loads_dumps_and_loads_back(tmp_path: Path) -> None:
    project = project_of(tmp_path, EVERYTHING)
    vs = project.versions["greeter-v1"]
    assert project.gpu == Gpu("nvidia.com/mig-1g.5gb", {"konstellation.io/gpu": "true"},
                              (Toleration("nvidia.com/gpu", "Exists", effect="NoSchedule"),))
    assert vs.scheduling == Scheduling(service_account="greeter", tolerations=(
        Toleration("spot", "Exists", effect="NoExecute", seconds=120),))
    assert vs.entrypoint == ProcessSettings(ResourceOverride(limits={"memory": "1Gi"}), "64Mi")
    assert vs.nodes == {"etl": ProcessSettings(ResourceOverride({"cpu": "250m"}), "1Gi", 3),
                        "output": ProcessSettings()}
    again = load_project(write(tmp_path / "again", dump_project(project)))
    assert replace(again, root=project.root) == project
    # a state change edits the state line only: every new field stays as written
    text = (tmp_path / "repo" / "kai.yaml").read_text()
    stopped = replace(project, versions={"greeter-v1": replace(vs, state="stopped")})
    new = edit_project(text, stopped)
    assert new == text.replace("state: started    # keep me", "state: stopped    # keep me")
