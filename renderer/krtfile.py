"""KRE `.krt` archives: import them safely, build them reproducibly.

A `.krt` is a gzipped tar holding `krt.yml`, the `.proto`, `src/`, `docs/` and
`metrics/`, either at the top or inside one top-level folder.

:func:`extract_krt` reads the archive twice. The first pass reads the headers only
and refuses the archive before anything is written: more than `max_members`
members, more than `max_size` bytes unpacked, a name that could escape (absolute,
`..`, a drive, a backslash, a control character), a duplicate name, a symlink, a
device or any other special member, a hard link to anything but an earlier regular
file. KRE's builder writes only files and folders. The second pass writes the
members itself, never through tarfile's extraction: folders one component at a time
relative to the folder above (a link or a file where a folder should be is refused),
files with O_CREAT|O_EXCL|O_NOFOLLOW, modes 0644 or 0755 only, and a hard link gets
the bytes of its regular member as read from the archive. The target is never left
half-extracted: members go to a folder next to it, renamed in when all went well.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .atomic import write_file
from .krt import MANIFEST_NAMES
from .problems import InputError, Problem
from .yamlsafe import shown_path

MAX_UNPACKED = 256 * 1024 * 1024
MAX_MEMBERS = 10_000
# tar bytes a member may take beyond its data: header blocks, a long name, padding
_HEADER_ROOM = 8 * 1024
_CHUNK = 1024 * 1024
_MAX_NAME = 1024  # characters in a member's name
_MAX_DEPTH = 64  # folders in a member's name
_SKIP_TOP = ("__MACOSX",)
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Extracted:
    """Where a .krt went, and what it held."""

    target: Path
    prefix: str  # the folder the manifest sat in inside the archive ("" or "greeter-v1/")
    members: int
    size: int  # bytes of file content unpacked


class _Refused(Exception):
    """One reason to refuse the archive; becomes a Problem."""


def extract_krt(
    archive: Path,
    target: Path,
    display: str | None = None,
    *,
    max_size: int = MAX_UNPACKED,
    max_members: int = MAX_MEMBERS,
) -> Extracted:
    """Unpack the .krt `archive` into `target` (which must not exist, or be empty).

    `target` then holds the version: krt.yml at its top. Raises InputError with one
    clear Problem when the archive is corrupt, unsafe or too large; `target` is then
    left as it was.
    """
    archive, target = Path(archive), Path(target)
    shown = display if display is not None else shown_path(archive)
    try:
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise _Refused(f"cannot extract into {target}: it exists and is not empty")
        _check_gzip(archive)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial",
                                    dir=target.parent))
        try:
            stage = tmp / "archive"
            stage.mkdir()
            members, size = _unpack(archive, stage, max_size, max_members)
            root, prefix = _version_root(stage)
            if target.exists():
                target.rmdir()
            os.replace(root, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except _Refused as exc:
        raise InputError([Problem(shown, message=str(exc))]) from None
    except OSError as exc:
        raise InputError([Problem(shown, message=f"cannot extract: {exc.strerror or exc}")]) \
            from None
    return Extracted(target, prefix, members, size)


def _check_gzip(archive: Path) -> None:
    with open(archive, "rb") as fh:
        magic = fh.read(2)
    if magic != b"\x1f\x8b":
        raise _Refused("not a .krt file: expected a gzip-compressed tar archive")


@dataclass
class _Entry:
    """A member that passed the header checks."""

    info: tarfile.TarInfo
    name: str  # its clean relative name
    # a regular file: its own name, then those of the hard links to it
    names: list[str] = field(default_factory=list)


def _unpack(archive: Path, stage: Path, max_size: int, max_members: int) -> tuple[int, int]:
    """Check every header, then write the members into `stage`: (members, bytes)."""
    limit = max_size + (max_members + 4) * _HEADER_ROOM
    try:
        with open(archive, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz, \
                tarfile.open(fileobj=_Bounded(gz, limit), mode="r:") as tar:
            entries, count, size = _read_headers(tar, max_size, max_members)
            _write_members(tar, entries, stage)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _Refused(f"corrupt .krt archive: {exc or type(exc).__name__}") from None
    except RecursionError:  # tarfile reads each extended header with one more call
        raise _Refused("corrupt .krt archive: too many extended headers in a row") from None
    return count, size


class _Bounded:
    """The decompressed tar stream, refused once it runs past `limit` bytes.

    Member data is bounded by the headers' sizes; this bounds what tarfile itself reads
    (extended headers, long names), so a header cannot make it read gigabytes.
    """

    def __init__(self, raw: gzip.GzipFile, limit: int) -> None:
        self._raw = raw
        self._limit = limit

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0 or n > _CHUNK:  # only an extended header asks for that much
            raise _Refused(f"a member's header is larger than {_size(_CHUNK)}")
        room = self._limit - self._raw.tell()
        data = self._raw.read(min(n, room + 1))
        if len(data) > room:
            raise _Refused(f"the archive's tar stream is longer than {_size(self._limit)}: "
                           "its headers are too large")
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or offset > self._limit:
            raise _Refused(f"the archive's tar stream is longer than {_size(self._limit)}")
        return self._raw.seek(offset)

    def tell(self) -> int:
        return self._raw.tell()

    def seekable(self) -> bool:
        return True

    def write(self, data: bytes, /) -> int:
        raise io.UnsupportedOperation("the archive is read only")

    def close(self) -> None:
        """The gzip stream is closed by its owner."""


def _read_headers(tar: tarfile.TarFile, max_size: int,
                  max_members: int) -> tuple[list[_Entry], int, int]:
    """First pass, headers only (tarfile skips the data): every check that needs no
    content, before anything is written. Returns (entries, members, bytes unpacked)."""
    entries: list[_Entry] = []
    regular: dict[str, _Entry] = {}
    files: set[str] = set()  # names of regular files and hard links
    folders: set[str] = set()  # folders the members so far need, named or implied
    seen: set[str] = set()
    count = size = 0
    for member in tar:
        count += 1
        shown = _quoted(member.name)
        if count > max_members:
            raise _Refused(f"the archive holds more than {max_members} members "
                           f"(refused at member {shown})")
        name = _member_name(member)
        if name in seen:
            raise _Refused(f"member {shown} appears twice in the archive")
        seen.add(name)
        if name == ".":
            continue
        parents = [name.rsplit("/", depth)[0] for depth in range(name.count("/"), 0, -1)]
        inside = next((p for p in parents if p in files), None)
        if inside is not None:
            raise _Refused(f"member {shown} lies inside {_quoted(inside)}, which is a file")
        if not member.isdir() and name in folders:
            raise _Refused(f"member {shown} is a file, but other members lie inside it")
        folders.update(parents)
        if member.isdir():
            folders.add(name)
            entries.append(_Entry(member, name))
            continue
        if member.isreg():
            entry = _Entry(member, name, [name])
            regular[name] = entry
            entries.append(entry)
        else:  # a hard link, to an earlier regular file only
            linked = None if _name_problem(member.linkname) else \
                regular.get(_normal(member.linkname))
            if linked is None:
                raise _Refused(
                    f"member {shown} is a hard link to {_quoted(member.linkname)}, not to an "
                    "earlier regular file of the archive"
                )
            linked.names.append(name)
            entry = linked
        files.add(name)
        size += entry.info.size
        if size > max_size:
            raise _Refused(f"the archive unpacks to more than {_size(max_size)} "
                           f"(refused at member {shown})")
    if count == 0:
        raise _Refused("the archive is empty")
    return entries, count, size


def _size(n: int) -> str:
    mib = 1024 * 1024
    return f"{n // mib} MiB" if n % mib == 0 else f"{n} bytes"


def _quoted(name: str) -> str:
    """A member name for a message: quoted, on one line (escaped unless printable), cut
    when very long."""
    cut = name if len(name) <= 200 else name[:200] + "..."
    return json.dumps(cut, ensure_ascii=not cut.isprintable())


def _name_problem(name: str) -> str | None:
    """Why `name` cannot be a path inside the target, or None when it can."""
    if "\\" in name:
        return "has a backslash in its name"
    if _CONTROL.search(name):
        return "has a control character in its name"
    if name.startswith("/") or _DRIVE.match(name):
        return "has an absolute path"
    parts = PurePosixPath(name).parts
    if ".." in parts:
        return 'leaves the archive ("..")'
    if len(name) > _MAX_NAME:
        return f"has a name longer than {_MAX_NAME} characters"
    if len(parts) > _MAX_DEPTH:
        return f"is nested deeper than {_MAX_DEPTH} folders"
    return None


def _normal(name: str) -> str:
    """A safe name's normal form: no `.`, no empty parts, no trailing slash ("." for the top)."""
    return "/".join(PurePosixPath(name).parts) or "."


