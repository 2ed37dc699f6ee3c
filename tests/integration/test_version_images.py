"""Version images through the real CLI: `kai add` / `kai start` / `kai render` with a
requirements.txt, `kai build` with and without a container tool, and the CI job `kai init`
writes, its shell run for real.

No container engine runs here: where a tool is needed, a stand-in `docker` on PATH records
its arguments (the build itself is Docker's to test); PATH is set by each test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from renderer.cli.build import EXIT_NO_TOOL
from renderer.project import DEFAULT_KUBERNETES_VERSION
from tests.conftest import ROOT, git
from tests.integration.gitops_helpers import (
    clean,
    drop_build,
    kai,
    log,
    make_version,
    rendered_files,
    validate_strict,
)

pytestmark = pytest.mark.integration

REGISTRY = "registry.example.com/kai"
BUILD = f"build:\n  registry: {REGISTRY}   # where version images go\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "gitops"
    kai("init", str(root), "--project", "demo", "--namespace", "kai-demo")
    drop_build(root)  # with_build puts one back
    return root


def with_build(root: Path) -> None:
    (root / "kai.yaml").write_text((root / "kai.yaml").read_text() + BUILD)
    git(root, "commit", "-qam", "build: version images")


def model_version(dst: Path, name: str = "model-v1", requirements: str = "scikit-learn\n") -> Path:
    version = make_version(dst, name)
    (version / "requirements.txt").write_text(requirements)
    return version


def bindir(tmp_path: Path, *tools: str) -> Path:
    """A folder for PATH holding git (and `tools` from this machine), nothing else."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for tool in ("git", *tools):
        found = shutil.which(tool)
        assert found, tool
        if not (folder / tool).exists():
            (folder / tool).symlink_to(found)
    return folder


def fake_tool(folder: Path, name: str = "docker", present: tuple[str, ...] = (),
              exit_code: int = 0) -> Path:
    """A stand-in container tool: appends its argv (and, for a build, whether the context
    holds a Dockerfile; for a login, what came on stdin) to `<name>.log` as JSON lines.
    `manifest inspect IMAGE` succeeds for the images in `present`."""
    log_file = folder / f"{name}.log"
    script = folder / name
    script.write_text(f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
entry = {{"argv": args}}
if args[:1] in (["build"], ["bud"]):
    entry["dockerfile"] = os.path.isfile(os.path.join(args[-1], "Dockerfile"))
if args[:1] == ["login"]:
    entry["stdin"] = sys.stdin.read()
with open({str(log_file)!r}, "a") as f:
    f.write(json.dumps(entry) + "\\n")
if args[:2] == ["manifest", "inspect"]:
    sys.exit(0 if args[2] in {list(present)!r} else 1)
sys.exit({exit_code})
""")
    script.chmod(0o755)
    return log_file


def calls(log_file: Path) -> list[dict[str, Any]]:
    if not log_file.exists():
        return []
    return [json.loads(line) for line in log_file.read_text().splitlines()]


def run_kai(*args: str, path: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`kai ARGS` as its own process with PATH set to `path` only."""
    env = {**os.environ, "PATH": str(path),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                         if p)}
    code = "import sys; from renderer.cli import main; sys.argv[0] = 'kai'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def rendered_images(root: Path) -> set[str]:
    out = set()
    for path in (root / "rendered" / "demo").rglob("deployment-*.yaml"):
        pod = yaml.safe_load(path.read_text())["spec"]["template"]["spec"]
        out |= {c["image"] for c in pod["containers"]}
    return out


def listed(root: Path) -> list[str]:
    return kai("build", "--list", "--repo", str(root)).output.splitlines()


# --- add, start, render -----------------------------------------------------------------------


