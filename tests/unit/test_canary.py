"""Canary releases and Gateway API: kai.yaml `versions.<v>.canary` and `gateway:`, the canary's
Ingress (ingress-nginx's canary annotations), the GRPCRoute (checked against the bundled CRD
schema), and what stays exactly as it was (the active-entrypoint Service)."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from renderer import yamledit
from renderer.atomic import write_tree
from renderer.checks import GRPCROUTE_SCHEMA, check_object
from renderer.incremental import render_change
from renderer.krt import Version
from renderer.lifecycle import CANARY, PUBLISH, STOP, UNPUBLISH, transition
from renderer.project import (
    CANARY_ANNOTATION,
    CANARY_MAX_WEIGHT,
    CANARY_MIN_WEIGHT,
    CANARY_WEIGHT_ANNOTATION,
    Gateway,
    Ingress,
    ParentRef,
    Project,
    VersionState,
)
from renderer.projectfile import (
    SCHEMA,
    dump_project,
    edit_project,
    load_project,
    project_data,
)
from renderer.render import (
    SYNC_WAVE,
    RenderError,
    render_project,
)
from tests.unit.test_projectfile import changes, comments, problems, write
from tests.unit.test_render import make_project, make_version, objects_of

K8S = "1.35"
ROUTE = "grpcroute-active-entrypoint.yaml"
CANARY_INGRESS = "greeter-v2/ingress-greeter-v2-canary.yaml"
INGRESS = Ingress(host="greeter.example.com", class_name="nginx", tls_secret="greeter-tls")
GATEWAY = Gateway((ParentRef("public", "gateway-system", "grpc"),), ("greeter.example.com",))


def two(tmp_path: Path, weight: int = 0, **kw: Any) -> tuple[Project, dict[str, Version]]:
    """greeter-v1 published, greeter-v2 started and, with `weight`, the canary."""
    versions = {n: make_version(tmp_path, n) for n in ("greeter-v1", "greeter-v2")}
    kw.setdefault("ingress", INGRESS)
    project = make_project(tmp_path, {"greeter-v1": "published", "greeter-v2": "started"}, **kw)
    return canary_at(project, weight), versions


def canary_at(project: Project, weight: int, name: str = "greeter-v2") -> Project:
    return replace(project, versions={**project.versions,
                                      name: replace(project.versions[name], canary=weight)})


def tree_of(project: Project, versions: dict[str, Version]) -> dict[str, dict[str, Any]]:
    return objects_of(render_project(project, versions))


# --- kai.yaml -------------------------------------------------------------------------------------

KAI = """\
project: demo
namespace: kai-demo
gateway:
  parentRefs:
    - {name: public, namespace: gateway-system, sectionName: grpc}
    - name: internal
  hostnames: [greeter.example.com, "*.greeter.example.com"]
versions:
  greeter-v1:
    state: published
  greeter-v2:
    state: started
    canary: {weight: 10}
