"""renderer.build: when a version needs an image of its own, its content hash and tag, its
build context byte for byte, and how such a version renders."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from renderer import build
from renderer.build import (
    MTIME,
    BuildError,
    NeedsBuild,
    build_commands,
    dockerfile,
    find_tool,
    image_need,
    rendered_images,
    version_image,
    write_context,
)
from renderer.images import default_images
from renderer.krt import Node, Version, Workflow
from renderer.plan import CONFIGMAP_LIMIT, PlanError, build_plan
from renderer.problems import InputError
from renderer.project import (
    Build,
    BuildOverride,
    ConfigSource,
    Project,
    Resources,
    Runtime,
    VersionState,
)
from renderer.projectfile import dump_project, edit_project, load_project
from renderer.render import RenderError, render_project, render_version
from renderer.validate import validate_repo
from runner import contract

REGISTRY = "registry.example.com/kai"
PROTO = """syntax = "proto3";
message Req { string name = 1; }
message Resp { string greeting = 1; }
service Entrypoint { rpc PyGreet (Req) returns (Resp); }
"""
HANDLER = "def handler(ctx, data):\n    return data\n"
KRT = """version: model-v1
description: A model that needs scikit-learn.
entrypoint:
  proto: public_input.proto
  image: konstellation/kre-entrypoint:1.6.0
nodes:
  - name: etl
    image: konstellation/kre-py:1.23.0
    src: src/etl/main.py
  - name: model
    image: konstellation/kre-py:1.23.0
    src: src/model/main.py
workflows:
  - name: predict
    entrypoint: PyGreet
    sequential: [etl, model]
