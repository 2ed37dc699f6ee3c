"""kai.yaml `runtime:` on a real nats-server: the project's data stream gets the limits
runtime.dataStream sets (when it is created, when they change, and when the stream differs
otherwise), and a step's consumer the ackWait and maxDeliver, also when they change."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js import api
from nats.js.manager import JetStreamManager

from renderer.krt import Config, Node, Version, Workflow
from renderer.plan import build_plan
from renderer.projectfile import load_project
from runner import contract
from runner.natsserver import NatsServer
from runner.transport import nats as jetstream

pytestmark = pytest.mark.integration

PROJECT = "shop"
STREAM = contract.data_stream_name(PROJECT)


def _env(url: str, **kw: object) -> contract.RunnerEnv:
    base = contract.RunnerEnv(project=PROJECT, version="v1", version_dir="/v", proto="x.proto",
                              workflows=(), nats_url=url, storage="memory")
    return replace(base, **kw)  # type: ignore[arg-type]


def _run(server: NatsServer, body: Callable[[JetStreamManager], Awaitable[None]]) -> None:
    async def main() -> None:
        nc = await nats.connect(server.url)
        try:
            await asyncio.wait_for(body(nc.jsm(timeout=jetstream.JS_TIMEOUT)), 60)
        finally:
            await nc.close()

    asyncio.run(main())


async def _limits(jsm: JetStreamManager) -> tuple[float, int, float]:
    config = (await jsm.stream_info(STREAM)).config
    return config.max_age or 0.0, config.max_bytes or 0, config.duplicate_window


def test_created_with_the_limits_and_updated_when_they_change(nats_server: NatsServer) -> None:
    async def body(jsm: JetStreamManager) -> None:
        env = _env(nats_server.url, data_max_age=720 * 3600.0, data_max_bytes=64 * 1024**2)
        assert await jetstream.ensure_data_stream(jsm, env) == STREAM
        assert await _limits(jsm) == (2_592_000.0, 64 * 1024**2, contract.DUPLICATE_WINDOW)
        await jetstream.ensure_data_stream(jsm, env)  # again, the same: nothing changes
        assert await _limits(jsm) == (2_592_000.0, 64 * 1024**2, contract.DUPLICATE_WINDOW)
        await jetstream.ensure_data_stream(
            jsm, replace(env, data_max_age=3600.0, data_max_bytes=8 * 1024**2))
        assert await _limits(jsm) == (3600.0, 8 * 1024**2, contract.DUPLICATE_WINDOW)
        # 0 lifts both limits again
        await jetstream.ensure_data_stream(jsm, replace(env, data_max_age=0, data_max_bytes=0))
        assert await _limits(jsm) == (0.0, -1, contract.DUPLICATE_WINDOW)

    _run(nats_server, body)


def test_the_defaults_bound_the_stream_by_age(nats_server: NatsServer) -> None:
    async def body(jsm: JetStreamManager) -> None:
        await jetstream.ensure_data_stream(jsm, _env(nats_server.url))
        assert await _limits(jsm) == (30 * 24 * 3600.0, -1, contract.DUPLICATE_WINDOW)
        assert (await jsm.stream_info(STREAM)).config.allow_msg_ttl

    _run(nats_server, body)


def test_db_documents_outlive_the_max_age_and_predictions_do_not(
        nats_server: NatsServer) -> None:
    """The stream's max age drops old predictions; db documents stay however old."""
    env = _env(nats_server.url, data_max_age=1.0)

    async def main() -> None:
        t = jetstream.NatsTransport(env)
        await t.connect("test")
        try:
            await t.ensure_data_stream()
            prediction = contract.data_subject(PROJECT, "prediction", "v1", "n1")
            document = contract.data_subject(PROJECT, "db", "users")
            await t.save_record(prediction, b'{"p": 1}')
            await t.save_record(document, b'{"name": "ada"}')
            found: list[bytes] = [b"?"]
            for _ in range(100):  # bounded: the server ages messages out about once a second
                await asyncio.sleep(0.1)
                found = await t.scan_records(prediction)
                if not found:
                    break
            assert found == []
            assert await t.scan_records(document) == [b'{"name": "ada"}']
        finally:
            await t.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_max_bytes_drops_the_oldest_records(nats_server: NatsServer) -> None:
    async def main() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            await asyncio.wait_for(body(nc, nc.jsm()), 60)
        finally:
            await nc.close()

    async def body(nc: Client, jsm: JetStreamManager) -> None:
        await jetstream.ensure_data_stream(jsm, _env(nats_server.url, data_max_bytes=4096))
        js = nc.jetstream()
        subject = contract.data_subject(PROJECT, "db", "v1", "people")
        for i in range(20):
            await js.publish(subject, b"x" * 500, headers={contract.HDR_MSG_ID: f"r{i}"})
        state = (await jsm.stream_info(STREAM)).state
        assert state.bytes <= 4096 and state.messages < 20
        assert state.last_seq == 20 and state.first_seq > 1  # the newest kept, the oldest gone

    asyncio.run(main())


