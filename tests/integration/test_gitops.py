"""The GitOps flow against real git repos in tmp_path: init, add, lifecycle, render, status."""

from __future__ import annotations

import difflib
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from renderer import git as gitlib
from renderer.cli import COMMANDS
from renderer.project import VersionState
from renderer.projectfile import load_project
from tests.conftest import git
from tests.integration.gitops_helpers import (
    GREETER,
    clean,
    drop_build,
    head,
    kai,
    log,
    make_version,
    states,
)

pytestmark = pytest.mark.integration


def changed_in_head(repo: Path) -> set[str]:
    out = git(repo, "show", "--name-only", "--format=", "HEAD")
    return {line.split("/")[0] for line in out.splitlines() if line}


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "gitops"
    kai("init", str(root), "--project", "demo", "--namespace", "kai-demo")
    yield root


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    make_version(src / "greeter-v1", "greeter-v1")
    make_version(src / "greeter-v2", "greeter-v2")
    return src


@pytest.fixture
def populated(repo: Path, sources: Path) -> Path:
    kai("add", str(sources / "greeter-v1"), "--repo", str(repo))
    kai("add", str(sources / "greeter-v2"), "--repo", str(repo))
    return repo


# --- init ---------------------------------------------------------------------------------


def test_init_scaffolds_and_commits(repo: Path) -> None:
    assert (repo / ".git").is_dir()
    assert gitlib.current_branch(repo) == "main"
    assert log(repo) == ["kai: init demo (namespace kai-demo)"]
    assert clean(repo)
    doc = yaml.safe_load((repo / "kai.yaml").read_text())
    assert doc["project"] == "demo" and doc["namespace"] == "kai-demo"
    assert doc["images"] == [
        {"name": "konstellation/kre-entrypoint", "newName": "registry.example.com/kai/runner",
         "newTag": "0.1.0"},
        {"name": "konstellation/kre-py", "newName": "registry.example.com/kai/runner-ml",
         "newTag": "0.1.0"},
        {"name": "konstellation/kre-py", "newName": "registry.example.com/kai/runner-gpu",
         "newTag": "0.1.0", "gpu": True},
    ]
    text = (repo / "kai.yaml").read_text()
    comment = text[:text.index("\nimages:\n")].rsplit("\n\n", 1)[-1].split("\n")
    assert [line for line in comment if line.startswith("#")][-1] == (
        "# registry.example.com/kai is a placeholder: replace it with your registry.")
    assert "GRPC" in (repo / "kai.yaml").read_text()
    assert (repo / "versions" / ".gitkeep").is_file()
    assert (repo / ".gitignore").is_file()
    assert (repo / "rendered" / "demo" / "kustomization.yaml").is_file()
    deploy = sorted(p.relative_to(repo / "deploy").as_posix()
                    for p in (repo / "deploy").rglob("*.yaml"))
    assert any(p.startswith("argocd/") for p in deploy)
    assert sum(p.startswith("flux/") for p in deploy) == 2
    argo = next((repo / "deploy" / "argocd").glob("*.yaml")).read_text()
    assert "rendered/demo" in argo
    assert "git.example.com" in argo and "kai init found no git remote" in argo


def test_init_refuses_existing_project(repo: Path) -> None:
    result = kai("init", str(repo), "--project", "x", "--namespace", "y", ok=False)
    assert result.exit_code == 1
    assert "kai.yaml already exists" in result.stderr
    assert "Traceback" not in result.output


def test_init_uses_origin_url_and_branch(tmp_path: Path) -> None:
    root = tmp_path / "r"
    gitlib.init(root, "trunk")
    git(root, "remote", "add", "origin", "https://example.com/team/gitops.git")
    kai("init", str(root), "--project", "demo", "--namespace", "ns", "--branch", "trunk")
    argo = next((root / "deploy" / "argocd").glob("*.yaml")).read_text()
    assert "https://example.com/team/gitops.git" in argo and "trunk" in argo
    assert yaml.safe_load(argo)["spec"]["source"]["path"] == "rendered/demo"
    assert "kai init found no git remote" not in argo
    assert gitlib.current_branch(root) == "trunk"


