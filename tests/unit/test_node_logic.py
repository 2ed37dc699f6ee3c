"""The node's logic on the in-memory transport: handlers and their errors (sdk.Abort), the
per-request scope, keeping slow work alive, and a crashed replica's work delivered again."""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from memory_run import MemoryRun, memory_run

from runner import contract
from runner.node import invoke
from runner.sdk import NO_SCOPE, SCOPE, Abort, Scope, SdkError
from runner.transport import StepError, step_headers
from runner.transport.memory import MemoryBroker, MemoryTransport

# Pass-through first node (async), answering last node (sync, KRE style) that records ids.
FIRST = """
import asyncio
from logic_pb2 import Req

async def handler(ctx, data: Req):
    if data.sleep:
        await asyncio.sleep(data.sleep)
    data.text = data.text + "|" + ctx.request_id
    return data
"""

LAST = """
import collections
from logic_pb2 import Req, Resp

SEEN = collections.Counter()

def handler(ctx, data):
    req = Req()
    data.Unpack(req)
    SEEN[req.text] += 1
    return Resp(text=req.text, seen=ctx.request_id)
"""

ABORTS = """
import grpc
from logic_pb2 import Req, Resp
from runner.sdk import Abort

async def handler(ctx, data: Req):
    if data.text == "abort":
        raise Abort(grpc.StatusCode.NOT_FOUND, "no room called nowhere")
    if data.text == "ctx-abort":
        ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, "the model is not loaded")
    if data.text == "ok-abort":
        raise Abort(grpc.StatusCode.OK, "fine")
    if data.text == "plain":
        raise ValueError("bad input: 42")
    if data.text == "bare":
        raise KeyError()
    if data.text == "not-a-message":
        return {"text": "dict"}
    if data.text == "wrong-type":
        return data
    return Resp(text=data.text)
"""

SYNC_ABORTS = """
import threading
import grpc
from logic_pb2 import Req, Resp
from runner.sdk import Abort

def handler(ctx, data: Req):
    assert threading.current_thread() is not threading.main_thread()
    if data.text == "abort":
        raise Abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
    return Resp(text=data.text, seen=ctx.request_id)
"""


def run(scenario: Callable[[], Awaitable[None]], limit: float = 30) -> None:
    asyncio.run(asyncio.wait_for(scenario(), limit))


def seen(r: MemoryRun, name: str) -> collections.Counter[str]:
    module = r.nodes[name][0].mod.module
    counter: collections.Counter[str] = module.SEEN
    return counter


async def failure(r: MemoryRun, text: str) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await r.call(text=text)
    return failed.value.code(), failed.value.details() or ""


def test_a_chain_passes_results_on_and_answers(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"first": FIRST, "last": LAST}) as r:
            answers = await asyncio.gather(*(r.call(text=f"r{i}") for i in range(20)))
            for i, a in enumerate(answers):
                text, request_id = a.text.split("|")
                assert text == f"r{i}" and a.seen == request_id  # one id along the chain
            assert len({a.seen for a in answers}) == 20
            assert sorted(seen(r, "last").values()) == [1] * 20
            for stream in r.broker.streams.values():
                if stream.work_queue:
                    assert stream.messages == {}  # everything acked

    run(scenario)


def test_abort_answers_its_code_and_message_and_other_errors_are_internal(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"aborts": ABORTS}) as r:
            assert await failure(r, "abort") == (grpc.StatusCode.NOT_FOUND,
                                                 "no room called nowhere")
            assert await failure(r, "ctx-abort") == (grpc.StatusCode.FAILED_PRECONDITION,
                                                     "the model is not loaded")
            code, details = await failure(r, "ok-abort")
            assert code == grpc.StatusCode.INTERNAL
            assert details.startswith("node aborts: Abort needs a grpc.StatusCode other than OK")
            assert await failure(r, "plain") == (grpc.StatusCode.INTERNAL,
                                                 "node aborts: bad input: 42")
            assert await failure(r, "bare") == (grpc.StatusCode.INTERNAL, "node aborts: KeyError")
            assert await failure(r, "not-a-message") == (
                grpc.StatusCode.INTERNAL,
                "node aborts returned dict, expected a protobuf message of type logic.Resp")
            assert await failure(r, "wrong-type") == (
                grpc.StatusCode.INTERNAL,
                "node aborts returned logic.Req, but rpc Run returns logic.Resp")
            assert (await r.call(text="fine")).text == "fine"

    run(scenario)


