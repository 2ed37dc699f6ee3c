"""Tracing (runner.tracing) on the in-memory transport: spans, their parents, attributes and
status with tracing on; nothing at all (no span, no trace header, no OpenTelemetry import)
with it off. The chain through real processes and NATS: tests/integration/test_tracing_chain.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from memory_run import MemoryRun, memory_run
from opentelemetry.sdk.trace import ReadableSpan, Tracer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from runner import contract
from runner.process import tracing_from_env
from runner.tracing import Tracing
from runner.transport import step_headers
from runner.transport.memory import MemoryTransport

ROOT = Path(__file__).resolve().parents[2]

# The handlers answer with the span id they see as current (so it is the step's span).
FIRST = """
from opentelemetry import trace
from logic_pb2 import Req

async def handler(ctx, data: Req):
    if data.text == "fail-first":
        raise ValueError("bad input: 42")
    span = trace.get_current_span().get_span_context()
    data.text = data.text + "|" + format(span.span_id, "016x")
    return data
"""

LAST = """
import threading
from opentelemetry import trace
from logic_pb2 import Req, Resp
from runner.sdk import Abort
import grpc

def handler(ctx, data: Req):
    assert threading.current_thread() is not threading.main_thread()
    if data.text.startswith("abort"):
        raise Abort(grpc.StatusCode.NOT_FOUND, "no such room")
    span = trace.get_current_span().get_span_context()
    return Resp(text=data.text + "|" + format(span.span_id, "016x"), seen=ctx.request_id)
"""

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


def run(scenario: Callable[[], Awaitable[None]], limit: float = 30) -> None:
    asyncio.run(asyncio.wait_for(scenario(), limit))


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    yield spans
    spans.shutdown()


def tracing_into(exporter: InMemorySpanExporter) -> Callable[[contract.RunnerEnv], Tracing]:
    """Each process's Tracing, every span exported (at once) into `exporter`."""
    def make(env: contract.RunnerEnv) -> Tracing:
        return Tracing(env, processor=SimpleSpanProcessor(exporter))

    return make


async def call(r: MemoryRun, text: str,
               metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    assert r.channel is not None
    stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = r.channel.unary_unary(
        "/logic.Logic/Run")
    raw = await stub(r.request(text=text).SerializeToString(), timeout=5.0,
                     metadata=metadata)
    return r.compiled.message_class("logic.Resp").FromString(raw)


def hex_id(value: int, width: int = 16) -> str:
    return format(value, f"0{width}x")


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    named = {s.name: s for s in spans}
    assert len(named) == len(spans), [s.name for s in spans]
    return named


# --- on ------------------------------------------------------------------------------------


def test_one_trace_continues_the_clients_traceparent_through_the_chain(
        tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"first": FIRST, "last": LAST},
                              tracing_for=tracing_into(exporter)) as r:
            answer = await call(r, "hi", (("traceparent", CLIENT_TRACEPARENT),
                                          ("tracestate", "vendor=abc"),
                                          (contract.REQUEST_ID_METADATA, "req-7")))
            spans = by_name(exporter.get_finished_spans())
            assert set(spans) == {"logic.Logic/Run", "wf/first", "wf/last"}
            ep, first, last = spans["logic.Logic/Run"], spans["wf/first"], spans["wf/last"]
            for span in spans.values():
                assert span.context is not None
                assert hex_id(span.context.trace_id, 32) == CLIENT_TRACE
                assert span.context.trace_state.to_header() == "vendor=abc"  # travels too
                assert span.status.status_code is StatusCode.UNSET
                assert span.attributes is not None
                assert span.attributes["kai.request_id"] == "req-7"
                assert span.attributes["kai.project"] == "logic"
                assert span.attributes["kai.version"] == "v1"
                assert span.attributes["kai.workflow"] == "wf"
            assert ep.kind is SpanKind.SERVER
            assert ep.parent is not None and hex_id(ep.parent.span_id) == CLIENT_SPAN
            assert ep.parent.is_remote
            assert ep.attributes is not None and ep.attributes["rpc.method"] == "Run"
            assert ep.attributes["rpc.grpc.status_code"] == 0
            for step, (span, parent) in enumerate(((first, ep), (last, first))):
                assert span.kind is SpanKind.CONSUMER
                assert span.parent is not None and parent.context is not None
                assert span.parent.span_id == parent.context.span_id
                assert span.attributes is not None and span.attributes["kai.step"] == step
                assert span.attributes["kai.node"] == span.name.split("/")[1]
            # each handler ran inside its own step's span (the sync one in a worker thread)
            assert first.context is not None and last.context is not None
            assert answer.text == (f"hi|{hex_id(first.context.span_id)}"
                                   f"|{hex_id(last.context.span_id)}")
            assert ep.start_time <= first.start_time <= last.start_time  # type: ignore[operator]
            assert resource_name(first) == "logic-v1-first"
            assert resource_name(ep) == "logic-v1-entrypoint"

    run(scenario)