def test_init_inside_a_bigger_repo_points_deploy_at_its_subfolder(tmp_path: Path) -> None:
    top = tmp_path / "mono"
    gitlib.init(top, "main")
    kai("init", str(top / "ops" / "kai"), "--project", "demo", "--namespace", "ns",
        "--repo-url", "https://example.com/mono.git")
    argo = yaml.safe_load(next((top / "ops" / "kai" / "deploy" / "argocd").glob("*.yaml"))
                          .read_text())
    assert argo["spec"]["source"]["path"] == "ops/kai/rendered/demo"
    flux = yaml.safe_load((top / "ops" / "kai" / "deploy" / "flux" / "kustomization-demo.yaml")
                          .read_text())
    assert flux["spec"]["path"] == "./ops/kai/rendered/demo"


def test_init_explicit_repo_url_and_bad_names(tmp_path: Path) -> None:
    kai("init", str(tmp_path / "a"), "--project", "demo", "--namespace", "ns",
        "--repo-url", "git@example.com:me/ops.git")
    flux = yaml.safe_load((tmp_path / "a" / "deploy/flux/gitrepository-demo.yaml").read_text())
    assert flux["spec"]["url"] == "ssh://git@example.com/me/ops.git"  # Flux refuses scp-like
    argo = yaml.safe_load((tmp_path / "a" / "deploy/argocd/application-demo.yaml").read_text())
    assert argo["spec"]["source"]["repoURL"] == "git@example.com:me/ops.git"  # Argo CD takes it
    bad = kai("init", str(tmp_path / "b"), "--project", "Demo_1", "--namespace", "ns", ok=False)
    assert bad.exit_code == 1
    assert "--project 'Demo_1' is not a valid Kubernetes name" in bad.stderr
    assert not (tmp_path / "b" / "kai.yaml").exists()


def test_init_registry_fills_the_image_map(tmp_path: Path) -> None:
    root = tmp_path / "r"
    kai("init", str(root), "--project", "demo", "--namespace", "ns",
        "--registry", "ghcr.io/acme")
    text = (root / "kai.yaml").read_text()
    lines = text.splitlines()
    at = lines.index("images:")
    assert lines[at - 3:at] == [
        "# The runner images the KRE images run as (a gpu: true entry: on gpu nodes only).",
        "# They live in a registry you own and must push them to: see docs/runner-image.md;",
        "# `kai init --registry REGISTRY` writes this map for REGISTRY.",
    ]
    assert "placeholder" not in text and "registry.example.com" not in text
    assert [(i["newName"], i.get("gpu", False)) for i in yaml.safe_load(text)["images"]] == [
        ("ghcr.io/acme/runner", False), ("ghcr.io/acme/runner-ml", False),
        ("ghcr.io/acme/runner-gpu", True)]
    kust = yaml.safe_load((root / "rendered/demo/kustomization.yaml").read_text())
    assert [i["newName"] for i in kust["images"]] == ["ghcr.io/acme/runner",
                                                      "ghcr.io/acme/runner-ml"]
    again = tmp_path / "again"
    kai("init", str(again), "--project", "demo", "--namespace", "ns",
        "--registry", "ghcr.io/acme")
    assert (again / "kai.yaml").read_text() == text  # deterministic
    assert kai("render", "--check", "--repo", str(root)).exit_code == 0


@pytest.mark.parametrize(("registry", "problem"), [
    ("acme", "must start with the registry's host"),
    ("ghcr.io/Acme", "path component 'Acme' must be lower-case"),
    ("ghcr.io/acme:1.0", "must not carry a tag"),
])
def test_init_refuses_a_bad_registry_in_one_line(tmp_path: Path, registry: str,
                                                 problem: str) -> None:
    bad = kai("init", str(tmp_path / "r"), "--project", "demo", "--namespace", "ns",
              "--registry", registry, ok=False)
    assert bad.exit_code == 1
    assert bad.stderr.startswith(f"error: --registry {registry!r}: {problem}")
    assert len(bad.stderr.splitlines()) == 1 and "Traceback" not in bad.output
    assert not (tmp_path / "r").exists()
    assert "--registry" in kai("init", "--help").stdout


# --- add --------------------------------------------------------------------------------------


