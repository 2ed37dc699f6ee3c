"""A rendered tree passes the real tools: kubernetes-validate --strict, kubectl kustomize, and
kubeconform when it is installed."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from renderer import checks
from renderer.atomic import read_tree, write_tree
from renderer.images import container_image, default_images
from renderer.krt import Config, Node, Version, Workflow
from renderer.project import (
    ConfigSource,
    EgressPort,
    EgressRule,
    Gateway,
    ImageMapping,
    Ingress,
    Monitoring,
    Nats,
    Network,
    ParentRef,
    Project,
    Tracing,
    VersionState,
)
from renderer.render import RenderError, kustomization, render_deploy, render_project
from renderer.scheduling import Gpu, ProcessSettings, ResourceOverride, Scheduling, Toleration
from tests.integration.gitops_helpers import validate_strict

pytestmark = pytest.mark.integration

# kubernetes-validate has no schema for these (checks.py checks them itself): they warn
CUSTOM_RESOURCES = ("externalsecret-", "sealedsecret-", "podmonitor-", "scaledobject-",
                    "grpcroute-")

PROTO = """syntax = "proto3";
message Req { string name = 1; }
message Resp { string greeting = 1; }
service Entrypoint { rpc PyGreet (Req) returns (Resp); }
"""

SEALED = """apiVersion: bitnami.com/v1alpha1
kind: SealedSecret
metadata:
  name: room-cfg
spec:
  encryptedData:
    MODEL_KEY: AgBy3i4OJSWK+PiTySYZZA==
