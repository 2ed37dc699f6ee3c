"""`kai canary` against real git repos: one commit per command, the refusals, the repo lock,
what `kai status` shows, and every commit rendering as `kai render` would (from a clean
export), with the Ingress and with a GRPCRoute."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

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

DEADLINE = 120.0  # seconds for one process, far above what it needs
CANARY_INGRESS = "rendered/demo/greeter-v2/ingress-greeter-v2-canary.yaml"
ROUTE = "rendered/demo/grpcroute-active-entrypoint.yaml"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """greeter-v1 published, greeter-v2 started, greeter-v3 stopped."""
    root = tmp_path / "gitops"
    kai("init", str(root), "--project", "demo", "--namespace", "kai-demo")
    for name in ("greeter-v1", "greeter-v2", "greeter-v3"):
        kai("add", str(make_version(tmp_path / "src" / name, name)), "--repo", str(root))
    kai("start", "greeter-v1", "--repo", str(root))
    kai("start", "greeter-v2", "--repo", str(root))
    kai("publish", "greeter-v1", "--repo", str(root))
    return root


def canaries(repo: Path, rev: str | None = None) -> dict[str, int]:
    """Each version's canary weight in kai.yaml (on disk, or at git revision `rev`)."""
    text = git(repo, "show", f"{rev}:./kai.yaml") if rev else (repo / "kai.yaml").read_text()
    doc = yaml.safe_load(text)
    return {name: v["canary"]["weight"] for name, v in doc["versions"].items()
            if (v or {}).get("canary")}


def changed_in_head(repo: Path) -> set[str]:
    out = git(repo, "show", "--name-only", "--format=", "HEAD")
    return {line for line in out.splitlines() if line}


def one_commit(repo: Path, *args: str) -> str:
    """Run `kai ARGS`: it makes exactly one commit, of kai.yaml and rendered/ only, that
    renders as `kai render` would; returns its output."""
    before = head(repo)
    result = kai(*args, "--repo", str(repo))
    assert git(repo, "rev-list", "--count", f"{before}..HEAD").strip() == "1", args
    assert head(repo)[:12] in result.output
    assert {p.split("/")[0] for p in changed_in_head(repo)} <= {"kai.yaml", "rendered"}
    assert clean(repo)
    assert render_check_at(repo, head(repo), repo.parent / f"check-{head(repo)[:8]}") == []
    return result.output


def test_each_canary_command_is_one_commit(repo: Path) -> None:
    out = one_commit(repo, "canary", "greeter-v2", "--weight", "10")
    assert "greeter-v2: canary at 10%" in out
    assert log(repo)[0] == "kai: canary greeter-v2 10% (greeter-v1 90%)"
    assert canaries(repo) == {"greeter-v2": 10}
    ingress = yaml.safe_load((repo / CANARY_INGRESS).read_text())
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"] == "10"
    assert changed_in_head(repo) == {"kai.yaml", CANARY_INGRESS, "rendered/demo/kustomization.yaml"}

    out = one_commit(repo, "canary", "greeter-v2", "--weight", "25")
    assert "greeter-v2: canary 10% → 25%" in out
    assert log(repo)[0] == "kai: canary greeter-v2 10% → 25% (greeter-v1 75%)"
    assert changed_in_head(repo) == {"kai.yaml", CANARY_INGRESS}

    out = one_commit(repo, "canary", "--clear")  # no VERSION: whichever is the canary
    assert "greeter-v2: no longer the canary (was 25%)" in out
    assert log(repo)[0] == "kai: canary greeter-v2 ended (greeter-v1 100%)"
    assert canaries(repo) == {} and not (repo / CANARY_INGRESS).exists()

    one_commit(repo, "canary", "greeter-v2", "--weight", "50")
    one_commit(repo, "canary", "greeter-v2", "--weight", "0")
    assert log(repo)[0] == "kai: canary greeter-v2 ended (greeter-v1 100%)"
    assert states(repo) == {"greeter-v1": "published", "greeter-v2": "started",
                            "greeter-v3": "stopped"}