def test_a_version_with_requirements_needs_build_in_kai_yaml(repo: Path, tmp_path: Path) -> None:
    version = model_version(tmp_path / "model-v1")
    result = kai("add", str(version), "--repo", str(repo), ok=False)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: version model-v1 needs an image of its own, since it has a requirements.txt, "
        "but kai.yaml has no `build:`; add `build: {registry: REGISTRY}` to kai.yaml, with a "
        "registry you push to (see docs/version-images.md)"]
    assert not (repo / "versions" / "model-v1").exists()
    assert log(repo) == ["kai: init demo (namespace kai-demo)"] and clean(repo)
    with_build(repo)
    kai("add", str(version), "--repo", str(repo))
    kai("start", "model-v1", "--repo", str(repo))
    (line,) = listed(repo)
    name, image = line.split(" ")
    assert name == "model-v1"
    assert image.startswith(f"{REGISTRY}/demo-model-v1:") and len(image.split(":")[-1]) == 10
    folder = repo / "rendered" / "demo" / "model-v1"
    assert sorted(p.name for p in folder.iterdir()) == [
        "deployment-model-v1-entrypoint.yaml", "deployment-model-v1-etl.yaml",
        "deployment-model-v1-inference.yaml", "deployment-model-v1-output.yaml",
        "service-model-v1.yaml"]
    assert rendered_images(repo) == {image}
    kai("render", "--check", "--repo", str(repo))
    assert "build:\n  registry: registry.example.com/kai   # where version images go\n" in \
        (repo / "kai.yaml").read_text()  # kai's edits keep the section and its comment
    # the rendered tree passes the strict schema check of the real tool
    validate_strict(rendered_files(repo / "rendered"), DEFAULT_KUBERNETES_VERSION)
    if shutil.which("kubectl"):
        built = subprocess.run(["kubectl", "kustomize", str(repo / "rendered" / "demo")],
                               capture_output=True, text=True, check=False, timeout=120)
        assert built.returncode == 0, built.stderr
        objs = [o for o in yaml.safe_load_all(built.stdout) if o]
        assert {c["image"] for o in objs if o["kind"] == "Deployment"
                for c in o["spec"]["template"]["spec"]["containers"]} == {image}
        assert "ConfigMap" not in {o["kind"] for o in objs}


def test_the_tag_follows_the_sources_not_the_state(repo: Path, tmp_path: Path) -> None:
    with_build(repo)
    kai("add", str(model_version(tmp_path / "model-v1")), "--repo", str(repo))
    kai("start", "model-v1", "--repo", str(repo))
    (first,) = listed(repo)
    kai("publish", "model-v1", "--repo", str(repo))
    assert listed(repo) == [first]
    (repo / "versions" / "model-v1" / "requirements.txt").write_text("scikit-learn==1.5.2\n")
    (second,) = listed(repo)
    assert second != first
    kai("render", "--repo", str(repo))
    assert rendered_images(repo) == {second.split(" ")[1]}
    kai("stop", "model-v1", "--repo", str(repo), ok=False)  # uncommitted edits: refused
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "pin scikit-learn")
    kai("unpublish", "model-v1", "--repo", str(repo))
    kai("stop", "model-v1", "--repo", str(repo))
    assert listed(repo) == []  # a stopped version is not in the rendered tree


# --- kai build --------------------------------------------------------------------------------


@pytest.fixture
def built_repo(repo: Path, tmp_path: Path) -> Path:
    with_build(repo)
    kai("add", str(model_version(tmp_path / "model-v1")), "--repo", str(repo))
    kai("start", "model-v1", "--repo", str(repo))
    return repo


