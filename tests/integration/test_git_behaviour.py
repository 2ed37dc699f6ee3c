"""Git the way users expect: hooks run, --branch leaves the checkout alone, retries are safe."""

from __future__ import annotations

import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import git
from tests.integration.gitops_helpers import (
    clean,
    head,
    kai,
    kai_process,
    log,
    make_version,
    render_check_at,
    snapshot,
    states,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "gitops"
    kai("init", str(root), "--project", "demo", "--namespace", "kai-demo")
    for name in ("greeter-v1", "greeter-v2"):
        kai("add", str(make_version(tmp_path / "src" / name, name)), "--repo", str(root))
    return root


def worktrees(repo: Path) -> int:
    out = git(repo, "worktree", "list", "--porcelain")
    return sum(line.startswith("worktree ") for line in out.splitlines())


def _hook(repo: Path, body: str) -> Path:
    hooks = Path(git(repo, "rev-parse", "--git-path", "hooks").strip())
    hooks = hooks if hooks.is_absolute() else repo / hooks
    hooks.mkdir(parents=True, exist_ok=True)
    path = hooks / "pre-commit"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# --- hooks -----------------------------------------------------------------------------------


def test_state_commands_run_the_repos_hooks(repo: Path, tmp_path: Path) -> None:
    ran = tmp_path / "hook-ran"
    _hook(repo, f"git diff --cached --name-only > {ran}\n")
    kai("start", "greeter-v1", "--repo", str(repo))
    assert "kai.yaml" in ran.read_text().split()
    assert log(repo)[0] == "kai: start greeter-v1"


def test_a_refusing_hook_leaves_the_work_tree_as_it_was(repo: Path) -> None:
    _hook(repo, "echo 'secret scanner: found a credential in kai.yaml' >&2\nexit 1\n")
    before, files = head(repo), snapshot(repo)
    result = kai("start", "greeter-v1", "--repo", str(repo), ok=False)
    assert result.exit_code == 1
    lines = result.stderr.rstrip().splitlines()
    assert "  hook: secret scanner: found a credential in kai.yaml" in lines
    assert lines[-1].startswith("error: the repo's git hook (pre-commit) refused the commit")
    assert "nothing was changed" in lines[-1] and "Traceback" not in result.output
    assert head(repo) == before and clean(repo) and snapshot(repo) == files


def test_a_refusing_hook_on_add_leaves_no_version_behind(repo: Path, tmp_path: Path) -> None:
    _hook(repo, "exit 1\n")
    before, files = head(repo), snapshot(repo)
    source = make_version(tmp_path / "src" / "greeter-v3", "greeter-v3")
    result = kai("add", str(source), "--repo", str(repo), ok=False)
    assert result.exit_code == 1 and "refused the commit" in result.stderr
    assert not (repo / "versions" / "greeter-v3").exists()
    assert head(repo) == before and clean(repo) and snapshot(repo) == files


PRE_COMMIT_CONFIG = """\
repos:
  - repo: local
    hooks:
      - id: no-plain-passwords
        name: no plain passwords
        language: pygrep
        entry: 'hunter2'
"""


def test_the_real_pre_commit_tool_guards_kai_commits(repo: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """pre-commit's own hook, installed with `pre-commit install`, runs on kai's commits."""
    pre_commit = shutil.which("pre-commit", path=str(Path(sys.executable).parent))
    assert pre_commit, "pre-commit is a test dependency"
    monkeypatch.setenv("PRE_COMMIT_HOME", str(tmp_path / "pre-commit-home"))
    (repo / ".pre-commit-config.yaml").write_text(PRE_COMMIT_CONFIG)
    git(repo, "add", ".pre-commit-config.yaml")
    git(repo, "commit", "-qm", "pre-commit config")
    subprocess.run([pre_commit, "install"], cwd=repo, check=True, capture_output=True)
    source = make_version(tmp_path / "src" / "leaky-v1", "leaky-v1")
    node = source / "src" / "etl" / "main.py"
    node.write_text(node.read_text() + '\nPASSWORD = "hunter2"\n')
    before, files = head(repo), snapshot(repo)
    result = kai("add", str(source), "--repo", str(repo), ok=False)
    assert result.exit_code == 1
    assert "hook: no plain passwords" in result.stderr
    assert head(repo) == before and clean(repo) and snapshot(repo) == files
    kai("start", "greeter-v1", "--repo", str(repo))  # a clean change passes the hook
    assert log(repo)[0] == "kai: start greeter-v1"


# --- --branch --------------------------------------------------------------------------------


def test_branch_commits_without_moving_the_checkout(repo: Path, tmp_path: Path) -> None:
    before, files = head(repo), snapshot(repo)
    result = kai("start", "greeter-v1", "--branch", "start-v1", "--repo", str(repo))
    assert "on start-v1" in result.output and "checkout is unchanged" in result.output
    assert git(repo, "symbolic-ref", "--short", "HEAD").strip() == "main"
    assert head(repo) == before and clean(repo) and snapshot(repo) == files
    assert states(repo, "start-v1")["greeter-v1"] == "started"
    assert git(repo, "rev-parse", "start-v1^").strip() == before
    assert render_check_at(repo, git(repo, "rev-parse", "start-v1").strip(), tmp_path) == []
    # no temporary worktree is left, and the next command lands on the user's branch
    assert worktrees(repo) == 1
    kai("start", "greeter-v2", "--repo", str(repo))
    assert log(repo)[0] == "kai: start greeter-v2" and states(repo)["greeter-v1"] == "stopped"


def test_branch_that_exists_is_refused_and_nothing_changes(repo: Path) -> None:
    kai("start", "greeter-v1", "--branch", "pr", "--repo", str(repo))
    before = head(repo)
    result = kai("start", "greeter-v2", "--branch", "pr", "--repo", str(repo), ok=False)
    assert result.exit_code == 1 and "branch 'pr' already exists" in result.stderr
    assert head(repo) == before and clean(repo)
    assert states(repo, "pr")["greeter-v2"] == "stopped"


def test_branch_from_a_gitops_repo_in_a_subfolder(tmp_path: Path) -> None:
    top = tmp_path / "mono"
    git_init = ["git", "init", "-q", "-b", "main", str(top)]
    subprocess.run(git_init, check=True)
    (top / "README").write_text("mono\n")
    git(top, "add", "README")
    git(top, "commit", "-qm", "first")
    root = top / "ops" / "kai"
    kai("init", str(root), "--project", "demo", "--namespace", "ns")
    kai("add", str(make_version(tmp_path / "src" / "greeter-v1", "greeter-v1")),
        "--repo", str(root))
    before = head(top)
    kai("start", "greeter-v1", "--branch", "pr", "--repo", str(root))
    assert head(top) == before and clean(top)
    shown = git(top, "show", "--name-only", "--format=", "pr").split()
    assert "ops/kai/kai.yaml" in shown
    assert any(p.startswith("ops/kai/rendered/demo/greeter-v1/") for p in shown)


def test_branch_with_a_refusing_hook_deletes_the_branch(repo: Path) -> None:
    _hook(repo, "exit 1\n")
    result = kai("start", "greeter-v1", "--branch", "pr", "--repo", str(repo), ok=False)
    assert result.exit_code == 1 and "refused the commit" in result.stderr
    assert git(repo, "branch", "--list", "pr").strip() == ""
    assert clean(repo)
    assert worktrees(repo) == 1


# --- retry-safe commands ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "again"),
    [
        ([("start", "greeter-v1")], ("start", "greeter-v1")),
        ([], ("stop", "greeter-v1")),
        ([("start", "greeter-v1"), ("publish", "greeter-v1")], ("publish", "greeter-v1")),
        ([("start", "greeter-v1"), ("publish", "greeter-v1")], ("start", "greeter-v1")),
        ([("start", "greeter-v1")], ("unpublish", "greeter-v1")),
    ],
)
def test_a_command_that_changes_nothing_exits_0(repo: Path, setup: list[tuple[str, str]],
                                                again: tuple[str, str]) -> None:
    for action, version in setup:
        kai(action, version, "--repo", str(repo))
    before = head(repo)
    result = kai(*again, "--repo", str(repo))
    assert result.output.startswith("nothing to do: greeter-v1 is ")
    assert head(repo) == before and clean(repo)


def test_add_of_unchanged_content_is_nothing_to_do(repo: Path, tmp_path: Path) -> None:
    source = tmp_path / "src" / "greeter-v1"
    before = head(repo)
    for extra in ((), ("--force",)):
        result = kai("add", str(source), *extra, "--repo", str(repo))
        assert result.output.startswith("nothing to do: versions/greeter-v1 is already")
    assert head(repo) == before and clean(repo)
    node = source / "src" / "etl" / "main.py"
    node.write_text(node.read_text() + "\n# changed\n")
    refused = kai("add", str(source), "--repo", str(repo), ok=False)
    assert refused.exit_code == 1 and "pass --force" in refused.stderr
    kai("add", str(source), "--force", "--repo", str(repo))
    assert log(repo)[0] == "kai: add greeter-v1 (replaced, stopped)"
    assert (repo / "versions/greeter-v1/src/etl/main.py").read_text().endswith("# changed\n")
    assert clean(repo)


def test_a_killed_branch_command_leaves_nothing_the_next_one_does_not_clean(repo: Path) -> None:
    prelude = (
        "import os, signal\n"
        "from renderer import changeset\n"
        "def _die(self, message):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "changeset.Changeset.apply = _die\n"
    )
    proc = kai_process("start", "greeter-v1", "--branch", "pr", "--repo", str(repo),
                       prelude=prelude)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert worktrees(repo) == 2  # the temporary one is left behind
    before, files = head(repo), snapshot(repo)
    result = kai("start", "greeter-v2", "--repo", str(repo))
    assert "removed the temporary worktree of an interrupted --branch command" in result.stderr
    assert "its branch pr was kept" in result.stderr
    assert worktrees(repo) == 1 and clean(repo)
    assert log(repo)[0] == "kai: start greeter-v2" and head(repo) != before
    assert snapshot(repo).keys() - files.keys() <= {
        p for p in snapshot(repo) if p.startswith("rendered/demo/greeter-v2/")}
