"""The KEDA ScaledObject against a real nats-server: each (stream, consumer) its triggers name
is the one the running node consumes from, read the way KEDA's nats-jetstream scaler reads it
(the monitoring endpoint's /jsz, account, stream and consumer from the trigger's metadata),
and its pending count rises while the node is stopped.

The version is written as a krt.yml (node etl autoscales with minReplicas 0, in two
workflows; output has fixed replicas), planned and rendered as `kai render` does; its
processes run (`python -m runner ...`, tests/integration/runner_procs.py) with the
environment of the rendered Deployments, on this machine's paths."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from runner_procs import Proc, Version, consumer_waiting, wait_ready, wait_taking_work

from renderer.plan import VersionPlan, build_plan
from renderer.project import Nats, Project, VersionState
from renderer.render import render_version
from renderer.validate import load_version
from runner import contract
from runner.natsserver import NatsServer, free_port

pytestmark = pytest.mark.integration

LIMIT = 30.0  # seconds any one wait of these tests may take
PROTO = """syntax = "proto3";
package scale;
message Msg { string name = 1; }
service Entrypoint {
  rpc PyGreet (Msg) returns (Msg);
  rpc PyEcho (Msg) returns (Msg);
}
"""
KRT = """\
version: scale-v1
description: An autoscaled node.
entrypoint:
  proto: public_input.proto
  image: konstellation/kre-entrypoint:1.6.0
nodes:
  - name: etl
    image: konstellation/kre-py:1.23.0
    src: src/etl/main.py
    autoscaling: {minReplicas: 0, maxReplicas: 4, pendingPerReplica: 2}
  - name: output
    image: konstellation/kre-py:1.23.0
    src: src/output/main.py
workflows:
  - name: py-greeting
    entrypoint: PyGreet
    sequential: [etl, output]
  - name: py-echo
    entrypoint: PyEcho
    sequential: [etl]
"""
HANDLER = """from public_input_pb2 import Msg


def handler(ctx, data: Msg):
    return Msg(name=data.name)
"""
GREETINGS, ECHOES = 3, 2


@pytest.fixture
def monitored(tmp_path: Path) -> Any:
    """A nats-server with JetStream and its monitoring endpoint (/jsz) on loopback."""
    port = free_port()
    with NatsServer(store_dir=tmp_path / "nats", extra_config=f'http: "127.0.0.1:{port}"') as srv:
        yield srv, port


def _version_dir(root: Path) -> Path:
    vdir = root / "scale-v1"
    for node in ("etl", "output"):
        (vdir / "src" / node).mkdir(parents=True)
        (vdir / "src" / node / "main.py").write_text(HANDLER)
    (vdir / "public_input.proto").write_text(PROTO)
    (vdir / "krt.yml").write_text(KRT)
    return vdir


def _rendered(tmp_path: Path, url: str, monitoring: str) -> tuple[VersionPlan, dict[str, Any]]:
    """The version's plan and its ScaledObject, as `kai render` makes them."""
    version = load_version(_version_dir(tmp_path), tmp_path)
    project = Project(name="scale", namespace="scale", root=tmp_path,
                      nats=Nats(url=url, storage="memory", monitoring=monitoring),
                      versions={"scale-v1": VersionState("started")})
    plan = build_plan(project, version)
    (scaled,) = [o for o in render_version(project, plan) if o["kind"] == "ScaledObject"]
    return plan, scaled


def _spawn(version: Version, plan: VersionPlan, name: str, url: str) -> Proc:
    """The process `name` (entrypoint or a node) with its rendered Deployment's environment,
    this machine's paths and free ports."""
    process = next(p for p in plan.processes if (p.node or contract.ROLE_ENTRYPOINT) == name)
    env = process.local_env(version.dir, url, version.dir / "config",
                            {contract.ENV_GRPC_PORT: 0, contract.ENV_WEB_PORT: 0})
    version.env = contract.RunnerEnv.from_environ(env)  # nothing but the rendered variables
    if process.node is None:
        return version.spawn(contract.ROLE_ENTRYPOINT, extra=env)
    return version.spawn(contract.ROLE_NODE, node=process.node,
                         handler=env[contract.ENV_HANDLER], extra=env)


def keda_lag(trigger: dict[str, Any]) -> dict[str, int] | None:
    """What KEDA's nats-jetstream scaler reads for `trigger`: GET /jsz with its account,
    consumers and config, the stream and consumer of the trigger's metadata; None when the
    consumer is not there. `lag` is the scaler's metric (num_pending + num_ack_pending)."""
    meta = trigger["metadata"]
    assert meta.get("useHttps", "false") == "false"
    query = urllib.parse.urlencode({"acc": meta["account"], "consumers": "true",
                                    "config": "true"})
    url = f"http://{meta['natsServerMonitoringEndpoint']}/jsz?{query}"
    with urllib.request.urlopen(url, timeout=5) as answer:
        jsz = json.load(answer)
    for account in jsz.get("account_details") or []:
        if meta["account"] not in (account.get("name"), account.get("id")):
            continue
        for stream in account.get("stream_detail") or []:
            if stream["name"] != meta["stream"]:
                continue
            for consumer in stream.get("consumer_detail") or []:
                if consumer["name"] == meta["consumer"]:
                    pending, unacked = consumer["num_pending"], consumer["num_ack_pending"]
                    return {"pending": pending, "unacked": unacked, "lag": pending + unacked,
                            "waiting": consumer.get("num_waiting", 0)}
    return None


