"""The lifecycle state machine: every rule, every refusal message, and a property test."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from renderer.krt import Config
from renderer.lifecycle import (
    ACTIONS,
    CANARY,
    PUBLISH,
    START,
    STOP,
    UNPUBLISH,
    LifecycleError,
    NothingToDo,
    transition,
)
from renderer.project import (
    CANARY_MAX_WEIGHT,
    CANARY_MIN_WEIGHT,
    PUBLISHED,
    STARTED,
    STATES,
    STOPPED,
    ConfigSource,
    Project,
    VersionState,
    canary_conflicts,
)


def project(**states: str) -> Project:
    return Project(
        name="demo",
        namespace="kai-demo",
        versions={k.replace("_", "-"): VersionState(state=v) for k, v in states.items()},
    )


# --- allowed transitions ------------------------------------------------------------


def test_start_from_stopped() -> None:
    t = transition(project(v1=STOPPED), "v1", START)
    assert t.states == {"v1": STARTED}
    assert t.summary == "start v1"


def test_stop_from_started() -> None:
    t = transition(project(v1=STARTED), "v1", STOP)
    assert t.states == {"v1": STOPPED}
    assert t.summary == "stop v1"


def test_publish_from_started_without_previous() -> None:
    t = transition(project(v1=STARTED, v2=STOPPED), "v1", PUBLISH)
    assert t.states == {"v1": PUBLISHED, "v2": STOPPED}
    assert t.summary == "publish v1"


def test_publish_moves_previous_back_to_started() -> None:
    p = project(greeter_v1=PUBLISHED, greeter_v2=STARTED)
    t = transition(p, "greeter-v2", PUBLISH)
    assert t.states == {"greeter-v1": STARTED, "greeter-v2": PUBLISHED}
    assert t.summary == "publish greeter-v2 (greeter-v1 → started)"
    assert [(c.version, c.before, c.after) for c in t.changes] == [
        ("greeter-v2", STARTED, PUBLISHED),
        ("greeter-v1", PUBLISHED, STARTED),
    ]


def test_unpublish_from_published() -> None:
    t = transition(project(v1=PUBLISHED), "v1", UNPUBLISH)
    assert t.states == {"v1": STARTED}
    assert t.summary == "unpublish v1"


def test_apply_keeps_config_and_settings() -> None:
    source = ConfigSource(kind="secret", secret="v1-config")
    p = Project(
        name="demo",
        namespace="ns",
        versions={"v1": VersionState(STOPPED, source), "v2": VersionState(STOPPED)},
    )
    new = transition(p, "v1", START).apply(p)
    assert new.versions["v1"] == VersionState(STARTED, source)
    assert new.versions["v2"] == VersionState(STOPPED)
    assert new.namespace == "ns"
    assert p.versions["v1"].state == STOPPED  # the input is not mutated


# --- refusals, each saying what to do instead -------------------------------------------


@pytest.mark.parametrize(
    ("state", "action", "expected"),
    [
        (PUBLISHED, STOP, "unpublish it first with `kai unpublish v1`"),
        (STOPPED, PUBLISH, "start it first with `kai start v1`, then `kai publish v1`"),
        (STOPPED, UNPUBLISH, "v1 is stopped, not published (none is); nothing to unpublish"),
    ],
)
def test_illegal_transitions_say_what_to_do(state: str, action: str, expected: str) -> None:
    p = project(v1=state)
    with pytest.raises(LifecycleError, match=re.escape(expected)) as info:
        transition(p, "v1", action)
    assert not isinstance(info.value, NothingToDo)


@pytest.mark.parametrize(
    ("state", "action", "expected"),
    [
        (STARTED, START, "v1 is already started; nothing to do"),
        (PUBLISHED, START, "v1 is published, so it is already running; nothing to do"),
        (STOPPED, STOP, "v1 is already stopped; nothing to do"),
        (PUBLISHED, PUBLISH, "v1 is already published; nothing to do"),
        (STARTED, UNPUBLISH, "v1 is started, not published (none is); nothing to unpublish"),
    ],
)
def test_requests_that_change_nothing_are_nothing_to_do(state: str, action: str,
                                                        expected: str) -> None:
    """Retry-safe: the version already is where the command would take it."""
    with pytest.raises(NothingToDo, match=re.escape(expected)):
        transition(project(v1=state), "v1", action)


def test_unpublish_names_the_published_version() -> None:
    with pytest.raises(LifecycleError, match=r"the published version is v2"):
        transition(project(v1=STARTED, v2=PUBLISHED), "v1", UNPUBLISH)


def test_unknown_version_lists_known_ones() -> None:
    with pytest.raises(LifecycleError) as info:
        transition(project(b=STOPPED, a=STARTED), "zzz", START)
    msg = str(info.value)
    assert "version 'zzz' is not in kai.yaml (known versions: a, b)" in msg
    assert "kai add" in msg


def test_unknown_version_in_empty_project() -> None:
    with pytest.raises(LifecycleError, match=r"known versions: none yet"):
        transition(project(), "v1", START)


def test_unknown_action() -> None:
    with pytest.raises(LifecycleError, match=r"unknown action 'restart'"):
        transition(project(v1=STOPPED), "v1", "restart")


@pytest.mark.parametrize(("state", "action"), [(STOPPED, START), (STARTED, PUBLISH)])
def test_declared_config_without_source_is_refused(state: str, action: str) -> None:
    config = Config(variables=("API_KEY",), files=("HTTPS_CERT",))
    with pytest.raises(LifecycleError) as info:
        transition(project(v1=state), "v1", action, config=config)
    msg = str(info.value)
    assert f"cannot {action} v1: its krt.yml declares config (API_KEY, HTTPS_CERT)" in msg
    assert "kai.yaml gives it no source" in msg
    assert "config: {secret: v1-config}" in msg


def test_declared_config_with_source_is_allowed() -> None:
    config = Config(variables=("API_KEY",))
    p = Project(
        name="demo",
        namespace="ns",
        versions={"v1": VersionState(STOPPED, ConfigSource(kind="secret", secret="s"))},
    )
    assert transition(p, "v1", START, config=config).states == {"v1": STARTED}


def test_no_declared_config_needs_no_source() -> None:
    assert transition(project(v1=STOPPED), "v1", START, config=Config()).states["v1"] == STARTED


def test_stop_and_unpublish_do_not_need_config() -> None:
    config = Config(variables=("API_KEY",))
    assert transition(project(v1=STARTED), "v1", STOP, config=config).states["v1"] == STOPPED
    assert transition(project(v1=PUBLISHED), "v1", UNPUBLISH, config=config).states["v1"] == STARTED


# --- the canary ----------------------------------------------------------------------------


def canaried(weight: int = 10, **states: str) -> Project:
    """A project with v1 published and v2 the canary at `weight` (plus `states`)."""
    p = project(v1=PUBLISHED, v2=STARTED, **states)
    return replace(p, versions={**p.versions, "v2": replace(p.versions["v2"], canary=weight)})


def test_canary_sets_a_share_of_the_published_versions_traffic() -> None:
    p = project(v1=PUBLISHED, v2=STARTED)
    t = transition(p, "v2", CANARY, weight=10)
    assert t.states == {"v1": PUBLISHED, "v2": STARTED}
    assert t.canary == ("v2", 10) and t.published == "v1"
    assert [(c.version, c.before, c.after, c.weight_before, c.weight_after)
            for c in t.changes] == [("v2", STARTED, STARTED, 0, 10)]
    assert t.summary == "canary v2 10% (v1 90%)"
    after = t.apply(p)
    assert after.versions["v2"] == VersionState(STARTED, canary=10)
    assert after.canary == ("v2", 10) and after.traffic == [("v1", 90), ("v2", 10)]


def test_canary_weight_changes_and_ends() -> None:
    t = transition(canaried(10), "v2", CANARY, weight=25)
    assert t.summary == "canary v2 10% → 25% (v1 75%)"
    assert t.changes[0].describe() == "v2: canary 10% → 25%"
    end = transition(canaried(10), "v2", CANARY, weight=0)
    assert end.summary == "canary v2 ended (v1 100%)"
    assert end.changes[0].describe() == "v2: no longer the canary (was 10%)"
    assert end.canary is None and end.apply(canaried(10)).versions["v2"].canary == 0


def test_clear_without_a_version_ends_whichever_is_the_canary() -> None:
    t = transition(canaried(40), None, CANARY, weight=0)
    assert t.version == "v2" and t.canary is None
    with pytest.raises(NothingToDo, match=r"no version is the canary; nothing to do"):
        transition(project(v1=PUBLISHED, v2=STARTED), None, CANARY, weight=0)


def test_publishing_the_canary_promotes_it() -> None:
    t = transition(canaried(30), "v2", PUBLISH)
    assert t.states == {"v1": STARTED, "v2": PUBLISHED}
    assert t.canary is None
    assert t.summary == "publish v2 (canary promoted, v1 → started)"
    assert [c.describe() for c in t.changes] == [
        "v2: started → published; no longer the canary (was 30%)", "v1: published → started"]
    assert t.apply(canaried(30)).versions["v2"] == VersionState(PUBLISHED)


def test_stopping_the_canary_ends_it_in_the_same_change() -> None:
    t = transition(canaried(30), "v2", STOP)
    assert t.states == {"v1": PUBLISHED, "v2": STOPPED} and t.canary is None
    assert t.summary == "stop v2 (canary ended)"


def test_unpublishing_leaves_nothing_to_split_so_the_canary_ends() -> None:
    t = transition(canaried(30), "v1", UNPUBLISH)
    assert t.states == {"v1": STARTED, "v2": STARTED} and t.canary is None
    assert t.summary == "unpublish v1 (canary v2 ended)"


def test_publishing_another_version_keeps_the_canary_beside_it() -> None:
    t = transition(canaried(30, v3=STARTED), "v3", PUBLISH)
    assert t.states == {"v1": STARTED, "v2": STARTED, "v3": PUBLISHED}
    assert t.canary == ("v2", 30) and t.apply(canaried(30, v3=STARTED)).traffic == [
        ("v3", 70), ("v2", 30)]
    assert t.summary == "publish v3 (v1 → started)"


@pytest.mark.parametrize(
    ("p", "version", "weight", "expected"),
    [
        (project(v1=PUBLISHED, v2=STOPPED), "v2", 10,
         "v2 is stopped; start it first with `kai start v2`, then `kai canary v2 --weight 10`"),
        (project(v1=PUBLISHED, v2=STARTED), "v1", 10,
         "v1 is the published version; a canary is another, started version"),
        (project(v1=STARTED, v2=STARTED), "v2", 10,
         "no version is published, so there is no traffic to split with v2; publish one "
         "first with `kai publish VERSION`"),
        (canaried(10, v3=STARTED), "v3", 20,
         "v2 is the canary already (at 10%) and there is one at a time; end it with "
         "`kai canary v2 --clear`, or promote it with `kai publish v2`"),
        (canaried(10), "v2", 100, "a canary's weight is from 1 to 99"),
        (canaried(10), "v2", -1, "a canary's weight is from 1 to 99"),
        (canaried(10), "v2", None, "a canary's weight is from 1 to 99"),
        (canaried(10), "zzz", 10, "version 'zzz' is not in kai.yaml"),
    ],
)
def test_canary_refusals_say_what_to_do(p: Project, version: str, weight: int | None,
                                        expected: str) -> None:
    with pytest.raises(LifecycleError, match=re.escape(expected)) as info:
        transition(p, version, CANARY, weight=weight)
    assert not isinstance(info.value, NothingToDo)


@pytest.mark.parametrize(
    ("p", "version", "weight", "expected"),
    [
        (canaried(10), "v2", 10, "v2 is already the canary at 10%; nothing to do"),
        (canaried(10, v3=STARTED), "v3", 0,
         "v3 is not the canary (the canary is v2, at 10%); nothing to do"),
        (project(v1=PUBLISHED, v2=STARTED), "v2", 0,
         "v2 is not the canary (no version is); nothing to do"),
    ],
)
def test_canary_requests_that_change_nothing_are_nothing_to_do(
        p: Project, version: str, weight: int, expected: str) -> None:
    with pytest.raises(NothingToDo, match=re.escape(expected)):
        transition(p, version, CANARY, weight=weight)


def test_a_broken_kai_yaml_canary_is_reported_not_carried_on() -> None:
    """A canary on a stopped version (a hand edit): any command says kai.yaml is wrong."""
    p = project(v1=PUBLISHED, v2=STOPPED, v3=STOPPED)
    p = replace(p, versions={**p.versions, "v2": replace(p.versions["v2"], canary=10)})
    with pytest.raises(LifecycleError, match=r"kai.yaml: versions.v2.canary: v2 is stopped"):
        transition(p, "v3", START)


@pytest.mark.parametrize(
    ("states", "canaries", "expected"),
    [
        ({"a": PUBLISHED, "b": STARTED}, {"b": 10}, []),
        ({"a": PUBLISHED, "b": STARTED}, {"b": 0}, []),
        ({"a": PUBLISHED, "b": STARTED}, {"b": 100}, [("b", "has canary weight 100, but")]),
        ({"a": PUBLISHED}, {"a": 10}, [("a", "is published, so it cannot be the canary")]),
        ({"a": PUBLISHED, "b": STOPPED}, {"b": 10}, [("b", "is stopped, and a canary")]),
        ({"a": STARTED, "b": STARTED}, {"b": 10}, [("b", "is a canary, but no version")]),
        ({"a": PUBLISHED, "b": STARTED, "c": STARTED}, {"b": 5, "c": 5},
         [("c", "is a canary too, but only one version can be the canary and b is")]),
    ],
)
def test_the_canary_rules(states: dict[str, str], canaries: dict[str, int],
                          expected: list[tuple[str, str]]) -> None:
    found = canary_conflicts(states, canaries)
    assert [name for name, _ in found] == [name for name, _ in expected]
    for (_, message), (_, start) in zip(found, expected, strict=True):
        assert message.startswith(start)


# --- property: every command together -------------------------------------------------------

NAMES = ("a", "b", "c", "d")
WEIGHTS = (-1, 0, CANARY_MIN_WEIGHT, 10, 50, CANARY_MAX_WEIGHT, CANARY_MAX_WEIGHT + 1)
COMMAND = st.one_of(
    st.tuples(st.sampled_from(NAMES), st.sampled_from(ACTIONS), st.none()),
    st.tuples(st.sampled_from((*NAMES, None)), st.just(CANARY), st.sampled_from(WEIGHTS)),
    st.tuples(st.sampled_from((*NAMES, None)), st.just(CANARY), st.just(0)),  # --clear
)


@st.composite
def start_project(draw: st.DrawFn) -> Project:
    """A project that keeps the rules to begin with: each version in some state, at most
    one published and, often, a canary beside it (so that the commands meet one)."""
    with_canary = draw(st.booleans())
    drawn: list[str] = draw(st.lists(st.sampled_from(STATES), min_size=len(NAMES),
                                     max_size=len(NAMES)))
    states = dict(zip(NAMES, drawn, strict=True))
    published = [n for n, s in states.items() if s == PUBLISHED]
    versions = {n: VersionState(STARTED if n in published[1:] else s)
                for n, s in states.items()}
    started = [n for n, vs in versions.items() if vs.state == STARTED]
    if published and started and with_canary:
        name = draw(st.sampled_from(started))
        weight = draw(st.integers(CANARY_MIN_WEIGHT, CANARY_MAX_WEIGHT))
        versions[name] = VersionState(STARTED, canary=weight)
    return Project(name="demo", namespace="ns", versions=versions)


@settings(max_examples=400, deadline=None)
@given(start_project(), st.lists(COMMAND, max_size=40))
def test_no_sequence_breaks_the_rules(
        p: Project, commands: list[tuple[str | None, str, int | None]]) -> None:
    """start, stop, publish, unpublish and canary in any order: never two published, never
    a canary on the published version (or a stopped one, or without a published one), at
    most one canary, its weight always from 1 to 99; a refused command changes nothing."""
    for version, action, weight in commands:
        before = {n: vs.state for n, vs in p.versions.items()}
        weights = {n: vs.canary for n, vs in p.versions.items()}
        try:
            t = transition(p, version, action, weight=weight)
        except LifecycleError as exc:
            # refused: nothing changes; and never because a command broke a rule, which
            # transition reports as a broken kai.yaml
            assert not str(exc).startswith("kai.yaml:"), exc
            continue
        p = t.apply(p)
        after = {n: vs.state for n, vs in p.versions.items()}
        canaries = {n: vs.canary for n, vs in p.versions.items()}
        assert after == t.states
        assert all(s in STATES for s in after.values())
        assert sum(s == PUBLISHED for s in after.values()) <= 1
        named = [n for n, w in canaries.items() if w]
        assert len(named) <= 1
        for name in named:
            assert CANARY_MIN_WEIGHT <= canaries[name] <= CANARY_MAX_WEIGHT
            assert after[name] == STARTED  # never published, never stopped
            assert PUBLISHED in after.values()  # there is traffic to split
        assert canary_conflicts(after, canaries) == []
        assert t.canary == p.canary and t.published == p.published
        assert sum(w for _, w in p.traffic) in ((100,) if p.published else (0,))
        target = t.version
        assert version in (target, None)
        assert t.summary.split()[:2] == [action, target]
        changed = {n for n in NAMES if before[n] != after[n]}
        moved = {n for n in NAMES if weights[n] != canaries[n]}
        if action == CANARY:
            assert changed == set() and moved == {target}
            assert canaries[target] == weight
        else:
            assert target in changed
            # only the target changes, plus the previously published one on publish
            assert changed - {target} <= {n for n in NAMES if before[n] == PUBLISHED}
            # a canary ends (never starts) on a state command: its own stop or promotion,
            # or the published version's unpublish
            assert all(not canaries[n] for n in moved)
            assert moved - {target} <= ({n for n in NAMES if weights[n]}
                                        if action == UNPUBLISH else set())
            assert {
                (START, STOPPED, STARTED),
                (STOP, STARTED, STOPPED),
                (PUBLISH, STARTED, PUBLISHED),
                (UNPUBLISH, PUBLISHED, STARTED),
            } >= {(action, before[target], after[target])}
