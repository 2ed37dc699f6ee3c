"""The entrypoint's gRPC metadata and reflection, over real gRPC and a real nats-server:
x-request-id in and out (OK and error answers, and the records the nodes save), and server
reflection v1alpha (grpcio-reflection's client) and v1 (a raw stub)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from runner_procs import Version, wait_ready, write_version

from runner import contract
from runner.natsserver import NatsServer
from runner.proto import compile_proto

pytestmark = pytest.mark.integration

PROTO = """
syntax = "proto3";
package meta;
message Req { string text = 1; }
message Resp { string text = 1; string request_id = 2; }
service Meta { rpc Ask (Req) returns (Resp); }
"""

NODE = '''
import grpc
from api_pb2 import Req, Resp
from runner.sdk import Abort


async def handler(ctx, data: Req):
    if data.text == "missing":
        raise Abort(grpc.StatusCode.NOT_FOUND, "nothing called missing")
    await ctx.db.save("asked", {"text": data.text})
    return Resp(text=data.text, request_id=ctx.request_id)
'''

KEY = contract.REQUEST_ID_METADATA


@pytest.fixture
def version(tmp_path: Path, shared_nats: NatsServer) -> Iterator[Version]:
    v = write_version(tmp_path, shared_nats.url, PROTO, {"answer": NODE},
                      [contract.Workflow("ask", "Ask", ("answer",))], project="meta")
    try:
        wait_ready(v.entrypoint(), v.node("answer"))
        yield v
    finally:
        v.close()


def _ask(version: Version, text: str, request_id: str | None = None,
         ) -> tuple[object, str, grpc.StatusCode]:
    """(reply or None, the answer's x-request-id, its status code)."""
    compiled = compile_proto(version.dir, "proto/api.proto")
    req = compiled.message_class("meta.Req")(text=text)
    metadata = None if request_id is None else ((KEY, request_id),)
    with grpc.insecure_channel(f"127.0.0.1:{version.procs[0].grpc_port}") as channel:
        stub: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/meta.Meta/Ask")
        raw: bytes | None = None
        call: Any
        try:
            raw, call = stub.with_call(req.SerializeToString(), timeout=10, metadata=metadata)
        except grpc.RpcError as error:
            call = error  # a grpc.Call too
        initial = [v for k, v in call.initial_metadata() if k == KEY]
        code = call.code()
    assert len(initial) == 1
    reply = None if raw is None else compiled.message_class("meta.Resp").FromString(raw)
    return reply, str(initial[0]), code


def _records(url: str, project: str) -> list[dict[str, object]]:
    async def read() -> list[dict[str, object]]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            sub = await js.subscribe(f"kai-data.{project}.>", ordered_consumer=True)
            out = []
            for _ in range(1000):
                try:
                    msg = await sub.next_msg(timeout=1)
                except TimeoutError:
                    break
                out.append(json.loads(msg.data))
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def test_the_request_id_goes_in_and_comes_back_on_ok_and_on_errors(
        version: Version, shared_nats: NatsServer) -> None:
    reply, returned, code = _ask(version, "hello", "order-17/retry:1")
    assert code == grpc.StatusCode.OK and returned == "order-17/retry:1"
    assert reply.request_id == "order-17/retry:1"  # type: ignore[attr-defined]
    again, returned, code = _ask(version, "hello again", "order-17/retry:1")
    assert code == grpc.StatusCode.OK and returned == "order-17/retry:1"  # a retry runs
    assert again.text == "hello again"  # type: ignore[attr-defined]

    reply, returned, code = _ask(version, "missing", "lost-1")
    assert (reply, returned, code) == (None, "lost-1", grpc.StatusCode.NOT_FOUND)

    reply, generated, code = _ask(version, "no id")
    assert code == grpc.StatusCode.OK and generated
    assert reply.request_id == generated  # type: ignore[attr-defined]
    reply, replaced, code = _ask(version, "bad id", "has.a.dot")
    assert code == grpc.StatusCode.OK and replaced not in ("", "has.a.dot", generated)
    assert reply.request_id == replaced  # type: ignore[attr-defined]

    saved = {r["doc"]["text"]: r["requestId"]  # type: ignore[index]
             for r in _records(shared_nats.url, "meta")}
    assert saved == {"hello": "order-17/retry:1", "hello again": "order-17/retry:1",
                     "no id": generated, "bad id": replaced}


def test_server_reflection_v1alpha_with_grpcio_reflections_client(version: Version) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{version.procs[0].grpc_port}") as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        assert sorted(db.get_services()) == [
            "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection", "meta.Meta"]
        pool = descriptor_pool.DescriptorPool(db)
        service = pool.FindServiceByName("meta.Meta")
        method = service.methods_by_name["Ask"]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            "meta.Req", "meta.Resp")
        v1 = pool.FindServiceByName("grpc.reflection.v1.ServerReflection")
        assert v1.methods_by_name["ServerReflectionInfo"].input_type.full_name == (
            "grpc.reflection.v1.ServerReflectionRequest")


def test_server_reflection_v1_with_a_raw_stub(version: Version) -> None:
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="meta.Meta"),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.reflection.v1.ServerReflection"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.Such"),
    ]
    with grpc.insecure_channel(f"127.0.0.1:{version.procs[0].grpc_port}") as channel:
        info = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        answers = list(info(iter(requests), timeout=10))
    assert len(answers) == 4
    names = sorted(s.name for s in answers[0].list_services_response.service)
    assert names == ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                     "grpc.reflection.v1alpha.ServerReflection", "meta.Meta"]
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in answers[1].file_descriptor_response.file_descriptor_proto]
    assert [(f.name, f.package) for f in files] == [("proto/api.proto", "meta")]
    assert [m.name for m in files[0].service[0].method] == ["Ask"]
    v1 = descriptor_pb2.FileDescriptorProto.FromString(
        answers[2].file_descriptor_response.file_descriptor_proto[0])
    assert (v1.name, v1.package) == ("grpc/reflection/v1/reflection.proto",
                                     "grpc.reflection.v1")
    method = v1.service[0].method[0]
    assert (method.name, method.input_type) == (
        "ServerReflectionInfo", ".grpc.reflection.v1.ServerReflectionRequest")
    assert answers[3].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
