"""Writing rendered trees and files all or nothing, and cleaning up after a crash.

`stage_tree` writes a whole tree into a temporary directory beside the target;
`StagedTree.swap` exchanges it with the old tree in one step (renameat2 on Linux),
so a reader (or Argo CD) never sees half a tree or none, and `undo` puts the old
one back. `stage_file` / `StagedFile` do the same for one file (kai.yaml, a .krt
archive). A caller stages everything first and then makes it all visible, or
undoes what it made visible (renderer.changeset); `write_tree` and `write_file` do
one of each. `recover` cleans up what a crashed writer left beside its targets.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import platform
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

# --- writing ----------------------------------------------------------------------------
#
# Every temporary name is `.<name>.<kind>-<pid>-<random>` beside the thing it is for:
# `new` a tree being written (and, after an exchange, the old tree set aside), `old` the
# previous tree or file kept for `undo`, `tmp` a file being written. The pid lets `recover`
# tell a crashed writer's leftovers from a running one's.

NEW, OLD, TMP = "new", "old", "tmp"
STAGED, LIVE, DONE = "staged", "live", "done"

_AT_FDCWD = -100
RENAME_EXCHANGE = 2  # renameat2(2) flag, linux/fs.h
_SYS_RENAMEAT2 = {  # for a libc without the renameat2 wrapper (glibc < 2.28)
    "x86_64": 316, "amd64": 316, "i386": 353, "i686": 353, "aarch64": 276, "arm64": 276,
    "riscv64": 276, "armv7l": 382, "armv6l": 382, "ppc64le": 357, "ppc64": 357, "s390x": 347,
}
_NO_EXCHANGE = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP})
_IN_USE: set[str] = set()  # absolute temporary paths this process made and still uses

_Exchange = Callable[[bytes, bytes, int], int]
_T = TypeVar("_T")


def _safe_rel(rel: str) -> PurePosixPath:
    path = PurePosixPath(rel)
    if path.is_absolute() or not path.parts or any(p in ("", ".", "..") for p in path.parts):
        raise ValueError(f"refusing to write outside the tree: {rel!r}")
    return path


_ODD_PARTS = frozenset({"", ".", ".."})


def _make_temp(path: Path, kind: str, make: Callable[[Path], _T]) -> tuple[Path, _T]:
    """`make` a fresh `.<name>.<kind>-<pid>-<random>` beside `path`: its path and result."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            made = make(tmp)
        except FileExistsError:
            continue
        _in_use(tmp, True)
        return tmp, made
    raise FileExistsError(errno.EEXIST, "no free temporary name beside it", os.fspath(path))


def _remove(path: Path) -> None:
    """Remove a temporary file or tree; what cannot be removed is left for `recover`."""
    _in_use(path, False)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _in_use(path: Path, used: bool) -> None:
    """Note that this process now uses (or no longer uses) the temporary name `path`."""
    if used:
        _IN_USE.add(os.path.abspath(path))
    else:
        _IN_USE.discard(os.path.abspath(path))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "write wrote nothing")
        view = view[n:]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _libc_renameat2(libc: ctypes.CDLL) -> _Exchange | None:
    """renameat2 through libc's wrapper (glibc >= 2.28)."""
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int

    def call(a: bytes, b: bytes, flags: int) -> int:
        return int(fn(_AT_FDCWD, a, _AT_FDCWD, b, flags))

    return call


def _syscall_renameat2(libc: ctypes.CDLL) -> _Exchange | None:
    """renameat2 through syscall(2), for a libc without the wrapper."""
    number = _SYS_RENAMEAT2.get(platform.machine())
    fn = getattr(libc, "syscall", None)
    if number is None or fn is None:
        return None
    fn.restype = ctypes.c_long

    def call(a: bytes, b: bytes, flags: int) -> int:
        return int(fn(ctypes.c_long(number), ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(a),
                      ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(b), ctypes.c_uint(flags)))

    return call


