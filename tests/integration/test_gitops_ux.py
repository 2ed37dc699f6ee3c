"""git the way users expect, against real git repos: `kai diff` exit codes and renames,
`kai status` on a stale rendered/, a renamed project, Flux URLs and `kai dev NAME`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from renderer import checks
from renderer.cli.dev import DevError, resolve_version
from tests.conftest import EXAMPLES, git
from tests.integration.gitops_helpers import clean, head, kai, log, make_version

pytestmark = pytest.mark.integration

GITOPS = EXAMPLES / "gitops"


@pytest.fixture
def started(tmp_path: Path) -> Path:
    """A GitOps repo with greeter-v1 started, all committed."""
    root = tmp_path / "gitops"
    kai("init", str(root), "--project", "demo", "--namespace", "kai-demo")
    kai("add", str(make_version(tmp_path / "src" / "greeter-v1", "greeter-v1")), "--repo",
        str(root))
    kai("start", "greeter-v1", "--repo", str(root))
    assert clean(root)
    return root


def edit_node(root: Path) -> None:
    source = root / "versions/greeter-v1/src/etl/main.py"
    source.write_text(source.read_text() + "# one new line of node code\n")


# --- kai diff -----------------------------------------------------------------------------


def test_diff_exit_codes_follow_git(started: Path) -> None:
    root = started
    same = kai("diff", "--repo", str(root))
    assert same.exit_code == 0 and same.stdout == ""
    assert "up to date" in same.stderr
    edit_node(root)
    changed = kai("diff", "--repo", str(root), ok=False)
    assert changed.exit_code == 1 and changed.stdout and changed.stderr == ""
    manifest = root / "versions/greeter-v1/krt.yml"
    manifest.write_text(manifest.read_text().replace("sequential: [etl", "sequential: [nope"))
    broken = kai("diff", "--repo", str(root), ok=False)
    assert broken.exit_code == 1 and broken.stdout == ""
    assert "versions/greeter-v1/krt.yml:" in broken.stderr and "nope" in broken.stderr
    assert "Traceback" not in broken.output
    both = kai("diff", "--stat", "--name-status", "--repo", str(root), ok=False)
    assert both.exit_code == 2 and "do not go together" in both.stderr
    assert "Exit codes" in kai("diff", "--help").stdout


def test_a_one_line_node_change_is_a_small_rename_diff(started: Path) -> None:
    root = started
    edit_node(root)
    text = kai("diff", "--repo", str(root), ok=False).stdout
    lines = text.splitlines()
    renames = [ln for ln in lines if ln.startswith(("rename from", "rename to"))]
    assert len(renames) == 2
    assert all("rendered/demo/greeter-v1/configmap-greeter-v1-files-" in ln for ln in renames)
    assert "+    # one new line of node code" in lines
    # the ConfigMap is ~120 lines: as remove-and-add it would be far more than this
    removed = [ln for ln in lines if ln.startswith("-") and not ln.startswith("---")]
    assert len(removed) <= 10, removed  # its name, label and the Deployments' references
    assert len(lines) < 120
    # it is a patch git takes: applied, rendered/ is what a render writes
    (root.parent / "p.diff").write_text(text)
    subprocess.run(["git", "apply", str(root.parent / "p.diff")], cwd=root, check=True)
    assert kai("diff", "--repo", str(root)).exit_code == 0
    assert kai("render", "--check", "--repo", str(root)).exit_code == 0


def test_diff_stat_and_name_status(started: Path) -> None:
    root = started
    edit_node(root)
    stat = kai("diff", "--stat", "--repo", str(root), ok=False)
    assert stat.exit_code == 1
    lines = stat.stdout.splitlines()
    assert lines[-1] == " 6 files changed, 8 insertions(+), 7 deletions(-)"
    rename = next(ln for ln in lines if "=>" in ln)
    assert rename.startswith(" rendered/demo/greeter-v1/{configmap-greeter-v1-files-")
    assert rename.endswith("| 5 +++--")
    assert " rendered/demo/greeter-v1/deployment-greeter-v1-etl.yaml " in stat.stdout
    assert all("|" in ln for ln in lines[:-1]) and len(lines) == 7
    # the same counts as git's own --stat once the render is committed
    kai("render", "--repo", str(root))
    git(root, "add", "-A")
    ours = "\n".join(ln.split("|")[1] for ln in lines[:-1])
    theirs = git(root, "diff", "--cached", "--stat=200", "-M", "--", "rendered").splitlines()
    assert ours.split() == "\n".join(ln.split("|")[1] for ln in theirs[:-1]).split()
    assert theirs[-1] == lines[-1]
    git(root, "reset", "-q", "--hard")
    edit_node(root)
    names = kai("diff", "--name-status", "--repo", str(root), ok=False).stdout.splitlines()
    assert names[0].startswith("R09") and names[0].count("\t") == 2
    assert "M\trendered/demo/kustomization.yaml" in names


# --- kai status ---------------------------------------------------------------------------


def test_status_flags_a_stale_rendered_tree(started: Path) -> None:
    root = started
    text = kai("status", "--repo", str(root)).stdout
    assert "rendered/demo: up to date" in text
    data = json.loads(kai("status", "--json", "--repo", str(root)).stdout)
    assert data["rendered"] == {"path": "rendered/demo", "up_to_date": True, "differs": [],
                                "stale": [], "problems": []}
    edit_node(root)
    text = kai("status", "--repo", str(root)).stdout
    assert "rendered/demo: out of date (7 files differ); run kai render" in text
    data = json.loads(kai("status", "--json", "--repo", str(root)).stdout)
    assert data["rendered"]["up_to_date"] is False
    assert len(data["rendered"]["differs"]) == 7
    assert "rendered/demo/greeter-v1/deployment-greeter-v1-etl.yaml" in data["rendered"]["differs"]
    kai("render", "--repo", str(root))
    assert "rendered/demo: up to date" in kai("status", "--repo", str(root)).stdout


def test_status_of_a_repo_that_cannot_render(started: Path) -> None:
    root = started
    manifest = root / "versions/greeter-v1/krt.yml"
    manifest.write_text(manifest.read_text().replace("sequential: [etl", "sequential: [nope"))
    result = kai("status", "--repo", str(root))  # still exit 0: status is a report
    assert "invalid: run `kai validate versions/greeter-v1`" in result.stdout
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("rendered/demo:"))
    assert "cannot be rendered: versions/greeter-v1/krt.yml:" in line and "nope" in line
    data = json.loads(kai("status", "--json", "--repo", str(root)).stdout)
    assert data["rendered"]["up_to_date"] is None
    assert any("nope" in p for p in data["rendered"]["problems"])


# --- renaming the project ---------------------------------------------------------------


def rename_project(root: Path, new: str) -> None:
    text = (root / "kai.yaml").read_text()
    (root / "kai.yaml").write_text(text.replace("\nproject: demo\n", f"\nproject: {new}\n", 1))


def test_renaming_the_project_removes_the_old_tree(started: Path) -> None:
    root = started
    keep = root / "rendered" / "hand-made"
    keep.mkdir()
    (keep / "kustomization.yaml").write_text("resources: []\n")  # not kai's: stays
    git(root, "add", "rendered/hand-made")
    git(root, "commit", "-qm", "a folder of my own")
    rename_project(root, "shop")

    check = kai("render", "--check", "--repo", str(root), ok=False)
    assert check.exit_code == 1
    assert "stale: rendered/demo (left from an earlier project name" in check.stdout
    status = kai("status", "--repo", str(root)).stdout
    assert "rendered/demo: left from an earlier project name; run kai render" in status
    assert "warning: deploy/argocd/application-demo.yaml:21:11: spec.source.path:" in status
    data = json.loads(kai("status", "--json", "--repo", str(root)).stdout)
    assert data["rendered"]["stale"] == ["rendered/demo"]
    assert data["rendered"]["up_to_date"] is False
    assert [w.split(": ")[0] for w in data["deploy_warnings"]] == [
        "deploy/argocd/application-demo.yaml:21:11", "deploy/flux/kustomization-demo.yaml:15:9"]
    diff = kai("diff", "--stat", "--repo", str(root), ok=False).stdout
    assert " rendered/{demo => shop}/greeter-v1/service-greeter-v1.yaml " in diff

    result = kai("render", "--repo", str(root))
    assert "removed rendered/demo (project is now shop)" in result.stdout
    assert not (root / "rendered/demo").exists() and keep.is_dir()
    assert (root / "rendered/shop/kustomization.yaml").is_file()
    porcelain = git(root, "status", "--porcelain", "--untracked-files=all")
    assert " D rendered/demo/kustomization.yaml" in porcelain
    assert "?? rendered/shop/kustomization.yaml" in porcelain
    # deploy/ is the user's: a warning per file names the line and the new value
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning: ")]
    assert warnings == [
        "warning: deploy/argocd/application-demo.yaml:21:11: spec.source.path: is "
        "rendered/demo, but kai.yaml's project is shop; set it to rendered/shop and apply "
        "the file again (kubectl apply -f deploy/argocd/application-demo.yaml)",
        "warning: deploy/flux/kustomization-demo.yaml:15:9: spec.path: is ./rendered/demo, "
        "but kai.yaml's project is shop; set it to ./rendered/shop and apply the file "
        "again (kubectl apply -f deploy/flux/kustomization-demo.yaml)",
    ]
    line = (root / "deploy/argocd/application-demo.yaml").read_text().splitlines()[20]
    assert line == "    path: rendered/demo"  # the line the warning names

    # one commit holds the rename: the new tree in, the old one out
    git(root, "add", "-A", "kai.yaml", "rendered")
    git(root, "commit", "-qm", "rename the project")
    assert clean(root)
    assert kai("render", "--check", "--repo", str(root)).exit_code == 0
    assert kai("diff", "--repo", str(root)).exit_code == 0
    assert log(root)[0] == "rename the project"
    assert git(root, "ls-files", "rendered/demo") == ""
    assert head(root)


# --- Flux URLs and --secret-ref -------------------------------------------------------------


def test_init_gives_flux_an_ssh_url_for_an_scp_like_origin(tmp_path: Path) -> None:
    root = tmp_path / "r"
    git(tmp_path, "init", "-q", str(root))
    git(root, "remote", "add", "origin", "git@github.com:acme/platform.git")
    kai("init", str(root), "--project", "demo", "--namespace", "ns",
        "--secret-ref", "flux-git-auth")
    flux = yaml.safe_load((root / "deploy/flux/gitrepository-demo.yaml").read_text())
    assert flux["spec"]["url"] == "ssh://git@github.com/acme/platform.git"
    assert flux["spec"]["secretRef"] == {"name": "flux-git-auth"}
    argo = yaml.safe_load((root / "deploy/argocd/application-demo.yaml").read_text())
    assert argo["spec"]["source"]["repoURL"] == "git@github.com:acme/platform.git"
    for path in sorted((root / "deploy").rglob("*.yaml")):
        assert checks.check_object(str(path), yaml.safe_load(path.read_text()), "1.35") == []
    assert kai("validate", str(root)).exit_code == 0


def test_init_refuses_a_bad_secret_ref(tmp_path: Path) -> None:
    bad = kai("init", str(tmp_path / "r"), "--project", "demo", "--namespace", "ns",
              "--secret-ref", "Flux_Auth", ok=False)
    assert bad.exit_code == 1
    assert bad.stderr.startswith("error: --secret-ref 'Flux_Auth' is not a valid Kubernetes name")
    assert len(bad.stderr.splitlines()) == 1
    assert not (tmp_path / "r").exists()
    help_text = kai("init", "--help").stdout
    assert "--secret-ref" in help_text and "identity" in help_text and "known_hosts" in help_text


# --- kai dev NAME ---------------------------------------------------------------------------


def test_dev_resolves_a_version_name_inside_a_gitops_repo(tmp_path: Path) -> None:
    expected = (GITOPS / "versions" / "greeter-v1").resolve()
    assert resolve_version("greeter-v1", cwd=GITOPS).resolve() == expected
    assert resolve_version("greeter-v1", cwd=GITOPS / "deploy" / "flux").resolve() == expected
    assert resolve_version("greeter-v1", repo=GITOPS, cwd=tmp_path).resolve() == expected
    # an existing path wins over a name
    local = tmp_path / "greeter-v1"
    local.mkdir()
    assert resolve_version("greeter-v1", cwd=tmp_path) == local
    assert resolve_version(str(expected), cwd=tmp_path) == expected
    with pytest.raises(DevError, match=r"known versions: greeter-v1, room-price-v1\)$"):
        resolve_version("nope-v1", cwd=GITOPS)
    with pytest.raises(DevError, match="no version 'versions/x'"):
        resolve_version("versions/x", cwd=GITOPS)  # a missing path is not a name
    with pytest.raises(DevError, match=r"no kai\.yaml in"):
        resolve_version("greeter-v1", cwd=tmp_path / "greeter-v1")


def test_dev_with_an_unknown_name_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(GITOPS / "versions")
    result = kai("dev", "nope-v1", ok=False)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: nope-v1: no such version directory, and no version 'nope-v1' in "
        f"{GITOPS.resolve() / 'versions'}/ (known versions: greeter-v1, room-price-v1)"]
    assert result.stdout == ""
