"""renderer.validate and `kai validate`: every rule, with its message and position."""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from renderer.cli import main
from renderer.krt import Config, Node, Workflow
from renderer.krtfile import build_krt
from renderer.plan import plan_workflows
from renderer.problems import InputError
from renderer.validate import load_version, validate_path
from runner import contract

PROTO = """\
syntax = "proto3";
package main;
message Request { string name = 1; }
message Response { string greeting = 1; }
service Entrypoint {
  rpc PyGreet (Request) returns (Response);
  rpc Upload (stream Request) returns (Response);
}
"""

# line numbers matter: the tests below name them
KRT = """\
version: greeter-v1
description: Version for testing.
entrypoint:
  proto: public_input.proto
  image: konstellation/kre-entrypoint:1.6.0
nodes:
  - name: etl
    image: konstellation/kre-py:1.23.0
    src: src/etl/main.py
  - name: output
    image: konstellation/kre-py:1.23.0
    src: src/output/main.py
workflows:
  - name: py-greeting
    entrypoint: PyGreet
    sequential: [etl, output]
"""


def write_version(folder: Path, krt: str = KRT, proto: str = PROTO) -> Path:
    """A small valid version (unless `krt` / `proto` say otherwise) in `folder`."""
    for node in ("etl", "output"):
        src = folder / "src" / node / "main.py"
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text("def handler(ctx, data):\n    return data\n")
    (folder / "public_input.proto").write_text(proto)
    (folder / "krt.yml").write_text(krt)
    return folder


def problems(tmp_path: Path, krt: str = KRT, proto: str = PROTO) -> list[str]:
    folder = write_version(tmp_path / "greeter-v1", krt, proto)
    with pytest.raises(InputError) as info:
        load_version(folder, tmp_path)
    return [str(p) for p in info.value.problems]


F = "greeter-v1/krt.yml"


# --- a valid version ----------------------------------------------------------------------


def test_valid_version(tmp_path: Path) -> None:
    folder = write_version(tmp_path / "greeter-v1")
    v = load_version(folder, tmp_path)
    assert v.name == "greeter-v1"
    assert v.description == "Version for testing."
    assert v.proto == "public_input.proto"
    assert v.entrypoint_image == "konstellation/kre-entrypoint:1.6.0"
    assert v.nodes == (
        Node("etl", "konstellation/kre-py:1.23.0", "src/etl/main.py"),
        Node("output", "konstellation/kre-py:1.23.0", "src/output/main.py"),
    )
    assert v.workflows == (Workflow("py-greeting", "PyGreet", ("etl", "output")),)
    assert v.config == Config()
    assert v.directory == folder and v.manifest == "krt.yml"
    # the manifest itself works too, and so does krt.yaml
    assert load_version(folder / "krt.yml", tmp_path) == v
    (folder / "krt.yml").rename(folder / "krt.yaml")
    assert load_version(folder, tmp_path).manifest == "krt.yaml"


def test_optional_fields(tmp_path: Path) -> None:
    krt = KRT.replace(
        "nodes:\n",
        "config:\n  variables: [API_KEY]\n  files: [HTTPS_CERT]\nnodes:\n",
    ).replace("    src: src/etl/main.py\n", "    src: src/etl/main.py\n    gpu: true\n"
              "    replicas: 3\n")
    v = load_version(write_version(tmp_path / "v", krt), tmp_path)
    assert v.config == Config(("API_KEY",), ("HTTPS_CERT",))
    assert v.nodes[0].gpu is True and v.nodes[0].replicas == 3


def test_workflow_delivery_defaults_to_at_least_once_and_reaches_the_runner(
        tmp_path: Path) -> None:
    assert load_version(write_version(tmp_path / "a"), tmp_path).workflows[0].delivery == (
        contract.AT_LEAST_ONCE)
    v = load_version(write_version(tmp_path / "b", KRT + "    delivery: at-most-once\n"),
                     tmp_path)
    assert v.workflows == (Workflow("py-greeting", "PyGreet", ("etl", "output"),
                                    contract.AT_MOST_ONCE),)
    assert plan_workflows(v) == (contract.Workflow("py-greeting", "PyGreet", ("etl", "output"),
                                                   contract.AT_MOST_ONCE),)


def test_workflow_delivery_is_one_of_two(tmp_path: Path) -> None:
    assert problems(tmp_path, KRT + "    delivery: at_most_once\n") == [
        f"{F}:17:15: workflows[0].delivery: must be one of: at-least-once, at-most-once; "
        'got "at_most_once" (did you mean "at-most-once"?)']
    assert problems(tmp_path, KRT + "    delivery: 1\n") == [
        f"{F}:17:15: workflows[0].delivery: must be one of: at-least-once, at-most-once; got 1"]


# --- schema -------------------------------------------------------------------------------


def test_version_must_be_a_dns1035_label(tmp_path: Path) -> None:
    assert problems(tmp_path, KRT.replace("version: greeter-v1", "version: 1greeter")) == [
        f'{F}:1:10: version: "1greeter" does not match the pattern '
        "^[a-z]([-a-z0-9]*[a-z0-9])?$: a DNS-1035 label: lowercase letters, digits and '-', "
        "starting with a letter (e.g. greeter-v1)"
    ]


