"""All or nothing on disk: what one command writes, made visible together, then committed.

A command that changes the GitOps repo (a state change, `kai add`, `kai render`) first
*stages* everything it will write: kai.yaml into a temporary file beside it, the new
`rendered/<project>` tree into a temporary directory beside it, a new version folder
likewise. A full disk or a read-only kai.yaml fails there, before anything visible
changed. `Changeset.apply` then swaps the staged parts in and commits them; when any step
fails (a git hook refusing the commit, for one) every part is put back as it was and the
staged paths are unstaged, so the work tree is the one the command found.

A command killed halfway (`kill -9`) cannot undo itself. In a git repo it leaves a journal
(`kai-journal` in the worktree's git directory) naming the paths it was changing, which were all
committed when it began: the next command, holding the repo lock, restores those paths
from HEAD and says so. Temporary files and directories left by a crash are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from . import git
from .atomic import StagedFile, StagedRemoval, recover, stage_dir, stage_file, stage_tree

JOURNAL = "kai-journal"

Notify = Callable[[str], None]


class _Part(Protocol):
    def swap(self) -> None: ...
    def undo(self) -> None: ...
    def discard(self) -> None: ...


@dataclass
class _FilePart:
    staged: StagedFile

    def swap(self) -> None:
        self.staged.commit()

    def undo(self) -> None:
        self.staged.undo()

    def discard(self) -> None:
        self.staged.discard()


@dataclass
class Changeset:
    """The writes of one command under `root`, staged as they are added.

    `in_git`: whether `root` is in a git work tree (then `apply` can commit).
    `journal`: leave a journal while applying, so that the next command restores the paths
    from HEAD if this one is killed; only for commands that began with those paths clean.
    """

    root: Path
    command: str
    in_git: bool
    journal: bool = False
    _parts: list[_Part] = field(default_factory=list)
    _paths: list[str] = field(default_factory=list)

    def put_file(self, rel: str, data: str | bytes) -> None:
        """Stage `rel` with `data` (written and flushed now, visible on `apply`)."""
        self._add(rel, _FilePart(stage_file(self.root / rel, data)))

    def put_tree(self, rel: str, tree: Mapping[str, bytes], reuse: Iterable[str] = ()) -> None:
        """Stage directory `rel` as exactly `tree` (+ `reuse`, kept from the current one)."""
        self._add(rel, stage_tree(self.root / rel, tree, reuse))

    def put_dir(self, rel: str, prepared: Path) -> None:
        """Stage directory `rel` as the already-built directory `prepared` (moved in)."""
        self._add(rel, stage_dir(self.root / rel, prepared))

    def remove_tree(self, rel: str) -> None:
        """Stage the removal of directory `rel` (it disappears on `apply`)."""
        self._add(rel, StagedRemoval(self.root / rel))

    def _add(self, rel: str, part: _Part) -> None:
        self._paths.append(rel)
        self._parts.append(part)

    def __enter__(self) -> Changeset:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        """A failure while staging (or an `apply` that raised) leaves nothing staged."""
        if kind is not None:
            self.discard()

    def discard(self) -> None:
        """Drop everything staged; nothing visible changed."""
        for part in reversed(self._parts):
            with contextlib.suppress(OSError):
                part.discard()
        self._parts.clear()

    def apply(self, message: str | None) -> str | None:
        """Swap every staged part in, then commit them with `message` (None: no commit).

        Returns the commit's sha. On any failure every part is put back, the paths are
        unstaged, and the error is raised: the work tree is the one the command found.
        """
        journal = _journal_path(self.root) if self.in_git and self.journal else None
        done: list[_Part] = []
        try:
            if journal is not None:
                _write_journal(journal, self.root, self.command, self._paths)
            for part in self._parts:
                part.swap()
                done.append(part)
            sha = git.commit(self.root, message, self._paths) if message else None
        except BaseException:
            for part in reversed(done):
                with contextlib.suppress(OSError):
                    part.undo()
            if message and self.in_git:
                with contextlib.suppress(git.GitError):
                    git.unstage(self.root, self._paths)
            self.discard()
            if journal is not None:
                journal.unlink(missing_ok=True)
            raise
        self.discard()  # the previous versions of the parts, kept for an undo
        if journal is not None:
            journal.unlink(missing_ok=True)
        return sha


# --- recovering from a command that was killed ------------------------------------------


def recover_interrupted(root: Path, watched: Iterable[str], notify: Notify,
                        in_git: bool) -> None:
    """Undo what a killed command left; call it holding the repo lock, before reading.

    `watched`: the repo-relative paths whose temporary leftovers to clean (kai.yaml,
    rendered/<project>, versions/); `in_git`: whether `root` is in a git work tree. Says
    what it did through `notify`, one line each.
    """
    if in_git:
        journal = _journal_path(root)
        if journal.is_file():
            _replay(root, journal, notify)
    by_folder: dict[Path, list[str]] = {}
    for rel in watched:
        path = root / rel
        by_folder.setdefault(path.parent, []).append(path.name)
    for folder, names in sorted(by_folder.items()):
        label = folder.relative_to(root).as_posix() if folder != root else ""
        for line in recover(folder, names, label=label):
            notify(line)


def _replay(root: Path, journal: Path, notify: Notify) -> None:
    try:
        entry = json.loads(journal.read_text(encoding="utf-8"))
        command, where = str(entry["command"]), str(entry["root"])
        paths = [str(p) for p in entry["paths"]]
    except (OSError, ValueError, KeyError, TypeError):
        journal.unlink(missing_ok=True)
        notify("removed an unreadable journal of an interrupted kai command")
        return
    top = git.toplevel(root).resolve()
    base = (top / where).resolve()
    if not base.is_relative_to(top):
        journal.unlink(missing_ok=True)
        return
    git.restore_from_head(base, paths)
    journal.unlink(missing_ok=True)
    notify(f"recovered from an interrupted `{command}`: restored {', '.join(paths)} "
           "as committed in HEAD")


def _journal_path(root: Path) -> Path:
    return git.git_dir(root) / JOURNAL  # per worktree: a --branch worktree has its own


def _write_journal(journal: Path, root: Path, command: str, paths: list[str]) -> None:
    top = git.toplevel(root).resolve()
    entry = {
        "command": command,
        "pid": os.getpid(),
        "root": root.resolve().relative_to(top).as_posix(),
        "paths": paths,
    }
    tmp = journal.with_name(f"{JOURNAL}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entry, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, journal)
