"""At-most-once workflows through real processes, a real nats-server and real gRPC: core NATS
request/reply with queue groups, no JetStream stream; what is given up (a SIGKILLed replica's
call fails UNAVAILABLE, where at least once delivers it again and it succeeds; no backlog)
and what is kept (replicas share the calls, deadlines, readiness).

The processes run directly (`python -m runner ...`, tests/integration/runner_procs.py)."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import nats
import nats.js.errors
import pytest
from runner_procs import (
    TRACE_PACKAGE,
    TRACE_RPC,
    Proc,
    Version,
    http_get,
    trace_version,
    traced,
    wait_ready,
    wait_taking_work,
)

from runner import contract
from runner.natsserver import NatsServer
from runner.proto import compile_proto

pytestmark = pytest.mark.integration

PROJECT = "amo"
CHAIN = ("first", "middle", "last")


def _version(tmp_path: Path, url: str, delivery: str = contract.AT_MOST_ONCE,
             **env: object) -> Version:
    return trace_version(tmp_path, url, CHAIN, PROJECT, delivery, **env)


class Client:
    """Calls of rpc Run of a trace version (TRACE_PROTO), over one channel."""

    def __init__(self, version: Version, port: int) -> None:
        compiled = compile_proto(version.dir, "proto/api.proto")
        self.req: Any = compiled.message_class(f"{TRACE_PACKAGE}.Req")
        self.resp: Any = compiled.message_class(f"{TRACE_PACKAGE}.Resp")
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(
            TRACE_RPC)

    def call(self, rid: str, sleep: float = 0.0, timeout: float = 10.0) -> Any:
        raw = self.stub(self.req(id=rid, sleep=sleep).SerializeToString(), timeout=timeout)
        return self.resp.FromString(raw)

    def failure(self, rid: str, sleep: float = 0.0,
                timeout: float = 10.0) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as err:
            self.call(rid, sleep, timeout)
        return err.value.code(), err.value.details() or ""

    def close(self) -> None:
        self.channel.close()


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Version, NatsServer,
                                                                      Client]]:
    """One at-most-once chain first → middle (2 replicas) → last."""
    root = tmp_path_factory.mktemp("amo")
    with NatsServer(store_dir=root / "nats") as server:
        version = _version(root, server.url)
        ep = version.entrypoint()
        procs = [ep, version.node("first"), version.node("middle"), version.node("middle"),
                 version.node("last")]
        client: Client | None = None
        try:
            wait_ready(*procs)
            wait_taking_work(ep)
            client = Client(version, ep.grpc_port)
            yield version, server, client
        finally:
            if client is not None:
                client.close()
            version.close()


def test_a_three_node_chain_answers(chain: tuple[Version, NatsServer, Client]) -> None:
    version, _, client = chain
    reply = client.call("hello")
    assert reply.id == "hello" and reply.request_id
    assert [h[1] for h in traced(version.dir.parent, "last") if h[1] == "hello"] == ["hello"]


def test_no_stream_consumer_or_claim_bucket_exists(
        chain: tuple[Version, NatsServer, Client]) -> None:
    _, server, client = chain
    client.call("streams")

    async def streams() -> list[str]:
        nc = await nats.connect(server.url)
        try:
            jsm = nc.jsm()
            names = sorted(s.config.name or "" for s in await jsm.streams_info())
            with pytest.raises(nats.js.errors.NotFoundError):
                await jsm.stream_info(contract.stream_name(PROJECT, "v1", "run"))
            return names
        finally:
            await nc.close()

    # the project's data stream only (ctx.db and the records use it whatever the delivery)
    assert asyncio.run(asyncio.wait_for(streams(), 20)) == [contract.data_stream_name(PROJECT)]


def test_two_replicas_share_the_load(chain: tuple[Version, NatsServer, Client]) -> None:
    version, _, client = chain
    ids = [f"share{i}" for i in range(40)]

    async def calls() -> list[str]:
        async with grpc.aio.insecure_channel(
                f"127.0.0.1:{version.procs[0].grpc_port}") as channel:
            stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(TRACE_RPC)
            raws = await asyncio.gather(*(stub(client.req(id=i).SerializeToString(),
                                               timeout=10) for i in ids))
        return [client.resp.FromString(r).id for r in raws]

    assert sorted(asyncio.run(asyncio.wait_for(calls(), 30))) == sorted(ids)
    middle = [h for h in traced(version.dir.parent, "middle") if h[1] in ids]
    assert sorted(h[1] for h in middle) == sorted(ids)  # each handled once
    by_pid = collections.Counter(h[0] for h in middle)
    replicas = {p.popen.pid for p in version.procs if p.name == "middle"}
    assert set(by_pid) == replicas, by_pid  # both took calls


def test_the_deadline_is_honoured(chain: tuple[Version, NatsServer, Client]) -> None:
    _, _, client = chain
    began = time.monotonic()
    code, _ = client.failure("late", sleep=5.0, timeout=0.5)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - began < 4.0  # by the deadline, not the handler
    assert client.call("after").id == "after"


def test_the_entrypoint_is_ready_and_each_node_too(
        chain: tuple[Version, NatsServer, Client]) -> None:
    version, _, _ = chain
    for proc in version.procs:
        assert http_get(proc.web_port, "/readyz") == (200, "ready\n"), proc.name


def test_no_backlog_and_a_slow_call_kept_alive(tmp_path: Path,
                                               nats_server: NatsServer) -> None:
    """A call while no replica of the first node runs is UNAVAILABLE at once (not run); of a
    later node, UNAVAILABLE (it may have partly run); a call five ack waits long is answered
    (its signs of life keep it)."""
    version = _version(tmp_path, nats_server.url, ack_wait=0.5)
    try:
        ep = version.entrypoint()
        wait_ready(ep)
        status, body = http_get(ep.web_port, "/readyz")
        assert status == 503 and "no replica of nodes first, last, middle" in body
        client = Client(version, ep.grpc_port)
        try:
            began = time.monotonic()
            assert client.failure("nobody", timeout=10) == (
                grpc.StatusCode.UNAVAILABLE, "no replica of node first takes calls (workflow "
                "run is at-most-once and keeps no backlog): not run; try again shortly")
            assert time.monotonic() - began < 5.0  # not kept until the deadline (10 s)
            first = version.node("first")
            wait_ready(first)
            began = time.monotonic()
            code, details = client.failure("half", timeout=10)
            assert code == grpc.StatusCode.UNAVAILABLE and time.monotonic() - began < 5.0
            assert details == ("no replica of node middle takes calls (workflow run is "
                               "at-most-once): the request may have partly run (through node "
                               "first)")
            assert [h[1] for h in traced(tmp_path, "first")] == ["half"]
            rest = [version.node("middle"), version.node("last")]
            wait_ready(*rest)
            wait_taking_work(ep)
            assert client.call("slow", sleep=2.5, timeout=10).id == "slow"
            assert [h[1] for h in traced(tmp_path, "middle")] == ["slow"]
        finally:
            client.close()
    finally:
        version.close()


ACK_WAIT = 1.0
DEADLINE = 20.0


@pytest.mark.parametrize("delivery", contract.DELIVERY_MODES)
def test_sigkill_of_the_replica_holding_a_call(tmp_path: Path, nats_server: NatsServer,
                                               delivery: str) -> None:
    """At most once the call fails UNAVAILABLE about an ack wait after the kill, long before
    its deadline, and is never run again; at least once it is delivered again and answered."""
    version = _version(tmp_path, nats_server.url, delivery, ack_wait=ACK_WAIT)
    try:
        ep = version.entrypoint()
        replicas = [version.node("middle"), version.node("middle")]
        wait_ready(ep, version.node("first"), *replicas, version.node("last"))
        wait_taking_work(ep)
        client = Client(version, ep.grpc_port)
        try:
            result: dict[str, Any] = {}

            def call() -> None:
                try:
                    result["reply"] = client.call("victim", sleep=4.0, timeout=DEADLINE)
                except grpc.RpcError as exc:
                    result["error"] = (exc.code(), exc.details())

            async def scenario() -> float:
                calling = asyncio.create_task(asyncio.to_thread(call))
                holder: Proc | None = None
                for _ in range(2000):  # bounded: 20 s
                    pids = [h[0] for h in traced(tmp_path, "middle") if h[1] == "victim"]
                    if pids:
                        holder = next(p for p in replicas if p.popen.pid == pids[0])
                        break
                    await asyncio.sleep(0.01)
                assert holder is not None, "no replica took the call"
                holder.popen.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                await asyncio.to_thread(holder.popen.wait, 10)
                await calling
                return time.monotonic() - killed

            after_kill = asyncio.run(asyncio.wait_for(scenario(), DEADLINE + 20))
        finally:
            client.close()
        ran = traced(tmp_path, "middle")
        if delivery == contract.AT_LEAST_ONCE:
            assert result.get("reply") is not None, result
            assert result["reply"].id == "victim"
            assert len({pid for pid, rid, _ in ran if rid == "victim"}) == 2  # run again
            return
        assert result.get("error") == (
            grpc.StatusCode.UNAVAILABLE,
            f"no sign of life from the node handling this call for {ACK_WAIT:g}s (a replica "
            "crashed or lost NATS); at-most-once calls are never delivered again, and this "
            "one may have partly run"), result
        assert after_kill < DEADLINE / 2  # about the ack wait, not the deadline
        time.sleep(ACK_WAIT * 2)
        assert [rid for _, rid, _ in traced(tmp_path, "middle")] == ["victim"]  # never again
        assert traced(tmp_path, "last") == []
    finally:
        version.close()