def test_version_as_a_number_is_a_type_error(tmp_path: Path) -> None:
    assert problems(tmp_path, KRT.replace("version: greeter-v1", "version: 1.0")) == [
        f"{F}:1:10: version: expected a string, got a number (1.0); "
        'put it in quotes if it is meant as text: "1.0"'
    ]


def test_missing_required_fields(tmp_path: Path) -> None:
    krt = KRT.replace("description: Version for testing.\n", "").replace(
        "  image: konstellation/kre-entrypoint:1.6.0\n", ""
    ).replace("    entrypoint: PyGreet\n", "")
    assert problems(tmp_path, krt) == [
        f"{F}:1:1: description: required field is missing (e.g. description: Version for "
        "testing.)",
        f"{F}:3:3: entrypoint.image: required field is missing "
        "(e.g. image: konstellation/kre-entrypoint:1.6.0)",
        f"{F}:12:5: workflows[0].entrypoint: required field is missing (e.g. entrypoint: PyGreet)",
    ]


def test_unknown_fields_suggest_the_right_one(tmp_path: Path) -> None:
    krt = KRT.replace("    sequential:", "    sequencial:").replace("nodes:", "extra: 1\nnodes:")
    assert problems(tmp_path, krt) == [
        f'{F}:6:1: extra: unknown field "extra"; allowed: version, description, entrypoint, '
        "config, nodes, workflows",
        f"{F}:15:5: workflows[0].sequential: required field is missing "
        "(e.g. sequential: [etl, output])",
        f'{F}:17:5: workflows[0].sequencial: unknown field "sequencial" '
        '(did you mean "sequential"?); allowed: name, entrypoint, sequential, delivery',
    ]


def test_wrong_types(tmp_path: Path) -> None:
    krt = KRT.replace("    src: src/etl/main.py\n", "    src: src/etl/main.py\n    gpu: maybe\n"
                      "    replicas: 0\n").replace("workflows:\n  - name", "workflows:\n  - name")
    krt = krt.replace("  image: konstellation/kre-entrypoint:1.6.0", "  image: [a]")
    assert problems(tmp_path, krt) == [
        f"{F}:5:10: entrypoint.image: expected a string, got a list",
        f'{F}:10:10: nodes[0].gpu: expected true or false, got a string ("maybe")',
        f"{F}:11:15: nodes[0].replicas: must be at least 1, got 0",
    ]


def test_empty_lists(tmp_path: Path) -> None:
    krt = KRT.split("nodes:")[0] + "nodes: []\nworkflows: {}\n"
    assert problems(tmp_path, krt) == [
        f"{F}:6:8: nodes: must have at least one item",
        f"{F}:7:12: workflows: expected a list, got a mapping",
    ]


def test_config_names(tmp_path: Path) -> None:
    krt = KRT.replace("nodes:", "config:\n  variables: [API_KEY, api-key, API_KEY]\nnodes:")
    assert problems(tmp_path, krt) == [
        f'{F}:7:24: config.variables[1]: "api-key" does not match the pattern '
        "^[A-Z0-9]([_A-Z0-9]*[A-Z0-9])?$: upper-case letters, digits and '_', "
        "not starting or ending with '_' (e.g. API_KEY)",
        f'{F}:7:33: config.variables[2]: "API_KEY" is listed twice',
    ]


def test_config_names_may_not_take_the_runners_names(tmp_path: Path) -> None:
    """Caught by `kai validate`, so `kai render --check` in CI sees it, not only a start.
    A file counts: its content is the variable of its name too (as KRE gave files), and
    KRT_ names are KRE's names of the runner's own variables."""
    krt = KRT.replace("nodes:", "config:\n  variables: [API_KEY, KAI_PROJECT, KRT_VERSION]\n"
                      "  files: [KRT_X, CERT, KAI_CERT]\nnodes:")
    rule = "names starting with KAI_ or KRT_ are the runner's own environment; rename it"
    assert problems(tmp_path, krt) == [
        f'{F}:7:24: config.variables[1]: "KAI_PROJECT" is reserved: {rule}',
        f'{F}:7:37: config.variables[2]: "KRT_VERSION" is reserved: {rule}',
        f'{F}:8:11: config.files[0]: "KRT_X" is reserved: {rule}',
        f'{F}:8:24: config.files[2]: "KAI_CERT" is reserved: {rule}',
    ]


def test_proto_must_end_in_proto(tmp_path: Path) -> None:
    krt = KRT.replace("proto: public_input.proto", "proto: public_input.txt")
    assert problems(tmp_path, krt) == [
        f'{F}:4:10: entrypoint.proto: "public_input.txt" does not match the pattern \\.proto$: '
        "a path ending in .proto (e.g. public_input.proto)"
    ]


# --- semantic rules -----------------------------------------------------------------------


def test_workflow_nodes_must_be_defined(tmp_path: Path) -> None:
    krt = KRT.replace("[etl, output]", "[etl, inference, output]")
    assert problems(tmp_path, krt) == [
        f'{F}:16:23: workflows[0].sequential[1]: node "inference" is not defined '
        "(defined: etl, output)"
    ]


def test_node_names_are_unique(tmp_path: Path) -> None:
    krt = KRT.replace("  - name: output\n", "  - name: etl\n").replace("[etl, output]", "[etl]")
    assert problems(tmp_path, krt) == [
        f'{F}:10:11: nodes[1].name: node "etl" is defined twice (first at nodes[0], line 7)'
    ]