def test_kai_build_without_a_tool_prints_the_commands(built_repo: Path, tmp_path: Path) -> None:
    path = bindir(tmp_path)
    done = run_kai("build", "model-v1", "--push", "--repo", str(built_repo), path=path)
    assert done.returncode == EXIT_NO_TOOL == 3, done.stderr
    image = listed(built_repo)[0].split(" ")[1]
    context = built_repo / ".kai" / "build" / "model-v1"
    assert done.stdout.splitlines() == [
        f"wrote the build context of {image} to {context}",
        f"docker build -t {image} {context}",
        f"docker push {image}",
    ]
    assert done.stderr.splitlines() == [
        "kai build: no docker, buildah or podman on PATH; build the image with:"]
    assert (context / "Dockerfile").read_text().splitlines()[2] == (
        "FROM registry.example.com/kai/runner-ml:0.1.0")
    assert (context / "version" / "requirements.txt").read_text() == "scikit-learn\n"
    assert clean(built_repo)  # .kai/ is ignored: the context is no change to commit
    # a tool asked for by name, when it is not there
    done = run_kai("build", "model-v1", "--tool", "podman", "--repo", str(built_repo),
                   path=path)
    assert done.returncode == 3
    assert done.stdout.splitlines()[1:] == [f"podman build -t {image} {context}"]
    assert done.stderr.splitlines() == [
        "kai build: podman is not on PATH; build the image with:"]


def test_kai_build_runs_the_tool_it_finds(built_repo: Path, tmp_path: Path) -> None:
    path = bindir(tmp_path)
    docker_log = fake_tool(path, "docker")
    podman_log = fake_tool(path, "podman")
    out = tmp_path / "ctx"
    done = run_kai("build", "model-v1", "--output", str(out), "--push", "--repo",
                   str(built_repo), path=path)
    assert done.returncode == 0, done.stderr
    image = listed(built_repo)[0].split(" ")[1]
    assert calls(docker_log) == [
        {"argv": ["build", "-t", image, str(out)], "dockerfile": True},
        {"argv": ["push", image]},
    ]
    assert calls(podman_log) == []
    assert done.stdout.splitlines() == [
        f"wrote the build context of {image} to {out}",
        f"+ docker build -t {image} {out}",
        f"+ docker push {image}",
        f"built and pushed {image}",
    ]
    assert not (built_repo / ".kai" / "build").exists()
    # --tool picks another; without --push nothing is pushed
    done = run_kai("build", "model-v1", "--output", str(out), "--tool", "podman", "--repo",
                   str(built_repo), path=path)
    assert done.returncode == 0, done.stderr
    assert calls(podman_log) == [{"argv": ["build", "-t", image, str(out)], "dockerfile": True}]
    assert done.stdout.splitlines()[-1] == f"built {image}"
    # buildah's verb is `bud`
    buildah_log = fake_tool(path, "buildah")
    (path / "docker").unlink()
    done = run_kai("build", "model-v1", "--output", str(out), "--repo", str(built_repo),
                   path=path)
    assert done.returncode == 0, done.stderr
    assert calls(buildah_log) == [{"argv": ["bud", "-t", image, str(out)], "dockerfile": True}]


def test_kai_build_says_when_the_tool_fails(built_repo: Path, tmp_path: Path) -> None:
    path = bindir(tmp_path)
    docker_log = fake_tool(path, "docker", exit_code=7)
    done = run_kai("build", "model-v1", "--push", "--repo", str(built_repo), path=path)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == "error: `docker build` exited with code 7"
    assert [c["argv"][0] for c in calls(docker_log)] == ["build"]  # no push after a failure


def test_kai_build_of_a_version_that_needs_no_image(repo: Path, tmp_path: Path) -> None:
    with_build(repo)
    kai("add", str(make_version(tmp_path / "plain-v1", "plain-v1")), "--repo", str(repo))
    path = bindir(tmp_path)
    docker_log = fake_tool(path)
    done = run_kai("build", "plain-v1", "--repo", str(repo), path=path)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert line.startswith("version plain-v1 needs no image: it has no requirements.txt and its "
                           "files fit in a ConfigMap (")
    assert line.endswith(" of 1008 KiB (1032192 bytes))")
    assert calls(docker_log) == [] and not (repo / ".kai" / "build").exists()


