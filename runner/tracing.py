"""OpenTelemetry tracing of the runner processes, on only when configured.

Tracing is on when the environment names an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT``
or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, from kai.yaml ``tracing.endpoint``) or a traces
file (``KAI_TRACES_FILE``), and ``OTEL_SDK_DISABLED`` is not ``true``
(``contract.RunnerEnv.tracing``). Off, this module is not even imported: the entrypoint and
the nodes hold ``tracing = None`` and pick their untraced code paths once, at start-up, so a
call makes no span object and its messages carry no trace headers.

On, each process has a :class:`Tracing`: an SDK ``TracerProvider`` (also the global one, so a
handler's own spans, made with ``opentelemetry.trace.get_tracer``, are children of its step)
with a ``BatchSpanProcessor`` (spans are exported from a background thread, in batches) in
front of the OTLP gRPC exporter, or of a file of JSON lines. Every setting the SDK reads
from the environment applies: the sampler (``OTEL_TRACES_SAMPLER``, ``_ARG``), the service
name and resource attributes, the exporter's headers, certificate, timeout and compression
(``OTEL_EXPORTER_OTLP_*``), the batch processor's (``OTEL_BSP_*``).

* the entrypoint: one SERVER span per rpc (:meth:`Tracing.rpc_span`), a child of the
  client's W3C ``traceparent`` (and ``tracestate``) when its gRPC metadata carries them, else
  the root of a new trace;
* a node: one CONSUMER span per step (:meth:`Tracing.step_span`), a child of the span whose
  context the step's message carries in its headers (HDR_TRACEPARENT, HDR_TRACESTATE): the
  entrypoint's for step 0, the previous node's after. It carries the request id, project,
  version, workflow, node and step;
* :meth:`Tracing.inject` puts the current span's context into the next step's headers;
* a failed step or rpc (a ``StepError``, or any other exception) sets the span's status to
  ERROR with its code and message.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import __version__, contract
from .transport import StepError

T = TypeVar("T")
TRACER_NAME = "kai.runner"
TRACE_KEYS = (contract.HDR_TRACEPARENT, contract.HDR_TRACESTATE)
SHUTDOWN_TIMEOUT = 5.0  # seconds to export the spans left at the end

# Span attributes (OpenTelemetry's semantic conventions where they have one).
ATTR_REQUEST_ID = "kai.request_id"
ATTR_PROJECT = "kai.project"
ATTR_VERSION = "kai.version"
ATTR_WORKFLOW = "kai.workflow"
ATTR_NODE = "kai.node"
ATTR_STEP = "kai.step"
ATTR_STATUS = "kai.status"  # the gRPC status code's name, on errors
ATTR_RPC_SYSTEM = "rpc.system"
ATTR_RPC_SERVICE = "rpc.service"
ATTR_RPC_METHOD = "rpc.method"
ATTR_RPC_STATUS = "rpc.grpc.status_code"
ATTR_MESSAGING_SYSTEM = "messaging.system"
ATTR_DESTINATION = "messaging.destination.name"


class _AppendLines:
    """A file that each span's JSON line is appended to in one write (O_APPEND), so processes
    sharing the file do not interleave their lines."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self, text: str) -> int:
        data = text.encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        return len(text)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        os.close(self._fd)


def _json_line(span: ReadableSpan) -> str:
    return f"{span.to_json(indent=None)}\n"


def exporter_of(env: contract.RunnerEnv) -> SpanExporter:
    """Where the spans go: the traces file when set, else OTLP over gRPC (the endpoint and
    the rest of its settings from OpenTelemetry's environment variables)."""
    if env.traces_file:
        try:
            out = _AppendLines(env.traces_file)
        except OSError as exc:
            raise contract.ContractError(f"{contract.ENV_TRACES_FILE}={env.traces_file}: "
                                         f"cannot open it: {exc.strerror}") from None
        return ConsoleSpanExporter(out=out, formatter=_json_line)  # type: ignore[arg-type]
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=env.tracing_endpoint or None)


