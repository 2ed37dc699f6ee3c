"""Both delivery modes on the in-memory transport: the same handlers give the same replies and
statuses at least once (JetStream) and at most once (core NATS request/reply,
runner.transport.core); what at most once gives up (no stream, no backlog, a crashed
replica's call fails UNAVAILABLE instead of being delivered again) and what it keeps
(replicas share the load, deadlines, signs of life for slow calls, draining)."""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from memory_run import failure, memory_run, run, until

from runner import contract
from runner.transport import Alive, Delivery, StepError, step_headers
from runner.transport.core import QUEUED_PER_SLOT
from runner.transport.memory import MemoryBroker, MemoryTransport, records_of

BOTH = pytest.mark.parametrize("delivery", contract.DELIVERY_MODES)

# KRE 1.23 style: an Any unpacked by hand, ctx.db, async.
FIRST = """
from logic_pb2 import Req

async def handler(ctx, data):
    req = Req()
    data.Unpack(req)
    await ctx.db.save("seen", {"text": req.text, "rid": ctx.request_id})
    found = await ctx.db.find("seen", {"rid": ctx.request_id})
    req.text = f"{req.text}>first({len(found)})"
    return req
"""

# A typed sync handler (runs in a thread), that can fail or abort.
MIDDLE = """
import grpc
from logic_pb2 import Req
from runner.sdk import Abort

def handler(ctx, data: Req):
    if data.text.startswith("fail"):
        raise ValueError("the model exploded")
    if data.text.startswith("abort"):
        raise Abort(grpc.StatusCode.NOT_FOUND, "no such room")
    data.text += ">middle"
    return data
"""

# The last node: async, typed; can be slow, answer the wrong type or a large reply.
LAST = """
import asyncio
from logic_pb2 import Req, Resp

async def handler(ctx, data: Req):
    if data.sleep:
        await asyncio.sleep(data.sleep)
    if data.text.startswith("wrong"):
        return data
    return Resp(text=data.text + ">last", seen=ctx.request_id, blob=b"x" * data.grow)
"""

CHAIN = {"first": FIRST, "middle": MIDDLE, "last": LAST}

# Records "<node> <text>" in the file named by the request's text... directory of LOG.
TRACE = """
import asyncio
import os
from logic_pb2 import Req, Resp

async def handler(ctx, data: Req):
    with open(os.environ["TRACE_LOG"], "a") as f:
        f.write(f"{ctx.node} {id(ctx)} {data.text}\\n")
    if data.sleep:
        await asyncio.sleep(data.sleep)
    return Resp(text=data.text) if ctx.node == "last" else data
"""


# --- the contract ------------------------------------------------------------------------


def test_the_workflow_contract_carries_the_delivery_and_leaves_the_default_out() -> None:
    both = (contract.Workflow("a", "A", ("n",)),
            contract.Workflow("b", "B", ("n", "m"), contract.AT_MOST_ONCE))
    raw = contract.encode_workflows(both)
    assert raw == ('[{"chain":["n"],"name":"a","rpc":"A"},'
                   '{"chain":["n","m"],"delivery":"at-most-once","name":"b","rpc":"B"}]')
    assert contract.decode_workflows(raw) == both
    assert [w.at_most_once for w in both] == [False, True]
    env = contract.RunnerEnv(project="p", version="v", version_dir="/v", proto="x",
                             workflows=both)
    assert contract.RunnerEnv.from_environ(env.to_environ()).workflows == both
    bad = {**env.to_environ(), contract.ENV_WORKFLOWS:
           '[{"name":"a","rpc":"A","chain":["n"],"delivery":"exactly-once"}]'}
    with pytest.raises(contract.ContractError) as err:
        contract.RunnerEnv.from_environ(bad)
    assert str(err.value) == (f"{contract.ENV_WORKFLOWS} is not valid: workflow a: delivery "
                              "'exactly-once' is not one of at-least-once, at-most-once")


def test_call_subjects_are_outside_every_stream() -> None:
    call = contract.call_subject("p", "v", "wf", 1)
    assert call == "kai-call.p.v.wf.s1"
    assert contract.probe_subject(call) == "kai-call.p.v.wf.s1.ready"
    for captured in (contract.stream_subjects("p", "v", "wf"), contract.data_subjects("p")):
        assert not call.startswith(captured.rstrip(">"))
    assert contract.queue_group("p", "v", "wf", 1, "etl") == "KAI_p_v_wf_s1-etl"


