"""Compiling a version's proto in process and in a child process give the same result."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runner.proto import ProtoError, compile_proto

PROTO = """syntax = "proto3";
package shop;
import "google/protobuf/any.proto";
import "types.proto";
message Order { string id = 1; Item item = 2; google.protobuf.Any extra = 3; }
service Entrypoint { rpc Place (Order) returns (Item); }
"""


@pytest.fixture()
def version(tmp_path: Path) -> Path:
    (tmp_path / "main.proto").write_text(PROTO)
    (tmp_path / "types.proto").write_text(
        'syntax = "proto3";\npackage shop;\nmessage Item { string sku = 1; }\n')
    return tmp_path


@pytest.mark.parametrize("in_child", [False, True])
def test_both_ways_compile_the_same(version: Path, in_child: bool) -> None:
    compiled = compile_proto(version, "main.proto", in_child=in_child)
    assert compiled.files == ["main.proto", "types.proto"]
    method = compiled.methods()["Place"]
    assert (method.input_type.full_name, method.output_type.full_name) == (
        "shop.Order", "shop.Item")
    assert compiled.file_set == compile_proto(version, "main.proto").file_set


@pytest.mark.parametrize("in_child", [False, True])
def test_both_ways_report_protoc_positions(version: Path, in_child: bool) -> None:
    (version / "main.proto").write_text(PROTO.replace("Item item = 2;", "Itme item = 2;"))
    with pytest.raises(ProtoError) as err:
        compile_proto(version, "main.proto", in_child=in_child)
    (problem,) = err.value.problems
    assert (problem.file, problem.line) == ("main.proto", 5), problem
    assert "Itme" in problem.message


def test_a_child_compile_leaves_the_compiler_out_of_this_process(version: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from runner.proto import compile_proto
        compile_proto(Path({str(version)!r}), "main.proto", in_child=True)
        print("grpc_tools._protoc_compiler" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "False", out.stderr


def _fake_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_a_stalled_compiler_child_ends_in_one_error_at_its_timeout(
        version: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from runner import proto

    monkeypatch.setattr(proto.sys, "executable", _fake_python(tmp_path, "exec sleep 30"))
    monkeypatch.setattr(proto, "CHILD_TIMEOUT", 0.5)
    started = time.monotonic()
    with pytest.raises(ProtoError, match=r"main\.proto: protoc did not finish within 0\.5s"):
        compile_proto(version, "main.proto", in_child=True)
    assert time.monotonic() - started < 10


def test_a_compiler_child_killed_by_a_signal_is_an_error_not_a_result(
        version: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner import proto

    monkeypatch.setattr(proto.sys, "executable", _fake_python(tmp_path, "kill -9 $$"))
    with pytest.raises(ProtoError) as err:
        compile_proto(version, "main.proto", in_child=True)
    assert [str(p) for p in err.value.problems] == ["main.proto: protoc failed"]
