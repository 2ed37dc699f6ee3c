"""Request ids on the in-memory transport, over real gRPC: the client's x-request-id (when
valid) is the request id the nodes, their logs and their records see, and every answer,
OK or not, carries it back in its initial metadata; each call keeps a unique call id."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from memory_run import MemoryRun, memory_run

from runner import contract
from runner.transport import Delivery, call_id_of, request_id_of, step_headers
from runner.transport.memory import MemoryTransport

FIRST = """
from logic_pb2 import Req

async def handler(ctx, data: Req):
    data.text = data.text + "|" + ctx.request_id
    return data
"""

LAST = """
import grpc
from logic_pb2 import Req, Resp
from runner.sdk import Abort

def handler(ctx, data: Req):
    if data.text.startswith("missing|"):
        raise Abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    if data.text.startswith("boom|"):
        raise ValueError("it broke")
    ctx.logger.info("handled %s", data.text)
    ctx.prediction.save("cat", "dog")
    ctx.db.save("seen", {"text": data.text})
    return Resp(text=data.text, seen=ctx.request_id)
"""

KEY = contract.REQUEST_ID_METADATA


def run(scenario: Callable[[], Awaitable[None]], limit: float = 30) -> None:
    asyncio.run(asyncio.wait_for(scenario(), limit))


async def call(r: MemoryRun, text: str, request_id: str | None = None,
               payload: bytes | None = None) -> tuple[Any, str, grpc.StatusCode, str]:
    """(reply or None, the x-request-id of the answer's initial metadata, code, details)."""
    assert r.channel is not None
    stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = r.channel.unary_unary(
        "/logic.Logic/Run")
    metadata = None if request_id is None else ((KEY, request_id),)
    raw = r.request(text=text).SerializeToString() if payload is None else payload
    rpc = stub(raw, timeout=5, metadata=metadata)
    reply: Any = None
    try:
        reply = r.compiled.message_class("logic.Resp").FromString(await rpc)
    except grpc.aio.AioRpcError:
        pass
    initial = await rpc.initial_metadata()
    values = [v for k, v in (initial or ()) if k == KEY]
    assert len(values) == 1, initial
    value = values[0]
    returned = value.decode() if isinstance(value, bytes) else value
    return reply, returned, await rpc.code(), await rpc.details() or ""


def test_the_clients_request_id_is_the_one_nodes_logs_and_records_see(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"first": FIRST, "last": LAST}) as r:
            with caplog.at_level(logging.INFO, logger="node.last"):
                reply, returned, code, _ = await call(r, "a", "trace-42:x_~!")
            assert code == grpc.StatusCode.OK
            assert returned == "trace-42:x_~!"
            assert reply.seen == "trace-42:x_~!" and reply.text == "a|trace-42:x_~!"
            assert "[request=trace-42:x_~! node=last workflow=wf] handled a|" in caplog.text
            for _ in range(100):
                if len(r.broker.records) == 2:
                    break
                await asyncio.sleep(0.01)
            records = [json.loads(raw) for _, raw in r.broker.records]
            assert [rec["requestId"] for rec in records] == ["trace-42:x_~!"] * 2

    run(scenario)


def test_the_same_request_id_twice_runs_twice(tmp_path: Path) -> None:
    """JetStream drops a message whose id it has seen: the call id keeps them apart."""
    async def scenario() -> None:
        async with memory_run(tmp_path, {"first": FIRST, "last": LAST}) as r:
            sequential = [await call(r, f"s{i}", "retry-1") for i in range(2)]
            together = await asyncio.gather(*(call(r, f"c{i}", "same") for i in range(5)))
            for i, (reply, returned, code, _) in enumerate(sequential):
                assert code == grpc.StatusCode.OK and returned == "retry-1"
                assert reply.text == f"s{i}|retry-1"
            assert sorted(a[0].text for a in together) == [f"c{i}|same" for i in range(5)]
            assert r.entrypoint is not None and r.entrypoint.pending == {}

    run(scenario)


