"""Parsing the templates' output back into objects, fast, with PyYAML's exact results.

The templates (renderer.render) write block YAML whose dynamic values all come from
`tojson`. `parse` reads that shape line by line: block mappings and sequences indented
with spaces, keys and plain values that are simple words, and JSON values (a JSON
document is valid YAML with the same meaning, for the strings, integers, booleans, nulls
and collections tojson writes). Anything outside that shape (a tab, an anchor, a comment,
a float, a plain scalar YAML 1.1 reads as something else, a surrogate escape, ...) goes
to PyYAML instead: `yaml.compose` with the C loader plus a small constructor, or PyYAML's
full safe loader for what that constructor does not handle. Either way the result is
what `yaml.safe_load` gives.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import yaml

_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TAG = "tag:yaml.org,2002:"
_RESOLVER = yaml.resolver.Resolver()

# One line of template output: indent, an optional `- `, then `key:`, `key: value` or value.
_LINE = re.compile(r"( *)(- )?(?:([A-Za-z0-9_][-A-Za-z0-9_./]*):(?: (.+))?|(.+))")
_WORD = re.compile(r"[A-Za-z0-9/][-A-Za-z0-9_./]*")
_FLOW_WORDS = re.compile(r"\[([A-Za-z0-9/][-A-Za-z0-9_./]*(?:, [A-Za-z0-9/][-A-Za-z0-9_./]*)*)?\]")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


class _Unsupported(Exception):
    """Outside the shape the fast parser reads; PyYAML decides."""


def parse(text: str) -> Any:
    """Parse one YAML document safely (a fast path for templates' output)."""
    try:
        return _parse_lines(text)
    except _Unsupported:
        pass
    try:
        node = yaml.compose(text, Loader=_Loader)
        if node is None:  # no document at all (empty, or only comments)
            raise _Unsupported
        return _construct(node)
    except _Unsupported:
        return yaml.load(text, Loader=_Loader)


# --- the line parser ------------------------------------------------------------------------

# A line: (column of its content, after `- ` for a sequence item; dash; key; value).
_Line = tuple[int, bool, "str | None", "str | None"]


@functools.lru_cache(maxsize=1 << 15)
def _line(raw: str) -> _Line:
    m = _LINE.fullmatch(raw)
    if m is None:
        raise _Unsupported
    indent, dash, key, value, scalar = m.groups()
    col = len(indent) + (2 if dash else 0)
    if key is None:
        if not dash:
            raise _Unsupported  # a bare scalar at block level
        return (col, True, None, scalar)
    return (col, dash is not None, _key(key), value)


def _odd(text: str) -> bool:
    """Characters PyYAML refuses or reads its own way: non-ASCII and control characters,
    surrogate escapes (PyYAML keeps the halves apart), document markers."""
    return (not text.isascii() or _CONTROL.search(text) is not None
            or ("\\u" in text and _SURROGATE.search(text) is not None)
            or text.startswith(("---", "...")) or "\n---" in text or "\n..." in text)


def _parse_lines(text: str) -> Any:
    if _odd(text):
        raise _Unsupported
    lines = [_line(raw) for raw in text.split("\n") if raw.strip(" ")]
    if not lines or lines[0][1] or lines[0][0] != 0:
        raise _Unsupported
    value, end = _mapping(lines, 0, 0)
    if end != len(lines):
        raise _Unsupported
    return value


def _mapping(lines: list[_Line], i: int, col: int) -> tuple[dict[str, Any], int]:
    """The block mapping whose keys are at `col`, from line i (which may carry a dash).

    Stops at the first line that belongs to an enclosing block; the caller checks it.
    """
    out: dict[str, Any] = {}
    first = True
    n = len(lines)
    while i < n:
        lcol, dash, key, value = lines[i]
        if lcol < col or (dash and not first):
            break
        if lcol > col or key is None or key in out:
            raise _Unsupported
        first = False
        i += 1
        if value is not None:
            out[key] = _scalar(value)
            continue
        if i < n and lines[i][1] and lines[i][0] - 2 >= col:
            if lines[i][0] - 2 == col:
                raise _Unsupported  # a sequence at its key's own indent
            out[key], i = _sequence(lines, i, lines[i][0], col)
        elif i < n and not lines[i][1] and lines[i][0] > col:
            out[key], i = _mapping(lines, i, lines[i][0])
        else:
            out[key] = None
    return out, i


def _sequence(lines: list[_Line], i: int, col: int, parent: int) -> tuple[list[Any], int]:
    """The block sequence whose items' content starts at `col` (the dash at col - 2), the
    value of a key at column `parent`."""
    out: list[Any] = []
    n = len(lines)
    while i < n:
        lcol, dash, key, value = lines[i]
        if not (dash and lcol == col):
            start = lcol - 2 if dash else lcol
            if start > parent or (dash and start == parent):
                raise _Unsupported  # not where an enclosing block continues
            break
        if key is None and value is not None:
            out.append(_scalar(value))
            i += 1
        else:
            item, i = _mapping(lines, i, col)
            out.append(item)
    return out, i


@functools.lru_cache(maxsize=4096)
def _key(text: str) -> str:
    if _RESOLVER.resolve(yaml.ScalarNode, text, (True, False)) != _TAG + "str":
        raise _Unsupported  # e.g. `on:` or `1:`
    return text


def _scalar(text: str) -> Any:
    if text[0] in "{[":
        return _collection(text)
    return _atom(text)


@functools.lru_cache(maxsize=1 << 15)
def _atom(text: str) -> Any:
    """A string, integer, boolean or null (immutable, so cached)."""
    if text[0] == '"':
        if text[-1] == '"' and len(text) > 1 and '"' not in text[1:-1] and "\\" not in text:
            return text[1:-1]
        try:
            value = json.loads(text)
        except ValueError:
            raise _Unsupported from None
        if type(value) is not str:
            raise _Unsupported
        return value
    if not _WORD.fullmatch(text):
        raise _Unsupported
    return _plain(text)


def _collection(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        m = _FLOW_WORDS.fullmatch(text)
        if m is None:
            raise _Unsupported from None
        return [_plain(w) for w in m[1].split(", ")] if m[1] else []
    _check_json(value)
    return value


@functools.lru_cache(maxsize=4096)
def _plain(text: str) -> Any:
    """A plain scalar as YAML 1.1 resolves it, for the tags `_construct` handles."""
    tag = _RESOLVER.resolve(yaml.ScalarNode, text, (True, False))
    return _value(tag, text)


def _check_json(value: Any) -> None:
    """JSON values that YAML reads differently (floats: `1e+20` is a string in YAML 1.1)."""
    kind = type(value)
    if kind is dict:
        for item in value.values():
            _check_json(item)
    elif kind is list:
        for item in value:
            _check_json(item)
    elif kind not in (str, int, bool) and value is not None:
        raise _Unsupported


# --- the PyYAML path ------------------------------------------------------------------------


def _value(tag: str, value: str) -> Any:
    if tag == _TAG + "str":
        return value
    if tag == _TAG + "int" and value.isdigit() and (value == "0" or value[0] != "0"):
        return int(value)
    if tag == _TAG + "bool" and value in ("true", "false"):
        return value == "true"
    if tag == _TAG + "null" and value in ("null", "~", ""):
        return None
    raise _Unsupported


def _construct(node: yaml.Node) -> Any:
    """PyYAML's safe construction for the plain shapes templates produce, without its
    generic machinery: strings, ints, booleans, nulls, mappings and sequences."""
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = _construct(key_node)
            if key_node.tag == _TAG + "merge" or not isinstance(key, str) or key in out:
                raise _Unsupported
            out[key] = _construct(value_node)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item) for item in node.value]
    return _value(node.tag, node.value)