# --- the same handlers, the same answers --------------------------------------------------


@BOTH
def test_a_three_node_chain_answers_the_same(tmp_path: Path, delivery: str) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, CHAIN, delivery=delivery) as r:
            reply = await r.call(text="hi")
            assert reply.text == "hi>first(1)>middle>last"
            assert reply.seen.startswith(r.entrypoint._token)  # type: ignore[union-attr]
            db = records_of(r.broker, "db")
            assert [d["doc"]["text"] for d in db] == ["hi"]  # ctx.db: the data stream

    run(scenario)


@BOTH
def test_the_statuses_are_the_same(tmp_path: Path, delivery: str) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, CHAIN, delivery=delivery) as r:
            assert await failure(r, text="fail") == (
                grpc.StatusCode.INTERNAL, "node middle: the model exploded")
            assert await failure(r, text="abort") == (grpc.StatusCode.NOT_FOUND,
                                                      "no such room")
            assert await failure(r, text="wrong") == (
                grpc.StatusCode.INTERNAL,
                "node last returned logic.Req, but rpc Run returns logic.Resp")
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await r.call_raw(b"\xff\xff\xff")
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            began = time.monotonic()
            code, _ = await failure(r, deadline=0.3, text="slow", sleep=5.0)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - began < 3  # ended by its deadline, not the handler
            assert (await r.call(text="after")).text.endswith(">last")

    run(scenario)


@BOTH
def test_payload_limits(tmp_path: Path, delivery: str) -> None:
    """At least once, a payload larger than a message goes through the claim bucket; at most
    once it is RESOURCE_EXHAUSTED, naming the NATS max payload."""
    async def scenario() -> None:
        broker = MemoryBroker(max_payload=2000)
        async with memory_run(tmp_path, CHAIN, delivery=delivery, broker=broker,
                              max_message=8000) as r:
            if delivery == contract.AT_LEAST_ONCE:
                assert (await r.call(text="x" * 3000)).text.startswith("x" * 3000)
                assert len((await r.call(text="y", grow=3000)).blob) == 3000
                return
            code, details = await failure(r, text="x" * 3000)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details.startswith("the request is 3003 bytes (")
            assert details.endswith("over the NATS server's max payload of 2000 bytes, which "
                                    "the messages of an at-most-once workflow cannot exceed "
                                    "(they never go through the claim bucket)")
            code, details = await failure(r, text="y", grow=3000)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details.startswith("node last: the reply is")
            assert r.broker.buckets == {}

    run(scenario)