def test_publishing_the_canary_promotes_it(repo: Path) -> None:
    one_commit(repo, "canary", "greeter-v2", "--weight", "30")
    out = one_commit(repo, "publish", "greeter-v2")
    assert "greeter-v2: started → published; no longer the canary (was 30%)" in out
    assert "greeter-v1: published → started" in out
    assert log(repo)[0] == "kai: publish greeter-v2 (canary promoted, greeter-v1 → started)"
    assert states(repo)["greeter-v2"] == "published" and canaries(repo) == {}
    assert (repo / "rendered/demo/greeter-v2/service-active-entrypoint.yaml").is_file()
    assert (repo / "rendered/demo/greeter-v2/ingress-active-entrypoint.yaml").is_file()
    assert not list((repo / "rendered/demo").rglob("ingress-*-canary.yaml"))


def test_stopping_the_canary_or_unpublishing_ends_it_in_the_same_commit(repo: Path) -> None:
    one_commit(repo, "canary", "greeter-v2", "--weight", "30")
    one_commit(repo, "stop", "greeter-v2")
    assert log(repo)[0] == "kai: stop greeter-v2 (canary ended)"
    assert canaries(repo) == {} and states(repo)["greeter-v2"] == "stopped"
    one_commit(repo, "start", "greeter-v2")
    one_commit(repo, "canary", "greeter-v2", "--weight", "30")
    one_commit(repo, "unpublish", "greeter-v1")
    assert log(repo)[0] == "kai: unpublish greeter-v1 (canary greeter-v2 ended)"
    assert canaries(repo) == {} and not list((repo / "rendered/demo").rglob("ingress-*"))


@pytest.mark.parametrize(("args", "message"), [
    (("greeter-v3", "--weight", "10"), "greeter-v3 is stopped; start it first with "
                                       "`kai start greeter-v3`"),
    (("greeter-v1", "--weight", "10"), "greeter-v1 is the published version"),
    (("nope", "--weight", "10"), "known versions: greeter-v1, greeter-v2, greeter-v3"),
])
def test_refusals_are_one_line_and_change_nothing(repo: Path, args: tuple[str, ...],
                                                  message: str) -> None:
    before = head(repo)
    result = kai("canary", *args, "--repo", str(repo), ok=False)
    assert result.exit_code == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert head(repo) == before and clean(repo)


def test_one_canary_at_a_time_and_none_without_a_published_version(repo: Path) -> None:
    one_commit(repo, "start", "greeter-v3")
    one_commit(repo, "canary", "greeter-v2", "--weight", "10")
    before = head(repo)
    result = kai("canary", "greeter-v3", "--weight", "5", "--repo", str(repo), ok=False)
    assert result.exit_code == 1
    assert ("greeter-v2 is the canary already (at 10%) and there is one at a time; end it "
            "with `kai canary greeter-v2 --clear`") in result.stderr
    one_commit(repo, "unpublish", "greeter-v1")
    result = kai("canary", "greeter-v3", "--weight", "5", "--repo", str(repo), ok=False)
    assert "no version is published, so there is no traffic to split" in result.stderr
    assert head(repo) != before and clean(repo) and canaries(repo) == {}


def test_what_changes_nothing_exits_0_without_a_commit(repo: Path) -> None:
    before = head(repo)
    result = kai("canary", "--clear", "--repo", str(repo))
    assert result.output.strip() == "nothing to do: no version is the canary"
    result = kai("canary", "greeter-v2", "--clear", "--repo", str(repo))
    assert result.output.strip() == "nothing to do: greeter-v2 is not the canary (no version is)"
    one_commit(repo, "canary", "greeter-v2", "--weight", "10")
    result = kai("canary", "greeter-v2", "--weight", "10", "--repo", str(repo))
    assert result.output.strip() == "nothing to do: greeter-v2 is already the canary at 10%"
    assert git(repo, "rev-list", "--count", f"{before}..HEAD").strip() == "1"


