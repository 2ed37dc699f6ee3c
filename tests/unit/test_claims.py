"""The claim check on the in-memory transport: payloads over the broker's max payload travel
through the version's claim bucket, transparently to the processes, up to the runner's max
message; the objects are gone once the request is done, whichever way it ended."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from memory_run import MemoryRun, failure, memory_run, run

from runner import contract
from runner.client import call, find_rpc
from runner.transport import Delivery, ObjectGone, claim_name
from runner.transport.memory import MemoryBroker, MemoryTransport

MiB = 1024 * 1024
BUCKET = contract.claims_bucket("logic", "v1")
STREAM = contract.stream_name("logic", "v1", "wf")

# first passes its input on (padded by -grow characters when grow < 0); second answers it
# (seen: how large its text was), its blob `grow` bytes
FIRST = """
from logic_pb2 import Req

async def handler(ctx, data: Req):
    if data.text.startswith("fail"):
        raise RuntimeError("refused")
    if data.grow < 0:
        return Req(text=data.text + "|first" + "p" * -data.grow)
    return Req(text=data.text + "|first", grow=data.grow)
"""
SECOND = """
from logic_pb2 import Req, Resp

async def handler(ctx, data: Req):
    return Resp(text=data.text, seen=str(len(data.text)), blob=b"b" * data.grow)