"""


def _version(root: Path, name: str, config: Config | None = None) -> Version:
    vdir = root / "versions" / name
    (vdir / "src" / "etl").mkdir(parents=True)
    (vdir / "src" / "model").mkdir(parents=True)
    (vdir / "public_input.proto").write_text(PROTO)
    (vdir / "src" / "etl" / "main.py").write_text("def handler(ctx, data):\n    return data\n")
    (vdir / "src" / "model" / "main.py").write_text("def handler(ctx, data):\n    return data\n")
    (vdir / "src" / "model" / "model.bin").write_bytes(bytes(range(256)))
    return Version(
        name=name, description="test", proto="public_input.proto",
        entrypoint_image="konstellation/kre-entrypoint:1.6.0",
        nodes=(Node("etl", "konstellation/kre-py:1.23.0", "src/etl/main.py", replicas=2),
               Node("model", "konstellation/kre-py:1.23.0", "src/model/main.py", gpu=True)),
        workflows=(Workflow("greet", "PyGreet", ("etl", "model")),),
        config=config or Config(), directory=vdir,
    )


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Project, dict[str, Version]]:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "room.yaml").write_text(SEALED)
    versions = {
        "greeter-v1": _version(tmp_path, "greeter-v1", Config(("API_KEY",), ("HTTPS_CERT",))),
        "greeter-v2": _version(tmp_path, "greeter-v2", Config(("API_KEY",))),
        "room-v1": _version(tmp_path, "room-v1", Config(("MODEL_KEY",))),
        "old-v0": _version(tmp_path, "old-v0"),
    }
    project = Project(
        name="demo", namespace="demo", images=default_images(), root=tmp_path,
        ingress=Ingress(host="demo.example.com", tls_secret="demo-tls"),
        versions={
            "greeter-v1": VersionState("published", ConfigSource("secret", "greeter-cfg")),
            "greeter-v2": VersionState("started", ConfigSource(
                "externalSecret", "greeter-v2-cfg", store="vault", remote_key="kai/greeter")),
            "room-v1": VersionState("started", ConfigSource(
                "sealedSecret", "room-cfg", file="secrets/room.yaml")),
            "old-v0": VersionState("stopped"),
        },
    )
    return project, versions


def _written(project: Project, versions: dict[str, Version]) -> Path:
    target = project.rendered_dir
    write_tree(target, render_project(project, versions))
    write_tree(project.root / "deploy", render_deploy(project, "https://git.example.com/r", "main"))
    return target


def test_kubernetes_validate_cli_strict(repo: tuple[Project, dict[str, Version]]) -> None:
    project, versions = repo
    target = _written(project, versions)
    files = sorted(str(p) for p in target.rglob("*.yaml") if p.name != "kustomization.yaml")
    # project + per version (ConfigMap, 3 Deployments, Service, etl's PodDisruptionBudget)
    # + Ingress + ES + SS
    assert len(files) == 3 + 3 * 6 + 1 + 1 + 1
    _validate_strict(project, files)


def _validate_strict(project: Project, files: list[str]) -> None:
    """kubernetes-validate --strict passes every file (the CRDs it lacks only warn)."""
    validate_strict(files, project.kubernetes_version, CUSTOM_RESOURCES)


def test_nats_secrets_render_valid_and_no_credential_enters_the_tree(
        repo: tuple[Project, dict[str, Version]]) -> None:
    project, versions = repo
    project = replace(project, nats=Nats(url="tls://nats.kai-system.svc,tls://nats-2.kai-system.svc",
                                         namespace="kai-system", auth_secret="nats-auth",
                                         ca_secret="nats-ca"))
    target = _written(project, versions)
    files = sorted(str(p) for p in target.rglob("*.yaml") if p.name != "kustomization.yaml")
    _validate_strict(project, files)
    tree = read_tree(target)
    deployments = [yaml.safe_load(data) for path, data in tree.items()
                   if Path(path).name.startswith("deployment-")]
    assert len(deployments) == 3 * 3
    for dep in deployments:
        pod = dep["spec"]["template"]["spec"]
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["nats-auth"]["readOnly"] and mounts["nats-ca"]["readOnly"]
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        assert (secrets["nats-auth"], secrets["nats-ca"]) == ("nats-auth", "nats-ca")
    # the names of the Secrets only: no Secret object, no credential, no URL userinfo
    kinds = {yaml.safe_load(data)["kind"] for path, data in tree.items()}
    assert "Secret" not in kinds
    text = b"".join(tree.values()).decode()
    for marker in ("BEGIN NATS USER JWT", "USER NKEY SEED", "password:", "token:", "@nats"):
        assert marker not in text
    if shutil.which("kubectl") is not None:
        built = subprocess.run(["kubectl", "kustomize", str(target)], capture_output=True,
                               text=True, check=False)
        assert built.returncode == 0, built.stderr


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds(repo: tuple[Project, dict[str, Version]]) -> None:
    project, versions = repo
    target = _written(project, versions)
    proc = subprocess.run(["kubectl", "kustomize", str(target)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    objs = [o for o in yaml.safe_load_all(proc.stdout) if o]
    assert len(objs) == len(read_tree(target)) - 1
    assert {o["metadata"].get("namespace", "demo") for o in objs} == {"demo"}
    images = {c["image"] for o in objs if o["kind"] == "Deployment"
              for c in o["spec"]["template"]["spec"]["containers"]}
    assert images == {f"registry.example.com/kai/{flavor}:0.1.0"
                      for flavor in ("runner", "runner-ml", "runner-gpu")}
    models = {c["image"] for o in objs if o["kind"] == "Deployment"
              and o["metadata"]["name"].endswith("-model")
              for c in o["spec"]["template"]["spec"]["containers"]}
    assert models == {"registry.example.com/kai/runner-gpu:0.1.0"}  # the gpu node
    services = sorted(o["metadata"]["name"] for o in objs if o["kind"] == "Service")
    assert services == ["active-entrypoint", "greeter-v2", "room-v1"]


DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_no_namespace_and_pinned_images_build_and_validate(
        repo: tuple[Project, dict[str, Version]]) -> None:
    """`createNamespace: false` and digests: the tree still builds with kubectl kustomize and
    passes kubernetes-validate --strict; every image runs pinned, the gpu node's too."""
    project, versions = repo
    pinned = tuple(replace(m, digest=DIGEST) for m in project.images)
    project = replace(project, create_namespace=False, images=pinned)
    target = _written(project, versions)
    assert not list(target.glob("namespace-*.yaml"))
    proc = subprocess.run(["kubectl", "kustomize", str(target)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    objs = [o for o in yaml.safe_load_all(proc.stdout) if o]
    assert "Namespace" not in {o["kind"] for o in objs}
    assert {o["metadata"]["namespace"] for o in objs} == {"demo"}
    images = {o["metadata"]["name"]: c["image"] for o in objs if o["kind"] == "Deployment"
              for c in o["spec"]["template"]["spec"]["containers"]}
    assert images["greeter-v1-model"] == f"registry.example.com/kai/runner-gpu:0.1.0@{DIGEST}"
    assert images["greeter-v1-etl"] == f"registry.example.com/kai/runner-ml:0.1.0@{DIGEST}"
    assert images["greeter-v1-entrypoint"] == f"registry.example.com/kai/runner:0.1.0@{DIGEST}"
    assert all(image.endswith(f"@{DIGEST}") for image in images.values())
    files = sorted(str(p) for p in target.rglob("*.yaml") if p.name != "kustomization.yaml")
    _validate_strict(project, files)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_a_gpu_entry_names_the_image_kustomize_would(tmp_path: Path) -> None:
    """What container_image writes for a gpu entry is what kustomize makes of the same
    entry without gpu, for each mix of tag and digest in the entry and in krt.yml."""
    own = "@sha256:" + "f" * 64
    entries = [ImageMapping(f"acme/img{i}", f"ghcr.io/acme/new{i}", tag, digest=digest)
               for i, (tag, digest) in enumerate(
                   [("", ""), ("2.0", ""), ("", DIGEST), ("2.0", DIGEST)])]
    images = [f"{e.name}{suffix}" for e in entries
              for suffix in ("", ":1.0", own, f":1.0{own}")]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": f"c{i}", "image": image}
                                   for i, image in enumerate(images)]}}
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    (tmp_path / "kustomization.yaml").write_bytes(kustomization(
        Project("demo", "demo", images=tuple(entries)), ["pod.yaml"]))
    proc = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    built = [c["image"] for c in yaml.safe_load(proc.stdout)["spec"]["containers"]]
    gpu = tuple(replace(e, gpu=True) for e in entries)
    assert [container_image(image, True, gpu) for image in images] == built