@pytest.mark.parametrize(("args", "says"), [
    (("greeter-v2",), "give --weight N (0 ends the canary) or --clear"),
    (("greeter-v2", "--weight", "5", "--clear"), "give --weight N or --clear, not both"),
    (("--weight", "5"), "name the VERSION that gets the share of the traffic"),
    (("greeter-v2", "--weight", "100"), "100 is not in the range 0<=x<=99"),
    (("greeter-v2", "--weight", "-1"), "-1 is not in the range 0<=x<=99"),
])
def test_usage_errors(repo: Path, args: tuple[str, ...], says: str) -> None:
    before = head(repo)
    result = kai("canary", *args, "--repo", str(repo), ok=False)
    assert result.exit_code == 2 and says in result.stderr
    assert head(repo) == before and clean(repo)


def test_branch_and_no_commit(repo: Path) -> None:
    main_sha = head(repo)
    result = kai("canary", "greeter-v2", "--weight", "10", "--branch", "try-v2", "--repo",
                 str(repo))
    assert "git push -u origin try-v2" in result.output
    assert head(repo) == main_sha and canaries(repo) == {}  # the checkout stays as it was
    assert git(repo, "log", "-1", "--format=%s", "try-v2").strip() == (
        "kai: canary greeter-v2 10% (greeter-v1 90%)")
    assert canaries(repo, "try-v2") == {"greeter-v2": 10}
    result = kai("canary", "greeter-v2", "--weight", "10", "--no-commit", "--repo", str(repo))
    assert "not committed" in result.output and head(repo) == main_sha
    assert canaries(repo) == {"greeter-v2": 10} and (repo / CANARY_INGRESS).is_file()
    refused = kai("canary", "greeter-v2", "--weight", "20", "--repo", str(repo), ok=False)
    assert refused.exit_code == 1 and "uncommitted changes in kai.yaml" in refused.stderr


def test_status_shows_the_split(repo: Path) -> None:
    one_commit(repo, "canary", "greeter-v2", "--weight", "15")
    table = kai("status", "--repo", str(repo)).output
    line = next(ln for ln in table.splitlines() if ln.startswith("greeter-v2"))
    assert "started (canary 15%)" in line and "Ingress" in line
    assert ("traffic: greeter-v1 85%, greeter-v2 15% (canary through a second Ingress with "
            "ingress-nginx's canary-weight)") in table
    data: dict[str, Any] = json.loads(kai("status", "--json", "--repo", str(repo)).output)
    assert data["traffic"] == {
        "through": "ingress", "canary": {"version": "greeter-v2", "weight": 15},
        "split": [{"version": "greeter-v1", "weight": 85},
                  {"version": "greeter-v2", "weight": 15}]}
    assert [v["canary"] for v in data["versions"]] == [None, 15, None]
    one_commit(repo, "canary", "--clear")
    table = kai("status", "--repo", str(repo)).output
    assert "traffic: greeter-v1 100% (through the Ingress)" in table
    assert "canary" not in table


GATEWAY = """\
gateway:
  parentRefs:
    - {name: public, namespace: gateway-system, sectionName: grpc}
  hostnames: [greeter.example.com]
"""


def test_with_a_gateway_the_grpcroute_carries_the_weights(repo: Path) -> None:
    with open(repo / "kai.yaml", "a", encoding="utf-8") as fh:
        fh.write(GATEWAY)
    kai("render", "--repo", str(repo))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "Gateway API instead of the Ingress")
    assert not list((repo / "rendered/demo").rglob("ingress-*.yaml"))

    def backends() -> list[dict[str, Any]]:
        route = yaml.safe_load((repo / ROUTE).read_text())
        refs: list[dict[str, Any]] = route["spec"]["rules"][0]["backendRefs"]
        return refs

    assert backends() == [{"name": "active-entrypoint", "port": 9000, "weight": 100}]
    one_commit(repo, "canary", "greeter-v2", "--weight", "20")
    assert changed_in_head(repo) == {"kai.yaml", ROUTE}
    assert backends() == [{"name": "active-entrypoint", "port": 9000, "weight": 80},
                          {"name": "greeter-v2", "port": 9000, "weight": 20}]
    table = kai("status", "--repo", str(repo)).output
    assert "traffic: greeter-v1 80%, greeter-v2 20% (canary through the GRPCRoute's backend " \
           "weights)" in table
    assert "* published: its Service is active-entrypoint, with the GRPCRoute" in table
    one_commit(repo, "publish", "greeter-v2")
    assert backends() == [{"name": "active-entrypoint", "port": 9000, "weight": 100}]
    one_commit(repo, "unpublish", "greeter-v2")
    assert not (repo / ROUTE).exists()


