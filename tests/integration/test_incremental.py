"""Incremental state changes: only the changed versions are re-rendered, and the tree
they give is byte-identical to a full render, written atomically (real git repos)."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from renderer import atomic, render, validate
from renderer.atomic import read_tree
from renderer.cli import main
from renderer.project import PUBLISHED, STARTED, STOPPED, VersionState
from renderer.projectfile import dump_project, load_project
from renderer.repo import apply_state_change, init_repo, load
from renderer.repo import render as render_full
from tests.conftest import EXAMPLES, git

pytestmark = pytest.mark.integration

NAMES = [f"greeter-v{i}" for i in range(1, 5)]
RENDERED = "rendered/demo"


def kai(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output + result.stderr
    return result.output


def full_tree(root: Path) -> dict[str, bytes]:
    """What `kai render` would write now."""
    return render_full(load(root))


def clean(root: Path) -> bool:
    return git(root, "status", "--porcelain", "--untracked-files=all") == ""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """greeter-v1 published, v2 and v3 started, v4 stopped; rendered/ committed."""
    root = tmp_path / "gitops"
    init_repo(root, "demo", "kai-demo", repo_url="https://git.example.invalid/demo.git")
    states = {}
    for i, name in enumerate(NAMES):
        target = root / "versions" / name
        shutil.copytree(EXAMPLES / "greeter", target, ignore=shutil.ignore_patterns("__pycache__"))
        manifest = target / "krt.yml"
        manifest.write_text(manifest.read_text().replace("version: greeter-v1", f"version: {name}"))
        states[name] = VersionState(PUBLISHED if i == 0 else STOPPED if i == 3 else STARTED)
    project = load_project(root)
    (root / "kai.yaml").write_text(dump_project(replace(project, versions=states)))
    kai("render", "--repo", str(root))
    git(root, "add", "-A", ".")
    git(root, "commit", "-qm", "versions")
    return root


def test_every_state_change_matches_a_full_render(repo: Path) -> None:
    steps = [("publish", "greeter-v2"), ("start", "greeter-v4"), ("publish", "greeter-v4"),
             ("unpublish", "greeter-v4"), ("stop", "greeter-v3"), ("stop", "greeter-v4"),
             ("publish", "greeter-v1")]
    for action, version in steps:
        kai(action, version, "--repo", str(repo))
        assert read_tree(repo / RENDERED) == full_tree(repo), (action, version)
        assert "is up to date" in kai("render", "--check", "--repo", str(repo))
        assert clean(repo)
    assert not (repo / RENDERED / "greeter-v3").exists()
    assert (repo / RENDERED / "greeter-v1/service-active-entrypoint.yaml").is_file()


def test_only_the_changed_versions_are_loaded_rendered_and_rewritten(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {rel: (repo / RENDERED / rel).stat().st_ino for rel in read_tree(repo / RENDERED)}
    loaded: list[str] = []
    rendered: list[str] = []
    real_load, real_tree = validate.read_version, render.version_tree

    def read_version(path: Path, display_root: Path | None = None):  # type: ignore[no-untyped-def]
        loaded.append(Path(path).name)
        return real_load(path, display_root)

    def version_tree(project, version, state=None):  # type: ignore[no-untyped-def]
        rendered.append(version.name)
        return real_tree(project, version, state)

    monkeypatch.setattr(validate, "read_version", read_version)
    monkeypatch.setattr(render, "version_tree", version_tree)
    apply_state_change(repo, "greeter-v2", "publish")
    assert sorted(loaded) == sorted(rendered) == ["greeter-v1", "greeter-v2"]
    after = read_tree(repo / RENDERED)
    changed = {rel for rel in after if before.get(rel) != (repo / RENDERED / rel).stat().st_ino}
    # greeter-v3's files are the committed ones, hard-linked into the new tree
    assert not any(rel.startswith("greeter-v3/") for rel in changed)
    assert any(rel.startswith("greeter-v3/") for rel in after)
    project_level = {rel for rel in after if "/" not in rel}
    assert {rel.split("/")[0] for rel in changed} <= {"greeter-v1", "greeter-v2", *project_level}
    monkeypatch.undo()
    assert after == full_tree(repo)


def test_a_tree_that_does_not_match_kai_yaml_gets_a_full_render(repo: Path) -> None:
    # kai.yaml's settings changed and committed without `kai render`: the tree is stale.
    doc = yaml.safe_load((repo / "kai.yaml").read_text())
    doc["nats"]["url"] = "nats://elsewhere.example:4333"
    (repo / "kai.yaml").write_text(yaml.safe_dump(doc))
    git(repo, "commit", "-qam", "nats moved")
    kai("publish", "greeter-v3", "--repo", str(repo))
    assert read_tree(repo / RENDERED) == full_tree(repo)
    # a running version's folder missing from the committed tree
    shutil.rmtree(repo / RENDERED / "greeter-v2")
    git(repo, "commit", "-qam", "lost a folder")
    kai("publish", "greeter-v1", "--repo", str(repo))
    assert (repo / RENDERED / "greeter-v2").is_dir()
    assert read_tree(repo / RENDERED) == full_tree(repo)


def test_no_git_renders_everything(repo: Path) -> None:
    shutil.rmtree(repo / ".git")
    kai("publish", "greeter-v2", "--no-commit", "--repo", str(repo))
    assert read_tree(repo / RENDERED) == full_tree(repo)


def test_links_fall_back_to_copies(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(*args: object, **kwargs: object) -> None:
        raise OSError("links not supported here")

    monkeypatch.setattr(os, "link", no_links)
    apply_state_change(repo, "greeter-v2", "publish")
    monkeypatch.undo()
    assert read_tree(repo / RENDERED) == full_tree(repo)


def test_a_failed_write_leaves_tree_and_kai_yaml_as_they_were(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree, kai_yaml, head = read_tree(repo / RENDERED), (repo / "kai.yaml").read_bytes(), \
        git(repo, "rev-parse", "HEAD")
    calls = 0
    real_link = os.link

    def failing_link(src: str, dst: str, **kwargs: object) -> None:
        nonlocal calls
        calls += 1
        if calls > 3:
            raise KeyboardInterrupt  # not an OSError: no copy fallback, the write aborts
        real_link(src, dst, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", failing_link)
    with pytest.raises(KeyboardInterrupt):
        apply_state_change(repo, "greeter-v2", "publish")
    monkeypatch.undo()
    assert read_tree(repo / RENDERED) == tree
    assert (repo / "kai.yaml").read_bytes() == kai_yaml
    assert git(repo, "rev-parse", "HEAD") == head and clean(repo)
    assert sorted(p.name for p in (repo / "rendered").iterdir()) == ["demo"]


def test_write_tree_reuses_files_from_the_current_tree(tmp_path: Path) -> None:
    target = tmp_path / "t"
    atomic.write_tree(target, {"a/x.yaml": b"x\n", "b/y.yaml": b"y\n", "k.yaml": b"k\n"})
    inode = (target / "a/x.yaml").stat().st_ino
    atomic.write_tree(target, {"k.yaml": b"k2\n", "c/z.yaml": b"z\n"}, reuse=["a/x.yaml"])
    assert read_tree(target) == {"a/x.yaml": b"x\n", "c/z.yaml": b"z\n", "k.yaml": b"k2\n"}
    assert (target / "a/x.yaml").stat().st_ino == inode
    with pytest.raises(FileNotFoundError):
        atomic.write_tree(target, {"k.yaml": b"k3\n"}, reuse=["missing.yaml"])
    assert read_tree(target)["k.yaml"] == b"k2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_dirty_paths_with_many_paths_matches_git_pathspecs(tmp_path: Path) -> None:
    from renderer import git as gitlib

    root = tmp_path / "r"
    for i in range(20):
        (root / "versions" / f"v{i}").mkdir(parents=True)
        (root / "versions" / f"v{i}" / "f.py").write_text("x\n")
    (root / "versions" / "v1x").mkdir()
    (root / "versions" / "v1x" / "f.py").write_text("x\n")
    (root / "kai.yaml").write_text("a: 1\n")
    gitlib.init(root)
    git(root, "add", "-A", ".")
    git(root, "commit", "-qm", "init")
    for name in ("versions/v1/f.py", "versions/v1x/f.py", "versions/v19/new.py", "kai.yaml"):
        (root / name).write_text("changed\n")
    wanted = ["kai.yaml", *(f"versions/v{i}" for i in range(18))]
    few = sorted({*gitlib.dirty_paths(root, wanted[:10]), *gitlib.dirty_paths(root, wanted[10:])})
    assert gitlib.dirty_paths(root, wanted) == few == ["kai.yaml", "versions/v1/f.py"]
