"""How a rendered tree on disk differs from a new render: file lists, diffs, stats.

`compare_tree` lists the files that differ (added / removed / changed), which is what
`kai render --check` reports. `tree_changes` goes one step further, as git does: a
removed and an added file in the same folder whose names differ only in the content
hash (a version's ConfigMap, `configmap-<version>-files-<hash>.yaml`) are one file
renamed, so a one-line change to a node's code shows as that line, not as the whole
ConfigMap removed and added again. `unified_diff`, `diff_stat` and `name_status` print
changes the way `git diff`, `git diff --stat` and `git diff --name-status` do; the
unified diff has git's headers, so `git apply` takes it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .atomic import read_tree
from .plan import HASH_LEN

ADDED = "added"
REMOVED = "removed"
CHANGED = "changed"
RENAMED = "renamed"

_LETTER = {ADDED: "A", REMOVED: "D", CHANGED: "M", RENAMED: "R"}
# A file name whose only varying part is a content hash: `<stem>-<hash>.yaml`.
_HASHED = re.compile(rf"(?P<stem>.+)-[0-9a-f]{{{HASH_LEN}}}(?P<ext>\.yaml)")
_STAT_BAR = 40  # the widest +/- bar of a --stat line


def compare_tree(target: Path, tree: Mapping[str, bytes]) -> list[tuple[str, str]]:
    """How `target` on disk differs from `tree`: sorted (path, added|removed|changed)."""
    return compare(read_tree(target), tree)


def compare(current: Mapping[str, bytes], tree: Mapping[str, bytes]) -> list[tuple[str, str]]:
    """How `current` differs from `tree`: sorted (path, added|removed|changed)."""
    out: list[tuple[str, str]] = []
    for rel in sorted(set(current) | set(tree)):
        if rel not in current:
            out.append((rel, ADDED))
        elif rel not in tree:
            out.append((rel, REMOVED))
        elif current[rel] != tree[rel]:
            out.append((rel, CHANGED))
    return out


@dataclass(frozen=True)
class FileChange:
    """One file that differs; `old_path` differs from `path` only for a rename."""

    status: str  # ADDED, REMOVED, CHANGED or RENAMED
    old_path: str | None  # None when added
    path: str | None  # None when removed
    old: bytes | None
    new: bytes | None

    @property
    def shown_path(self) -> str:
        return self.path if self.path is not None else str(self.old_path)

    def counts(self) -> tuple[int, int]:
        """Lines added and removed, as in the unified diff."""
        added = removed = 0
        for line in _hunks(self):
            if line.startswith("+") and not line.startswith("+++"):
                added += 1
            elif line.startswith("-") and not line.startswith("---"):
                removed += 1
        return added, removed

    def similarity(self) -> int:
        """How alike the old and new file are, in percent (git's `similarity index`)."""
        ratio = difflib.SequenceMatcher(None, _lines(self.old), _lines(self.new),
                                        autojunk=False).ratio()
        return int(ratio * 100)


def tree_changes(current: Mapping[str, bytes], tree: Mapping[str, bytes],
                 prefix: str = "", old_prefix: str | None = None) -> list[FileChange]:
    """The files that differ from `current` to `tree`, hash renames paired, sorted by path.

    Paths are shown under `prefix` (e.g. `rendered/demo`); `current`'s under
    `old_prefix` when it is another folder (a renamed project: every file in both
    trees is then renamed, changed or not).
    """
    base = f"{prefix.rstrip('/')}/" if prefix else ""
    old_base = base if old_prefix is None else (f"{old_prefix.rstrip('/')}/" if old_prefix
                                                 else "")
    moved = old_base != base
    diffs = compare(current, tree)
    if moved:
        diffs = sorted([*diffs, *((rel, RENAMED) for rel in set(current) & set(tree)
                                  if current[rel] == tree[rel])])
    removed = [rel for rel, status in diffs if status == REMOVED]
    added = [rel for rel, status in diffs if status == ADDED]
    pairs = _renames(removed, added)
    renamed_from = set(pairs.values())
    out: list[FileChange] = []
    for rel, status in diffs:
        if rel in renamed_from:
            continue
        if rel in pairs:
            old = pairs[rel]
            out.append(FileChange(RENAMED, old_base + old, base + rel, current[old], tree[rel]))
        elif status == ADDED:
            out.append(FileChange(ADDED, None, base + rel, None, tree[rel]))
        elif status == REMOVED:
            out.append(FileChange(REMOVED, old_base + rel, None, current[rel], None))
        else:
            out.append(FileChange(RENAMED if moved else CHANGED, old_base + rel, base + rel,
                                  current[rel], tree[rel]))
    return sorted(out, key=lambda c: c.shown_path)


def _hash_key(rel: str) -> tuple[str, str] | None:
    folder, _, name = rel.rpartition("/")
    match = _HASHED.fullmatch(name)
    return (folder, match["stem"] + match["ext"]) if match else None


def _renames(removed: Iterable[str], added: Iterable[str]) -> dict[str, str]:
    """added path -> removed path, for each folder and stem with exactly one of each."""
    gone: dict[tuple[str, str], list[str]] = {}
    new: dict[tuple[str, str], list[str]] = {}
    for paths, into in ((removed, gone), (added, new)):
        for rel in paths:
            key = _hash_key(rel)
            if key is not None:
                into.setdefault(key, []).append(rel)
    return {new[k][0]: gone[k][0] for k in sorted(set(gone) & set(new))
            if len(gone[k]) == 1 and len(new[k]) == 1}


def _lines(data: bytes | None) -> list[str]:
    if data is None:
        return []
    return data.decode("utf-8", errors="replace").splitlines(keepends=True)


def _hunks(change: FileChange) -> list[str]:
    """The `---`/`+++` lines and hunks of one change (empty when the bytes are equal)."""
    out = []
    diff = difflib.unified_diff(
        _lines(change.old), _lines(change.new),
        fromfile="/dev/null" if change.old_path is None else f"a/{change.old_path}",
        tofile="/dev/null" if change.path is None else f"b/{change.path}",
    )
    for line in diff:
        if not line.endswith("\n"):
            line += "\n\\ No newline at end of file\n"
        out.append(line)
    return out


def patch(changes: Iterable[FileChange]) -> str:
    """The changes as one git-style unified diff (`diff --git` headers, renames)."""
    chunks: list[str] = []
    for c in changes:
        old = c.old_path if c.old_path is not None else c.path
        new = c.path if c.path is not None else c.old_path
        chunks.append(f"diff --git a/{old} b/{new}\n")
        if c.status == ADDED:
            chunks.append("new file mode 100644\n")
        elif c.status == REMOVED:
            chunks.append("deleted file mode 100644\n")
        elif c.status == RENAMED:
            chunks.append(f"similarity index {c.similarity()}%\n"
                          f"rename from {c.old_path}\nrename to {c.path}\n")
        chunks.extend(_hunks(c))
    return "".join(chunks)


def unified_diff(target: Path, tree: Mapping[str, bytes], label: str | None = None) -> str:
    """A unified diff from the tree on disk to `tree`; paths are shown under `label`."""
    base = label if label is not None else Path(target).as_posix()
    return patch(tree_changes(read_tree(target), tree, base))


def _stat_name(c: FileChange) -> str:
    """The path, or for a rename git's `common/{old => new}/common` form."""
    if c.status != RENAMED or c.old_path is None or c.path is None:
        return c.shown_path
    old, new = c.old_path.split("/"), c.path.split("/")
    head = 0
    while head < min(len(old), len(new)) - 1 and old[head] == new[head]:
        head += 1
    tail = 0
    while (tail < min(len(old), len(new)) - head - 1
           and old[len(old) - 1 - tail] == new[len(new) - 1 - tail]):
        tail += 1
    middle = f"{{{'/'.join(old[head:len(old) - tail])} => {'/'.join(new[head:len(new) - tail])}}}"
    return "/".join([*old[:head], middle, *old[len(old) - tail:]])


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def diff_stat(changes: Iterable[FileChange]) -> str:
    """`git diff --stat`: one line per file with its +/- counts, then a summary line."""
    rows = [(_stat_name(c), *c.counts()) for c in changes]
    if not rows:
        return ""
    name_width = max(len(name) for name, _, _ in rows)
    most = max(a + r for _, a, r in rows)
    count_width = len(str(most))
    scale = min(1.0, _STAT_BAR / most) if most else 1.0
    lines = []
    for name, added, removed in rows:
        plus, minus = _bar(added, scale), _bar(removed, scale)
        bar = f" {'+' * plus}{'-' * minus}" if plus or minus else ""
        lines.append(f" {name.ljust(name_width)} | {str(added + removed).rjust(count_width)}{bar}")
    total_add = sum(a for _, a, _ in rows)
    total_del = sum(r for _, _, r in rows)
    summary = [_plural(len(rows), "file changed", "files changed")]
    if total_add or not total_del:
        summary.append(_plural(total_add, "insertion(+)", "insertions(+)"))
    if total_del or not total_add:
        summary.append(_plural(total_del, "deletion(-)", "deletions(-)"))
    lines.append(" " + ", ".join(summary))
    return "\n".join(lines) + "\n"


def _bar(n: int, scale: float) -> int:
    """The bar length of `n` lines: scaled down, but at least 1 for any change."""
    return max(1, round(n * scale)) if n else 0


def name_status(changes: Iterable[FileChange]) -> str:
    """`git diff --name-status`: `M path`, `A path`, `D path`, `R<similarity> old new`."""
    lines = []
    for c in changes:
        letter = _LETTER[c.status]
        if c.status == RENAMED:
            lines.append(f"{letter}{c.similarity():03d}\t{c.old_path}\t{c.path}")
        else:
            lines.append(f"{letter}\t{c.shown_path}")
    return "".join(f"{line}\n" for line in lines)
