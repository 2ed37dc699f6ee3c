"""A compiled yes/no check for the Kubernetes schemas, with jsonschema's verdicts.

`jsonschema.Draft202012Validator.is_valid` walks the schema dict on every call,
dispatching each keyword through its generic machinery: most of a render's time.
The bundled Kubernetes schemas (after renderer.checks inlines their `$ref`s) use only
a handful of keywords, so `compile_schema` turns one into a tree of small closures
that answer the same question, several times faster.

The verdict is the only thing it gives: when an object is not valid, renderer.checks
asks jsonschema for the errors, so every Problem message stays jsonschema's own. A
schema using anything this module does not implement exactly (`$ref`, `pattern`,
`minimum`, an enum of non-strings, ...) is not compiled (`compile_schema` returns None)
and jsonschema does all the work. Semantics follow jsonschema's Draft 2020-12 keyword
functions: a keyword applies only to instances of its type; `format` asserts nothing
(no format checker); unknown keywords are ignored.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Mapping, Sized
from typing import Any

from jsonschema import Draft202012Validator

Check = Callable[[Any], bool]

# Keywords that never assert anything (no format checker, annotations, extensions).
_IGNORED = frozenset({"format", "$schema", "$id", "$comment", "title", "description",
                      "default", "examples", "deprecated", "readOnly", "writeOnly"})
_OBJECT_KEYWORDS = ("properties", "additionalProperties", "required", "propertyNames",
                    "minProperties", "maxProperties")
_HANDLED = frozenset({*_OBJECT_KEYWORDS, "type", "items", "enum", "oneOf", "anyOf", "allOf",
                      "pattern", "minLength", "maxLength", "minItems", "maxItems", "minimum",
                      "maximum", "uniqueItems", "$ref"})
# Keywords jsonschema knows (and so may assert something); any other key it ignores.
_KNOWN = frozenset(Draft202012Validator.VALIDATORS)


class Unsupported(Exception):
    """The schema uses something this compiler does not reproduce exactly."""


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Number)


_TYPES: dict[str, Check] = {
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": _is_integer,
    "number": _is_number,
}


def compile_schema(schema: Any) -> Check | None:
    """A function telling whether an instance is valid under `schema`, or None when the
    schema uses a keyword (or a form of one) this module does not implement."""
    try:
        defs = schema.get("$defs", {}) if isinstance(schema, Mapping) else {}
        if not isinstance(defs, Mapping) or _nested_id(schema, root=True):
            return None  # an `$id` below the root would move the base of `$ref`s
        return _compile(schema, _Refs(defs))
    except Unsupported:
        return None


def _always(_: Any) -> bool:
    return True


def _never(_: Any) -> bool:
    return False


def _nested_id(node: Any, root: bool = False) -> bool:
    if isinstance(node, Mapping):
        return (not root and "$id" in node) or any(_nested_id(v) for v in node.values())
    if isinstance(node, list):
        return any(_nested_id(v) for v in node)
    return False


class _Refs:
    """The root schema's `$defs`, for local `$ref`s: each compiled once; a recursive one
    is not compiled (jsonschema handles it)."""

    def __init__(self, defs: Mapping[str, Any]) -> None:
        self.defs = defs
        self.done: dict[str, Check] = {}
        self.active: set[str] = set()

    def resolve(self, ref: Any) -> Check:
        if not isinstance(ref, str) or not ref.startswith(_LOCAL_REF):
            raise Unsupported(f"$ref {ref!r}")
        name = ref[len(_LOCAL_REF):]
        if name in self.done:
            return self.done[name]
        if name in self.active or name not in self.defs or any(c in name for c in "/~%"):
            raise Unsupported(f"$ref {ref!r}")
        self.active.add(name)
        check = self.done[name] = _compile(self.defs[name], self)
        self.active.discard(name)
        return check


_LOCAL_REF = "#/$defs/"


def _compile(schema: Any, refs: _Refs) -> Check:
    if schema is True:
        return _always
    if schema is False:
        return _never
    if not isinstance(schema, Mapping):
        raise Unsupported(f"schema {schema!r}")
    checks: list[Check] = []
    for key in schema:
        if key in _KNOWN and key not in _HANDLED and key not in _IGNORED:
            raise Unsupported(key)  # asserts something this module does not implement
    if "$ref" in schema:
        checks.append(refs.resolve(schema["$ref"]))
    if "type" in schema:
        checks.append(_type(schema["type"]))
    if "enum" in schema:
        checks.append(_enum(schema["enum"]))
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            checks.append(_combinator(key, schema[key], refs))
    obj = _object(schema, refs)
    if obj is not None:
        checks.append(obj)
    if "items" in schema:
        checks.append(_items(schema["items"], refs))
    checks += _bounds(schema)
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda v: first(v) and second(v)
    every = tuple(checks)
    return lambda v: all(check(v) for check in every)


def _type(types: Any) -> Check:
    names = [types] if isinstance(types, str) else types
    if not isinstance(names, list) or not names or not all(n in _TYPES for n in names):
        raise Unsupported(f"type {types!r}")
    if names == ["string", "null"] or names == ["null", "string"]:
        return lambda v: v is None or isinstance(v, str)
    if len(names) == 1:
        return _TYPES[names[0]]
    tests = tuple(_TYPES[n] for n in names)
    return lambda v: any(test(v) for test in tests)


def _enum(values: Any) -> Check:
    # jsonschema's `equal(each, instance)` is `each == instance` whenever `each` is a str.
    if not isinstance(values, list) or not all(type(v) is str for v in values):
        raise Unsupported("enum of non-strings")
    allowed = frozenset(values)
    return lambda v: isinstance(v, str) and v in allowed


def _combinator(key: str, subschemas: Any, refs: _Refs) -> Check:
    if not isinstance(subschemas, list) or not subschemas:
        raise Unsupported(key)
    subs = tuple(_compile(s, refs) for s in subschemas)
    if key == "allOf":
        return lambda v: all(sub(v) for sub in subs)
    if key == "anyOf":
        return lambda v: any(sub(v) for sub in subs)
    return lambda v: sum(1 for sub in subs if sub(v)) == 1


def _object(schema: Mapping[str, Any], refs: _Refs) -> Check | None:
    """`properties`, `additionalProperties`, `required`, `propertyNames` and
    `min/maxProperties`: they apply to dicts only."""
    if not any(k in schema for k in _OBJECT_KEYWORDS):
        return None
    props_schema = schema.get("properties", {})
    if not isinstance(props_schema, Mapping):
        raise Unsupported("properties")
    props = {name: _compile(sub, refs) for name, sub in props_schema.items()}
    required = schema.get("required", [])
    if not isinstance(required, list):
        raise Unsupported("required")
    required = tuple(required)
    extra: Check | None = None
    closed = False
    if "additionalProperties" in schema:
        ap = schema["additionalProperties"]
        if ap is False:
            closed = True
        elif isinstance(ap, Mapping):
            extra = _compile(ap, refs)
        elif ap is not True:
            raise Unsupported("additionalProperties")

    names = _compile(schema["propertyNames"], refs) if "propertyNames" in schema else None
    least, most = schema.get("minProperties", 0), schema.get("maxProperties")
    if type(least) is not int or (most is not None and type(most) is not int):
        raise Unsupported("minProperties / maxProperties")

    def check(value: Any) -> bool:
        if not isinstance(value, dict):
            return True
        if len(value) < least or (most is not None and len(value) > most):
            return False
        if names is not None and not all(names(key) for key in value):
            return False
        for name in required:
            if name not in value:
                return False
        for key, item in value.items():
            sub = props.get(key) if isinstance(key, str) else None
            if sub is not None:
                if not sub(item):
                    return False
            elif closed or (extra is not None and not extra(item)):
                return False
        return True

    return check


def _items(items: Any, refs: _Refs) -> Check:
    sub = _compile(items, refs)
    return lambda v: not isinstance(v, list) or all(sub(item) for item in v)


def _bounds(schema: Mapping[str, Any]) -> list[Check]:
    """pattern, min/maxLength, min/maxItems, minimum/maximum and uniqueItems."""
    out: list[Check] = []
    if "pattern" in schema:
        if not isinstance(schema["pattern"], str):
            raise Unsupported("pattern")
        search = re.compile(schema["pattern"]).search
        out.append(lambda v: not isinstance(v, str) or search(v) is not None)
    for key, kind, cmp in (("minLength", str, int.__ge__), ("maxLength", str, int.__le__),
                           ("minItems", list, int.__ge__), ("maxItems", list, int.__le__)):
        if key in schema:
            out.append(_size(key, schema[key], kind, cmp))
    for key in ("minimum", "maximum"):
        if key in schema:
            limit = schema[key]
            if not _is_number(limit):
                raise Unsupported(key)
            out.append(_limit(key, limit))
    if schema.get("uniqueItems") is True:
        uniq = _uniq()
        out.append(lambda v: not isinstance(v, list) or uniq(v))
    elif "uniqueItems" in schema and schema["uniqueItems"] is not False:
        raise Unsupported("uniqueItems")
    return out


def _size(key: str, limit: Any, kind: type[Sized], cmp: Callable[[int, int], bool]) -> Check:
    if type(limit) is not int:
        raise Unsupported(key)
    return lambda v: not isinstance(v, kind) or cmp(len(v), limit)


def _limit(key: str, limit: Any) -> Check:
    """minimum or maximum: `not (v < limit)`, as jsonschema words it, so NaN passes both."""
    if key == "minimum":
        return lambda v: not _is_number(v) or not v < limit
    return lambda v: not _is_number(v) or not v > limit


def _uniq() -> Callable[[list[Any]], bool]:
    """jsonschema's own uniqueness test (it tells 1 from True), when it can be imported."""
    try:
        from jsonschema._utils import uniq
    except ImportError:
        raise Unsupported("uniqueItems") from None
    return uniq