@functools.cache
def _renameat2() -> _Exchange | None:
    libc = _libc()
    if libc is None:
        return None
    return _libc_renameat2(libc) or _syscall_renameat2(libc)


def exchange(a: Path, b: Path) -> bool:
    """Swap the names `a` and `b` (both must exist) in one step: no moment where either is
    missing. False if this system or file system cannot (nothing changed); OSError on
    any other failure.
    """
    fn = _renameat2()
    if fn is None:
        return False
    if fn(os.fsencode(a), os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def _rename_pair(new: Path, target: Path, aside: Path) -> None:
    """Without an exchange: `target` -> `aside`, then `new` -> `target`. If the second
    rename fails the first is undone; a crash between them leaves `target` missing and
    `aside` holding it (which `recover` puts back)."""
    os.rename(target, aside)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)
        raise
    _in_use(new, False)
    _in_use(aside, True)


class StagedTree:
    """A new tree written and synced beside its target, not visible yet.

    `swap()` makes it live and keeps the old tree aside; `undo()` puts the old tree back;
    `discard()` removes what is left over (the old tree after a swap, else the unused new
    tree). As a context manager: an exception undoes a swap, and leaving discards.
    """

    def __init__(self, target: Path, staging: Path) -> None:
        self.target = target
        self.staging = staging  # the new tree while staged
        self.aside: Path | None = None  # the old tree while swapped (None: there was none)
        self.state = STAGED

    def swap(self) -> None:
        """Make the new tree live at `target`; the old one stays aside for `undo`."""
        self._expect(STAGED)
        if not os.path.lexists(self.target):
            os.rename(self.staging, self.target)
            _in_use(self.staging, False)
            self.aside = None
        elif exchange(self.staging, self.target):
            self.aside = self.staging  # the old tree now has the staging name
        else:
            aside, _ = _make_temp(self.target, OLD, os.mkdir)
            os.rmdir(aside)
            try:
                _rename_pair(self.staging, self.target, aside)
            except BaseException:
                _in_use(aside, False)
                raise
            self.aside = aside
        self.state = LIVE

    def undo(self) -> None:
        """After `swap`: the old tree back at `target`, the new one staged again."""
        self._expect(LIVE)
        if self.aside is None:
            os.rename(self.target, self.staging)
            _in_use(self.staging, True)
        elif self.aside == self.staging and exchange(self.staging, self.target):
            pass  # swapped back in one step
        else:
            if self.aside == self.staging:  # exchanged before, but cannot now: two renames
                self.staging, _ = _make_temp(self.target, NEW, os.mkdir)
                os.rmdir(self.staging)
            _rename_pair(self.aside, self.target, self.staging)
        self.aside = None
        self.state = STAGED

    def discard(self) -> None:
        """Remove the temporary tree that remains: the old one if swapped, else the new one."""
        if self.state == STAGED:
            _remove(self.staging)
        elif self.state == LIVE and self.aside is not None:
            _remove(self.aside)
        self.state = DONE

    def _expect(self, state: str) -> None:
        if self.state != state:
            raise RuntimeError(f"{self.target}: cannot do this to a tree that is {self.state}")

    def __enter__(self) -> StagedTree:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None and self.state == LIVE:
            self.undo()  # if this fails too, nothing is discarded: the old tree stays aside
        self.discard()


