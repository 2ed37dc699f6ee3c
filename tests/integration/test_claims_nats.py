"""The claim check against a real nats-server (max payload 1 MiB, its default): an 8 MiB
request and an 8 MiB node output cross a 3-node chain through the version's object store
bucket, which is empty once they are answered; a replica SIGKILLed while it holds a large
input leaves that input for the replica the step is delivered to next."""

from __future__ import annotations

import asyncio
import hashlib
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from runner_procs import Version, wait_ready, write_version

from runner import contract
from runner.natsserver import NatsServer
from runner.proto import compile_proto

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
PROTO = """
syntax = "proto3";
package claims;
message Req { bytes blob = 1; int32 grow = 2; double sleep = 3; }
message Resp { bytes blob = 1; string digest = 2; }
service Chain { rpc Run (Req) returns (Resp); }
"""

# Each node appends "<pid> <bytes of its input blob>" to <LOG_DIR>/<node>.log. "first" makes
# a blob of `grow` bytes when asked; "middle" sleeps `sleep` seconds, and fails a blob that
# starts with "fail"; "last" answers with the blob and its digest.
NODE = '''
import asyncio
import hashlib
import os

from api_pb2 import Req, Resp


async def handler(ctx, data: Req):
    with open(os.path.join(os.environ["LOG_DIR"], ctx.node + ".log"), "a") as f:
        f.write(f"{os.getpid()} {len(data.blob)}\\n")
    if ctx.node == "middle" and data.blob.startswith(b"fail"):
        raise RuntimeError("refused")
    if ctx.node == "first" and data.grow:
        return Req(blob=bytes(range(256)) * (data.grow // 256), sleep=data.sleep)
    if ctx.node == "middle" and data.sleep:
        await asyncio.sleep(data.sleep)
    if ctx.node == "last":
        return Resp(blob=data.blob, digest=hashlib.sha256(data.blob).hexdigest())
    return data
'''
CHAIN = ("first", "middle", "last")
BUCKET = contract.claims_bucket("claims", "v1")
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * MiB),
                   ("grpc.max_send_message_length", 64 * MiB)]


def _version(tmp_path: Path, url: str, **env: object) -> Version:
    version = write_version(tmp_path, url, PROTO, {name: NODE for name in CHAIN},
                            [contract.Workflow("run", "Run", CHAIN)], project="claims",
                            **env)  # type: ignore[arg-type]
    version.extra_env = {"LOG_DIR": str(tmp_path)}
    return version


def _call(port: int, compiled: Any, timeout: float = 30.0, **fields: object) -> Any:
    req = compiled.message_class("claims.Req")(**fields)
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
        stub: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/claims.Chain/Run")
        raw = stub(req.SerializeToString(), timeout=timeout)
    return compiled.message_class("claims.Resp").FromString(raw)


def _objects_left(url: str) -> int:
    """How many messages the claim bucket's stream holds (chunks and metadata)."""
    async def count() -> int:
        nc = await nats.connect(url)
        try:
            info = await nc.jsm().stream_info(f"OBJ_{BUCKET}")
            return int(info.state.messages)
        finally:
            await nc.close()

    return asyncio.run(count())


def _wait_empty(url: str, limit: float = 10.0) -> None:
    left = -1
    for _ in range(int(limit / 0.1)):  # the last ack's delete may trail the answer a little
        left = _objects_left(url)
        if left == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"{left} messages left in the bucket's stream")


def _lines(path: Path) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    return [(int(p), int(n)) for p, n in (line.split() for line in path.read_text().splitlines())]


def test_8_mib_request_and_8_mib_node_output_cross_a_real_chain(
        tmp_path: Path, nats_server: NatsServer) -> None:
    version = _version(tmp_path, nats_server.url)
    compiled = compile_proto(version.dir, "proto/api.proto")
    try:
        ep = version.entrypoint()
        wait_ready(ep, *(version.node(n) for n in CHAIN))
        blob = random.Random(8).randbytes(8 * MiB)
        got = _call(ep.grpc_port, compiled, blob=blob)
        assert got.blob == blob
        assert got.digest == hashlib.sha256(blob).hexdigest()
        _wait_empty(nats_server.url)
        grown = _call(ep.grpc_port, compiled, grow=8 * MiB)  # a small request, a large output
        assert grown.blob == bytes(range(256)) * (8 * MiB // 256)
        assert [n for _, n in _lines(tmp_path / "last.log")] == [8 * MiB, 8 * MiB]
        _wait_empty(nats_server.url)
        with pytest.raises(grpc.RpcError) as failed:  # fails in the middle: no object left
            _call(ep.grpc_port, compiled, blob=b"fail" + blob)
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        assert failed.value.details() == "node middle: refused"
        _wait_empty(nats_server.url)
        assert _call(ep.grpc_port, compiled, blob=b"small").blob == b"small"
    finally:
        version.close()


def test_a_replica_sigkilled_holding_a_large_input_leaves_it_for_the_next(
        tmp_path: Path, nats_server: NatsServer) -> None:
    version = _version(tmp_path, nats_server.url, ack_wait=1.0)
    compiled = compile_proto(version.dir, "proto/api.proto")
    try:
        ep = version.entrypoint()
        first, last = version.node("first"), version.node("last")
        a, b = version.node("middle"), version.node("middle")
        wait_ready(ep, first, last, a, b)
        by_pid = {a.popen.pid: a, b.popen.pid: b}
        blob = random.Random(3).randbytes(3 * MiB)
        answer: list[Any] = []
        caller = threading.Thread(target=lambda: answer.append(
            _call(ep.grpc_port, compiled, timeout=30, blob=blob, sleep=4.0)))
        caller.start()
        holder = None
        for _ in range(300):  # bounded: 30 s
            seen = _lines(tmp_path / "middle.log")
            if seen:
                holder = seen[0]
                break
            time.sleep(0.1)
        assert holder is not None and holder[1] == 3 * MiB, holder
        by_pid[holder[0]].popen.send_signal(signal.SIGKILL)
        caller.join(40)
        assert not caller.is_alive()
        assert answer and answer[0].blob == blob
        handled = _lines(tmp_path / "middle.log")
        assert len(handled) == 2 and handled[0][0] != handled[1][0], handled
        assert handled[1][1] == 3 * MiB  # the redelivered step found its input
        _wait_empty(nats_server.url)
    finally:
        version.close()