def test_a_stream_differing_otherwise_still_gets_the_limits(
        nats_server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    """A stream JetStream cannot turn into the configured one (other storage) is used as
    it is, with the limits set on it."""
    async def body(jsm: JetStreamManager) -> None:
        await jetstream.ensure_data_stream(jsm, _env(nats_server.url, storage="file"))
        with caplog.at_level(logging.WARNING, logger="runner.transport"):
            await jetstream.ensure_data_stream(jsm, _env(
                nats_server.url, storage="memory", data_max_age=600.0, data_max_bytes=2**20))
        info = await jsm.stream_info(STREAM)
        assert info.config.storage == api.StorageType.FILE
        assert await _limits(jsm) == (600.0, 2**20, contract.DUPLICATE_WINDOW)
        assert "exists with another configuration" in caplog.text

    _run(nats_server, body)


def test_limits_the_server_cannot_reserve_are_refused_clearly(nats_server: NatsServer) -> None:
    """JetStream reserves max_bytes: more than the server's memory store is an error."""
    async def body(jsm: JetStreamManager) -> None:
        with pytest.raises(nats.js.errors.APIError) as info:
            await jetstream.ensure_data_stream(jsm, _env(nats_server.url,
                                                         data_max_bytes=1024**4))
        assert "insufficient memory resources" in str(info.value.description)

    _run(nats_server, body)


def test_a_short_max_age_shortens_the_duplicate_window(nats_server: NatsServer) -> None:
    """kai.yaml refuses maxAge under the window; a runner given one directly still starts."""
    async def body(jsm: JetStreamManager) -> None:
        await jetstream.ensure_data_stream(jsm, _env(nats_server.url, data_max_age=30.0))
        assert await _limits(jsm) == (30.0, -1, 30.0)

    _run(nats_server, body)


def test_from_kai_yaml_to_the_stream(tmp_path: Path, nats_server: NatsServer) -> None:
    """The limits written in kai.yaml reach the stream through the plan's environment."""
    (tmp_path / "kai.yaml").write_text(
        f"project: {PROJECT}\nnamespace: kai-shop\n"
        "runtime: {dataStream: {maxAge: 36h, maxBytes: 16Mi}}\n"
        "versions: {v1: {state: started}}\n")
    project = load_project(tmp_path)
    src = tmp_path / "versions" / "v1" / "src" / "etl"
    src.mkdir(parents=True)
    (src / "main.py").write_text("def handler(ctx, data):\n    return data\n")
    version = Version(
        name="v1", description="", proto="x.proto", entrypoint_image="e", nodes=(
            Node("etl", "n", "src/etl/main.py"),), workflows=(Workflow("wf", "Rpc", ("etl",)),),
        config=Config(), directory=tmp_path / "versions" / "v1")
    plan = build_plan(project, version)
    assert len(plan.processes) == 2
    for process in plan.processes:
        env = contract.RunnerEnv.from_environ(
            process.local_env(tmp_path, nats_server.url, tmp_path / "config"))

        async def body(jsm: JetStreamManager, env: contract.RunnerEnv = env) -> None:
            await jetstream.ensure_data_stream(jsm, replace(env, storage="memory"))
            assert await _limits(jsm) == (36 * 3600.0, 16 * 1024**2, contract.DUPLICATE_WINDOW)

        _run(nats_server, body)


def test_a_changed_ack_wait_and_max_deliver_reach_the_existing_consumer(
        nats_server: NatsServer) -> None:
    """A version rolled out with new settings updates the durable consumer of each step."""
    async def body(jsm: JetStreamManager) -> None:
        env = _env(nats_server.url, workflows=(contract.Workflow("wf", "Rpc", ("n1",)),),
                   ack_wait=30.0, max_deliver=5)
        await jetstream.ensure_work_stream(jsm, env, "wf")
        stream = contract.stream_name(PROJECT, "v1", "wf")
        for ack_wait, max_deliver in ((30.0, 5), (7.0, 2)):
            changed = replace(env, ack_wait=ack_wait, max_deliver=max_deliver)
            durable = await jetstream.ensure_consumer(jsm, changed, "wf", 0, "n1")
            config = (await jsm.consumer_info(stream, durable)).config
            assert (config.ack_wait, config.max_deliver) == (ack_wait, max_deliver)

    _run(nats_server, body)
