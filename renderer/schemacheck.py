"""Check a loaded YAML document against a bundled JSON Schema, one Problem per error.

The schemas live in `renderer/schemas/`; their validators are compiled once per
process. Each jsonschema error becomes a line that says where (the offending
value, or for a missing field its parent mapping), which field, and what is allowed.
A field the schema marks `deprecated` is accepted (and left out of what `allowed`
suggests); `deprecated_fields` lists those present, for a warning each.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Iterator
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, ValidationError

from .fastschema import Check, compile_schema
from .problems import Problem
from .yamlsafe import Document, FieldPath, format_path

_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "nothing",
}


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """The bundled schema `name` (e.g. "krt.schema.json") as a dict."""
    text = resources.files("renderer.schemas").joinpath(name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.cache
def validator(name: str) -> Draft202012Validator:
    """A compiled, cached validator for the bundled schema `name`.

    The bundled schemas are checked against the Draft 2020-12 metaschema by the tests
    (tests/unit/test_schemacheck.py), not on every run: that check costs more than
    validating a kai.yaml.
    """
    return Draft202012Validator(load_schema(name))


@functools.cache
def fast_check(name: str) -> Check | None:
    """The compiled yes/no check of a bundled schema (renderer.fastschema), if it has one."""
    return compile_schema(load_schema(name))


def schema_problems(doc: Document, schema: str) -> list[Problem]:
    """Every way `doc.data` breaks the bundled schema `schema`, as Problems."""
    check = fast_check(schema)
    if check is not None and check(doc.data):
        return []  # valid: jsonschema would find nothing
    out: list[Problem] = []
    for error in validator(schema).iter_errors(doc.data):
        out.extend(_problems(error, doc))
    return out


def deprecated_fields(data: Any, schema: str) -> list[tuple[FieldPath, str]]:
    """The fields of `data` that the bundled schema `schema` marks `deprecated` (accepted,
    but ignored), each with the schema's `deprecationMessage`, in document order."""
    out: list[tuple[FieldPath, str]] = []
    _deprecated(data, load_schema(schema), (), out)
    return out


def _deprecated(data: Any, schema: Any, path: FieldPath,
                out: list[tuple[FieldPath, str]]) -> None:
    if not isinstance(schema, dict):
        return
    if isinstance(data, dict):
        props = schema.get("properties", {})
        for key, value in data.items():
            sub = props.get(key)
            if not isinstance(sub, dict):
                continue
            if sub.get("deprecated"):
                out.append(((*path, key), str(sub.get("deprecationMessage", ""))))
            _deprecated(value, sub, (*path, key), out)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            _deprecated(item, schema.get("items"), (*path, i), out)


def describe(value: Any) -> str:
    """How a value is named in messages: `a number (1.0)`, `a list`, ..."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({json.dumps(value)})"
    if isinstance(value, list):
        return "a list"
    return "a mapping"


def _problems(error: ValidationError, doc: Document) -> Iterator[Problem]:
    path: FieldPath = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    kind = error.validator
    # iter_errors sets both on every error; only a hand-made ValidationError lacks them
    value: Any = error.validator_value
    inst: Any = error.instance
    if "propertyNames" in error.absolute_schema_path and isinstance(inst, str):
        yield doc.problem((*path, inst), _message(error, schema), key=True)
    elif kind == "required" and isinstance(inst, dict):
        for name in value:
            if name not in inst and repr(name) in error.message:
                sub = schema.get("properties", {}).get(name, {})
                hint = _example(sub, name) or _sentence(sub.get("description", ""))
                message = "required field is missing" + (f" ({hint})" if hint else "")
                line, col = doc.position(path)
                yield Problem(doc.file, line, col, format_path((*path, name)), message)
    elif kind == "additionalProperties" and value is False and isinstance(inst, dict):
        allowed = [name for name, sub in schema.get("properties", {}).items()
                   if not (isinstance(sub, dict) and sub.get("deprecated"))]
        known = set(schema.get("properties", {}))
        for key in inst:
            if key not in known:
                yield doc.problem((*path, key), _unknown(key, allowed), key=True)
    elif kind == "uniqueItems" and isinstance(inst, list):
        seen: list[Any] = []
        for i, item in enumerate(inst):
            if item in seen:
                yield doc.problem((*path, i), f"{json.dumps(item)} is listed twice")
            else:
                seen.append(item)
    else:
        yield doc.problem(path, _message(error, schema))


def _message(error: ValidationError, schema: dict[str, Any]) -> str:
    kind = error.validator
    value: Any = error.validator_value  # set on every error iter_errors yields, as above
    inst: Any = error.instance
    if kind == "type":
        types = [value] if isinstance(value, str) else list(value)
        expected = " or ".join(_TYPE_WORDS.get(t, t) for t in types)
        message = f"expected {expected}, got {describe(inst)}"
        if "string" in types and isinstance(inst, bool):
            message += "; put it in quotes if it is meant as text"
        elif "string" in types and isinstance(inst, (int, float)):
            message += f'; put it in quotes if it is meant as text: "{inst}"'
        return message
    if kind == "pattern":
        message = f"{json.dumps(inst)} does not match the pattern {value}"
        hint = schema.get("patternErrorMessage")
        if hint:
            message += f": {hint}"
        example = _first_example(schema)
        if example is not None:
            message += f" (e.g. {example})"
        return message
    if kind == "enum":
        options = ", ".join(str(v) for v in value)
        message = f"must be one of: {options}; got {json.dumps(inst)}"
        if isinstance(inst, str):
            close = difflib.get_close_matches(inst, [str(v) for v in value], n=1)
            if close:
                message += f' (did you mean "{close[0]}"?)'
        hint = schema.get("errorMessage")
        return f"{message}: {hint}" if hint else message
    if kind == "const":
        return f"must be {json.dumps(value)}"
    if kind == "minItems":
        return "must have at least one item" if value == 1 else f"must have at least {value} items"
    if kind == "minLength":
        return "must not be empty" if value == 1 else f"must be at least {value} characters long"
    if kind == "maxLength":
        return f"is {len(inst)} characters long; at most {value} are allowed"
    if kind == "minimum":
        return f"must be at least {value}, got {inst}"
    if kind == "maximum":
        return f"must be at most {value}, got {inst}"
    if kind in ("minProperties", "maxProperties"):
        props = list(schema.get("properties", {}))
        if schema.get("minProperties") == 1 and schema.get("maxProperties") == 1 and props:
            return f"set exactly one of: {', '.join(props)}"
        return error.message
    return error.message


def _unknown(key: str, allowed: list[str]) -> str:
    message = f'unknown field "{key}"'
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        message += f' (did you mean "{close[0]}"?)'
    if allowed:
        message += f"; allowed: {', '.join(allowed)}"
    return message


def _first_example(schema: dict[str, Any]) -> Any:
    examples = schema.get("examples")
    if not isinstance(examples, list) or not examples:
        return None
    first = examples[0]
    if isinstance(first, list) and all(isinstance(x, str) for x in first):
        return f"[{', '.join(first)}]"
    return first if isinstance(first, (str, int, float)) else None


def _example(schema: dict[str, Any], name: str) -> str:
    example = _first_example(schema)
    return f"e.g. {name}: {example}" if example is not None else ""


def _sentence(text: str) -> str:
    return text.split(". ")[0].rstrip(".")

