"""A 3-node chain through real processes, real NATS JetStream and real gRPC.

One version serves every case here (module scope, so processes start once):

* etl: KRE 1.23 style, unchanged: Any + Unpack, ctx.set/get in init, async handler,
  ctx.prediction.save, ctx.measurement.save (not awaited, as in KRE), ctx.db.save/find;
* model: a typed sync handler (`data: Middle` arrives unpacked, runs in a thread);
* out: the last node, async, typed with a string annotation; a request can ask it to
  raise, to be slow or to return the wrong type.

Every case runs in both delivery modes (the fixture's parameter): the same handlers give the
same replies and statuses at least once (JetStream) and at most once (core NATS).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import grpc
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from runner_procs import Version, http_get, wait_ready, wait_taking_work, write_version

from runner import contract
from runner.natsserver import NatsServer
from runner.proto import compile_proto

pytestmark = pytest.mark.integration

PROTO = """
syntax = "proto3";
package test;

message Request { string name = 1; string mode = 2; }
message Middle { string text = 1; string mode = 2; }
message Response { string greeting = 1; }

service Greeter {
  rpc Greet (Request) returns (Response);
}
"""

ETL = '''
from api_pb2 import Middle, Request


def init(ctx):
    ctx.set("prefix", "Hello")
    ctx.logger.info("etl init done")


async def handler(ctx, data):
    req = Request()
    data.Unpack(req)
    if req.mode == "bad-prediction":
        await ctx.prediction.save(predicted_value="", true_value="x")
    await ctx.prediction.save(predicted_value="a", true_value="b", extra={"k": 1})
    await ctx.prediction.save(error=ctx.prediction.ERR_MISSING_VALUES)
    ctx.measurement.save("greetings", {"count": 1}, {"who": req.name},
                         precision=ctx.measurement.PRECISION_MS)
    await ctx.db.save("people", {"name": req.name, "rid": ctx.request_id})
    seen = await ctx.db.find("people", {"name": req.name})
    ctx.logger.info("saw %s %d times", req.name, len(seen))
    return Middle(text=f"{ctx.get('prefix')}, {req.name} (seen {len(seen)})", mode=req.mode)
'''

MODEL = '''
import threading

from api_pb2 import Middle


def handler(ctx, data: Middle):
    assert threading.current_thread() is not threading.main_thread()
    found = ctx.db.find("people", {"rid": ctx.request_id})  # sync call from a thread
    return Middle(text=data.text + f" [model {len(found)}]", mode=data.mode)
'''

OUT = '''
from __future__ import annotations

import asyncio

from api_pb2 import Middle, Response


async def handler(ctx, data: Middle):
    if data.mode == "fail":
        raise ValueError("the model exploded")
    if data.mode == "slow":
        await asyncio.sleep(3)
    if data.mode == "wrong":
        return Middle(text="oops")
    return Response(greeting=data.text + "!")
'''


@pytest.fixture(scope="module", params=contract.DELIVERY_MODES)
def chain(tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> Iterator[tuple[Version, NatsServer]]:
    root = tmp_path_factory.mktemp("chain")
    with NatsServer(store_dir=root / "nats") as server:
        version = write_version(
            root, server.url, PROTO, {"etl": ETL, "model": MODEL, "out": OUT},
            [contract.Workflow("greet", "Greet", ("etl", "model", "out"), request.param)])
        procs = [version.entrypoint(), version.node("etl"), version.node("model"),
                 version.node("out")]
        try:
            wait_ready(*procs)
            wait_taking_work(procs[0])
            yield version, server
        finally:
            version.close()


def _classes(version: Version) -> tuple[type, type]:
    compiled = compile_proto(version.dir, "proto/api.proto")
    return compiled.message_class("test.Request"), compiled.message_class("test.Response")


def _call(version: Version, payload: bytes, timeout: float = 10.0) -> bytes:
    port = version.procs[0].grpc_port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        rpc = channel.unary_unary("/test.Greeter/Greet")
        return rpc(payload, timeout=timeout)


def _greet(version: Version, name: str, mode: str = "", timeout: float = 10.0) -> str:
    req_cls, resp_cls = _classes(version)
    raw = _call(version, req_cls(name=name, mode=mode).SerializeToString(), timeout)
    return resp_cls.FromString(raw).greeting


def test_three_node_chain_answers(chain: tuple[Version, NatsServer]) -> None:
    version, _ = chain
    assert _greet(version, "Ada") == "Hello, Ada (seen 1) [model 1]!"
    assert _greet(version, "Ada") == "Hello, Ada (seen 2) [model 1]!"


def test_handler_exception_is_internal_with_node_name(chain: tuple[Version, NatsServer]) -> None:
    version, _ = chain
    with pytest.raises(grpc.RpcError) as err:
        _greet(version, "Bob", "fail")
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == "node out: the model exploded"


def test_invalid_prediction_is_internal_from_etl(chain: tuple[Version, NatsServer]) -> None:
    version, _ = chain
    with pytest.raises(grpc.RpcError) as err:
        _greet(version, "Bob", "bad-prediction")
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "node etl" in err.value.details() and "predicted_value" in err.value.details()


def test_undecodable_request_is_invalid_argument(chain: tuple[Version, NatsServer]) -> None:
    version, _ = chain
    with pytest.raises(grpc.RpcError) as err:
        _call(version, b"\xff\xff\xff")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "test.Request" in err.value.details()


def test_slow_node_gives_deadline_exceeded(chain: tuple[Version, NatsServer]) -> None:
    version, _ = chain
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        _greet(version, "Slow", "slow", timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.0


def test_wrong_type_on_last_node_is_internal(chain: tuple[Version, NatsServer]) -> None:
    version, _ = chain
    with pytest.raises(grpc.RpcError) as err:
        _greet(version, "W", "wrong")
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == (
        "node out returned test.Middle, but rpc Greet returns test.Response")


def test_health_and_reflection(chain: tuple[Version, NatsServer]) -> None:
    version, _ = chain
    with grpc.insecure_channel(f"127.0.0.1:{version.procs[0].grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "test.Greeter"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services=""),
                  reflection_pb2.ServerReflectionRequest(file_containing_symbol="test.Greeter")]),
            timeout=5))
        names = {s.name for s in answers[0].list_services_response.service}
        assert {"test.Greeter", "grpc.health.v1.Health"} <= names
        files = answers[1].file_descriptor_response.file_descriptor_proto
        assert files and b"Greet" in files[0]


def test_web_endpoints(chain: tuple[Version, NatsServer]) -> None:
    version, _ = chain
    _greet(version, "Metrics")
    ep = version.procs[0]
    assert http_get(ep.web_port, "/healthz")[0] == 200
    assert http_get(ep.web_port, "/readyz")[0] == 200
    status, body = http_get(ep.web_port, "/proto")
    assert status == 200 and "service Greeter" in body
    status, body = http_get(ep.web_port, "/metrics")
    assert status == 200
    assert 'kai_entrypoint_requests_total{code="OK",rpc="Greet",version="v1"}' in body
    assert 'kai_entrypoint_request_seconds_bucket{code="OK",le="+Inf",rpc="Greet",version="v1"}' \
        in body
    assert http_get(ep.web_port, "/nope")[0] == 404
    node = version.procs[1]
    assert http_get(node.web_port, "/readyz")[0] == 200
    status, body = http_get(node.web_port, "/metrics")
    assert 'kai_node_messages_total{node="etl",outcome="ok",version="v1",workflow="greet"}' \
        in body
    for metric in ("handler", "step", "queue_wait"):
        assert f'kai_node_{metric}_seconds_count{{node="etl",version="v1",workflow="greet"}}' \
            in body


def test_records_are_stored_in_the_data_stream(chain: tuple[Version, NatsServer]) -> None:
    version, server = chain
    _greet(version, "Rec")

    async def read() -> dict[str, list[dict[str, object]]]:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            out: dict[str, list[dict[str, object]]] = {}
            sub = await js.subscribe("kai-data.test.>", ordered_consumer=True)
            info = await js.stream_info(contract.data_stream_name("test"))
            for _ in range(info.state.messages):
                msg = await sub.next_msg(timeout=5)
                kind = msg.subject.split(".")[2]
                out.setdefault(kind, []).append(json.loads(msg.data))
            return out
        finally:
            await nc.close()

    records = asyncio.run(read())
    prediction = records["prediction"][0]
    assert prediction["predictedValue"] == "a" and prediction["trueValue"] == "b"
    assert prediction["version"] == "v1" and prediction["node"] == "etl"
    assert prediction["workflow"] == "greet" and prediction["requestId"]
    assert {r["error"] for r in records["prediction"]} >= {"", "missing_values"}
    measurement = records["measurement"][0]
    assert measurement["measurement"] == "greetings" and measurement["precision"] == "ms"
    assert measurement["tags"]["version"] == "v1"
    assert any(r["doc"]["name"] == "Rec" for r in records["db"])


def test_logs_carry_request_node_and_workflow(chain: tuple[Version, NatsServer]) -> None:
    version, _ = chain
    _greet(version, "Logged")
    etl = version.procs[1]
    lines = [line for line in etl.text().splitlines() if "saw Logged" in line]
    assert lines and "node=etl" in lines[0] and "workflow=greet" in lines[0]
    assert "request=" in lines[0] and "request=-" not in lines[0]
    init_line = next(line for line in etl.text().splitlines() if "etl init done" in line)
    assert "request=-" in init_line
