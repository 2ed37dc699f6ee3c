"""One state change at a time: concurrent kai commands on one repo, as real processes.

After any interleaving, every command that exited 0 has exactly its change in HEAD, every
commit passes `kai render --check` from a clean export, at most one version is
published, and the work tree is clean.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from renderer.lock import repo_lock
from tests.conftest import git
from tests.integration.gitops_helpers import (
    clean,
    head,
    kai,
    kai_process,
    log,
    make_version,
    render_check_at,
    states,
)

pytestmark = pytest.mark.integration

NAMES = ("alpha-v1", "beta-v1", "gamma-v1", "delta-v1")
TRIALS = 8
DEADLINE = 120.0  # seconds for one trial's processes, far above what they need


@pytest.fixture
def four(tmp_path: Path) -> Path:
    """A repo with four versions: alpha and beta stopped, gamma started, delta published."""
    root = tmp_path / "gitops"
    kai("init", str(root), "--project", "demo", "--namespace", "kai-demo")
    for name in NAMES:
        kai("add", str(make_version(tmp_path / "src" / name, name)), "--repo", str(root))
    kai("start", "gamma-v1", "--repo", str(root))
    kai("start", "delta-v1", "--repo", str(root))
    kai("publish", "delta-v1", "--repo", str(root))
    return root


def _run_all(commands: list[tuple[str, str]], repo: Path) -> list[tuple[int, str, str]]:
    procs = [kai_process(action, version, "--repo", str(repo)) for action, version in commands]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=DEADLINE)
        out.append((proc.returncode, stdout, stderr))
    return out


def test_concurrent_state_commands_each_land_exactly_once(four: Path, tmp_path: Path) -> None:
    repo = four
    rng = random.Random(7)
    for trial in range(TRIALS):
        before = head(repo)
        start_states = states(repo)
        stopped = [n for n, s in start_states.items() if s == "stopped"]
        started = [n for n, s in start_states.items() if s == "started"]
        # every command is legal from the state before the trial, and none depends on another
        commands = [("start", n) for n in stopped] + [("publish", n) for n in started[:1]]
        rng.shuffle(commands)
        results = _run_all(commands, repo)
        for (action, version), (code, stdout, stderr) in zip(commands, results, strict=True):
            assert code == 0, f"trial {trial}: kai {action} {version}: {stdout}{stderr}"
            assert "Traceback" not in stderr
        new_commits = git(repo, "rev-list", "--reverse", f"{before}..HEAD").split()
        assert len(new_commits) == len(commands)
        final = states(repo)
        for action, version in commands:
            assert final[version] == ("published" if action == "publish" else "started")
        assert sum(s == "published" for s in final.values()) <= 1
        # each commit's message names the version whose state it changed, and only it
        # (a publish also moves the previously published one back to started)
        parent = before
        for sha in new_commits:
            message = git(repo, "log", "-1", "--format=%s", sha).strip()
            old, new = states(repo, parent), states(repo, sha)
            moved = {n for n in new if new[n] != old.get(n)}
            named = message.removeprefix("kai: ").split()[1]
            assert named in moved, (message, moved)
            assert moved <= {named, *[n for n in old if old[n] == "published"]}
            assert render_check_at(repo, sha, tmp_path / f"check-{trial}") == [], message
            parent = sha
        assert clean(repo)
        # next trial: stop the started ones again so there is work to race on
        for name in NAMES:
            if final[name] == "started" and name not in started:
                kai("stop", name, "--repo", str(repo))


def test_two_publishes_at_once_leave_one_published(four: Path, tmp_path: Path) -> None:
    repo = four
    kai("start", "alpha-v1", "--repo", str(repo))
    before = head(repo)
    results = _run_all([("publish", "alpha-v1"), ("publish", "gamma-v1")], repo)
    assert [code for code, _, _ in results] == [0, 0]
    final = states(repo)
    assert sum(s == "published" for s in final.values()) == 1
    assert final["delta-v1"] == "started"
    messages = log(repo)[:2]
    winner = next(n for n, s in final.items() if s == "published")
    assert messages[0].startswith(f"kai: publish {winner} (")
    for sha in git(repo, "rev-list", f"{before}..HEAD").split():
        assert render_check_at(repo, sha, tmp_path / "check") == []
    assert clean(repo)


def test_a_waiting_command_says_so_and_gives_up_in_bounded_time(four: Path) -> None:
    repo = four
    before = head(repo)
    with repo_lock(repo, "kai test holder"):
        proc = kai_process("start", "alpha-v1", "--repo", str(repo),
                           env={"KAI_LOCK_TIMEOUT": "1"})
        _, stderr = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 1
    lines = stderr.strip().splitlines()
    assert lines[0].startswith("waiting for another kai command on this repo (pid ")
    assert "kai test holder" in lines[0]
    assert lines[-1].startswith("error: another kai command (pid ")
    assert "KAI_LOCK_TIMEOUT" in lines[-1]
    assert head(repo) == before and clean(repo)


def test_a_waiting_command_applies_its_change_on_top(four: Path) -> None:
    repo = four
    with repo_lock(repo, "kai test holder"):
        proc = kai_process("start", "alpha-v1", "--repo", str(repo))
        time.sleep(0.5)  # let it find the lock busy
        # the holder changes the state meanwhile: the waiter must apply its change on top
        (repo / "kai.yaml").write_text(
            (repo / "kai.yaml").read_text().replace(
                "beta-v1:\n    state: stopped", "beta-v1:\n    state: started"))
        git(repo, "commit", "-qam", "hand edit: beta started (render pending)")
    _, stderr = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, stderr
    assert "waiting for another kai command" in stderr
    final = states(repo)
    assert final["alpha-v1"] == "started" and final["beta-v1"] == "started"
    assert log(repo)[0] == "kai: start alpha-v1"
    assert clean(repo)


def test_readers_do_not_block_each_other(four: Path) -> None:
    repo = four
    with repo_lock(repo, "reader one", shared=True):
        result = kai("render", "--check", "--repo", str(repo))
    assert "up to date" in result.output


def test_adds_starts_and_renders_at_once(four: Path, tmp_path: Path) -> None:
    """Different writing commands at once: each lands, and every commit renders clean."""
    repo = four
    sources = [make_version(tmp_path / "more" / name, name) for name in ("eps-v1", "zeta-v1")]
    before = head(repo)
    procs = [
        kai_process("add", str(sources[0]), "--repo", str(repo)),
        kai_process("start", "alpha-v1", "--repo", str(repo)),
        kai_process("add", str(sources[1]), "--repo", str(repo)),
        kai_process("render", "--repo", str(repo)),
        kai_process("stop", "gamma-v1", "--repo", str(repo)),
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0, stderr
    final = states(repo)
    assert final["eps-v1"] == final["zeta-v1"] == "stopped"
    assert final["alpha-v1"] == "started" and final["gamma-v1"] == "stopped"
    commits = git(repo, "rev-list", f"{before}..HEAD").split()
    assert len(commits) == 4  # `kai render` had nothing to change and commits nothing
    for sha in commits:
        assert render_check_at(repo, sha, tmp_path / "check") == []
    assert clean(repo)
