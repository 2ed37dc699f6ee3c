"""kai.yaml `network:`: egress rules, metrics and ingressFrom, validated with their positions
and rendered into NetworkPolicies; without them the policies are what they always were."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from renderer.cli.dev import render_local, rendered_specs
from renderer.cli.devconfig import DevConfig
from renderer.plan import build_plan
from renderer.problems import InputError
from renderer.project import (
    EgressPort,
    EgressRule,
    Monitoring,
    Network,
    Project,
    VersionState,
)
from renderer.projectfile import dump_project, edit_project, load_project, parse_cidr
from renderer.render import RenderError, render_project, render_version
from renderer.validate import load_version
from tests.unit.test_render import by_kind, make_project, make_version, objects_of

ROOT = Path(__file__).resolve().parent.parent.parent
HEAD = "project: demo\nnamespace: kai-demo\n"

S3 = EgressRule((EgressPort(443),), cidr="0.0.0.0/0",
                excluded=("10.0.0.0/8", "169.254.0.0/16"))
FEAST = EgressRule((EgressPort(6566),), namespace="feast", pod_labels={"app": "feast-online"})
DNS_PEER = EgressRule((EgressPort("dns", "UDP"),), namespace="kube-system")
REDIS = EgressRule((EgressPort(6379),), pod_labels={"app": "redis"})
MODEL_API = EgressRule((EgressPort(8443), EgressPort(8443, "UDP")), cidr="2001:db8::/32")


def problems(tmp_path: Path, body: str) -> list[str]:
    (tmp_path / "kai.yaml").write_text(HEAD + body)
    with pytest.raises(InputError) as info:
        load_project(tmp_path, tmp_path)
    return [str(p) for p in info.value.problems]


# --- kai.yaml: loading and writing --------------------------------------------------------------


FULL = HEAD + """\
network:
  egress:
    - {cidr: 0.0.0.0/0, except: [10.0.0.0/8, 169.254.0.0/16], ports: [{port: 443}]}
    - namespace: feast
      podSelector: {matchLabels: {app: feast-online}}
      ports: [{port: 6566, protocol: TCP}]
    - {namespace: kube-system, ports: [{port: dns, protocol: UDP}]}
  metrics: {namespace: monitoring}
  ingressFrom: {namespace: ingress-nginx}
monitoring: {podMonitor: true, labels: {release: kube-prometheus-stack}}
versions:
  greeter-v1:
    state: started
    network:
      egress:
        - {podSelector: {matchLabels: {app: redis}}, ports: [{port: 6379}]}
        - {cidr: "2001:db8::/32", ports: [{port: 8443}, {port: 8443, protocol: UDP}]}
