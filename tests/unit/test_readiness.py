"""The entrypoint is ready only while every node takes work (runner.readiness), on the
in-memory transport: down until a replica pulls (not during its init), up at once when
one does, down again only after DOWN_AFTER without one (no flap on a gap, none while a
busy node makes progress), a broker that does not answer never blocks the probes, and
/readyz and gRPC health say the same."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from memory_run import MemoryRun, memory_run

from runner import contract, node
from runner.readiness import NodeWatch, Step, steps_of
from runner.transport import ConsumerState, Delivery, Unreachable, step_headers
from runner.transport.memory import MemoryBroker, MemoryConsumer, MemoryTransport

SUBJECT = contract.step_subject("p", "v", "wf", 0)
DOWN_AFTER = 10.0

ECHO = """
from logic_pb2 import Req, Resp

async def handler(ctx, data: Req):
    return Resp(text=data.text)
"""

# init waits until the test opens GATE (set on the module before start); passes data on
GATED = """
from logic_pb2 import Req

GATE = None

async def init(ctx):
    await GATE.wait()

async def handler(ctx, data: Req):
    return data
"""


def run(scenario: Callable[[], Awaitable[None]], limit: float = 30) -> None:
    asyncio.run(asyncio.wait_for(scenario(), limit))


class Clock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def version_env(tmp_path: Path, chain: tuple[str, ...] = ("n",)) -> contract.RunnerEnv:
    return contract.RunnerEnv(project="p", version="v", version_dir=str(tmp_path), proto="x",
                              workflows=(contract.Workflow("wf", "Run", chain),))


async def replica(broker: MemoryBroker, env: contract.RunnerEnv,
                  handle: Callable[[Delivery], Awaitable[None]] | None = None,
                  max_inflight: int = 4, step: int = 0,
                  node: str = "n") -> tuple[MemoryTransport, MemoryConsumer]:
    """A replica of `node` pulling from `step` (acks each message unless `handle` is given)."""
    t = MemoryTransport(broker, env)
    await t.connect("replica")
    stream = await t.ensure_work_stream("wf")
    consumer = await t.ensure_consumer("wf", step, node)

    async def ack(d: Delivery) -> None:
        await d.ack()

    c = t.consume(stream, consumer, handle or ack, max_inflight)
    await c.start()
    assert isinstance(c, MemoryConsumer)
    return t, c


async def watcher(broker: MemoryBroker, env: contract.RunnerEnv, clock: Clock,
                  changes: list[bool] | None = None, **kw: Any) -> tuple[NodeWatch,
                                                                         MemoryTransport]:
    t = MemoryTransport(broker, env)
    await t.connect("entrypoint")
    await t.ensure_work_stream("wf")
    watch: NodeWatch

    async def changed() -> None:
        if changes is not None:
            changes.append(watch.ready)

    watch = NodeWatch(t, steps_of(env), changed, down_after=DOWN_AFTER, clock=clock, **kw)
    return watch, t


def test_steps_are_every_consumer_once_with_its_node(tmp_path: Path) -> None:
    env = replace(version_env(tmp_path), workflows=(
        contract.Workflow("a", "A", ("etl", "model", "etl")),
        contract.Workflow("b", "B", ("etl",))))
    a, b = contract.stream_name("p", "v", "a"), contract.stream_name("p", "v", "b")
    assert steps_of(env) == [Step(a, contract.consumer_name(0, "etl"), "etl"),
                             Step(a, contract.consumer_name(1, "model"), "model"),
                             Step(a, contract.consumer_name(2, "etl"), "etl"),
                             Step(b, contract.consumer_name(0, "etl"), "etl")]


def test_the_reason_names_every_node_not_taking_work(tmp_path: Path) -> None:
    async def scenario() -> None:
        env = version_env(tmp_path, ("etl", "model", "out"))
        watch, _ = await watcher(MemoryBroker(), env, Clock())
        assert not await watch.poll()
        assert watch.reason() == "no replica of nodes etl, model, out is taking work (yet)"

    run(scenario)


def test_down_until_a_replica_pulls_then_up_at_the_first_poll(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker, env, clock = MemoryBroker(), version_env(tmp_path), Clock()
        changes: list[bool] = []
        watch, _ = await watcher(broker, env, clock, changes)
        assert not watch.ready  # nothing seen yet
        assert not await watch.poll()  # no consumer at all
        assert watch.down() == ["n"]
        assert watch.reason() == "no replica of node n is taking work (yet)"
        t = MemoryTransport(broker, env)
        await t.connect("node in init")
        await t.ensure_work_stream("wf")
        await t.ensure_consumer("wf", 0, "n")  # the node's start-up creates it, then init
        clock.now += 60
        assert not await watch.poll()
        await replica(broker, env)
        assert await watch.poll()
        assert watch.down() == [] and watch.reason() == ""
        assert changes == [True]

    run(scenario)


def test_ready_needs_every_step_of_every_node(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker, env, clock = MemoryBroker(), version_env(tmp_path, ("a", "b", "a")), Clock()
        watch, _ = await watcher(broker, env, clock)
        await replica(broker, env, node="a")  # step 0 only
        assert not await watch.poll()
        assert watch.down() == ["a", "b"]  # a's step 2 has no puller yet
        await replica(broker, env, step=1, node="b")
        await replica(broker, env, step=2, node="a")
        assert await watch.poll()

    run(scenario)


def test_all_replicas_gone_is_down_after_down_after_not_before(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker, env, clock = MemoryBroker(), version_env(tmp_path), Clock()
        changes: list[bool] = []
        watch, _ = await watcher(broker, env, clock, changes)
        first, _ = await replica(broker, env)
        second, _ = await replica(broker, env)
        assert await watch.poll()
        await first.crash()
        clock.now += DOWN_AFTER * 2
        assert await watch.poll()  # one replica left
        await second.crash()
        for _ in range(4):  # polls within DOWN_AFTER of the last sight: still up
            clock.now += DOWN_AFTER / 5
            assert await watch.poll()
        clock.now += DOWN_AFTER / 5
        assert not await watch.poll()
        assert watch.down() == ["n"]
        await replica(broker, env)  # restarted
        assert await watch.poll()
        assert changes == [True, False, True]

    run(scenario)


def test_a_gap_between_pull_requests_is_not_a_flap(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker, env, clock = MemoryBroker(), version_env(tmp_path), Clock()
        changes: list[bool] = []
        watch, _ = await watcher(broker, env, clock, changes)
        _, consumer = await replica(broker, env)
        assert await watch.poll()
        for _ in range(20):  # one poll in two falls in a gap (no request outstanding)
            await consumer.stop(0.1)
            clock.now += DOWN_AFTER * 0.6
            assert await watch.poll()
            await consumer.start()
            clock.now += DOWN_AFTER * 0.6
            assert await watch.poll()
        assert changes == [True]

    run(scenario)


def test_a_busy_node_stays_up_while_work_moves_and_goes_down_when_it_stops(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        broker, env, clock = MemoryBroker(), version_env(tmp_path), Clock()
        watch, t = await watcher(broker, env, clock)
        held: asyncio.Queue[tuple[Delivery, asyncio.Event]] = asyncio.Queue()

        async def hold(d: Delivery) -> None:  # busy until the test lets it finish
            done = asyncio.Event()
            await held.put((d, done))
            await done.wait()
            await d.ack()

        _, consumer = await replica(broker, env, hold, max_inflight=1)
        assert await watch.poll()
        for i in range(6):
            await t.publish(SUBJECT, b"x", step_headers(f"r{i}", 0, "0", ""), 1.0)
        _, done = await asyncio.wait_for(held.get(), 5)
        for _ in range(5):  # its only slot taken: it asks for nothing, but messages finish
            assert not consumer.has_room()
            state = await t.consumer_state(*_step(env), 1.0)
            assert state is not None and state.waiting == 0
            done.set()
            _, done = await asyncio.wait_for(held.get(), 5)  # one settled, one delivered
            clock.now += DOWN_AFTER * 2
            assert await watch.poll()
        clock.now += DOWN_AFTER  # the last one never finishes
        assert not await watch.poll()  # busy, finishing nothing: it takes no work
        done.set()

    run(scenario)


def _step(env: contract.RunnerEnv) -> tuple[str, str]:
    step = steps_of(env)[0]
    return step.stream, step.consumer


def test_a_broker_that_does_not_answer_never_blocks_and_goes_down_in_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        broker, env, clock = MemoryBroker(), version_env(tmp_path), Clock()
        watch, t = await watcher(broker, env, clock, ask_within=0.05)
        await replica(broker, env)
        assert await watch.poll()

        async def hang(self: MemoryTransport, stream: str, consumer: str,
                       within: float) -> ConsumerState | None:
            await asyncio.Event().wait()
            return None

        monkeypatch.setattr(t, "consumer_state", hang.__get__(t))
        clock.now += DOWN_AFTER / 2
        assert await asyncio.wait_for(watch.poll(), 5)  # bounded by ask_within; still up
        clock.now += DOWN_AFTER / 2
        assert not await asyncio.wait_for(watch.poll(), 5)

    run(scenario)


def test_an_unreachable_broker_is_unseen_and_down_after_down_after(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker, env, clock = MemoryBroker(), version_env(tmp_path), Clock()
        watch, t = await watcher(broker, env, clock)
        await replica(broker, env)
        assert await watch.poll()
        await t.disconnect()
        with pytest.raises(Unreachable):
            await t.consumer_state(*_step(env), 1.0)
        clock.now += DOWN_AFTER - 1
        assert await watch.poll()
        clock.now += 1
        assert not await watch.poll()
        await t.reconnect()
        assert await watch.poll()

    run(scenario)


# --- the entrypoint's /readyz and gRPC health ---------------------------------------------


async def readyz(r: MemoryRun) -> tuple[int, str]:
    """GET /readyz of the entrypoint (bounded)."""
    assert r.entrypoint is not None and r.entrypoint.web is not None
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", r.entrypoint.web.port), 5)
    try:
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def health(r: MemoryRun, service: str = "") -> int:
    assert r.channel is not None
    stub: Any = health_pb2_grpc.HealthStub(r.channel)  # (no type stubs)
    answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(answer.status)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_the_entrypoint_is_not_ready_while_a_node_is_in_init(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"slow": GATED, "echo": ECHO},
                              start=False) as r:
            ep = await r.start_entrypoint()
            await r.start_node("echo")
            env = replace(r.env, node="slow", handler="src/slow.py")
            proc = node.prepare(env, MemoryTransport(r.broker, env))
            r.nodes.setdefault("slow", []).append(proc)
            gate = asyncio.Event()
            proc.mod.module.GATE = gate  # type: ignore[attr-defined]  # its global
            starting = asyncio.create_task(proc.start())
            for _ in range(3):  # its consumer exists; its init has not returned
                await ep.nodes.poll()
                assert not ep.ready()
                assert await readyz(r) == (
                    503, "not ready: no replica of node slow is taking work (yet)\n")
                assert await health(r) == NOT_SERVING
                assert await health(r, "logic.Logic") == NOT_SERVING
            waiting = asyncio.create_task(r.call(deadline=10, text="early"))
            gate.set()
            await asyncio.wait_for(starting, 5)
            await ep.nodes.poll()
            assert ep.ready()
            assert await readyz(r) == (200, "ready\n")
            assert await health(r) == SERVING
            assert await health(r, "logic.Logic") == SERVING
            assert (await r.call(deadline=2, text="right after")).text == "right after"
            assert (await asyncio.wait_for(waiting, 10)).text == "early"  # it waited

    run(scenario)


def test_the_entrypoint_goes_not_ready_when_a_nodes_replicas_die_and_back(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"echo": ECHO}, replicas={"echo": 2}) as r:
            ep = r.entrypoint
            assert ep is not None and ep.ready()
            ep.nodes.down_after = 0.0  # no hysteresis: the first poll without a puller
            for proc in r.nodes.pop("echo"):
                assert isinstance(proc.transport, MemoryTransport)
                await proc.transport.crash()
            await ep.nodes.poll()
            assert not ep.ready()
            assert (await readyz(r))[0] == 503
            assert await health(r) == NOT_SERVING
            await r.start_node("echo")
            await r.nodes_taking_work()
            assert ep.ready() and await health(r) == SERVING
            assert (await r.call(text="again")).text == "again"

    run(scenario)


def test_the_probes_answer_while_the_broker_hangs(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"echo": ECHO}) as r:
            ep = r.entrypoint
            assert ep is not None
            asked = asyncio.Event()

            async def hang(stream: str, consumer: str, within: float) -> None:
                asked.set()
                await asyncio.Event().wait()

            monkeypatch.setattr(ep.transport, "consumer_state", hang)
            await asyncio.wait_for(asked.wait(), 10)  # the background poll is stuck on it
            assert await readyz(r) == (200, "ready\n")  # answered from the state kept
            assert await health(r) == SERVING

    run(scenario)


def test_stopping_ends_the_watch_and_is_not_ready(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"echo": ECHO}) as r:
            ep = r.entrypoint
            assert ep is not None and ep.ready()
            await ep.stop(0.5)
            r.entrypoint = None
            assert not ep.ready()
            assert ep.not_ready_reason() == "stopping"

    run(scenario)


# --- at most once: probes of the queue group, no consumer ----------------------------------


def at_most_once_env(tmp_path: Path, chain: tuple[str, ...] = ("n",)) -> contract.RunnerEnv:
    return replace(version_env(tmp_path), workflows=(
        contract.Workflow("wf", "Run", chain, contract.AT_MOST_ONCE),))


async def member(broker: MemoryBroker, env: contract.RunnerEnv,
                 handle: Callable[[Delivery], Awaitable[None]] | None = None,
                 max_inflight: int = 4) -> tuple[MemoryTransport, Any]:
    """A replica of node n in step 0's queue group."""
    t = MemoryTransport(broker, env)
    await t.connect("replica")

    async def done(d: Delivery) -> None:
        await d.ack()

    server = t.serve(contract.call_subject("p", "v", "wf", 0),
                     contract.queue_group("p", "v", "wf", 0, "n"), handle or done, max_inflight)
    await server.start()
    return t, server


