"""The entrypoint's logic on the in-memory transport, over real gRPC: bad requests, the
broker unreachable or losing a stream, payload limits, deadlines, a node giving up, a
request that may or may not have been stored (UNAVAILABLE only when it surely was not),
and draining."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from pathlib import Path

import grpc
import pytest
from memory_run import failure, memory_run, run

from runner import contract
from runner.transport import Delivery, NoStream, NotStored, TransportError
from runner.transport import base as transport_base
from runner.transport.memory import MemoryBroker, MemoryTransport

ECHO = """
from logic_pb2 import Req, Resp

async def handler(ctx, data: Req):
    return Resp(text=data.text, blob=b"x" * data.grow)
"""


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


# Writes the request id to the file named by the request's text: how often a request ran.
RECORD = """
from logic_pb2 import Req, Resp

async def handler(ctx, data: Req):
    with open(data.text, "a") as f:
        f.write(ctx.request_id + "\\n")
    return Resp(text=data.text)
"""

SLOW = """
import asyncio

from logic_pb2 import Req, Resp

async def handler(ctx, data: Req):
    await asyncio.sleep(data.sleep)
    return Resp(text=data.text)
"""


class Scripted(MemoryTransport):
    """Each publish does what the next word of `script` says (then "store" once it ends):
    "store"; "stored-no-ack" (stored, the PubAck lost: NotStored); "lost" (sent, never
    stored: NotStored); "no-stream"; "refused" (the server answered with an error)."""

    def __init__(self, broker: MemoryBroker, env: contract.RunnerEnv, script: list[str]
                 ) -> None:
        super().__init__(broker, env)
        self.script = script
        self.msg_ids: list[str] = []

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str],
                      within: float) -> None:
        self.msg_ids.append(headers[contract.HDR_MSG_ID])
        step = self.script.pop(0) if self.script else "store"
        if step in ("store", "stored-no-ack"):
            await super().publish(subject, payload, headers, within)
        if step in ("stored-no-ack", "lost"):
            raise NotStored("no PubAck in time")
        if step == "no-stream":
            raise NoStream(f"no stream takes {subject}")
        if step == "refused":
            raise TransportError("maximum messages exceeded")


def ran(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_request_stored_without_its_pub_ack_is_answered_once_not_unavailable(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"record": RECORD}, start=False) as r:
            t = Scripted(r.broker, r.env, ["stored-no-ack"])
            await r.start_entrypoint(t)
            await r.start_node("record")
            log = tmp_path / "ran.log"
            assert (await r.call(text=str(log))).text == str(log)
            assert len(t.msg_ids) == 2 and len(set(t.msg_ids)) == 1, t.msg_ids
            await asyncio.sleep(0.1)
            assert len(ran(log)) == 1  # the second copy was a duplicate: dropped

    run(scenario)


def test_a_request_never_confirmed_is_deadline_exceeded_not_unavailable(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"record": RECORD}, start=False) as r:
            t = Scripted(r.broker, r.env, ["lost", "no-stream"] + ["lost"] * 1000)
            ep = await r.start_entrypoint(t)
            code, _ = await failure(r, deadline=1.0, text=str(tmp_path / "ran.log"))
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert len(t.msg_ids) >= 3 and len(set(t.msg_ids)) == 1, t.msg_ids
            # the client's deadline ends the call on both sides; the server's side may
            # finish a moment after the client hears DEADLINE_EXCEEDED
            for _ in range(100):
                if not ep.pending:
                    break
                await asyncio.sleep(0.01)
            assert ep.pending == {}
            tries = len(t.msg_ids)
            await asyncio.sleep(0.3)
            assert len(t.msg_ids) == tries  # no publishing after the call ended

    run(scenario)


def test_a_lost_publish_sent_again_is_answered_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"record": RECORD}, start=False) as r:
            t = Scripted(r.broker, r.env, ["lost", "no-stream", "store"])
            await r.start_entrypoint(t)
            await r.start_node("record")
            log = tmp_path / "ran.log"
            assert (await r.call(deadline=5.0, text=str(log))).text == str(log)
            assert len(t.msg_ids) == 3 and len(set(t.msg_ids)) == 1, t.msg_ids
            assert len(ran(log)) == 1

    run(scenario)


def test_a_publish_the_server_refuses_is_unavailable_and_never_runs(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"record": RECORD}, start=False) as r:
            t = Scripted(r.broker, r.env, ["refused"])
            await r.start_entrypoint(t)
            await r.start_node("record")
            log = tmp_path / "ran.log"
            code, details = await failure(r, text=str(log))
            assert code == grpc.StatusCode.UNAVAILABLE
            assert details == "NATS did not store the request: maximum messages exceeded"
            await asyncio.sleep(0.1)
            assert ran(log) == [] and len(t.msg_ids) == 1

    run(scenario)


def test_publish_until_stops_within_the_duplicate_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sent again after the stream forgot the message id, a stored copy could run twice."""
    monkeypatch.setattr(transport_base, "REPUBLISH_FOR", 0.3)

    async def scenario() -> None:
        async with memory_run(tmp_path, {"record": RECORD}, start=False) as r:
            t = Scripted(r.broker, r.env, ["lost"] * 1000)
            await t.connect("t")
            stored = await transport_base.publish_until(
                t, "kai.logic.v1.wf.0", b"", {contract.HDR_MSG_ID: "x:0"},
                time.time() + 30, lambda: False)
            assert stored is False
            assert 2 <= len(t.msg_ids) < 1000

    run(scenario)


def test_draining_finishes_the_calls_taken_and_answers_later_ones_unavailable(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"slow": SLOW}) as r:
            ep = r.entrypoint
            assert ep is not None
            taken = asyncio.ensure_future(r.call(text="taken", sleep=0.3))
            for _ in range(200):
                if ep.pending:
                    break
                await asyncio.sleep(0.01)
            assert ep.pending
            stopping = asyncio.ensure_future(ep.stop(5.0))
            await asyncio.sleep(0.05)
            code, details = await failure(r, text="late")
            assert (code, details) == (grpc.StatusCode.UNAVAILABLE,
                                       "the entrypoint is shutting down")
            assert (await taken).text == "taken"
            await stopping

    run(scenario)


def test_the_readmes_retry_policy_retries_unavailable_and_nothing_else() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Statuses a client sees, and which to retry"):]
    service_config = section[section.index("```json\n") + 8:section.index("```\n", 1)]
    service = json.loads(service_config)["methodConfig"][0]["name"][0]["service"]
    answers = {"unavailable": [grpc.StatusCode.UNAVAILABLE] * 2,
               "internal": [grpc.StatusCode.INTERNAL] * 2}
    seen: collections.Counter[str] = collections.Counter()

    async def handle(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
                     ) -> bytes:
        key = request.decode()
        seen[key] += 1
        if answers[key]:
            await context.abort(answers[key].pop(0), "try again")
        return b"ok"

    async def scenario() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            service, {"Do": grpc.unary_unary_rpc_method_handler(handle)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[
                    ("grpc.service_config", service_config),
                    ("grpc.enable_retries", 1)]) as channel:
                stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                    f"/{service}/Do")
                assert await stub(b"unavailable", timeout=10) == b"ok"
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await stub(b"internal", timeout=10)
                assert failed.value.code() == grpc.StatusCode.INTERNAL
        finally:
            await server.stop(None)

    run(scenario)
    assert seen == {"unavailable": 3, "internal": 1}
