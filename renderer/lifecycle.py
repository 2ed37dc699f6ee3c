"""The version lifecycle: which state changes are allowed and what they do.

Pure: no files, no git. `transition` takes the project (kai.yaml) and returns the
new desired states plus a one-line summary used as the commit message; every
illegal request raises :class:`LifecycleError` saying what to do instead, and a request
that changes nothing (`start` on a started version) raises its subclass
:class:`NothingToDo`, which the commands report with exit code 0.

    | action    | allowed from | result                                            |
    | start     | stopped      | started                                           |
    | stop      | started      | stopped (a published version is unpublished first)|
    | publish   | started      | published; the previously published -> started    |
    | unpublish | published    | started                                           |
    | canary    | started      | N% of the published version's traffic (0: ends it)|

The canary (renderer.project.canary_conflicts holds its rules) is one started version
beside the published one. Publishing it promotes it (the canary ends); stopping it, or
unpublishing the published version (nothing left to split), ends it in the same change.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .krt import Config
from .project import (
    CANARY_MAX_WEIGHT,
    CANARY_MIN_WEIGHT,
    PUBLISHED,
    STARTED,
    STOPPED,
    TRAFFIC,
    Project,
    VersionState,
    canary_conflicts,
    lacks_config_source,
    no_config_source,
    too_many_published,
)

START = "start"
STOP = "stop"
PUBLISH = "publish"
UNPUBLISH = "unpublish"
ACTIONS = (START, STOP, PUBLISH, UNPUBLISH)  # the state actions
CANARY = "canary"  # sets (or, with weight 0, ends) the canary: `kai canary`


class LifecycleError(Exception):
    """A state change that is not allowed; the message says what to do instead."""


class NothingToDo(LifecycleError):
    """The version is already where the command would take it: nothing changes.

    Commands report it and exit 0, so automation can retry a state command safely.
    """


@dataclass(frozen=True)
class Change:
    version: str
    before: str
    after: str
    weight_before: int = 0  # its canary weight before and after (0: not the canary)
    weight_after: int = 0

    def describe(self) -> str:
        """`greeter-v1: published → started`, `greeter-v2: canary 10% → 25%`."""
        parts = [f"{self.before} → {self.after}"] if self.before != self.after else []
        if self.weight_before != self.weight_after:
            if not self.weight_before:
                parts.append(f"canary at {self.weight_after}%")
            elif not self.weight_after:
                parts.append(f"no longer the canary (was {self.weight_before}%)")
            else:
                parts.append(f"canary {self.weight_before}% → {self.weight_after}%")
        return f"{self.version}: {'; '.join(parts)}"


@dataclass(frozen=True)
class Transition:
    """The outcome of one lifecycle command."""

    action: str
    version: str
    changes: tuple[Change, ...]
    states: dict[str, str]  # every version's desired state afterwards
    canary: tuple[str, int] | None = None  # the canary and its weight afterwards
    published: str | None = None  # the published version afterwards

    @property
    def summary(self) -> str:
        """`publish greeter-v2 (greeter-v1 → started)`, `canary greeter-v2 10% (greeter-v1
        90%)`: the commit message after `kai: `."""
        if self.action == CANARY:
            (change,) = self.changes
            old, new = change.weight_before, change.weight_after
            text = (f"canary {self.version} ended" if not new else
                    f"canary {self.version} {old}% → {new}%" if old else
                    f"canary {self.version} {new}%")
            return f"{text} ({self.published} {TRAFFIC - new}%)"
        side = [f"{c.version} → {c.after}" for c in self.changes
                if c.version != self.version and c.before != c.after]
        for c in self.changes:
            if c.weight_before != c.weight_after:
                if c.version != self.version:
                    side.append(f"canary {c.version} ended")
                else:
                    side.insert(0, "canary promoted" if self.action == PUBLISH
                                else "canary ended")
        text = f"{self.action} {self.version}"
        return f"{text} ({', '.join(side)})" if side else text

    def apply(self, project: Project) -> Project:
        """The project with the new states and canary (config sources and settings
        untouched)."""
        versions = dict(project.versions)
        for change in self.changes:
            current = versions.get(change.version, VersionState())
            versions[change.version] = replace(current, state=change.after,
                                               canary=change.weight_after)
        return replace(project, versions=versions)


def transition(
    project: Project, version: str | None, action: str, config: Config | None = None,
    weight: int | None = None,
) -> Transition:
    """Apply `action` (start|stop|publish|unpublish|canary) to `version` in `project`.

    `config` is what the version's krt.yml declares; a start or publish is refused
    while declared config has no source in kai.yaml. `weight` is the canary's share in
    percent, for `canary` only (0 ends the canary); `version` None, with weight 0, ends
    whichever version is the canary. Raises LifecycleError.
    """
    if action not in (*ACTIONS, CANARY):
        raise LifecycleError(
            f"unknown action {action!r} (allowed: {', '.join((*ACTIONS, CANARY))})")
    if action == CANARY:
        if weight is None or not 0 <= weight <= CANARY_MAX_WEIGHT:
            raise LifecycleError(
                f"a canary's weight is from {CANARY_MIN_WEIGHT} to {CANARY_MAX_WEIGHT} "
                f"(percent of the traffic), or 0 to end the canary; got {weight}")
        if version is None and weight == 0:
            current = project.canary
            if current is None:
                raise NothingToDo("no version is the canary; nothing to do")
            version = current[0]
    if version is None or version not in project.versions:
        known = ", ".join(sorted(project.versions)) or "none yet"
        raise LifecycleError(
            f"version {version!r} is not in kai.yaml (known versions: {known}); "
            "add it first with `kai add PATH` (a version directory or a .krt file)"
        )
    state = project.state_of(version)
    published = project.published
    canary = project.canary
    changes: list[Change]
    if action == START:
        if state == STARTED:
            raise NothingToDo(f"{version} is already started; nothing to do")
        if state == PUBLISHED:
            raise NothingToDo(f"{version} is published, so it is already running; nothing to do")
        _require_config(project, version, config, action)
        changes = [Change(version, STOPPED, STARTED)]
    elif action == STOP:
        if state == STOPPED:
            raise NothingToDo(f"{version} is already stopped; nothing to do")
        if state == PUBLISHED:
            raise LifecycleError(
                f"{version} is published; unpublish it first with `kai unpublish {version}` "
                f"(or publish another version), then `kai stop {version}`"
            )
        changes = [Change(version, STARTED, STOPPED, *_ends(project, version))]
    elif action == PUBLISH:
        if state == PUBLISHED:
            raise NothingToDo(f"{version} is already published; nothing to do")
        if state == STOPPED:
            raise LifecycleError(
                f"{version} is stopped; start it first with `kai start {version}`, "
                f"then `kai publish {version}`"
            )
        _require_config(project, version, config, action)
        changes = [Change(version, STARTED, PUBLISHED, *_ends(project, version))]
        if published is not None:
            changes.append(Change(published, PUBLISHED, STARTED))
    elif action == UNPUBLISH:
        if state != PUBLISHED:
            hint = f"the published version is {published}" if published else "none is"
            error = NothingToDo if state == STARTED else LifecycleError
            raise error(f"{version} is {state}, not published ({hint}); nothing to unpublish")
        changes = [Change(version, PUBLISHED, STARTED)]
        if canary is not None:  # nothing left to split: the canary ends too
            changes.append(Change(canary[0], STARTED, STARTED, *_ends(project, canary[0])))
    else:  # CANARY
        assert weight is not None
        changes = [_canary_change(project, version, weight)]
    states = {name: vs.state for name, vs in project.versions.items()}
    canaries = {name: vs.canary for name, vs in project.versions.items()}
    for change in changes:
        states[change.version] = change.after
        canaries[change.version] = change.weight_after
    broken = too_many_published(states)
    if broken:  # kai.yaml was already broken
        raise LifecycleError(f"kai.yaml: {broken}; fix kai.yaml so at most one is `published`")
    conflicts = canary_conflicts(states, canaries)
    if conflicts:  # kai.yaml was already broken
        name, message = conflicts[0]
        raise LifecycleError(f"kai.yaml: versions.{name}.canary: {name} {message}")
    after = next(((n, w) for n, w in sorted(canaries.items()) if w), None)
    return Transition(action, version, tuple(changes), dict(sorted(states.items())), after,
                      next((n for n, s in sorted(states.items()) if s == PUBLISHED), None))


def _ends(project: Project, version: str) -> tuple[int, int]:
    """(weight before, after) of a version whose change ends its canary, if it is one."""
    return project.versions[version].canary, 0


def _canary_change(project: Project, version: str, weight: int) -> Change:
    """`kai canary VERSION --weight N`: the change, or why it is refused."""
    state = project.state_of(version)
    current = project.canary
    old = project.versions[version].canary
    if weight == 0:
        if not old:
            hint = (f"the canary is {current[0]}, at {current[1]}%" if current
                    else "no version is")
            raise NothingToDo(f"{version} is not the canary ({hint}); nothing to do")
        return Change(version, state, state, old, 0)
    if state == STOPPED:
        raise LifecycleError(
            f"{version} is stopped; start it first with `kai start {version}`, "
            f"then `kai canary {version} --weight {weight}`"
        )
    if state == PUBLISHED:
        raise LifecycleError(
            f"{version} is the published version; a canary is another, started version "
            f"that takes a share of its traffic: `kai canary OTHER --weight {weight}`"
        )
    if project.published is None:
        raise LifecycleError(
            f"no version is published, so there is no traffic to split with {version}; "
            "publish one first with `kai publish VERSION`"
        )
    if current is not None and current[0] != version:
        raise LifecycleError(
            f"{current[0]} is the canary already (at {current[1]}%) and there is one at a "
            f"time; end it with `kai canary {current[0]} --clear`, or promote it with "
            f"`kai publish {current[0]}`, then `kai canary {version} --weight {weight}`"
        )
    if old == weight:
        raise NothingToDo(f"{version} is already the canary at {weight}%; nothing to do")
    return Change(version, state, state, old, weight)


def _require_config(project: Project, version: str, config: Config | None, action: str) -> None:
    vs = project.versions.get(version)
    if config is not None and lacks_config_source(config, vs.config if vs else None):
        raise LifecycleError(f"cannot {action} {version}: {no_config_source(version, config)}")
