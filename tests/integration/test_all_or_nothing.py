"""All or nothing on disk: faults while a command writes leave the repo as it was.

Faults are real where this machine allows it (a file-size limit makes writes fail as a
full disk does; `kill -9` of a real process), and injected into one os call otherwise.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import time
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

DEADLINE = 120.0


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "gitops"
    kai("init", str(root), "--project", "demo", "--namespace", "kai-demo")
    for name in ("greeter-v1", "greeter-v2"):
        kai("add", str(make_version(tmp_path / "src" / name, name)), "--repo", str(root))
    return root


def _unchanged(repo: Path, before: str, files: dict[str, bytes]) -> None:
    assert head(repo) == before
    assert clean(repo)
    assert snapshot(repo) == files


def test_a_read_only_kai_yaml_changes_nothing(repo: Path) -> None:
    before, files = head(repo), snapshot(repo)
    (repo / "kai.yaml").chmod(0o444)
    try:
        result = kai("start", "greeter-v1", "--repo", str(repo), ok=False)
    finally:
        (repo / "kai.yaml").chmod(0o644)
    assert result.exit_code == 1
    assert "kai.yaml" in result.stderr and "Traceback" not in result.output
    _unchanged(repo, before, files)


def test_kai_yaml_failing_after_the_tree_swap_puts_the_tree_back(
        repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last step (kai.yaml renamed in) fails: the swapped-in tree goes back."""
    before, files = head(repo), snapshot(repo)
    real_replace = os.replace

    def failing_replace(src: object, dst: object, *args: object, **kwargs: object) -> None:
        if os.fspath(dst).endswith("kai.yaml"):  # type: ignore[call-overload]
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(dst))  # type: ignore[call-overload]
        real_replace(src, dst, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", failing_replace)
    result = kai("start", "greeter-v1", "--repo", str(repo), ok=False)
    monkeypatch.undo()
    assert result.exit_code == 1
    assert "Read-only file system" in result.stderr
    _unchanged(repo, before, files)


def test_the_tree_swap_failing_after_kai_yaml_puts_kai_yaml_back(
        repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kai.yaml is made visible first; the tree's swap then fails: kai.yaml goes back."""
    from renderer import atomic

    before, files = head(repo), snapshot(repo)

    def failing_exchange(a: Path, b: Path) -> bool:
        raise OSError(errno.EIO, "Input/output error", os.fspath(b))

    monkeypatch.setattr(atomic, "exchange", failing_exchange)
    result = kai("start", "greeter-v1", "--repo", str(repo), ok=False)
    monkeypatch.undo()
    assert result.exit_code == 1
    assert "Input/output error" in result.stderr and "Traceback" not in result.output
    _unchanged(repo, before, files)


@pytest.mark.parametrize("limit", [512, 2048, 8192, 32768])
def test_a_full_disk_at_any_point_leaves_all_or_nothing(repo: Path, limit: int) -> None:
    """Writes beyond `limit` bytes per file fail (EFBIG), as on a full disk."""
    before, files = head(repo), snapshot(repo)
    prelude = (
        "import resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
    )
    proc = kai_process("start", "greeter-v1", "--repo", str(repo), prelude=prelude)
    _, stderr = proc.communicate(timeout=DEADLINE)
    assert "Traceback" not in stderr
    if proc.returncode == 0:
        assert log(repo)[0] == "kai: start greeter-v1" and clean(repo)
    else:
        assert proc.returncode == 1 and stderr.strip().splitlines()[-1].startswith("error:")
        _unchanged(repo, before, files)


def test_kill_after_the_tree_swap_is_recovered_by_the_next_command(repo: Path) -> None:
    before = head(repo)
    prelude = (
        "import os, signal\n"
        "from renderer import atomic\n"
        "def _die(self):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "atomic.StagedFile.commit = _die\n"
    )
    proc = kai_process("start", "greeter-v1", "--repo", str(repo), prelude=prelude)
    proc.communicate(timeout=DEADLINE)
    assert proc.returncode == -signal.SIGKILL
    assert head(repo) == before
    assert (repo / "rendered" / "demo").is_dir()  # never absent, even mid-change
    result = kai("start", "greeter-v2", "--repo", str(repo))
    assert "recovered from an interrupted `kai start greeter-v1`" in result.stderr
    assert log(repo)[0] == "kai: start greeter-v2"
    assert states(repo) == {"greeter-v1": "stopped", "greeter-v2": "started"}
    assert clean(repo)
    assert render_check_at(repo, head(repo), repo.parent / "check") == []
    leftovers = [p.name for p in (repo / "rendered").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_kill_at_random_moments_never_leaves_a_broken_repo(repo: Path, tmp_path: Path) -> None:
    rng = random.Random(11)
    for trial in range(8):
        proc = kai_process("start", "greeter-v1", "--repo", str(repo))
        time.sleep(rng.uniform(0.2, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=DEADLINE)
        assert (repo / "rendered" / "demo" / "kustomization.yaml").is_file()
        # the next command recovers whatever was left, then does its own work
        result = kai("start", "greeter-v1", "--repo", str(repo))
        assert "Traceback" not in result.output
        assert states(repo)["greeter-v1"] == "started", trial
        assert clean(repo), git(repo, "status", "--porcelain")
        assert render_check_at(repo, head(repo), tmp_path / f"check-{trial}") == []
        hidden = [p.name for p in (repo / "rendered").iterdir() if p.name.startswith(".")]
        assert hidden == [], trial
        kai("stop", "greeter-v1", "--repo", str(repo))
