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
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .krt import Config
from .project import (
    PUBLISHED,
    STARTED,
    STOPPED,
    Project,
    VersionState,
    lacks_config_source,
    no_config_source,
    too_many_published,
)

START = "start"
STOP = "stop"
PUBLISH = "publish"
UNPUBLISH = "unpublish"
ACTIONS = (START, STOP, PUBLISH, UNPUBLISH)


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


@dataclass(frozen=True)
class Transition:
    """The outcome of one lifecycle command."""

    action: str
    version: str
    changes: tuple[Change, ...]
    states: dict[str, str]  # every version's desired state afterwards

    @property
    def summary(self) -> str:
        """`publish greeter-v2 (greeter-v1 → started)`: the commit message after `kai: `."""
        side = [f"{c.version} → {c.after}" for c in self.changes if c.version != self.version]
        text = f"{self.action} {self.version}"
        return f"{text} ({', '.join(side)})" if side else text

    def apply(self, project: Project) -> Project:
        """The project with the new states (config sources and settings untouched)."""
        versions = dict(project.versions)
        for change in self.changes:
            current = versions.get(change.version, VersionState())
            versions[change.version] = replace(current, state=change.after)
        return replace(project, versions=versions)


def transition(
    project: Project, version: str, action: str, config: Config | None = None
) -> Transition:
    """Apply `action` (start|stop|publish|unpublish) to `version` in `project`.

    `config` is what the version's krt.yml declares; a start or publish is refused
    while declared config has no source in kai.yaml. Raises LifecycleError.
    """
    if action not in ACTIONS:
        raise LifecycleError(f"unknown action {action!r} (allowed: {', '.join(ACTIONS)})")
    if version not in project.versions:
        known = ", ".join(sorted(project.versions)) or "none yet"
        raise LifecycleError(
            f"version {version!r} is not in kai.yaml (known versions: {known}); "
            "add it first with `kai add PATH` (a version directory or a .krt file)"
        )
    state = project.state_of(version)
    published = project.published
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
        changes = [Change(version, STARTED, STOPPED)]
    elif action == PUBLISH:
        if state == PUBLISHED:
            raise NothingToDo(f"{version} is already published; nothing to do")
        if state == STOPPED:
            raise LifecycleError(
                f"{version} is stopped; start it first with `kai start {version}`, "
                f"then `kai publish {version}`"
            )
        _require_config(project, version, config, action)
        changes = [Change(version, STARTED, PUBLISHED)]
        if published is not None:
            changes.append(Change(published, PUBLISHED, STARTED))
    else:  # UNPUBLISH
        if state != PUBLISHED:
            hint = f"the published version is {published}" if published else "none is"
            error = NothingToDo if state == STARTED else LifecycleError
            raise error(f"{version} is {state}, not published ({hint}); nothing to unpublish")
        changes = [Change(version, PUBLISHED, STARTED)]
    states = {name: vs.state for name, vs in project.versions.items()}
    for change in changes:
        states[change.version] = change.after
    broken = too_many_published(states)
    if broken:  # kai.yaml was already broken
        raise LifecycleError(f"kai.yaml: {broken}; fix kai.yaml so at most one is `published`")
    return Transition(action, version, tuple(changes), dict(sorted(states.items())))


def _require_config(project: Project, version: str, config: Config | None, action: str) -> None:
    vs = project.versions.get(version)
    if config is not None and lacks_config_source(config, vs.config if vs else None):
        raise LifecycleError(f"cannot {action} {version}: {no_config_source(version, config)}")
