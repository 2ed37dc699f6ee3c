"""The krt.yml model: a version's nodes, workflows, config and entrypoint.

`load_version` reads and validates a version directory (see renderer.validate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_NAMES = ("krt.yml", "krt.yaml")


@dataclass(frozen=True)
class Node:
    name: str
    image: str
    src: str  # relative to the version directory, posix separators
    gpu: bool = False
    replicas: int = 1


@dataclass(frozen=True)
class Workflow:
    name: str
    entrypoint: str  # the rpc this workflow serves
    sequential: tuple[str, ...]


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

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def workflows_of(self, node: str) -> tuple[Workflow, ...]:
        return tuple(w for w in self.workflows if node in w.sequential)
