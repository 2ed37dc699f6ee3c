"""Which files of a version directory count: what `kai add` copies, and what ships to the pods.

One rule, used by `kai add` (renderer.repo), the plan's ConfigMap and its size check
(renderer.plan) and `kai validate` (renderer.validate):

* never: generated caches (`__pycache__/`, `*.pyc`, `*.pyo`), version-control folders
  (`.git/`, `.hg/`, `.svn/`) and `.DS_Store`; a symlink to a file inside the version counts
  as that file, any other symlink (to a folder, or leading outside) is left out;
* not what the version's ignore files exclude: `.krtignore` (KRE's) and then `.kaiignore`,
  at the top of the version, in gitignore syntax (a later line wins, so `.kaiignore` can
  re-include with `!`; nothing inside an excluded folder comes back). `kai add` always
  copies the two files themselves, so the copy ships what the original ships;
* to the pods only: not `docs/` (the version's documentation, kept in git).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pathspec import GitIgnoreSpec

IGNORE_FILES = (".krtignore", ".kaiignore")  # in this order: the later one wins
CACHE_DIRS = frozenset({"__pycache__"})
CACHE_SUFFIXES = (".pyc", ".pyo")
VCS_DIRS = frozenset({".git", ".hg", ".svn"})
JUNK_FILES = frozenset({".DS_Store"})
DOCS_DIR = "docs"
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
                except Exception as exc:  # pathspec raises ValueError or re.error
                    raise VersionFilesError(name, n, f"invalid pattern {line.strip()!r}: "
                                                     f"{exc}") from None
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
    if not path.is_file():
        return []
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
    real_root = root.resolve()
    parts = rel.split("/")
    for i, name in enumerate(parts[:-1]):
        reason = _dir_reason(root, "/".join(parts[: i + 1]), name, ignore, ship=True)
        if reason:
            return reason
    return _file_reason(root, rel, parts[-1], ignore, real_root, ship=True)


def _select(root: Path, ship: bool) -> Selected:
    ignore = Ignore.load(root)
    real_root = root.resolve()
    out: Selected = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        base = here.relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        dirs[:] = sorted(d for d in dirs
                         if not _dir_reason(root, prefix + d, d, ignore, ship))
        for name in sorted(files):
            rel = prefix + name
            if _file_reason(root, rel, name, ignore, real_root, ship):
                continue
            if ship:
                _check_name(rel)
            out.append((rel, here / name))
    return sorted(out)


def _dir_reason(root: Path, rel: str, name: str, ignore: Ignore, ship: bool) -> str | None:
    if name in CACHE_DIRS:
        return f"generated caches ({name}/) are left out"
    if name in VCS_DIRS:
        return f"version-control folders ({name}/) are left out"
    if (root / rel).is_symlink():
        return f"{rel}/ is a symlink, and folders are not followed through symlinks"
    if ship and rel == DOCS_DIR:
        return "docs/ is left out (the version's documentation stays in git)"
    return ignore.excluded_by(rel, is_dir=True)


def _file_reason(root: Path, rel: str, name: str, ignore: Ignore, real_root: Path,
                 ship: bool) -> str | None:
    path = root / rel
    if name in JUNK_FILES:
        return f"{name} files are left out"
    if name.endswith(CACHE_SUFFIXES):
        return "compiled Python (*.pyc, *.pyo) is left out"
    if path.is_symlink():
        real = path.resolve()
        if not real.is_file() or not real.is_relative_to(real_root):
            return "it is a symlink that does not lead to a file inside the version"
    elif not path.is_file():
        return "it is not a regular file"
    if not ship and rel in IGNORE_FILES:
        return None  # the copy keeps them, so it ships what the original ships
    return ignore.excluded_by(rel, is_dir=False)


def _check_name(rel: str) -> None:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        shown = rel.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        raise VersionFilesError(shown, 0, "the file name is not valid UTF-8; rename it, or "
                                          "exclude it in .kaiignore") from None