def test_add_copies_registers_stopped_and_commits(repo: Path, sources: Path) -> None:
    src = sources / "greeter-v1"
    (src / "src" / "etl" / "__pycache__").mkdir()
    (src / "src" / "etl" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    (src / "outside-link").symlink_to("/etc/hostname")
    (src / "inner-link.txt").symlink_to("krt.yml")
    before = head(repo)
    result = kai("add", str(src), "--repo", str(repo))
    assert "add greeter-v1" in result.output
    assert git(repo, "rev-list", f"{before}..HEAD").count("\n") == 1
    assert log(repo)[0] == "kai: add greeter-v1"
    assert states(repo) == {"greeter-v1": "stopped"}
    target = repo / "versions" / "greeter-v1"
    assert (target / "krt.yml").read_bytes() == (src / "krt.yml").read_bytes()
    assert not list(target.rglob("__pycache__"))
    assert not (target / "outside-link").exists()
    assert (target / "inner-link.txt").is_file() and not (target / "inner-link.txt").is_symlink()
    assert not any(p.is_symlink() for p in target.rglob("*"))
    assert clean(repo)


def test_add_refuses_existing_unless_force(populated: Path, sources: Path) -> None:
    same = kai("add", str(sources / "greeter-v1"), "--repo", str(populated))
    assert same.output.startswith("nothing to do: ")  # the same files: retry-safe
    kai("start", "greeter-v1", "--repo", str(populated))
    changed = sources / "greeter-v1" / "src" / "etl" / "main.py"
    changed.write_text(changed.read_text("utf-8") + "# changed\n", "utf-8")
    again = kai("add", str(sources / "greeter-v1"), "--repo", str(populated), ok=False)
    assert again.exit_code == 1
    assert "versions/greeter-v1 already exists with other files; pass --force" in again.stderr
    kai("add", str(sources / "greeter-v1"), "--force", "--repo", str(populated))
    assert log(populated)[0] == "kai: add greeter-v1 (replaced, started)"
    assert states(populated)["greeter-v1"] == "started"  # keeps its state
    assert kai("render", "--check", "--repo", str(populated)).exit_code == 0
    assert clean(populated)


def test_add_from_krt_archive(repo: Path, tmp_path: Path) -> None:
    archive = tmp_path / "greeter-v1.krt"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(GREETER.rglob("*")):
            if "__pycache__" not in path.parts:
                tar.add(path, arcname=path.relative_to(GREETER).as_posix(), recursive=False)
    kai("add", str(archive), "--repo", str(repo))
    assert log(repo)[0] == "kai: add greeter-v1"
    assert (repo / "versions" / "greeter-v1" / "src" / "etl" / "main.py").is_file()
    assert states(repo) == {"greeter-v1": "stopped"}


def test_add_invalid_version_reports_problems(repo: Path, tmp_path: Path) -> None:
    bad = make_version(tmp_path / "bad", "bad-v1")
    text = (bad / "krt.yml").read_text().replace("[etl, inference, output]", "[etl, nope]")
    (bad / "krt.yml").write_text(text)
    result = kai("add", str(bad), "--repo", str(repo), ok=False)
    assert result.exit_code == 1
    assert "nope" in result.stderr and "krt.yml:" in result.stderr
    assert "Traceback" not in result.output
    assert not (repo / "versions" / "bad-v1").exists()
    assert log(repo) == ["kai: init demo (namespace kai-demo)"]


# --- lifecycle ----------------------------------------------------------------------------------


def test_lifecycle_one_commit_each(populated: Path) -> None:
    repo = populated
    steps = [
        (("start", "greeter-v1"), "kai: start greeter-v1", {"greeter-v1": "started"}),
        (("publish", "greeter-v1"), "kai: publish greeter-v1", {"greeter-v1": "published"}),
        (("start", "greeter-v2"), "kai: start greeter-v2", {"greeter-v2": "started"}),
        (("publish", "greeter-v2"), "kai: publish greeter-v2 (greeter-v1 → started)",
         {"greeter-v1": "started", "greeter-v2": "published"}),
        (("unpublish", "greeter-v2"), "kai: unpublish greeter-v2", {"greeter-v2": "started"}),
        (("stop", "greeter-v2"), "kai: stop greeter-v2", {"greeter-v2": "stopped"}),
    ]
    expected = {"greeter-v1": "stopped", "greeter-v2": "stopped"}
    for args, message, after in steps:
        before = head(repo)
        result = kai(*args, "--repo", str(repo))
        assert git(repo, "rev-list", "--count", f"{before}..HEAD").strip() == "1", args
        assert log(repo)[0] == message
        assert head(repo)[:12] in result.output
        expected.update(after)
        assert states(repo) == expected
        assert changed_in_head(repo) <= {"kai.yaml", "rendered"}
        assert clean(repo)
        assert kai("render", "--check", "--repo", str(repo)).exit_code == 0
        if args == ("publish", "greeter-v2"):
            assert "greeter-v1: published → started" in result.output
            assert (repo / "rendered/demo/greeter-v2/service-active-entrypoint.yaml").is_file()
            assert (repo / "rendered/demo/greeter-v1/service-greeter-v1.yaml").is_file()
    assert not (repo / "rendered/demo/greeter-v2").exists()


HAND_KAI = """\
# The demo project, edited by hand.
# kai keeps these comments.

namespace: kai-demo        # where the versions run
project: demo

images:   # our runner runs the KRE images
  - {name: konstellation/kre-py, newName: registry.example.com/kai/runner-ml, newTag: "0.1.0"}
  - {name: konstellation/kre-entrypoint, newName: registry.example.com/kai/runner, newTag: '0.1.0'}
resources: {requests: {cpu: 100m}}   # limits as kai's defaults

versions:
  # oldest first
  greeter-v1:
    state: 'stopped'     # quoted on purpose

  greeter-v2: {}         # nothing yet
# end of versions

kubernetesVersion: "1.35"
"""


def test_lifecycle_keeps_a_hand_edited_kai_yaml(populated: Path, sources: Path) -> None:
    """Comments, key order, flow mappings, quotes and blank lines survive every command:
    each changes only the lines of the states it changes."""
    repo = populated
    (repo / "kai.yaml").write_text(HAND_KAI)
    kai("render", "--repo", str(repo))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "kai.yaml by hand")
    model = load_project(repo)
    comments = [line[line.index("#"):] for line in HAND_KAI.splitlines() if "#" in line]
    make_version(sources / "greeter-v3", "greeter-v3")
    steps = [
        (("start", "greeter-v1"), {"greeter-v1": "started"},
         ["-     state: 'stopped'     # quoted on purpose",
          "+     state: 'started'     # quoted on purpose"]),
        (("publish", "greeter-v1"), {"greeter-v1": "published"},
         ["-     state: 'started'     # quoted on purpose",
          "+     state: 'published'   # quoted on purpose"]),
        (("start", "greeter-v2"), {"greeter-v2": "started"},
         ["-   greeter-v2: {}         # nothing yet", "+   greeter-v2:            # nothing yet",
          "+     state: started"]),
        (("publish", "greeter-v2"), {"greeter-v1": "started", "greeter-v2": "published"},
         ["-     state: 'published'   # quoted on purpose",
          "+     state: 'started'     # quoted on purpose",
          "-     state: started", "+     state: published"]),
        (("unpublish", "greeter-v2"), {"greeter-v2": "started"},
         ["-     state: published", "+     state: started"]),
        (("stop", "greeter-v2"), {"greeter-v2": "stopped"},
         ["-     state: started", "+     state: stopped"]),
        (("add", str(sources / "greeter-v3")), {"greeter-v3": "stopped"},
         ["+   greeter-v3:", "+     state: stopped"]),
    ]
    expected = {"greeter-v1": "stopped", "greeter-v2": "stopped"}
    for args, after, lines in steps:
        before = (repo / "kai.yaml").read_text()
        kai(*args, "--repo", str(repo))
        text = (repo / "kai.yaml").read_text()
        changed = [line for line in difflib.ndiff(before.splitlines(), text.splitlines())
                   if line.startswith(("- ", "+ "))]
        assert changed == lines, args
        assert [line[line.index("#"):] for line in text.splitlines() if "#" in line] == comments
        expected.update(after)
        assert load_project(repo) == replace(model, versions={
            name: VersionState(state) for name, state in expected.items()})
        assert clean(repo)
        assert kai("render", "--check", "--repo", str(repo)).exit_code == 0
    assert text.endswith("    state: stopped\n  greeter-v3:\n    state: stopped\n"
                         "# end of versions\n\nkubernetesVersion: \"1.35\"\n")


