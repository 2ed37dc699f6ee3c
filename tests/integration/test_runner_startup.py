"""A node's start-up, through the real processes: the version's src/ and the protos its
proto imports (a stale shipped `*_pb2.py` never wins), the author's frames when `init`
fails, and the generated modules' folder, removed on every exit and after a killed one."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest
from local_run import kai, running
from local_run import write_version as write_krt_version
from runner_procs import Version, wait_ready, write_version

from runner import contract
from runner.natsserver import NatsServer
from runner.supervisor import free_port

pytestmark = pytest.mark.integration

# What protobuf < 3.20 generated: protobuf 4+ refuses it at import.
STALE_PB2 = """\
from google.protobuf import descriptor as _descriptor
_WORD = _descriptor.Descriptor(
    name='Word', full_name='shared.Word', filename=None, file=None, containing_type=None,
    fields=[], extensions=[], nested_types=[], enum_types=[], serialized_options=None,
    is_extendable=False, syntax='proto3', extension_ranges=[], oneofs=[],
    serialized_start=1, serialized_end=2)
"""

SHARED_PROTO = """\
    syntax = "proto3";
    package shared;
    import "types.proto";
    message Request { Word word = 1; }
    message Response { Word word = 1; string where = 2; }
    service Entrypoint { rpc Shout (Request) returns (Response) {}; }
"""

TYPES_PROTO = """\
syntax = "proto3";
package shared;
message Word { string text = 1; }
"""

SHOUT = """\
    from common.text import shout
    from public_input_pb2 import Request, Response
    from types_pb2 import Word


    def handler(ctx, data: Request):
        return Response(word=Word(text=shout(data.word.text)), where=shout.__module__)
"""

TEXT = """\
def shout(text):
    return text.upper() + "!"
"""


def _pb2_folders(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith("kai-pb2-"))


def test_shared_src_and_imported_protos_win_over_stale_pb2_files(
        tmp_path: Path, shared_nats: NatsServer) -> None:
    version = write_krt_version(tmp_path, "shared-v1", SHARED_PROTO,
                                {"shout": SHOUT}, {"work": ("Shout", ["shout"])})
    (version / "types.proto").write_text(TYPES_PROTO)
    for stale in ("types_pb2.py", "public_input_pb2.py", "src/shout/types_pb2.py"):
        (version / stale).write_text(STALE_PB2)
    (version / "src" / "common").mkdir()
    (version / "src" / "common" / "text.py").write_text(TEXT)
    tmp = tmp_path / "work" / "pods" / "shared-v1-shout" / "tmp"  # the pod's /tmp

    async def scenario() -> None:
        async with running(version, shared_nats.url, tmp_path / "work") as run:
            reply = await run.call("Shout", {"word": {"text": "hi"}})
            assert _pb2_folders(tmp)  # the running node's
        assert reply.word.text == "HI!"  # type: ignore[attr-defined]
        assert reply.where == "common.text"  # type: ignore[attr-defined]

    asyncio.run(asyncio.wait_for(scenario(), 90))
    assert _pb2_folders(tmp) == []  # stopped with SIGTERM: removed


NODE_INIT = """\
from common.tables import lookup


def init(ctx):
    ctx.set("greeting", lookup("fr"))


def handler(ctx, data):
    return data
"""

TABLES = """\
TABLES = {"en": "hello"}


def lookup(lang):
    return TABLES[lang]
"""

ECHO_PROTO = """
syntax = "proto3";
package echo;
message Req { string text = 1; }
service Echo { rpc Echo (Req) returns (Req); }
"""

ECHO = """\
from api_pb2 import Req


def handler(ctx, data: Req):
    return data