def test_abort_from_a_sync_handler_in_its_worker_thread(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"sync": SYNC_ABORTS}) as r:
            assert await failure(r, "abort") == (grpc.StatusCode.PERMISSION_DENIED,
                                                 "not yours")
            answer = await r.call(text="x")
            assert answer.text == "x" and answer.seen  # the scope reached the thread

    run(scenario)


def test_abort_takes_only_a_status_code_other_than_ok() -> None:
    with pytest.raises(SdkError):
        Abort(grpc.StatusCode.OK, "fine")
    with pytest.raises(SdkError):
        Abort("NOT_FOUND", "a name is not a code")  # type: ignore[arg-type]
    err = Abort(grpc.StatusCode.UNAVAILABLE, "try later")
    assert (err.code, err.message, str(err)) == (grpc.StatusCode.UNAVAILABLE, "try later",
                                                 "try later")


def test_invoke_sets_the_scope_and_resets_it_for_sync_and_async_functions() -> None:
    outer = Scope("outer", "wf0")
    inner = Scope("req-9", "wf1")
    seen_in: list[tuple[Scope, bool]] = []

    def sync_fn(x: int) -> int:
        seen_in.append((SCOPE.get(), threading.current_thread() is threading.main_thread()))
        return x + 1

    async def async_fn(x: int) -> int:
        seen_in.append((SCOPE.get(), threading.current_thread() is threading.main_thread()))
        return x * 2

    def failing(_: int) -> int:
        raise RuntimeError("boom")

    def returns_awaitable(x: int) -> Awaitable[int]:
        return async_fn(x)

    async def scenario() -> None:
        token = SCOPE.set(outer)
        with ThreadPoolExecutor(2) as pool:
            assert await invoke(sync_fn, False, pool, inner, 1) == 2
            assert SCOPE.get() is outer
            assert await invoke(async_fn, True, pool, inner, 3) == 6
            assert SCOPE.get() is outer
            with pytest.raises(RuntimeError, match="boom"):
                await invoke(failing, False, pool, inner, 0)
            assert SCOPE.get() is outer
            assert await invoke(returns_awaitable, False, pool, inner, 5) == 10
            assert SCOPE.get() is outer
        SCOPE.reset(token)
        assert SCOPE.get() is NO_SCOPE

    run(scenario)
    assert seen_in[0] == (inner, False)  # sync: in a worker thread, in the request's scope
    assert seen_in[1] == (inner, True)  # async: on the loop
    assert seen_in[2][0] == inner


def test_a_slow_handler_is_kept_alive_and_delivered_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"first": FIRST, "last": LAST}, ack_wait=0.2) as r:
            answer = await r.call(text="slow", sleep=0.2 * 4)  # four ack waits
            assert answer.text.startswith("slow|")
            assert sorted(seen(r, "last").values()) == [1]
            first = r.nodes["first"][0]
            assert first._inflight == {}

    run(scenario)


def test_without_keep_alive_a_slow_message_would_be_delivered_again(tmp_path: Path) -> None:
    """The adversary of the test above: the broker really redelivers after the ack wait."""
    broker = MemoryBroker()
    env = contract.RunnerEnv(project="p", version="v", version_dir=str(tmp_path), proto="x",
                             workflows=(contract.Workflow("wf", "Run", ("n",)),),
                             ack_wait=0.1, max_deliver=3)

    async def scenario() -> None:
        t = MemoryTransport(broker, env)
        await t.connect("t")
        stream = await t.ensure_work_stream("wf")
        consumer = await t.ensure_consumer("wf", 0, "n")
        counts: list[int] = []

        async def slow(d: Any) -> None:
            counts.append(d.delivery_count)
            await asyncio.sleep(0.35)
            await d.ack()

        c = t.consume(stream, consumer, slow, 4)
        await c.start()
        await t.publish(contract.step_subject("p", "v", "wf", 0), b"x",
                        step_headers("r1", 0, "0", ""), 1.0)
        await asyncio.sleep(0.5)
        await c.stop(1.0)
        assert counts[:3] == [1, 2, 3]

    run(scenario)


