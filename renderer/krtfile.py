"""KRE `.krt` archives: import them safely, build them reproducibly.

A `.krt` is a gzipped tar holding `krt.yml`, the `.proto`, `src/`, `docs/` and
`metrics/`, either at the top or inside one top-level folder.

:func:`extract_krt` never lets a member escape the target (absolute paths, `..`,
links pointing out, device files are refused), bounds the unpacked size and the
member count, and never leaves a half-extracted target: it unpacks next to the
target and renames when everything checked out.
"""

from __future__ import annotations

import gzip
import io
import os
import posixpath
import re
import secrets
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .krt import MANIFEST_NAMES
from .output import write_file
from .problems import InputError, Problem
from .yamlsafe import shown_path

MAX_UNPACKED = 256 * 1024 * 1024
MAX_MEMBERS = 10_000
_SKIP_TOP = ("__MACOSX",)


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
            # check links where no outside path can lead back in: under an unguessable name
            hidden = tmp / secrets.token_hex(16)
            os.replace(root, hidden)
            _check_links(hidden)
            if target.exists():
                target.rmdir()
            os.replace(hidden, target)
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


def _unpack(archive: Path, stage: Path, max_size: int, max_members: int) -> tuple[int, int]:
    count = 0
    size = 0
    files: set[str] = set()
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:  # one header at a time: limits apply before data is read
                count += 1
                if count > max_members:
                    raise _Refused(f"the archive holds more than {max_members} members")
                name = _member_name(member, files)
                if member.isfile():
                    size += member.size
                    if size > max_size:
                        raise _Refused(f"the archive unpacks to more than {_size(max_size)}")
                if member.islnk():
                    # copy the already-extracted file: tarfile would rescan the whole archive
                    link = PurePosixPath(posixpath.normpath(member.linkname)).as_posix()
                    dest = stage / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(stage / link, dest)
                    files.add(name)
                    continue
                tar.extract(member, stage, filter="data")
                if member.isfile():
                    files.add(name)
    except tarfile.FilterError as exc:
        raise _Refused(f"unsafe member refused: {exc}") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _Refused(f"corrupt .krt archive: {exc or type(exc).__name__}") from None
    if count == 0:
        raise _Refused("the archive is empty")
    return count, size


def _size(n: int) -> str:
    mib = 1024 * 1024
    return f"{n // mib} MiB" if n % mib == 0 else f"{n} bytes"


def _member_name(member: tarfile.TarInfo, files: set[str]) -> str:
    """The member's safe relative name; raises _Refused when it could escape or is special."""
    name = member.name
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise _Refused(f'member "{name}" has an absolute path')
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise _Refused(f'member "{name}" leaves the archive ("..")')
    clean = PurePosixPath(*parts).as_posix() if parts else "."
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        raise _Refused(f'member "{name}" is a device or special file')
    if member.issym():
        link = member.linkname
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(clean), link))
        if link.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise _Refused(f'member "{name}" is a symlink pointing outside the archive ({link})')
    elif member.islnk():
        link = posixpath.normpath(member.linkname)
        if link.startswith("/") or link == ".." or link.startswith("../") or link not in files:
            raise _Refused(
                f'member "{name}" is a hard link to "{member.linkname}", not to an earlier file '
                "of the archive"
            )
    elif not (member.isfile() or member.isdir()):
        raise _Refused(f'member "{name}" has an unsupported type')
    return clean


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


def _check_links(root: Path) -> None:
    """After unpacking: every symlink under `root` must resolve inside it."""
    real_root = os.path.realpath(root)
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                real = os.path.realpath(path)
                if os.path.commonpath([real_root, real]) != real_root:
                    rel = os.path.relpath(path, root)
                    raise _Refused(f'member "{rel}" is a symlink pointing outside the version')


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