def _member_name(member: tarfile.TarInfo) -> str:
    """The member's clean relative name; raises _Refused when it could escape the target
    or is anything but a regular file, a folder or a hard link."""
    shown = _quoted(member.name)
    problem = _name_problem(member.name)
    if problem:
        raise _Refused(f"member {shown} {problem}")
    if member.issym():
        raise _Refused(f"member {shown} is a symlink (to {_quoted(member.linkname)}); "
                       "a .krt holds only files and folders")
    if member.ischr() or member.isblk() or member.isfifo():
        raise _Refused(f"member {shown} is a device or special file")
    if not (member.isreg() or member.isdir() or member.islnk()):
        raise _Refused(f"member {shown} has an unsupported type ({member.type!r})")
    name = _normal(member.name)
    if name == "." and not member.isdir():
        raise _Refused(f"member {shown} is a file without a name")
    return name


def _write_members(tar: tarfile.TarFile, entries: list[_Entry], stage: Path) -> None:
    """Second pass: create the folders and files under `stage`, following no link."""
    root = os.open(stage, _DIR_FLAGS)
    try:
        for entry in entries:
            try:
                if entry.info.isdir():
                    os.close(_folder(root, entry.name.split("/"), entry.info.name))
                else:
                    _write_file(tar, root, entry)
            except gzip.BadGzipFile:
                raise
            except OSError as exc:
                raise _Refused(f"member {_quoted(entry.info.name)}: cannot write it: "
                               f"{exc.strerror or exc}") from None
    finally:
        os.close(root)


