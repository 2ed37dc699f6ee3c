"""The entrypoint process: each workflow's rpc served over gRPC, answered through NATS.

A call to rpc R of workflow W:

1. the raw request bytes are decoded as R's input type (bad bytes → INVALID_ARGUMENT);
2. they travel, wrapped in a ``google.protobuf.Any``, to W's step 0 subject (JetStream),
   with the request id, the absolute deadline (the client's, or now + the request
   timeout), the reply inbox and the workflow in headers (over max payload →
   RESOURCE_EXHAUSTED; NATS disconnected → UNAVAILABLE at once);
3. the last node answers on the entrypoint's single inbox subscription (``<inbox>.*``):
   the answer's subject ends in the request id, which matches it to the call. An answer
   without HDR_STATUS (or with "OK") returns the payload as the reply, any other grpc code
   name becomes that status with HDR_ERROR as its details;
4. no answer by the deadline → DEADLINE_EXCEEDED.

When a node gives up on a message (the JetStream MAX_DELIVERIES advisory, e.g. a node that
crashes on it each time), the entrypoint answers that call INTERNAL naming the node, and
deletes the message. Health checking and server reflection are served on the same port.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import nats.errors
import nats.js.errors
from google.protobuf import any_pb2, descriptor_pb2
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.manager import JetStreamManager

from . import contract, metrics, transport
from .proto import CompiledProto, ProtoError, compile_proto
from .web import Response, WebServer

log = logging.getLogger("runner.entrypoint")

TYPE_URL_PREFIX = "type.googleapis.com/"
GRPC_OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]
Answer = tuple[str, str, bytes]  # (status code name, error message, payload)
# the rpcs are served generically: requests and replies stay serialized bytes
RpcContext = grpc.aio.ServicerContext[bytes, bytes]


class EntrypointError(Exception):
    """The entrypoint cannot start (bad proto, rpc missing, port taken ...)."""


@dataclass(frozen=True)
class Binding:
    """One rpc bound to its workflow."""

    workflow: contract.Workflow
    service: str  # full name of the service
    rpc: str
    input_type: type[Message]
    type_url: str
    subject: str  # step 0


def bind(env: contract.RunnerEnv, compiled: CompiledProto) -> list[Binding]:
    methods = compiled.methods()
    out = []
    for wf in env.workflows:
        method = methods.get(wf.rpc)
        if method is None:
            known = ", ".join(sorted(methods)) or "none"
            raise EntrypointError(f"workflow {wf.name}: rpc {wf.rpc} is not in {env.proto} "
                                  f"(rpcs: {known})")
        if method.client_streaming or method.server_streaming:
            raise EntrypointError(f"workflow {wf.name}: rpc {wf.rpc} streams; only unary "
                                  "rpcs can be entrypoints")
        if not wf.chain:
            raise EntrypointError(f"workflow {wf.name} has no nodes")
        out.append(Binding(
            workflow=wf,
            service=method.containing_service.full_name,
            rpc=wf.rpc,
            input_type=compiled.message_class(method.input_type),
            type_url=TYPE_URL_PREFIX + method.input_type.full_name,
            subject=contract.step_subject(env.project, env.version, wf.name, 0),
        ))
    return out


def proto_text(env: contract.RunnerEnv, compiled: CompiledProto) -> bytes:
    """The version's proto files as text: the entry file first, then what it imports."""
    root = Path(env.version_dir)
    files = [env.proto] + [f for f in compiled.files if f != env.proto]
    if len(files) == 1:
        return (root / env.proto).read_bytes()
    parts = [f"// ---- {f} ----\n".encode() + (root / f).read_bytes() for f in files
             if (root / f).is_file()]
    return b"\n".join(parts)


class _FileDescriptor(Protocol):
    """A compiled .proto file's descriptor, e.g. `health_pb2.DESCRIPTOR`."""

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto, /) -> None: ...


def _add_to_pool(compiled: CompiledProto, *file_descriptors: _FileDescriptor) -> None:
    """Let reflection describe the health and reflection services too."""
    for fd in file_descriptors:
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        try:
            compiled.pool.Add(proto)
        except Exception:  # a clash with the version's own files: leave them out
            pass