@pytest.mark.parametrize("bad", ["a.b", "a b", "a*", "a>", "x" * 129, ""],
                         ids=["dot", "space", "star", "gt", "too-long", "empty"])
def test_an_invalid_request_id_is_replaced_by_a_generated_one(tmp_path: Path,
                                                              bad: str) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"first": FIRST, "last": LAST}) as r:
            reply, returned, code, _ = await call(r, "a", bad)
            assert code == grpc.StatusCode.OK
            assert returned != bad and contract.valid_request_id(returned)
            assert reply.seen == returned

    run(scenario)


def test_without_a_request_id_the_generated_one_is_returned(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"first": FIRST, "last": LAST}) as r:
            answers = [await call(r, f"r{i}") for i in range(3)]
            for reply, returned, code, _ in answers:
                assert code == grpc.StatusCode.OK and reply.seen == returned
            assert len({a[1] for a in answers}) == 3

    run(scenario)


def test_error_answers_carry_the_request_id_too(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"first": FIRST, "last": LAST}) as r:
            _, returned, code, details = await call(r, "missing", "err-1")
            assert (code, details, returned) == (grpc.StatusCode.NOT_FOUND, "no such thing",
                                                 "err-1")
            _, returned, code, details = await call(r, "boom", "err-2")
            assert (code, details, returned) == (grpc.StatusCode.INTERNAL,
                                                 "node last: it broke", "err-2")
            # refused by the entrypoint itself, before anything is published
            _, returned, code, _ = await call(r, "", "err-3", payload=b"\xff\xff\xff")
            assert (code, returned) == (grpc.StatusCode.INVALID_ARGUMENT, "err-3")
            _, returned, code, _ = await call(r, "", payload=b"\xff\xff\xff")
            assert code == grpc.StatusCode.INVALID_ARGUMENT and returned

    run(scenario)


def test_the_handler_failure_log_line_names_the_request(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"first": FIRST, "last": LAST}) as r:
            with caplog.at_level(logging.ERROR, logger="node.last"):
                await call(r, "boom", "fail-7")
            assert "[request=fail-7 node=last workflow=wf] handler failed" in caplog.text

    run(scenario)


def test_a_node_giving_up_answers_the_call_that_chose_its_id(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"first": FIRST}, start=False, ack_wait=0.05,
                              max_deliver=2) as r:
            ep = await r.start_entrypoint()
            dying = MemoryTransport(r.broker, r.env)
            await dying.connect("dying")
            consumer = await dying.ensure_consumer("wf", 0, "first")

            async def never(_: Delivery) -> None:
                await asyncio.sleep(30)

            c = dying.consume(contract.stream_name("logic", "v1", "wf"), consumer, never, 4)
            await c.start()
            _, returned, code, details = await call(r, "a", "given-up")
            assert (code, returned) == (grpc.StatusCode.INTERNAL, "given-up")
            assert details.startswith("node first: gave up on this request after 2 attempts")
            assert ep.pending == {}
            await c.stop(0.01)

    run(scenario)


def test_step_headers_carry_the_request_id_only_when_it_is_not_the_call_id() -> None:
    same = step_headers("tok-1", 0, "0", "_in.tok-1", "tok-1")
    assert contract.HDR_REQUEST_ID not in same
    assert (call_id_of(same), request_id_of(same)) == ("tok-1", "tok-1")
    chosen = step_headers("tok-2", 3, "0", "_in.tok-2", "client:id")
    assert chosen[contract.HDR_MSG_ID] == "tok-2:3"
    assert (call_id_of(chosen), request_id_of(chosen)) == ("tok-2", "client:id")


def test_valid_request_ids() -> None:
    assert contract.valid_request_id("a" * contract.MAX_REQUEST_ID)
    assert contract.valid_request_id("Abc-123_:~!@#$%^&()[]{}|/\\'\"")
    for bad in ("", "a" * (contract.MAX_REQUEST_ID + 1), "a.b", "*", ">", "a b", "a\nb",
                "é", "\x7f", "a\tb"):
        assert not contract.valid_request_id(bad), bad
