"""A rendered tree passes the real tools: kubernetes-validate --strict, kubectl kustomize, and
kubeconform when it is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from renderer import checks
from renderer.atomic import read_tree, write_tree
from renderer.images import default_images
from renderer.krt import Config, Node, Version, Workflow
from renderer.project import ConfigSource, Ingress, Project, VersionState
from renderer.render import RenderError, render_deploy, render_project
from renderer.scheduling import Gpu, ProcessSettings, ResourceOverride, Scheduling, Toleration

pytestmark = pytest.mark.integration

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
    script = Path(sys.executable).parent / "kubernetes-validate"
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "kubernetes_validate"]
    proc = subprocess.run(
        [*cli, "--strict", "-k", project.kubernetes_version, "--quiet", *files],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ERROR" not in proc.stdout
    warned = {line.split()[1] for line in proc.stdout.splitlines() if line.startswith("WARN")}
    assert all(Path(f).name.startswith(("externalsecret-", "sealedsecret-")) for f in warned)


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
    script = Path(sys.executable).parent / "kubernetes-validate"
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "kubernetes_validate"]
    proc = subprocess.run([*cli, "--strict", "-k", project.kubernetes_version, "--quiet", *files],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "ERROR" not in proc.stdout, proc.stdout + proc.stderr
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