def until(what: str, check: Callable[[], bool]) -> None:
    """Poll `check` until it holds, for at most LIMIT seconds."""
    end = time.monotonic() + LIMIT
    for _ in range(int(LIMIT / 0.1) + 1):
        if check():
            return
        if time.monotonic() > end:
            break
        time.sleep(0.1)
    raise AssertionError(f"not within {LIMIT}s: {what}")




def test_the_scaledobject_names_the_consumers_the_node_pulls_from_and_their_backlog(
        tmp_path: Path, monitored: tuple[NatsServer, int]) -> None:
    server, port = monitored
    plan, scaled = _rendered(tmp_path, server.url, f"127.0.0.1:{port}")
    triggers = {t["metadata"]["stream"]: t for t in scaled["spec"]["triggers"]}
    greet = contract.stream_name("scale", "scale-v1", "py-greeting")
    echo = contract.stream_name("scale", "scale-v1", "py-echo")
    assert sorted(triggers) == sorted([greet, echo])
    assert {t["metadata"]["consumer"] for t in triggers.values()} == {"s0-etl"}
    assert scaled["spec"]["minReplicaCount"] == 0

    version = Version(tmp_path / "scale-v1", contract.RunnerEnv.from_environ(
        plan.entrypoint.env), tmp_path / "logs")  # each _spawn sets the process's own
    version.logs.mkdir()
    calls: list[Future[bytes]] = []
    pool = ThreadPoolExecutor(GREETINGS + ECHOES)
    channel: grpc.Channel | None = None
    try:
        # etl sleeps (no replica): the entrypoint makes its consumers and is ready anyway
        ep, output = _spawn(version, plan, "entrypoint", server.url), \
            _spawn(version, plan, "output", server.url)
        wait_ready(ep, output)
        wait_taking_work(ep)
        for trigger in triggers.values():
            assert keda_lag(trigger) == {"pending": 0, "unacked": 0, "lag": 0, "waiting": 0}

        # requests while the node is stopped: the backlog KEDA sees rises with each
        channel = grpc.insecure_channel(f"127.0.0.1:{ep.grpc_port}")
        for rpc, count in (("PyGreet", GREETINGS), ("PyEcho", ECHOES)):
            stub: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                f"/scale.Entrypoint/{rpc}")
            for i in range(count):
                calls.append(pool.submit(stub, f"\n\x01{i}".encode(), timeout=2 * LIMIT))
        until("3 greetings and 2 echoes wait for etl", lambda: (
            (keda_lag(triggers[greet]) or {}).get("pending") == GREETINGS
            and (keda_lag(triggers[echo]) or {}).get("pending") == ECHOES))
        assert not any(call.done() for call in calls)

        # the node wakes: it pulls from exactly those consumers, and the backlog drains
        etl = _spawn(version, plan, "etl", server.url)
        wait_ready(etl)
        assert sorted(call.result(LIMIT) for call in calls) == sorted(
            f"\n\x01{i}".encode() for n in (GREETINGS, ECHOES) for i in range(n))
        until("etl's pulls wait on both consumers, nothing pending", lambda: all(
            (lag := keda_lag(t)) is not None and lag["lag"] == 0 and lag["waiting"] > 0
            for t in triggers.values()))
        for trigger in triggers.values():
            meta = trigger["metadata"]
            waiting = asyncio.run(asyncio.wait_for(
                consumer_waiting(server.url, meta["stream"], meta["consumer"]), LIMIT))
            assert waiting > 0  # consumer_info of that very name has the node's pull

        # and stopped again, the backlog grows once more: nobody else drains it
        etl.stop()
        until("etl's pulls are gone", lambda: (keda_lag(triggers[echo]) or {}).get(
            "waiting") == 0)
        stub = channel.unary_unary("/scale.Entrypoint/PyEcho")
        late = pool.submit(stub, b"\n\x01x", timeout=2 * LIMIT)
        until("one echo waits", lambda: (keda_lag(triggers[echo]) or {}).get("pending") == 1)
        assert (keda_lag(triggers[greet]) or {}).get("pending") == 0
        _spawn(version, plan, "etl", server.url)
        assert late.result(LIMIT) == b"\n\x01x"
    finally:
        if channel is not None:
            channel.close()
        version.close()
        pool.shutdown(wait=False, cancel_futures=True)