def test_tree_is_deterministic_and_checked(repo: tuple[Project, dict[str, Version]]) -> None:
    project, versions = repo
    target = _written(project, versions)
    first = read_tree(target)
    _written(project, versions)
    assert read_tree(target) == first
    problems = checks.check_files(first, project.kubernetes_version)
    assert problems == []


def test_failed_render_leaves_old_tree(repo: tuple[Project, dict[str, Version]]) -> None:
    project, versions = repo
    target = _written(project, versions)
    before = read_tree(target)
    (project.root / "secrets" / "room.yaml").write_text(SEALED.replace("room-cfg", "other"))
    with pytest.raises(RenderError):
        write_tree(target, render_project(project, versions))
    assert read_tree(target) == before


@pytest.mark.skipif(shutil.which("kubeconform") is None, reason="kubeconform is not on PATH")
def test_kubeconform_offline(repo: tuple[Project, dict[str, Version]]) -> None:
    project, versions = repo
    tree = render_project(project, versions)
    assert checks.kubeconform(tree, project.kubernetes_version) == []


@pytest.fixture
def opened(repo: tuple[Project, dict[str, Version]]) -> tuple[Project, dict[str, Version]]:
    """The same repo with every network and monitoring setting: egress rules of each kind
    (project-wide and for one version), metrics, ingressFrom, PodMonitors, dashboards and
    tracing (its egress)."""
    project, versions = repo
    rules = (
        EgressRule((EgressPort(443),), cidr="0.0.0.0/0", excluded=("10.0.0.0/8",)),
        EgressRule((EgressPort(6566), EgressPort("grpc")), namespace="feast",
                   pod_labels={"app": "feast-online"}),
        EgressRule((EgressPort(53, "UDP"), EgressPort(9999, "SCTP")), namespace="kube-system"),
    )
    own = (EgressRule((EgressPort(6379),), pod_labels={"app": "redis"}),
           EgressRule((EgressPort(8443),), cidr="2001:db8::/32"))
    states = dict(project.versions)
    states["greeter-v2"] = replace(states["greeter-v2"], egress=own)
    project = replace(
        project, versions=states,
        network=Network(egress=rules, metrics_namespace="monitoring",
                        ingress_from="ingress-nginx"),
        monitoring=Monitoring(pod_monitor=True, labels={"release": "kube-prometheus-stack"},
                              dashboards=True),
        tracing=Tracing("http://otel-collector.observability.svc:4317", namespace="observability"))
    return project, versions