def test_workflow_names_and_rpcs_are_unique(tmp_path: Path) -> None:
    krt = KRT + "  - name: py-greeting\n    entrypoint: PyGreet\n    sequential: [etl]\n"
    assert problems(tmp_path, krt) == [
        f'{F}:17:11: workflows[1].name: workflow "py-greeting" is defined twice '
        "(first at workflows[0], line 14)",
        f'{F}:18:17: workflows[1].entrypoint: rpc "PyGreet" already runs workflow "py-greeting" '
        "(first at workflows[0], line 15); an rpc serves one workflow",
    ]


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("src/missing.py", 'file "src/missing.py" does not exist in the version directory'),
        ("../outside.py", '"../outside.py" must stay inside the version directory (no "..")'),
        ("/etc/passwd", '"/etc/passwd" must be a path relative to the version directory'),
        ("src/etl.py", '"src/etl.py" is a directory; name a file in it'),
        ("src\\etl\\main.py", '"src\\etl\\main.py": use "/" to separate folders'),
    ],
)
def test_src_must_be_a_file_inside(tmp_path: Path, src: str, message: str) -> None:
    krt = KRT.replace("src: src/etl/main.py", f"src: '{src}'")
    (tmp_path / "greeter-v1" / "src" / "etl.py").mkdir(parents=True)
    assert problems(tmp_path, krt) == [f"{F}:9:10: nodes[0].src: {message}"]


def test_src_symlink_out_of_the_version(tmp_path: Path) -> None:
    (tmp_path / "secret.py").write_text("x = 1\n")
    folder = write_version(tmp_path / "greeter-v1")
    (folder / "src" / "link.py").symlink_to(tmp_path / "secret.py")
    (folder / "krt.yml").write_text(KRT.replace("src/etl/main.py", "src/link.py"))
    with pytest.raises(InputError) as info:
        load_version(folder, tmp_path)
    assert [str(p) for p in info.value.problems] == [
        f'{F}:9:10: nodes[0].src: "src/link.py" leads outside the version directory '
        "through a symlink"
    ]


def test_src_symlink_inside_is_fine(tmp_path: Path) -> None:
    folder = write_version(tmp_path / "greeter-v1")
    (folder / "src" / "link.py").symlink_to(folder / "src" / "etl" / "main.py")
    (folder / "krt.yml").write_text(KRT.replace("src/etl/main.py", "src/link.py"))
    assert load_version(folder, tmp_path).nodes[0].src == "src/link.py"


def test_proto_must_exist(tmp_path: Path) -> None:
    krt = KRT.replace("proto: public_input.proto", "proto: api/missing.proto")
    assert problems(tmp_path, krt) == [
        f'{F}:4:10: entrypoint.proto: file "api/missing.proto" does not exist in the version '
        "directory"
    ]


def test_proto_compile_errors_point_into_the_proto(tmp_path: Path) -> None:
    proto = PROTO.replace("string name = 1;", "strin name = 1;")
    assert problems(tmp_path, proto=proto) == [
        'greeter-v1/public_input.proto:3:19: "strin" is not defined.'
    ]


def test_proto_without_a_service(tmp_path: Path) -> None:
    proto = PROTO.split("service")[0]
    assert problems(tmp_path, proto=proto) == [
        f"{F}:4:10: entrypoint.proto: public_input.proto defines no service; add one, e.g. "
        "service Entrypoint { rpc PyGreet (Request) returns (Response); }"
    ]


def test_workflow_rpc_must_be_defined(tmp_path: Path) -> None:
    krt = KRT.replace("entrypoint: PyGreet", "entrypoint: PyGreat")
    assert problems(tmp_path, krt) == [
        f'{F}:15:17: workflows[0].entrypoint: rpc "PyGreat" is not defined by service '
        "Entrypoint in public_input.proto (available: PyGreet, Upload)"
    ]


def test_workflow_rpc_must_be_unary(tmp_path: Path) -> None:
    krt = KRT.replace("entrypoint: PyGreet", "entrypoint: Upload")
    assert problems(tmp_path, krt) == [
        f'{F}:15:17: workflows[0].entrypoint: rpc "Upload" is client-streaming; a workflow '
        "needs a unary rpc, like rpc Upload (Request) returns (Response)"
    ]


def _proto_importing_common(folder: Path) -> str:
    (folder / "api").mkdir(parents=True)
    (folder / "common").mkdir()
    (folder / "common" / "types.proto").write_text(
        'syntax = "proto3";\npackage common;\nmessage Name { string v = 1; }\n'
    )
    (folder / "api" / "main.proto").write_text(
        PROTO.replace('package main;', 'package main;\nimport "common/types.proto";')
    )
    return KRT.replace("proto: public_input.proto", "proto: api/main.proto")


def test_proto_imports_outside_its_folder_ship_with_it(tmp_path: Path) -> None:
    krt = _proto_importing_common(tmp_path / "greeter-v1")
    write_version(tmp_path / "greeter-v1", krt)
    load_version(tmp_path / "greeter-v1", tmp_path)  # every file of the version ships


