"""A KRE 1.x version that imports pandas, imported into a GitOps repo made by `kai init`.

As KRE shipped it (no requirements.txt: kre-py carried pandas) it renders onto the
`runner-ml` flavor of the registry given to `kai init --registry`, and answers under
`kai dev`. With a requirements.txt it renders onto an image of its own, built FROM
runner-ml, and has no ConfigMap.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from gitops_helpers import kai
from local_run import kai as kai_argv

from renderer.project import RUNNER_TAG
from runner.supervisor import free_port
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.integration

REGISTRY = "registry.example.com/acme"
VERSION = "kre-pandas-v1"
READINGS = [{"sensor": "a", "value": 1}, {"sensor": "a", "value": 3},
            {"sensor": "b", "value": 8}]


def _repo(tmp_path: Path, requirements: bool) -> Path:
    source = tmp_path / "kre-pandas"
    shutil.copytree(EXAMPLES / "kre-pandas", source)
    if not requirements:  # as KRE shipped it: pandas came with the kre-py image
        (source / "requirements.txt").unlink()
    repo = tmp_path / "repo"
    kai("init", str(repo), "--project", "demo", "--namespace", "kai-demo",
        "--registry", REGISTRY)
    kai("add", str(source), "--repo", str(repo))
    kai("start", VERSION, "--repo", str(repo))
    return repo


def _containers(repo: Path) -> dict[str, str]:
    """Deployment name -> the image it runs, as the cluster gets it (kustomize applied)."""
    target = repo / "rendered" / "demo"
    if shutil.which("kubectl"):
        built = subprocess.run(["kubectl", "kustomize", str(target)], capture_output=True,
                               text=True, check=True, timeout=60).stdout
        objects = [o for o in yaml.safe_load_all(built) if o]
    else:  # the same by hand: the kustomization's image map over the Deployments
        kustomization = yaml.safe_load((target / "kustomization.yaml").read_text())
        mapped = {i["name"]: f"{i['newName']}:{i['newTag']}"
                  for i in kustomization.get("images", [])}
        objects = [yaml.safe_load(p.read_text()) for p in (target / VERSION).glob("*.yaml")]
        for o in objects:
            if o["kind"] == "Deployment":
                c = o["spec"]["template"]["spec"]["containers"][0]
                c["image"] = mapped.get(c["image"].rsplit(":", 1)[0], c["image"])
    return {o["metadata"]["name"]: o["spec"]["template"]["spec"]["containers"][0]["image"]
            for o in objects if o["kind"] == "Deployment"}


def test_a_kre_version_renders_onto_runner_ml_and_answers_under_kai_dev(
        tmp_path: Path) -> None:
    repo = _repo(tmp_path, requirements=False)
    assert _containers(repo) == {
        f"{VERSION}-entrypoint": f"{REGISTRY}/runner:{RUNNER_TAG}",
        f"{VERSION}-etl": f"{REGISTRY}/runner-ml:{RUNNER_TAG}",
        f"{VERSION}-stats": f"{REGISTRY}/runner-ml:{RUNNER_TAG}",
    }
    assert list((repo / "rendered" / "demo" / VERSION).glob("configmap-*.yaml"))

    argv = kai_argv("dev", VERSION, "--repo", str(repo), "--port", str(free_port()),
                    "--web-port", str(free_port()), "--call", "SensorStats",
                    json.dumps({"readings": READINGS}))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=repo)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["mean"], answer["count"]) == (4.0, 3)


def test_with_requirements_it_renders_onto_its_own_image_built_from_runner_ml(
        tmp_path: Path) -> None:
    repo = _repo(tmp_path, requirements=True)
    images = _containers(repo)
    own = {image for image in images.values()}
    assert len(own) == 1, images  # every process runs the version's image
    (image,) = own
    name, tag = image.rsplit(":", 1)
    assert name == f"{REGISTRY}/demo-{VERSION}" and len(tag) >= 10
    assert not list((repo / "rendered" / "demo" / VERSION).glob("configmap-*.yaml"))

    out = tmp_path / "context"
    kai("build", VERSION, "--repo", str(repo), "--output", str(out), ok=False)
    dockerfile = (out / "Dockerfile").read_text()
    assert f"FROM {REGISTRY}/runner-ml:{RUNNER_TAG}" in dockerfile
    assert (out / "version" / "requirements.txt").is_file()