class Tracing:
    """One process's tracer; see the module docstring."""

    def __init__(self, env: contract.RunnerEnv, exporter: SpanExporter | None = None,
                 processor: SpanProcessor | None = None) -> None:
        self.env = env
        attributes: dict[str, Any] = {}
        if not os.environ.get(contract.OTEL_SERVICE_NAME):
            attributes[SERVICE_NAME] = contract.service_name(env.project, env.version, env.node)
        self.provider = TracerProvider(resource=Resource.create(attributes))
        self.provider.add_span_processor(
            processor or BatchSpanProcessor(exporter or exporter_of(env)))
        self.tracer = self.provider.get_tracer(TRACER_NAME, __version__)
        self._propagator = TraceContextTextMapPropagator()
        self._base = {ATTR_PROJECT: env.project, ATTR_VERSION: env.version}

    def make_global(self) -> None:
        """Make this the global tracer provider (handlers' own spans go through it)."""
        trace.set_tracer_provider(self.provider)

    # --- spans -----------------------------------------------------------------------------

    def rpc_span(self, service: str, method: str, workflow: str, request_id: str,
                 metadata: Iterable[tuple[str, str | bytes]] | None) -> Span:
        """The entrypoint's SERVER span of one rpc, continuing the client's trace context."""
        carrier = {}
        for key, value in metadata or ():
            if key in TRACE_KEYS:
                carrier[key] = value.decode("ascii", "replace") if isinstance(value, bytes) \
                    else value
        parent = self._propagator.extract(carrier) if carrier else None
        return self.tracer.start_span(
            f"{service}/{method}", context=parent, kind=SpanKind.SERVER,
            attributes={**self._base, ATTR_RPC_SYSTEM: "grpc", ATTR_RPC_SERVICE: service,
                        ATTR_RPC_METHOD: method, ATTR_RPC_STATUS: 0, ATTR_WORKFLOW: workflow,
                        ATTR_REQUEST_ID: request_id})

    def step_attributes(self, workflow: str, node: str, step: int,
                        subject: str) -> dict[str, Any]:
        """The attributes every step span of one route carries (the request id aside)."""
        return {**self._base, ATTR_WORKFLOW: workflow, ATTR_NODE: node, ATTR_STEP: step,
                ATTR_MESSAGING_SYSTEM: "nats", ATTR_DESTINATION: subject}

    def step_span(self, node: str, workflow: str, headers: Mapping[str, str],
                  attributes: Mapping[str, Any], request_id: str) -> Span:
        """A node's CONSUMER span of one step, a child of the context `headers` carry."""
        parent = self._propagator.extract(headers) \
            if contract.HDR_TRACEPARENT in headers else None
        span = self.tracer.start_span(f"{workflow}/{node}", context=parent,
                                      kind=SpanKind.CONSUMER, attributes=attributes)
        span.set_attribute(ATTR_REQUEST_ID, request_id)
        return span

    async def run(self, span: Span, work: Awaitable[T]) -> T:
        """Await `work` with `span` as the current span, then end it. An exception sets its
        status to ERROR (a StepError's code and message; anything else recorded)."""
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return await work
        except StepError as error:
            failed(span, error)
            raise
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            otel_context.detach(token)
            span.end()

    def current_failed(self, error: StepError) -> None:
        """Mark the current span (a node's step) as failed with `error`."""
        failed(trace.get_current_span(), error)

    def inject(self, headers: dict[str, str]) -> None:
        """Put the current span's trace context into a step's headers."""
        self._propagator.inject(headers)

    def shutdown(self) -> None:
        """Export the spans still waiting (for up to SHUTDOWN_TIMEOUT) and stop."""
        self.provider.force_flush(int(SHUTDOWN_TIMEOUT * 1000))
        self.provider.shutdown()


def failed(span: Span, error: StepError) -> None:
    """Mark `span` as failed with `error`'s gRPC status."""
    if not span.is_recording():
        return
    span.set_attribute(ATTR_STATUS, error.code.name)
    span.set_attribute(ATTR_RPC_STATUS, error.code.value[0])
    span.set_status(Status(StatusCode.ERROR, f"{error.code.name}: {error.message}"))


def from_env(env: contract.RunnerEnv) -> Tracing | None:
    """The process's tracing when the environment turns it on (made global), else None."""
    if not env.tracing:
        return None
    tracing = Tracing(env)
    tracing.make_global()
    return tracing