def test_proto_import_that_does_not_ship(tmp_path: Path) -> None:
    folder = tmp_path / "greeter-v1"
    krt = _proto_importing_common(folder)
    (folder / ".kaiignore").write_text("# not for the pods\ncommon/\n")
    assert problems(tmp_path, krt) == [
        f'{F}:4:10: entrypoint.proto: api/main.proto imports "common/types.proto" would not '
        "reach the pods: .kaiignore line 2 excludes it ('common/')"
    ]


# --- node sources, checked without running them -------------------------------------------------

S = "greeter-v1/src/etl/main.py"


def source_problems(tmp_path: Path, code: str | bytes, krt: str = KRT) -> list[str]:
    """The problems of a version whose etl node holds `code`."""
    folder = write_version(tmp_path / "greeter-v1", krt)
    src = folder / "src" / "etl" / "main.py"
    src.write_bytes(code if isinstance(code, bytes) else code.encode())
    try:
        load_version(folder, tmp_path)
    except InputError as exc:
        return [str(p) for p in exc.problems]
    return []


def test_src_must_be_a_python_file(tmp_path: Path) -> None:
    # anything but a .py file is taken for a Go node (tests/unit/test_kre_manifests.py)
    folder = write_version(tmp_path / "greeter-v1", KRT.replace("src/etl/main.py",
                                                                "src/etl/main.sh"))
    (folder / "src" / "etl" / "main.sh").write_text("echo hi\n")
    with pytest.raises(InputError) as info:
        load_version(folder, tmp_path)
    assert [str(p) for p in info.value.problems] == [
        f'{F}:7:5: nodes[0]: node "etl" is a Go node (src "src/etl/main.sh" is not a .py '
        "file); Go nodes are not supported yet: drop it from nodes and from workflow "
        "py-greeting, or port it to Python"
    ]


def test_a_syntax_error_points_into_the_source(tmp_path: Path) -> None:
    code = "def handler(ctx, data):\n    return data\nvalue = (1,\n"
    assert source_problems(tmp_path, code) == [
        f"{S}:3:9: nodes[0].src: syntax error: '(' was never closed"
    ]


@pytest.mark.parametrize(("code", "message"), [
    ("def handler(ctx, data)\n    return data\n", "1:23: nodes[0].src: syntax error: expected ':'"),
    ("def handler(ctx, data):\nreturn data\n",
     "2:1: nodes[0].src: syntax error: expected an indented block after function definition "
     "on line 1"),
    # what the parser lets through but the compiler refuses, as importing the module would
    ("def handler(ctx, data):\n    return data\nawait setup()\n",
     "3:1: nodes[0].src: syntax error: 'await' outside function"),
    ("return 1\ndef handler(ctx, data):\n    return data\n",
     "1:1: nodes[0].src: syntax error: 'return' outside function"),
    # the runner image's Python (3.11) decides the grammar, not the one validating
    ("type Alias = int\ndef handler(ctx, data):\n    return data\n",
     "1:6: nodes[0].src: syntax error: invalid syntax"),
    (b"def handler(ctx, data):\n    return '\xff'\n",
     "2:15: nodes[0].src: syntax error: (unicode error) 'utf-8' codec can't decode byte 0xff "
     "in position 0: invalid start byte"),
])
def test_what_does_not_compile(tmp_path: Path, code: str | bytes, message: str) -> None:
    assert source_problems(tmp_path, code) == [f"{S}:{message}"]


def test_null_bytes_and_deep_nesting_are_one_line_each(tmp_path: Path) -> None:
    assert source_problems(tmp_path, b"def handler(ctx, data):\n    return 1\0\n") == [
        f"{S}: nodes[0].src: syntax error: source code string cannot contain null bytes"
    ]
    deep = "def handler(ctx, data):\n    return data\nx = " + "1+" * 200_000 + "1\n"
    assert source_problems(tmp_path / "deep", deep) == [
        f"{S}: nodes[0].src: does not compile: it nests too deeply for Python's compiler"
    ]


def test_a_module_without_handler(tmp_path: Path) -> None:
    for code in ("def handle(ctx, data):\n    return data\n",
                 "def outer():\n    def handler(ctx, data):\n        return data\n",
                 "class Node:\n    def handler(self, ctx, data):\n        return data\n",
                 "handler = None\n", ""):
        assert source_problems(tmp_path / str(len(code)), code) == [
            f"{S}: nodes[0].src: defines no handler; a node module needs a top-level "
            "`def handler(ctx, data)` (or `async def`)"
        ] if code != "handler = None\n" else [
            f"{S}:1:1: nodes[0].src: handler must be a function, but here it is None"
        ], code


@pytest.mark.parametrize("code", [
    "def handler(ctx, data):\n    return data\n",
    "async def handler(ctx, data):\n    return data\n",
    "def make():\n    return lambda ctx, data: data\nhandler = make()\n",
    "handler: object = lambda ctx, data: data\n",
    "from json import loads as handler\n",
    "try:\n    import fast\n    handler = fast.handler\nexcept ImportError:\n"
    "    def handler(ctx, data):\n        return data\n",
    "if True:\n    def handler(ctx, *rest):\n        return rest[0]\n",
    "def handler(ctx, data=None, /):\n    return data\n",
    # bound where a parser cannot follow: not reported
    "from impl import *\n",
    "def setup():\n    global handler\n    handler = make()\nsetup()\n",
    "handler, init = make()\n",
    # a decorator may give the function another signature: only the runner can tell
    "from helpers import takes_ctx\n@takes_ctx\ndef handler(data):\n    return data\n",
    # init is optional, and None says there is none (the runner accepts both)
    "def handler(ctx, data):\n    return data\ninit = None\n",
    "def handler(ctx, data):\n    return data\nasync def init(ctx):\n    pass\n",
    "def handler(ctx, data):\n    return data\ninit = handler\n",
])
def test_modules_the_runner_accepts(tmp_path: Path, code: str) -> None:
    assert source_problems(tmp_path, code) == []