"""
NODES = {"first": FIRST, "second": SECOND}


def pattern(size: int) -> str:
    """Text of `size` characters that is not one repeated byte (a misplaced chunk shows)."""
    unit = "".join(chr(ord("a") + i % 26) for i in range(1000)) + "0123456789"
    return (unit * (size // len(unit) + 1))[:size]


async def no_objects(r: MemoryRun, limit: float = 5.0) -> None:
    """Wait (bounded) until the claim bucket is empty: the last ack's delete may trail the
    answer by a moment."""
    for _ in range(int(limit / 0.01)):
        if not r.broker.objects(BUCKET):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"objects left in {BUCKET}: {r.broker.objects(BUCKET)}")


def test_a_3_mib_request_crosses_a_2_node_chain_and_its_objects_are_gone(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, NODES) as r:
            assert r.broker.max_payload == MiB
            text = pattern(3 * MiB)
            got = await r.call(text=text)
            assert got.text == text + "|first"
            assert got.seen == str(3 * MiB + len("|first"))
            await no_objects(r)
            assert r.broker.pending(STREAM) == 0
            # small requests still travel in the message itself
            assert (await r.call(text="small")).text == "small|first"

    run(scenario)


def test_a_reply_over_the_broker_limit_comes_back_whole(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, NODES) as r:
            got = await r.call(text="tiny", grow=2 * MiB + 7)
            assert got.blob == b"b" * (2 * MiB + 7)
            await no_objects(r)

    run(scenario)


def test_over_the_max_message_is_resource_exhausted_naming_both_sizes(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = MemoryBroker(max_payload=4096)
        async with memory_run(tmp_path, NODES, broker=broker, max_message=20_000) as r:
            assert (await r.call(text=pattern(15_000))).text == pattern(15_000) + "|first"
            code, details = await failure(r, text=pattern(30_000))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details.startswith("the request is 30004 bytes (")
            assert details.endswith("with its envelope), over the runner's max message of "
                                    "20000 bytes (kai.yaml runtime.maxMessage)")
            # a step output over the cap (the request itself is under it)
            code, details = await failure(r, text=pattern(15_000), grow=-10_000)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details.startswith("node first: its output is ")
            assert details.endswith("over the runner's max message of 20000 bytes "
                                    "(kai.yaml runtime.maxMessage)")
            # a reply over the cap
            code, details = await failure(r, text="t", grow=25_000)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details.startswith("node second: the reply is 250")
            assert details.endswith("over the runner's max message of 20000 bytes "
                                    "(kai.yaml runtime.maxMessage)")
            await no_objects(r)

    run(scenario)


def test_a_failed_request_leaves_no_object(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, NODES) as r:
            # large and failing in the first node: its claimed input goes with the ack
            code, details = await failure(r, text="fail" + pattern(2 * MiB))
            assert code == grpc.StatusCode.INTERNAL
            assert details == "node first: refused"
            await no_objects(r)

    run(scenario)


def test_a_request_past_its_deadline_still_has_its_object_removed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, NODES, start=False) as r:
            await r.start_entrypoint()  # no node yet: the request waits in the stream
            code, _ = await failure(r, deadline=0.3, text=pattern(2 * MiB))
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert r.broker.objects(BUCKET) == [f"{_only_request(r)}.s0"]
            await r.start_node("first")
            await r.start_node("second")
            await no_objects(r)  # the node drops the expired step unread, and its object
            assert r.broker.pending(STREAM) == 0

    run(scenario)


def _only_request(r: MemoryRun) -> str:
    names = r.broker.objects(BUCKET)
    assert len(names) == 1, names
    return names[0].rpartition(".")[0]


def test_a_replica_that_dies_holding_a_large_input_leaves_it_for_the_next(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, NODES, start=False, ack_wait=0.2) as r:
            await r.start_entrypoint()
            # a replica of "first" that takes the message (and reads its object), then dies
            dying = MemoryTransport(r.broker, r.env)
            await dying.connect("dying")
            consumer = await dying.ensure_consumer("wf", 0, "first")
            held = asyncio.Event()

            async def hold(d: Delivery) -> None:
                assert len(d.payload) > MiB  # the claimed input, read for it
                held.set()
                await asyncio.sleep(30)

            c = dying.consume(STREAM, consumer, hold, 4)
            await c.start()
            text = pattern(2 * MiB)
            call = asyncio.create_task(r.call(deadline=10, text=text))
            await asyncio.wait_for(held.wait(), 5)
            await dying.crash()
            await r.start_node("first")
            await r.start_node("second")
            got = await call
            assert got.text == text + "|first"
            await no_objects(r)

    run(scenario)


def test_a_message_given_up_takes_its_object_along(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, NODES, start=False, ack_wait=0.05,
                              max_deliver=2) as r:
            await r.start_entrypoint()
            dying = MemoryTransport(r.broker, r.env)
            await dying.connect("dying")
            consumer = await dying.ensure_consumer("wf", 0, "first")

            async def never(_: Delivery) -> None:
                await asyncio.sleep(30)

            c = dying.consume(STREAM, consumer, never, 4)
            await c.start()
            code, details = await failure(r, text=pattern(2 * MiB))
            assert code == grpc.StatusCode.INTERNAL
            assert details.startswith("node first: gave up on this request after 2 attempts")
            await no_objects(r)
            await dying.crash()

    run(scenario)


def test_an_input_gone_from_the_bucket_ends_the_request_internal(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, NODES, start=False) as r:
            await r.start_entrypoint()
            call = asyncio.create_task(r.call(deadline=10, text=pattern(2 * MiB)))
            for _ in range(500):
                if r.broker.objects(BUCKET):
                    break
                await asyncio.sleep(0.01)
            rid = _only_request(r)
            r.broker.buckets[BUCKET].clear()  # as if it expired
            await r.start_node("first")
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await call
            assert failed.value.code() == grpc.StatusCode.INTERNAL
            assert failed.value.details() == (
                f"the input of this request's step ({claim_name(rid, 's0')}) is no longer in "
                "the claim bucket (expired or deleted)")
            assert r.broker.pending(STREAM) == 0  # termed, not redelivered

    run(scenario)


def test_claims_expire_with_the_bucket_ttl(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = MemoryBroker(claim_ttl=0.05)
        t = MemoryTransport(broker, contract.RunnerEnv(
            project="logic", version="v1", version_dir=str(tmp_path), proto="x",
            workflows=(contract.Workflow("wf", "Run", ("n",)),)))
        await t.connect("t")
        await t.ensure_work_stream("wf")
        await t.put_object("a.s0", b"data", 1.0)
        assert await t.get_object("a.s0", 1.0) == b"data"
        await asyncio.sleep(0.1)
        assert broker.objects(BUCKET) == []
        with pytest.raises(ObjectGone):
            await t.get_object("a.s0", 1.0)
        await t.delete_object("a.s0")  # none is fine
        with pytest.raises(ObjectGone):
            await t.get_object("never", 1.0)

    run(scenario)


def test_claim_names_are_safe_object_names() -> None:
    assert claim_name("ab12-3", "s1") == "ab12-3.s1"
    assert claim_name("a b/c:d", "reply") == "a_b_c_d.reply"


def test_a_slow_read_of_a_claim_keeps_its_message_alive(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        reads: list[str] = []
        real = MemoryTransport.get_object

        async def slow(self: MemoryTransport, name: str, within: float) -> bytes:
            reads.append(name)
            await asyncio.sleep(1.0)  # five ack waits
            return await real(self, name, within)

        monkeypatch.setattr(MemoryTransport, "get_object", slow)
        async with memory_run(tmp_path, NODES, ack_wait=0.2) as r:
            text = pattern(2 * MiB)
            assert (await r.call(deadline=10, text=text)).text == text + "|first"
            # each claim read once: no redelivery while it was being read
            assert sorted(n.rpartition(".")[2] for n in reads) == ["reply", "s0", "s1"]
            await no_objects(r)

    run(scenario)


def test_grpc_limits_follow_the_max_message(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, NODES, max_message=20_000) as r:
            # far over the cap: gRPC itself refuses it, naming both sizes too
            code, details = await failure(r, text="x" * (2 * MiB))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details == (f"SERVER: Received message larger than max ({2 * MiB + 5} vs. "
                               f"{20_000 + MiB})")
        # the default cap (64 MiB): a 5 MiB reply reaches `kai call`'s client, whose own
        # default would stop at 4 MiB
        async with memory_run(tmp_path / "default", NODES) as r:
            assert r.entrypoint is not None
            rpc = find_rpc(r.compiled, "Run")
            got: Any = await call(f"127.0.0.1:{r.entrypoint.grpc_port}", rpc,
                                  r.request(text="t", grow=5 * MiB), deadline=20)
            assert len(got.blob) == 5 * MiB
            await no_objects(r)

    run(scenario)
