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


class HookRefused(GitError):
    """A git hook (pre-commit, commit-msg, ...) refused kai's commit.

    `output` is what the hook printed, for the user to read.
    """

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


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
        reason = _reason(proc)
        raise GitError(f"`git {' '.join(args)}` failed in {repo}: {reason}")
    return proc


def _reason(proc: subprocess.CompletedProcess[str]) -> str:
    """git's own reason for a failure: its `fatal:`/`error:` line, else its last line."""
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
    for line in lines:
        if line.startswith(("fatal:", "error:")):
            return line
    if lines:
        return lines[-1]
    if proc.returncode < 0:
        return f"killed by signal {-proc.returncode}"
    return f"exit code {proc.returncode}"


def is_repo(path: Path) -> bool:
    """True when `path` is inside a git work tree."""
    if not path.is_dir() or shutil.which("git") is None:
        return False
    proc = _git(path, "rev-parse", "--is-inside-work-tree", check=False)
    return proc.returncode == 0 and proc.stdout.strip() == "true"


def is_ignored(repo: Path, path: str | Path) -> bool:
    """Does git ignore `path` (relative to `repo`, or absolute) in the work tree of `repo`?"""
    return _git(repo, "check-ignore", "-q", "--no-index", "--", str(path),
                check=False).returncode == 0


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


def common_dir(repo: Path) -> Path:
    """The git directory shared by every worktree of the repo holding `repo`."""
    out = _git(repo, "rev-parse", "--git-common-dir").stdout.strip()
    return (repo / out).resolve()


def git_dir(repo: Path) -> Path:
    """The git directory of the worktree holding `repo` (`.git`, or one per worktree)."""
    return Path(_git(repo, "rev-parse", "--absolute-git-dir").stdout.strip())


def restore_from_head(repo: Path, paths: Sequence[str | Path]) -> None:
    """Make `paths` (relative to `repo`) exactly as committed in HEAD: index and files.

    Files under them that HEAD does not have are removed (ignored files are kept).
    """
    head_exists = has_commits(repo)
    for path in paths:
        spec = _pathspec(repo, path)
        tracked = head_exists and bool(
            _git(repo, "ls-tree", "-r", "--name-only", "HEAD", "--", spec).stdout.strip())
        if tracked:
            _git(repo, "restore", "--quiet", "--source=HEAD", "--staged", "--worktree",
                 "--", spec)
        else:
            unstage(repo, [path])
        _git(repo, "clean", "-fdq", "--", spec)


def add_worktree(repo: Path, path: Path, branch: str) -> None:
    """Check HEAD out into a new worktree at `path`, on a new branch `branch`.

    The checkout at `repo` (its HEAD, index and files) is not touched.
    """
    check_branch_name(repo, branch)
    if branch_exists(repo, branch):
        raise GitError(
            f"branch {branch!r} already exists; choose another name with --branch or delete "
            f"it (`git branch -D {branch}`)"
        )
    if not has_commits(repo):
        raise GitError("--branch needs a commit to branch from; commit something first")
    _git(repo, "worktree", "add", "--quiet", "-b", branch, os.fspath(path), "HEAD")


def worktree_branch(repo: Path, path: Path) -> str | None:
    """The branch checked out in the worktree at `path` (None: unknown or detached)."""
    out = _git(repo, "worktree", "list", "--porcelain", check=False).stdout
    for block in out.split("\n\n"):
        lines = block.splitlines()
        if lines and Path(lines[0].removeprefix("worktree ")).resolve() == path.resolve():
            for line in lines:
                if line.startswith("branch refs/heads/"):
                    return line.removeprefix("branch refs/heads/")
    return None


def remove_worktree(repo: Path, path: Path) -> None:
    """Remove the worktree at `path` (files and git's record of it)."""
    _git(repo, "worktree", "remove", "--force", os.fspath(path), check=False)
    shutil.rmtree(path, ignore_errors=True)
    _git(repo, "worktree", "prune", check=False)


def delete_branch(repo: Path, name: str) -> None:
    _git(repo, "branch", "--quiet", "-D", name, check=False)


def unstage(repo: Path, paths: Sequence[str | Path]) -> None:
    """Make the index match HEAD again under `paths` (what `add` staged is dropped)."""
    specs = [_pathspec(repo, p) for p in paths]
    if not specs:
        return
    if has_commits(repo):
        _git(repo, "reset", "--quiet", "HEAD", "--", *specs, check=False)
    else:
        _git(repo, "rm", "-r", "--quiet", "--cached", "--ignore-unmatch", "--", *specs,
             check=False)


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


def add(repo: Path, paths: Sequence[str | Path]) -> list[str]:
    """Stage `paths`, deletions included (`git add -A -- paths`); returns their pathspecs.

    A path known neither on disk nor to git is left out.
    """
    specs = [_pathspec(repo, p) for p in paths if _known(repo, p)]
    if specs:
        _git(repo, "add", "-A", "--", *specs)
    return specs


def commit(repo: Path, message: str, paths: Sequence[str | Path]) -> str:
    """Commit exactly `paths` (staging them first) and return the new commit's sha.

    Other staged changes in the repo are left staged and are not part of the commit.
    """
    # Known before staging: a folder deleted from disk is still in the index until then.
    specs = add(repo, paths)
    head_exists = has_commits(repo)
    if not staged_changes(repo, specs, head_exists):
        raise GitError(f"nothing to commit in {', '.join(str(p) for p in paths)}")
    args = ["commit", "--quiet", "-m", message]
    if head_exists:
        args += ["--only", "--", *specs]
    # The repo's hooks run (pre-commit secret scanners and the like), as for any commit.
    proc = _git(repo, *args, check=False)
    if proc.returncode != 0:
        output = "\n".join(part.strip() for part in (proc.stdout, proc.stderr) if part.strip())
        hooks = active_hooks(repo)
        if hooks:
            raise HookRefused(
                f"the repo's git hook ({', '.join(hooks)}) refused the commit", output)
        raise GitError(f"`git commit` failed in {repo}: {_reason(proc)}")
    return head(repo)


COMMIT_HOOKS = ("pre-commit", "prepare-commit-msg", "commit-msg")


def active_hooks(repo: Path) -> list[str]:
    """The commit hooks that git would run in `repo` (executable files in its hooks dir)."""
    out = []
    for name in COMMIT_HOOKS:
        rel = _git(repo, "rev-parse", "--git-path", f"hooks/{name}").stdout.strip()
        path = repo / rel
        if path.is_file() and os.access(path, os.X_OK):
            out.append(name)
    return out


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