@pytest.mark.parametrize(("code", "message"), [
    ("handler = 'main'\n", "1:1: nodes[0].src: handler must be a function, but here it is a "
                           "constant"),
    ("class handler:\n    pass\n", "1:1: nodes[0].src: handler must be a function, but here "
                                    "it is a class"),
    ("def handler(ctx):\n    return ctx\n",
     "1:1: nodes[0].src: handler must take two arguments (ctx, data)"),
    ("import x\n\n\ndef handler(*args):\n    return args[1]\n",
     "4:1: nodes[0].src: handler must take two arguments (ctx, data)"),
    ("def handler(ctx, data):\n    return data\n\ninit = {'table': 1}\n",
     "4:1: nodes[0].src: init must be a function, but here it is a dict"),
    ("def handler(ctx, data):\n    return data\nclass init:\n    pass\n",
     "3:1: nodes[0].src: init must be a function, but here it is a class"),
    ("def handler(ctx, data):\n    return data\nhandler = [1]\n",
     "3:1: nodes[0].src: handler must be a function, but here it is a list"),
])
def test_handler_and_init_must_be_functions(tmp_path: Path, code: str, message: str) -> None:
    assert source_problems(tmp_path, code) == [f"{S}:{message}"]


def test_each_node_is_named_and_a_shared_file_parsed_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from renderer import nodesource

    calls: list[str] = []
    real = nodesource.check_source

    def counting(data: bytes, filename: str = "<node>") -> list[tuple[int, int, str]]:
        calls.append(filename)
        return real(data, filename)

    monkeypatch.setattr(nodesource, "check_source", counting)
    monkeypatch.setattr(nodesource, "_CACHE", {})
    krt = KRT.replace("src/output/main.py", "src/etl/main.py")
    assert source_problems(tmp_path / "a", "x = 1\n", krt) == [
        f"{S}: nodes[0].src: defines no handler; a node module needs a top-level "
        "`def handler(ctx, data)` (or `async def`)",
        f"{S}: nodes[1].src: defines no handler; a node module needs a top-level "
        "`def handler(ctx, data)` (or `async def`)",
    ]
    assert len(calls) == 1
    source_problems(tmp_path / "b", "x = 1\n", krt)  # validated again: the same bytes
    assert len(calls) == 1
    source_problems(tmp_path / "c", "x = 2\n", krt)
    assert len(calls) == 2


# --- what ships to the pods ----------------------------------------------------------------


def test_a_node_source_that_would_not_ship(tmp_path: Path) -> None:
    folder = write_version(tmp_path / "greeter-v1")
    (folder / ".kaiignore").write_text("src/etl/\n")
    docs = KRT.replace("src/output/main.py", "docs/main.py")
    (folder / "docs").mkdir()
    (folder / "docs" / "main.py").write_text("def handler(ctx, data):\n    return data\n")
    (folder / "krt.yml").write_text(docs)
    with pytest.raises(InputError) as info:
        load_version(folder, tmp_path)
    assert [str(p) for p in info.value.problems] == [
        f"{F}:9:10: nodes[0].src: \"src/etl/main.py\" would not reach the pods: .kaiignore "
        "line 1 excludes it ('src/etl/')",
        f"{F}:12:10: nodes[1].src: \"docs/main.py\" would not reach the pods: docs/ is left "
        "out (the version's documentation stays in git)",
    ]


def test_an_ignore_file_error_points_at_its_line(tmp_path: Path) -> None:
    folder = write_version(tmp_path / "greeter-v1")
    (folder / ".krtignore").write_text("# ok\n\\\n")
    with pytest.raises(InputError) as info:
        load_version(folder, tmp_path)
    assert [str(p) for p in info.value.problems] == [
        "greeter-v1/.krtignore:2:1: invalid pattern '\\\\'; see gitignore's pattern format"
    ]


