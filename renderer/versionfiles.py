"""Which files of a version directory count: what `kai add` copies, and what ships to the pods.

One rule, used by `kai add` (renderer.repo), the plan's ConfigMap and its size check
(renderer.plan) and `kai validate` (renderer.validate):

* never: generated caches (`__pycache__/`, `*.pyc`, `*.pyo`), version-control folders
  (`.git/`, `.hg/`, `.svn/`) and `.DS_Store`; a symlink to a file inside the version counts
  as that file, any other symlink (to a folder, or leading outside) is left out;
* not what the version's ignore files exclude: `.krtignore` (KRE's) and then `.kaiignore`,
  at the top of the version, in gitignore syntax (a later line wins, so `.kaiignore` can
  re-include with `!`; nothing inside an excluded folder comes back). `kai add` always
  copies the two files themselves and the manifest, so the copy is a version that ships
  what the original ships;
* to the pods only: not `docs/` (the version's documentation, kept in git).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pathspec import GitIgnoreSpec

from .krt import MANIFEST_NAMES

IGNORE_FILES = (".krtignore", ".kaiignore")  # in this order: the later one wins
CACHE_DIRS = frozenset({"__pycache__"})
CACHE_SUFFIXES = (".pyc", ".pyo")
VCS_DIRS = frozenset({".git", ".hg", ".svn"})
JUNK_FILES = frozenset({".DS_Store"})
DOCS_DIR = "docs"
ALWAYS_COPIED = frozenset({*IGNORE_FILES, *MANIFEST_NAMES})  # at the top, whatever they say
MAX_IGNORE_FILE = 256 * 1024

Selected = list[tuple[str, Path]]  # (version-relative posix path, path on disk), sorted


class VersionFilesError(ValueError):
    """A version's files cannot be selected: a bad ignore file, a file name that cannot ship.

    `file` is version-relative; `line` is 1-based, 0 when there is no position.
    """

    def __init__(self, file: str, line: int, message: str) -> None:
        self.file, self.line, self.message = file, line, message
        super().__init__(f"{file}:{line}: {message}" if line else f"{file}: {message}")


@dataclass(frozen=True)
class Ignore:
    """The patterns of a version's ignore files, with where each one was written."""

    spec: GitIgnoreSpec
    origins: tuple[tuple[str, int, str], ...]  # (file, line, text) of each spec pattern

    @classmethod
    def load(cls, root: Path) -> Ignore:
        lines: list[str] = []
        origins: list[tuple[str, int, str]] = []
        for name in IGNORE_FILES:
            for n, line in enumerate(_read_ignore(root, name), start=1):
                try:
                    GitIgnoreSpec.from_lines([line])
                except (ValueError, re.error) as exc:  # what pathspec raises for them
                    why = f" ({exc.msg})" if isinstance(exc, re.error) else ""
                    raise VersionFilesError(name, n, f"invalid pattern {line.strip()!r}{why}; "
                                                     "see gitignore's pattern format") from None
                lines.append(line)
                origins.append((name, n, line.strip()))
        return cls(GitIgnoreSpec.from_lines(lines), tuple(origins))

    def excluded_by(self, rel: str, is_dir: bool) -> str | None:
        """Which line excludes `rel` (a folder when `is_dir`), or None when none does.

        Only `rel` itself is matched: a caller walking the tree never enters an excluded
        folder, which is how git keeps what is inside one out.
        """
        if not self.origins:
            return None
        result = self.spec.check_file(rel + "/" if is_dir else rel)
        if not result.include or result.index is None:
            return None
        file, line, text = self.origins[result.index]
        return f"{file} line {line} excludes it ({text!r})"


def _read_ignore(root: Path, name: str) -> list[str]:
    path = root / name
    if _kind(os.fspath(path), os.path.realpath(root)) not in (_FILE, _LINK_IN):
        return []  # missing, or a symlink out of the version: not the version's patterns
    if path.stat().st_size > MAX_IGNORE_FILE:
        raise VersionFilesError(name, 0, f"is larger than {MAX_IGNORE_FILE // 1024} KiB")
    try:
        return path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise VersionFilesError(name, 0, f"is not UTF-8 text ({exc.reason})") from None


