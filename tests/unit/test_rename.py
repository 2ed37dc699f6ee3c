"""renderer.rename: trees left by an earlier project name, and deploy/ files syncing them."""

from __future__ import annotations

from pathlib import Path

from renderer.atomic import write_tree
from renderer.output import header
from renderer.project import Project
from renderer.rename import deploy_references, stale_paths, stale_trees
from tests.conftest import git

KAI_KUSTOMIZATION = (header("kai.yaml") + "kind: Kustomization\n").encode()


def kai_tree(folder: Path) -> Path:
    write_tree(folder, {"kustomization.yaml": KAI_KUSTOMIZATION, "v1/x.yaml": b"kind: X\n"})
    return folder


def test_stale_trees_are_only_the_trees_kai_wrote(tmp_path: Path) -> None:
    rendered = tmp_path / "rendered"
    kai_tree(rendered / "demo")  # the project's own
    old = kai_tree(rendered / "old")
    kai_tree(rendered / ".old.new-123")  # a write in progress
    mine = rendered / "mine"  # someone else's kustomization: never touched
    write_tree(mine, {"kustomization.yaml": b"kind: Kustomization\n"})
    (rendered / "empty").mkdir()
    (rendered / "link").symlink_to(old)  # a symlink to a kai tree is not a tree
    (rendered / "file.yaml").write_bytes(KAI_KUSTOMIZATION)
    assert stale_trees(tmp_path, "demo") == [old]
    assert stale_paths(tmp_path, "demo") == ["rendered/old"]
    assert stale_trees(tmp_path / "nowhere", "demo") == []


APPLICATION = """\
# Written once by `kai init`; yours to edit.
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: old
spec:
  source:
    repoURL: git@example.com:me/ops.git
    path: {path}
"""
MULTI = """\
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata: {{name: a}}
spec: {{path: "./rendered/demo", prune: true}}
---
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata: {{name: b}}
spec:
  path: {path}
---
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata: {{name: c}}
spec:
  sources:
  - repoURL: x
    path: other/place
  - repoURL: y
    path: rendered/old/
"""


def test_deploy_references_name_the_file_line_and_new_value(tmp_path: Path) -> None:
    project = Project(name="demo", namespace="ns", root=tmp_path)
    deploy = tmp_path / "deploy"
    (deploy / "argocd").mkdir(parents=True)
    (deploy / "flux").mkdir()
    (deploy / "argocd/application-old.yaml").write_text(APPLICATION.format(path="rendered/old"))
    (deploy / "flux/all.yml").write_text(MULTI.format(path="./rendered/old"))
    (deploy / "flux/broken.yaml").write_text("kind: [\n")
    (deploy / "flux/README.md").write_text("path: rendered/old\n")
    found = [str(p) for p in deploy_references(tmp_path, project)]
    assert found == [
        "deploy/argocd/application-old.yaml:9:11: spec.source.path: is rendered/old, but "
        "kai.yaml's project is demo; set it to rendered/demo and apply the file again "
        "(kubectl apply -f deploy/argocd/application-old.yaml)",
        "deploy/flux/all.yml:10:9: spec.path: is ./rendered/old, but kai.yaml's project is "
        "demo; set it to ./rendered/demo and apply the file again "
        "(kubectl apply -f deploy/flux/all.yml)",
        "deploy/flux/all.yml:20:11: spec.sources[1].path: is rendered/old/, but kai.yaml's "
        "project is demo; set it to rendered/demo/ and apply the file again "
        "(kubectl apply -f deploy/flux/all.yml)",
    ]
    (deploy / "argocd/application-old.yaml").write_text(APPLICATION.format(path="rendered/demo"))
    (deploy / "flux/all.yml").unlink()
    assert deploy_references(tmp_path, project) == []


def test_deploy_references_in_a_bigger_git_repo_keep_the_prefix(tmp_path: Path) -> None:
    top = tmp_path / "mono"
    root = top / "ops" / "kai"
    (root / "deploy").mkdir(parents=True)
    git(top, "init", "-q")
    project = Project(name="demo", namespace="ns", root=root)
    app = root / "deploy/app.yaml"
    app.write_text(APPLICATION.format(path="ops/kai/rendered/old"))
    [problem] = deploy_references(root, project)
    assert "set it to ops/kai/rendered/demo " in problem.message
    app.write_text(APPLICATION.format(path="elsewhere/rendered/old"))  # another kai repo's
    assert deploy_references(root, project) == []
