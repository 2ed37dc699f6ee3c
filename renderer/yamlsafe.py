"""Load one YAML document safely, keeping where every value sits in the file.

User files (krt.yml, kai.yaml) go through :func:`load_yaml`. It refuses, as
:class:`~renderer.problems.Problem` lines and never as a traceback: files over
1 MiB, bytes that are not UTF-8, an empty file, broken YAML, tabs used for
indentation, anchors and aliases (so an alias bomb costs nothing), duplicate
keys, custom tags, several documents and a top level that is not a mapping.

The result holds plain data (str, int, float, bool, None, list, dict with str
keys) and answers "where is this field?" for any path such as
``("workflows", 0, "sequential", 1)``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .problems import InputError, InputWarning, Problem

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64

FieldPath = tuple[str | int, ...]
Position = tuple[int, int]  # 1-based line, column

_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_TAG = "tag:yaml.org,2002:"
_PLAIN_TAGS = {f"{_TAG}{t}" for t in ("str", "int", "float", "bool", "null")}
_TEXT_TAGS = {f"{_TAG}timestamp"}  # dates stay the text the user wrote
_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def format_path(path: Sequence[str | int]) -> str:
    """`("workflows", 0, "sequential", 1)` -> `workflows[0].sequential[1]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _SIMPLE_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out


@dataclass(frozen=True)
class Document:
    """A loaded YAML mapping plus the position of each value and key in `file`."""

    file: str
    data: dict[str, Any]
    values: dict[FieldPath, Position] = field(default_factory=dict, repr=False)
    keys: dict[FieldPath, Position] = field(default_factory=dict, repr=False)

    def position(self, path: Sequence[str | int]) -> Position:
        """Where the value at `path` starts; for a missing path, its nearest ancestor."""
        p = tuple(path)
        while p not in self.values and p:
            p = p[:-1]
        return self.values.get(p, (1, 1))

    def key_position(self, path: Sequence[str | int]) -> Position:
        """Where the key of the mapping entry at `path` starts (its value's for list items)."""
        p = tuple(path)
        return self.keys.get(p) or self.position(p)

    def problem(self, path: Sequence[str | int], message: str, *, key: bool = False) -> Problem:
        line, col = self.key_position(path) if key else self.position(path)
        return Problem(self.file, line, col, format_path(path), message)

    def warning(self, path: Sequence[str | int], message: str, *,
                key: bool = False) -> InputWarning:
        """Like `problem`, for something accepted: `message` continues `path`'s sentence."""
        line, col = self.key_position(path) if key else self.position(path)
        return InputWarning(self.file, line, col, format_path(path), message)


def load_yaml(path: Path, display: str | None = None) -> Document:
    """Read `path` and load it with :func:`parse_yaml`; raise InputError on any problem."""
    shown = display if display is not None else str(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise InputError([Problem(shown, message=f"cannot read: {exc.strerror or exc}")]) from None
    if len(raw) > MAX_BYTES:
        size = path.stat().st_size
        raise InputError(
            [Problem(shown, message=f"file is too large ({size} bytes); the limit is 1 MiB")]
        )
    return parse_yaml(raw, shown)


def parse_yaml(raw: bytes, file: str) -> Document:
    """Load one YAML document from `raw`; `file` is the name used in problems."""
    if len(raw) > MAX_BYTES:
        raise InputError(
            [Problem(file, message=f"file is too large ({len(raw)} bytes); the limit is 1 MiB")]
        )
    text = _decode(raw, file)
    if not text.strip():
        raise InputError([Problem(file, 1, 1, "", "file is empty; expected a YAML mapping")])
    tabs = _tab_indents(text)
    try:
        _check_events(text, file)
        root = yaml.compose(text, Loader=_Loader)
    except InputError:
        raise
    except yaml.YAMLError as exc:
        problem = _yaml_problem(exc, text, file)
        first_tab = next((t for t in tabs if t[0] <= problem.line), None)
        if first_tab is not None:
            problem = _tab_problem(file, first_tab)
        elif _tab_at(exc, text):
            problem = _tab_problem(file, (problem.line, problem.col))
        raise InputError([problem]) from None
    if root is None:
        raise InputError([Problem(file, 1, 1, "", "file holds no YAML data; expected a mapping")])
    if not isinstance(root, MappingNode):
        line, col = _pos(root)
        raise InputError(
            [Problem(file, line, col, "", f"the top level must be a mapping (key: value), "
                     f"found {_node_kind(root)}")]
        )
    tabs = _outside_scalars(tabs, root)
    if tabs:
        raise InputError([_tab_problem(file, t) for t in tabs])
    doc = Document(file, {})
    problems: list[Problem] = []
    data = _convert(root, (), doc, problems)
    if problems:
        raise InputError(problems)
    return Document(file, data, doc.values, doc.keys)


# --- reading ---------------------------------------------------------------------------------


def _decode(raw: bytes, file: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = exc.start
        line = raw.count(b"\n", 0, start) + 1
        col = start - (raw.rfind(b"\n", 0, start) + 1) + 1
        bad = raw[start : start + 1].hex()
        message = f"not valid UTF-8 (byte 0x{bad}); save the file as UTF-8"
        raise InputError([Problem(file, line, col, "", message)]) from None


def _check_events(text: str, file: str) -> None:
    """Refuse anchors, aliases, custom depth and extra documents before composing.

    Walking the event stream is cheap and never expands anything, so an alias bomb
    is refused at its first anchor.
    """
    depth = 0
    documents = 0
    for event in yaml.parse(text, Loader=_Loader):
        anchor = getattr(event, "anchor", None)
        if isinstance(event, yaml.AliasEvent) or anchor:
            line, col = _mark(event.start_mark)
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise InputError(
                [Problem(file, line, col, "", f"YAML anchors and aliases are not supported "
                         f"(found {sign}{anchor}); write the value out in full")]
            )
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                line, col = _mark(event.start_mark)
                raise InputError(
                    [Problem(file, line, col, "", "more than one YAML document (---); "
                             "keep one document per file")]
                )
        elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                line, col = _mark(event.start_mark)
                raise InputError(
                    [Problem(file, line, col, "", f"nested deeper than {MAX_DEPTH} levels")]
                )
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _yaml_problem(exc: yaml.YAMLError, text: str, file: str) -> Problem:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line, col = _mark(mark) if mark else (0, 0)
        message = f"invalid YAML: {exc.problem or exc.context or 'cannot parse'}"
        if exc.context and exc.problem:
            message += f" ({exc.context}"
            if exc.context_mark is not None:
                message += f" at line {exc.context_mark.line + 1}"
            message += ")"
        return Problem(file, line, col, "", message)
    if isinstance(exc, yaml.reader.ReaderError):
        pos = max(0, min(exc.position, len(text)))
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        return Problem(
            file, line, col, "",
            f"invalid YAML: character #x{exc.character:04x} is not allowed in YAML text"
            if isinstance(exc.character, int)
            else f"invalid YAML: {exc.reason}",
        )
    return Problem(file, 0, 0, "", f"invalid YAML: {exc}")


def _mark(mark: Any) -> Position:
    return mark.line + 1, mark.column + 1


def _pos(node: Node) -> Position:
    return _mark(node.start_mark)


# --- tabs ------------------------------------------------------------------------------------


def _tab_indents(text: str) -> list[Position]:
    """(line, col) of each tab in a line's leading whitespace (blank and comment lines aside)."""
    out: list[Position] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.lstrip(" \t")
        indent = line[: len(line) - len(stripped)]
        if "\t" in indent and stripped and not stripped.startswith("#"):
            out.append((number, indent.index("\t") + 1))
    return out


def _outside_scalars(tabs: list[Position], root: Node) -> list[Position]:
    """Drop tabs that sit inside a multi-line scalar: there they are text, not indentation."""
    if not tabs:
        return tabs
    spans: list[tuple[int, int]] = []
    for node in _walk(root):
        if isinstance(node, ScalarNode) and node.end_mark.line > node.start_mark.line:
            spans.append((node.start_mark.line + 1, node.end_mark.line + 1))
    return [t for t in tabs if not any(a < t[0] <= b for a, b in spans)]


def _walk(root: Node) -> Iterator[Node]:
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, MappingNode):
            for k, v in node.value:
                stack.extend((k, v))
        elif isinstance(node, SequenceNode):
            stack.extend(node.value)


def _tab_at(exc: yaml.YAMLError, text: str) -> bool:
    """Whether the parser stopped at a tab (e.g. `-<tab>item`)."""
    mark = getattr(exc, "problem_mark", None)
    index = getattr(mark, "index", -1)
    return 0 <= index < len(text) and text[index] == "\t"


def _tab_problem(file: str, pos: Position) -> Problem:
    return Problem(
        file, pos[0], pos[1], "", "tab character used for indentation; YAML indents with spaces"
    )


# --- conversion to plain data ---------------------------------------------------------------


def _node_kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return f"a scalar ({node.value!r})" if node.value != "" else "nothing"


_CONSTRUCTOR = SafeConstructor()


def _scalar(node: ScalarNode, path: FieldPath, doc: Document, problems: list[Problem]) -> Any:
    if node.tag in _TEXT_TAGS:
        return node.value
    if node.tag not in _PLAIN_TAGS:
        line, col = _pos(node)
        problems.append(
            Problem(doc.file, line, col, format_path(path), f"YAML tag {node.tag} is not supported")
        )
        return None
    try:
        return _CONSTRUCTOR.yaml_constructors[node.tag](_CONSTRUCTOR, node)
    except (yaml.YAMLError, ValueError, TypeError, KeyError):
        line, col = _pos(node)
        problems.append(
            Problem(doc.file, line, col, format_path(path),
                    f"cannot read value {node.value!r} as {node.tag.removeprefix(_TAG)}")
        )
        return None


def _convert(node: Node, path: FieldPath, doc: Document, problems: list[Problem]) -> Any:
    doc.values[path] = _pos(node)
    if isinstance(node, ScalarNode):
        return _scalar(node, path, doc, problems)
    if isinstance(node, SequenceNode):
        if node.tag != f"{_TAG}seq":
            problems.append(doc.problem(path, f"YAML tag {node.tag} is not supported"))
        return [_convert(item, (*path, i), doc, problems) for i, item in enumerate(node.value)]
    if node.tag != f"{_TAG}map":
        problems.append(doc.problem(path, f"YAML tag {node.tag} is not supported"))
    out: dict[str, Any] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode):
            line, col = _pos(key_node)
            problems.append(
                Problem(doc.file, line, col, format_path(path),
                        f"a key must be a plain name, found {_node_kind(key_node)}")
            )
            continue
        if key_node.tag == f"{_TAG}merge":
            line, col = _pos(key_node)
            problems.append(
                Problem(doc.file, line, col, format_path(path),
                        "merge keys (<<) are not supported; write the fields out")
            )
            continue
        key = key_node.value
        child = (*path, key)
        if key in out:
            line, col = _pos(key_node)
            first = doc.keys[child][0]
            problems.append(
                Problem(doc.file, line, col, format_path(child),
                        f'duplicate key "{key}" (first defined at line {first})')
            )
            continue
        doc.keys[child] = _pos(key_node)
        out[key] = _convert(value_node, child, doc, problems)
    return out


def shown_path(path: Path, display_root: Path | None = None) -> str:
    """How a file is named in problems: relative to `display_root` (default: the cwd)
    when it lies below it, else as given. Always with '/' separators."""
    base = os.path.abspath(display_root if display_root is not None else os.getcwd())
    full = os.path.abspath(path)
    rel = os.path.relpath(full, base)
    if rel == os.curdir:
        return "."
    if rel.startswith(os.pardir):
        return Path(path).as_posix()
    return Path(rel).as_posix()