def _write_file(tar: tarfile.TarFile, root: int, entry: _Entry) -> None:
    """The regular member `entry`, under its name and those of its hard links, with the
    bytes read from the archive."""
    mode = 0o755 if entry.info.mode & 0o111 else 0o644
    source = tar.extractfile(entry.info)
    if source is None:  # not reached: only regular members get here
        raise _Refused(f"member {_quoted(entry.info.name)} has no content")
    with source, contextlib.ExitStack() as outs:
        if entry.info.size <= _CHUNK:
            data = source.read()
            for name in entry.names:
                with _create(root, name, entry.info.name, mode) as out:
                    out.write(data)
        else:  # each copy adds the size, so max_size bounds how many files are open
            targets = [outs.enter_context(_create(root, name, entry.info.name, mode))
                       for name in entry.names]
            while chunk := source.read(_CHUNK):
                for out in targets:
                    out.write(chunk)


def _create(root: int, name: str, member: str, mode: int) -> BinaryIO:
    """A new file `name` under `root`, open for writing; never follows or replaces anything."""
    *parents, base = name.split("/")
    folder = _folder(root, parents, member)
    try:
        fd = os.open(base, _FILE_FLAGS, 0o600, dir_fd=folder)
    except FileExistsError:
        raise _Refused(f"member {_quoted(member)}: {_quoted(name)} already exists") from None
    finally:
        os.close(folder)
    os.fchmod(fd, mode)
    return os.fdopen(fd, "wb")


def _folder(root: int, parts: list[str], member: str) -> int:
    """An open descriptor of the folder `parts` under `root`, made one component at a time;
    refuses anything there that is not a plain folder (a link, a file)."""
    fd = os.dup(root)
    try:
        for part in parts:
            try:
                os.mkdir(part, 0o700, dir_fd=fd)
                made = True
            except FileExistsError:
                made = False
            try:
                sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                raise _Refused(f"member {_quoted(member)}: {_quoted(part)} on its path is "
                               "not a folder") from None
            os.close(fd)
            fd = sub
            if made:
                os.fchmod(fd, 0o755)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _version_root(stage: Path) -> tuple[Path, str]:
    if any((stage / m).is_file() for m in MANIFEST_NAMES):
        return stage, ""
    entries = [e for e in stage.iterdir()
               if e.name not in _SKIP_TOP and not e.name.startswith("._")]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        folder = entries[0]
        if any((folder / m).is_file() for m in MANIFEST_NAMES):
            return folder, folder.name + "/"
    raise _Refused("no krt.yml at the top of the archive or inside a single top-level folder")


# --- building ----------------------------------------------------------------------------


def build_krt(version_dir: Path, out_file: Path) -> Path:
    """Pack `version_dir` into the .krt `out_file`, reproducibly (same input, same bytes).

    Members sit at the top of the archive; caches and hidden files are left out;
    symlinks are stored as the files they point to, and must stay inside the version.
    """
    version_dir, out_file = Path(version_dir), Path(out_file)
    shown = shown_path(version_dir)
    if not any((version_dir / m).is_file() for m in MANIFEST_NAMES):
        raise InputError([Problem(shown, message="no krt.yml (or krt.yaml) in this directory")])
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, path in _version_files(version_dir, out_file, shown):
            if path.is_dir():
                tar.addfile(_info(rel, tarfile.DIRTYPE, 0o755))
            else:
                data = path.read_bytes()
                mode = 0o755 if os.access(path, os.X_OK) else 0o644
                tar.addfile(_info(rel, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    return write_file(out_file, buffer.getvalue())


def _version_files(root: Path, skip: Path, shown: str) -> list[tuple[str, Path]]:
    real_root = root.resolve()
    out: list[tuple[str, Path]] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
            continue
        if path.suffix == ".pyc" or path.resolve() == skip.resolve():
            continue
        if path.is_symlink() and not path.resolve().is_relative_to(real_root):
            raise InputError([Problem(f"{shown}/{rel.as_posix()}",
                                      message="symlink leads outside the version")])
        if path.is_file() or path.is_dir():
            out.append((rel.as_posix(), path))
    return out


def _info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