def test_illegal_transitions_are_refused_without_commit(populated: Path) -> None:
    repo = populated
    kai("start", "greeter-v1", "--repo", str(repo))
    kai("publish", "greeter-v1", "--repo", str(repo))
    before = head(repo)
    cases = {
        ("stop", "greeter-v1"): "unpublish it first with `kai unpublish greeter-v1`",
        ("publish", "greeter-v2"): "start it first with `kai start greeter-v2`",
        ("start", "nope"): "known versions: greeter-v1, greeter-v2",
        ("unpublish", "greeter-v2"): "not published",
    }
    for args, message in cases.items():
        result = kai(*args, "--repo", str(repo), ok=False)
        assert result.exit_code == 1, args
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.output
    assert head(repo) == before and clean(repo)


def test_start_refused_while_config_has_no_source(repo: Path, tmp_path: Path) -> None:
    src = make_version(tmp_path / "cfg", "cfg-v1", "config:\n  variables: [API_KEY]\n")
    kai("add", str(src), "--repo", str(repo))
    result = kai("start", "cfg-v1", "--repo", str(repo), ok=False)
    assert result.exit_code == 1
    assert "declares config (API_KEY)" in result.stderr
    assert "config: {secret: cfg-v1-config}" in result.stderr
    text = (repo / "kai.yaml").read_text()
    doc = yaml.safe_load(text)
    doc["versions"]["cfg-v1"]["config"] = {"secret": "cfg-v1-config"}
    (repo / "kai.yaml").write_text(yaml.safe_dump(doc))
    git(repo, "commit", "-qam", "config source")
    kai("start", "cfg-v1", "--repo", str(repo))
    assert states(repo)["cfg-v1"] == "started"