def stage_tree(target: Path, tree: Mapping[str, bytes], reuse: Iterable[str] = ()) -> StagedTree:
    """Write `tree` (relative posix path -> bytes), plus the files named in `reuse` taken
    unchanged from the current `target`, into a temporary directory beside `target`, and
    flush it to disk. A reused file is hard-linked from the current tree, or copied where
    links are not possible. On any error the temporary directory is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging, _ = _make_temp(target, NEW, lambda tmp: os.mkdir(tmp, 0o700))
    try:
        reused = sorted(set(reuse) - set(tree))
        written = _fill(staging, tree, target, reused)
        sync_tree(staging, written)
        os.chmod(staging, 0o755)
    except BaseException:
        _remove(staging)
        raise
    return StagedTree(target, staging)


def stage_dir(target: Path, prepared: Path) -> StagedTree:
    """Stage the already-built directory `prepared` (on the same file system) as `target`.

    It is flushed to disk here; `swap()` moves it in, as for a tree from `stage_tree`.
    """
    files = [os.path.join(folder, name) for folder, _, names in os.walk(prepared)
             for name in names]
    sync_tree(prepared, files)
    os.chmod(prepared, 0o755)
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    return StagedTree(Path(target), Path(prepared))


class StagedRemoval:
    """The removal of directory `target`, as a part that can be undone.

    `swap()` renames it to an `old` name beside it (gone from sight at once), `undo()`
    renames it back, `discard()` deletes what was set aside.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self.aside: Path | None = None
        self.state = STAGED

    def swap(self) -> None:
        if self.state != STAGED:
            raise RuntimeError(f"{self.target}: cannot remove a tree that is {self.state}")
        aside, _ = _make_temp(self.target, OLD, os.mkdir)
        os.rmdir(aside)
        try:
            os.rename(self.target, aside)
        except BaseException:
            _in_use(aside, False)
            raise
        self.aside, self.state = aside, LIVE

    def undo(self) -> None:
        if self.state == LIVE and self.aside is not None:
            os.rename(self.aside, self.target)
            _in_use(self.aside, False)
            self.aside, self.state = None, STAGED

    def discard(self) -> None:
        if self.state == LIVE and self.aside is not None:
            _remove(self.aside)
        self.state = DONE


def write_tree(target: Path, tree: Mapping[str, bytes], reuse: Iterable[str] = ()) -> None:
    """Replace directory `target` with exactly `tree` plus `reuse` (see `stage_tree`).

    The new tree is staged beside `target`, then exchanged with the old one in one step
    (renameat2 RENAME_EXCHANGE on Linux; two renames where that is not available), and the
    old tree deleted. On any error the old tree is left as it was.
    """
    with stage_tree(target, tree, reuse) as staged:
        staged.swap()


class StagedFile:
    """A new file written and flushed beside `path`, not visible yet.

    `commit()` renames it in and keeps the previous file (a hard link, or a copy) for
    `undo()`; `discard()` removes what is left over. As a context manager: an exception
    undoes a commit, and leaving discards.
    """

    def __init__(self, path: Path, tmp: Path) -> None:
        self.path = path
        self.tmp = tmp
        self.backup: Path | None = None  # the previous file while committed (None: none)
        self.state = STAGED

    def commit(self) -> None:
        self._expect(STAGED)
        backup = _backup(self.path) if os.path.lexists(self.path) else None
        try:
            os.replace(self.tmp, self.path)
        except BaseException:
            if backup is not None:
                _remove(backup)
            raise
        _in_use(self.tmp, False)
        self.backup = backup
        self.state = LIVE

    def undo(self) -> None:
        """After `commit`: the previous file back (or no file, if there was none)."""
        self._expect(LIVE)
        if self.backup is None:
            os.unlink(self.path)
        else:
            os.replace(self.backup, self.path)
            _in_use(self.backup, False)
            self.backup = None
        self.state = DONE

    def discard(self) -> None:
        """Remove the temporary file that remains: the backup if committed, else the new file."""
        if self.state == STAGED:
            _remove(self.tmp)
        elif self.state == LIVE and self.backup is not None:
            _remove(self.backup)
        self.state = DONE

    def _expect(self, state: str) -> None:
        if self.state != state:
            raise RuntimeError(f"{self.path}: cannot do this to a file that is {self.state}")

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None and self.state == LIVE:
            self.undo()
        self.discard()


def _backup(path: Path) -> Path:
    """The current file under an `old` name: a hard link, or a copy where links fail."""
    try:
        backup, _ = _make_temp(path, OLD, lambda tmp: os.link(path, tmp, follow_symlinks=False))
    except FileExistsError:
        raise
    except OSError:
        backup, _ = _make_temp(path, OLD, lambda tmp: _create(tmp, 0o600))
        try:
            shutil.copy2(path, backup)
        except BaseException:
            _remove(backup)
            raise
    return backup