@dataclass
class Entrypoint:
    env: contract.RunnerEnv
    compiled: CompiledProto
    bindings: list[Binding]
    bind_host: str = contract.DEFAULT_BIND_HOST
    nc: Client | None = None
    publisher: transport.Publisher | None = None
    jsm: JetStreamManager | None = None
    inbox: str = ""
    pending: dict[str, asyncio.Future[Answer]] = field(default_factory=dict)
    connected: bool = False
    streams_ok: bool = False
    serving: bool = False
    stopping: bool = False
    grpc_port: int = 0
    web: WebServer | None = None
    _server: grpc.aio.Server | None = None
    _health: HealthServicer | None = None
    _token: str = field(default_factory=lambda: secrets.token_hex(6))
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _nodes: dict[tuple[str, str], str] = field(default_factory=dict)
    _reensure: transport.Reensure | None = None
    _reply_prefix: str = ""

    def ready(self) -> bool:
        return self.connected and self.streams_ok and self.serving and not self.stopping

    async def start(self) -> None:
        env = self.env
        for wf in env.workflows:
            stream = contract.stream_name(env.project, env.version, wf.name)
            for step, node in enumerate(wf.chain):
                self._nodes[(stream, contract.consumer_name(step, node))] = node
        body = proto_text(env, self.compiled)
        self.web = WebServer.probes(self.bind_host, env.web_port, self.ready)

        async def proto() -> Response:
            return Response(200, body, "text/plain; charset=utf-8")

        self.web.routes["/proto"] = proto
        await self.web.start()
        await self._start_grpc()
        self.nc = await transport.connect(
            env.nats_url, f"kai-entrypoint-{env.version}",
            transport.ConnectionEvents(self._on_disconnect, self._on_reconnect))
        self.connected = True
        self.publisher = transport.Publisher(self.nc)
        await self.publisher.start()
        self.jsm = self.nc.jsm(timeout=transport.JS_TIMEOUT)
        await self._ensure()
        self.inbox = f"{contract.reply_prefix(env.project, env.version)}.{self._token}"
        self._reply_prefix = self.inbox + "."
        await self.nc.subscribe(self._reply_prefix + "*", cb=self._on_reply,
                                pending_msgs_limit=1_000_000,
                                pending_bytes_limit=512 * 1024 * 1024)
        for wf in env.workflows:
            stream = contract.stream_name(env.project, env.version, wf.name)
            await self.nc.subscribe(
                f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.*",
                cb=self._on_max_deliveries)
        # nats-py annotates flush's timeout as int, but hands it to asyncio.wait_for
        await self.nc.flush(timeout=transport.JS_TIMEOUT)  # type: ignore[arg-type]
        self.serving = True
        await self._set_health()
        log.info("entrypoint ready: grpc %s:%d, web %s:%d", self.bind_host, self.grpc_port,
                 self.bind_host, self.web.port)

    async def _start_grpc(self) -> None:
        server = grpc.aio.server(options=GRPC_OPTIONS)
        by_service: dict[str, dict[str, grpc.RpcMethodHandler[bytes, bytes]]] = {}
        for b in self.bindings:
            by_service.setdefault(b.service, {})[b.rpc] = grpc.unary_unary_rpc_method_handler(
                self._rpc(b))
        for service, handlers in sorted(by_service.items()):
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service, handlers),))
        self._health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        _add_to_pool(self.compiled, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR)
        names = [*sorted(by_service), health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server, pool=self.compiled.pool)
        try:
            self.grpc_port = server.add_insecure_port(f"{self.bind_host}:{self.env.grpc_port}")
        except RuntimeError as exc:
            raise EntrypointError(f"cannot listen on {self.bind_host}:{self.env.grpc_port} "
                                  f"for gRPC: {exc}") from None
        await server.start()
        self._server = server
        await self._set_health()

    async def _set_health(self) -> None:
        if self._health is None:
            return
        status = (health_pb2.HealthCheckResponse.SERVING if self.ready()
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", *sorted({b.service for b in self.bindings})):
            await self._health.set(name, status)

    async def _ensure(self) -> None:
        assert self.jsm is not None
        try:
            await transport.ensure_data_stream(self.jsm, self.env)
            for wf in self.env.workflows:
                await transport.ensure_work_stream(self.jsm, self.env, wf.name)
            self.streams_ok = True
        except Exception:
            self.streams_ok = False
            raise
        finally:
            await self._set_health()

    def _ensure_soon(self) -> None:
        if self._reensure is None:
            self._reensure = transport.Reensure(
                self._ensure,
                lambda: not self.stopping and self.nc is not None and self.nc.is_connected)
        self._reensure.soon()

    async def _on_disconnect(self) -> None:
        self.connected = False
        await self._set_health()

    async def _on_reconnect(self) -> None:
        self.connected = True
        await self._set_health()
        self._ensure_soon()

    # --- answers -------------------------------------------------------------------------

    async def _on_reply(self, msg: Msg) -> None:
        fut = self.pending.get(msg.subject[len(self._reply_prefix):])
        if fut is None or fut.done():
            return
        hdrs = msg.headers
        if hdrs:
            fut.set_result((hdrs.get(contract.HDR_STATUS, "OK"),
                            hdrs.get(contract.HDR_ERROR, ""), msg.data))
        else:
            fut.set_result(("OK", "", msg.data))

    async def _on_max_deliveries(self, msg: Msg) -> None:
        assert self.jsm is not None
        try:
            event = json.loads(msg.data)
            stream, consumer = event["stream"], event["consumer"]
            seq, deliveries = int(event["stream_seq"]), event.get("deliveries", "?")
            stored = await self.jsm.get_msg(stream, seq)
        except Exception as exc:  # gone already, or not ours to read
            log.debug("max-deliveries advisory not handled: %s", exc)
            return
        hdrs = stored.headers or {}
        request_id = transport.request_id_of(hdrs)
        node = self._nodes.get((stream, consumer), consumer)
        try:
            expired = float(hdrs.get(contract.HDR_DEADLINE) or 0) < time.time()
        except ValueError:
            expired = True
        mine = hdrs.get(contract.HDR_REPLY, "").startswith(self._reply_prefix)
        if mine:
            log.warning("request %s: node %s gave up after %s deliveries", request_id, node,
                        deliveries)
            fut = self.pending.get(request_id)
            if fut is not None and not fut.done():
                fut.set_result(("INTERNAL", f"node {node}: gave up on this request after "
                                f"{deliveries} attempts (the node crashed or did not finish "
                                "in time on each)", b""))
        if mine or expired:
            try:
                await self.jsm.delete_msg(stream, seq)
            except Exception:
                pass

    # --- the rpc --------------------------------------------------------------------------

    def _rpc(self, b: Binding) -> Callable[[bytes, RpcContext], Awaitable[bytes]]:
        requests = {code: metrics.REQUESTS.labels(b.rpc, code.name) for code in grpc.StatusCode}
        latency = metrics.REQUEST_SECONDS.labels(b.rpc)

        async def call(request: bytes, context: RpcContext) -> bytes:
            started = time.perf_counter()
            code, details, payload = await self._call(b, request, context)
            status = getattr(grpc.StatusCode, code, None)
            if not isinstance(status, grpc.StatusCode):
                status, details = grpc.StatusCode.UNKNOWN, f"{code}: {details}"
            requests[status].inc()
            latency.observe(time.perf_counter() - started)
            if status is not grpc.StatusCode.OK:
                await context.abort(status, details)
            return payload

        return call

    def _timeout(self, context: RpcContext) -> float:
        remaining = context.time_remaining()
        if remaining is None or remaining > 10**8:
            return self.env.request_timeout
        return max(remaining, 0.0)

    async def _call(self, b: Binding, request: bytes, context: RpcContext) -> Answer:
        nc = self.nc
        if nc is None or not nc.is_connected or not self.streams_ok:
            return ("UNAVAILABLE", "NATS is not reachable; try again shortly", b"")
        if self.stopping:
            return ("UNAVAILABLE", "the entrypoint is shutting down", b"")
        try:
            b.input_type.FromString(request)
        except DecodeError as exc:
            return ("INVALID_ARGUMENT",
                    f"the request is not a valid {b.input_type.DESCRIPTOR.full_name}: {exc}", b"")
        timeout = self._timeout(context)
        deadline = time.time() + timeout
        request_id = f"{self._token}-{next(self._ids)}"
        envelope = any_pb2.Any(type_url=b.type_url, value=request).SerializeToString()
        headers = {
            contract.HDR_MSG_ID: f"{request_id}:0",
            contract.HDR_DEADLINE: f"{deadline:.6f}",
            contract.HDR_REPLY: self._reply_prefix + request_id,
        }
        size = transport.over_limit(nc, envelope, headers)
        if size:
            return ("RESOURCE_EXHAUSTED",
                    f"the request is {len(request)} bytes ({size} with its envelope), over the "
                    f"NATS server's max payload of {nc.max_payload} bytes", b"")
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = fut
        published = False
        try:
            async with asyncio.timeout(timeout):
                assert self.publisher is not None
                await self.publisher.publish(b.subject, envelope, headers,
                                             min(transport.JS_TIMEOUT, max(timeout, 0.01)))
                published = True
                envelope = b""  # stored: not held while waiting (32 x 100 KB in flight add up)
                return await fut
        except TimeoutError:
            if published or timeout <= transport.JS_TIMEOUT:
                return ("DEADLINE_EXCEEDED",
                        f"no answer from workflow {b.workflow.name} within {timeout:.3g}s", b"")
            return ("UNAVAILABLE", "NATS did not store the request in time", b"")
        except nats.errors.TimeoutError:
            return ("UNAVAILABLE", "NATS did not store the request in time", b"")
        except nats.js.errors.NoStreamResponseError:
            self._ensure_soon()
            return ("UNAVAILABLE", f"the stream of workflow {b.workflow.name} is not there "
                    "(re-creating it); try again shortly", b"")
        except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError,
                nats.errors.NoRespondersError) as exc:
            return ("UNAVAILABLE", f"NATS is not reachable: {type(exc).__name__}", b"")
        except nats.errors.MaxPayloadError:
            return ("RESOURCE_EXHAUSTED",
                    f"the request is {len(request)} bytes, over the NATS server's max payload "
                    f"of {nc.max_payload} bytes", b"")
        finally:
            self.pending.pop(request_id, None)

    async def stop(self, grace: float) -> None:
        """Stop taking calls, let those in flight finish (up to `grace`), close NATS."""
        self.stopping = True
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()
        if self.web is not None:
            await self.web.close()


def prepare(env: contract.RunnerEnv) -> Entrypoint:
    """Compile the proto and bind the rpcs (everything that can fail before serving)."""
    try:
        compiled = compile_proto(Path(env.version_dir), env.proto)
    except ProtoError as exc:
        raise EntrypointError(f"the proto {env.proto} does not compile: {exc}") from None
    bindings = bind(env, compiled)
    host = os.environ.get(contract.ENV_BIND_HOST) or contract.DEFAULT_BIND_HOST
    return Entrypoint(env, compiled, bindings, bind_host=host)

