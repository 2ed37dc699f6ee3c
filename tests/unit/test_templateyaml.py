"""renderer.templateyaml: the fast parse of template output gives yaml.safe_load's result."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from renderer import render, templateyaml
from renderer.templateyaml import parse
from tests.unit.test_output import AWKWARD
from tests.unit.test_render import make_project, make_version

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def typed(value: Any) -> Any:
    """A structure that tells 1 from True from 1.0 from "1"."""
    if isinstance(value, dict):
        return ("map", [(typed(k), typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("seq", [typed(v) for v in value])
    return (type(value).__name__, repr(value))


def same_as_pyyaml(text: str) -> bool:
    """parse() equals PyYAML's safe load; returns whether the fast line parser read it."""
    try:
        expected = typed(yaml.load(text, Loader=_Loader))
    except yaml.YAMLError:
        with pytest.raises(yaml.YAMLError):
            parse(text)
        return False
    assert typed(parse(text)) == expected, text
    try:
        fast = templateyaml._parse_lines(text)
    except templateyaml._Unsupported:
        return False
    assert typed(fast) == expected, text
    return True


def test_template_output_takes_the_fast_path(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    texts: list[str] = []
    real = render._template

    class Recorder:
        def __init__(self, template: Any) -> None:
            self.template = template

        def render(self, **context: Any) -> str:
            text: str = self.template.render(**context)
            texts.append(text)
            return text

    monkeypatch.setattr(render, "_template", lambda name: Recorder(real(name)))
    version = make_version(tmp_path)
    render.render_project(make_project(tmp_path, {"greeter-v1": "published"}),
                          {"greeter-v1": version})
    kinds = {}
    for text in texts:
        kind = yaml.safe_load(text)["kind"]
        kinds[kind] = kinds.get(kind, True) and same_as_pyyaml(text)
    assert kinds["Deployment"] and kinds["Service"] and kinds["ConfigMap"]
    assert kinds["Ingress"] and kinds["Namespace"]


DOCS = [
    "a: 1\nb:\n  c: x\n  d: [A, B]\n",
    "a:\n- x\n- y\nb: 1\n",  # a sequence at its key's indent
    "a:\n  - x\n  - k: 1\n    j: 2\n  - - nested\nb: ~\n",
    "a:\nb:\n  c:\n",  # nulls
    "a: yes\nb: on\nc: 0x10\nd: 1_0\ne: 1.5\nf: 2001-12-14\ng: .inf\nh: 007\ni: -1\n",
    "on: 1\n", "1: a\n", "a: b: c\n", "a: x # comment\n", "a: 'single'\n", "a:\tb\n",
    "a: |\n  block\n", "a: &x 1\nb: *x\n", "<<: {a: 1}\nb: 2\n", "--- \na: 1\n", "a: 1\n...\n",
    "a:\n  b: 1\n c: 2\n", "a:\n    b: 1\n  c: 2\n", "a:\n  - x\n    - y\n", "a:\n  - x\n   y\n",
    "a:\n  - x\n  b: 1\n", "a: 1\n  b: 2\n", "- a\n", "a: x\n  continued\n", "a: 1\na: 2\n",
    'a: "\\ud83d\\ude00"\n', 'a: ["\\u00e9", "\\u003c", "x\\"y", "t\\tb"]\n', 'a: [1e+20, 1.0]\n',
    'a: {"k": {"n": [1, true, null, "s"]}}\n', 'a: "x\x7f"\n', "a: [ALL, true, 3, null]\n",
    "a: []\nb: {}\nc: \"\"\n", "a:\n  - {x: 1}\n", "k8s.io/name: x\nx-y_z.w: /path\n",
    "", "# only a comment\n", "\n\n",  # no document: None, as PyYAML
]


@pytest.mark.parametrize("doc", DOCS)
def test_edge_cases_match_pyyaml(doc: str) -> None:
    same_as_pyyaml(doc)


def random_value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth < 3 and roll < 0.25:
        keys = ["a", "b", "name", "on", "x.y/z", "1", "k-1"]
        return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    if depth < 3 and roll < 0.45:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return rng.choice([*AWKWARD, 0, 1, -1, 10001, True, False, None, 1.5, "IfNotPresent"])


def test_random_documents_match_pyyaml() -> None:
    rng = random.Random(7)
    fast = 0
    for _ in range(1500):
        obj = {f"k{i}": random_value(rng, 0) for i in range(rng.randint(1, 4))}
        style = rng.random()
        if style < 0.4:
            text = yaml.safe_dump(obj, default_flow_style=False, indent=rng.choice([2, 4]),
                                  width=10**6)
        else:  # the templates' shape: block structure, JSON values
            lines = []
            for key, value in obj.items():
                if isinstance(value, dict) and value and style < 0.7:
                    lines.append(f"{key}:")
                    lines += [f"  {k}: {json.dumps(v)}" for k, v in value.items()]
                elif isinstance(value, list) and value:
                    lines.append(f"{key}:")
                    lines += [f"    - {json.dumps(v)}" for v in value]
                else:
                    lines.append(f"{key}: {json.dumps(value)}")
            text = "\n".join(lines) + "\n"
        fast += same_as_pyyaml(text)
    assert fast > 300
