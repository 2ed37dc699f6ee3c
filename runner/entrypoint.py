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
The entrypoint speaks to the broker only through ``runner.transport``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
from google.protobuf import any_pb2, descriptor_pb2
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2

from . import contract, metrics
from .process import RunnerProcess
from .proto import CompiledProto, ProtoError, compile_proto
from .transport import (
    STORE_TIMEOUT,
    GaveUp,
    NoStream,
    NotStored,
    StepError,
    TooLarge,
    Transport,
    Unreachable,
    open_transport,
    request_id_of,
    step_headers,
)
from .web import Response

log = logging.getLogger("runner.entrypoint")

TYPE_URL_PREFIX = "type.googleapis.com/"
GRPC_OPTIONS = [("grpc.so_reuseport", 0)]
GRPC_SLACK = 1024 * 1024  # a request a little over max_message still gets our message


def grpc_options(max_message: int) -> list[tuple[str, int]]:
    """The gRPC server's options: requests and replies up to the runner's max message."""
    limit = min(max_message + GRPC_SLACK, 2**31 - 1)
    return [*GRPC_OPTIONS, ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit)]
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


class Entrypoint(RunnerProcess):
    """Serve each workflow's rpc over gRPC; pass calls on to step 0, await the last node."""

    def __init__(self, env: contract.RunnerEnv, compiled: CompiledProto,
                 bindings: list[Binding], transport: Transport) -> None:
        super().__init__(env, transport)
        self.compiled = compiled
        self.bindings = bindings
        self.inbox = ""
        self.pending: dict[str, asyncio.Future[bytes]] = {}
        self.grpc_port = 0
        self._server: grpc.aio.Server | None = None
        self._health: HealthServicer | None = None
        self._token = secrets.token_hex(6)
        self._ids = itertools.count()
        self._nodes: dict[tuple[str, str], str] = {}
        self._reply_prefix = ""

    async def start(self) -> None:
        env = self.env
        for wf in env.workflows:
            stream = contract.stream_name(env.project, env.version, wf.name)
            for step, node in enumerate(wf.chain):
                self._nodes[(stream, contract.consumer_name(step, node))] = node
        body = proto_text(env, self.compiled)

        async def proto() -> Response:
            return Response(200, body, "text/plain; charset=utf-8")

        web = await self.start_web(env.web_port, {"/proto": proto})
        await self._start_grpc()
        await self.connect(f"kai-entrypoint-{env.version}")
        await self.ensure()
        self.inbox = f"{contract.reply_prefix(env.project, env.version)}.{self._token}"
        self._reply_prefix = self.inbox + "."
        await self.transport.listen_replies(self._reply_prefix, self._on_reply)
        for wf in env.workflows:
            await self.transport.on_gave_up(
                contract.stream_name(env.project, env.version, wf.name), self._on_gave_up)
        await self.transport.flush(STORE_TIMEOUT)
        self.started = True
        await self.state_changed()
        log.info("entrypoint ready: grpc %s:%d, web %s:%d", self.bind_host, self.grpc_port,
                 self.bind_host, web.port)
    async def _start_grpc(self) -> None:
        server = grpc.aio.server(options=grpc_options(self.env.max_message))
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
        await self.state_changed()

    async def state_changed(self) -> None:
        if self._health is None:
            return
        status = (health_pb2.HealthCheckResponse.SERVING if self.ready()
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", *sorted({b.service for b in self.bindings})):
            await self._health.set(name, status)

    async def ensure_streams(self) -> None:
        await self.transport.ensure_data_stream()
        for wf in self.env.workflows:
            await self.transport.ensure_work_stream(wf.name)

    # --- answers -------------------------------------------------------------------------

    def _on_reply(self, request_id: str, reply: bytes | StepError) -> None:
        fut = self.pending.get(request_id)
        if fut is None or fut.done():
            return
        if isinstance(reply, StepError):
            fut.set_exception(reply)
        else:
            fut.set_result(reply)

    async def _on_gave_up(self, event: GaveUp) -> None:
        hdrs = event.headers
        request_id = request_id_of(hdrs)
        node = self._nodes.get((event.stream, event.consumer), event.consumer)
        try:
            expired = float(hdrs.get(contract.HDR_DEADLINE) or 0) < time.time()
        except ValueError:
            expired = True
        mine = hdrs.get(contract.HDR_REPLY, "").startswith(self._reply_prefix)
        if mine:
            log.warning("request %s: node %s gave up after %s deliveries", request_id, node,
                        event.deliveries)
            fut = self.pending.get(request_id)
            if fut is not None and not fut.done():
                fut.set_exception(StepError(
                    grpc.StatusCode.INTERNAL,
                    f"node {node}: gave up on this request after {event.deliveries} attempts "
                    "(the node crashed or did not finish in time on each)"))
        if mine or expired:
            try:
                await event.delete()
            except Exception:
                pass

    # --- the rpc --------------------------------------------------------------------------

    def _rpc(self, b: Binding) -> Callable[[bytes, RpcContext], Awaitable[bytes]]:
        requests = {code: metrics.REQUESTS.labels(b.rpc, code.name) for code in grpc.StatusCode}
        latency = metrics.REQUEST_SECONDS.labels(b.rpc)

        async def call(request: bytes, context: RpcContext) -> bytes:
            started = time.perf_counter()
            try:
                payload = await self._call(b, request, context)
            except StepError as error:
                requests[error.code].inc()
                latency.observe(time.perf_counter() - started)
                await context.abort(error.code, error.message)
            requests[grpc.StatusCode.OK].inc()
            latency.observe(time.perf_counter() - started)
            return payload

        return call

    def _timeout(self, context: RpcContext) -> float:
        remaining = context.time_remaining()
        if remaining is None or remaining > 10**8:
            return self.env.request_timeout
        return max(remaining, 0.0)

    async def _call(self, b: Binding, request: bytes, context: RpcContext) -> bytes:
        """The rpc's serialized response; raises :class:`StepError` for any other status."""
        t = self.transport
        if not t.is_connected or not self.streams_ok:
            raise StepError(grpc.StatusCode.UNAVAILABLE,
                            "NATS is not reachable; try again shortly")
        if self.stopping:
            raise StepError(grpc.StatusCode.UNAVAILABLE, "the entrypoint is shutting down")
        try:
            b.input_type.FromString(request)
        except DecodeError as exc:
            raise StepError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"the request is not a valid {b.input_type.DESCRIPTOR.full_name}: "
                            f"{exc}") from None
        timeout = self._timeout(context)
        deadline = time.time() + timeout
        request_id = f"{self._token}-{next(self._ids)}"
        envelope = any_pb2.Any(type_url=b.type_url, value=request).SerializeToString()
        headers = step_headers(request_id, 0, f"{deadline:.6f}", self._reply_prefix + request_id)
        size = t.oversize(envelope, headers)
        if size:
            raise StepError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"the request is {len(request)} bytes ({size} with its envelope), "
                            + t.over_max_message())
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = fut
        published = False
        try:
            async with asyncio.timeout(timeout):
                await t.publish(b.subject, envelope, headers,
                                min(STORE_TIMEOUT, max(timeout, 0.01)))
                published = True
                envelope = b""  # stored: not held while waiting (32 x 100 KB in flight add up)
                return await fut
        except (TimeoutError, NotStored):
            if published or timeout <= STORE_TIMEOUT:
                raise StepError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"no answer from workflow {b.workflow.name} within "
                                f"{timeout:.3g}s") from None
            raise StepError(grpc.StatusCode.UNAVAILABLE,
                            "NATS did not store the request in time") from None
        except NoStream:
            self.ensure_soon()
            raise StepError(grpc.StatusCode.UNAVAILABLE,
                            f"the stream of workflow {b.workflow.name} is not there "
                            "(re-creating it); try again shortly") from None
        except Unreachable as exc:
            raise StepError(grpc.StatusCode.UNAVAILABLE,
                            f"NATS is not reachable: {exc}") from None
        except TooLarge:
            raise StepError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"the request is {len(request)} bytes, over the NATS server's max "
                            f"payload of {t.max_payload} bytes") from None
        finally:
            self.pending.pop(request_id, None)

    async def stop(self, grace: float) -> None:
        """Stop taking calls, let those in flight finish (up to `grace`), close the transport."""
        self.stopping = True
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        await self.close(0.1)


def prepare(env: contract.RunnerEnv, transport: Transport | None = None) -> Entrypoint:
    """Compile the proto and bind the rpcs (everything that can fail before serving)."""
    try:
        compiled = compile_proto(Path(env.version_dir), env.proto)
    except ProtoError as exc:
        raise EntrypointError(f"the proto {env.proto} does not compile: {exc}") from None
    bindings = bind(env, compiled)
    return Entrypoint(env, compiled, bindings, transport or open_transport(env))
