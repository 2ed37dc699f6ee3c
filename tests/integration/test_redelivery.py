"""Redelivery timing against a real nats-server: a slow handler is kept alive (delivered
once, however long it takes), and a SIGKILLed replica's work is delivered again well inside
the client's deadline, with the default ack wait, handled once by the next node.

The processes run directly (`python -m runner ...`, tests/integration/runner_procs.py), not
through `kai dev`."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from runner_procs import TRACE_PACKAGE, TRACE_RPC, Proc, Version, trace_version, traced, wait_ready

from runner import contract
from runner.natsserver import NatsServer
from runner.proto import compile_proto

pytestmark = pytest.mark.integration

def _version(tmp_path: Path, url: str, chain: tuple[str, ...], **env: object) -> Version:
    return trace_version(tmp_path, url, chain, "redeliver", **env)


def test_a_handler_slower_than_three_ack_waits_is_delivered_once(
        tmp_path: Path, nats_server: NatsServer) -> None:
    version = _version(tmp_path, nats_server.url, ("last",), ack_wait=1.0)
    compiled = compile_proto(version.dir, "proto/api.proto")
    try:
        ep, node = version.entrypoint(), version.node("last")
        wait_ready(ep, node)
        req = compiled.message_class(f"{TRACE_PACKAGE}.Req")(id="slow", sleep=3.5)
        with grpc.insecure_channel(f"127.0.0.1:{ep.grpc_port}") as channel:
            stub: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(TRACE_RPC)
            raw = stub(req.SerializeToString(), timeout=15)
        answer: Any = compiled.message_class(f"{TRACE_PACKAGE}.Resp").FromString(raw)
        assert answer.id == "slow"
        time.sleep(1.5)  # past another ack wait: nothing comes back
        handled = traced(tmp_path, "last")
        assert [h[1] for h in handled] == ["slow"], handled
    finally:
        version.close()


CALLS = 1200
IN_FLIGHT = 10
DEADLINE = 8.0


def test_a_sigkilled_replica_twice_loses_nothing_and_duplicates_nothing(
        tmp_path: Path, nats_server: NatsServer) -> None:
    """2 replicas of the middle node; one is SIGKILLed, restarted and SIGKILLed again while
    1,200 calls run 10 at a time with an 8 s deadline, under the default ack wait."""
    assert contract.DEFAULT_ACK_WAIT * 1.5 < DEADLINE
    version = _version(tmp_path, nats_server.url, ("first", "middle", "last"))
    compiled = compile_proto(version.dir, "proto/api.proto")
    req_class: Any = compiled.message_class(f"{TRACE_PACKAGE}.Req")
    resp_class: Any = compiled.message_class(f"{TRACE_PACKAGE}.Resp")
    victims: list[int] = []
    try:
        ep = version.entrypoint()
        first, last = version.node("first"), version.node("last")
        victim, survivor = version.node("middle"), version.node("middle")
        wait_ready(ep, first, last, victim, survivor)

        async def scenario() -> list[tuple[str, grpc.StatusCode, str]]:
            done: list[tuple[str, grpc.StatusCode, str]] = []
            ids = iter(range(CALLS))
            async with grpc.aio.insecure_channel(f"127.0.0.1:{ep.grpc_port}") as channel:
                stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                    TRACE_RPC)

                async def worker() -> None:
                    for i in ids:
                        rid = f"r{i}"
                        payload = req_class(id=rid, sleep=0.04).SerializeToString()
                        try:
                            raw = await stub(payload, timeout=DEADLINE)
                            done.append((rid, grpc.StatusCode.OK,
                                         resp_class.FromString(raw).id))
                        except grpc.aio.AioRpcError as exc:
                            done.append((rid, exc.code(), exc.details() or ""))

                def holds_work(pid: int) -> bool:
                    """The process has started a request that has not reached the last node."""
                    started = {r for p, r, _ in traced(tmp_path, "middle") if p == pid}
                    return bool(started - {r for _, r, _ in traced(tmp_path, "last")})

                async def kill_when(count: int, proc: Proc) -> None:
                    for _ in range(6000):  # bounded: 60 s
                        if len(done) >= count and holds_work(proc.popen.pid):
                            break
                        await asyncio.sleep(0.01)
                    victims.append(proc.popen.pid)
                    proc.popen.send_signal(signal.SIGKILL)
                    await asyncio.to_thread(proc.popen.wait, 10)

                async def chaos() -> None:
                    await kill_when(CALLS // 4, victim)
                    again = version.node("middle")
                    await asyncio.to_thread(wait_ready, again)
                    await kill_when(CALLS * 3 // 4, again)

                await asyncio.gather(chaos(), *(worker() for _ in range(IN_FLIGHT)))
            return done

        done = asyncio.run(asyncio.wait_for(scenario(), 90))
    finally:
        version.close()

    failed = [d for d in done if d[1] != grpc.StatusCode.OK]
    assert failed == [], failed[:5]
    assert sorted(d[0] for d in done) == sorted(f"r{i}" for i in range(CALLS))
    assert all(d[0] == d[2] for d in done)
    assert len(victims) == 2
    last_handled = traced(tmp_path, "last")
    by_request = collections.Counter(h[2] for h in last_handled)
    twice = [r for r, n in by_request.items() if n > 1]
    assert twice == [], f"handled twice by the next node: {twice[:5]}"
    assert sorted(h[1] for h in last_handled) == sorted(f"r{i}" for i in range(CALLS))
    # the kills hit work in flight: some of a victim's requests were handled again elsewhere
    middle = traced(tmp_path, "middle")
    by_pid: dict[int, set[str]] = collections.defaultdict(set)
    for pid, rid, _ in middle:
        by_pid[pid].add(rid)
    others = set().union(*(ids for pid, ids in by_pid.items() if pid not in victims))
    assert any(by_pid[pid] & others for pid in victims), "no kill hit a request in flight"
