"""`kai dev` behaves like a kubelet: restarts, ordered stop, nothing outlives it.

Real processes, a real nats-server, real gRPC; every wait is bounded, nothing asserts
a timing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from conftest import EXAMPLES
from local_run import alive, descendants, kai, running, write_version

from runner.client import CallFailed, call, find_rpc, parse_request
from runner.natsserver import NatsServer
from runner.proto import compile_proto
from runner.supervisor import free_port

pytestmark = pytest.mark.integration

PROTO = """\
    syntax = "proto3";
    package chain;
    message Request { string id = 1; }
    service Entrypoint { rpc Do (Request) returns (Request) {}; }
"""

PASS = """\
    import asyncio

    from public_input_pb2 import Request

    async def handler(ctx, data):
        req = Request()
        data.Unpack(req)
        await asyncio.sleep(0.02)
        return req
"""

MID = "chain-v1-mid"


def chain_version(root: Path) -> Path:
    return write_version(root, "chain-v1", PROTO, {"first": PASS, "mid": PASS, "last": PASS},
                         {"work": ("Do", ["first", "mid", "last"])}, {"mid": 2})


async def until(check: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(0.05)


def test_a_replica_killed_with_sigkill_under_load_is_restarted_and_every_call_answers(
    nats_server: NatsServer, tmp_path: Path,
) -> None:
    """1,200 calls at 10 in flight with an 8 s deadline and the default ack wait; one of the
    middle node's two replicas is killed with SIGKILL twice: every call answers OK."""
    version = chain_version(tmp_path / "v")
    calls, in_flight, deadline = 1200, 10, 8.0

    async def scenario() -> None:
        async with running(version, nats_server.url, tmp_path) as run:
            victim, other = run.supervisor.live(MID)
            done: list[str] = []
            gate = asyncio.Semaphore(in_flight)

            async def one(i: int) -> str:
                async with gate:
                    reply = await run.call("Do", {"id": f"r{i}"}, deadline=deadline)
                done.append(str(getattr(reply, "id")))  # noqa: B009 (a generated message)
                return done[-1]

            load = [asyncio.ensure_future(one(i)) for i in range(calls)]
            await until(lambda: len(done) >= 100, 60, "the first answers")
            victim.signal(signal.SIGKILL)
            first = f"{MID}#0 exited with code -9 (killed); restarting in 0.5 s (restart 1)"
            await until(lambda: first in run.log, 30, "the first restart line")
            await run.supervisor.wait_ready(30)
            await until(lambda: len(done) >= 600, 90, "answers after the first restart")
            run.supervisor.live(MID)[0].signal(signal.SIGKILL)
            results = await asyncio.gather(*load)
            assert sorted(results) == sorted(f"r{i}" for i in range(calls))
            # 1 s when the first restart ran under 10 s (backed off), else 0.5 s again
            second = tuple(f"{MID}#0 exited with code -9 (killed); restarting in {wait} s "
                           "(restart 2)" for wait in ("1", "0.5"))
            await until(lambda: any(ln in run.log for ln in second), 30,
                        "the second restart line")
            await run.supervisor.wait_ready(30)
            restarted = run.supervisor.live(MID)
            assert [c.restarts for c in restarted] == [2, 0]
            assert restarted[0].pid != victim.pid and restarted[1] is other
            assert f"{MID}#0 is ready again (restart 2)" in run.log
            assert not any("stopping" in line and "error" in line for line in run.log)
            # the restarted replica serves too
            again = [await run.call("Do", {"id": f"again{i}"}, deadline=30) for i in range(5)]
            assert [getattr(r, "id") for r in again] == [f"again{i}" for i in range(5)]  # noqa: B009

    asyncio.run(asyncio.wait_for(scenario(), 240))


def _start_kai_dev(tmp_path: Path, version: Path, port: int,
                   env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path, Path]:
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    argv = kai("dev", str(version), "--port", str(port), "--web-port", str(free_port()))
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 90
    while "ready: grpc" not in out.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"kai dev was not ready: {err.read_text()[-3000:]}")
        time.sleep(0.05)
    return proc, out, err


