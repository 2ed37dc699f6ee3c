"""The entrypoint process: each workflow's rpc served over gRPC, answered through NATS.

A call to rpc R of workflow W:

1. the raw request bytes are decoded as R's input type (bad bytes → INVALID_ARGUMENT);
2. they travel, wrapped in a ``google.protobuf.Any``, to W's step 0 subject (JetStream),
   with the call id, the request id, the absolute deadline (the client's, or now + the
   request timeout) and the reply inbox in headers (over max payload →
   RESOURCE_EXHAUSTED; NATS disconnected → UNAVAILABLE at once);
   UNAVAILABLE ("not run": a client may retry it) is answered only when the request was
   surely not stored: not connected, or refused by the server (no stream, an error). When
   it may have been stored (sent, but no PubAck in time), it is published again with the
   same message id (the stream drops the duplicate) while the call waits for its answer;
3. the last node answers on the entrypoint's single inbox subscription (``<inbox>.*``):
   the answer's subject ends in the call id, which matches it to the call. An answer
   without HDR_STATUS (or with "OK") returns the payload as the reply, any other grpc code
   name becomes that status with HDR_ERROR as its details;
4. no answer by the deadline → DEADLINE_EXCEEDED.

Request ids: the request id is the client's ``x-request-id`` metadata value when it is a
valid one (``contract.valid_request_id``: 1 to 128 printable ASCII characters, no
whitespace, ``.``, ``*`` or ``>``); otherwise (none, or not valid) it is the call id the
entrypoint generates, ``<entrypoint token>-<counter>``. Every answer, OK or not, carries it
back as ``x-request-id`` in its initial metadata. Nodes see it as ``ctx.request_id``, in
their log lines and in the records they save. Each call also has a call id of its own, the
root of its step messages' ids and reply subject: a client may send the same x-request-id
twice (a retry), and JetStream would drop the second call's messages as duplicates of the
first's if their ids were the same.

Draining (SIGTERM): calls that arrive are not run. They are answered UNAVAILABLE only once
the gRPC server has stopped taking calls (a call still queued inside gRPC when it stops
would end CANCELLED, which clients do not retry); the calls already taken are finished.

An at-most-once workflow (``delivery: at-most-once``) sends the request (in 2.) as a core
NATS call to its first node's queue group instead (``Transport.call_step``,
runner.transport.core): nothing is stored or published again. The answer comes to the same
inbox; one that does not come is UNAVAILABLE at once when no replica of the first node
subscribes (not run), or once the call has shown no sign of life for the ack wait (a replica
crashed: it may have partly run), else DEADLINE_EXCEEDED by the deadline.

When a node gives up on a message (the JetStream MAX_DELIVERIES advisory, e.g. a node that
crashes on it each time), the entrypoint answers that call INTERNAL naming the node, and
deletes the message. Health checking and server reflection are served on the same port.
The entrypoint speaks to the broker only through ``runner.transport``.

Readiness (``/readyz`` and gRPC health, for the whole server and each service): SERVING
only while the entrypoint itself is (connected, streams there, not draining) and every
node of its workflows takes work, as runner.readiness sees from the steps' consumers on
the broker: not while a node is still in its ``init``, and not once no replica of a node
has been seen pulling for a while. Calls are taken either way: one that arrives before
a node takes work waits for it in the stream, within its deadline.
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
from typing import TYPE_CHECKING, Protocol

import grpc
from google.protobuf import any_pb2, descriptor_pb2
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2

from . import contract, metrics
from .process import RunnerProcess, tracing_from_env
from .proto import CompiledProto, ProtoError, compile_proto
from .readiness import NodeWatch, steps_of
from .transport import (
    STORE_TIMEOUT,
    Alive,
    GaveUp,
    NoStream,
    NotStored,
    StepError,
    TooLarge,
    Transport,
    TransportError,
    Unreachable,
    call_id_of,
    open_transport,
    publish_until,
    request_id_of,
    step_headers,
)
from .web import Response

if TYPE_CHECKING:
    from .tracing import Tracing

log = logging.getLogger("runner.entrypoint")

TYPE_URL_PREFIX = "type.googleapis.com/"
GRPC_OPTIONS = [("grpc.so_reuseport", 0)]
GRPC_SLACK = 1024 * 1024  # a request a little over max_message still gets our message


def grpc_options(max_message: int) -> list[tuple[str, int]]:
    """The gRPC server's options: requests and replies up to the runner's max message."""
    limit = min(max_message + GRPC_SLACK, 2**31 - 1)
    return [*GRPC_OPTIONS, ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit)]
# Draining: how long calls the entrypoint took may delay stopping the gRPC server (calls
# arriving meanwhile wait, unanswered), and how quiet (no call arriving) it waits to be.
HOLD_LIMIT = 2.0
QUIET = 0.05
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
    subject: str  # step 0 (at most once: its call subject)
    at_most_once: bool = False  # core NATS calls, no stream (runner.transport.core)


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
            subject=contract.input_subject(env.project, env.version, wf, 0),
            at_most_once=wf.at_most_once,
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


def _file_proto(fd: _FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    fd.CopyToProto(proto)
    return proto


def _add_to_pool(compiled: CompiledProto, *protos: descriptor_pb2.FileDescriptorProto) -> None:
    """Let reflection describe the health and reflection services too."""
    for proto in protos:
        try:
            compiled.pool.Add(proto)
        except Exception:  # a clash with the version's own files: leave them out
            pass


# Server reflection: grpcio-reflection (1.85) ships only v1alpha. grpc.reflection.v1 is the
# same protocol under another package (same messages, same field numbers, so the same
# bytes on the wire): its file descriptor is v1alpha's renamed, and the v1alpha servicer
# answers on the v1 method too.
REFLECTION_V1_PACKAGE = "grpc.reflection.v1"
REFLECTION_V1_FILE = "grpc/reflection/v1/reflection.proto"
REFLECTION_V1_SERVICE = f"{REFLECTION_V1_PACKAGE}.ServerReflection"


def reflection_v1_file() -> descriptor_pb2.FileDescriptorProto:
    """The file descriptor of grpc/reflection/v1/reflection.proto, made from v1alpha's."""
    proto = _file_proto(reflection_pb2.DESCRIPTOR)
    old = f".{proto.package}."
    new = f".{REFLECTION_V1_PACKAGE}."
    proto.name = REFLECTION_V1_FILE
    proto.package = REFLECTION_V1_PACKAGE
    proto.ClearField("options")
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old):]
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old):]
            method.output_type = new + method.output_type[len(old):]
    return proto