"""


def test_network_and_monitoring_load_onto_the_model(tmp_path: Path) -> None:
    (tmp_path / "kai.yaml").write_text(FULL)
    p = load_project(tmp_path)
    assert p.network == Network(egress=(S3, FEAST, DNS_PEER), metrics_namespace="monitoring",
                                ingress_from="ingress-nginx")
    assert p.monitoring == Monitoring(True, {"release": "kube-prometheus-stack"})
    assert p.versions["greeter-v1"].egress == (REDIS, MODEL_API)
    assert p.egress_of("greeter-v1") == (REDIS, MODEL_API) and p.egress_of("other") == ()


def test_left_out_they_are_the_defaults_and_stay_out_of_a_written_file(tmp_path: Path) -> None:
    (tmp_path / "kai.yaml").write_text(HEAD + "versions: {a-v1: {state: started}}\n")
    p = load_project(tmp_path)
    assert p.network == Network() and p.monitoring == Monitoring()
    assert p.versions["a-v1"].egress == ()
    text = dump_project(p)
    assert "network" not in text and "monitoring" not in text


def test_dump_and_edit_round_trip_them(tmp_path: Path) -> None:
    (tmp_path / "kai.yaml").write_text(FULL)
    p = load_project(tmp_path)
    text = dump_project(p)
    (tmp_path / "kai.yaml").write_text(text)
    assert load_project(tmp_path) == p
    assert dump_project(load_project(tmp_path)) == text
    # a state change edits the hand-written file in place: the network lines stay as written
    started = replace(p, versions={"greeter-v1": replace(p.versions["greeter-v1"],
                                                         state="published")})
    edited = edit_project(FULL, started)
    assert edited == FULL.replace("state: started", "state: published")
    (tmp_path / "kai.yaml").write_text(edited)
    assert load_project(tmp_path) == started


def test_a_float_port_number_is_an_integer(tmp_path: Path) -> None:
    (tmp_path / "kai.yaml").write_text(
        HEAD + "network: {egress: [{cidr: 10.0.0.0/8, ports: [{port: 443.0}]}]}\n")
    (rule,) = load_project(tmp_path).network.egress
    assert rule.ports == (EgressPort(443),) and isinstance(rule.ports[0].port, int)


# --- kai.yaml: each problem, with its position ----------------------------------------------------


def test_schema_problems_of_egress_rules(tmp_path: Path) -> None:
    body = (
        "network:\n"
        "  egress:\n"
        "    - {cidr: 10.0.0.0/8, ports: [{port: 0}]}\n"
        "    - {namespace: Feast, ports: [{port: 70000, protocol: tcp}]}\n"
        "    - {namespace: feast, ports: [{port: '443'}, {port: a--b}, {port: abcdefghijklmnop}]}\n"
        "    - {namespace: feast, ports: []}\n"
        "    - {namespace: feast}\n"
        "    - {podSelector: {matchLabels: {Bad Key: x, app: 'a b'}}, ports: [{port: 1}]}\n"
        "    - {host: s3.amazonaws.com, ports: [{port: 443}]}\n"
    )
    port_rule = ("a port number (1 to 65535, without quotes) or a port name: at most 15 "
                 "lowercase letters, digits and '-', with at least one letter (e.g. 443)")
    port_pattern = "^(?=.{1,15}$)(?=[^a-z]*[a-z])(?!.*--)[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    assert problems(tmp_path, body) == [
        "kai.yaml:5:41: network.egress[0].ports[0].port: must be at least 1, got 0",
        'kai.yaml:6:19: network.egress[1].namespace: "Feast" does not match the pattern '
        "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$: a DNS-1123 label: lowercase letters, digits and "
        "'-', not starting or ending with '-' (e.g. kai-demo)",
        "kai.yaml:6:41: network.egress[1].ports[0].port: must be at most 65535, got 70000",
        "kai.yaml:6:58: network.egress[1].ports[0].protocol: must be one of: TCP, UDP, SCTP; "
        'got "tcp": in capitals',
        f'kai.yaml:7:41: network.egress[2].ports[0].port: "443" does not match the pattern '
        f"{port_pattern}: {port_rule}",
        f'kai.yaml:7:56: network.egress[2].ports[1].port: "a--b" does not match the '
        f"pattern {port_pattern}: {port_rule}",
        f'kai.yaml:7:70: network.egress[2].ports[2].port: "abcdefghijklmnop" does not match '
        f"the pattern {port_pattern}: {port_rule}",
        "kai.yaml:8:33: network.egress[3].ports: must have at least one item",
        "kai.yaml:9:7: network.egress[4].ports: required field is missing "
        "(The ports it opens, like [{port: 443}] or [{port: 53, protocol: UDP}])",
        'kai.yaml:10:36: network.egress[5].podSelector.matchLabels["Bad Key"]: "Bad Key" does '
        "not match the pattern "
        r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$: a label key: an optional DNS "
        "subdomain and '/', then a name of at most 63 letters, digits, '-', '_' and '.', "
        "starting and ending with a letter or digit (e.g. app.kubernetes.io/name)",
        'kai.yaml:10:53: network.egress[5].podSelector.matchLabels.app: "a b" does not match '
        "the pattern ^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$: a label value: letters, "
        "digits, '-', '_' and '.', starting and ending with a letter or digit "
        "(e.g. feast-online)",
        'kai.yaml:11:8: network.egress[6].host: unknown field "host"; allowed: cidr, except, '
        "namespace, podSelector, ports",
    ]


def test_a_quoted_port_number_says_to_drop_the_quotes(tmp_path: Path) -> None:
    (message,) = problems(tmp_path, "network: {egress: [{cidr: 10.0.0.0/8, "
                                    "ports: [{port: '443'}]}]}\n")
    assert "without quotes" in message


def test_semantic_problems_of_egress_rules(tmp_path: Path) -> None:
    body = (
        "network:\n"
        "  egress:\n"
        "    - {cidr: 10.1.0.0/8, ports: [{port: 443}]}\n"
        "    - {cidr: 10.0.0.1, ports: [{port: 443}]}\n"
        "    - {cidr: 10.0.0.0/33, ports: [{port: 443}]}\n"
        "    - {cidr: '2001:DB8::/32', ports: [{port: 443}]}\n"
        "    - cidr: 10.0.0.0/8\n"
        "      except: [10.0.0.0/8, 11.0.0.0/16, '::/64', nope, 10.1.0.0/16]\n"
        "      ports: [{port: https}]\n"
        "    - {ports: [{port: 443}]}\n"
        "    - {cidr: 10.0.0.0/8, namespace: feast, ports: [{port: 443}]}\n"
        "    - {namespace: feast, except: [10.0.0.0/8], ports: [{port: 443}]}\n"
        "    - {podSelector: {matchLabels: {}}, ports: [{port: 443}]}\n"
        "versions:\n"
        "  greeter-v1:\n"
        "    network:\n"
        "      egress:\n"
        "        - {cidr: 'fe80::%eth0/64', ports: [{port: 443}]}\n"
    )
    not_cidr = ('is not an IPv4 or IPv6 range in CIDR notation (like "10.0.0.0/8" or '
                '"2001:db8::/32")')
    assert problems(tmp_path, body) == [
        'kai.yaml:5:14: network.egress[0].cidr: "10.1.0.0/8" is not the start of a /8 range: '
        'write "10.0.0.0/8" (the range it falls in), or a longer prefix',
        'kai.yaml:6:14: network.egress[1].cidr: "10.0.0.1" needs a prefix length: '
        '"10.0.0.1/32" is that one address',
        f'kai.yaml:7:14: network.egress[2].cidr: "10.0.0.0/33" {not_cidr}',
        'kai.yaml:8:14: network.egress[3].cidr: "2001:DB8::/32" is written "2001:db8::/32" '
        "in CIDR notation",
        'kai.yaml:10:16: network.egress[4].except[0]: "10.0.0.0/8" must be a range inside '
        'cidr "10.0.0.0/8", and smaller',
        'kai.yaml:10:28: network.egress[4].except[1]: "11.0.0.0/16" must be a range inside '
        'cidr "10.0.0.0/8", and smaller',
        'kai.yaml:10:41: network.egress[4].except[2]: "::/64" is IPv6, but cidr "10.0.0.0/8" '
        "is IPv4",
        f'kai.yaml:10:50: network.egress[4].except[3]: "nope" {not_cidr}',
        'kai.yaml:11:22: network.egress[4].ports[0].port: "https" is a port name, which only '
        "pods define; a cidr rule needs the port's number",
        "kai.yaml:12:7: network.egress[5]: needs a destination: cidr (an IP range), or "
        "namespace and/or podSelector (pods)",
        "kai.yaml:13:26: network.egress[6].namespace: a rule reaches either an IP range (cidr) "
        "or pods (namespace), not both; make them two rules",
        "kai.yaml:14:26: network.egress[7].except: needs cidr: except names ranges left out "
        "of a cidr rule's range",
        "kai.yaml:15:35: network.egress[8].podSelector.matchLabels: names no label, so it "
        "selects every pod; name one, or use namespace alone for every pod of a namespace",
        f'kai.yaml:20:18: versions.greeter-v1.network.egress[0].cidr: "fe80::%eth0/64" '
        f"{not_cidr}",
    ]


def test_metrics_ingress_from_and_version_network_problems(tmp_path: Path) -> None:
    body = (
        "network:\n"
        "  metrics: {}\n"
        "  ingressFrom: {namespace: Ingress-Nginx}\n"
        "versions:\n"
        "  greeter-v1:\n"
        "    network: {ingressFrom: {namespace: ingress-nginx}}\n"
    )
    assert problems(tmp_path, body) == [
        "kai.yaml:4:12: network.metrics.namespace: required field is missing "
        "(e.g. namespace: monitoring)",
        'kai.yaml:5:28: network.ingressFrom.namespace: "Ingress-Nginx" does not match the '
        "pattern ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$: a DNS-1123 label: lowercase letters, digits "
        "and '-', not starting or ending with '-' (e.g. kai-demo)",
        'kai.yaml:8:15: versions.greeter-v1.network.ingressFrom: unknown field "ingressFrom"; '
        "allowed: egress",
    ]


@pytest.mark.parametrize(("text", "network"), [
    ("10.0.0.0/8", "10.0.0.0/8"), ("0.0.0.0/0", "0.0.0.0/0"), ("::/0", "::/0"),
    ("2001:db8::/32", "2001:db8::/32"), ("169.254.169.254/32", "169.254.169.254/32"),
])
def test_canonical_cidrs_parse(text: str, network: str) -> None:
    parsed, message = parse_cidr(text)
    assert message == "" and str(parsed) == network


@pytest.mark.parametrize(("text", "says"), [
    ("1.0.0.0/255.0.0.0", 'is written "1.0.0.0/8"'),  # a netmask: Kubernetes takes a prefix
    ("10.0.0.0/08", 'is written "10.0.0.0/8"'),
    ("010.0.0.0/8", "is not an IPv4 or IPv6 range"),
    (" 10.0.0.0/8", "is not an IPv4 or IPv6 range"),
    ("", "is not an IPv4 or IPv6 range"),
    ("2001:db8::1", '"2001:db8::1/128" is that one address'),
])
def test_cidrs_kubernetes_would_read_otherwise_are_refused(text: str, says: str) -> None:
    parsed, message = parse_cidr(text)
    assert parsed is None and says in message


# --- rendering ------------------------------------------------------------------------------


def _tree(tmp_path: Path, network: Network, version_egress: tuple[EgressRule, ...] = (),
          state: str = "started", **kw: Any) -> dict[str, dict[str, Any]]:
    version = make_version(tmp_path)
    project = make_project(tmp_path, {}, network=network, **kw)
    project = replace(project, versions={
        version.name: VersionState(state, egress=version_egress)})
    return objects_of(render_project(project, {version.name: version}))


def test_without_network_settings_the_policies_are_unchanged(tmp_path: Path) -> None:
    objs = _tree(tmp_path, Network())
    policies = {k: v for k, v in objs.items() if v["kind"] == "NetworkPolicy"}
    assert sorted(policies) == ["networkpolicy-demo-default-deny.yaml",
                                "networkpolicy-demo-entrypoint-ingress.yaml"]
    deny = policies["networkpolicy-demo-default-deny.yaml"]["spec"]
    assert [rule.get("to") for rule in deny["egress"]] == [None, None]  # DNS, NATS anywhere
    assert "ingress" not in deny  # nothing reaches a node
    (allow,) = policies["networkpolicy-demo-entrypoint-ingress.yaml"]["spec"]["ingress"]
    assert allow == {"ports": [{"port": 9000, "protocol": "TCP"},
                               {"port": 8080, "protocol": "TCP"}]}  # from any source


def test_project_egress_rules_open_to_every_node_in_their_order(tmp_path: Path) -> None:
    objs = _tree(tmp_path, Network(egress=(S3, FEAST, DNS_PEER)))
    policy = objs["networkpolicy-demo-egress.yaml"]
    assert policy["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-2"
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {"app.kubernetes.io/part-of": "demo",
                                                   "type": "node"}}
    assert spec["policyTypes"] == ["Egress"]
    assert spec["egress"] == [
        {"ports": [{"port": 443, "protocol": "TCP"}],
         "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.0.0/16"]}}]},
        {"ports": [{"port": 6566, "protocol": "TCP"}],
         "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "feast"}},
                 "podSelector": {"matchLabels": {"app": "feast-online"}}}]},
        {"ports": [{"port": "dns", "protocol": "UDP"}],
         "to": [{"namespaceSelector": {"matchLabels": {
             "kubernetes.io/metadata.name": "kube-system"}}}]},
    ]
    # the default policy (DNS and NATS) and the entrypoints' stay as they were
    assert len(objs["networkpolicy-demo-default-deny.yaml"]["spec"]["egress"]) == 2
    nodes = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
             for d in objs.values() if d["kind"] == "Deployment"}
    for name, pod in nodes.items():
        selected = spec["podSelector"]["matchLabels"].items() <= pod.items()
        assert selected == (not name.endswith("-entrypoint")), name


def test_a_versions_egress_adds_a_policy_for_its_own_nodes(tmp_path: Path) -> None:
    objs = _tree(tmp_path, Network(egress=(S3,)), version_egress=(REDIS, MODEL_API))
    project_rules = objs["networkpolicy-demo-egress.yaml"]["spec"]["egress"]
    assert [r["to"][0] for r in project_rules] == [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.0.0/16"]}}]
    policy = objs["greeter-v1/networkpolicy-greeter-v1-egress.yaml"]
    assert policy["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-2"
    assert policy["metadata"]["labels"]["app.kubernetes.io/version"] == "greeter-v1"
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {"app.kubernetes.io/part-of": "demo",
                                                   "app.kubernetes.io/version": "greeter-v1",
                                                   "type": "node"}}
    assert spec["egress"] == [  # in kai.yaml's order, ports too
        {"ports": [{"port": 6379, "protocol": "TCP"}],
         "to": [{"podSelector": {"matchLabels": {"app": "redis"}}}]},
        {"ports": [{"port": 8443, "protocol": "TCP"}, {"port": 8443, "protocol": "UDP"}],
         "to": [{"ipBlock": {"cidr": "2001:db8::/32"}}]},
    ]


def test_a_version_may_add_egress_without_project_rules(tmp_path: Path) -> None:
    objs = _tree(tmp_path, Network(), version_egress=(REDIS,))
    assert "networkpolicy-demo-egress.yaml" not in objs
    assert "greeter-v1/networkpolicy-greeter-v1-egress.yaml" in objs


def test_a_stopped_versions_egress_renders_nothing(tmp_path: Path) -> None:
    version = make_version(tmp_path)
    project = replace(make_project(tmp_path, {}), versions={
        version.name: VersionState("stopped", egress=(REDIS,))})
    assert not any("/" in path for path in render_project(project, {version.name: version}))


def test_egress_rendering_is_deterministic(tmp_path: Path) -> None:
    version = make_version(tmp_path)
    project = replace(make_project(tmp_path, {}, network=Network(egress=(S3, FEAST))),
                      versions={version.name: VersionState("started", egress=(REDIS,))})
    first = render_project(project, {version.name: version})
    assert render_project(project, {version.name: version}) == first


def test_metrics_opens_the_web_and_metrics_ports_to_its_namespace(tmp_path: Path) -> None:
    objs = _tree(tmp_path, Network(metrics_namespace="monitoring"))
    spec = objs["networkpolicy-demo-metrics-ingress.yaml"]["spec"]
    assert spec["podSelector"] == {"matchLabels": {"app.kubernetes.io/part-of": "demo"}}
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["ingress"] == [{
        "from": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "monitoring"}}}],
        "ports": [{"port": 8080, "protocol": "TCP"}, {"port": 9090, "protocol": "TCP"}],
    }]
    # the ports are the ones the pods serve /metrics on
    served = set()
    for dep in (o for o in objs.values() if o["kind"] == "Deployment"):
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        served.add(int(env["KAI_WEB_PORT"]))
    assert served == {8080, 9090}
    # the entrypoints' policy is left as it was: any source
    (allow,) = objs["networkpolicy-demo-entrypoint-ingress.yaml"]["spec"]["ingress"]
    assert "from" not in allow


def test_ingress_from_limits_the_entrypoints_to_that_namespace(tmp_path: Path) -> None:
    objs = _tree(tmp_path, Network(ingress_from="ingress-nginx"), state="published")
    (allow,) = objs["networkpolicy-demo-entrypoint-ingress.yaml"]["spec"]["ingress"]
    assert allow == {
        "from": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "ingress-nginx"}}}],
        "ports": [{"port": 9000, "protocol": "TCP"}, {"port": 8080, "protocol": "TCP"}],
    }
    assert "networkpolicy-demo-metrics-ingress.yaml" not in objs


def test_ingress_from_and_metrics_together(tmp_path: Path) -> None:
    objs = _tree(tmp_path, Network(metrics_namespace="monitoring", ingress_from="ingress-nginx"))
    sources = {
        path: [peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
               for rule in obj["spec"]["ingress"] for peer in rule["from"]]
        for path, obj in objs.items() if "ingress" in obj.get("spec", {})}
    assert sources == {"networkpolicy-demo-entrypoint-ingress.yaml": ["ingress-nginx"],
                       "networkpolicy-demo-metrics-ingress.yaml": ["monitoring"]}


def test_a_version_named_like_the_projects_egress_policy_is_refused(tmp_path: Path) -> None:
    """The project's `<project>-egress` and a version's `<version>-egress` share a name
    space: a clash is one clear problem, never two objects of one name."""
    version = make_version(tmp_path, "demo")
    project = replace(make_project(tmp_path, {}, network=Network(egress=(S3,))),
                      versions={"demo": VersionState("started", egress=(REDIS,))})
    with pytest.raises(RenderError, match="object names must be unique"):
        render_project(project, {"demo": version})


# --- kai dev --------------------------------------------------------------------------------


def test_kai_dev_runs_the_same_processes_whatever_the_network(tmp_path: Path) -> None:
    version = load_version(ROOT / "examples" / "greeter")
    plain = Project(name="dev", namespace="dev")
    opened = replace(plain, network=Network(egress=(S3,), metrics_namespace="monitoring",
                                            ingress_from="ingress-nginx"),
                     monitoring=Monitoring(pod_monitor=True),
                     versions={version.name: VersionState("started", egress=(REDIS,))})
    config = DevConfig({}, {})
    specs = []
    for project, work in ((plain, tmp_path / "a"), (opened, tmp_path / "b")):
        objects = render_local(project, version)[1]
        found = rendered_specs(objects, work, "nats://127.0.0.1:1", config, 7000, 7001)
        specs.append([replace(s, env={k: v.replace(str(work), "") for k, v in s.env.items()})
                      for s in found])
    assert specs[0] == specs[1]
    kinds = {o["kind"] for o in render_local(opened, version)[1]}
    assert "PodMonitor" in kinds  # rendered, and left alone by kai dev


def test_version_egress_policy_is_among_the_versions_objects(tmp_path: Path) -> None:
    version = make_version(tmp_path)
    project = replace(make_project(tmp_path, {}),
                      versions={version.name: VersionState("started", egress=(REDIS,))})
    objs = render_version(project, build_plan(project, version))
    (policy,) = by_kind(objs, "NetworkPolicy")
    assert policy["metadata"]["name"] == "greeter-v1-egress"


def test_the_readme_reference_opens_what_it_says(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## kai.yaml reference"):]
    (tmp_path / "kai.yaml").write_text(
        section[section.index("```yaml\n") + 8:section.index("```\n", 1)])
    p = load_project(tmp_path)
    s3, feast = p.network.egress
    assert (s3.cidr, s3.ports) == ("0.0.0.0/0", (EgressPort(443),))
    assert "169.254.0.0/16" in s3.excluded  # the cloud metadata address stays closed
    assert (feast.namespace, feast.pod_labels) == ("feast", {"app": "feast-online"})
    assert (p.network.metrics_namespace, p.network.ingress_from) == ("monitoring",
                                                                      "ingress-nginx")
    assert p.monitoring.pod_monitor is True
    assert p.egress_of("fraud-v3") == (REDIS,)
