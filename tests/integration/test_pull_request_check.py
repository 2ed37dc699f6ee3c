"""The pull-request check: the pre-commit hooks (.pre-commit-hooks.yaml) run by the real
`pre-commit` tool, and the CI workflow `kai init` writes, its commands run for real."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from renderer import __version__
from renderer import git as gitlib
from tests.conftest import EXAMPLES, ROOT, git
from tests.integration.gitops_helpers import kai

pytestmark = pytest.mark.integration

NODE_FILE = "versions/greeter-v1/src/etl/main.py"
KRT = "versions/greeter-v1/krt.yml"
# Not needed to install the project; left out of the copy pre-commit installs from.
NOT_INSTALLED = (".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", ".*_cache",
                 "bench", "docs", "examples", "tests")


def gitops_repo(root: Path, *extra: str) -> Path:
    """`kai init` + `kai add examples/greeter` + `kai start`: rendered/ holds node code."""
    kai("init", str(root), "--project", "demo", "--namespace", "kai-demo", *extra)
    kai("add", str(EXAMPLES / "greeter"), "--repo", str(root))
    kai("start", "greeter-v1", "--repo", str(root))
    return root


def edit_node(root: Path) -> None:
    """Change a node's code without re-rendering."""
    with (root / NODE_FILE).open("a", encoding="utf-8") as fh:
        fh.write("# changed without `kai render`\n")


def break_krt(root: Path) -> str:
    """Point the workflow at a node that does not exist; returns the problem line."""
    krt = root / KRT
    text = krt.read_text(encoding="utf-8")
    old = "sequential: [etl, inference, output]"
    assert old in text
    krt.write_text(text.replace(old, "sequential: [etl, inference, outptu]"), encoding="utf-8")
    line = text[: text.index(old)].count("\n") + 1
    col = len(text.splitlines()[line - 1]) - len("output]") + 1
    return (f"{KRT}:{line}:{col}: workflows[0].sequential[2]: node \"outptu\" is not defined "
            "(defined: etl, inference, output)")


# --- pre-commit -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hooks_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """This project's working tree as a one-commit git repo (what `repo:` points at)."""
    if importlib.util.find_spec("pre_commit") is None:
        pytest.skip("pre-commit is not installed (pip install -e '.[test]')")
    dst = tmp_path_factory.mktemp("hooks") / "kai-server"
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(*NOT_INSTALLED))
    git(dst, "init", "--quiet")
    git(dst, "add", "-A")
    git(dst, "-c", "user.name=KAI Test", "-c", "user.email=kai-test@example.invalid",
        "commit", "--quiet", "--no-verify", "-m", "hooks")
    return dst, git(dst, "rev-parse", "HEAD").strip()


