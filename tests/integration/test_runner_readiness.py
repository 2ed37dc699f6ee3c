"""The entrypoint is ready only while every node takes work, with real processes and a
real nats-server: not while a node is in a slow `init` (a call right after ready
succeeds), not once every replica of a node is killed, and again once one is restarted.
Also what JetStream itself says of a consumer (runner.transport.nats.consumer_state)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from runner_procs import NODE_READY, Proc, Version, http_get, wait_ready, write_version

from runner import contract, readiness
from runner.natsserver import NatsServer
from runner.proto import compile_proto
from runner.transport import ConsumerState, Delivery
from runner.transport.nats import NatsTransport

pytestmark = pytest.mark.integration

PROTO = """
syntax = "proto3";
package ready;
message Req { string text = 1; }
message Resp { string text = 1; }
service Ready { rpc Run (Req) returns (Resp); }
"""
FIRST = """
from api_pb2 import Req


async def handler(ctx, data: Req):
    return data
"""
# init takes INIT_SLEEP seconds (a model being loaded)
SLOW = """
import os
import time

from api_pb2 import Req, Resp


def init(ctx):
    time.sleep(float(os.environ["INIT_SLEEP"]))


def handler(ctx, data: Req):
    return Resp(text=data.text.upper())
"""
INIT_SLEEP = 3.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
POLL = 0.1  # seconds between two looks of the test


def _version(tmp_path: Path, url: str) -> Version:
    version = write_version(tmp_path, url, PROTO, {"first": FIRST, "slow": SLOW},
                            [contract.Workflow("run", "Run", ("first", "slow"))],
                            project="ready")
    version.extra_env = {"INIT_SLEEP": str(INIT_SLEEP)}
    return version


def _probes(ep: Proc) -> tuple[int, str, int]:
    """(/readyz status, its body, the gRPC health status of the whole server)."""
    code, body = http_get(ep.web_port, "/readyz")
    with grpc.insecure_channel(f"127.0.0.1:{ep.grpc_port}") as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # (no type stubs)
        status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
    return code, body, int(status)


def _until(ep: Proc, ready: bool, limit: float) -> tuple[int, str, int]:
    """Look at the probes until both say `ready` (bounded by `limit` seconds)."""
    want = (200, SERVING) if ready else (503, NOT_SERVING)
    end = time.monotonic() + limit
    for _ in range(int(limit / POLL) + 1):
        code, body, status = _probes(ep)
        if (code, status) == want:
            return code, body, status
        if time.monotonic() > end:
            break
        time.sleep(POLL)
    raise AssertionError(f"the entrypoint was not {'ready' if ready else 'not ready'} "
                         f"within {limit}s: /readyz {code} {body!r}, health {status}\n"
                         f"{ep.text()}")


def _call(version: Version, ep: Proc, text: str, timeout: float) -> str:
    compiled = compile_proto(version.dir, "proto/api.proto")
    req = compiled.message_class("ready.Req")(text=text)
    with grpc.insecure_channel(f"127.0.0.1:{ep.grpc_port}") as channel:
        rpc: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/ready.Ready/Run")
        raw = rpc(req.SerializeToString(), timeout=timeout)
    answer: Any = compiled.message_class("ready.Resp").FromString(raw)
    return str(answer.text)


def test_not_ready_during_a_slow_init_nor_once_a_nodes_replicas_are_killed(
        tmp_path: Path, shared_nats: NatsServer) -> None:
    version = _version(tmp_path, shared_nats.url)
    try:
        ep = version.entrypoint()
        wait_ready(ep, version.node("first"))
        waiting_for_slow = "not ready: no replica of node slow is taking work (yet)\n"
        for _ in range(int(10 / POLL)):  # bounded: until the entrypoint has seen first pull
            if _probes(ep)[1] == waiting_for_slow:
                break
            time.sleep(POLL)
        else:
            raise AssertionError("the entrypoint never saw node first take work")
        slow = [version.node("slow"), version.node("slow")]
        looks = 0
        for _ in range(int((INIT_SLEEP + 30) / POLL)):  # bounded: until a replica is up
            code, body, status = _probes(ep)
            if any(NODE_READY.search(p.text()) for p in slow):
                break  # it may pull now: what was seen is no longer conclusive
            # No replica had started pulling when the probes answered (it logs its ready
            # line before its first pull request leaves).
            assert (code, status) == (503, NOT_SERVING), (code, body, status)
            assert body == waiting_for_slow
            looks += 1
            time.sleep(POLL)
        else:
            raise AssertionError("node slow never started:\n" + slow[0].text())
        assert looks > 0
        _until(ep, True, 10)
        assert _call(version, ep, "right after", timeout=2) == "RIGHT AFTER"

        for proc in slow:
            proc.stop(signal.SIGKILL)
        # down after DOWN_AFTER without a puller, seen at the next poll (bounded by its ask)
        code, body, _ = _until(ep, False, readiness.DOWN_AFTER + readiness.POLL_READY
                               + readiness.ASK_WITHIN + 15)
        assert body == "not ready: no replica of node slow is taking work (yet)\n"
        assert "node slow: no replica seen taking work" in ep.text()

        back = version.node("slow")
        wait_ready(back)
        _until(ep, True, 10)
        assert _call(version, ep, "back", timeout=2) == "BACK"
        assert ep.popen.poll() is None
    finally:
        version.close()


def test_consumer_state_on_jetstream(tmp_path: Path, shared_nats: NatsServer) -> None:
    """num_waiting counts the pull requests of running replicas (none while one is busy,
    none once its connection is gone), deliveries and unsettled messages are counted, and
    a consumer that is not there is None."""
    env = contract.RunnerEnv(project="state", version="v1", version_dir=str(tmp_path),
                             proto="x", workflows=(contract.Workflow("wf", "Run", ("n",)),),
                             nats_url=shared_nats.url, storage="memory")

    async def scenario() -> None:
        watcher, node = NatsTransport(env), NatsTransport(replace(env, node="n"))
        await watcher.connect("watcher")
        await node.connect("node")
        try:
            stream = await node.ensure_work_stream("wf")
            assert await watcher.consumer_state(stream, "nobody", 5) is None
            assert await watcher.consumer_state("NO_SUCH_STREAM", "nobody", 5) is None
            consumer = await node.ensure_consumer("wf", 0, "n")
            assert await watcher.consumer_state(stream, consumer, 5) == ConsumerState(0, 0, 0)
            held: asyncio.Queue[Delivery] = asyncio.Queue()
            release = asyncio.Event()

            async def hold(d: Delivery) -> None:
                await held.put(d)
                await release.wait()
                await d.ack()

            puller = node.consume(stream, consumer, hold, 1)
            await puller.start()
            state = await _state(watcher, stream, consumer, lambda s: s.waiting > 0)
            assert state == ConsumerState(1, 0, 0)
            subject = contract.step_subject("state", "v1", "wf", 0)
            await watcher.publish(subject, b"x", {contract.HDR_MSG_ID: "c:0"}, 5)
            await asyncio.wait_for(held.get(), 10)
            # its only slot is taken: it asks for nothing, as a dead replica would
            state = await _state(watcher, stream, consumer, lambda s: s.waiting == 0)
            assert state == ConsumerState(0, 1, 1)
            release.set()
            state = await _state(watcher, stream, consumer,
                                 lambda s: s.waiting > 0 and s.unsettled == 0)
            assert state == ConsumerState(1, 1, 0)
            await node.close()  # its pull request goes with its connection
            state = await _state(watcher, stream, consumer, lambda s: s.waiting == 0)
            assert state == ConsumerState(0, 1, 0)
        finally:
            await node.close()
            await watcher.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


async def _state(t: NatsTransport, stream: str, consumer: str,
                 done: Callable[[ConsumerState], bool], limit: float = 10.0) -> ConsumerState:
    """The consumer's state once `done(state)` holds (bounded by `limit` seconds)."""
    state = None
    for _ in range(int(limit / 0.05)):
        state = await t.consumer_state(stream, consumer, 5)
        assert state is not None
        if done(state):
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"consumer {stream}/{consumer}: still {state}")