def test_kai_build_input_errors(built_repo: Path, tmp_path: Path) -> None:
    result = kai("build", "nope-v1", "--repo", str(built_repo), ok=False)
    assert (result.exit_code, result.stderr) == (
        1, "error: no version nope-v1 in kai.yaml (known: model-v1)\n")
    result = kai("build", "--repo", str(built_repo), ok=False)
    assert result.exit_code == 2 and "name the VERSION to build (or pass --list)" in result.stderr
    result = kai("build", "model-v1", "--list", "--repo", str(built_repo), ok=False)
    assert result.exit_code == 2 and "--list takes no VERSION" in result.stderr
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    result = kai("build", "model-v1", "--output", str(mine), "--repo", str(built_repo), ok=False)
    assert result.exit_code == 1
    assert result.stderr == (f"error: {mine} is not empty and holds no build context kai "
                             "wrote; name an empty or new folder\n")
    assert "Traceback" not in result.output + result.stderr
    for option in ("--output", "--push", "--tool", "--list", "--repo"):
        assert option in kai("build", "--help").output


def test_kai_build_outside_git_ignores_writes_a_temp_folder(built_repo: Path,
                                                            tmp_path: Path) -> None:
    (built_repo / ".gitignore").write_text("__pycache__/\n")
    git(built_repo, "commit", "-qam", "no ignored .kai/")
    done = run_kai("build", "model-v1", "--repo", str(built_repo), path=bindir(tmp_path))
    assert done.returncode == 3
    first = done.stdout.splitlines()[0]
    context = Path(first.rsplit(" to ", 1)[1])
    assert context.name.startswith("kai-build-model-v1-") and context.is_dir()
    assert not (built_repo / ".kai" / "build").exists()
    shutil.rmtree(context)


# --- the CI job ---------------------------------------------------------------------------------


def workflow_job(root: Path) -> dict[str, Any]:
    doc = yaml.safe_load((root / ".github" / "workflows" / "kai.yaml").read_text())
    assert isinstance(doc, dict)
    job = doc["jobs"]["images"]
    assert isinstance(job, dict)
    return job