def resource_name(span: ReadableSpan) -> object:
    return span.resource.attributes.get("service.name")


def test_without_a_client_traceparent_each_call_is_a_trace_of_its_own(
        tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"first": FIRST, "last": LAST},
                              tracing_for=tracing_into(exporter)) as r:
            await call(r, "a")
            await call(r, "b", (("traceparent", "00-not-a-trace-context"),))
            spans = exporter.get_finished_spans()
            assert len(spans) == 6
            roots = [s for s in spans if s.kind is SpanKind.SERVER]
            assert [s.parent for s in roots] == [None, None]  # a bad traceparent is ignored
            traces = {s.context.trace_id for s in spans if s.context is not None}
            assert len(traces) == 2

    run(scenario)


def test_a_failed_step_sets_the_status_of_its_span_and_of_the_rpcs(
        tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    async def scenario() -> None:
        async with memory_run(tmp_path, {"first": FIRST, "last": LAST},
                              tracing_for=tracing_into(exporter)) as r:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await call(r, "fail-first")
            assert failed.value.code() is grpc.StatusCode.INTERNAL
            spans = by_name(exporter.get_finished_spans())
            assert set(spans) == {"logic.Logic/Run", "wf/first"}  # the chain stopped there
            for span in spans.values():
                assert span.status.status_code is StatusCode.ERROR
                assert span.status.description == "INTERNAL: node first: bad input: 42"
                assert span.attributes is not None
                assert span.attributes["rpc.grpc.status_code"] == 13
            exporter.clear()
            with pytest.raises(grpc.aio.AioRpcError):
                await call(r, "abort")
            spans = by_name(exporter.get_finished_spans())
            assert spans["wf/first"].status.status_code is StatusCode.UNSET
            for name in ("wf/last", "logic.Logic/Run"):
                assert spans[name].status.description == "NOT_FOUND: no such room"
                assert spans[name].attributes["kai.status"] == "NOT_FOUND"  # type: ignore[index]

    run(scenario)


# --- off -----------------------------------------------------------------------------------


def test_tracing_is_on_only_with_an_endpoint_or_a_traces_file() -> None:
    base = contract.RunnerEnv("p", "v1", "/v", "a.proto", ()).to_environ()
    off = contract.RunnerEnv.from_environ(base)
    assert not off.tracing and tracing_from_env(off) is None
    assert not any(k.startswith("OTEL_") for k in base)
    on = contract.RunnerEnv.from_environ({**base, contract.OTEL_ENDPOINT: "http://c:4317"})
    assert on.tracing and on.tracing_endpoint == "http://c:4317"
    both = contract.RunnerEnv.from_environ({**base, contract.OTEL_ENDPOINT: "http://c:4317",
                                            contract.OTEL_TRACES_ENDPOINT: "http://t:4317"})
    assert both.tracing_endpoint == "http://t:4317"  # OpenTelemetry's precedence
    disabled = contract.RunnerEnv.from_environ({**base, contract.OTEL_ENDPOINT: "http://c:4317",
                                                contract.OTEL_SDK_DISABLED: "TRUE"})
    assert not disabled.tracing
    assert contract.RunnerEnv.from_environ({**base, contract.ENV_TRACES_FILE: "/t"}).tracing


def test_the_environment_of_a_traced_process_is_opentelemetrys_own() -> None:
    env = contract.RunnerEnv("p", "v1", "/v", "a.proto", (), node="etl",
                             tracing_endpoint="http://c:4317",
                             tracing_sampler="parentbased_traceidratio",
                             tracing_sampler_arg="0.25")
    environ = env.to_environ()
    assert {k: v for k, v in environ.items() if k.startswith("OTEL_")} == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
        "OTEL_RESOURCE_ATTRIBUTES": "service.namespace=p,service.version=v1",
        "OTEL_SERVICE_NAME": "p-v1-etl",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
    }
    back = contract.RunnerEnv.from_environ(environ)
    assert (back.tracing_endpoint, back.tracing_sampler, back.tracing_sampler_arg) == (
        "http://c:4317", "parentbased_traceidratio", "0.25")
    entrypoint = contract.RunnerEnv("p", "v1", "/v", "a.proto", (),
                                    tracing_endpoint="http://c:4317").to_environ()
    assert entrypoint["OTEL_SERVICE_NAME"] == "p-v1-entrypoint"


