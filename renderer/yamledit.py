"""Minimal edits of a YAML file that keep its comments, key order and style.

:func:`edits` takes a file's text, the plain data it stands for (`old`) and the
data it should stand for (`new`), and yields candidate texts, the smallest edit
first. Only the differences between `old` and `new` are applied, to a ruamel.yaml
round-trip document, so keys the file leaves out stay out unless their value
changes. The changed lines are then spliced into the original text, so every line
the edit does not touch stays byte for byte as it was (ruamel.yaml itself would
re-space flow mappings and re-indent). The caller checks each candidate loads back
to the data it wants and keeps the first that does.

Only pass text that renderer.yamlsafe accepted: at most 1 MiB, no anchors or
aliases, no custom tags, no duplicate keys, no tabs. ruamel.yaml runs in its
round-trip mode, which builds plain mappings, lists and scalars only, with the
YAML 1.1 rules PyYAML reads the file with (so `on` is written quoted).
"""

from __future__ import annotations

import difflib
import io
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark
from ruamel.yaml.resolver import VersionedResolver
from ruamel.yaml.scalarstring import ScalarString
from ruamel.yaml.tokens import CommentToken

WIDTH = 4096  # never fold a long line the edit writes
YAML_1_1 = (1, 1)
DEFAULT_INDENT = (2, 2, 0)  # mapping, sequence, sequence dash offset: PyYAML's layout


class _PyYamlResolver(VersionedResolver):
    """Resolve plain scalars exactly as PyYAML does (it reads the file back): YAML 1.1
    rules, so `on` is a bool and is written quoted, without a `%YAML 1.1` directive."""

    def __init__(self, version: Any = None, loader: Any = None, loadumper: Any = None) -> None:
        super().__init__(YAML_1_1, loader, loadumper)
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items():
            for tag, regexp in resolvers:
                self.add_version_implicit_resolver(YAML_1_1, tag, regexp, [first])