@pytest.fixture(scope="module")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One PRE_COMMIT_HOME for the module: the hook environment is installed once."""
    return tmp_path_factory.mktemp("pre-commit-home")


def pre_commit(repo: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PRE_COMMIT")}
    # no PYTHONPATH: the hooks must run the kai that pre-commit installed, not this checkout
    env.update(PRE_COMMIT_HOME=str(home), PRE_COMMIT_COLOR="never", NO_COLOR="1")
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", "run", *args], cwd=repo, env=env,
        capture_output=True, text=True, timeout=600, check=False,
    )


def write_config(top: Path, hooks: tuple[Path, str], subfolder: str = "") -> None:
    path, rev = hooks
    validate_args = f"\n        args: [{subfolder}]" if subfolder else ""
    render_args = f"\n        args: [--repo, {subfolder}]" if subfolder else ""
    (top / ".pre-commit-config.yaml").write_text(
        f"repos:\n"
        f"  - repo: {path}\n"
        f"    rev: {rev}\n"
        f"    hooks:\n"
        f"      - id: kai-validate{validate_args}\n"
        f"      - id: kai-render-check{render_args}\n",
        encoding="utf-8",
    )
    git(top, "add", ".pre-commit-config.yaml")
    git(top, "commit", "--quiet", "--no-verify", "-m", "pre-commit")


def status_line(output: str, name: str) -> str:
    """`kai validate......Passed` -> `Passed`."""
    lines = [ln for ln in output.splitlines() if ln.startswith(name + ".")]
    assert len(lines) == 1, output
    return lines[0].rsplit(".", 1)[1].strip()


@pytest.fixture
def hooked(tmp_path: Path, hooks_repo: tuple[Path, str]) -> Path:
    root = gitops_repo(tmp_path / "gitops")
    write_config(root, hooks_repo)
    return root


def test_hooks_pass_on_an_up_to_date_repo(hooked: Path, pre_commit_home: Path) -> None:
    proc = pre_commit(hooked, pre_commit_home, "--all-files")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert status_line(out, "kai validate") == "Passed"
    assert status_line(out, "kai render --check") == "Passed"


def test_render_check_fails_on_a_staged_edit_without_render(
        hooked: Path, pre_commit_home: Path) -> None:
    edit_node(hooked)
    git(hooked, "add", NODE_FILE)
    proc = pre_commit(hooked, pre_commit_home)  # what `git commit` runs: the staged files
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert status_line(out, "kai validate") == "Passed"
    assert status_line(out, "kai render --check") == "Failed"
    assert "changed: rendered/demo/greeter-v1/deployment-greeter-v1-etl.yaml" in out
    assert "added: rendered/demo/greeter-v1/configmap-greeter-v1-files-" in out
    assert "error: rendered/demo is out of date" in out
    assert "Traceback" not in out
    # `kai render` and the rendered files staged with the change: the commit goes through
    kai("render", "--repo", str(hooked))
    git(hooked, "add", "-A")
    proc = pre_commit(hooked, pre_commit_home)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_validate_fails_with_the_file_position(hooked: Path, pre_commit_home: Path) -> None:
    expected = break_krt(hooked)
    proc = pre_commit(hooked, pre_commit_home, "--all-files")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert status_line(out, "kai validate") == "Failed"
    assert expected in out.splitlines(), out
    assert status_line(out, "kai render --check") == "Failed"  # it cannot load the repo either
    assert "Traceback" not in out


def test_hooks_skip_commits_that_touch_no_gitops_file(
        hooked: Path, pre_commit_home: Path) -> None:
    edit_node(hooked)  # stale, but not part of this commit
    (hooked / "notes.txt").write_text("unrelated\n", encoding="utf-8")
    git(hooked, "add", "notes.txt")
    proc = pre_commit(hooked, pre_commit_home)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert status_line(out, "kai validate").startswith("(no files to check)")
    assert status_line(out, "kai render --check").startswith("(no files to check)")


def test_hooks_in_a_subfolder_take_the_repo_as_args(
        tmp_path: Path, hooks_repo: tuple[Path, str], pre_commit_home: Path) -> None:
    top = tmp_path / "mono"
    gitlib.init(top, "main")
    root = gitops_repo(top / "ops" / "kai")
    write_config(top, hooks_repo, subfolder="ops/kai")
    proc = pre_commit(top, pre_commit_home, "--all-files")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert status_line(out, "kai validate") == "Passed"
    assert status_line(out, "kai render --check") == "Passed"
    edit_node(root)
    git(top, "add", "-A")
    proc = pre_commit(top, pre_commit_home)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert status_line(out, "kai render --check") == "Failed"
    assert "changed: rendered/demo/greeter-v1/deployment-greeter-v1-etl.yaml" in out


# --- the CI workflow `kai init` writes ---------------------------------------------------------


def workflow(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def kai_steps(doc: dict[str, Any]) -> list[str]:
    """The shell lines of the steps that run kai itself (not its install)."""
    return [s["run"] for s in doc["jobs"]["kai"]["steps"] if s.get("run", "").startswith("kai ")]


def run_steps(doc: dict[str, Any], top: Path,
              tmp_path: Path) -> list[subprocess.CompletedProcess[str]]:
    """Run the kai steps as GitHub Actions does (`bash -e`, in the job's working directory),
    with `kai` being this checkout's; stops at the first failing step."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    shim = bindir / "kai"
    shim.write_text(
        f"#!/bin/sh\nexec {sys.executable} -c "
        "'import sys; from renderer.cli import main; sys.argv[0] = \"kai\"; main()' \"$@\"\n",
        encoding="utf-8",
    )
    shim.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    cwd = top / doc["jobs"]["kai"].get("defaults", {}).get("run", {}).get("working-directory", ".")
    done = []
    for line in kai_steps(doc):
        proc = subprocess.run(["bash", "-e", "-c", line], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=300, check=False)
        done.append(proc)
        if proc.returncode:
            break
    return done


def test_init_writes_the_workflow_at_the_top(tmp_path: Path) -> None:
    root = tmp_path / "gitops"
    result = kai("init", str(root), "--project", "demo", "--namespace", "kai-demo")
    path = root / ".github" / "workflows" / "kai.yaml"
    assert "  .github/workflows/kai.yaml" in result.output.splitlines()
    assert git(root, "ls-files", ".github").splitlines() == [".github/workflows/kai.yaml"]
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    doc = workflow(path)
    assert doc["on"]["pull_request"] == {"branches": ["main"]}
    assert doc["on"]["push"] == {"branches": ["main"]}
    job = doc["jobs"]["kai"]
    assert "defaults" not in job
    steps = job["steps"]
    assert steps[0]["uses"].startswith("actions/checkout@")
    assert steps[1]["uses"].startswith("actions/setup-python@")
    major, minor = (int(x) for x in str(steps[1]["with"]["python-version"]).split(".")[:2])
    assert (major, minor) >= (3, 11)
    installs = [s["run"] for s in steps if "pip install" in s.get("run", "")]
    assert installs == [f"pip install kai-server=={__version__}"]
    assert "# Replace with how you install kai" in path.read_text(encoding="utf-8")
    assert kai_steps(doc) == ["kai validate .", "kai render --check"]


def test_workflow_is_deterministic_and_follows_branch(tmp_path: Path) -> None:
    for name in ("a", "b"):
        kai("init", str(tmp_path / name), "--project", "demo", "--namespace", "ns")
    a, b = (tmp_path / n / ".github" / "workflows" / "kai.yaml" for n in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    kai("init", str(tmp_path / "c"), "--project", "demo", "--namespace", "ns",
        "--branch", "release/v1")
    doc = workflow(tmp_path / "c" / ".github" / "workflows" / "kai.yaml")
    assert doc["on"]["pull_request"]["branches"] == ["release/v1"]
    assert doc["on"]["push"]["branches"] == ["release/v1"]


def test_init_in_a_subfolder_writes_the_workflow_at_the_git_top(tmp_path: Path) -> None:
    top = tmp_path / "mono"
    gitlib.init(top, "main")
    result = kai("init", str(top / "ops" / "kai"), "--project", "demo", "--namespace", "ns")
    assert "  ../../.github/workflows/kai-demo.yaml" in result.output.splitlines()
    assert not (top / "ops" / "kai" / ".github").exists()
    assert git(top, "ls-files", ".github").splitlines() == [".github/workflows/kai-demo.yaml"]
    assert git(top, "status", "--porcelain", "--untracked-files=all") == ""
    doc = workflow(top / ".github" / "workflows" / "kai-demo.yaml")
    assert doc["jobs"]["kai"]["defaults"] == {"run": {"working-directory": "ops/kai"}}
    assert kai_steps(doc) == ["kai validate .", "kai render --check"]


def test_init_refuses_to_overwrite_a_workflow(tmp_path: Path) -> None:
    top = tmp_path / "mono"
    gitlib.init(top, "main")
    kai("init", str(top / "a"), "--project", "demo", "--namespace", "ns")
    existing = top / ".github" / "workflows" / "kai-demo.yaml"
    before = existing.read_bytes()
    head = git(top, "rev-parse", "HEAD")
    result = kai("init", str(top / "b"), "--project", "demo", "--namespace", "ns", ok=False)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: {existing.resolve()} already exists; refusing to overwrite it "
        "(pass --no-ci to skip the CI workflow)"]
    assert existing.read_bytes() == before
    assert not (top / "b" / "kai.yaml").exists()
    assert git(top, "rev-parse", "HEAD") == head
    # the same project name in another folder: skip the workflow, or name the project apart
    result = kai("init", str(top / "b"), "--project", "demo", "--namespace", "ns", "--no-ci")
    assert existing.read_bytes() == before
    assert not any("workflows" in line for line in result.output.splitlines())
    kai("init", str(top / "c"), "--project", "other", "--namespace", "ns")
    assert (top / ".github" / "workflows" / "kai-other.yaml").is_file()


def test_init_refuses_an_existing_top_level_workflow(tmp_path: Path) -> None:
    root = tmp_path / "gitops"
    (root / ".github" / "workflows").mkdir(parents=True)
    mine = root / ".github" / "workflows" / "kai.yaml"
    mine.write_text("name: mine\n", encoding="utf-8")
    result = kai("init", str(root), "--project", "demo", "--namespace", "ns", ok=False)
    assert result.exit_code == 1 and "kai.yaml already exists" in result.stderr
    assert not (root / "kai.yaml").exists() and not (root / ".git").exists()
    kai("init", str(root), "--project", "demo", "--namespace", "ns", "--no-ci")
    assert mine.read_text(encoding="utf-8") == "name: mine\n"
    assert git(root, "ls-files", ".github") == ""


def test_no_ci_writes_no_workflow(tmp_path: Path) -> None:
    root = tmp_path / "gitops"
    result = kai("init", str(root), "--project", "demo", "--namespace", "ns", "--no-ci")
    assert not (root / ".github").exists()
    assert ".github" not in result.output


@pytest.mark.parametrize("subfolder", ["", "ops/kai"])
def test_workflow_commands_pass_then_catch_a_stale_render(tmp_path: Path, subfolder: str) -> None:
    top = tmp_path / "repo"
    if subfolder:
        gitlib.init(top, "main")
    root = gitops_repo(top / subfolder if subfolder else top)
    name = "kai-demo.yaml" if subfolder else "kai.yaml"
    doc = workflow(top / ".github" / "workflows" / name)
    done = run_steps(doc, top, tmp_path)
    assert [p.returncode for p in done] == [0, 0], [p.stdout + p.stderr for p in done]
    assert "ok: project demo (namespace kai-demo), 1 version" in done[0].stdout
    assert "rendered/demo is up to date" in done[1].stdout
    edit_node(root)
    done = run_steps(doc, top, tmp_path)
    assert [p.returncode for p in done] == [0, 1], [p.stdout + p.stderr for p in done]
    assert "changed: rendered/demo/greeter-v1/deployment-greeter-v1-etl.yaml" in done[1].stdout
    assert "error: rendered/demo is out of date" in done[1].stderr
    expected = break_krt(root)
    done = run_steps(doc, top, tmp_path)
    assert [p.returncode for p in done] == [1]
    assert expected in done[0].stderr.splitlines()
