"""Tracing and per-step metrics across a real 3-node chain: real runner processes, a real
nats-server, real gRPC.

Each process writes its finished spans as JSON lines (OpenTelemetry's ConsoleSpanExporter,
through KAI_TRACES_FILE) into one file, which the test reads: one trace per call, the
entrypoint's SERVER span (a child of the client's traceparent) and three CONSUMER spans in
chain order, each the child of the one before.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from runner_procs import TRACE_RPC, Version, http_get, trace_version, wait_ready, wait_taking_work

from runner import contract
from runner.natsserver import NatsServer
from runner.proto import compile_proto

pytestmark = pytest.mark.integration

CHAIN = ("first", "middle", "last")
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


@pytest.fixture(scope="module")
def traced_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Version, Path]]:
    root = tmp_path_factory.mktemp("tracing")
    spans = root / "spans.jsonl"
    with NatsServer(store_dir=root / "nats") as server:
        version = trace_version(root, server.url, CHAIN, "traced", traces_file=str(spans))
        # export every 20 ms rather than every 5 s (OpenTelemetry's batch processor setting)
        version.extra_env["OTEL_BSP_SCHEDULE_DELAY"] = "20"
        procs = [version.entrypoint(), *(version.node(name) for name in CHAIN)]
        try:
            wait_ready(*procs)
            wait_taking_work(procs[0])
            yield version, spans
        finally:
            version.close()


def _call(version: Version, text: str, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    compiled = compile_proto(version.dir, "proto/api.proto")
    req = compiled.message_class("trace.Req")(id=text)
    with grpc.insecure_channel(f"127.0.0.1:{version.procs[0].grpc_port}") as channel:
        stub = channel.unary_unary(TRACE_RPC)
        raw = stub(req.SerializeToString(), timeout=10, metadata=metadata)
    return compiled.message_class("trace.Resp").FromString(raw)


def _spans(path: Path, request_id: str, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The spans of request `request_id` in the file, once there are `count` of them."""
    end = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < end:
        lines = path.read_text().splitlines() if path.exists() else []
        found = [span for span in map(json.loads, lines)
                 if span["attributes"].get("kai.request_id") == request_id]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{len(found)} spans of {request_id} within {timeout}s, not {count}")


def test_one_trace_from_the_client_through_three_nodes(
        traced_chain: tuple[Version, Path]) -> None:
    version, path = traced_chain
    answer = _call(version, "a", (("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"),
                                  (contract.REQUEST_ID_METADATA, "client-req-1")))
    assert answer.request_id == "client-req-1"
    spans = _spans(path, "client-req-1", 4)
    assert len(spans) == 4
    assert {s["context"]["trace_id"] for s in spans} == {f"0x{CLIENT_TRACE}"}
    (ep,) = [s for s in spans if s["kind"] == "SpanKind.SERVER"]
    assert ep["name"] == "trace.Chain/Run"
    assert ep["parent_id"] == f"0x{CLIENT_SPAN}"
    assert ep["resource"]["attributes"]["service.name"] == "traced-v1-entrypoint"
    nodes = sorted((s for s in spans if s is not ep), key=lambda s: s["attributes"]["kai.step"])
    assert [s["attributes"]["kai.node"] for s in nodes] == list(CHAIN)
    assert [s["kind"] for s in nodes] == ["SpanKind.CONSUMER"] * 3
    parent = ep
    for step, span in enumerate(nodes):
        assert span["name"] == f"run/{CHAIN[step]}"
        assert span["parent_id"] == parent["context"]["span_id"]
        assert span["attributes"] == {**span["attributes"], "kai.project": "traced",
                                      "kai.version": "v1", "kai.workflow": "run",
                                      "kai.node": CHAIN[step], "kai.step": step}
        assert span["resource"]["attributes"]["service.name"] == f"traced-v1-{CHAIN[step]}"
        assert span["start_time"] >= parent["start_time"]
        assert span["status"]["status_code"] == "UNSET"
        parent = span


def test_without_a_traceparent_the_entrypoint_starts_the_trace(
        traced_chain: tuple[Version, Path]) -> None:
    version, path = traced_chain
    _call(version, "b", ((contract.REQUEST_ID_METADATA, "client-req-2"),))
    spans = _spans(path, "client-req-2", 4)
    (ep,) = [s for s in spans if s["kind"] == "SpanKind.SERVER"]
    assert ep["parent_id"] is None
    assert {s["context"]["trace_id"] for s in spans} == {ep["context"]["trace_id"]}
    assert ep["context"]["trace_id"] != f"0x{CLIENT_TRACE}"


def _samples(body: str, metric: str) -> dict[str, float]:
    """`metric`'s samples in a /metrics body: its labels as written -> value."""
    out = {}
    for m in re.finditer(rf"^{re.escape(metric)}\{{([^}}]*)\}} (\S+)$", body, re.M):
        out[m[1]] = float(m[2])
    return out


def test_per_step_metrics_after_calls(traced_chain: tuple[Version, Path]) -> None:
    version, _ = traced_chain
    for i in range(3):
        _call(version, f"m{i}")
    ep = version.procs[0]
    status, body = http_get(ep.web_port, "/metrics")
    assert status == 200
    counts = _samples(body, "kai_entrypoint_request_seconds_count")
    assert counts['code="OK",rpc="Run",version="v1"'] >= 3
    for proc, node in zip(version.procs[1:], CHAIN, strict=True):
        status, body = http_get(proc.web_port, "/metrics")
        assert status == 200
        labels = f'node="{node}",version="v1",workflow="run"'
        for metric in ("kai_node_step_seconds_count", "kai_node_queue_wait_seconds_count",
                       "kai_node_handler_seconds_count"):
            assert _samples(body, metric)[labels] >= 3, (metric, node)
        # the queue wait is measured from the publish time the message carries
        assert _samples(body, "kai_node_queue_wait_seconds_sum")[labels] > 0
        assert _samples(body, "kai_node_messages_total")[
            f'node="{node}",outcome="ok",version="v1",workflow="run"'] >= 3
