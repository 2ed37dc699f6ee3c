"""renderer.yamlsafe: one safe YAML document with positions; every bad input is one Problem."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from renderer.problems import InputError
from renderer.yamlsafe import MAX_BYTES, format_path, load_yaml, parse_yaml, shown_path


def problems(raw: bytes) -> list[str]:
    with pytest.raises(InputError) as info:
        parse_yaml(raw, "f.yml")
    return [str(p) for p in info.value.problems]


def test_plain_data_and_positions() -> None:
    doc = parse_yaml(
        b"version: greeter-v1\n"
        b"workflows:\n"
        b"  - name: w\n"
        b"    sequential: [etl, output]\n",
        "f.yml",
    )
    assert doc.data == {
        "version": "greeter-v1",
        "workflows": [{"name": "w", "sequential": ["etl", "output"]}],
    }
    assert doc.position(("version",)) == (1, 10)
    assert doc.position(("workflows", 0)) == (3, 5)
    assert doc.position(("workflows", 0, "sequential", 1)) == (4, 23)
    assert doc.key_position(("workflows", 0, "sequential")) == (4, 5)
    # a missing field: its nearest ancestor
    assert doc.position(("workflows", 0, "entrypoint")) == (3, 5)
    p = doc.problem(("workflows", 0, "sequential", 1), "bad")
    assert str(p) == "f.yml:4:23: workflows[0].sequential[1]: bad"


def test_format_path() -> None:
    assert format_path(()) == ""
    assert format_path(("workflows", 0, "sequential", 1)) == "workflows[0].sequential[1]"
    assert format_path(("ingress", "annotations", "a.b/c")) == 'ingress.annotations["a.b/c"]'


def test_scalars_stay_plain() -> None:
    doc = parse_yaml(
        b"v: 1.0\nn: 3\nb: yes\nz: ~\nd: 2024-01-02\ninf: .inf\n1: one\nk8s: '1.35'\n", "f"
    )
    assert doc.data == {
        "v": 1.0, "n": 3, "b": True, "z": None, "d": "2024-01-02", "inf": float("inf"),
        "1": "one", "k8s": "1.35",
    }


def test_utf8_bom_and_unicode_are_fine() -> None:
    assert parse_yaml("\ufeffa: héllo ✓\n".encode(), "f").data == {"a": "héllo ✓"}


def test_broken_yaml_has_line_and_column() -> None:
    assert problems(b"a: 1\nb: c: d\n") == [
        "f.yml:2:5: invalid YAML: mapping values are not allowed in this context"
    ]
    assert problems(b'a: "open\n') == [
        "f.yml:2:1: invalid YAML: found unexpected end of stream "
        "(while scanning a quoted scalar at line 1)"
    ]


def test_duplicate_keys() -> None:
    assert problems(b"a: 1\nb:\n  c: 1\n  c: 2\na: 3\n") == [
        'f.yml:4:3: b.c: duplicate key "c" (first defined at line 3)',
        'f.yml:5:1: a: duplicate key "a" (first defined at line 1)',
    ]


def test_tabs_as_indentation() -> None:
    assert problems(b"a:\n\tb: 1\n") == [
        "f.yml:2:1: tab character used for indentation; YAML indents with spaces"
    ]
    assert problems(b"a:\n  - 1\n  -\t2\n") == [
        "f.yml:3:4: tab character used for indentation; YAML indents with spaces"
    ]
    assert problems(b"a: [1,\n\t2]\n") == [
        "f.yml:2:1: tab character used for indentation; YAML indents with spaces"
    ]


def test_tabs_inside_text_are_text() -> None:
    doc = parse_yaml(b"a: |\n  x\n  \ty\n# \tcomment\nb: 1\n", "f")
    assert doc.data == {"a": "x\n\ty\n", "b": 1}


def test_non_utf8() -> None:
    assert problems(b"a: 1\nb: caf\xe9\n") == [
        "f.yml:2:7: not valid UTF-8 (byte 0xe9); save the file as UTF-8"
    ]


def test_control_character() -> None:
    assert problems(b"a: 1\nb: \x00\n") == [
        "f.yml:2:4: invalid YAML: character #x0000 is not allowed in YAML text"
    ]


@pytest.mark.parametrize("raw", [b"", b"   \n\n", b"\xef\xbb\xbf"])
def test_empty_file(raw: bytes) -> None:
    assert problems(raw) == ["f.yml:1:1: file is empty; expected a YAML mapping"]


def test_only_comments() -> None:
    assert problems(b"# nothing here\n") == [
        "f.yml:1:1: file holds no YAML data; expected a mapping"
    ]


def test_alias_bomb_is_refused_fast() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 12):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    start = time.perf_counter()
    out = problems("\n".join(lines).encode())
    assert time.perf_counter() - start < 1.0
    assert out == [
        "f.yml:1:4: YAML anchors and aliases are not supported (found &a); "
        "write the value out in full"
    ]


def test_a_lone_alias_is_refused() -> None:
    assert problems(b"a: 1\nb: *x\n") == [
        "f.yml:2:4: YAML anchors and aliases are not supported (found *x); "
        "write the value out in full"
    ]


def test_multiple_documents() -> None:
    assert problems(b"a: 1\n---\nb: 2\n") == [
        "f.yml:2:1: more than one YAML document (---); keep one document per file"
    ]


@pytest.mark.parametrize(
    ("raw", "found"),
    [(b"- a\n- b\n", "a list"), (b"just text\n", "a scalar ('just text')")],
)
def test_top_level_must_be_a_mapping(raw: bytes, found: str) -> None:
    message = f"the top level must be a mapping (key: value), found {found}"
    assert problems(raw) == [f"f.yml:1:1: {message}"]


def test_custom_tags_and_merge_keys() -> None:
    assert problems(b"a: !!python/object:os.system x\nb: !!binary aGk=\n") == [
        "f.yml:1:4: a: YAML tag tag:yaml.org,2002:python/object:os.system is not supported",
        "f.yml:2:4: b: YAML tag tag:yaml.org,2002:binary is not supported",
    ]
    assert problems(b"a:\n  <<: {x: 1}\n") == [
        "f.yml:2:3: a: merge keys (<<) are not supported; write the fields out"
    ]


def test_complex_keys() -> None:
    assert problems(b"? [a, b]\n: 1\n") == ["f.yml:1:3: a key must be a plain name, found a list"]


def test_deep_nesting() -> None:
    assert problems(b"a: " + b"[" * 100 + b"]" * 100 + b"\n") == [
        "f.yml:1:67: nested deeper than 64 levels"
    ]
    assert problems(b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n") == [
        "f.yml:1:1003: invalid YAML: exceeded maximum nesting depth "
        "(while increasing flow level at line 1)"
    ]


def test_file_over_one_mib(tmp_path: Path) -> None:
    big = tmp_path / "big.yml"
    big.write_bytes(b"a: '" + b"x" * MAX_BYTES + b"'\n")
    with pytest.raises(InputError) as info:
        load_yaml(big, "big.yml")
    assert [str(p) for p in info.value.problems] == [
        f"big.yml: file is too large ({MAX_BYTES + 6} bytes); the limit is 1 MiB"
    ]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        load_yaml(tmp_path / "missing.yml", "missing.yml")
    assert str(info.value) == "missing.yml: cannot read: No such file or directory"


def test_shown_path(tmp_path: Path) -> None:
    assert shown_path(tmp_path / "a" / "krt.yml", tmp_path) == "a/krt.yml"
    assert shown_path(tmp_path, tmp_path) == "."
    assert shown_path(Path("/elsewhere/x"), tmp_path) == "/elsewhere/x"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(raw: bytes) -> None:
    try:
        doc = parse_yaml(raw, "f.yml")
    except InputError as exc:
        assert exc.problems and all(str(p).startswith("f.yml") for p in exc.problems)
    else:
        assert isinstance(doc.data, dict)


_YAML_ALPHABET = st.sampled_from(
    [*"abc:-[]{},&*!|>'\"#\t\n ?%@`", "  ", "\n  ", ": ", "- ", "---", "<<: "]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_YAML_ALPHABET, max_size=40).map("".join))
def test_random_yaml_like_text_never_crashes(text: str) -> None:
    try:
        parse_yaml(text.encode(), "f.yml")
    except InputError as exc:
        assert exc.problems
