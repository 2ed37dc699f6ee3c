"""The lifecycle state machine: every rule, every refusal message, and a property test."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from renderer.krt import Config
from renderer.lifecycle import (
    ACTIONS,
    PUBLISH,
    START,
    STOP,
    UNPUBLISH,
    LifecycleError,
    NothingToDo,
    transition,
)
from renderer.project import (
    PUBLISHED,
    STARTED,
    STATES,
    STOPPED,
    ConfigSource,
    Project,
    VersionState,
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


# --- property: no sequence of commands leaves two published versions --------------------

NAMES = ("a", "b", "c", "d")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(ACTIONS)), max_size=40))
def test_no_sequence_publishes_two_versions(commands: list[tuple[str, str]]) -> None:
    p = Project(name="demo", namespace="ns", versions={n: VersionState() for n in NAMES})
    for version, action in commands:
        before = {n: vs.state for n, vs in p.versions.items()}
        try:
            t = transition(p, version, action)
        except LifecycleError:
            continue  # refused: nothing changes
        p = t.apply(p)
        after = {n: vs.state for n, vs in p.versions.items()}
        assert after == t.states
        assert all(s in STATES for s in after.values())
        assert sum(s == PUBLISHED for s in after.values()) <= 1
        # only the target changes, plus the previously published one on publish
        changed = {n for n in NAMES if before[n] != after[n]}
        assert version in changed
        assert changed - {version} <= {n for n in NAMES if before[n] == PUBLISHED}
        assert {
            (START, STOPPED, STARTED),
            (STOP, STARTED, STOPPED),
            (PUBLISH, STARTED, PUBLISHED),
            (UNPUBLISH, PUBLISHED, STARTED),
        } >= {(action, before[version], after[version])}