def test_branch_commits_for_a_pull_request(populated: Path) -> None:
    repo = populated
    kai("start", "greeter-v1", "--repo", str(repo))
    main_sha = head(repo)
    result = kai("publish", "greeter-v1", "--branch", "publish-v1", "--repo", str(repo))
    assert "git push -u origin publish-v1" in result.output
    assert gitlib.current_branch(repo) == "main"  # the checkout stays where it was
    assert git(repo, "rev-parse", "main").strip() == main_sha
    assert git(repo, "log", "-1", "--format=%s", "publish-v1").strip() == "kai: publish greeter-v1"
    assert git(repo, "rev-parse", "publish-v1~1").strip() == main_sha
    assert clean(repo)
    again = kai("unpublish", "greeter-v1", "--branch", "publish-v1", "--repo", str(repo), ok=False)
    assert again.exit_code == 1 and "branch 'publish-v1' already exists" in again.stderr
    assert states(repo)["greeter-v1"] == "started"  # nothing written on main


def test_no_commit_leaves_changes_uncommitted(populated: Path) -> None:
    repo = populated
    before = head(repo)
    result = kai("start", "greeter-v1", "--no-commit", "--repo", str(repo))
    assert "not committed" in result.output
    assert head(repo) == before
    status = git(repo, "status", "--porcelain", "--untracked-files=all")
    assert " M kai.yaml" in status and "rendered/demo/greeter-v1/" in status
    # and the next command refuses to overwrite them
    refused = kai("publish", "greeter-v1", "--repo", str(repo), ok=False)
    assert refused.exit_code == 1
    assert "uncommitted changes in kai.yaml" in refused.stderr
    assert "commit or stash them" in refused.stderr


def test_refuses_to_overwrite_uncommitted_changes(populated: Path) -> None:
    repo = populated
    kai("start", "greeter-v1", "--repo", str(repo))
    rendered = repo / "rendered/demo/kustomization.yaml"
    rendered.write_text(rendered.read_text() + "# hand edit\n")
    result = kai("publish", "greeter-v1", "--repo", str(repo), ok=False)
    assert result.exit_code == 1
    assert "rendered/demo/kustomization.yaml" in result.stderr
    git(repo, "checkout", "--", "rendered")
    source = repo / "versions/greeter-v1/src/etl/main.py"
    source.write_text(source.read_text() + "\n# wip\n")
    result = kai("publish", "greeter-v1", "--repo", str(repo), ok=False)
    assert "versions/greeter-v1/src/etl/main.py" in result.stderr
    assert states(repo)["greeter-v1"] == "started"


