"""Incremental renders for state changes: re-render only the versions that changed.

A lifecycle command (start, stop, publish, unpublish) changes the desired state of one
or two versions. It runs only when kai.yaml, `rendered/<project>/` and the running
versions' sources are committed (repo._prepare_git refuses otherwise), so the tree on
disk is the committed one, which `kai render --check` in CI vouches for: for every
version whose state and sources did not change, its folder on disk is exactly what a
full render would write again. `kai canary` changes a version's canary weight alike.

So the new tree is: the project-level files and the changed versions' folders, rendered
and validated anew; every other version's files kept from disk unchanged (hard-linked
into the new tree, which is swapped in atomically as always); and `kustomization.yaml`
listing them all. The result is byte-identical to a full render.

The tree on disk is checked for the shape the previous kai.yaml gives before it is
trusted: one folder per running version and no other, the project-level files as they
render for it, and a `kustomization.yaml` that lists exactly the files there with the
current image map. Anything else (a kai.yaml edited by hand, a tree from another kai
version) makes `render_change` return None, and the caller renders everything.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .krt import Version
from .plan import is_running
from .project import KUSTOMIZATION, Project
from .render import (
    check_published,
    finish_tree,
    kustomization,
    project_tree,
    versions_tree,
)


@dataclass(frozen=True)
class Change:
    """A new tree as what to write and what to keep from the tree on disk."""

    tree: dict[str, bytes]  # rendered anew: project files, changed versions, kustomization
    kept: tuple[str, ...]  # relative paths kept unchanged from the tree on disk

    @property
    def paths(self) -> list[str]:
        """Every file of the new tree, sorted."""
        return sorted({*self.tree, *self.kept})


def tree_files(target: Path) -> list[str] | None:
    """The relative posix paths of the regular files under `target` (None when it is not
    a directory, or holds anything but regular files and directories)."""
    if not target.is_dir():
        return None
    out: list[str] = []
    pending = [("", os.fspath(target))]
    while pending:
        rel, folder = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                name = f"{rel}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    pending.append((f"{name}/", entry.path))
                elif entry.is_file(follow_symlinks=False):
                    out.append(name)
                else:
                    return None  # a symlink, socket, ...: not a tree kai wrote
    return sorted(out)


def render_change(before: Project, after: Project, versions: Mapping[str, Version],
                  changed: Iterable[str], target: Path) -> Change | None:
    """The tree for `after`, re-rendering only the `changed` versions (loaded in `versions`).

    `target` holds the tree rendered for `before`; `before` and `after` differ only in the
    states (and canary weights) of the changed versions. The project-level files (with
    `gateway:`, the GRPCRoute follows the published version and the canary) are rendered
    anew. Returns None when the tree on disk cannot be trusted (see the module
    docstring): then render everything. Raises RenderError as a full render would for
    the changed versions.
    """
    changed = set(changed)
    files = tree_files(target)
    if files is None or not _trusted(before, target, files, project_tree(before)):
        return None
    project_files = project_tree(after)
    check_published(after)
    tree = dict(project_files)
    tree.update(versions_tree(after, versions, sorted(changed)))
    kept = tuple(f for f in files if "/" in f and f.split("/", 1)[0] not in changed)
    return Change(finish_tree(after, tree, kept), kept)


def _trusted(before: Project, target: Path, files: list[str],
             project_files: Mapping[str, bytes]) -> bool:
    """Does the tree on disk have the shape a full render of `before` gives?"""
    running = {n for n, vs in before.versions.items() if is_running(vs.state)}
    folders = {f.split("/", 1)[0] for f in files if "/" in f}
    top = {f for f in files if "/" not in f}
    if folders != running or top != {*project_files, KUSTOMIZATION}:
        return False
    for rel, data in project_files.items():
        if (target / rel).read_bytes() != data:
            return False
    return (target / KUSTOMIZATION).read_bytes() == kustomization(before, files)