def copied_files(root: Path) -> Selected:
    """What `kai add` copies into `versions/<name>/`."""
    return _select(Path(root), ship=False)


def shipped_files(root: Path) -> Selected:
    """What ships to the version's pods (its ConfigMap); a subset of copied_files."""
    return _select(Path(root), ship=True)


def left_out(root: Path, rel: str) -> str | None:
    """Why the file `rel` of the version at `root` does not ship, or None when it does."""
    root = Path(root)
    ignore = Ignore.load(root)
    parts = rel.split("/")
    for i, name in enumerate(parts[:-1]):
        sub = "/".join(parts[: i + 1])
        reason = _dir_reason(sub, name, os.path.islink(os.path.join(root, sub)), ignore, True)
        if reason:
            return reason
    path = os.path.join(root, rel)
    return _file_reason(rel, parts[-1], _kind(path, os.path.realpath(root)), ignore, True)


def _select(root: Path, ship: bool) -> Selected:
    ignore = Ignore.load(root)
    real_root = os.path.realpath(root)
    out: Selected = []
    pending = [("", os.fspath(root))]
    while pending:  # depth-first; every folder once (symlinked folders are not entered)
        prefix, folder = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    if not _dir_reason(rel, entry.name, False, ignore, ship):
                        pending.append((rel + "/", entry.path))
                    continue
                if entry.is_symlink():
                    kind = _kind(entry.path, real_root)
                else:
                    kind = _FILE if entry.is_file(follow_symlinks=False) else _OTHER
                if _file_reason(rel, entry.name, kind, ignore, ship):
                    continue
                if ship:
                    _check_name(rel)
                out.append((rel, root / rel))
    return sorted(out)


_FILE, _LINK_IN, _LINK_OUT, _OTHER = "file", "link to a file inside", "other link", "other"


def _kind(path: str, real_root: str) -> str:
    """What `path` is, for the rules: a regular file, a symlink to a file inside the version
    (`real_root`, resolved), any other symlink, or something else (a folder, a FIFO...)."""
    if os.path.islink(path):
        real = os.path.realpath(path)
        inside = real.startswith(real_root.rstrip("/") + "/")
        return _LINK_IN if inside and os.path.isfile(real) else _LINK_OUT
    return _FILE if os.path.isfile(path) else _OTHER


def _dir_reason(rel: str, name: str, is_link: bool, ignore: Ignore, ship: bool) -> str | None:
    if name in CACHE_DIRS:
        return f"generated caches ({name}/) are left out"
    if name in VCS_DIRS:
        return f"version-control folders ({name}/) are left out"
    if is_link:
        return f"{rel}/ is a symlink, and folders are not followed through symlinks"
    if ship and rel == DOCS_DIR:
        return "docs/ is left out (the version's documentation stays in git)"
    return ignore.excluded_by(rel, is_dir=True)


def _file_reason(rel: str, name: str, kind: str, ignore: Ignore, ship: bool) -> str | None:
    if kind == _OTHER:
        return "it is not a regular file"
    if kind == _LINK_OUT:
        return "it is a symlink that does not lead to a file inside the version"
    if name in JUNK_FILES:
        return f"{name} files are left out"
    if name.endswith(CACHE_SUFFIXES):
        return "compiled Python (*.pyc, *.pyo) is left out"
    if not ship and rel in ALWAYS_COPIED:
        return None  # the copy is a version, and ships what the original ships
    return ignore.excluded_by(rel, is_dir=False)


def _check_name(rel: str) -> None:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        shown = rel.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        raise VersionFilesError(shown, 0, "the file name is not valid UTF-8; rename it, or "
                                          "exclude it in .kaiignore") from None