"""


def test_kai_yaml_canary_and_gateway_load_and_dump_back(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, KAI))
    assert project.versions["greeter-v2"] == VersionState("started", canary=10)
    assert project.versions["greeter-v1"].canary == 0
    assert project.canary == ("greeter-v2", 10)
    assert project.traffic == [("greeter-v1", 90), ("greeter-v2", 10)]
    assert project.gateway == Gateway(
        (ParentRef("public", "gateway-system", "grpc"), ParentRef("internal")),
        ("greeter.example.com", "*.greeter.example.com"))
    data = project_data(project)
    assert data["versions"]["greeter-v2"] == {"state": "started", "canary": {"weight": 10}}
    assert list(data)[list(data).index("ingress") + 1] == "gateway"
    assert data["gateway"]["parentRefs"][1] == {"name": "internal"}
    assert load_project(write(tmp_path / "again", dump_project(project))) == replace(
        project, root=tmp_path / "again")


def test_without_either_nothing_is_written(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, "project: demo\nnamespace: kai-demo\nversions:\n"
                                           "  v1: {state: started}\n"))
    assert project.gateway is None and project.canary is None and project.traffic == []
    data = project_data(project)
    assert "gateway" not in data and data["versions"]["v1"] == {"state": "started"}


def test_the_schema_says_the_weights_the_rules_say() -> None:
    schema = json.loads(resources.files("renderer.schemas").joinpath(SCHEMA).read_text())
    weight = schema["$defs"]["versionState"]["properties"]["canary"]["properties"]["weight"]
    assert (weight["minimum"], weight["maximum"]) == (CANARY_MIN_WEIGHT, CANARY_MAX_WEIGHT)


BASE = "project: demo\nnamespace: kai-demo\n"


@pytest.mark.parametrize(("text", "expected"), [
    (BASE + "versions:\n  v1: {state: published}\n  v2: {state: started, canary: {weight: 0}}\n",
     "kai.yaml:5:41: versions.v2.canary.weight: must be at least 1, got 0"),
    (BASE + "versions:\n  v1: {state: published}\n  v2:\n    state: started\n"
            "    canary: {weight: 100}\n",
     "kai.yaml:7:22: versions.v2.canary.weight: must be at most 99, got 100"),
    (BASE + "versions:\n  v1: {state: published}\n  v2:\n    state: started\n"
            "    canary: {weight: ten}\n", "kai.yaml:7:22: versions.v2.canary.weight: "),
    (BASE + "versions:\n  v1: {state: published}\n  v2:\n    state: started\n"
            "    canary: {}\n",
     "kai.yaml:7:13: versions.v2.canary.weight: required field is missing (e.g. weight: 10)"),
    (BASE + "gateway: {}\n", "kai.yaml:3:10: gateway.parentRefs: required field is missing"),
    (BASE + "gateway: {parentRefs: []}\n",
     "kai.yaml:3:23: gateway.parentRefs: must have at least one item"),
    (BASE + "gateway: {parentRefs: [{name: gw, port: 443}]}\n",
     'kai.yaml:3:35: gateway.parentRefs[0].port: unknown field "port"; allowed: name, '
     "namespace, sectionName"),
    (BASE + "gateway: {parentRefs: [{name: gw}], hostnames: [Greeter.Example.com]}\n",
     "gateway.hostnames[0]: "),
])
def test_schema_errors_have_positions(tmp_path: Path, text: str, expected: str) -> None:
    (found,) = problems(tmp_path, text)
    assert expected in found


@pytest.mark.parametrize(("versions", "at", "says"), [
    ("  v1: {state: published}\n  v2:\n    state: stopped\n    canary: {weight: 10}\n",
     "kai.yaml:7:5: versions.v2.canary: v2 is stopped, and a canary must run", ""),
    ("  v1:\n    state: published\n    canary: {weight: 10}\n",
     "kai.yaml:6:5: versions.v1.canary: v1 is published, so it cannot be the canary too", ""),
    ("  v1:\n    state: started\n    canary: {weight: 10}\n",
     "kai.yaml:6:5: versions.v1.canary: v1 is a canary, but no version is published", ""),
    ("  v0: {state: published}\n  v1: {state: started, canary: {weight: 5}}\n"
     "  v2: {state: started, canary: {weight: 5}}\n",
     "kai.yaml:6:24: versions.v2.canary: v2 is a canary too, but only one version can be the "
     "canary and v1 is", ""),
])
def test_the_canary_rules_are_checked_at_their_position(tmp_path: Path, versions: str, at: str,
                                                        says: str) -> None:
    (found,) = problems(tmp_path, BASE + "versions:\n" + versions)
    assert found.startswith(at), found


def test_two_refs_to_one_gateway_need_different_listeners(tmp_path: Path) -> None:
    found = problems(tmp_path, BASE + "gateway:\n  parentRefs:\n    - {name: gw}\n"
                                      "    - {name: gw, sectionName: a}\n"
                                      "    - {name: gw, namespace: other}\n"
                                      "    - {name: gw2, sectionName: a}\n"
                                      "    - {name: gw2, sectionName: a}\n")
    assert found == [
        "kai.yaml:5:7: gateway.parentRefs[0]: refers to the same Gateway as parentRefs[1], so "
        "each needs a sectionName (the listener)",
        'kai.yaml:9:7: gateway.parentRefs[4]: refers to the same Gateway and listener "a" as '
        "parentRefs[3]; name each listener once",
    ]


def test_the_canary_annotations_are_kais(tmp_path: Path) -> None:
    (found,) = problems(tmp_path, BASE + "ingress:\n  annotations:\n"
                                         "    nginx.ingress.kubernetes.io/canary-weight: '5'\n")
    assert found.startswith('kai.yaml:5:5: ingress.annotations['
                            '"nginx.ingress.kubernetes.io/canary-weight"]: ingress-nginx\'s canary')


HAND = """\
# by hand
project: demo
namespace: kai-demo