def test_a_version_too_large_for_a_configmap_needs_an_image(tmp_path: Path) -> None:
    from renderer.build import image_reason
    from renderer.plan import CONFIGMAP_LIMIT
    from renderer.versionfiles import shipped_files

    folder = write_version(tmp_path / "greeter-v1")
    (folder / "data").mkdir()
    (folder / "data" / "weights.bin").write_bytes(b"\xff" * (CONFIGMAP_LIMIT * 3 // 4))
    # valid on its own: whether it may have an image is the repo's kai.yaml to say
    load_version(folder, tmp_path)
    # binary files travel base64-encoded: 3/4 of the limit on disk is too much
    assert image_reason(shipped_files(folder)) == (
        "its files take 1009 KiB (1032969 bytes) in a ConfigMap, more than the 1008 KiB "
        "(1032192 bytes) one holds")
    # the selection decides: what does not ship does not count
    for ignored in ("data/\n", "*.bin\n"):
        (folder / ".kaiignore").write_text(ignored)
        assert image_reason(shipped_files(folder)) is None
    (folder / ".kaiignore").unlink()
    (folder / "docs").mkdir()
    (folder / "data" / "weights.bin").rename(folder / "docs" / "weights.bin")
    assert image_reason(shipped_files(folder)) is None
    # far too large: refused from the sizes on disk, with the number of bytes found there
    (folder / "data" / "huge.txt").write_bytes(b"x" * (3 * 1024 * 1024))
    assert image_reason(shipped_files(folder)) == (
        "its files take 3.0 MiB (3146431 bytes) in a ConfigMap, more than the 1008 KiB "
        "(1032192 bytes) one holds")


def test_a_version_too_large_for_any_image(tmp_path: Path) -> None:
    from renderer.build import MAX_IMAGE_FILES

    folder = write_version(tmp_path / "greeter-v1")
    (folder / "data").mkdir()
    with open(folder / "data" / "huge.bin", "wb") as f:
        f.truncate(MAX_IMAGE_FILES)  # sparse: its size on disk is what counts
    with pytest.raises(InputError, match=r"^greeter-v1: its files take 1\.0 GiB \("):
        load_version(folder, tmp_path)
    (folder / ".kaiignore").write_text("data/\n")
    load_version(folder, tmp_path)


def test_cli_refuses_a_version_too_large(tmp_path: Path) -> None:
    from renderer.build import MAX_IMAGE_FILES

    folder = write_version(tmp_path / "greeter-v1")
    (folder / "data").mkdir()
    with open(folder / "data" / "big.json", "wb") as f:
        f.truncate(MAX_IMAGE_FILES)
    result = run("greeter-v1", cwd=tmp_path)
    assert result.exit_code == 1
    assert result.stderr == (
        "greeter-v1: its files take 1.0 GiB (1073742527 bytes), more than the 1.0 GiB "
        "(1073741824 bytes) a version may ship; keep large data out of it with a .kaiignore "
        "and fetch it at run time instead\n"
    )


def test_derived_names_fit_63_characters(tmp_path: Path) -> None:
    long_version = "v" + "x" * 45  # 46 + "-files-" + 10 = 63: fits
    assert load_version(
        write_version(tmp_path / "a", KRT.replace("greeter-v1", long_version)), tmp_path
    )
    longer = long_version + "y"
    long_node = "n" * 60
    krt = KRT.replace("greeter-v1", longer).replace("name: etl", f"name: {long_node}")
    krt = krt.replace("[etl, output]", f"[{long_node}, output]")
    assert problems(tmp_path, krt) == [
        f'{F}:1:10: version: the Kubernetes name "{longer}-files-0000000000" made from it is '
        "64 characters long; at most 63 are allowed, so shorten version",
        f'{F}:7:11: nodes[0].name: the Kubernetes name "{longer}-{long_node}" made from it is '
        "108 characters long; at most 63 are allowed, so shorten nodes[0].name",
    ]


def test_every_problem_at_once(tmp_path: Path) -> None:
    krt = (
        KRT.replace("version: greeter-v1", "version: Greeter")
        .replace("src: src/etl/main.py", "src: nope.py")
        .replace("[etl, output]", "[etl, ghost]")
        .replace("entrypoint: PyGreet", "entrypoint: Nope")
    )
    out = problems(tmp_path, krt)
    assert [line.split(": ")[1] for line in out] == [
        "version", "nodes[0].src", "workflows[0].entrypoint", "workflows[0].sequential[1]"
    ]


def test_malformed_manifests_give_one_line(tmp_path: Path) -> None:
    assert problems(tmp_path, "version: [\n") == [
        f"{F}:2:1: invalid YAML: did not find expected node content "
        "(while parsing a flow node at line 2)"
    ]
    assert problems(tmp_path, "") == [f"{F}:1:1: file is empty; expected a YAML mapping"]


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        load_version(tmp_path / "nope", tmp_path)
    assert str(info.value) == "nope: does not exist"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as info:
        load_version(tmp_path / "empty", tmp_path)
    assert str(info.value) == "empty: no krt.yml (or krt.yaml) in this directory"


# --- validate_path: archives and repos ------------------------------------------------------


def test_validate_archive(tmp_path: Path) -> None:
    folder = write_version(tmp_path / "src-v", KRT.replace("[etl, output]", "[etl, ghost]"))
    archive = build_krt(folder, tmp_path / "greeter-v1.krt")
    report = validate_path(archive, tmp_path)
    assert report.kind == "archive"
    assert report.lines() == [
        'greeter-v1.krt!krt.yml:16:23: workflows[0].sequential[1]: node "ghost" is not '
        "defined (defined: etl, output)"
    ]
    (folder / "krt.yml").write_text(KRT)
    report = validate_path(build_krt(folder, archive), tmp_path)
    assert report.ok and report.versions[0].file == "greeter-v1.krt!krt.yml"


def test_validate_archive_with_a_top_level_folder(tmp_path: Path) -> None:
    folder = write_version(tmp_path / "greeter-v1", KRT.replace("PyGreet", "Nope"))
    archive = tmp_path / "greeter-v1.krt"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="greeter-v1")
    assert validate_path(archive, tmp_path).lines() == [
        'greeter-v1.krt!greeter-v1/krt.yml:15:17: workflows[0].entrypoint: rpc "Nope" is not '
        "defined by service Entrypoint in public_input.proto (available: PyGreet, Upload)"
    ]


def test_validate_bad_archive(tmp_path: Path) -> None:
    bad = tmp_path / "junk.krt"
    bad.write_bytes(b"not an archive")
    assert validate_path(bad, tmp_path).lines() == [
        "junk.krt: not a .krt file: expected a gzip-compressed tar archive"
    ]


KAI = """\
project: demo
namespace: kai-demo
versions:
  greeter-v1:
    state: published
"""


def make_repo(root: Path, kai: str = KAI) -> Path:
    write_version(root / "versions" / "greeter-v1")
    (root / "kai.yaml").write_text(kai)
    return root


def test_validate_repo(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "repo")
    report = validate_path(root, tmp_path)
    assert report.ok and report.kind == "repo"
    assert report.project is not None and report.project.name == "demo"
    assert [(c.version.name, c.state, c.file) for c in report.versions] == [
        ("greeter-v1", "published", "repo/versions/greeter-v1/krt.yml")
    ]
    assert validate_path(root / "kai.yaml", tmp_path).ok


def test_repo_cross_checks(tmp_path: Path) -> None:
    kai = KAI + "  ghost-v1:\n    state: published\n"
    root = make_repo(tmp_path / "repo", kai)
    write_version(root / "versions" / "renamed")  # its manifest says greeter-v1
    krt = KRT.replace("greeter-v1", "config-v1")
    krt = krt.replace("nodes:", "config:\n  files: [CERT]\nnodes:")
    write_version(root / "versions" / "config-v1", krt)
    (root / "kai.yaml").write_text(kai.replace("ghost-v1:\n    state: published",
                                               "ghost-v1: {}\n  config-v1: {state: started}"))
    assert validate_path(root, tmp_path).lines() == [
        "repo/kai.yaml:6:3: versions.ghost-v1: versions/ghost-v1/ does not exist; add the "
        "version with `kai add` or remove this entry",
        "repo/kai.yaml:7:22: versions.config-v1.state: config-v1 is started but its config "
        "(files: CERT) has no source; add `config: {secret: <Secret name>}` under "
        "versions.config-v1",
        'repo/versions/renamed/krt.yml:1:10: version: version "greeter-v1" sits in '
        "versions/renamed/; the folder must be named after the version (versions/greeter-v1/)",
    ]


def test_repo_with_two_published_versions(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "repo", KAI + "  other-v1: {state: published}\n")
    write_version(root / "versions" / "other-v1", KRT.replace("greeter-v1", "other-v1"))
    assert validate_path(root, tmp_path).lines() == [
        "repo/kai.yaml:6:21: versions.other-v1.state: only one version can be published and "
        "greeter-v1 is published too; set one of them to started"
    ]


def test_repo_reports_version_problems_too(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "repo", KAI.replace("project: demo", "project: Demo"))
    (root / "versions" / "greeter-v1" / "krt.yml").write_text(KRT.replace("etl, output", "x"))
    report = validate_path(root, tmp_path)
    assert [line.split(":")[0] for line in report.lines()] == [
        "repo/kai.yaml", "repo/versions/greeter-v1/krt.yml"
    ]
    assert not report.ok and report.versions == ()


def test_neither_version_nor_repo(tmp_path: Path) -> None:
    assert validate_path(tmp_path, tmp_path).lines() == [
        ".: neither a version (no krt.yml or krt.yaml) nor a GitOps repo (no kai.yaml)"
    ]
    assert validate_path(tmp_path / "missing", tmp_path).lines() == ["missing: does not exist"]


# --- the CLI ------------------------------------------------------------------------------


def run(*args: str, cwd: Path) -> Any:
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, ["validate", *args], catch_exceptions=False)
    finally:
        os.chdir(old)