def _create(path: Path, mode: int) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode))


def refuse_read_only(path: Path) -> None:
    """Raise PermissionError (EACCES) if `path` exists with no write bit for anyone: we run
    as root at times, and root's writes would ignore that the user made it read-only."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise OSError(errno.EACCES, "the file is read-only; make it writable (chmod u+w) to "
                      "let kai change it", os.fspath(path))


def stage_file(path: Path, data: bytes | str, mode: int = 0o644) -> StagedFile:
    """Write `data` to a temporary file beside `path` and flush it to disk. Text is written
    as UTF-8 with `\\n` line ends. Refuses (PermissionError, EACCES) to replace a file that
    is read-only by its mode bits, before writing anything.
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    refuse_read_only(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    tmp, fd = _make_temp(path, TMP, lambda tmp: os.open(tmp, flags, 0o600))
    try:
        try:
            _write_all(fd, raw)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _remove(tmp)
        raise
    return StagedFile(path, tmp)


def write_file(path: Path, data: bytes | str, mode: int = 0o644) -> Path:
    """Write one file atomically (see `stage_file`): a temporary file beside it, then a
    rename. A failed write leaves the old file."""
    with stage_file(path, data, mode) as staged:
        staged.commit()
    return Path(path)


def _fill(tmp: Path, tree: Mapping[str, bytes], source: Path, reuse: list[str]) -> list[str]:
    """Write `tree` into `tmp` and link (or copy) `reuse` from `source`; the paths made.

    Plain string paths and one `mkdir` per folder: this runs for thousands of files.
    """
    rels = sorted(tree)
    for rel in (*rels, *reuse):
        if rel.startswith("/") or not _ODD_PARTS.isdisjoint(rel.split("/")):
            _safe_rel(rel)  # raises unless it only has redundant `.` or `/` in it
    base, src_base = os.fspath(tmp), os.fspath(source)
    folders = sorted({rel.rpartition("/")[0] for rel in (*rels, *reuse)} - {""})
    for folder in folders:  # sorted: parents before their children
        path = os.path.join(base, folder)
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        except FileNotFoundError:  # a parent no file lives in directly
            os.makedirs(path, exist_ok=True)
    written: list[str] = []
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    for rel in rels:
        path = os.path.join(base, rel)
        fd = os.open(path, flags, 0o666)
        try:
            _write_all(fd, tree[rel])
        finally:
            os.close(fd)
        written.append(path)
    for rel in reuse:
        path = os.path.join(base, rel)
        src = os.path.join(src_base, rel)
        try:
            os.link(src, path, follow_symlinks=False)
        except OSError:
            shutil.copyfile(src, path)
        written.append(path)
    return written


def sync_tree(root: Path, files: Iterable[str | Path]) -> None:
    """Flush a freshly written tree to disk before it is swapped in.

    On Linux one `syncfs` of the tree's file system does it; elsewhere every file is
    fsync'ed (what this did for each file before: the same guarantee, one call per tree).
    """
    if _syncfs(root):
        return
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@functools.cache
def _libc_syncfs() -> Callable[[int], int] | None:
    libc = _libc()
    return getattr(libc, "syncfs", None) if libc is not None else None


def _syncfs(root: Path) -> bool:
    syncfs = _libc_syncfs()
    if syncfs is None:
        return False
    fd = os.open(root, os.O_RDONLY)
    try:
        return syncfs(fd) == 0
    finally:
        os.close(fd)


# --- crash leftovers ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Leftover:
    entry: str  # the name in the folder
    kind: str  # new, old, tmp
    why: str  # who left it, for the report


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists (someone else's counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True


def _owner_gone(pid: int, path: Path) -> bool:
    """Whether the process that made `path` is gone. A live pid is left alone, unless it
    is this process and the path is not one this process uses (a pid reused, as happens
    in containers)."""
    if pid == os.getpid():
        return os.path.abspath(path) not in _IN_USE
    return not pid_alive(pid)


def _leftovers(folder: Path, name: str, entries: Iterable[str]) -> list[_Leftover]:
    """The crash leftovers of `name` among `entries`: temporary names whose writer is gone,
    and those of kai before names carried a pid (`.<name>.new-XXXXXXXX`,
    `.<name>.old-XXXXXXXX`, `.<name>.XXXXXXXX` from mkdtemp/mkstemp)."""
    current = re.compile(rf"\.{re.escape(name)}\.(new|old|tmp)-(\d+)-[0-9a-z_]+")
    legacy = re.compile(rf"\.{re.escape(name)}\.(?:(new|old)-)?([0-9a-z_]{{8}})")
    out: list[_Leftover] = []
    for entry in entries:
        if m := current.fullmatch(entry):
            if _owner_gone(int(m[2]), folder / entry):
                out.append(_Leftover(entry, m[1], "left by a crashed kai"))
        elif m := legacy.fullmatch(entry):
            # a bare `.<name>.XXXXXXXX` with no digit or `_` may be a person's file
            # (`.kai.yaml.original`): leave it
            if m[1] or re.search(r"[0-9_]", m[2]):
                out.append(_Leftover(entry, m[1] or TMP, "left by an older kai"))
    return out


_ANY_LEFTOVER = re.compile(r"\.(.+)\.(?:new|old)-(?:\d+-[0-9a-z_]+|[0-9a-z_]{8})")


def tree_names(folder: Path) -> list[str]:
    """The trees `folder` holds or held: its real folders, and the names that tree leftovers
    (`.<name>.new-…`, `.<name>.old-…`) are of, so `recover` can put back a tree a crash left
    missing. Sorted; empty when `folder` does not exist."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    names = {e.name for e in entries
             if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)}
    names |= {m[1] for e in entries if (m := _ANY_LEFTOVER.fullmatch(e.name))}
    return sorted(names)


def recover(folder: Path, names: Iterable[str], label: str | None = None) -> list[str]:
    """Clean up after a kai that crashed while writing `folder/<name>` for each of `names`
    (e.g. "demo" in rendered/, "kai.yaml" in the repo root); run it under the repo lock.

    Leftovers whose writer is gone are removed; if `<name>` itself is missing and such an
    `old` leftover of it exists, that (the state from before the crash) is renamed back.
    One line per action, with paths shown under `label` (default: `folder`).
    """
    folder = Path(folder)
    base = folder.as_posix() if label is None else label
    shown = (lambda entry: f"{base}/{entry}") if base else (lambda entry: entry)
    try:
        entries = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    lines: list[str] = []
    for name in sorted(set(names)):
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"not a name in a folder: {name!r}")
        found = _leftovers(folder, name, entries)
        olds = [item for item in found if item.kind == OLD]
        if olds and not os.path.lexists(folder / name):
            last = max(olds, key=lambda item: (os.lstat(folder / item.entry).st_ctime_ns,
                                               item.entry))
            os.rename(folder / last.entry, folder / name)
            lines.append(f"restored {shown(name)} from {last.entry} ({last.why})")
            found.remove(last)
        for item in found:
            _remove(folder / item.entry)
            if os.path.lexists(folder / item.entry):
                lines.append(f"could not remove {shown(item.entry)} ({item.why}): remove it "
                             "by hand")
            else:
                lines.append(f"removed {shown(item.entry)} ({item.why})")
    return lines


def read_tree(target: Path) -> dict[str, bytes]:
    """The files under `target` as relative posix path -> bytes (empty if it does not exist)."""
    target = Path(target)
    if not target.is_dir():
        return {}
    out: dict[str, bytes] = {}
    for path in sorted(target.rglob("*")):
        if path.is_file():
            out[path.relative_to(target).as_posix()] = path.read_bytes()
    return out