def test_a_crashed_replicas_work_is_delivered_again_and_handled_once_downstream(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"first": FIRST, "last": LAST},
                              replicas={"first": 2}, ack_wait=0.3) as r:
            victim, survivor = r.nodes["first"]
            calls = [asyncio.ensure_future(r.call(text=f"r{i}", sleep=0.05, deadline=10))
                     for i in range(60)]
            for _ in range(200):  # bounded: until the victim holds work
                if victim._inflight:
                    break
                await asyncio.sleep(0.01)
            assert victim._inflight, "the victim took no work"
            held = len(victim._inflight)
            await victim.transport.crash()  # type: ignore[attr-defined]
            answers = await asyncio.gather(*calls)
            assert sorted(a.text.split("|")[0] for a in answers) == sorted(
                f"r{i}" for i in range(60))
            counts = seen(r, "last")
            assert sorted(counts.values()) == [1] * 60, counts
            assert held > 0
            victim.stopping = True  # it is dead: do not drain it at close
            r.nodes["first"] = [survivor]
            await victim.stop(0.1)

    run(scenario)


def test_undecodable_input_answers_invalid_argument_and_is_acked(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"first": FIRST, "last": LAST}, start=False) as r:
            await r.start_node("first")
            client = MemoryTransport(r.broker, r.env)
            await client.connect("client")
            answers: dict[str, bytes | StepError] = {}
            await client.listen_replies("_inbox.", lambda rid, a: answers.__setitem__(rid, a))
            subject = contract.step_subject("logic", "v1", "wf", 0)
            await client.publish(subject, b"\xff\xff not an Any",
                                 step_headers("bad-1", 0, "", "_inbox.bad-1"), 1.0)
            for _ in range(200):
                if answers:
                    break
                await asyncio.sleep(0.01)
            err = answers["bad-1"]
            assert isinstance(err, StepError)
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT
            assert err.message.startswith("node first: cannot decode its input")
            assert r.broker.pending(contract.stream_name("logic", "v1", "wf")) == 0

    run(scenario)


def test_expired_work_is_dropped_without_calling_the_handler(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"last": LAST}, start=False) as r:
            await r.start_node("last")
            client = MemoryTransport(r.broker, r.env)
            await client.connect("client")
            answers: list[str] = []
            await client.listen_replies("_inbox.", lambda rid, a: answers.append(rid))
            await client.publish(contract.step_subject("logic", "v1", "wf", 0), b"",
                                 step_headers("old", 0, "1.0", "_inbox.old"), 1.0)
            for _ in range(100):
                if r.broker.pending(contract.stream_name("logic", "v1", "wf")) == 0:
                    break
                await asyncio.sleep(0.01)
            assert r.broker.pending(contract.stream_name("logic", "v1", "wf")) == 0
            assert answers == [] and sum(seen(r, "last").values()) == 0

    run(scenario)


def test_records_go_to_the_data_sink(tmp_path: Path) -> None:
    code = """
    from logic_pb2 import Req, Resp

    async def handler(ctx, data: Req):
        await ctx.db.save("rooms", {"name": data.text})
        await ctx.prediction.save("cat", "dog")
        found = await ctx.db.find("rooms", {"name": data.text})
        return Resp(text=str(len(found)), seen=ctx.request_id)
    """

    async def scenario() -> None:
        async with memory_run(tmp_path, {"rec": code}) as r:
            a = await r.call(text="blue")
            b = await r.call(text="blue")
            assert (a.text, b.text) == ("1", "2")
            kinds = [s.split(".")[2] for s, _ in r.broker.records]
            assert kinds == ["db", "prediction", "db", "prediction"]
            import json
            first = json.loads(r.broker.records[1][1])
            assert first["requestId"] == a.seen and first["node"] == "rec"

    run(scenario)