def edits(text: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> Iterator[str]:
    """Candidate texts of `text` changed from `old` to `new`, the smallest edit first.

    First the minimal edit: a mapping the file leaves out gets only the keys whose
    value changes. Then, should that not load back right (a mapping whose default is
    replaced as a whole, like resource requests), the same edit writing each left-out
    mapping of plain values in full. Each comes spliced into the original lines, then
    as ruamel.yaml writes the whole document.
    """
    for minimal in (True, False):
        rt = _round_trip()
        doc = rt.load(text)
        if not isinstance(doc, CommentedMap):
            return
        mapping, sequence, offset = _indentation(doc)
        rt.indent(mapping=mapping, sequence=sequence, offset=offset)
        before = _dump(rt, doc)
        _merge_map(doc, old, new, minimal, None)
        after = _dump(rt, doc)
        try:
            spliced: str | None = splice(text, before, after)
        except ValueError:
            spliced = None
        if spliced is not None:
            yield spliced
        yield after


def _round_trip() -> YAML:
    rt = YAML(typ="rt", pure=True)
    rt.Resolver = _PyYamlResolver
    rt.preserve_quotes = True
    rt.allow_duplicate_keys = False
    rt.width = WIDTH
    rt.allow_unicode = True
    return rt


def _dump(rt: YAML, doc: CommentedMap) -> str:
    out = io.StringIO()
    rt.dump(doc, out)
    return out.getvalue()


def _indentation(doc: CommentedMap) -> tuple[int, int, int]:
    """(mapping, sequence, offset) indents as most of the file's nested block
    collections use them (the first seen on a tie); PyYAML's layout where it has none."""
    mappings: Counter[int] = Counter()
    sequences: Counter[tuple[int, int]] = Counter()
    found: list[CommentedMap] = [doc]
    for node in found:  # breadth first; `found` grows as nested mappings turn up
        for key, value in node.items():
            if not isinstance(value, CommentedMap | CommentedSeq) or not value \
                    or value.fa.flow_style():
                continue
            col = node.lc.key(key)[1]
            if isinstance(value, CommentedMap):
                mappings[value.lc.key(next(iter(value)))[1] - col] += 1
                found.append(value)
            else:
                sequences[(value.lc.item(0)[1] - col, value.lc.col - col)] += 1
    mapping = next((m for m, _ in mappings.most_common() if 1 <= m <= 16), DEFAULT_INDENT[0])
    sequence, offset = next(((s, o) for (s, o), _ in sequences.most_common()
                             if 0 <= o <= 16 and o + 2 <= s <= o + 16), DEFAULT_INDENT[1:])
    return mapping, sequence, offset


# --- applying the differences ----------------------------------------------------------------

Parent = tuple[CommentedMap, Any] | None  # the mapping holding a node, and its key there


def _merge_map(node: CommentedMap, old: Mapping[str, Any], new: Mapping[str, Any],
               minimal: bool, parent: Parent) -> None:
    for key in [k for k in node if k in old and k not in new]:
        _delete(node, key, parent)
    for key, value in new.items():
        before = old.get(key)
        if key in old and before == value:
            continue
        if key not in node:
            if isinstance(value, dict) and isinstance(before, dict) and (
                    minimal or any(isinstance(v, dict) for v in value.values())):
                child = _build({}, _flow_child(node, key))
                _insert(node, key, child, new, parent)
                _merge_map(child, before, value, minimal, (node, key))
            else:
                _insert(node, key, _build(value, _flow_child(node, key)), new, parent)
            continue
        current = node[key]
        if isinstance(value, dict) and isinstance(current, CommentedMap):
            reflow = not current and current.fa.flow_style() and not _flow_child(node, key)
            if reflow:  # `{}` gaining keys is written like a new mapping
                current.fa.set_block_style()
            _merge_map(current, before if isinstance(before, dict) else {}, value, minimal,
                       (node, key))
            if reflow:
                _move_rest((node, key), _tail(node, key))
        elif isinstance(value, list) and isinstance(current, CommentedSeq):
            _merge_seq(current, before if isinstance(before, list) else [], value, minimal)
        elif isinstance(value, dict | list):
            node[key] = _build(value, _flow_child(node, key))
        else:
            node[key] = _like(current, value)
    if not node:
        node.fa.set_flow_style()  # `{}`: an emptied block mapping would read as null


def _merge_seq(node: CommentedSeq, old: Sequence[Any], new: Sequence[Any],
               minimal: bool) -> None:
    if len(node) != len(old):
        raise ValueError("the list does not match the data it loads to")
    for i in range(min(len(old), len(new))):
        if old[i] == new[i]:
            continue
        current = node[i]
        if isinstance(new[i], dict) and isinstance(current, CommentedMap):
            _merge_map(current, old[i] if isinstance(old[i], dict) else {}, new[i], minimal,
                       None)
        elif isinstance(new[i], dict | list):
            node[i] = _build(new[i], _flow_item(node))
        else:
            node[i] = _like(current, new[i])
    for i in reversed(range(len(new), len(old))):
        del node[i]
    for value in new[len(old):]:
        node.append(_build(value, _flow_item(node)))


def _insert(node: CommentedMap, key: Any, value: Any, new: Mapping[str, Any],
            parent: Parent) -> None:
    """Add `key` where `new` orders it when the file keeps that order, else at the end;
    comment lines that sat before the next key stay before it."""
    order = list(new)
    present = [k for k in node if k in new]
    pos = len(node)
    if present == [k for k in order if k in node]:
        rank = order.index(key)
        pos = 0
        for i, k in enumerate(node):
            if k in new and order.index(k) < rank:
                pos = i + 1
    keys = list(node)
    node.insert(pos, key, value)
    if node.fa.flow_style():
        return
    if pos > 0:
        _move_rest(_tail(node, keys[pos - 1]), _tail(node, key))
    elif parent is not None:
        _move_rest(parent, _tail(node, key))


def _delete(node: CommentedMap, key: Any, parent: Parent) -> None:
    """Remove `key` and its comments; comment lines after it stay where they were."""
    rest = _take_rest(_tail(node, key))
    index = list(node).index(key)
    del node[key]
    node.ca.items.pop(key, None)
    if not rest:
        return
    if index > 0:
        _put_rest(_tail(node, list(node)[index - 1]), rest)
    elif parent is not None:
        _put_rest(parent, rest)


def _build(value: Any, flow: bool) -> Any:
    """A new round-trip node for plain `value`: block style unless `flow`."""
    out: CommentedMap | CommentedSeq
    if isinstance(value, dict):
        out = CommentedMap()
        for k, v in value.items():
            out[k] = _build(v, flow)
    elif isinstance(value, list):
        out = CommentedSeq(_build(v, flow) for v in value)
    else:
        return value
    if flow:
        out.fa.set_flow_style()
    else:
        out.fa.set_block_style()
    return out


def _like(current: Any, value: Any) -> Any:
    """`value` quoted the way the value it replaces was."""
    if isinstance(current, ScalarString) and isinstance(value, str):
        return type(current)(value)
    return value


def _flow_child(node: CommentedMap, key: Any) -> bool:
    """Whether a new mapping or list under `node[key]` is written in flow style:
    inside a flow collection, or when every sibling collection is flow."""
    if node.fa.flow_style():
        return True
    siblings = [v for k, v in node.items()
                if k != key and isinstance(v, CommentedMap | CommentedSeq)]
    return bool(siblings) and all(v.fa.flow_style() for v in siblings)


def _flow_item(node: CommentedSeq) -> bool:
    if node.fa.flow_style():
        return True
    items = [v for v in node if isinstance(v, CommentedMap | CommentedSeq)]
    return bool(items) and all(v.fa.flow_style() for v in items)


# --- comments --------------------------------------------------------------------------------
# ruamel.yaml keeps the comment lines between two keys with the last value before them
# (`ca.items[key][2]`): its first line ends the value's own line, the rest are full lines.


def _tail(node: CommentedMap, key: Any) -> Parent:
    """The mapping and key whose comment follows the last line of `node[key]`."""
    value = node[key]
    while isinstance(value, CommentedMap) and value and not value.fa.flow_style():
        node, key = value, list(value)[-1]
        value = node[key]
    if isinstance(value, CommentedSeq) and value and not value.fa.flow_style():
        return None  # its comments sit with the items; left where they are
    return node, key


def _take_rest(at: Parent) -> str:
    """Remove and return the full comment lines after `at`'s own line."""
    if at is None:
        return ""
    entry = at[0].ca.items.get(at[1])
    token = entry[2] if entry and len(entry) > 2 else None
    if token is None:
        return ""
    value: str = token.value
    end = value.find("\n")
    if end < 0 or end == len(value) - 1:
        return ""
    token.value = value[: end + 1]
    return value[end + 1 :]


def _put_rest(at: Parent, rest: str) -> None:
    """Append full comment lines after `at`'s own line."""
    if at is None or not rest:
        return
    entry = at[0].ca.items.setdefault(at[1], [None, None, None, None])
    token = entry[2]
    if token is None:
        entry[2] = CommentToken("\n" + rest, CommentMark(0), None)
    else:
        value = token.value
        token.value = (value if value.endswith("\n") else value + "\n") + rest


def _move_rest(src: Parent, dst: Parent) -> None:
    if src is not None and dst is not None and (src[0] is not dst[0] or src[1] != dst[1]):
        _put_rest(dst, _take_rest(src))


# --- splicing --------------------------------------------------------------------------------


def splice(text: str, before: str, after: str) -> str:
    """`text` with the line changes from `before` to `after` applied to it.

    `before` is ruamel.yaml's rendering of `text` and `after` of the edited document.
    Lines of `before` are matched to lines of `text`: equal lines, and line for line
    between two such runs when both hold as many lines (ruamel.yaml re-spaced them).
    Each changed block of lines is widened until the lines on both sides of it are
    matched, then that stretch of `text` is replaced; every other line of `text` is
    kept as it is.
    """
    lines, old, new = (s.splitlines(keepends=True) for s in (text, before, after))
    to_text: list[int | None] = [None] * len(old)
    done_a = done_b = 0
    for a, b, size in difflib.SequenceMatcher(None, old, lines, autojunk=False) \
            .get_matching_blocks():
        if a - done_a == b - done_b:  # as many lines, differently spaced: line for line
            for k in range(a - done_a):
                to_text[done_a + k] = done_b + k
        for k in range(size):
            to_text[a + k] = b + k
        done_a, done_b = a + size, b + size
    raw = [op[1:] for op in difflib.SequenceMatcher(None, old, new, autojunk=False)
           .get_opcodes() if op[0] != "equal"]
    hunks: list[tuple[int, int, int, int]] = []
    for n, (i1, i2, j1, j2) in enumerate(raw):
        low = hunks[-1][1] if hunks else 0
        while i1 > low and to_text[i1 - 1] is None:
            i1, j1 = i1 - 1, j1 - 1
        if hunks and i1 <= hunks[-1][1]:
            i1, _, j1, _ = hunks.pop()
        high = raw[n + 1][0] if n + 1 < len(raw) else len(old)
        while i2 < high and to_text[i2] is None:
            i2, j2 = i2 + 1, j2 + 1
        hunks.append((i1, i2, j1, j2))
    out: list[str] = []
    done = 0
    for i1, i2, j1, j2 in hunks:
        start = _text_index(to_text, i1 - 1, 0) + (1 if i1 > 0 else 0)
        stop = _text_index(to_text, i2, len(lines))
        out += lines[done:start]
        out += new[j1:j2]
        done = stop
    out += lines[done:]
    return "".join(out)


def _text_index(to_text: list[int | None], i: int, edge: int) -> int:
    if i < 0 or i >= len(to_text):
        return edge
    found = to_text[i]
    if found is None:
        raise ValueError("no unchanged line to anchor the edit on")
    return found