@BOTH
def test_replicas_share_the_calls(tmp_path: Path, delivery: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "trace.log"
    monkeypatch.setenv("TRACE_LOG", str(log))

    async def scenario() -> None:
        async with memory_run(tmp_path, {"first": TRACE, "last": TRACE}, delivery=delivery,
                              replicas={"first": 2}) as r:
            replies = await asyncio.gather(*(r.call(text=f"r{i}", sleep=0.01)
                                             for i in range(30)))
            assert sorted(x.text for x in replies) == sorted(f"r{i}" for i in range(30))
        by_replica = collections.Counter(
            line.split()[1] for line in log.read_text().splitlines()
            if line.startswith("first "))
        assert len(by_replica) == 2 and sum(by_replica.values()) == 30, by_replica

    run(scenario)


# --- what at most once gives up ------------------------------------------------------------


def test_at_most_once_keeps_no_stream_consumer_or_bucket(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, CHAIN, delivery=contract.AT_MOST_ONCE) as r:
            assert (await r.call(text="hi")).text.endswith(">last")
            assert sorted(r.broker.streams) == [contract.data_stream_name("logic")]
            assert r.broker.buckets == {}
            assert sorted(r.broker.groups) == [contract.call_subject("logic", "v1", "wf", i)
                                               for i in range(3)]

    run(scenario)


def test_no_replica_of_the_first_node_is_unavailable_at_once_and_not_run(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, CHAIN, delivery=contract.AT_MOST_ONCE,
                              start=False) as r:
            await r.start_entrypoint()
            began = time.monotonic()
            code, details = await failure(r, deadline=10, text="nobody")
            assert time.monotonic() - began < 5  # no backlog: not kept until the deadline
            assert (code, details) == (
                grpc.StatusCode.UNAVAILABLE, "no replica of node first takes calls (workflow "
                "wf is at-most-once and keeps no backlog): not run; try again shortly")
            for name in CHAIN:
                await r.start_node(name)
            assert (await r.call(text="now")).text.endswith(">last")

    run(scenario)


def test_no_replica_of_a_later_node_may_have_partly_run(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, CHAIN, delivery=contract.AT_MOST_ONCE,
                              start=False) as r:
            await r.start_entrypoint()
            await r.start_node("first")
            assert await failure(r, text="half") == (
                grpc.StatusCode.UNAVAILABLE, "no replica of node middle takes calls (workflow "
                "wf is at-most-once): the request may have partly run (through node first)")
            assert [d["doc"]["text"] for d in records_of(r.broker, "db")] == ["half"]

    run(scenario)


@BOTH
def test_a_crashed_replica_is_redelivered_at_least_once_and_unavailable_at_most_once(
        tmp_path: Path, delivery: str, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "trace.log"
    monkeypatch.setenv("TRACE_LOG", str(log))

    async def scenario() -> None:
        async with memory_run(tmp_path, {"first": TRACE, "last": TRACE}, delivery=delivery,
                              replicas={"first": 2}, ack_wait=0.4) as r:
            call = asyncio.ensure_future(r.call(deadline=20, text="victim", sleep=1.0))
            await until(lambda: log.exists() and "first" in log.read_text())
            (line,) = log.read_text().splitlines()
            holder = next(p for p in r.nodes["first"] if str(id(p.ctx)) == line.split()[1])
            began = time.monotonic()
            assert isinstance(holder.transport, MemoryTransport)
            await holder.transport.crash()
            firsts = lambda: [x for x in log.read_text().splitlines()  # noqa: E731
                              if x.startswith("first ")]
            if delivery == contract.AT_LEAST_ONCE:
                assert (await call).text == "victim"  # delivered again, to the other replica
                assert len(firsts()) == 2
                return
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await call
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert failed.value.details() == (
                "no sign of life from the node handling this call for 0.4s (a replica crashed "
                "or lost NATS); at-most-once calls are never delivered again, and this one may "
                "have partly run")
            assert time.monotonic() - began < 10  # about the ack wait, not the deadline (20)
            await asyncio.sleep(0.5)
            assert len(firsts()) == 1  # not delivered again
            assert (await r.call(text="next")).text == "next"  # the survivor takes calls

    run(scenario)


def test_a_call_slower_than_the_ack_wait_is_kept_alive(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, CHAIN, delivery=contract.AT_MOST_ONCE,
                              ack_wait=0.2) as r:
            reply = await r.call(deadline=10, text="slow", sleep=1.2)  # six ack waits
            assert reply.text.endswith(">last")
            ep = r.entrypoint
            assert ep is not None and isinstance(ep.transport, MemoryTransport)
            watch = ep.transport._watch
            assert watch is not None and watch.heard == {}  # ended, not watched any more

    run(scenario)


def test_an_expired_call_is_not_kept_alive_past_its_deadline(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, CHAIN, delivery=contract.AT_MOST_ONCE,
                              ack_wait=0.2) as r:
            code, _ = await failure(r, deadline=0.3, text="slow", sleep=1.5)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            ep = r.entrypoint
            assert ep is not None and isinstance(ep.transport, MemoryTransport)
            watch = ep.transport._watch
            assert watch is not None
            await until(lambda: watch.heard == {}, 3)  # its signs of life stop at the deadline

    run(scenario)


# --- a replica's queue and its drain --------------------------------------------------------


def _env(tmp_path: Path, **kw: object) -> contract.RunnerEnv:
    return contract.RunnerEnv(
        project="p", version="v", version_dir=str(tmp_path), proto="x",
        workflows=(contract.Workflow("wf", "Run", ("n",), contract.AT_MOST_ONCE),),
        **kw)  # type: ignore[arg-type]


SUBJECT = contract.call_subject("p", "v", "wf", 0)
GROUP = contract.queue_group("p", "v", "wf", 0, "n")


async def _caller(broker: MemoryBroker, env: contract.RunnerEnv,
                  ) -> tuple[MemoryTransport, dict[str, bytes | StepError | Alive]]:
    t = MemoryTransport(broker, env)
    await t.connect("caller")
    answers: dict[str, bytes | StepError | Alive] = {}
    await t.listen_replies("_R.", answers.__setitem__)
    return t, answers


def test_a_replica_holds_a_bounded_queue_and_refuses_beyond_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker, env = MemoryBroker(), _env(tmp_path)
        caller, answers = await _caller(broker, env)
        replica = MemoryTransport(broker, env)
        await replica.connect("replica")
        gate = asyncio.Event()
        handled: list[str] = []

        async def handle(d: Delivery) -> None:
            await gate.wait()
            handled.append(d.call_id)
            await replica.reply_ok(d.reply, b"ok")

        server = replica.serve(SUBJECT, GROUP, handle, 2)
        await server.start()
        total = 2 + 2 * QUEUED_PER_SLOT + 1
        for i in range(total):
            await caller.call_step(SUBJECT, b"", step_headers(f"c{i}", 0, "", f"_R.c{i}"))
        await until(lambda: len(answers) == 1)
        last = answers[f"c{total - 1}"]
        assert isinstance(last, StepError) and last.code == grpc.StatusCode.UNAVAILABLE
        assert last.message == (f"node n has {2 * QUEUED_PER_SLOT} calls waiting already: "
                                "not run; try again shortly")
        gate.set()
        await until(lambda: len(answers) == total)
        assert handled == [f"c{i}" for i in range(total - 1)]  # in order
        await server.stop(1.0)

    run(scenario)


def test_a_stopping_replica_finishes_what_it_holds_within_the_grace(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker, env = MemoryBroker(), _env(tmp_path)
        caller, answers = await _caller(broker, env)
        replica = MemoryTransport(broker, env)
        await replica.connect("replica")

        async def handle(d: Delivery) -> None:
            await asyncio.sleep(10 if d.call_id == "stuck" else 0.05)
            await replica.reply_ok(d.reply, b"done")

        server = replica.serve(SUBJECT, GROUP, handle, 1)
        await server.start()
        for name in ("a", "b", "stuck", "queued"):
            await caller.call_step(SUBJECT, b"", step_headers(name, 0, "", f"_R.{name}"))
        await server.stop(0.5)
        assert answers["a"] == answers["b"] == b"done"
        stuck, queued = answers["stuck"], answers["queued"]
        assert isinstance(stuck, StepError) and isinstance(queued, StepError)
        assert stuck.message == ("node n stopped while handling this call (its drain took "
                                 "longer than the grace period): it may have partly run")
        assert queued.message == "node n is shutting down: not run; try again shortly"
        # once it has left, a call finds no replica
        await caller.call_step(SUBJECT, b"", step_headers("late", 0, "", "_R.late"))
        await until(lambda: "late" in answers)
        late = answers["late"]
        assert isinstance(late, StepError) and "not run" in late.message

    run(scenario)


def test_a_disconnected_replica_takes_no_calls_and_its_calls_are_lost(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker, env = MemoryBroker(), _env(tmp_path, ack_wait=0.2)
        caller, answers = await _caller(broker, env)
        replica = MemoryTransport(broker, env)
        await replica.connect("replica")
        held = asyncio.Event()

        async def handle(d: Delivery) -> None:
            held.set()
            await asyncio.sleep(30)

        server = replica.serve(SUBJECT, GROUP, handle, 4)
        await server.start()
        assert await caller.probe_step(contract.probe_subject(SUBJECT), 1.0)
        await caller.call_step(SUBJECT, b"", step_headers("c", 0, "", "_R.c"))
        await held.wait()
        await replica.disconnect()
        assert not await caller.probe_step(contract.probe_subject(SUBJECT), 1.0)
        await until(lambda: "c" in answers)
        lost = answers["c"]
        assert isinstance(lost, StepError) and lost.code == grpc.StatusCode.UNAVAILABLE
        assert lost.message.startswith("no sign of life from the node handling this call")
        await replica.reconnect()
        await server.stop(0.1)

    run(scenario)


def test_a_version_without_at_most_once_workflows_watches_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        env = replace(_env(tmp_path), workflows=(contract.Workflow("wf", "Run", ("n",)),))
        t = MemoryTransport(MemoryBroker(), env)
        await t.connect("ep")
        await t.listen_replies("_R.", lambda rid, a: None)
        assert t._watch is None

    run(scenario)