def test_not_a_repo_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no kai.yaml upwards from here
    result = kai("status", ok=False)
    assert result.exit_code == 1
    assert "no kai.yaml in" in result.stderr and len(result.stderr.splitlines()) == 1


# --- render --check and diff --------------------------------------------------------------------


def test_render_check_and_diff(populated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = populated
    kai("start", "greeter-v1", "--repo", str(repo))
    monkeypatch.chdir(repo / "versions")  # found from the cwd upwards
    ok = kai("render", "--check")
    assert "rendered/demo is up to date" in ok.output
    assert kai("diff").stdout == ""

    service = repo / "rendered/demo/greeter-v1/service-greeter-v1.yaml"
    service.write_text(service.read_text().replace("9000", "9001"))
    stale = kai("render", "--check", ok=False)
    assert stale.exit_code == 1
    assert "changed: rendered/demo/greeter-v1/service-greeter-v1.yaml" in stale.output
    assert "out of date" in stale.stderr
    changed = kai("diff", ok=False)
    assert changed.exit_code == 1  # as `git diff --exit-code`: there are changes
    diff = changed.stdout
    assert "--- a/rendered/demo/greeter-v1/service-greeter-v1.yaml" in diff
    assert any(ln.startswith("-") and "9001" in ln for ln in diff.splitlines())
    assert any(ln.startswith("+") and "9000" in ln for ln in diff.splitlines())
    kai("render")
    assert kai("render", "--check").exit_code == 0
    assert clean(repo)

    source = repo / "versions/greeter-v1/src/etl/main.py"
    source.write_text(source.read_text() + "\n# new code\n")
    stale = kai("render", "--check", ok=False)
    assert stale.exit_code == 1
    assert "added: rendered/demo/greeter-v1/configmap-greeter-v1-files-" in stale.output
    assert "removed: rendered/demo/greeter-v1/configmap-greeter-v1-files-" in stale.output
    assert "changed: rendered/demo/greeter-v1/deployment-greeter-v1-etl.yaml" in stale.output
    extra = repo / "rendered/demo/greeter-v1/stray.yaml"
    extra.write_text("kind: ConfigMap\n")
    assert "removed: rendered/demo/greeter-v1/stray.yaml" in kai("render", "--check",
                                                                ok=False).output
    result = kai("render")
    assert "rendered rendered/demo:" in result.output
    assert not extra.exists()


def test_render_check_reports_invalid_repo(populated: Path) -> None:
    repo = populated
    kai("start", "greeter-v1", "--repo", str(repo))
    manifest = repo / "versions/greeter-v1/krt.yml"
    manifest.write_text(manifest.read_text().replace("sequential: [etl", "sequential: [nope"))
    result = kai("render", "--check", "--repo", str(repo), ok=False)
    assert result.exit_code == 1
    assert "versions/greeter-v1/krt.yml:" in result.stderr
    assert "Traceback" not in result.output


# --- status -----------------------------------------------------------------------------------


def test_status_table_and_json(populated: Path) -> None:
    repo = populated
    kai("start", "greeter-v1", "--repo", str(repo))
    kai("publish", "greeter-v1", "--repo", str(repo))
    table = kai("status", "--repo", str(repo)).output
    assert "project demo (namespace kai-demo), published: greeter-v1" in table
    line = next(ln for ln in table.splitlines() if ln.startswith("greeter-v1"))
    assert "published" in line and "PyGreet → etl → inference → output" in line
    assert "Deployment" in line and "Ingress" in line
    v2 = next(ln for ln in table.splitlines() if ln.startswith("greeter-v2"))
    assert "stopped" in v2 and v2.rstrip().endswith("-")
    data = json.loads(kai("status", "--json", "--repo", str(repo)).output)
    assert data["published"] == "greeter-v1"
    v1 = data["versions"][0]
    assert v1["name"] == "greeter-v1" and v1["state"] == "published"
    assert v1["workflows"] == [
        {"name": "py-greeting", "rpc": "PyGreet", "chain": ["etl", "inference", "output"]}]
    assert v1["resources"]["kinds"]["Deployment"] == 4
    assert v1["resources"]["kinds"]["Service"] == 1
    assert data["versions"][1]["resources"] == {"count": 0, "kinds": {}}
    assert data["project_resources"]["kinds"]["Namespace"] == 1


# --- the CLI surface ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", ["init", "add", "start", "stop", "publish", "unpublish", "canary", "status",
                "render", "diff"]
)
def test_every_command_has_help(command: str) -> None:
    assert command in COMMANDS
    result = kai(command, "--help")
    assert "Usage:" in result.output
    if command not in ("init",):
        assert "--repo" in result.output