def test_at_most_once_steps_are_probed_in_their_queue_group(tmp_path: Path) -> None:
    env = replace(version_env(tmp_path), workflows=(
        contract.Workflow("a", "A", ("etl", "model"), contract.AT_MOST_ONCE),
        contract.Workflow("b", "B", ("etl",))))
    probe = [contract.probe_subject(contract.call_subject("p", "v", "a", i)) for i in (0, 1)]
    assert steps_of(env) == [
        Step("", contract.queue_group("p", "v", "a", 0, "etl"), "etl", probe=probe[0]),
        Step("", contract.queue_group("p", "v", "a", 1, "model"), "model", probe=probe[1]),
        Step(contract.stream_name("p", "v", "b"), contract.consumer_name(0, "etl"), "etl")]


def test_an_at_most_once_step_is_up_once_a_replica_joins_and_down_after_down_after(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        broker, env, clock = MemoryBroker(), at_most_once_env(tmp_path), Clock()
        changes: list[bool] = []
        watch, _ = await watcher(broker, env, clock, changes)
        assert not await watch.poll()
        assert watch.reason() == "no replica of node n is taking work (yet)"
        first, _ = await member(broker, env)
        second, _ = await member(broker, env)
        assert await watch.poll()
        await first.crash()
        clock.now += DOWN_AFTER * 2
        assert await watch.poll()  # one replica left
        await second.crash()
        clock.now += DOWN_AFTER / 2
        assert await watch.poll()  # within DOWN_AFTER of the last sight: still up
        clock.now += DOWN_AFTER / 2
        assert not await watch.poll()
        await member(broker, env)
        assert await watch.poll()
        assert changes == [True, False, True]
        assert all(not s.consumers for s in broker.streams.values())  # asked none

    run(scenario)


def test_an_at_most_once_replica_with_every_slot_busy_still_answers_probes(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        broker, env, clock = MemoryBroker(), at_most_once_env(tmp_path), Clock()
        watch, t = await watcher(broker, env, clock)
        gate = asyncio.Event()

        async def hold(d: Delivery) -> None:
            await gate.wait()

        _, server = await member(broker, env, hold, max_inflight=1)
        await t.call_step(contract.call_subject("p", "v", "wf", 0), b"",
                          step_headers("c", 0, "", ""))
        assert len(server.running) == 1
        for _ in range(3):
            clock.now += DOWN_AFTER * 2
            assert await watch.poll()
        gate.set()

    run(scenario)


def test_an_at_most_once_probe_that_gets_no_answer_is_unseen(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        broker, env, clock = MemoryBroker(), at_most_once_env(tmp_path), Clock()
        watch, t = await watcher(broker, env, clock, ask_within=0.05)
        await member(broker, env)
        assert await watch.poll()

        async def hang(subject: str, within: float) -> bool:
            await asyncio.Event().wait()
            return True

        monkeypatch.setattr(t, "probe_step", hang)
        clock.now += DOWN_AFTER / 2
        assert await asyncio.wait_for(watch.poll(), 5)
        clock.now += DOWN_AFTER / 2
        assert not await asyncio.wait_for(watch.poll(), 5)

    run(scenario)


def test_the_entrypoint_of_an_at_most_once_workflow_is_ready_after_the_nodes_init(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"slow": GATED, "echo": ECHO}, start=False,
                              delivery=contract.AT_MOST_ONCE) as r:
            ep = await r.start_entrypoint()
            await r.start_node("echo")
            env = replace(r.env, node="slow", handler="src/slow.py")
            proc = node.prepare(env, MemoryTransport(r.broker, env))
            r.nodes.setdefault("slow", []).append(proc)
            gate = asyncio.Event()
            proc.mod.module.GATE = gate  # type: ignore[attr-defined]  # its global
            starting = asyncio.create_task(proc.start())
            await ep.nodes.poll()
            assert not ep.ready()
            assert await readyz(r) == (
                503, "not ready: no replica of node slow is taking work (yet)\n")
            gate.set()
            await asyncio.wait_for(starting, 5)
            await ep.nodes.poll()
            assert ep.ready() and await readyz(r) == (200, "ready\n")
            assert await health(r) == SERVING

    run(scenario)