def test_network_and_monitoring_pass_the_real_tools(
        opened: tuple[Project, dict[str, Version]]) -> None:
    project, versions = opened
    target = _written(project, versions)
    files = sorted(str(p) for p in target.rglob("*.yaml") if p.name != "kustomization.yaml")
    names = {Path(f).name for f in files}
    assert {"networkpolicy-demo-egress.yaml", "networkpolicy-demo-metrics-ingress.yaml",
            "networkpolicy-greeter-v2-egress.yaml", "podmonitor-greeter-v1.yaml",
            "podmonitor-greeter-v2.yaml", "podmonitor-room-v1.yaml",
            "configmap-greeter-v1-dashboards.yaml", "configmap-room-v1-dashboards.yaml"} <= names
    _validate_strict(project, files)
    assert checks.check_files(read_tree(target), project.kubernetes_version) == []
    if shutil.which("kubectl"):
        proc = subprocess.run(["kubectl", "kustomize", str(target)], capture_output=True,
                              text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        kinds = [o["kind"] for o in yaml.safe_load_all(proc.stdout) if o]
        assert kinds.count("PodMonitor") == 3 and kinds.count("NetworkPolicy") == 5


def test_resources_and_scheduling_pass_the_real_tools(tmp_path: Path) -> None:
    """Per-node resources, a GPU node with its selector and tolerations, every scheduling
    field, a /tmp size and replicas 3 (a PodDisruptionBudget and a spread): each object
    passes kubernetes-validate --strict and kubectl kustomize builds the tree."""
    etl = _version(tmp_path, "greeter-v1")
    nodes = (replace(etl.nodes[0], replicas=3, resources=ResourceOverride(
                 {"cpu": "250m", "memory": "256Mi"}, {"cpu": "2", "memory": "1Gi"})),
             etl.nodes[1])
    versions = {"greeter-v1": replace(etl, nodes=nodes)}
    project = Project(
        name="demo", namespace="demo", images=default_images(), root=tmp_path,
        gpu=Gpu("nvidia.com/gpu", {"konstellation.io/gpu": "true"}),
        scheduling=Scheduling("kai-runner", ("regcred",), {"kubernetes.io/arch": "amd64"},
                              (Toleration("dedicated", "Equal", "ml", "NoSchedule"),
                               Toleration("node.kubernetes.io/unreachable", "Exists",
                                          effect="NoExecute", seconds=30)), "kai-high"),
        versions={"greeter-v1": VersionState(
            "published", entrypoint=ProcessSettings(ResourceOverride(limits={"memory": "1Gi"}),
                                                    tmp_size="64Mi"),
            nodes={"model": ProcessSettings(ResourceOverride(limits={"memory": "8Gi"}),
                                            tmp_size="2Gi")})},
    )
    target = _written(project, versions)
    files = sorted(str(p) for p in target.rglob("*.yaml") if p.name != "kustomization.yaml")
    assert any(Path(f).name == "poddisruptionbudget-greeter-v1-etl.yaml" for f in files)
    _validate_strict(project, files)
    assert checks.check_files(read_tree(target), project.kubernetes_version) == []
    model = yaml.safe_load((target / "greeter-v1/deployment-greeter-v1-model.yaml").read_text())
    assert model["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert model["spec"]["template"]["spec"]["nodeSelector"] == {
        "konstellation.io/gpu": "true", "kubernetes.io/arch": "amd64"}
    if shutil.which("kubectl") is not None:
        built = subprocess.run(["kubectl", "kustomize", str(target)], capture_output=True,
                               text=True, check=False)
        assert built.returncode == 0, built.stderr
        kinds = {o["kind"] for o in yaml.safe_load_all(built.stdout) if o}
        assert "PodDisruptionBudget" in kinds


@pytest.mark.parametrize("engine", ["keda", "hpa"])
def test_autoscaling_passes_the_real_tools(tmp_path: Path, engine: str) -> None:
    """Autoscaled nodes (a ScaledObject each with engine keda, an HPA with hpa) and an
    autoscaled entrypoint (an HPA): the HPAs pass kubernetes-validate --strict, the
    ScaledObjects the bundled KEDA CRD schema, and kubectl kustomize builds the tree; the
    autoscaled Deployments name no replicas."""
    from renderer.autoscaling import AutoscalingOverride, AutoscalingSettings

    base = _version(tmp_path, "greeter-v1")
    low = 0 if engine == "keda" else 1
    nodes = (replace(base.nodes[0], autoscaling=AutoscalingOverride(low, 6, 4)), base.nodes[1])
    versions = {"greeter-v1": replace(base, nodes=nodes)}
    project = Project(
        name="demo", namespace="demo", images=default_images(), root=tmp_path,
        autoscaling=AutoscalingSettings(engine),
        nats=Nats(monitoring="nats-headless.kai-system.svc:8222"),
        versions={"greeter-v1": VersionState(
            "published",
            entrypoint=ProcessSettings(autoscaling=AutoscalingOverride(2, 5, cpu_utilization=70)),
            nodes={"model": ProcessSettings(autoscaling=AutoscalingOverride(max_replicas=2))})},
    )
    target = _written(project, versions)
    files = sorted(str(p) for p in target.rglob("*.yaml") if p.name != "kustomization.yaml")
    names = {Path(f).name for f in files}
    scalers = {"scaledobject-greeter-v1-etl.yaml", "scaledobject-greeter-v1-model.yaml"}
    hpas = {"horizontalpodautoscaler-greeter-v1-etl.yaml",
            "horizontalpodautoscaler-greeter-v1-model.yaml"}
    assert "horizontalpodautoscaler-greeter-v1-entrypoint.yaml" in names
    assert (scalers if engine == "keda" else hpas) <= names
    assert not (hpas if engine == "keda" else scalers) & names
    _validate_strict(project, files)
    assert checks.check_files(read_tree(target), project.kubernetes_version) == []
    for name in ("entrypoint", "etl", "model"):
        dep = yaml.safe_load((target / f"greeter-v1/deployment-greeter-v1-{name}.yaml").read_text())
        assert "replicas" not in dep["spec"]
    if shutil.which("kubectl") is not None:
        built = subprocess.run(["kubectl", "kustomize", str(target)], capture_output=True,
                               text=True, check=False)
        assert built.returncode == 0, built.stderr
        kinds = [o["kind"] for o in yaml.safe_load_all(built.stdout) if o]
        assert kinds.count("HorizontalPodAutoscaler") == (1 if engine == "keda" else 3)
        assert kinds.count("ScaledObject") == (2 if engine == "keda" else 0)


@pytest.mark.parametrize("gateway", [
    None, Gateway((ParentRef("public", "gateway-system", "grpc"), ParentRef("internal")),
                  ("demo.example.com", "*.demo.example.com"))])
def test_a_canary_passes_the_real_tools(repo: tuple[Project, dict[str, Version]],
                                        gateway: Gateway | None) -> None:
    """greeter-v2 as the canary at 20%: its second Ingress (ingress-nginx's canary), or the
    GRPCRoute with both Services weighted, passes kubernetes-validate --strict (the CRD it
    has no schema for only warns), kai's own checks and kubectl kustomize."""
    project, versions = repo
    states = dict(project.versions)
    states["greeter-v2"] = replace(states["greeter-v2"], canary=20)
    project = replace(project, versions=states, gateway=gateway)
    target = _written(project, versions)
    files = sorted(str(p) for p in target.rglob("*.yaml") if p.name != "kustomization.yaml")
    names = {str(Path(f).relative_to(target)) for f in files}
    if gateway is None:
        assert "greeter-v2/ingress-greeter-v2-canary.yaml" in names
        assert "grpcroute-active-entrypoint.yaml" not in names
    else:
        assert "grpcroute-active-entrypoint.yaml" in names
        assert not [n for n in names if "/ingress-" in n]
    _validate_strict(project, files)
    assert checks.check_files(read_tree(target), project.kubernetes_version) == []
    if shutil.which("kubectl") is not None:
        built = subprocess.run(["kubectl", "kustomize", str(target)], capture_output=True,
                               text=True, check=False)
        assert built.returncode == 0, built.stderr
        objs = [o for o in yaml.safe_load_all(built.stdout) if o]
        assert {o["metadata"].get("namespace", "demo") for o in objs} == {"demo"}
        kinds = [o["kind"] for o in objs]
        if gateway is None:
            assert kinds.count("Ingress") == 2
        else:
            assert kinds.count("Ingress") == 0 and kinds.count("GRPCRoute") == 1
            (route,) = [o for o in objs if o["kind"] == "GRPCRoute"]
            assert route["spec"]["rules"][0]["backendRefs"] == [
                {"name": "active-entrypoint", "port": 9000, "weight": 80},
                {"name": "greeter-v2", "port": 9000, "weight": 20}]