"""


def write_version(root: Path, name: str = "model-v1", requirements: str | None = "scikit-learn\n",
                  krt: str = KRT) -> Version:
    """A version with two nodes, a data file and (unless None) a requirements.txt."""
    vdir = root / "versions" / name
    for node in ("etl", "model"):
        (vdir / "src" / node).mkdir(parents=True, exist_ok=True)
        (vdir / "src" / node / "main.py").write_text(HANDLER)
    (vdir / "src" / "model" / "weights.bin").write_bytes(bytes(range(256)))
    (vdir / "public_input.proto").write_text(PROTO)
    (vdir / "krt.yml").write_text(krt.replace("model-v1", name))
    if requirements is not None:
        (vdir / "requirements.txt").write_text(requirements)
    return Version(
        name=name, description="A model that needs scikit-learn.", proto="public_input.proto",
        entrypoint_image="konstellation/kre-entrypoint:1.6.0",
        nodes=(Node("etl", "konstellation/kre-py:1.23.0", "src/etl/main.py"),
               Node("model", "konstellation/kre-py:1.23.0", "src/model/main.py")),
        workflows=(Workflow("predict", "PyGreet", ("etl", "model")),),
        directory=vdir,
    )


DEFAULT_BUILD = Build(REGISTRY)


def make_project(root: Path, states: dict[str, str] | None = None, *,
                 build_settings: Build | None = DEFAULT_BUILD, **kw: Any) -> Project:
    return Project(
        name="demo", namespace="demo", root=root, images=default_images(),
        build=build_settings,
        versions={n: VersionState(s) for n, s in (states or {"model-v1": "started"}).items()},
        **kw,
    )


def image_of(project: Project, version: Version) -> build.VersionImage:
    image = version_image(project, version)
    assert image is not None
    return image


def tag(project: Project, version: Version) -> str:
    return image_of(project, version).tag


def listing(folder: Path) -> list[tuple[str, int, int, bytes]]:
    """Every entry below `folder`: (relative path, mode, mtime, content), sorted."""
    out = []
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() else b""
        out.append((path.relative_to(folder).as_posix(), stat.S_IMODE(st.st_mode),
                    int(st.st_mtime), data))
    return out


# --- the golden context ----------------------------------------------------------------------

GOLDEN_DOCKERFILE = (
    "# Written by `kai build` for version model-v1 of project demo (Dockerfile template 1).\n"
    "# The image is registry.example.com/kai/demo-model-v1, tagged with a hash of this "
    "context.\n"
    "FROM registry.example.com/kai/runner-ml:0.1.0\n"
    "USER 0\n"
    "COPY version/ /opt/kai/version/\n"
    "RUN cd /opt/kai/version && pip install --no-cache-dir -c /opt/kai/constraints.txt "
    "-r requirements.txt\n"
    "USER 10001\n"
)
GOLDEN_TAG = "registry.example.com/kai/demo-model-v1:5527877a95"


def test_the_context_byte_for_byte(tmp_path: Path) -> None:
    version = write_version(tmp_path)
    project = make_project(tmp_path)
    image = image_of(project, version)
    assert image.tag == GOLDEN_TAG
    assert dockerfile(image) == GOLDEN_DOCKERFILE
    out = write_context(image, tmp_path / "ctx")
    assert out == tmp_path / "ctx"
    assert listing(out) == [
        ("Dockerfile", 0o644, MTIME, GOLDEN_DOCKERFILE.encode()),
        ("version", 0o755, MTIME, b""),
        ("version/krt.yml", 0o644, MTIME, KRT.encode()),
        ("version/public_input.proto", 0o644, MTIME, PROTO.encode()),
        ("version/requirements.txt", 0o644, MTIME, b"scikit-learn\n"),
        ("version/src", 0o755, MTIME, b""),
        ("version/src/etl", 0o755, MTIME, b""),
        ("version/src/etl/main.py", 0o644, MTIME, HANDLER.encode()),
        ("version/src/model", 0o755, MTIME, b""),
        ("version/src/model/main.py", 0o644, MTIME, HANDLER.encode()),
        ("version/src/model/weights.bin", 0o644, MTIME, bytes(range(256))),
    ]
    assert (int(out.stat().st_mtime), stat.S_IMODE(out.stat().st_mode)) == (MTIME, 0o755)


def test_a_version_without_requirements_copies_its_files_only(tmp_path: Path) -> None:
    version = write_version(tmp_path, requirements=None)
    (version.directory / "data").mkdir()
    (version.directory / "data" / "table.bin").write_bytes(b"\xff" * CONFIGMAP_LIMIT)
    project = make_project(tmp_path, build_settings=Build(REGISTRY, flavor="runner"))
    image = image_of(project, version)
    assert image.need.reason.startswith("its files take ")
    assert dockerfile(image) == (
        "# Written by `kai build` for version model-v1 of project demo (Dockerfile template 1).\n"
        "# The image is registry.example.com/kai/demo-model-v1, tagged with a hash of this "
        "context.\n"
        "FROM registry.example.com/kai/runner:0.1.0\n"
        "COPY version/ /opt/kai/version/\n"
        "USER 10001\n"
    )


def test_the_context_is_the_same_bytes_wherever_and_whenever_written(tmp_path: Path) -> None:
    version = write_version(tmp_path)
    project = make_project(tmp_path)
    first = listing(write_context(image_of(project, version), tmp_path / "a"))
    # the sources' own time stamps and modes do not reach the context
    for path in version.directory.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
        if path.is_file():
            path.chmod(0o600)
    old = os.umask(0o077)
    try:
        second = listing(write_context(image_of(project, version), tmp_path / "b" / "c"))
    finally:
        os.umask(old)
    assert second == first
    # written again into the same folder: replaced, still the same
    again = write_context(image_of(project, version), tmp_path / "a")
    assert listing(again) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "versions"]


def test_the_context_replaces_only_a_context(tmp_path: Path) -> None:
    version = write_version(tmp_path)
    image = image_of(make_project(tmp_path), version)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(BuildError, match="is not empty and holds no build context kai wrote"):
        write_context(image, mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(BuildError, match="is not a folder"):
        write_context(image, tmp_path / "file")
    (tmp_path / "empty").mkdir()
    write_context(image, tmp_path / "empty")
    assert (tmp_path / "empty" / "Dockerfile").is_file()


def test_files_that_change_while_copied_are_caught(tmp_path: Path) -> None:
    version = write_version(tmp_path)
    image = image_of(make_project(tmp_path), version)
    (version.directory / "src" / "etl" / "main.py").write_text("def handler(ctx, d):\n    pass\n")
    with pytest.raises(BuildError, match="changed while kai build copied them; run it again"):
        write_context(image, tmp_path / "ctx")
    assert not (tmp_path / "ctx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["versions"]  # no staging left behind


# --- the content hash --------------------------------------------------------------------------


def test_the_hash_follows_the_content(tmp_path: Path) -> None:
    version = write_version(tmp_path)
    project = make_project(tmp_path)
    vdir = version.directory
    seen = {tag(project, version)}

    def changed() -> None:
        new = tag(project, version)
        assert new not in seen
        seen.add(new)

    (vdir / "src" / "etl" / "main.py").write_text(HANDLER + "# changed\n")
    changed()
    (vdir / "src" / "etl" / "util.py").write_text("")  # an empty file added
    changed()
    (vdir / "src" / "etl" / "util.py").rename(vdir / "src" / "etl" / "util2.py")  # renamed
    changed()
    (vdir / "requirements.txt").write_text("scikit-learn==1.5.2\n")
    changed()
    (vdir / "src" / "model" / "weights.bin").write_bytes(bytes(range(255, -1, -1)))
    changed()
    project = replace(project, build=Build(REGISTRY, flavor="runner-gpu"))
    changed()
    project = replace(project, build=Build(REGISTRY, flavor="runner-gpu",
                                           base="registry.example.com/kai/runner-gpu:0.1.0"))
    assert tag(project, version) in seen  # the same base, named: the same image
    project = replace(project, build=Build(REGISTRY, base="ghcr.io/acme/base:2"))
    changed()
    project = replace(project, versions={"model-v1": VersionState(
        "started", build=BuildOverride(flavor="runner"))})
    changed()
    project = replace(project, versions={"model-v1": VersionState(
        "started", build=BuildOverride(base="ghcr.io/acme/base:3"))})
    changed()
    (vdir / "requirements.txt").unlink()
    (vdir / "big.bin").write_bytes(b"\0" * CONFIGMAP_LIMIT)  # still needs one: its size
    changed()


def test_the_hash_ignores_what_does_not_ship_and_kai_yaml_states(tmp_path: Path) -> None:
    version = write_version(tmp_path)
    vdir = version.directory
    (vdir / ".kaiignore").write_text("scratch/\n")
    project = make_project(tmp_path)
    first = tag(project, version)
    (vdir / "scratch").mkdir()
    (vdir / "scratch" / "notes.txt").write_text("not shipped")
    (vdir / "docs").mkdir()
    (vdir / "docs" / "index.md").write_text("# model-v1\n")
    (vdir / "src" / "etl" / "__pycache__").mkdir()
    (vdir / "src" / "etl" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    (vdir / "src" / "model" / "old.pyc").write_bytes(b"\0")
    (vdir / ".DS_Store").write_bytes(b"\0")
    os.utime(vdir / "krt.yml", (1, 1))
    assert tag(project, version) == first
    for state in ("stopped", "started", "published"):
        other = replace(project, versions={"model-v1": VersionState(
            state, ConfigSource("secret", "model-config"),
            Runtime(ack_wait=9.0))}, resources=Resources(limits={"cpu": "4"}))
        assert tag(other, version) == first
    # the project and registry name the image, they are not part of its hash (the base is)
    moved = replace(project, name="other",
                    build=Build("localhost:5000", base=f"{REGISTRY}/runner-ml:0.1.0"))
    assert image_of(moved, version).tag == f"localhost:5000/other-model-v1:{first.split(':')[-1]}"


def test_a_version_in_a_configmap_needs_no_image(tmp_path: Path) -> None:
    version = write_version(tmp_path, requirements=None)
    project = make_project(tmp_path)
    assert image_need(project, version) is None
    assert version_image(project, version) is None
    # a requirements.txt left out of what ships does not count
    (version.directory / "requirements.txt").write_text("pandas\n")
    (version.directory / ".kaiignore").write_text("requirements.txt\n")
    assert version_image(project, version) is None
    # nor one deeper in the tree
    (version.directory / ".kaiignore").unlink()
    (version.directory / "requirements.txt").rename(version.directory / "src" / "requirements.txt")
    assert version_image(project, version) is None


# --- refusals ---------------------------------------------------------------------------------


def test_an_image_without_build_is_refused_with_one_line(tmp_path: Path) -> None:
    version = write_version(tmp_path)
    project = make_project(tmp_path, build_settings=None)
    with pytest.raises(NeedsBuild) as info:
        image_need(project, version)
    assert str(info.value) == (
        "version model-v1 needs an image of its own, since it has a requirements.txt, but "
        "kai.yaml has no `build:`; add `build: {registry: REGISTRY}` to kai.yaml, with a "
        "registry you push to (see docs/version-images.md)")
    with pytest.raises(RenderError) as rendered:
        render_project(project, {"model-v1": version})
    assert [str(p) for p in rendered.value.problems] == [f"versions/model-v1: {info.value}"]


def test_a_custom_image_in_a_version_with_an_image_is_refused(tmp_path: Path) -> None:
    version = write_version(tmp_path)
    custom = replace(version, nodes=(*version.nodes[:1], replace(
        version.nodes[1], image="ghcr.io/acme/model:2")))
    project = make_project(tmp_path)
    with pytest.raises(PlanError) as info:
        build_plan(project, custom)
    assert str(info.value) == (
        "version model-v1 runs every process on an image kai builds (it has a "
        "requirements.txt), but node model names its own image ghcr.io/acme/model:2; give it "
        "a KRE image (konstellation/kre-entrypoint, konstellation/kre-py), or drop what makes "
        "the version need an image and bake it into that image")
    entry = replace(version, entrypoint_image="ghcr.io/acme/entry:1")
    with pytest.raises(PlanError, match=re.escape("but the entrypoint names its own image "
                                                  "ghcr.io/acme/entry:1;")):
        build_plan(project, entry)
    # without an image of its own, a custom image runs as given
    (version.directory / "requirements.txt").unlink()
    plan = build_plan(project, custom)
    assert {p.image for p in plan.nodes} == {"konstellation/kre-py:1.23.0",
                                             "ghcr.io/acme/model:2"}


def test_a_version_too_large_for_any_image_is_refused(tmp_path: Path) -> None:
    version = write_version(tmp_path)
    with open(version.directory / "huge.bin", "wb") as f:
        f.truncate(build.MAX_IMAGE_FILES)  # sparse
    with pytest.raises(PlanError, match=r"^version model-v1: its files take 1\.0 GiB \("):
        image_need(make_project(tmp_path), version)


# --- rendering ----------------------------------------------------------------------------------


def deployments(tree: dict[str, bytes]) -> list[dict[str, Any]]:
    return [yaml.safe_load(data) for path, data in tree.items()
            if path.split("/")[-1].startswith("deployment-")]


def test_a_version_with_an_image_renders_on_it_without_configmap(tmp_path: Path) -> None:
    version = write_version(tmp_path)
    plain = write_version(tmp_path, "plain-v1", requirements=None)
    project = make_project(tmp_path, {"model-v1": "published", "plain-v1": "started"})
    tree = render_project(project, {"model-v1": version, "plain-v1": plain})
    assert tree == render_project(project, {"model-v1": version, "plain-v1": plain})
    expected = tag(project, version)
    model = sorted(p for p in tree if p.startswith("model-v1/"))
    assert model == [
        "model-v1/deployment-model-v1-entrypoint.yaml",
        "model-v1/deployment-model-v1-etl.yaml",
        "model-v1/deployment-model-v1-model.yaml",
        "model-v1/ingress-active-entrypoint.yaml",
        "model-v1/service-active-entrypoint.yaml",
    ]
    assert not any(p.startswith("configmap-") for p in (p.split("/")[-1] for p in model))
    kustomization = yaml.safe_load(tree["kustomization.yaml"])
    assert [r for r in kustomization["resources"] if "configmap" in r] == [
        next(p for p in tree if p.startswith("plain-v1/configmap-plain-v1-files-"))]
    for dep in deployments({p: d for p, d in tree.items() if p.startswith("model-v1/")}):
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == expected
        assert [v["name"] for v in pod["volumes"]] == ["tmp"]
        assert [m["mountPath"] for m in container["volumeMounts"]] == [contract.TMP_DIR]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env[contract.ENV_VERSION_DIR] == contract.VERSION_MOUNT  # where the image has it
    for dep in deployments({p: d for p, d in tree.items() if p.startswith("plain-v1/")}):
        pod = dep["spec"]["template"]["spec"]
        assert [v["name"] for v in pod["volumes"]] == ["version", "tmp"]
        assert pod["containers"][0]["image"].startswith("konstellation/")
    assert [i.tag for i in rendered_images(project, {"model-v1": version,
                                                     "plain-v1": plain})] == [expected]


def test_a_version_too_large_for_a_configmap_renders_on_its_image(tmp_path: Path) -> None:
    version = write_version(tmp_path, requirements=None)
    (version.directory / "model.bin").write_bytes(b"\xff" * (CONFIGMAP_LIMIT + 1))
    project = make_project(tmp_path)
    tree = render_project(project, {"model-v1": version})
    assert not any("configmap" in p for p in tree)
    assert {c["image"] for d in deployments(tree)
            for c in d["spec"]["template"]["spec"]["containers"]} == {tag(project, version)}


def test_only_running_versions_name_their_images(tmp_path: Path) -> None:
    a, b = write_version(tmp_path, "a-v1"), write_version(tmp_path, "b-v1")
    project = make_project(tmp_path, {"a-v1": "stopped", "b-v1": "started"})
    assert [i.version for i in rendered_images(project, {"a-v1": a, "b-v1": b})] == ["b-v1"]


def test_kai_dev_runs_the_files_from_a_configmap(tmp_path: Path) -> None:
    version = write_version(tmp_path)
    for project in (make_project(tmp_path), make_project(tmp_path, build_settings=None)):
        plan = build_plan(project, version, "started", local=True)
        assert plan.version_image == ""
        assert "requirements.txt" in plan.files
        kinds = [o["kind"] for o in render_version(project, plan)]
        assert "ConfigMap" in kinds


# --- kai.yaml ---------------------------------------------------------------------------------


def write_kai(root: Path, body: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "kai.yaml").write_text("project: demo\nnamespace: kai-demo\n" + body)
    return root


def problems(root: Path, body: str) -> list[str]:
    write_kai(root, body)
    with pytest.raises(InputError) as info:
        load_project(root, root)
    return [str(p) for p in info.value.problems]


def base_of(project: Project, version: str) -> str:
    settings = project.build_of(version)
    assert settings is not None
    return settings.base_image


def test_build_settings_load_and_round_trip(tmp_path: Path) -> None:
    p = load_project(write_kai(tmp_path, (
        "build: {registry: registry.example.com/kai}\n"
        "versions:\n"
        "  a-v1: {state: started, build: {flavor: runner-gpu}}\n"
        "  b-v1: {build: {base: 'ghcr.io/acme/base:2'}}\n"
        "  c-v1: {}\n")))
    assert p.build == Build(REGISTRY, "runner-ml", "")
    assert p.build_of("a-v1") == Build(REGISTRY, "runner-gpu", "")
    assert base_of(p, "a-v1") == f"{REGISTRY}/runner-gpu:0.1.0"
    assert p.build_of("b-v1") == Build(REGISTRY, "runner-ml", "ghcr.io/acme/base:2")
    assert p.build_of("c-v1") == p.build_of("x-v1") == p.build
    assert base_of(p, "c-v1") == f"{REGISTRY}/runner-ml:0.1.0"
    text = dump_project(p)
    assert "build:\n  registry: registry.example.com/kai\n  flavor: runner-ml\n" in text
    assert load_project(write_kai(tmp_path / "again", "")) != p
    (tmp_path / "again" / "kai.yaml").write_text(text)
    assert load_project(tmp_path / "again") == replace(p, root=tmp_path / "again")
    # a project base, and a version that picks a flavor: that flavor's image, not the base
    p = load_project(write_kai(tmp_path, (
        "build: {registry: 'localhost:5000', flavor: runner, base: 'ghcr.io/acme/base:1'}\n"
        "versions:\n  a-v1: {build: {flavor: runner-ml}}\n  b-v1: {}\n")))
    assert base_of(p, "a-v1") == "localhost:5000/runner-ml:0.1.0"
    assert base_of(p, "b-v1") == "ghcr.io/acme/base:1"
    assert load_project(write_kai(tmp_path, "")).build is None


def test_edit_keeps_the_build_section(tmp_path: Path) -> None:
    text = ("project: demo\nnamespace: kai-demo\n"
            "build:\n  registry: registry.example.com/kai   # ours\n"
            "versions:\n  a-v1:\n    state: stopped\n    build: {flavor: runner}\n")
    (tmp_path / "kai.yaml").write_text(text)
    p = load_project(tmp_path)
    started = replace(p, versions={"a-v1": replace(p.versions["a-v1"], state="started")})
    assert edit_project(text, started) == text.replace("state: stopped", "state: started")


@pytest.mark.parametrize(("body", "line"), [
    ("build: {registry: 'registry.example.com/kai:1.0'}\n",
     'kai.yaml:3:19: build.registry: "registry.example.com/kai:1.0" does not match the pattern'),
    ("build: {registry: kai}\n", 'kai.yaml:3:19: build.registry: "kai" does not match'),
    ("build: {registry: Registry.example.com}\n",
     'kai.yaml:3:19: build.registry: "Registry.example.com" does not match'),
    ("build: {registry: 'registry.example.com/kai@sha256:00'}\n",
     'kai.yaml:3:19: build.registry: "registry.example.com/kai@sha256:00" does not match'),
    ("build: {flavor: runner-ml}\n", "kai.yaml:3:8: build.registry: required field is missing"),
    ("build: {registry: r.example.com, flavor: runner-cpu}\n",
     'kai.yaml:3:42: build.flavor: must be one of: runner, runner-ml, runner-gpu; got '
     '"runner-cpu" (did you mean "runner-gpu"?)'),
    ("build: {registry: r.example.com, base: 'Not An Image'}\n",
     'kai.yaml:3:40: build.base: "Not An Image" does not match the pattern'),
    ("build: {registry: r.example.com, push: true}\n",
     'kai.yaml:3:34: build.push: unknown field "push"'),
])
def test_build_schema_errors(tmp_path: Path, body: str, line: str) -> None:
    (found,) = problems(tmp_path, body)
    assert found.startswith(line), found


def test_registry_error_says_what_a_registry_looks_like(tmp_path: Path) -> None:
    (found,) = problems(tmp_path, "build: {registry: 'registry.example.com/kai:1.0'}\n")
    assert found.endswith(
        ": a registry host (with a '.' or a :port, or localhost) and an optional /path, "
        "lowercase, without a tag or digest (kai tags each version image with its content "
        "hash) (e.g. registry.example.com/kai)")
    for good in ("localhost", "localhost:5000/team/kai", "127.0.0.1:5000", "myhost:5000/x",
                 "ghcr.io/acme-corp/ml_models", "registry.example.com"):
        assert load_project(write_kai(tmp_path, f"build: {{registry: '{good}'}}\n")).build


def test_version_build_needs_the_project_build(tmp_path: Path) -> None:
    assert problems(tmp_path, "versions:\n  a-v1: {build: {flavor: runner}}\n") == [
        "kai.yaml:4:10: versions.a-v1.build: overrides the project's build settings, but "
        "kai.yaml has no top-level `build:`; add `build: {registry: REGISTRY}` (the registry "
        "version images are pushed to, see docs/version-images.md)"]
    assert problems(tmp_path, ("build: {registry: r.example.com}\n"
                               "versions:\n  a-v1: {build: {registry: x.example.com}}\n")) == [
        "kai.yaml:5:18: versions.a-v1.build.registry: the registry is project-wide (one per "
        "project), so a version cannot set it; set build.registry at the top level"]


# --- validate ---------------------------------------------------------------------------------


def test_validate_refuses_a_version_that_needs_an_image_in_any_state(tmp_path: Path) -> None:
    write_version(tmp_path)
    write_kai(tmp_path, "versions:\n  model-v1: {state: stopped}\n")
    report = validate_repo(tmp_path, tmp_path)
    assert report.lines() == [
        "kai.yaml:4:3: versions.model-v1: version model-v1 needs an image of its own, since it "
        "has a requirements.txt, but kai.yaml has no `build:`; add `build: {registry: "
        "REGISTRY}` to kai.yaml, with a registry you push to (see docs/version-images.md)"]
    write_kai(tmp_path, "build: {registry: registry.example.com/kai}\n"
                        "versions:\n  model-v1: {state: stopped}\n")
    assert validate_repo(tmp_path, tmp_path).ok


# --- the tools --------------------------------------------------------------------------------


def test_build_commands_and_tool_lookup(tmp_path: Path) -> None:
    image = image_of(make_project(tmp_path), write_version(tmp_path))
    ctx = tmp_path / "ctx"
    assert build_commands("docker", image, ctx, push=True) == [
        ["docker", "build", "-t", image.tag, str(ctx)], ["docker", "push", image.tag]]
    assert build_commands("buildah", image, ctx, push=False) == [
        ["buildah", "bud", "-t", image.tag, str(ctx)]]
    assert build_commands("podman", image, ctx, push=True)[0][:2] == ["podman", "build"]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    assert find_tool(str(bindir)) is None
    for name in ("podman", "buildah"):
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)
    assert find_tool(str(bindir)) == "buildah"
