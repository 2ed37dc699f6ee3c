"""One state change at a time: a lock on the GitOps repo.

Every command that writes (`start`, `stop`, `publish`, `unpublish`, `add`, `render`,
`init` into an existing repo) holds the lock exclusively from reading kai.yaml to its
commit, so two commands on the same repo (two CI jobs, a person and a bot) never apply a
stale view: the second one waits, then reads the state the first one committed.
Read-only commands (`render --check`, `diff`, `status`) hold it shared, so they never
see kai.yaml and rendered/ halfway through a change.

The lock is an `fcntl.flock` on `kai.lock` in the git directory (shared by every
worktree of the repo), or on `.kai/lock` in a repo without git. The kernel releases it
when its holder exits, `kill -9` included, so a crashed command never leaves it taken.
A waiting command says once that it waits and for whom, and gives up after a bounded
time (`KAI_LOCK_TIMEOUT` seconds, default 60) with one line saying what to do.

`file_lock` is the same lock on any file: `kai dev --install` holds one while it builds a
cached venv (renderer.cli.devvenv).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from . import git

ENV_TIMEOUT = "KAI_LOCK_TIMEOUT"
DEFAULT_TIMEOUT = 60.0
LOCK_NAME = "kai.lock"
_POLL = 0.05  # seconds between attempts while waiting


class LockError(Exception):
    """A lock could not be taken in time; the message names its holder."""


def timeout_from_env(default: float = DEFAULT_TIMEOUT) -> float:
    """KAI_LOCK_TIMEOUT in seconds (else `default`); a bad value is an error, not ignored."""
    raw = os.environ.get(ENV_TIMEOUT, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise LockError(f"{ENV_TIMEOUT}={raw!r} is not a number of seconds (0 or more)")
    return value


def lock_path(root: Path) -> Path:
    """Where the lock of the repo at `root` lives."""
    if git.is_repo(root):
        return git.common_dir(root) / LOCK_NAME
    return root / ".kai" / "lock"


@contextlib.contextmanager
def repo_lock(
    root: Path,
    command: str,
    *,
    shared: bool = False,
    timeout: float | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold the repo's lock (exclusive, or `shared` for readers) for the `with` block.

    `command` (e.g. "kai start greeter-v1") is recorded for the commands that wait.
    `on_wait` is told once, in one line, when the lock is busy.
    """
    limit = timeout_from_env() if timeout is None else timeout
    with file_lock(lock_path(root), command, shared=shared, timeout=limit, on_wait=on_wait,
                   doing=" on this repo", what="the repo lock"):
        yield


@contextlib.contextmanager
def file_lock(
    path: Path,
    command: str,
    *,
    timeout: float,
    doing: str,
    what: str,
    shared: bool = False,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold an flock on the file `path` (created with its folder) for the `with` block.

    `command` is recorded in the file for the commands that wait; `on_wait` is told once
    that this one waits ("waiting for another kai command`doing` (pid ...)"), and after
    `timeout` seconds LockError says that command still holds `what`. A shared holder that
    cannot create the file (a read-only checkout) holds nothing: no writer can exist.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        if not shared:
            raise
        yield
        return
    try:
        _acquire(fd, path, shared, timeout, on_wait, doing, what)
        if not shared:
            _record(fd, command)
        yield
    finally:
        if not shared:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no stale holder shown once it is released
        os.close(fd)  # releases the lock


def _acquire(fd: int, path: Path, shared: bool, limit: float,
             on_wait: Callable[[str], None] | None, doing: str, what: str) -> None:
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    deadline = time.monotonic() + limit
    told = False
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        holder = _holder(path)
        if time.monotonic() >= deadline:
            raise LockError(
                f"another kai command ({holder}) still holds {what} after "
                f"{limit:g} s; retry when it has finished (set {ENV_TIMEOUT} to wait longer)"
            )
        if not told and on_wait is not None:
            on_wait(f"waiting for another kai command{doing} ({holder}) to finish "
                    f"(up to {limit:g} s)")
            told = True
        time.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))


def _record(fd: int, command: str) -> None:
    """Write `<pid> <command>` into the lock file, for the commands that wait."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    pid, _, command = text.partition(" ")
    if not pid.isdigit():
        return "a reader, or one that has not said who it is"
    return f"pid {pid}: {command}" if command else f"pid {pid}"
