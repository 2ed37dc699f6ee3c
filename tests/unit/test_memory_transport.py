"""The in-memory transport keeps the JetStream semantics the runner relies on: work queues
shared by replicas, ack/nak/in_progress/term, redelivery after the ack wait, max deliveries,
message-id de-duplication, inbox replies, the data sink, the errors of publish and the
consumers' state (requests waiting, deliveries, unsettled)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from memory_run import until

from runner import contract
from runner.transport import (
    ConnectionEvents,
    ConsumerState,
    Delivery,
    GaveUp,
    NoStream,
    StepError,
    TooLarge,
    Unreachable,
    step_headers,
)
from runner.transport.memory import MemoryBroker, MemoryTransport

SUBJECT = contract.step_subject("p", "v", "wf", 0)


def env(tmp_path: Path, **kw: Any) -> contract.RunnerEnv:
    return contract.RunnerEnv(project="p", version="v", version_dir=str(tmp_path), proto="x",
                              workflows=(contract.Workflow("wf", "Run", ("n",)),), **kw)


def run(scenario: Callable[[], Awaitable[None]], limit: float = 20) -> None:
    asyncio.run(asyncio.wait_for(scenario(), limit))


async def transport(broker: MemoryBroker, e: contract.RunnerEnv) -> tuple[MemoryTransport, str,
                                                                          str]:
    t = MemoryTransport(broker, e)
    await t.connect("t")
    stream = await t.ensure_work_stream("wf")
    consumer = await t.ensure_consumer("wf", 0, "n")
    return t, stream, consumer


def test_replicas_share_a_work_queue_and_each_message_goes_to_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        e = env(tmp_path)
        got: dict[str, list[str]] = {"a": [], "b": []}
        consumers = []
        for name in ("a", "b"):
            t, stream, consumer = await transport(broker, e)

            async def handle(d: Delivery, name: str = name) -> None:
                got[name].append(d.request_id)
                await asyncio.sleep(0.01)
                await d.ack()

            c = t.consume(stream, consumer, handle, 2)
            await c.start()
            consumers.append(c)
        for i in range(40):
            await t.publish(SUBJECT, b"x", step_headers(f"r{i}", 0, "0", ""), 1.0)
        await until(lambda: len(got["a"]) + len(got["b"]) == 40)
        assert sorted(got["a"] + got["b"]) == sorted(f"r{i}" for i in range(40))
        assert got["a"] and got["b"]  # both replicas took work
        await until(lambda: broker.pending(stream) == 0)
        for c in consumers:
            await c.stop(1.0)

    run(scenario)


def test_message_ids_are_deduplicated_within_the_window(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        t, stream, _ = await transport(broker, env(tmp_path))
        for _ in range(3):
            await t.publish(SUBJECT, b"x", step_headers("r1", 0, "0", ""), 1.0)
        await t.publish(SUBJECT, b"x", step_headers("r1", 1, "0", ""), 1.0)
        assert broker.pending(stream) == 2
        short = MemoryBroker(duplicate_window=0.0)
        t2, stream2, _ = await transport(short, env(tmp_path))
        for _ in range(2):
            await t2.publish(SUBJECT, b"x", step_headers("r1", 0, "0", ""), 1.0)
        assert short.pending(stream2) == 2

    run(scenario)


def test_redelivery_after_ack_wait_unless_kept_alive(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        t, stream, consumer = await transport(broker, env(tmp_path, ack_wait=0.1))
        counts: dict[str, list[int]] = {"kept": [], "left": []}

        async def handle(d: Delivery) -> None:
            counts[d.request_id].append(d.delivery_count)
            if d.request_id == "kept":
                for _ in range(6):  # 0.3 s: three ack waits, alive every 0.05 s
                    await asyncio.sleep(0.05)
                    await d.in_progress()
                await d.ack()
            elif d.delivery_count == 2:
                await d.ack()
            # first delivery of "left": never settled

        c = t.consume(stream, consumer, handle, 4)
        await c.start()
        await t.publish(SUBJECT, b"x", step_headers("kept", 0, "0", ""), 1.0)
        await t.publish(SUBJECT, b"x", step_headers("left", 0, "0", ""), 1.0)
        await until(lambda: broker.pending(stream) == 0)
        assert counts == {"kept": [1], "left": [1, 2]}
        await c.stop(1.0)

    run(scenario)


def test_nak_with_delay_term_and_max_deliveries(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        t, stream, consumer = await transport(broker, env(tmp_path, ack_wait=0.05,
                                                         max_deliver=3))
        seen: list[tuple[str, int]] = []
        gave_up: list[GaveUp] = []

        async def on_gave_up(event: GaveUp) -> None:
            gave_up.append(event)

        await t.on_gave_up(stream, on_gave_up)

        async def handle(d: Delivery) -> None:
            seen.append((d.request_id, d.delivery_count))
            if d.request_id == "nak" and d.delivery_count == 1:
                await d.nak(0.1)
            elif d.request_id == "nak":
                await d.ack()
            elif d.request_id == "term":
                await d.term()
            # "crash": never settled, redelivered until max_deliver

        c = t.consume(stream, consumer, handle, 4)
        await c.start()
        for rid in ("nak", "term", "crash"):
            await t.publish(SUBJECT, b"x", step_headers(rid, 0, "0", "_in." + rid), 1.0)
        await until(lambda: len(gave_up) == 1)
        await asyncio.sleep(0.15)
        assert [n for rid, n in seen if rid == "nak"] == [1, 2]
        assert [n for rid, n in seen if rid == "term"] == [1]
        assert [n for rid, n in seen if rid == "crash"] == [1, 2, 3]
        event = gave_up[0]
        assert (event.stream, event.consumer, event.deliveries) == (stream, consumer, 3)
        assert event.headers[contract.HDR_REPLY] == "_in.crash"
        assert broker.pending(stream) == 1  # it stays until deleted
        await event.delete()
        assert broker.pending(stream) == 0
        await c.stop(1.0)

    run(scenario)


def test_a_consumer_created_later_gets_what_was_stored_before(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        e = env(tmp_path)
        t = MemoryTransport(broker, e)
        await t.connect("t")
        stream = await t.ensure_work_stream("wf")
        await t.publish(SUBJECT, b"early", step_headers("r1", 0, "0", ""), 1.0)
        consumer = await t.ensure_consumer("wf", 0, "n")
        got: list[bytes] = []

        async def handle(d: Delivery) -> None:
            got.append(d.payload)
            await d.ack()

        c = t.consume(stream, consumer, handle, 1)
        await c.start()
        await until(lambda: got == [b"early"])
        await c.stop(1.0)

    run(scenario)


def test_publish_errors(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = MemoryBroker(max_payload=1000)
        t = MemoryTransport(broker, env(tmp_path, max_message=2000))
        with pytest.raises(Unreachable):
            await t.publish(SUBJECT, b"x", {}, 1.0)
        await t.connect("t")
        with pytest.raises(NoStream):
            await t.publish(SUBJECT, b"x", {}, 1.0)
        await t.ensure_work_stream("wf")
        headers = step_headers("r", 0, "0", "")
        assert t.oversize(b"x" * 1900, headers) == 0  # over max_payload: it goes as a claim
        assert t.oversize(b"x" * 2000, headers) > 2000  # over max_message
        with pytest.raises(TooLarge):  # a message itself over the broker's limit
            await t.publish_message(SUBJECT, b"x" * 1000, headers, 1.0)
        with pytest.raises(NoStream):
            await t.save_record(contract.data_subject("p", "db", "c"), b"{}")

    run(scenario)


def test_replies_reach_the_listener_of_their_prefix(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        ep, node = MemoryTransport(broker, env(tmp_path)), MemoryTransport(broker, env(tmp_path))
        await ep.connect("ep")
        await node.connect("node")
        got: dict[str, bytes | StepError] = {}
        other: list[str] = []
        await ep.listen_replies("_R.a.", got.__setitem__)
        await ep.listen_replies("_R.b.", lambda rid, _: other.append(rid))
        await node.reply_ok("_R.a.r1", b"payload")
        await node.reply_error("_R.a.r2", StepError(grpc.StatusCode.NOT_FOUND, "no\nroom"))
        await node.reply_ok("_R.a.r3.deeper", b"ignored")
        assert got["r1"] == b"payload"
        err = got["r2"]
        assert isinstance(err, StepError)
        assert (err.code, err.message) == (grpc.StatusCode.NOT_FOUND, "no room")  # one line
        assert sorted(got) == ["r1", "r2"] and other == []

    run(scenario)


def test_data_sink_and_connection_events(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        t = MemoryTransport(broker, env(tmp_path))
        events: list[str] = []

        async def down() -> None:
            events.append("down")

        async def up() -> None:
            events.append("up")

        await t.connect("t", ConnectionEvents(down, up))
        await t.ensure_data_stream()
        subject = contract.data_subject("p", "db", "rooms")
        await t.save_record(subject, b"1")
        await t.save_record(contract.data_subject("p", "db", "other"), b"x")
        await t.save_record(subject, b"2")
        assert await t.scan_records(subject) == [b"1", b"2"]
        await t.disconnect()
        assert not t.is_connected
        with pytest.raises(Unreachable):
            await t.save_record(subject, b"3")
        await t.reconnect()
        assert events == ["down", "up"] and t.is_connected

    run(scenario)


def test_consumer_state_counts_replicas_with_room_deliveries_and_unsettled(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        e = env(tmp_path)
        t, stream, consumer = await transport(broker, e)
        assert await t.consumer_state(stream, "nobody", 1.0) is None
        assert await t.consumer_state("no-stream", consumer, 1.0) is None
        assert await t.consumer_state(stream, consumer, 1.0) == ConsumerState(0, 0, 0)
        held: list[Delivery] = []

        async def hold(d: Delivery) -> None:
            held.append(d)
            await asyncio.Event().wait()  # busy until crashed

        replicas = []
        for _ in range(2):
            r, _, _ = await transport(broker, e)
            c = r.consume(stream, consumer, hold, 1)
            await c.start()
            replicas.append(r)
        assert await t.consumer_state(stream, consumer, 1.0) == ConsumerState(2, 0, 0)
        await t.publish(SUBJECT, b"x", step_headers("r1", 0, "0", ""), 1.0)
        await until(lambda: len(held) == 1)
        # the replica holding it has no room: it asks for nothing, as JetStream's would
        assert await t.consumer_state(stream, consumer, 1.0) == ConsumerState(1, 1, 1)
        for r in replicas:
            await r.crash()
        assert await t.consumer_state(stream, consumer, 1.0) == ConsumerState(0, 1, 1)
        await t.disconnect()
        with pytest.raises(Unreachable):
            await t.consumer_state(stream, consumer, 1.0)

    run(scenario)


def test_a_delivery_says_when_its_message_was_stored(tmp_path: Path) -> None:
    """As JetStream's ack subject does: no header carries it (runner.transport.nats)."""
    async def scenario() -> None:
        broker = MemoryBroker()
        t, stream, consumer = await transport(broker, env(tmp_path))
        got: list[Delivery] = []

        async def handle(d: Delivery) -> None:
            got.append(d)
            await d.ack()

        before = time.time()
        await t.publish(SUBJECT, b"x", step_headers("r1", 0, "0", ""), 1.0)
        after = time.time()
        c = t.consume(stream, consumer, handle, 1)
        await c.start()
        await until(lambda: bool(got))
        assert contract.HDR_PUBLISHED not in got[0].headers
        assert before <= got[0].published <= after
        await c.stop(1.0)

    run(scenario)