def step(job: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [s for s in job["steps"] if s.get("name") == name]
    assert isinstance(found, dict)
    return found


def run_step(job: dict[str, Any], name: str, root: Path, path: Path,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A step's shell as GitHub Actions runs `shell: bash` (bash -eo pipefail), in the job's
    working directory, with a `kai` of this checkout and only `path` on PATH."""
    found = step(job, name)
    assert found["shell"] == "bash"
    shim = path / "kai"
    shim.write_text(
        f"#!/bin/sh\nexec {sys.executable} -c "
        "'import sys; from renderer.cli import main; sys.argv[0] = \"kai\"; main()' \"$@\"\n")
    shim.chmod(0o755)
    full = {**os.environ, "PATH": str(path), **(env or {}),
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                          if p)}
    cwd = root / job.get("defaults", {}).get("run", {}).get("working-directory", ".")
    bash = shutil.which("bash")
    assert bash
    return subprocess.run([bash, "--noprofile", "--norc", "-eo", "pipefail", "-c",
                           found["run"]], cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=300, check=False)


def test_the_ci_job_builds_and_pushes_what_the_registry_lacks(repo: Path,
                                                              tmp_path: Path) -> None:
    job = workflow_job(repo)
    assert job["needs"] == "kai"
    assert job["env"] == {"KAI_REGISTRY_USERNAME": "${{ secrets.KAI_REGISTRY_USERNAME }}",
                          "KAI_REGISTRY_PASSWORD": "${{ secrets.KAI_REGISTRY_PASSWORD }}"}
    assert [s.get("uses", s.get("name")) for s in job["steps"]] == [
        "actions/checkout@v4", "actions/setup-python@v5", "Install kai",
        "Log in to the registry", "Build and push the missing version images"]
    assert step(job, "Log in to the registry")["if"] == "env.KAI_REGISTRY_USERNAME != ''"
    run = step(job, "Build and push the missing version images")["run"]
    assert "kai build --list" in run and 'docker manifest inspect "$image"' in run
    assert 'kai build "$version" --push --tool docker' in run
    # nothing to build yet: the job does nothing, and says nothing
    path = bindir(tmp_path, "awk", "sort")
    docker_log = fake_tool(path)
    done = run_step(job, "Build and push the missing version images", repo, path)
    assert (done.returncode, done.stdout, calls(docker_log)) == (0, "", [])
    # three versions: one image is in the registry, one is not, one version needs none
    with_build(repo)
    for name in ("a-v1", "b-v1"):
        kai("add", str(model_version(tmp_path / name, name)), "--repo", str(repo))
        kai("start", name, "--repo", str(repo))
    kai("add", str(make_version(tmp_path / "plain-v1", "plain-v1")), "--repo", str(repo))
    kai("start", "plain-v1", "--repo", str(repo))
    images = dict(line.split(" ") for line in listed(repo))
    assert sorted(images) == ["a-v1", "b-v1"]
    docker_log = fake_tool(path, present=(images["a-v1"],))
    done = run_step(job, "Log in to the registry", repo, path,
                    {"KAI_REGISTRY_USERNAME": "bot", "KAI_REGISTRY_PASSWORD": "s3cret"})
    assert done.returncode == 0, done.stderr
    assert calls(docker_log) == [{"argv": ["login", "registry.example.com", "--username", "bot",
                                           "--password-stdin"], "stdin": "s3cret\n"}]
    docker_log.unlink()
    done = run_step(job, "Build and push the missing version images", repo, path)
    assert done.returncode == 0, done.stderr
    context = repo / ".kai" / "build" / "b-v1"
    assert [c["argv"] for c in calls(docker_log)] == [
        ["manifest", "inspect", images["a-v1"]],
        ["manifest", "inspect", images["b-v1"]],
        ["build", "-t", images["b-v1"], str(context)],
        ["push", images["b-v1"]],
    ]
    assert f"{images['a-v1']} is in the registry" in done.stdout.splitlines()
    assert clean(repo)
    # a failing push fails the job
    fake_tool(path, exit_code=1)
    done = run_step(job, "Build and push the missing version images", repo, path)
    assert done.returncode != 0


def test_the_ci_workflow_is_deterministic_and_follows_the_subfolder(tmp_path: Path) -> None:
    for name in ("a", "b"):
        kai("init", str(tmp_path / name), "--project", "demo", "--namespace", "ns")
    a, b = (tmp_path / n / ".github" / "workflows" / "kai.yaml" for n in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    top = tmp_path / "mono"
    from renderer import git as gitlib

    gitlib.init(top, "main")
    kai("init", str(top / "ops" / "kai"), "--project", "demo", "--namespace", "ns")
    doc = yaml.safe_load((top / ".github" / "workflows" / "kai-demo.yaml").read_text())
    assert doc["jobs"]["images"]["defaults"] == {"run": {"working-directory": "ops/kai"}}


def test_a_version_too_large_for_a_configmap_ships_in_its_image(repo: Path,
                                                                tmp_path: Path) -> None:
    from renderer.plan import CONFIGMAP_LIMIT

    with_build(repo)
    big = make_version(tmp_path / "big-v1", "big-v1")
    (big / "data").mkdir()
    (big / "data" / "table.csv").write_text("1," * (CONFIGMAP_LIMIT // 2 + 1))
    kai("add", str(big), "--repo", str(repo))
    kai("start", "big-v1", "--repo", str(repo))
    ((name, image),) = (line.split(" ") for line in listed(repo))
    assert name == "big-v1" and rendered_images(repo) == {image}
    assert not any("configmap" in p.name for p in (repo / "rendered").rglob("*.yaml"))
    out = tmp_path / "ctx"
    done = run_kai("build", "big-v1", "--output", str(out), "--repo", str(repo),
                   path=bindir(tmp_path))
    assert done.returncode == 3
    assert (out / "version" / "data" / "table.csv").read_bytes() == \
        (big / "data" / "table.csv").read_bytes()
    assert "pip install" not in (out / "Dockerfile").read_text()
