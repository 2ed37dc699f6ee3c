"""The entrypoint's logic on the in-memory transport, over real gRPC: bad requests, the
broker unreachable or losing a stream, payload limits, deadlines, and a node giving up."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from memory_run import MemoryRun, memory_run

from runner import contract
from runner.transport import Delivery
from runner.transport.memory import MemoryBroker, MemoryTransport

ECHO = """
from logic_pb2 import Req, Resp

async def handler(ctx, data: Req):
    return Resp(text=data.text, blob=b"x" * data.grow)
"""


def run(scenario: Callable[[], Awaitable[None]], limit: float = 30) -> None:
    asyncio.run(asyncio.wait_for(scenario(), limit))


async def failure(r: MemoryRun, deadline: float = 5.0, **fields: object
                  ) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await r.call(deadline=deadline, **fields)
    return failed.value.code(), failed.value.details() or ""


def test_a_request_that_does_not_decode_is_invalid_argument(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"echo": ECHO}) as r:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await r.call_raw(b"\xff\xff\xff")
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "the request is not a valid logic.Req" in (failed.value.details() or "")

    run(scenario)


def test_unreachable_broker_answers_unavailable_at_once_then_recovers(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"echo": ECHO}) as r:
            ep = r.entrypoint
            assert ep is not None and ep.ready()
            t = ep.transport
            assert isinstance(t, MemoryTransport)
            await t.disconnect()
            assert not ep.ready()
            code, details = await failure(r, text="a")
            assert code == grpc.StatusCode.UNAVAILABLE
            assert details == "NATS is not reachable; try again shortly"
            await t.reconnect()
            assert ep.ready()
            assert (await r.call(text="back")).text == "back"

    run(scenario)


def test_a_lost_stream_answers_unavailable_and_is_created_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"echo": ECHO}, start=False) as r:
            await r.start_entrypoint()
            name = contract.stream_name("logic", "v1", "wf")
            del r.broker.streams[name]
            code, details = await failure(r, text="a")
            assert code == grpc.StatusCode.UNAVAILABLE
            assert "the stream of workflow wf is not there (re-creating it)" in details
            for _ in range(200):
                if name in r.broker.streams:
                    break
                await asyncio.sleep(0.01)
            assert name in r.broker.streams
            await r.start_node("echo")
            assert (await r.call(text="again")).text == "again"

    run(scenario)


def test_payload_limits_are_resource_exhausted(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = MemoryBroker(max_payload=2000)  # larger payloads go through claims
        async with memory_run(tmp_path, {"echo": ECHO}, broker=broker, max_message=4000) as r:
            assert (await r.call(text="x" * 3000)).text == "x" * 3000
            code, details = await failure(r, text="x" * 5000)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details.startswith("the request is 5003 bytes (")
            assert details.endswith("with its envelope), over the runner's max message of "
                                    "4000 bytes (kai.yaml runtime.maxMessage)")
            code, details = await failure(r, text="small", grow=5000)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details.startswith("node echo: the reply is")

    run(scenario)


def test_no_answer_within_the_deadline_is_deadline_exceeded(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"echo": ECHO}, start=False) as r:
            await r.start_entrypoint()  # no node runs
            code, _ = await failure(r, deadline=0.5, text="a")
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED

    run(scenario)


def test_a_node_that_never_finishes_a_message_gives_up_and_the_call_is_internal(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"echo": ECHO}, start=False, ack_wait=0.05,
                              max_deliver=2) as r:
            ep = await r.start_entrypoint()
            # a replica that crashes on every message: takes it, never settles it
            dying = MemoryTransport(r.broker, r.env)
            await dying.connect("dying")
            consumer = await dying.ensure_consumer("wf", 0, "echo")

            async def never(_: Delivery) -> None:
                await asyncio.sleep(30)

            c = dying.consume(contract.stream_name("logic", "v1", "wf"), consumer, never, 4)
            await c.start()
            code, details = await failure(r, deadline=5, text="a")
            assert code == grpc.StatusCode.INTERNAL
            assert details == ("node echo: gave up on this request after 2 attempts (the node "
                               "crashed or did not finish in time on each)")
            assert r.broker.pending(contract.stream_name("logic", "v1", "wf")) == 0  # deleted
            assert ep.pending == {}
            await c.stop(0.01)

    run(scenario)
