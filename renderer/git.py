"""A small typed wrapper over the `git` command line (no extra dependency).

Every failure raises :class:`GitError` with the git command and git's own message.
Repositories without any commit yet are handled (no HEAD to compare with).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path


class GitError(Exception):
    """A git command failed, or git is not installed."""


# An incremental render hard-links the unchanged files of rendered/ into the new tree,
# which changes only their inode change time (ctime): same inode, mtime, size and bytes.
# Without this, git would re-read and re-hash every such file on each command (0.25 s for
# 500 versions); it still sees any edit, which changes mtime or size (or mode).
_CONFIG = ("-c", "core.trustctime=false")


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if shutil.which("git") is None:
        raise GitError("git is not installed or not on PATH; install git and retry")
    env = dict(os.environ)
    env.setdefault("GIT_TERMINAL_PROMPT", "0")
    env["LC_ALL"] = "C"  # stable messages to parse
    proc = subprocess.run(
        ["git", *_CONFIG, *args], cwd=repo, capture_output=True, text=True, env=env, check=False
    )
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        reason = detail[-1] if detail else f"exit code {proc.returncode}"
        raise GitError(f"`git {' '.join(args)}` failed in {repo}: {reason}")
    return proc


def is_repo(path: Path) -> bool:
    """True when `path` is inside a git work tree."""
    if not path.is_dir() or shutil.which("git") is None:
        return False
    proc = _git(path, "rev-parse", "--is-inside-work-tree", check=False)
    return proc.returncode == 0 and proc.stdout.strip() == "true"


def toplevel(path: Path) -> Path:
    """The root of the work tree that holds `path`."""
    return Path(_git(path, "rev-parse", "--show-toplevel").stdout.strip())


def init(path: Path, branch: str = "main") -> None:
    """`git init` with `branch` as the initial branch (works with old gits too)."""
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "--quiet")
    # `git init -b` needs git >= 2.28; pointing HEAD works everywhere.
    _git(path, "symbolic-ref", "HEAD", f"refs/heads/{branch}")


def has_commits(repo: Path) -> bool:
    return _git(repo, "rev-parse", "--verify", "--quiet", "HEAD", check=False).returncode == 0


def current_branch(repo: Path) -> str | None:
    """The checked-out branch (also before the first commit); None when HEAD is detached."""
    proc = _git(repo, "symbolic-ref", "--quiet", "--short", "HEAD", check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def branch_exists(repo: Path, name: str) -> bool:
    ref = f"refs/heads/{name}"
    return _git(repo, "show-ref", "--verify", "--quiet", ref, check=False).returncode == 0


def check_branch_name(repo: Path, name: str) -> None:
    if _git(repo, "check-ref-format", "--branch", name, check=False).returncode != 0:
        raise GitError(f"{name!r} is not a valid git branch name")


def create_branch(repo: Path, name: str) -> None:
    """Create branch `name` at HEAD and switch to it; refuses an existing branch."""
    check_branch_name(repo, name)
    if branch_exists(repo, name):
        raise GitError(
            f"branch {name!r} already exists; choose another name with --branch or delete it "
            f"(`git branch -D {name}`)"
        )
    # `checkout -b` keeps uncommitted changes and works before the first commit too.
    _git(repo, "checkout", "--quiet", "-b", name)


def switch(repo: Path, name: str) -> None:
    _git(repo, "checkout", "--quiet", name)


def dirty_paths(repo: Path, paths: Iterable[str | Path]) -> list[str]:
    """Files under `paths` (relative to `repo`) with uncommitted or untracked changes.

    Staged, unstaged and untracked files all count; ignored files do not. Returned as
    repo-relative posix paths, sorted.
    """
    wanted = [_relative(repo, p) for p in paths]
    if not wanted:
        return []
    # Hundreds of pathspecs (one per running version) make git match every file against
    # each; ask for their top-level folders instead and keep what lies under `wanted`.
    many = len(wanted) > _MANY_PATHS
    query = sorted({w.split("/", 1)[0] for w in wanted}) if many else wanted
    out = _git(
        repo, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--",
        *(_pathspec(repo, q) for q in query),
    ).stdout
    prefix = _git(repo, "rev-parse", "--show-prefix").stdout.strip()  # repo inside a bigger one
    found: set[str] = set()
    entries = out.split("\0")
    i = 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        status, name = entry[:2], entry[3:]
        found.add(name)
        if "R" in status or "C" in status:  # the next entry is the rename's source
            if i < len(entries) and entries[i]:
                found.add(entries[i])
            i += 1
    names = sorted(n[len(prefix):] if n.startswith(prefix) else n for n in found)
    if many:
        names = [n for n in names if _under(n, wanted)]
    return names


_MANY_PATHS = 16


def _relative(repo: Path, path: str | Path) -> str:
    p = Path(path)
    if p.is_absolute():
        p = p.relative_to(repo)
    return p.as_posix()


def _under(name: str, paths: Iterable[str]) -> bool:
    """Is `name` one of `paths`, or inside one of them (`.` holds everything)?"""
    return any(p == "." or name == p or name.startswith(p.rstrip("/") + "/") for p in paths)


def add(repo: Path, paths: Sequence[str | Path]) -> None:
    """Stage `paths`, deletions included (`git add -A -- paths`)."""
    specs = [_pathspec(repo, p) for p in paths if _known(repo, p)]
    if specs:
        _git(repo, "add", "-A", "--", *specs)


def commit(repo: Path, message: str, paths: Sequence[str | Path]) -> str:
    """Commit exactly `paths` (staging them first) and return the new commit's sha.

    Other staged changes in the repo are left staged and are not part of the commit.
    """
    add(repo, paths)
    specs = [_pathspec(repo, p) for p in paths if _known(repo, p)]
    head_exists = has_commits(repo)
    if not staged_changes(repo, specs, head_exists):
        raise GitError(f"nothing to commit in {', '.join(str(p) for p in paths)}")
    args = ["commit", "--quiet", "--no-verify", "-m", message]
    if head_exists:
        args += ["--only", "--", *specs]
    _git(repo, *args)
    return head(repo)


def staged_changes(repo: Path, paths: Sequence[str], head_exists: bool | None = None) -> bool:
    """Are changes under `paths` staged? (`head_exists`: has_commits, when known.)"""
    if not (has_commits(repo) if head_exists is None else head_exists):
        out = _git(repo, "ls-files", "--cached", "--", *paths).stdout
        return bool(out.strip())
    proc = _git(repo, "diff", "--cached", "--quiet", "HEAD", "--", *paths, check=False)
    return proc.returncode == 1


def head(repo: Path) -> str:
    return _git(repo, "rev-parse", "HEAD").stdout.strip()


def remote_url(repo: Path, remote: str = "origin") -> str | None:
    proc = _git(repo, "remote", "get-url", remote, check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def _known(repo: Path, path: str | Path) -> bool:
    """On disk, or tracked (a deletion to stage)."""
    if (repo / path).exists() or (repo / path).is_symlink():
        return True
    return bool(_git(repo, "ls-files", "--", _pathspec(repo, path)).stdout.strip())


def _pathspec(repo: Path, path: str | Path) -> str:
    p = Path(path)
    if p.is_absolute():
        p = p.relative_to(repo)
    return ":(literal)" + (p.as_posix() or ".")