def _reflection_v1_handler(servicer: reflection.aio.ReflectionServicer,
                           ) -> grpc.GenericRpcHandler:
    method = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    return grpc.method_handlers_generic_handler(REFLECTION_V1_SERVICE,
                                                {"ServerReflectionInfo": method})


class Entrypoint(RunnerProcess):
    """Serve each workflow's rpc over gRPC; pass calls on to step 0, await the last node."""

    def __init__(self, env: contract.RunnerEnv, compiled: CompiledProto,
                 bindings: list[Binding], transport: Transport,
                 tracing: Tracing | None = None) -> None:
        super().__init__(env, transport, tracing)
        self.compiled = compiled
        self.bindings = bindings
        self.inbox = ""
        self.pending: dict[str, asyncio.Future[bytes]] = {}
        self.grpc_port = 0
        self._server: grpc.aio.Server | None = None
        self._health: HealthServicer | None = None
        self._token = secrets.token_hex(6)
        self._ids = itertools.count()
        steps = steps_of(env)
        self._nodes = {(s.stream, s.consumer): s.node for s in steps}
        self.nodes = NodeWatch(transport, steps, self.state_changed)
        self._reply_prefix = ""
        self._said_invalid_id = False
        self._refused = 0  # calls that arrived while draining
        self._released = asyncio.Event()  # set once gRPC takes no more calls

    async def start(self) -> None:
        env = self.env
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
            if wf.at_most_once:
                continue  # nothing is delivered again, so nothing is given up
            await self.transport.on_gave_up(
                contract.stream_name(env.project, env.version, wf.name), self._on_gave_up)
        await self.transport.flush(STORE_TIMEOUT)
        self.started = True
        await self.state_changed()
        log.info("entrypoint ready: grpc %s:%d, web %s:%d", self.bind_host, self.grpc_port,
                 self.bind_host, web.port)
        self.nodes.start()

    def ready(self) -> bool:
        return super().ready() and self.nodes.ready

    def not_ready_reason(self) -> str:
        return super().not_ready_reason() or self.nodes.reason()

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
        _add_to_pool(self.compiled, _file_proto(health_pb2.DESCRIPTOR),
                     _file_proto(reflection_pb2.DESCRIPTOR), reflection_v1_file())
        names = [*sorted(by_service), health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 REFLECTION_V1_SERVICE, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server, pool=self.compiled.pool)
        server.add_generic_rpc_handlers((_reflection_v1_handler(
            reflection.aio.ReflectionServicer(names, pool=self.compiled.pool)),))
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
            if not wf.at_most_once:  # an at-most-once workflow has no stream
                await self.transport.ensure_work_stream(wf.name)
        # a node that may have no replica gets its consumers here, so the work waiting for
        # it is counted (what wakes it: KEDA reads the consumer) before it ever ran
        for wf in self.env.workflows:
            for step, node in enumerate(wf.chain):
                if node in self.env.scale_to_zero and not wf.at_most_once:
                    await self.transport.ensure_consumer(wf.name, step, node)

    # --- answers -------------------------------------------------------------------------

    def _on_reply(self, call_id: str, reply: bytes | StepError | Alive) -> None:
        fut = self.pending.get(call_id)
        if fut is None or fut.done():
            return
        if isinstance(reply, StepError):
            fut.set_exception(reply)
        elif isinstance(reply, bytes):  # not a sign of life (the transport's watch keeps those)
            fut.set_result(reply)

    async def _on_gave_up(self, event: GaveUp) -> None:
        hdrs = event.headers
        call_id, request_id = call_id_of(hdrs), request_id_of(hdrs)
        node = self._nodes.get((event.stream, event.consumer), event.consumer)
        try:
            expired = float(hdrs.get(contract.HDR_DEADLINE) or 0) < time.time()
        except ValueError:
            expired = True
        mine = hdrs.get(contract.HDR_REPLY, "").startswith(self._reply_prefix)
        if mine:
            log.warning("request %s: node %s gave up after %s deliveries", request_id, node,
                        event.deliveries)
            fut = self.pending.get(call_id)
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
        version = self.env.version
        requests = {code: metrics.REQUESTS.labels(version, b.rpc, code.name)
                    for code in grpc.StatusCode}
        latency = {code: metrics.REQUEST_SECONDS.labels(version, b.rpc, code.name)
                   for code in grpc.StatusCode}
        # chosen once: without tracing a call makes no span and its messages no trace headers
        run = self._call if self.tracing is None else self._traced_call

        async def call(request: bytes, context: RpcContext) -> bytes:
            started = time.perf_counter()
            call_id = f"{self._token}-{next(self._ids)}"
            request_id = self._request_id(context, call_id)
            await context.send_initial_metadata(((contract.REQUEST_ID_METADATA, request_id),))
            try:
                payload = await run(b, request, context, call_id, request_id)
            except StepError as error:
                requests[error.code].inc()
                latency[error.code].observe(time.perf_counter() - started)
                await context.abort(error.code, error.message)
            requests[grpc.StatusCode.OK].inc()
            latency[grpc.StatusCode.OK].observe(time.perf_counter() - started)
            return payload

        return call

    async def _traced_call(self, b: Binding, request: bytes, context: RpcContext,
                           call_id: str, request_id: str) -> bytes:
        """:meth:`_call` in the rpc's span (runner.tracing), whose context its step carries."""
        assert self.tracing is not None
        span = self.tracing.rpc_span(b.service, b.rpc, b.workflow.name, request_id,
                                     context.invocation_metadata())
        return await self.tracing.run(span, self._call(b, request, context, call_id,
                                                       request_id))

    def _request_id(self, context: RpcContext, call_id: str) -> str:
        """The client's x-request-id when it is valid (contract.valid_request_id), else
        the call id. Either way the client gets it back in the initial metadata."""
        for key, value in context.invocation_metadata() or ():
            if key != contract.REQUEST_ID_METADATA:
                continue
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            if contract.valid_request_id(text):
                return text
            if not self._said_invalid_id:
                self._said_invalid_id = True
                log.warning("request %s: ignored the client's x-request-id %.60r (up to %d "
                            "printable ASCII characters, no whitespace, '.', '*' or '>'); "
                            "this is logged once", call_id, text, contract.MAX_REQUEST_ID)
            break
        return call_id

    def _timeout(self, context: RpcContext) -> float:
        remaining = context.time_remaining()
        if remaining is None or remaining > 10**8:
            return self.env.request_timeout
        return max(remaining, 0.0)

    async def _call(self, b: Binding, request: bytes, context: RpcContext, call_id: str,
                    request_id: str) -> bytes:
        """The rpc's serialized response; raises :class:`StepError` for any other status.

        `call_id` is unique to this call (it keys the reply); `request_id` is what the
        nodes see (the client's x-request-id, or the call id).
        """
        t = self.transport
        if self.stopping:
            await self._hold(context)
            raise StepError(grpc.StatusCode.UNAVAILABLE, "the entrypoint is shutting down")
        if not t.is_connected or not self.streams_ok:
            raise StepError(grpc.StatusCode.UNAVAILABLE,
                            "NATS is not reachable; try again shortly")
        try:
            b.input_type.FromString(request)
        except DecodeError as exc:
            raise StepError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"the request is not a valid {b.input_type.DESCRIPTOR.full_name}: "
                            f"{exc}") from None
        timeout = self._timeout(context)
        deadline = time.time() + timeout
        envelope = any_pb2.Any(type_url=b.type_url, value=request).SerializeToString()
        headers = step_headers(call_id, 0, f"{deadline:.6f}", self._reply_prefix + call_id,
                               request_id, sent_at=b.at_most_once)
        if self.tracing is not None:
            self.tracing.inject(headers)
        size = t.oversize(envelope, headers, b.at_most_once)
        if size:
            raise StepError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"the request is {len(request)} bytes ({size} with its envelope), "
                            + t.over_max_message(b.at_most_once))
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[call_id] = fut
        again: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(timeout):
                try:
                    if b.at_most_once:  # sent once, never again (runner.transport.core)
                        await t.call_step(b.subject, envelope, headers)
                    else:
                        await t.publish(b.subject, envelope, headers,
                                        min(STORE_TIMEOUT, max(timeout, 0.01)))
                except NotStored:
                    # Sent, but not confirmed: it may be stored, and run. Publish it again
                    # (the same headers, so the same message id) while awaiting the answer.
                    again = asyncio.create_task(
                        self._store_again(b.subject, envelope, headers, deadline))
                envelope = b""  # not held while waiting (32 x 100 KB in flight add up)
                return await fut
        except TimeoutError:  # the request may have been stored: it may have run
            raise StepError(grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"no answer from workflow {b.workflow.name} within "
                            f"{timeout:.3g}s") from None
        # The first publish failed without being stored: the request did not run.
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
        except TransportError as exc:
            raise StepError(grpc.StatusCode.UNAVAILABLE,
                            f"NATS did not store the request: {exc}") from None
        finally:
            self.pending.pop(call_id, None)
            if again is not None:
                again.cancel()

    async def _store_again(self, subject: str, payload: bytes, headers: dict[str, str],
                           deadline: float) -> None:
        """Publish a request that may not be stored again, until stored or `deadline`."""
        try:
            await publish_until(self.transport, subject, payload, headers, deadline,
                                self._is_stopping)
        except TransportError as exc:  # refused now; it may still have been stored before
            log.debug("publishing again to %s failed: %s", subject, exc)

    def _is_stopping(self) -> bool:
        return self.stopping

    async def _hold(self, context: RpcContext) -> None:
        """Keep a call that arrived while draining until gRPC takes no more calls (or
        shortly before its deadline): answered earlier, its client would send the next
        call at once, and gRPC ends a call still queued when it stops as CANCELLED."""
        self._refused += 1
        remaining = self._timeout(context)
        limit = remaining - min(0.1, remaining / 2)
        if limit <= 0:
            return
        try:
            async with asyncio.timeout(limit):
                await self._released.wait()
        except TimeoutError:
            pass

    async def _quiesce(self, limit: float) -> None:
        """Wait (up to `limit` seconds) until no call taken is in flight and none arrives."""
        end = time.monotonic() + limit
        seen = -1
        while time.monotonic() < end:
            if not self.pending and self._refused == seen:
                return
            seen = self._refused
            await asyncio.sleep(QUIET)

    async def stop(self, grace: float) -> None:
        """Stop taking calls, let those in flight finish (up to `grace`), close the transport.

        Calls arriving meanwhile are held (:meth:`_hold`) while the calls taken end (up to
        HOLD_LIMIT), then gRPC stops taking calls (clients are told to go elsewhere) and
        they are answered UNAVAILABLE; the calls taken have the rest of `grace` to finish.
        """
        self.stopping = True
        end = time.monotonic() + grace
        await self.nodes.stop()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._quiesce(min(HOLD_LIMIT, grace / 2))
            server_stopped = asyncio.create_task(
                self._server.stop(max(0.1, end - time.monotonic())))
            await asyncio.sleep(QUIET)  # its first step stops taking calls
            self._released.set()
            await server_stopped
        self._released.set()
        await self.close(0.1)


def prepare(env: contract.RunnerEnv, transport: Transport | None = None,
            tracing: Tracing | None = None) -> Entrypoint:
    """Compile the proto and bind the rpcs (everything that can fail before serving).

    `tracing`: the process's (runner.tracing); None takes it from the environment (none
    when it does not turn tracing on)."""
    try:
        # in a child process: the compiler's memory would stay resident all the process's
        # life for one use (docs/performance.md, "Memory")
        compiled = compile_proto(Path(env.version_dir), env.proto, in_child=True)
    except ProtoError as exc:
        raise EntrypointError(f"the proto {env.proto} does not compile: {exc}") from None
    bindings = bind(env, compiled)
    return Entrypoint(env, compiled, bindings, transport or open_transport(env),
                      tracing or tracing_from_env(env))
