"""Chaos: killed replicas, a NATS outage, draining nodes and `kai dev`'s own exits.

Every test runs real processes against a real nats-server and calls them over
real gRPC. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from conftest import EXAMPLES
from local_run import alive, descendants, kai, running, write_version

from runner import contract
from runner.client import CallFailed
from runner.natsserver import NatsServer
from runner.supervisor import free_port

pytestmark = pytest.mark.integration

PROTO = """\
    syntax = "proto3";
    package chaos;
    message Request { string id = 1; }
    message Item { string id = 1; int32 pid = 2; }
    message Response { string id = 1; int32 handled_by = 2; }
    service Entrypoint { rpc Do (Request) returns (Response) {}; }
"""

# Logs "<pid> <id>" when it starts a request, waits CHAOS_DELAY seconds, passes it on.
FIRST = """\
    import asyncio
    import os

    from public_input_pb2 import Item, Request

    async def handler(ctx, data):
        req = Request()
        data.Unpack(req)
        with open(os.path.join(os.environ["CHAOS_DIR"], "first.log"), "a") as f:
            f.write(f"{os.getpid()} {req.id}\\n")
        await asyncio.sleep(float(os.environ["CHAOS_DELAY"]))
        return Item(id=req.id, pid=os.getpid())
"""

# The next node: a sync KRE-style handler that records every request id it handles.
RECORD = """\
    import os

    from public_input_pb2 import Item, Response

    def handler(ctx, data):
        item = Item()
        data.Unpack(item)
        with open(os.path.join(os.environ["CHAOS_DIR"], "record.log"), "a") as f:
            f.write(item.id + "\\n")
        return Response(id=item.id, handled_by=item.pid)