"""


def _echo_version(tmp_path: Path, url: str, code: str) -> Version:
    v = write_version(tmp_path, url, ECHO_PROTO, {"echo": code},
                      [contract.Workflow("echo", "Echo", ("echo",))], project="startup")
    (v.dir / "src" / "common").mkdir()
    (v.dir / "src" / "common" / "tables.py").write_text(TABLES)
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    v.extra_env = {"TMPDIR": str(tmp)}
    return v


def test_a_failing_init_shows_the_authors_frames_then_the_exception(
        tmp_path: Path, shared_nats: NatsServer) -> None:
    version = _echo_version(tmp_path, shared_nats.url, NODE_INIT)
    try:
        proc = version.node("echo")
        assert proc.wait_exit(20) == 3
        lines = proc.text().splitlines()
    finally:
        version.close()
    start = lines.index("node echo: cannot start: init failed: KeyError: 'fr'")
    assert lines[start + 1:start + 4] == [
        "node echo:   src/echo/main.py:5, in init: ctx.set(\"greeting\", lookup(\"fr\"))",
        "node echo:   src/common/tables.py:5, in lookup: return TABLES[lang]",
        "node echo:   KeyError: 'fr'",
    ]
    assert "Traceback" not in "\n".join(lines)
    assert _pb2_folders(tmp_path / "tmp") == []  # a failed start removes it too


def test_an_import_error_in_shared_code_shows_where(tmp_path: Path,
                                                    shared_nats: NatsServer) -> None:
    version = _echo_version(tmp_path, shared_nats.url, "from common.tables import nope\n")
    try:
        proc = version.node("echo")
        assert proc.wait_exit(20) == 2
        out = proc.text()
    finally:
        version.close()
    assert "node echo: cannot start: importing src/echo/main.py failed (line 1): ImportError" \
        in out
    assert "node echo:   src/echo/main.py:1, in <module>: from common.tables import nope" in out
    assert _pb2_folders(tmp_path / "tmp") == []


def test_kai_dev_shows_the_frames_of_a_failing_init(tmp_path: Path) -> None:
    version = write_krt_version(tmp_path, "frames-v1", ECHO_PROTO.replace("api", "x"),
                                {"bad": NODE_INIT}, {"work": ("Echo", ["bad"])})
    (version / "src" / "common").mkdir()
    (version / "src" / "common" / "tables.py").write_text(TABLES)
    done = subprocess.run(
        kai("dev", str(version), "--port", str(free_port()), "--web-port", str(free_port())),
        capture_output=True, text=True, timeout=90)
    assert done.returncode != 0
    shown = done.stderr.split("error: ", 1)[-1]
    assert "node bad: cannot start: init failed: KeyError: 'fr'" in shown
    assert "src/common/tables.py:5, in lookup: return TABLES[lang]" in shown
    assert "Traceback" not in shown


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_the_pb2_folder_is_removed_on_exit_and_a_killed_ones_at_the_next_start(
        tmp_path: Path, shared_nats: NatsServer, sig: signal.Signals) -> None:
    version = _echo_version(tmp_path, shared_nats.url, ECHO)
    tmp = tmp_path / "tmp"
    live = tmp / f"kai-pb2-{os.getpid()}-kept"  # a running process's (this test's)
    unnamed = tmp / "kai-pb2-oldstyle"  # not named by pid: whose it is cannot be told
    for folder in (live, unnamed):
        folder.mkdir()
    try:
        killed = version.node("echo")
        wait_ready(killed)
        left = tmp / next(f for f in _pb2_folders(tmp)
                          if f.startswith(f"kai-pb2-{killed.popen.pid}-"))
        assert (left / "api_pb2.py").is_file() or any(left.rglob("api_pb2.py"))
        killed.stop(signal.SIGKILL)
        assert left.is_dir()  # nothing runs on SIGKILL ...
        node = version.node("echo")
        wait_ready(node)
        assert not left.exists()  # ... the next start removes it
        mine = [f for f in _pb2_folders(tmp) if f.startswith(f"kai-pb2-{node.popen.pid}-")]
        assert len(mine) == 1
        assert node.stop(sig) == 0
        assert _pb2_folders(tmp) == sorted([live.name, unnamed.name])
    finally:
        version.close()