def test_off_a_process_does_not_even_import_opentelemetry() -> None:
    code = (
        "import sys\n"
        "import runner.__main__, runner.node, runner.entrypoint, runner.supervisor\n"
        "from runner import contract\n"
        "from runner.process import tracing_from_env\n"
        "env = contract.RunnerEnv('p', 'v1', '/v', 'a.proto', ())\n"
        "assert tracing_from_env(env) is None\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
    )
    environ = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60, env=environ)


def test_off_no_span_is_made_and_no_message_carries_a_trace_header(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_spans(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a span was started with tracing off")

    monkeypatch.setattr(Tracer, "start_span", no_spans)
    sent: list[dict[str, str]] = []
    publish = MemoryTransport.publish_message

    def recording(self: MemoryTransport, subject: str, payload: bytes,
                  headers: dict[str, str], within: float) -> Awaitable[None]:
        sent.append(dict(headers))
        return publish(self, subject, payload, headers, within)

    monkeypatch.setattr(MemoryTransport, "publish_message", recording)

    async def scenario() -> None:
        async with memory_run(tmp_path, {"first": FIRST, "last": LAST}) as r:
            assert r.entrypoint is not None and r.entrypoint.tracing is None
            assert all(p.tracing is None for procs in r.nodes.values() for p in procs)
            answer = await call(r, "plain", (("traceparent", CLIENT_TRACEPARENT),))
            assert answer.text == "plain|0000000000000000|0000000000000000"  # no span current

    run(scenario)
    assert len(sent) == 2  # step 0 and step 1
    for headers in sent:  # the runner's three, no more
        assert set(headers) == {contract.HDR_MSG_ID, contract.HDR_DEADLINE, contract.HDR_REPLY}


def test_only_a_call_over_core_nats_carries_when_it_was_sent() -> None:
    stored = step_headers("c-1", 0, "0", "_in.c-1")  # JetStream: its ack subject says when
    assert set(stored) == {contract.HDR_MSG_ID, contract.HDR_DEADLINE, contract.HDR_REPLY}
    sent = step_headers("c-1", 0, "0", "_in.c-1", sent_at=True)
    assert set(sent) - set(stored) == {contract.HDR_PUBLISHED}
    assert abs(float(sent[contract.HDR_PUBLISHED]) - time.time()) < 60


def test_a_traces_file_that_cannot_be_opened_is_one_clear_line(tmp_path: Path) -> None:
    env = contract.RunnerEnv("p", "v1", "/v", "a.proto", (),
                             traces_file=str(tmp_path / "missing" / "spans.jsonl"))
    with pytest.raises(contract.ContractError) as info:
        Tracing(env)
    assert str(info.value) == (f"KAI_TRACES_FILE={tmp_path}/missing/spans.jsonl: cannot open "
                               "it: No such file or directory")


def test_a_stopping_process_exports_the_spans_still_waiting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # no export on the timer
    exporters: list[InMemorySpanExporter] = []

    def batched(env: contract.RunnerEnv) -> Tracing:
        exporters.append(InMemorySpanExporter())  # each process shuts its own down
        return Tracing(env, exporter=exporters[-1])  # the batch processor, as in production

    def finished() -> int:
        return sum(len(e.get_finished_spans()) for e in exporters)

    async def scenario() -> None:
        async with memory_run(tmp_path, {"first": FIRST, "last": LAST},
                              tracing_for=batched) as r:
            await call(r, "x")
            assert finished() == 0  # still in the processors' queues

    run(scenario)
    assert len(exporters) == 3 and finished() == 3  # exported as the processes stopped