# --- the git wrapper --------------------------------------------------------------------------


def test_git_wrapper_in_a_nested_repo_without_commits(tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    gitlib.init(outer)
    assert gitlib.is_repo(outer) and not gitlib.has_commits(outer)
    assert gitlib.current_branch(outer) == "main"
    sub = outer / "ops"
    sub.mkdir()
    (sub / "kai.yaml").write_text("a\n")
    (sub / "other.txt").write_text("x\n")
    assert gitlib.dirty_paths(sub, ["kai.yaml", "versions/x"]) == ["kai.yaml"]
    first = gitlib.commit(sub, "first", ["kai.yaml"])
    assert gitlib.head(outer) == first
    (sub / "kai.yaml").write_text("b\n")
    (outer / "staged.txt").write_text("s\n")
    git(outer, "add", "staged.txt")
    gitlib.commit(sub, "second", ["kai.yaml"])
    assert git(outer, "show", "--name-only", "--format=", "HEAD").split() == ["ops/kai.yaml"]
    assert "A  staged.txt" in git(outer, "status", "--porcelain")  # left staged
    with pytest.raises(gitlib.GitError, match=r"nothing to commit in kai\.yaml"):
        gitlib.commit(sub, "third", ["kai.yaml"])
    with pytest.raises(gitlib.GitError, match="not a valid git branch name"):
        gitlib.add_worktree(sub, tmp_path / "wt", "a..b")
    gitlib.add_worktree(sub, tmp_path / "wt", "pr")
    assert gitlib.current_branch(outer) == "main"  # the new worktree is on pr
    assert gitlib.worktree_branch(outer, tmp_path / "wt") == "pr"
    with pytest.raises(gitlib.GitError, match="already exists"):
        gitlib.add_worktree(sub, tmp_path / "wt2", "pr")
    gitlib.remove_worktree(outer, tmp_path / "wt")
    assert not (tmp_path / "wt").exists() and gitlib.worktree_branch(outer, tmp_path / "wt") is None
    assert gitlib.remote_url(outer) is None
    assert not gitlib.is_repo(tmp_path / "missing")


def test_add_refuses_a_broken_krt(repo: Path, tmp_path: Path) -> None:
    fake = tmp_path / "broken.krt"
    fake.write_text("not a tarball")
    result = kai("add", str(fake), "--repo", str(repo), ok=False)
    assert result.exit_code == 1
    assert "broken.krt" in result.stderr and "gzip" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert log(repo) == ["kai: init demo (namespace kai-demo)"]


def test_failed_render_leaves_kai_yaml_unchanged(repo: Path, tmp_path: Path) -> None:
    drop_build(repo)  # so that a version too large for a ConfigMap cannot have an image
    big = make_version(tmp_path / "big", "big-v1")
    kai("add", str(big), "--repo", str(repo))
    # grown by hand past what kai add accepts (it refuses such a version itself)
    weights = repo / "versions" / "big-v1" / "src" / "etl" / "weights.bin"
    weights.write_bytes(os.urandom(1100 * 1024))
    git(repo, "add", "-A", ".")
    git(repo, "commit", "-qm", "grow big-v1")
    before, kai_yaml = head(repo), (repo / "kai.yaml").read_bytes()
    result = kai("start", "big-v1", "--repo", str(repo), ok=False)
    assert result.exit_code == 1
    assert "image" in result.stderr and "Traceback" not in result.output
    assert (repo / "kai.yaml").read_bytes() == kai_yaml
    assert head(repo) == before and clean(repo)