def test_cli_ok(tmp_path: Path) -> None:
    write_version(tmp_path / "greeter-v1")
    result = run("greeter-v1", cwd=tmp_path)
    assert result.exit_code == 0
    assert result.stdout == (
        "ok: greeter-v1 (greeter-v1/krt.yml)\n"
        "  nodes: etl, output\n"
        "  workflow py-greeting: PyGreet → etl → output\n"
    )
    assert result.stderr == ""


def test_cli_problems_on_stderr(tmp_path: Path) -> None:
    write_version(tmp_path / "greeter-v1", KRT.replace("[etl, output]", "[etl, inference]"))
    result = run("greeter-v1", cwd=tmp_path)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        'greeter-v1/krt.yml:16:23: workflows[0].sequential[1]: node "inference" is not defined '
        "(defined: etl, output)\n"
    )


def test_cli_json(tmp_path: Path) -> None:
    write_version(tmp_path / "greeter-v1", KRT.replace("[etl, output]", "[etl, inference]"))
    result = run("greeter-v1", "--json", cwd=tmp_path)
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["versions"] == []
    assert doc["problems"] == [{
        "file": "greeter-v1/krt.yml", "line": 16, "col": 23,
        "path": "workflows[0].sequential[1]",
        "message": 'node "inference" is not defined (defined: etl, output)',
    }]
    (tmp_path / "greeter-v1" / "krt.yml").write_text(KRT)
    result = run("--json", "greeter-v1/krt.yml", cwd=tmp_path)
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and doc["problems"] == []
    assert doc["versions"][0]["workflows"] == [
        {"name": "py-greeting", "entrypoint": "PyGreet", "sequential": ["etl", "output"],
         "delivery": "at-least-once"}
    ]


