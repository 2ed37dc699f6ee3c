"""A node's start-up pieces: the generated modules (every imported proto, first on sys.path,
in a folder named by pid that is removed, and stale folders of dead processes), the
version's src/ on sys.path, and the author's frames of a start-up failure."""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from memory_run import memory_run

from runner import contract, node
from runner.node import (
    MAX_FRAMES,
    PB2_PREFIX,
    StartupError,
    load_module,
    prepare_pb2,
    remove_pb2,
    remove_stale_pb2,
    user_traceback,
)
from runner.transport.memory import MemoryTransport


@pytest.fixture
def clean_path() -> Iterator[None]:
    saved_path, saved_modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = saved_path
    for name in set(sys.modules) - saved_modules:
        del sys.modules[name]


def _env(version: Path, proto: str, handler: str = "src/n/main.py") -> contract.RunnerEnv:
    return contract.RunnerEnv(project="p", version="v1", version_dir=str(version), proto=proto,
                              node="n", handler=handler,
                              workflows=(contract.Workflow("w", "Run", ("n",)),))


def test_every_imported_proto_gets_a_module_that_wins_over_shipped_ones(
        tmp_path: Path, clean_path: None) -> None:
    version = tmp_path / "v"
    (version / "proto" / "common").mkdir(parents=True)
    (version / "proto" / "startup_api.proto").write_text(
        'syntax = "proto3"; package su; import "proto/common/startup_types.proto";\n'
        'import "google/protobuf/timestamp.proto";\n'
        "message Req { Word word = 1; google.protobuf.Timestamp at = 2; }\n"
        "service S { rpc Run (Req) returns (Req); }\n")
    (version / "proto" / "common" / "startup_types.proto").write_text(
        'syntax = "proto3"; package su; message Word { string text = 1; }\n')
    for stale in ("proto/startup_api_pb2.py", "proto/common/startup_types_pb2.py",
                  "src/n/startup_types_pb2.py"):
        (version / stale).parent.mkdir(parents=True, exist_ok=True)
        (version / stale).write_text("raise ImportError('a stale module was imported')\n")
    out = prepare_pb2(_env(version, "proto/startup_api.proto"), str(tmp_path))
    assert out.name.startswith(f"{PB2_PREFIX}{os.getpid()}-")
    assert sys.path[:3] == [str(out), str(out / "proto"), str(out / "proto" / "common")]
    api = importlib.import_module("startup_api_pb2")
    types = importlib.import_module("startup_types_pb2")  # by its name, as node code may
    req = api.Req(word=types.Word(text="hi"))
    assert req.word.text == "hi" and str(api.__file__).startswith(str(out))
    remove_pb2(out)
    assert not out.exists()


def test_stale_folders_of_gone_processes_are_removed(tmp_path: Path, clean_path: None) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(gone.stdout)
    folders = {
        "dead": tmp_path / f"{PB2_PREFIX}{dead_pid}-abc",
        "same pid, an earlier process": tmp_path / f"{PB2_PREFIX}{os.getpid()}-old",
        "live": tmp_path / f"{PB2_PREFIX}{os.getppid()}-abc",
        "unnamed": tmp_path / f"{PB2_PREFIX}abcdef",
        "other": tmp_path / "kai-proto-xyz",
    }
    for folder in folders.values():
        (folder / "sub").mkdir(parents=True)
    version = tmp_path / "v"
    version.mkdir()
    (version / "startup_one.proto").write_text('syntax = "proto3"; package one;\n')
    mine = prepare_pb2(_env(version, "startup_one.proto"), str(tmp_path))
    remove_stale_pb2(str(tmp_path))  # a second node in this process keeps the first's
    left = {name for name, folder in folders.items() if folder.exists()}
    assert left == {"live", "unnamed", "other"}
    assert mine.is_dir()
    remove_pb2(mine)


def test_a_failed_start_and_a_stop_remove_the_folder(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    ok = "from logic_pb2 import Req\n\nasync def handler(ctx, data: Req):\n    return data\n"
    broken = "def init(ctx):\n    {}['fr']\n\ndef handler(ctx, data):\n    return data\n"

    async def scenario() -> None:
        async with memory_run(tmp_path, {"ok": ok, "broken": broken}, start=False) as r:
            await r.start_node("ok")
            assert len(list(tmp.iterdir())) == 1
            env = replace(r.env, node="broken", handler="src/broken.py")
            proc = node.prepare(env, MemoryTransport(r.broker, env))
            assert len(list(tmp.iterdir())) == 2
            with pytest.raises(StartupError) as failed:
                await proc.start()  # init fails
            assert failed.value.code == 3
            assert failed.value.details == ("src/broken.py:2, in init: {}['fr']",
                                            "KeyError: 'fr'")
            await proc.stop(1.0)  # what `python -m runner` does after a failed start
            assert len(list(tmp.iterdir())) == 1
            with pytest.raises(StartupError):  # fails after its folder was made
                node.prepare(replace(env, handler="src/missing.py"))
            assert len(list(tmp.iterdir())) == 1
            await r.nodes.pop("ok")[0].stop(1.0)
        assert list(tmp.iterdir()) == []

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_src_is_on_sys_path_after_the_nodes_own_folder(tmp_path: Path,
                                                       clean_path: None) -> None:
    version = tmp_path / "v"
    (version / "src" / "n").mkdir(parents=True)
    (version / "src" / "common").mkdir()
    (version / "src" / "common" / "startup_text.py").write_text(
        "def up(s):\n    return s.upper()\n")
    # the node's own folder comes first: its helper wins over src/'s of the same name
    (version / "src" / "n" / "startup_helper.py").write_text("WHERE = 'node'\n")
    (version / "src" / "startup_helper.py").write_text("WHERE = 'src'\n")
    (version / "src" / "n" / "main.py").write_text(
        "from common.startup_text import up\nimport startup_helper\n\n"
        "def handler(ctx, data):\n    return data\n")
    (version / "startup_two.proto").write_text('syntax = "proto3"; package two;\n')
    env = _env(version, "startup_two.proto")
    out = prepare_pb2(env, str(tmp_path))
    mod = load_module(env)
    assert mod.module.up("a") == "A" and mod.module.startup_helper.WHERE == "node"
    own = sys.path.index(str(version / "src" / "n"))
    assert sys.path[own + 1] == str(version / "src")
    assert sys.path.index(str(out)) < own
    remove_pb2(out)


def _raise_deep(n: int) -> None:
    if n == 0:
        raise KeyError("fr")
    _raise_deep(n - 1)


def test_user_traceback_keeps_the_versions_frames_innermost_last() -> None:
    here = Path(__file__).parent
    try:
        _raise_deep(3)
    except KeyError as exc:
        lines = user_traceback(exc, str(here))
    name = Path(__file__).name
    assert lines[0].startswith(f"{name}:") and "in test_user_traceback" in lines[0]
    assert lines[-2] == f"{name}:{_raise_deep.__code__.co_firstlineno + 2}, in _raise_deep: " \
        "raise KeyError(\"fr\")"
    assert lines[-1] == "KeyError: 'fr'"
    assert len(lines) == 1 + 4 + 1
    try:
        _raise_deep(MAX_FRAMES + 5)
    except KeyError as exc:
        deep = user_traceback(exc, str(here))
    assert deep[0] == "... 7 more" and len(deep) == 1 + MAX_FRAMES + 1
    try:
        _raise_deep(0)
    except KeyError as exc:  # nothing of it is in the version: only the exception
        assert user_traceback(exc, str(here / "elsewhere")) == ("KeyError: 'fr'",)