def test_ctrl_c_under_load_answers_every_accepted_call_and_stops_in_order(
    tmp_path: Path,
) -> None:
    version = chain_version(tmp_path / "v")
    port = free_port()
    proc, _, err = _start_kai_dev(tmp_path, version, port)
    try:
        children = descendants(proc.pid)
        assert len(children) >= 6, children  # nats-server, the entrypoint, four node replicas
        compiled = compile_proto(version, "public_input.proto")
        method = find_rpc(compiled, "Do")

        async def load() -> Counter[str]:
            outcomes: Counter[str] = Counter()
            answered = 0
            signalled = False
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:

                async def one(i: int) -> None:
                    nonlocal answered
                    try:
                        await call(channel, method, parse_request(method, f'{{"id": "r{i}"}}'),
                                   60)
                        outcomes["OK"] += 1
                    except CallFailed as exc:
                        outcomes[exc.code.name] += 1
                    answered += 1

                pending: set[asyncio.Task[None]] = set()
                for i in range(2000):  # bounded; the signal comes after the first 100 answers
                    if answered >= 100 and not signalled:
                        proc.send_signal(signal.SIGINT)
                        signalled = True
                        break
                    while len(pending) >= 10:
                        _, pending = await asyncio.wait(pending,
                                                        return_when=asyncio.FIRST_COMPLETED)
                    pending.add(asyncio.ensure_future(one(i)))
                assert signalled, "the load never reached 100 answers"
                if pending:
                    await asyncio.wait(pending)
            return outcomes

        outcomes = asyncio.run(asyncio.wait_for(load(), 120))
        assert set(outcomes) <= {"OK", grpc.StatusCode.UNAVAILABLE.name}, outcomes
        assert outcomes["OK"] >= 100
        assert proc.wait(timeout=90) == 0, err.read_text()[-3000:]
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in children if alive(pid)] == []
        text = err.read_text()
        order = [text.index(line) for line in (
            "stopping chain-v1-entrypoint", "stopping chain-v1-first, chain-v1-last, chain-v1-mid",
            "stopping nats-server")]
        assert order == sorted(order), text[-3000:]
        assert "killing it" not in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_kill_9_of_kai_dev_leaves_no_process_and_the_next_start_cleans_up(
    tmp_path: Path,
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"TMPDIR": str(tmp)}
    proc, _, _ = _start_kai_dev(tmp_path, EXAMPLES / "greeter", free_port(), env)
    try:
        children = descendants(proc.pid)
        assert len(children) >= 5, children  # nats-server, the entrypoint, three nodes
        [work] = list(tmp.glob(f"kai-dev-{proc.pid}-*"))
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 40  # the runners drain on SIGTERM, bounded by 25 s
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in children if alive(pid)] == []
        assert work.is_dir(), "a SIGKILLed kai dev cannot clean up: the next start must"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    done = subprocess.run(
        kai("dev", str(EXAMPLES / "greeter"), "--port", str(free_port()), "--web-port",
            str(free_port()), "--call", "PyGreet", '{"name": "ada"}'),
        capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    assert f"removed {work}: left by kai dev (pid {proc.pid}), which was killed" in done.stderr
    assert not work.exists()
    assert list(tmp.glob("kai-dev-*")) == []


CONFIGURED = """\
    import os

    from public_input_pb2 import Request

    def handler(ctx, data):
        cert = open(os.path.join(os.environ["KAI_CONFIG_DIR"], "CERT")).read().strip()
        return Request(id=f"{os.environ['API_KEY']}:{cert}")
"""


def test_config_reaches_the_nodes_as_the_rendered_secret_refs_say(tmp_path: Path) -> None:
    version = write_version(tmp_path / "v", "conf-v1", PROTO, {"use": CONFIGURED},
                            {"work": ("Do", ["use"])})
    with (version / "krt.yml").open("a") as krt:
        krt.write("config:\n  variables: [API_KEY]\n  files: [CERT]\n")
    cert = tmp_path / "cert.pem"
    cert.write_text("pem-data\n")
    done = subprocess.run(
        kai("dev", str(version), "--port", str(free_port()), "--web-port", str(free_port()),
            "--config", "API_KEY=s3cret", "--config", f"CERT=@{cert}",
            "--call", "Do", '{"id": "x"}'),
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert '"s3cret:pem-data"' in done.stdout


def _node_of(pid: int) -> str:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return ""
    found = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"KAI_NODE=")]
    return found[0].decode() if found else ""


def test_kai_dev_keeps_running_when_a_replica_dies_and_restarts_it(tmp_path: Path) -> None:
    version = chain_version(tmp_path / "v")
    port = free_port()
    proc, _, err = _start_kai_dev(tmp_path, version, port)
    try:
        mids = sorted(pid for pid in descendants(proc.pid) if _node_of(pid) == "mid")
        assert len(mids) == 2, mids
        os.kill(mids[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "is ready again (restart 1)" not in err.read_text():
            assert proc.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.05)
        assert "exited with code -9 (killed); restarting in 0.5 s (restart 1)" in err.read_text()
        now = sorted(pid for pid in descendants(proc.pid) if _node_of(pid) == "mid")
        assert len(now) == 2 and mids[1] in now and mids[0] not in now
        done = subprocess.run(kai("call", str(version), "Do", '{"id": "after"}',
                                  "--address", f"127.0.0.1:{port}"),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and '"after"' in done.stdout, done.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


SLOW = """\
    import os
    import time

    from public_input_pb2 import Request

    def handler(ctx, data):
        open(os.path.join(os.environ["SLOW_DIR"], "started"), "w").close()
        time.sleep(60)
        return Request(id="late")
"""


def test_a_second_ctrl_c_kills_everything_at_once(tmp_path: Path) -> None:
    version = write_version(tmp_path / "v", "slow-v1", PROTO, {"slow": SLOW},
                            {"work": ("Do", ["slow"])})
    port = free_port()
    proc, _, err = _start_kai_dev(tmp_path, version, port, {"SLOW_DIR": str(tmp_path)})
    caller = subprocess.Popen(kai("call", str(version), "Do", '{"id": "x"}', "--address",
                                  f"127.0.0.1:{port}", "--timeout", "120"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        children = descendants(proc.pid)
        deadline = time.monotonic() + 30
        while not (tmp_path / "started").exists():
            assert time.monotonic() < deadline, "the call never reached the node"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        while "stopping slow-v1-entrypoint" not in err.read_text():
            assert time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0, err.read_text()[-3000:]
        assert "interrupted again: killing every process" in err.read_text()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in children if alive(pid)] == []
    finally:
        for p in (caller, proc):
            if p.poll() is None:
                p.kill()
                p.wait(10)