# --- the repo lock ------------------------------------------------------------------------------


def test_a_waiting_canary_command_applies_its_change_on_top(repo: Path) -> None:
    with repo_lock(repo, "kai test holder"):
        proc = kai_process("canary", "greeter-v2", "--weight", "10", "--repo", str(repo))
        assert proc.stderr is not None
        waiting = proc.stderr.readline()  # it found the lock taken (or exited)
        assert waiting.startswith("waiting for another kai command"), waiting
        # the holder starts greeter-v3 meanwhile (by hand): the waiter keeps that
        (repo / "kai.yaml").write_text((repo / "kai.yaml").read_text().replace(
            "greeter-v3:\n    state: stopped", "greeter-v3:\n    state: started"))
        git(repo, "commit", "-qam", "hand edit: greeter-v3 started (render pending)")
    _, stderr = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, stderr
    assert states(repo)["greeter-v3"] == "started" and canaries(repo) == {"greeter-v2": 10}
    assert log(repo)[0] == "kai: canary greeter-v2 10% (greeter-v1 90%)"
    assert clean(repo)


def test_a_waiting_canary_command_gives_up_in_bounded_time(repo: Path) -> None:
    before = head(repo)
    with repo_lock(repo, "kai test holder"):
        proc = kai_process("canary", "greeter-v2", "--weight", "10", "--repo", str(repo),
                           env={"KAI_LOCK_TIMEOUT": "1"})
        _, stderr = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 1
    assert stderr.strip().splitlines()[-1].startswith("error: another kai command (pid ")
    assert head(repo) == before and clean(repo)


def test_racing_canary_and_state_commands_keep_the_rules(repo: Path, tmp_path: Path) -> None:
    """Commands whose success depends on which runs first, at once as real processes: each
    lands whole or is refused in one line, at most one canary, never on the published
    version, and every commit renders clean."""
    before = head(repo)
    commands = [("canary", "greeter-v2", "--weight", "10"), ("start", "greeter-v3"),
                ("canary", "greeter-v3", "--weight", "5"), ("publish", "greeter-v2"),
                ("canary", "greeter-v2", "--weight", "40")]
    procs = [kai_process(*args, "--repo", str(repo)) for args in commands]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=DEADLINE)
        results.append((proc.returncode, stdout, stderr))
    for args, (code, stdout, stderr) in zip(commands, results, strict=True):
        assert code in (0, 1), (args, stdout, stderr)
        assert "Traceback" not in stderr
        said = [ln for ln in stderr.splitlines() if not ln.startswith("waiting for another")]
        if code == 1:  # refused in one line, after waiting its turn perhaps
            assert len(said) == 1 and said[0].startswith("error: "), stderr
    commits = git(repo, "rev-list", "--reverse", f"{before}..HEAD").split()
    committed = sum(1 for code, stdout, _ in results if code == 0 and "committed" in stdout)
    assert len(commits) == committed >= 1  # `kai start greeter-v3` lands whenever it runs
    for sha in commits:
        assert render_check_at(repo, sha, tmp_path / "check") == []
        now, weights = states(repo, sha), canaries(repo, sha)
        assert sum(s == "published" for s in now.values()) <= 1
        assert len(weights) <= 1
        assert all(now[n] == "started" and 1 <= w <= 99 for n, w in weights.items())
    assert clean(repo)