def test_cli_repo_summary(tmp_path: Path) -> None:
    make_repo(tmp_path / "repo")
    result = run("repo", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:2] == [
        "ok: project demo (namespace kai-demo), 1 version",
        "ok: greeter-v1 [published] (repo/versions/greeter-v1/krt.yml)",
    ]


def test_cli_unreadable_manifest(tmp_path: Path) -> None:
    folder = write_version(tmp_path / "greeter-v1")
    (folder / "krt.yml").unlink()
    (folder / "krt.yml").mkdir()  # a directory where the manifest should be
    result = run("greeter-v1/krt.yml", cwd=tmp_path)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_cli_help() -> None:
    result = CliRunner().invoke(main, ["validate", "--help"])
    assert result.exit_code == 0 and "GitOps repo" in result.output and "--json" in result.output


# --- fuzz: whatever the manifest holds, only InputError comes out ---------------------------

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True),
    st.sampled_from(["", "etl", "output", "PyGreet", "greeter-v1", "../x", "/abs",
                     "src/etl/main.py", "public_input.proto", "x.proto", "A" * 80, "v1",
                     "konstellation/kre-go:1.0", "bin/go-greeter", "a-name-of-twenty-chr"]),
)
_ANY = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["name", "src", "x", "krtVersion"]),
                                            inner, max_size=3)),
    max_leaves=8,
)


def _field(valid: Any) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(valid), _ANY)


_MANIFEST = st.fixed_dictionaries(
    {},
    optional={
        "version": _field("greeter-v1") | st.just("greeter-v1-named-kre-1-x"),
        "krtVersion": _field("v1"),
        "description": _field("d"),
        "entrypoint": _field({"proto": "public_input.proto", "image": "i"})
        | st.fixed_dictionaries({"proto": st.just("public_input.proto"), "image": st.just("i"),
                                 "src": _ANY}),
        "config": _field({"variables": ["API_KEY"]})
        | st.fixed_dictionaries({}, optional={"variables": st.none(), "files": st.none()}),
        "nodes": st.lists(
            st.fixed_dictionaries({}, optional={
                "name": _field("etl"), "image": _field("i") | st.just("kre-go"),
                "src": _field("src/etl/main.py"), "gpu": _ANY, "replicas": _ANY,
            }), max_size=3,
        ) | _ANY,
        "workflows": st.lists(
            st.fixed_dictionaries({}, optional={
                "name": _field("w"), "entrypoint": _field("PyGreet"),
                "sequential": _field(["etl", "output"]),
            }), max_size=3,
        ) | _ANY,
    },
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_MANIFEST)
def test_fuzz_manifests_only_raise_input_error(manifest: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_version(Path(tmp) / "v", yaml.safe_dump(manifest))
        try:
            version = load_version(folder, Path(tmp))
        except InputError as exc:
            assert exc.problems
            assert all(p.file.startswith("v/") for p in exc.problems)
            assert all(w.file.startswith("v/") for w in exc.warnings)
            assert exc.warnings == sorted(set(exc.warnings))
        else:
            assert version.name
            assert all(w.file == "v/krt.yml" and w.line for w in version.warnings)
            assert list(version.warnings) == sorted(set(version.warnings))
            # strict: the same verdict, with each warning a problem
            try:
                load_version(folder, Path(tmp), strict=True)
            except InputError as exc:
                assert [p.message for p in exc.problems] == [
                    f"{w.message} [--strict]" for w in version.warnings]
                assert exc.warnings == []
            else:
                assert not version.warnings


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_bytes_only_raise_input_error(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_version(Path(tmp) / "v")
        (folder / "krt.yml").write_bytes(raw)
        with pytest.raises(InputError):
            load_version(folder, Path(tmp))


def test_a_shared_proto_is_compiled_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from renderer import validate

    calls: list[str] = []
    real = validate.compile_proto

    def counting(root: Path, proto: str):  # type: ignore[no-untyped-def]
        calls.append(str(root))
        return real(root, proto)

    monkeypatch.setattr(validate, "compile_proto", counting)
    monkeypatch.setattr(validate, "_PROTOS", {})
    for name in ("a", "b"):
        load_version(write_version(tmp_path / name))
    assert len(calls) == 1
    # the same file name with other bytes is compiled again, and its problems found
    changed = PROTO.replace("rpc PyGreet", "rpc OtherName")
    with pytest.raises(InputError, match='rpc "PyGreet" is not defined'):
        load_version(write_version(tmp_path / "c", proto=changed))
    # so is an import that differs, though the entry file is the same
    entry = 'syntax = "proto3";\npackage main;\nimport "types.proto";\n' + \
        "service Entrypoint {\n  rpc PyGreet (Request) returns (Response);\n}\n"
    types = 'syntax = "proto3";\npackage main;\nmessage Request { string name = 1; }\n' + \
        "message Response { string greeting = 1; }\n"
    for name, extra in (("d", ""), ("e", "message Extra {}\n")):
        folder = write_version(tmp_path / name, proto=entry)
        (folder / "types.proto").write_text(types + extra)
        load_version(folder)
    assert len(calls) == 4
    load_version(tmp_path / "e")
    assert len(calls) == 4