versions:
  greeter-v1: {state: published}   # the one users see
  greeter-v2:
    state: started      # the new one
# end
"""


def test_canary_commands_edit_only_the_canary_lines(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, HAND))
    steps = [
        ((CANARY, "greeter-v2", 10), ["+     canary:", "+       weight: 10"]),
        ((CANARY, "greeter-v2", 25), ["-       weight: 10", "+       weight: 25"]),
        ((CANARY, "greeter-v2", 0), ["-     canary:", "-       weight: 25"]),
        ((CANARY, "greeter-v2", 50), ["+     canary:", "+       weight: 50"]),
        ((PUBLISH, "greeter-v2", None), [
            "-   greeter-v1: {state: published}   # the one users see",
            "+   greeter-v1: {state: started}     # the one users see",
            "-     state: started      # the new one",
            "+     state: published    # the new one",
            "-     canary:", "-       weight: 50"]),
    ]
    text = HAND
    for (action, version, weight), lines in steps:
        new = transition(project, version, action, weight=weight).apply(project)
        out = edit_project(text, new)
        assert changes(text, out) == lines, (action, weight)
        assert comments(out) == comments(HAND)
        assert load_project(write(tmp_path, out)) == new
        text, project = out, new


def test_a_fresh_file_gains_the_canary_as_dump_project_writes_it(tmp_path: Path) -> None:
    before = load_project(write(tmp_path, KAI))
    before = canary_at(before, 0)
    after = canary_at(before, 33)
    first = next(yamledit.edits(dump_project(before), project_data(before), project_data(after)))
    assert first == dump_project(after)
    assert edit_project(dump_project(before), after) == dump_project(after)


# --- with the Ingress: the canary's own Ingress ---------------------------------------------------


def test_the_canary_gets_a_second_ingress_with_ingress_nginx_canary_annotations(
        tmp_path: Path) -> None:
    objs = tree_of(*two(tmp_path, 10))
    main = objs["greeter-v1/ingress-active-entrypoint.yaml"]
    canary = objs[CANARY_INGRESS]
    assert canary["metadata"]["name"] == "greeter-v2-canary"
    annotations = canary["metadata"]["annotations"]
    assert annotations[CANARY_ANNOTATION] == "true"
    assert annotations[CANARY_WEIGHT_ANNOTATION] == "10"
    assert CANARY_ANNOTATION not in main["metadata"]["annotations"]
    # the same host, class, TLS, path and backend protocol as the main Ingress
    assert {k: v for k, v in annotations.items() if not k.startswith(CANARY_ANNOTATION)} \
        == main["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    assert canary["spec"]["ingressClassName"] == main["spec"]["ingressClassName"] == "nginx"
    assert canary["spec"]["tls"] == main["spec"]["tls"]
    (rule,), (main_rule,) = canary["spec"]["rules"], main["spec"]["rules"]
    assert rule["host"] == main_rule["host"] == "greeter.example.com"
    (path,), (main_path,) = rule["http"]["paths"], main_rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == (main_path["path"], main_path["pathType"])
    assert path["backend"]["service"] == {"name": "greeter-v2", "port": {"name": "grpc"}}
    assert objs["greeter-v2/service-greeter-v2.yaml"]["spec"]["ports"][0]["name"] == "grpc"
    assert check_object(CANARY_INGRESS, canary, K8S) == []


def test_the_canary_ingress_comes_after_the_canary_deployments(tmp_path: Path) -> None:
    objs = tree_of(*two(tmp_path, 10))
    waves = {path: int(o["metadata"]["annotations"][SYNC_WAVE]) for path, o in objs.items()
             if path.startswith("greeter-v2/")}
    deployments = [w for path, w in waves.items() if "/deployment-" in path]
    assert deployments and waves[CANARY_INGRESS] > max(deployments)
    assert waves[CANARY_INGRESS] == waves["greeter-v2/service-greeter-v2.yaml"] == 1


@pytest.mark.parametrize("weight", [CANARY_MIN_WEIGHT, 37, CANARY_MAX_WEIGHT])
def test_the_weight_is_the_annotation_and_nothing_else_moves(tmp_path: Path,
                                                             weight: int) -> None:
    project, versions = two(tmp_path)
    plain = render_project(project, versions)
    split = render_project(canary_at(project, weight), versions)
    assert set(split) - set(plain) == {CANARY_INGRESS}
    assert [p for p in plain if p != "kustomization.yaml" and plain[p] != split[p]] == []
    annotations = yaml.safe_load(split[CANARY_INGRESS])["metadata"]["annotations"]
    assert annotations[CANARY_WEIGHT_ANNOTATION] == str(weight)


def test_the_active_entrypoint_service_keeps_its_name_and_spec(tmp_path: Path) -> None:
    """With or without a canary, with the Ingress or a GRPCRoute: the published version's
    Service is byte for byte the same object."""
    project, versions = two(tmp_path)
    service = "greeter-v1/service-active-entrypoint.yaml"
    plain = render_project(project, versions)
    svc = yaml.safe_load(plain[service])
    assert svc["metadata"]["name"] == "active-entrypoint"
    assert svc["spec"] == {
        "type": "ClusterIP", "sessionAffinity": "None",
        "selector": {"type": "entrypoint", "version-name": "greeter-v1-entrypoint"},
        "ports": [{"name": "grpc", "protocol": "TCP", "port": 9000, "targetPort": 9000},
                  {"name": "web", "protocol": "TCP", "port": 80, "targetPort": 8080}]}
    for variant in (canary_at(project, 20), replace(project, gateway=GATEWAY),
                    replace(canary_at(project, 20), gateway=GATEWAY)):
        tree = render_project(variant, versions)
        assert tree[service] == plain[service]
        assert tree["greeter-v2/service-greeter-v2.yaml"] == plain[
            "greeter-v2/service-greeter-v2.yaml"]


def test_a_canary_breaking_the_rules_is_not_rendered(tmp_path: Path) -> None:
    project, versions = two(tmp_path)
    for broken in (canary_at(project, 10, "greeter-v1"), canary_at(project, 100),
                   canary_at(replace(project, versions={
                       **project.versions, "greeter-v1": VersionState("started")}), 10)):
        with pytest.raises(RenderError) as info:
            render_project(broken, versions)
        (problem,) = info.value.problems
        assert problem.path.endswith(".canary")


# --- with Gateway API: the GRPCRoute --------------------------------------------------------------


@pytest.mark.parametrize("weight", [CANARY_MIN_WEIGHT, 10, 50, CANARY_MAX_WEIGHT])
def test_the_grpcroute_splits_the_traffic_by_weight(tmp_path: Path, weight: int) -> None:
    project, versions = two(tmp_path, weight, gateway=GATEWAY)
    objs = tree_of(project, versions)
    route = objs[ROUTE]
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["metadata"]["namespace"] == "demo-ns"
    assert route["spec"]["parentRefs"] == [
        {"name": "public", "namespace": "gateway-system", "sectionName": "grpc"}]
    assert route["spec"]["hostnames"] == ["greeter.example.com"]
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [
        {"name": "active-entrypoint", "port": 9000, "weight": 100 - weight},
        {"name": "greeter-v2", "port": 9000, "weight": weight}]
    assert [o["kind"] for o in objs.values()].count("Ingress") == 0  # instead of the Ingress
    assert check_object(ROUTE, route, K8S) == []


def test_without_a_canary_the_route_sends_everything_to_the_published_version(
        tmp_path: Path) -> None:
    project, versions = two(tmp_path, gateway=Gateway((ParentRef("public"),)))
    route = tree_of(project, versions)[ROUTE]
    assert route["spec"]["parentRefs"] == [{"name": "public"}]
    assert "hostnames" not in route["spec"]
    assert route["spec"]["rules"] == [
        {"backendRefs": [{"name": "active-entrypoint", "port": 9000, "weight": 100}]}]
    assert route["metadata"]["annotations"] == {SYNC_WAVE: "1"}


def test_no_published_version_no_route(tmp_path: Path) -> None:
    versions = {"greeter-v1": make_version(tmp_path)}
    project = make_project(tmp_path, {"greeter-v1": "started"}, gateway=GATEWAY)
    tree = render_project(project, versions)
    assert not [p for p in tree if "grpcroute" in p or "ingress-" in p]


def test_promoting_the_canary_moves_the_route_to_it(tmp_path: Path) -> None:
    project, versions = two(tmp_path, 30, gateway=GATEWAY)
    promoted = transition(project, "greeter-v2", PUBLISH).apply(project)
    route = tree_of(promoted, versions)[ROUTE]
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"name": "active-entrypoint", "port": 9000, "weight": 100}]
    services = [p for p in render_project(promoted, versions) if "/service-" in p]
    assert services == ["greeter-v1/service-greeter-v1.yaml",
                        "greeter-v2/service-active-entrypoint.yaml"]


@pytest.mark.parametrize("action", [(CANARY, "greeter-v2", 45), (CANARY, "greeter-v2", 0),
                                    (PUBLISH, "greeter-v2", None), (STOP, "greeter-v2", None),
                                    (UNPUBLISH, "greeter-v1", None)])
@pytest.mark.parametrize("gateway", [None, GATEWAY])
def test_a_canary_change_renders_incrementally_as_a_full_render(
        tmp_path: Path, action: tuple[str, str, int | None], gateway: Gateway | None) -> None:
    """The changed versions' folders and the project files anew, the rest kept: the same
    tree as a full render (the GRPCRoute is a project file that follows the canary)."""
    before, versions = two(tmp_path, 20, gateway=gateway)
    target = before.rendered_dir
    write_tree(target, render_project(before, versions))
    t = transition(before, action[1], action[0], weight=action[2])
    after = t.apply(before)
    changed = {c.version for c in t.changes}
    change = render_change(before, after, {n: versions[n] for n in changed}, changed, target)
    assert change is not None
    full = render_project(after, versions)
    assert change.paths == sorted(full)
    assert {p: change.tree[p] for p in change.tree} == {p: full[p] for p in change.tree}
    assert all((target / p).read_bytes() == full[p] for p in change.kept)


# --- the GRPCRoute check --------------------------------------------------------------------------


def _route(tmp_path: Path) -> dict[str, Any]:
    project, versions = two(tmp_path, 10, gateway=GATEWAY)
    return copy.deepcopy(tree_of(project, versions)[ROUTE])


def _backends(route: dict[str, Any]) -> list[dict[str, Any]]:
    refs: list[dict[str, Any]] = route["spec"]["rules"][0]["backendRefs"]
    return refs


@pytest.mark.parametrize(("change", "path", "says"), [
    (lambda r: r["spec"].update(parentRef=[]), "spec", "'parentRef' was unexpected"),
    (lambda r: _backends(r)[0].update(weight=1_000_001), "spec.rules[0].backendRefs[0].weight",
     "is greater than the maximum of 1000000"),
    (lambda r: _backends(r)[1].update(weight=-1), "spec.rules[0].backendRefs[1].weight",
     "is less than the minimum of 0"),
    (lambda r: _backends(r)[0].update(port="grpc"), "spec.rules[0].backendRefs[0].port",
     "is not of type 'integer'"),
    (lambda r: _backends(r)[0].pop("name"), "spec.rules[0].backendRefs[0]",
     "'name' is a required property"),
    (lambda r: _backends(r)[0].pop("port"), "spec.rules[0].backendRefs[0].port",
     "Must have port for Service reference"),
    (lambda r: [b.update(weight=0) for b in _backends(r)], "spec.rules[0].backendRefs",
     "weights add up to 0"),
    (lambda r: r["spec"]["rules"][0].update(backendRefs=[]), "spec.rules[0].backendRefs",
     "is required (a non-empty list)"),
    (lambda r: r["spec"].update(rules=[]), "spec.rules", "is required (a non-empty list)"),
    (lambda r: r["spec"].pop("rules"), "spec.rules", "is required"),
    (lambda r: r["spec"].update(parentRefs=[]), "spec.parentRefs",
     "a route with no Gateway takes no traffic"),
    (lambda r: r["spec"].update(parentRefs=[{"name": "gw"}, {"name": "gw"}]),
     "spec.parentRefs[0]", "so each needs a sectionName"),
    (lambda r: r["spec"].update(hostnames=["Not A Host"]), "spec.hostnames[0]",
     "does not match"),
    (lambda r: r.update(apiVersion="gateway.networking.k8s.io/v1alpha2"), "apiVersion",
     "must be gateway.networking.k8s.io/v1"),
    (lambda r: r["metadata"].update(name="Bad_Name"), "metadata.name",
     "is not a valid Kubernetes name"),
])
def test_what_the_grpcroute_check_refuses(tmp_path: Path, change: Any, path: str,
                                          says: str) -> None:
    route = _route(tmp_path)
    assert check_object(ROUTE, route, K8S) == []
    change(route)
    found = check_object(ROUTE, route, K8S)
    assert any(p.path == path and says in p.message for p in found), found


def test_the_bundled_grpcroute_schema_is_a_schema_and_says_where_it_came_from() -> None:
    text = resources.files("renderer.schemas").joinpath(GRPCROUTE_SCHEMA).read_text()
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    comment = schema["$comment"]
    assert "kubernetes-sigs/gateway-api" in comment and "v1.6.1" in comment
    assert "config/crd/standard/gateway.networking.k8s.io_grpcroutes.yaml" in comment
    assert "at commit 8bb74df00e56ec8f944d48c25e6c1c9c2f6848e3" in comment
    assert "x-kubernetes-validations" in comment  # kept, and said to be ignored
    assert '"description"' not in text
    backend = schema["properties"]["spec"]["properties"]["rules"]["items"]["properties"][
        "backendRefs"]["items"]
    assert backend["required"] == ["name"]
    assert backend["properties"]["weight"]["maximum"] == 1_000_000


def test_rendered_routes_are_checked_on_every_render(tmp_path: Path) -> None:
    """A route the schema refuses never reaches the tree: a hostname the CRD's pattern
    refuses (kai.yaml's schema would have caught it first) fails the render."""
    project, versions = two(tmp_path, 10, gateway=replace(GATEWAY, hostnames=("UPPER",)))
    with pytest.raises(RenderError) as info:
        render_project(project, versions)
    assert any(p.path == "spec.hostnames[0]" and ROUTE in p.file for p in info.value.problems)


def test_the_readme_reference_has_a_canary_and_a_gateway(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## kai.yaml reference"):]
    block = section[section.index("```yaml\n") + 8:section.index("```\n", 1)]
    p = load_project(write(tmp_path, block))
    assert p.traffic == [("greeter-v1", 90), ("greeter-v2", 10)]
    assert p.gateway == Gateway((ParentRef("public", "gateway-system", "grpc"),),
                                ("greeter.example.com",))
    assert "### Canary releases" in readme
