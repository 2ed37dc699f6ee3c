"""The node SDK (`ctx`) against a real nats-server: validation, config, values, records,
and the same save/find calls awaited in the loop and called from a worker thread."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from runner import contract
from runner.natsserver import NatsServer
from runner.sdk import SCOPE, Context, Scope, SdkError, Sink
from runner.transport.nats import NatsTransport


def _env(tmp_path: Path, url: str, project: str) -> contract.RunnerEnv:
    return contract.RunnerEnv(
        project=project, version="v7", version_dir=str(tmp_path), proto="x.proto",
        workflows=(contract.Workflow("wf", "Rpc", ("n1",)),), nats_url=url, node="n1",
        storage="memory", config_variables=("API_KEY", "UNSET"), config_files=("model.bin",),
        config_dir="/cfg")


def _with_ctx(tmp_path: Path, server: NatsServer, project: str,
              body: Callable[[Context, Any], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        env = _env(tmp_path, server.url, project)
        t = NatsTransport(env)
        await t.connect("test-sdk")
        try:
            await t.ensure_data_stream()
            sink = Sink(t.save_record, t.scan_records, asyncio.get_running_loop())
            ctx = Context(env, sink, environ={"API_KEY": "s3cret"})
            SCOPE.set(Scope("req-1", "wf"))
            await body(ctx, t.nc)
        finally:
            await t.close()

    asyncio.run(main())


def test_values_path_and_config(tmp_path: Path, shared_nats: NatsServer) -> None:
    async def body(ctx: Context, _: Any) -> None:
        ctx.set("model", {"w": 1})
        assert ctx.get("model") == {"w": 1}
        assert ctx.get("missing") is None
        assert ctx.path("data/x.pkl") == str(tmp_path / "data" / "x.pkl")
        assert ctx.request_id == "req-1" and ctx.workflow == "wf" and ctx.node == "n1"
        assert ctx.get_config("API_KEY") == "s3cret"
        assert ctx.get_config("model.bin") == "/cfg/model.bin"
        with pytest.raises(SdkError, match="declared but not set"):
            ctx.get_config("UNSET")
        with pytest.raises(SdkError, match="not declared"):
            ctx.get_config("OTHER")

    _with_ctx(tmp_path, shared_nats, "sdk1", body)


def test_prediction_and_measurement_validation(tmp_path: Path, shared_nats: NatsServer) -> None:
    async def body(ctx: Context, _: Any) -> None:
        p = ctx.prediction
        assert (p.ERR_MISSING_VALUES, p.ERR_NEW_LABELS) == ("missing_values", "new_labels")
        for kwargs in ({}, {"predicted_value": "a"}, {"true_value": "b"},
                       {"predicted_value": 1, "true_value": "b"}, {"error": "bogus"}):
            with pytest.raises(SdkError):
                p.save(**kwargs)
        with pytest.raises(SdkError, match="UTC"):
            p.save("a", "b", utcdate=datetime.now(timezone(timedelta(hours=2))))
        m = ctx.measurement
        assert (m.PRECISION_S, m.PRECISION_MS, m.PRECISION_US, m.PRECISION_NS) == (
            "s", "ms", "us", "ns")
        with pytest.raises(SdkError):
            m.save("cpu", {"v": 1}, {}, precision="days")
        with pytest.raises(SdkError):
            await ctx.db.find("", {})

    _with_ctx(tmp_path, shared_nats, "sdk2", body)


def test_records_from_the_loop_and_from_a_thread(tmp_path: Path,
                                                 shared_nats: NatsServer) -> None:
    async def body(ctx: Context, nc: Any) -> None:
        when = datetime(2024, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
        await ctx.prediction.save("cat", "dog", extra={"p": 0.9}, utcdate=when)
        await ctx.measurement.save("latency", {"ms": 3.5}, {"host": "a"}, time=when,
                                   precision=ctx.measurement.PRECISION_S)
        await ctx.db.save("people", {"name": "ada", "age": 36})
        await ctx.db.save("people", {"name": "bob", "age": 36})
        await ctx.db.save("other", {"name": "ada"})
        assert await ctx.db.find("people", {"name": "ada"}) == [{"name": "ada", "age": 36}]
        assert len(await ctx.db.find("people", {"age": 36})) == 2
        assert await ctx.db.find("people", {"name": "zed"}) == []
        assert await ctx.db.find("empty", {}) == []

        def sync_handler() -> list[Any]:
            assert threading.current_thread() is not threading.main_thread()
            ctx.db.save("people", {"name": "cy", "age": 1})  # blocks until stored
            return ctx.db.find("people", {"name": "cy"})  # type: ignore[no-any-return]

        found = await asyncio.get_running_loop().run_in_executor(None, sync_handler)
        assert found == [{"name": "cy", "age": 1}]

        js = nc.jetstream()
        stream = contract.data_stream_name("sdk3")
        raw = await js.get_last_msg(stream, "kai-data.sdk3.prediction.v7.n1")
        record = json.loads(raw.data)
        assert record == {"date": "2024-01-02T03:04:05.600000Z", "error": "",
                          "predictedValue": "cat", "trueValue": "dog", "extra": {"p": 0.9},
                          "version": "v7", "workflow": "wf", "node": "n1",
                          "requestId": "req-1"}
        raw = await js.get_last_msg(stream, "kai-data.sdk3.measurement.v7.latency")
        record = json.loads(raw.data)
        assert record["time"] == int(when.timestamp())
        assert record["tags"] == {"host": "a", "version": "v7"}
        assert record["fields"] == {"ms": 3.5} and record["precision"] == "s"

    _with_ctx(tmp_path, shared_nats, "sdk3", body)