"""

FIRST_PROCESS = "chaos-v1-first"


def chaos_version(root: Path, replicas: int) -> Path:
    return write_version(root, "chaos-v1", PROTO, {"first": FIRST, "record": RECORD},
                         {"work": ("Do", ["first", "record"])}, {"first": replicas})


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def until(check: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(0.02)


def test_sigkill_one_of_two_replicas_under_200_concurrent_requests(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    version = chaos_version(tmp_path / "v", replicas=2)
    env = {"CHAOS_DIR": str(tmp_path), "CHAOS_DELAY": "0.3"}
    fast_redelivery = {contract.ENV_ACK_WAIT: "2"}

    async def scenario() -> list[object]:
        async with running(version, nats_server.url, tmp_path, env, fast_redelivery) as run:
            replicas = run.supervisor.live(FIRST_PROCESS)
            assert len(replicas) == 2
            victim = replicas[0]
            calls = [asyncio.ensure_future(run.call("Do", {"id": f"r{i}"}, deadline=45))
                     for i in range(200)]
            started = lambda: sum(  # noqa: E731
                line.startswith(f"{victim.pid} ") for line in lines(tmp_path / "first.log"))
            await until(lambda: started() >= 5, 20, "the victim to take requests")
            victim.signal(signal.SIGKILL)
            results = await asyncio.gather(*calls)
            assert not victim.running
            return [(victim.pid, r) for r in results]

    pairs = asyncio.run(asyncio.wait_for(scenario(), 75))
    victim_pid = pairs[0][0]
    assert sorted(r.id for _, r in pairs) == sorted(f"r{i}" for i in range(200))
    recorded = lines(tmp_path / "record.log")
    duplicates = [i for i, n in collections.Counter(recorded).items() if n > 1]
    assert duplicates == [], f"handled twice by the next node: {duplicates}"
    assert sorted(recorded) == sorted(f"r{i}" for i in range(200))
    # the kill really hit work in flight: some of the victim's requests were redone
    by_pid = collections.defaultdict(set)
    for line in lines(tmp_path / "first.log"):
        pid, rid = line.split()
        by_pid[int(pid)].add(rid)
    survivors = set().union(*(ids for pid, ids in by_pid.items() if pid != victim_pid))
    assert by_pid[victim_pid] & survivors


def test_nats_outage_fails_fast_then_recovers_without_restarts(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running(EXAMPLES / "greeter", nats_server.url, tmp_path) as run:
            pids = sorted(c.pid for c in run.supervisor.children)
            assert (await run.call("PyGreet", {"name": "ada"})).greeting == "Hello, Ada!"

            nats_server.stop()
            for _ in range(3):
                began = time.monotonic()
                with pytest.raises(CallFailed) as failed:
                    await run.call("PyGreet", {"name": "ada"}, deadline=10)
                assert failed.value.code == grpc.StatusCode.UNAVAILABLE, failed.value
                assert time.monotonic() - began < 3.0, "did not fail fast"

            nats_server.start()
            deadline = time.monotonic() + 30
            while True:
                try:
                    reply = await run.call("PyGreet", {"name": "grace"}, deadline=5)
                    break
                except CallFailed as exc:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"no recovery after NATS came back: {exc}") from None
                    await asyncio.sleep(0.25)
            assert reply.greeting == "Hello, Grace!"
            assert sorted(c.pid for c in run.supervisor.live()) == pids, "a process restarted"

    asyncio.run(asyncio.wait_for(scenario(), 80))


def test_sigterm_drains_a_node_without_losing_accepted_requests(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    version = chaos_version(tmp_path / "v", replicas=1)
    env = {"CHAOS_DIR": str(tmp_path), "CHAOS_DELAY": "0.8"}
    settings = {contract.ENV_ACK_WAIT: "3", contract.ENV_CONCURRENCY: "4"}

    async def scenario() -> None:
        async with running(version, nats_server.url, tmp_path, env, settings) as run:
            [node] = run.supervisor.live(FIRST_PROCESS)
            calls = [asyncio.ensure_future(run.call("Do", {"id": f"r{i}"}, deadline=40))
                     for i in range(20)]
            await until(lambda: len(lines(tmp_path / "first.log")) >= 1, 20,
                        "the node to take requests")
            code = await run.supervisor.stop_child(node, signal.SIGTERM)
            assert code == 0, "a draining node must exit 0"
            # everything it had started was finished and passed on before it exited
            started = len(lines(tmp_path / "first.log"))
            assert 1 <= started < 20
            await until(lambda: len(lines(tmp_path / "record.log")) >= started, 10,
                        "the drained node's work to reach the next node")
            assert len(lines(tmp_path / "record.log")) == started
            await run.supervisor.add_replica(FIRST_PROCESS)
            results = await asyncio.gather(*calls)
            assert sorted(r.id for r in results) == sorted(f"r{i}" for i in range(20))

    asyncio.run(asyncio.wait_for(scenario(), 70))
    recorded = lines(tmp_path / "record.log")
    assert sorted(recorded) == sorted(f"r{i}" for i in range(20))


BROKEN_PROTO = """\
    syntax = "proto3";
    package broken;
    message Request { string id = 1; }
    service Entrypoint { rpc Do (Request) returns (Request) {}; }
"""

BROKEN_INIT = """\
    def init(ctx):
        raise RuntimeError("model weights not found: /models/missing.bin")

    def handler(ctx, data):
        return data
"""

GOOD = """\
    from public_input_pb2 import Request

    async def handler(ctx, data):
        req = Request()
        data.Unpack(req)
        return req
"""


def test_kai_dev_exits_non_zero_with_the_error_of_a_node_whose_init_fails(
    tmp_path: Path,
) -> None:
    version = write_version(tmp_path, "broken-v1", BROKEN_PROTO,
                            {"good": GOOD, "bad": BROKEN_INIT},
                            {"work": ("Do", ["good", "bad"])})
    began = time.monotonic()
    done = subprocess.run(
        kai("dev", str(version), "--port", str(free_port()), "--web-port", str(free_port())),
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "broken-v1-bad" in done.stderr
    assert "model weights not found: /models/missing.bin" in done.stderr
    assert "Traceback" not in done.stderr.split("error: ", 1)[-1]
    assert time.monotonic() - began < 45


def test_ctrl_c_stops_kai_dev_and_leaves_no_child_process(tmp_path: Path) -> None:
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    argv = kai("dev", str(EXAMPLES / "greeter"), "--port", str(free_port()),
               "--web-port", str(free_port()))
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while "ready: grpc" not in out.read_text():
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "kai dev was not ready in 60s"
            time.sleep(0.05)
        children = descendants(proc.pid)
        assert len(children) >= 5, children  # nats-server, the entrypoint, three nodes
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, err.read_text()
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in children if alive(pid)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
