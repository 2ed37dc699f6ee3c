"""`--branch`: a commit on a new branch, made in a temporary worktree.

The user's checkout (its branch, index and files) is never touched: the state command
runs in a worktree of HEAD, checked out on the new branch inside the git directory
(`kai-worktrees/<pid>-…`), commits there, and the worktree is removed. A command killed
meanwhile leaves its worktree behind; the next writing command removes it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from . import git
from .atomic import pid_alive

WORKTREES = "kai-worktrees"  # in the git directory


@contextlib.contextmanager
def branch_worktree(root: Path, branch: str) -> Iterator[Path]:
    """A temporary worktree of HEAD on the new `branch`; yields the GitOps repo inside it.

    The worktree is removed afterwards; the branch is deleted again when the block fails.
    """
    top = git.toplevel(root).resolve()
    base = git.common_dir(root) / WORKTREES
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=base))
    path.rmdir()
    created = False
    try:
        git.add_worktree(root, path, branch)
        created = True
        yield path / root.resolve().relative_to(top)
    except BaseException:
        if created:
            git.remove_worktree(root, path)
            git.delete_branch(root, branch)
        raise
    finally:
        if path.exists():
            git.remove_worktree(root, path)


def recover_worktrees(root: Path, notify: Callable[[str], None]) -> None:
    """Remove the temporary worktrees of --branch commands that were killed."""
    base = git.common_dir(root) / WORKTREES
    if not base.is_dir():
        return
    for path in sorted(base.iterdir()):
        pid = path.name.split("-", 1)[0]
        # this process makes its worktrees only after recovering: its pid is a reused one
        if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
            continue
        branch = git.worktree_branch(root, path)
        git.remove_worktree(root, path)
        kept = (f"; its branch {branch} was kept: delete it with `git branch -D {branch}` "
                "unless it holds a commit you want") if branch else ""
        notify(f"removed the temporary worktree of an interrupted --branch command{kept}")
