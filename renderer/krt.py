"""The krt.yml model: a version's nodes, workflows, config and entrypoint.

`Version.from_dict` builds the model from krt.yml's data; `load_version` (renderer.validate)
reads and validates a version directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import contract

from .autoscaling import AutoscalingOverride
from .problems import InputWarning
from .scheduling import ResourceOverride

MANIFEST_NAMES = ("krt.yml", "krt.yaml")


@dataclass(frozen=True)
class Node:
    name: str
    image: str
    src: str  # relative to the version directory, posix separators
    gpu: bool = False
    replicas: int = 1
    # its own requests and limits, over the project default (renderer.scheduling)
    resources: ResourceOverride = field(default_factory=ResourceOverride)
    # krt.yml's `autoscaling`, under kai.yaml's (renderer.autoscaling); None: fixed replicas
    autoscaling: AutoscalingOverride | None = None


@dataclass(frozen=True)
class Workflow:
    name: str
    entrypoint: str  # the rpc this workflow serves
    sequential: tuple[str, ...]
    # how its hops travel: contract.AT_LEAST_ONCE (JetStream) or AT_MOST_ONCE (core NATS)
    delivery: str = contract.DEFAULT_DELIVERY


@dataclass(frozen=True)
class Config:
    variables: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    @property
    def declared(self) -> bool:
        return bool(self.variables or self.files)


@dataclass(frozen=True)
class Version:
    """A validated version. `directory` is where its files are on disk."""

    name: str
    description: str
    proto: str
    entrypoint_image: str
    nodes: tuple[Node, ...]
    workflows: tuple[Workflow, ...]
    config: Config = field(default_factory=Config)
    directory: Path = Path(".")
    manifest: str = "krt.yml"  # file name of the manifest inside `directory`
    # what validation accepted but the user should know (renderer.validate); not part of
    # the version's identity
    warnings: tuple[InputWarning, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], directory: Path = Path("."),
                  manifest: str = "krt.yml") -> Version:
        """The Version krt.yml's data describes; tolerant of wrong types (the schema check
        of renderer.validate says what is wrong)."""
        entry = dict_or_empty(data.get("entrypoint"))
        config = dict_or_empty(data.get("config"))
        nodes = tuple(
            Node(
                name=str_or_empty(n.get("name")),
                image=str_or_empty(n.get("image")),
                src=str_or_empty(n.get("src")),
                gpu=n.get("gpu") is True,
                replicas=int_or(n.get("replicas"), 1),
                resources=resource_override(n.get("resources")),
                autoscaling=AutoscalingOverride.from_dict(n["autoscaling"])
                if isinstance(n.get("autoscaling"), dict) else None,
            )
            for n in map(dict_or_empty, list_or_empty(data.get("nodes")))
        )
        workflows = tuple(
            Workflow(
                name=str_or_empty(w.get("name")),
                entrypoint=str_or_empty(w.get("entrypoint")),
                sequential=tuple(str_or_empty(s) for s in list_or_empty(w.get("sequential"))),
                delivery=str_or_empty(w.get("delivery")) or contract.DEFAULT_DELIVERY,
            )
            for w in map(dict_or_empty, list_or_empty(data.get("workflows")))
        )
        return cls(
            name=str_or_empty(data.get("version")),
            description=str_or_empty(data.get("description")),
            proto=str_or_empty(entry.get("proto")),
            entrypoint_image=str_or_empty(entry.get("image")),
            nodes=nodes,
            workflows=workflows,
            config=Config(
                variables=tuple(str_or_empty(v) for v in list_or_empty(config.get("variables"))),
                files=tuple(str_or_empty(v) for v in list_or_empty(config.get("files"))),
            ),
            directory=directory,
            manifest=manifest,
        )

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def workflows_of(self, node: str) -> tuple[Workflow, ...]:
        return tuple(w for w in self.workflows if node in w.sequential)


# --- reading data of any shape --------------------------------------------------------------


def resource_override(value: Any) -> ResourceOverride:
    """A `resources: {requests: {...}, limits: {...}}` mapping (of krt.yml or kai.yaml),
    each quantity without space around it; entries that are not text are left out (the
    schema says what is wrong)."""
    raw = dict_or_empty(value)

    def section(name: str) -> dict[str, str]:
        return {k: v.strip() for k, v in sorted(dict_or_empty(raw.get(name)).items())
                if isinstance(v, str)}

    return ResourceOverride(requests=section("requests"), limits=section("limits"))


def dict_or_empty(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def list_or_empty(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def str_or_empty(value: Any) -> str:
    return value if isinstance(value, str) else ""


def int_or(value: Any, default: int) -> int:
    """An integer value (a whole float too), else `default` (a bool is no integer here)."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return default
