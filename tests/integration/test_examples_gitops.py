"""examples/gitops: up to date (`kai render --check`), valid, and home of the examples."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from renderer.cli import main
from renderer.projectfile import load_project
from renderer.render import render_deploy
from renderer.repo import PLACEHOLDER_NOTE, PLACEHOLDER_URL
from tests.conftest import EXAMPLES
from tests.integration.gitops_helpers import rendered_files, validate_strict

pytestmark = pytest.mark.integration

GITOPS = EXAMPLES / "gitops"
RENDERED = "rendered/demo"
SOURCES = {"greeter-v1": EXAMPLES / "greeter", "room-price-v1": EXAMPLES / "room-price"}
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy, so the test never touches the tree."""
    target = tmp_path_factory.mktemp("examples") / "gitops"
    shutil.copytree(GITOPS, target, ignore=IGNORE)
    return target


def test_render_check_passes(repo: Path) -> None:
    result = CliRunner().invoke(main, ["render", "--check", "--repo", str(repo)])
    assert result.exit_code == 0, result.output
    assert f"{RENDERED} is up to date" in result.stdout


def test_desired_state(repo: Path) -> None:
    doc = yaml.safe_load((repo / "kai.yaml").read_text())
    assert doc["project"] == "demo" and doc["namespace"] == "kai-demo"
    assert {n: v["state"] for n, v in doc["versions"].items()} == {
        "greeter-v1": "published", "room-price-v1": "started"}
    rendered = repo / RENDERED
    assert (rendered / "greeter-v1/service-active-entrypoint.yaml").is_file()
    assert (rendered / "greeter-v1/ingress-active-entrypoint.yaml").is_file()
    assert (rendered / "room-price-v1/service-room-price-v1.yaml").is_file()


@pytest.mark.parametrize("version", sorted(SOURCES))
def test_examples_are_the_versions_of_the_gitops_repo(version: str) -> None:
    """One copy of each example: examples/<name> points into the GitOps repo's versions/."""
    source = SOURCES[version]
    assert source.is_symlink()
    assert source.resolve() == (GITOPS / "versions" / version).resolve()


def test_kubernetes_validate_strict(repo: Path) -> None:
    version = yaml.safe_load((repo / "kai.yaml").read_text())["kubernetesVersion"]
    files = rendered_files(repo / RENDERED)
    assert len(files) >= 15
    validate_strict(files, version)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH")
def test_kubectl_kustomize_builds(repo: Path) -> None:
    proc = subprocess.run(["kubectl", "kustomize", str(repo / RENDERED)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    objects = [d for d in yaml.safe_load_all(proc.stdout) if d]
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == ["ConfigMap", "Deployment", "Ingress", "Namespace", "NetworkPolicy", "Service"]
    services = sorted(o["metadata"]["name"] for o in objects if o["kind"] == "Service")
    assert services == ["active-entrypoint", "room-price-v1"]
    images = {c["image"] for o in objects if o["kind"] == "Deployment"
              for c in o["spec"]["template"]["spec"]["containers"]}
    assert images == {"registry.example.com/kai/runner:0.1.0",
                      "registry.example.com/kai/runner-ml:0.1.0"}, images


def test_deploy_is_what_kai_init_writes_for_it() -> None:
    """deploy/ as `kai init` (no remote: the placeholder URL) writes it today, so the
    example shows the current Application: server-side apply among its sync options."""
    project = load_project(GITOPS)
    expected = {rel: PLACEHOLDER_NOTE.encode() + data
                for rel, data in render_deploy(project, PLACEHOLDER_URL, "main").items()}
    deploy = GITOPS / "deploy"
    assert {p.relative_to(deploy).as_posix(): p.read_bytes()
            for p in deploy.rglob("*.yaml")} == expected
    app = yaml.safe_load(expected["argocd/application-demo.yaml"])
    assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]
