"""renderer.fastschema: the compiled check gives jsonschema's verdict on every object."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import yaml

from renderer import checks
from renderer.atomic import read_tree
from renderer.fastschema import compile_schema
from renderer.project import DEFAULT_KUBERNETES_VERSION
from renderer.render import parse
from tests.conftest import EXAMPLES

K8S = DEFAULT_KUBERNETES_VERSION
VALUES: list[Any] = [None, True, False, 0, 1, -3, 1.0, 2.5, "", "x", "1", [], {}, ["a"],
                     {"a": 1}, {"unknownField": 1}, 2**40, float("nan"), "TCP", "Always"]


def rendered_objects() -> list[dict[str, Any]]:
    tree = read_tree(EXAMPLES / "gitops" / "rendered")
    objs = [parse(b.decode()) for rel, b in sorted(tree.items())
            if not rel.endswith("kustomization.yaml")]
    return [o for o in objs if checks.validator_for(K8S, o["kind"], o["apiVersion"])]


def paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from paths(value, (*prefix, i))


def mutate(obj: dict[str, Any], rng: random.Random, where: list[tuple[Any, ...]]) -> None:
    """Replace, delete or add one value somewhere: wrong types, unknown fields, ..."""
    path = rng.choice(where[1:])
    parent: Any = obj
    for key in path[:-1]:
        parent = parent[key]
    op = rng.random()
    if op < 0.5:
        parent[path[-1]] = rng.choice(VALUES)
    elif op < 0.7 and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        target = parent[path[-1]]
        if isinstance(target, dict):
            target[rng.choice(["foo", "name", "value", "port", 1, "protocol"])] = rng.choice(VALUES)
        elif isinstance(target, list):
            target.append(copy.deepcopy(target[0]) if target and rng.random() < 0.5
                          else rng.choice(VALUES))
        else:
            parent[path[-1]] = rng.choice([str(target), 1, "1"])


def test_same_verdict_as_jsonschema_on_rendered_and_mutated_objects() -> None:
    rng = random.Random(4)
    objects = rendered_objects()
    assert {o["kind"] for o in objects} >= {"Deployment", "Service", "ConfigMap", "Ingress",
                                            "Namespace", "NetworkPolicy"}
    invalid = 0
    for obj in objects:
        validator = checks.validator_for(K8S, obj["kind"], obj["apiVersion"])
        fast = checks.fast_check_for(K8S, obj["kind"], obj["apiVersion"])
        assert validator is not None and fast is not None
        assert fast(obj) and validator.is_valid(obj)
        where = list(paths(obj))
        for _ in range(150):
            case = copy.deepcopy(obj)
            mutate(case, rng, where)
            verdict = validator.is_valid(case)
            assert fast(case) == verdict, list(validator.iter_errors(case))[:3]
            invalid += not verdict
    assert invalid > 500  # the mutations do reach the schemas' assertions


@pytest.mark.parametrize("schema, instances", [
    ({"type": "integer"}, [1, 1.0, 1.5, True, "1", None]),
    ({"type": ["number", "null"]}, [1, 2.5, None, False, "x"]),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
      "additionalProperties": False}, [{"a": "x"}, {"a": 1}, {}, {"a": "x", "b": 1}, [], "s"]),
    ({"additionalProperties": {"type": "string"}}, [{"a": "x", "b": 2}, {1: "x"}, {}, 3]),
    ({"items": {"enum": ["A", "B"]}}, [["A"], ["C"], [1], "A", []]),
    ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, ["x", 1, 1.0, None]),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, [1, 2.5, "x"]),
    ({"anyOf": [{"required": ["a"]}, {"required": ["b"]}], "allOf": [{"type": "object"}]},
     [{"a": 1}, {"c": 1}, {}, []]),
    (True, [1, None]),
    ({"properties": {"a": False}}, [{"a": 1}, {"b": 1}]),
    ({"pattern": "^[a-z]+$", "minLength": 2, "maxLength": 3}, ["ab", "a", "abcd", "A1", 5, None]),
    ({"minItems": 1, "maxItems": 2, "uniqueItems": True},
     [[], [1], [1, 1], [1, True], [1, 2, 3], ["a", "a"], [{"a": 1}, {"a": 1}], "x"]),
    ({"minimum": 1, "maximum": 3}, [0, 1, 3, 4, 2.5, float("nan"), True, "2"]),
    ({"type": "string", "patternErrorMessage": "ignored", "examples": [1]}, ["x", 1]),
    ({"$defs": {"s": {"type": "string", "minLength": 2}},
      "properties": {"a": {"$ref": "#/$defs/s"}}, "propertyNames": {"$ref": "#/$defs/s"},
      "minProperties": 1, "maxProperties": 2},
     [{"a": "xy"}, {"a": "x"}, {}, {"ab": 1, "cd": 2, "ef": 3}, {"b": 1}, {1: 1}, "x"]),
])
def test_keywords_match_jsonschema(schema: Any, instances: list[Any]) -> None:
    fast = compile_schema(schema)
    assert fast is not None
    validator = jsonschema.Draft202012Validator(schema)
    for instance in instances:
        assert fast(instance) == validator.is_valid(instance), instance


@pytest.mark.parametrize("schema", [
    {"$ref": "#/$defs/x"}, {"exclusiveMinimum": 1}, {"enum": [1, "a"]},
    {"patternProperties": {"^a": {}}}, {"type": "string", "maxLength": 3.5},
    {"properties": {"a": {"not": {"type": "string"}}}}, {"uniqueItems": 1},
    {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},  # recursive
    {"$defs": {"a": {"$id": "other", "type": "string"}}, "$ref": "#/$defs/a"},
    {"$ref": "other.json#/$defs/a"}, {"$defs": {"a b": {}}, "$ref": "#/$defs/a%20b"},
])
def test_what_it_does_not_implement_is_left_to_jsonschema(schema: dict[str, Any]) -> None:
    assert compile_schema(schema) is None


def test_check_object_keeps_jsonschema_messages() -> None:
    obj = rendered_objects()[0]
    obj["metadata"]["unknownField"] = 1
    problems = checks.check_object("f.yaml", obj, K8S)
    assert [p.path for p in problems] == ["metadata"]
    assert "'unknownField' was unexpected" in problems[0].message


def test_krt_schema_same_verdict_as_jsonschema() -> None:
    from renderer.schemacheck import fast_check, validator

    fast, slow = fast_check("krt.schema.json"), validator("krt.schema.json")
    assert fast is not None
    rng = random.Random(5)
    invalid = 0
    for manifest in sorted(EXAMPLES.glob("*/krt.yml")):
        doc = yaml.safe_load(manifest.read_text())
        doc["config"] = {"variables": ["API_KEY"], "files": ["CERT"]}
        doc["nodes"][0]["replicas"] = 2
        assert fast(doc) and slow.is_valid(doc)
        where = list(paths(doc))
        for _ in range(400):
            case = copy.deepcopy(doc)
            mutate(case, rng, where)
            verdict = slow.is_valid(case)
            assert fast(case) == verdict, list(slow.iter_errors(case))[:3]
            invalid += not verdict
    assert invalid > 200


def test_kai_yaml_schema_same_verdict_as_jsonschema() -> None:
    from renderer.schemacheck import fast_check, validator

    fast, slow = fast_check("kai.schema.json"), validator("kai.schema.json")
    assert fast is not None
    rng = random.Random(6)
    doc = yaml.safe_load((EXAMPLES / "gitops" / "kai.yaml").read_text())
    doc["ingress"] = {"host": "a.example.com", "className": "nginx", "tlsSecret": "tls",
                      "annotations": {"a": "b"}}
    assert fast(doc) and slow.is_valid(doc)
    where = list(paths(doc))
    invalid = 0
    for _ in range(1500):
        case = copy.deepcopy(doc)
        mutate(case, rng, where)
        verdict = slow.is_valid(case)
        assert fast(case) == verdict, list(slow.iter_errors(case))[:3]
        invalid += not verdict
    assert invalid > 300
