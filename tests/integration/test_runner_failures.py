"""Runner failure paths, each from its real cause: start-up errors, payload limits,
a NATS outage, a node that keeps crashing (max_deliver) and a SIGTERM drain."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from runner_procs import Version, wait_ready, write_version

from runner import contract
from runner.natsserver import NatsServer
from runner.proto import compile_proto

pytestmark = pytest.mark.integration

PROTO = """
syntax = "proto3";
package echo;
message Req { string text = 1; bytes blob = 2; int32 grow = 3; double sleep = 4; }
message Resp { string text = 1; bytes blob = 2; }
service Echo { rpc Echo (Req) returns (Resp); }
"""

ECHO = '''
import os
import time

from api_pb2 import Req, Resp


def handler(ctx, data: Req):
    if data.text == "crash":
        os._exit(9)
    if data.sleep:
        time.sleep(data.sleep)
    return Resp(text=data.text, blob=b"x" * data.grow)
'''

WORKFLOW = [contract.Workflow("echo", "Echo", ("echo",))]


def _version(tmp_path: Path, url: str, code: str = ECHO, **env: object) -> Version:
    env.setdefault("project", "fail")
    return write_version(tmp_path, url, PROTO, {"echo": code}, WORKFLOW, **env)  # type: ignore[arg-type]


def _call(version: Version, timeout: float = 10.0, **fields: object) -> object:
    compiled = compile_proto(version.dir, "proto/api.proto")
    req = compiled.message_class("echo.Req")(**fields)
    with grpc.insecure_channel(f"127.0.0.1:{version.procs[0].grpc_port}") as channel:
        raw = channel.unary_unary("/echo.Echo/Echo")(req.SerializeToString(), timeout=timeout)
    return compiled.message_class("echo.Resp").FromString(raw)


@pytest.mark.parametrize(
    ("code", "exit_code", "message"),
    [
        ("def not_a_handler(ctx, data):\n    pass\n", 2, "defines no handler(ctx, data)"),
        ("import no_such_module_xyz\n", 2,
         "importing src/echo/main.py failed (line 1): ModuleNotFoundError"),
        ("def init(ctx):\n    raise RuntimeError('no model file')\n\n"
         "def handler(ctx, data):\n    return data\n", 3,
         "init failed: RuntimeError: no model file"),
    ],
    ids=["missing-handler", "import-error", "failing-init"],
)
def test_startup_failures_exit_non_zero(tmp_path: Path, shared_nats: NatsServer, code: str,
                                        exit_code: int, message: str) -> None:
    version = _version(tmp_path, shared_nats.url, code)
    try:
        proc = version.node("echo")
        assert proc.wait_exit(20) == exit_code
        out = proc.text()
        assert "node echo: cannot start: " in out and message in out, out
        assert "Traceback" not in out
    finally:
        version.close()


def test_too_large_is_resource_exhausted(tmp_path: Path) -> None:
    # Over the server's max payload travels through the claim bucket; over the runner's max
    # message is refused.
    with NatsServer(store_dir=tmp_path / "nats", max_payload=4096) as server:
        version = _version(tmp_path, server.url, max_message=8000)
        try:
            wait_ready(version.entrypoint(), version.node("echo"))
            assert _call(version, text="ok").text == "ok"  # type: ignore[attr-defined]
            assert _call(version, blob=b"y" * 5000).text == ""  # type: ignore[attr-defined]
            assert _call(version, grow=6000).blob == b"x" * 6000  # type: ignore[attr-defined]
            with pytest.raises(grpc.RpcError) as err:
                _call(version, blob=b"y" * 9000)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "the request is 9003 bytes" in err.value.details()
            assert "max message of 8000 bytes" in err.value.details()
            with pytest.raises(grpc.RpcError) as err:
                _call(version, grow=9000)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "node echo: the reply is" in err.value.details()
            assert "max message of 8000 bytes" in err.value.details()
        finally:
            version.close()


def test_nats_outage_fails_fast_then_recovers(tmp_path: Path) -> None:
    with NatsServer(store_dir=tmp_path / "nats") as server:
        version = _version(tmp_path, server.url, storage="file")
        try:
            ep, node = version.entrypoint(), version.node("echo")
            wait_ready(ep, node)
            assert _call(version, text="before").text == "before"  # type: ignore[attr-defined]
            server.stop()
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                _call(version, text="during", timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 1.0
            server.start()
            end = time.monotonic() + 20
            while True:
                try:
                    assert _call(version, text="after", timeout=2).text == "after"  # type: ignore[attr-defined]
                    break
                except grpc.RpcError as exc:
                    assert exc.code() in (grpc.StatusCode.UNAVAILABLE,
                                          grpc.StatusCode.DEADLINE_EXCEEDED)
                    assert time.monotonic() < end, "no recovery after NATS came back"
                    time.sleep(0.1)
            assert ep.popen.poll() is None and node.popen.poll() is None
        finally:
            version.close()


def test_node_crashing_every_time_gets_an_error(tmp_path: Path, shared_nats: NatsServer) -> None:
    version = _version(tmp_path, shared_nats.url, project="crash", max_deliver=2, ack_wait=1.0)
    try:
        ep, a, b = version.entrypoint(), version.node("echo"), version.node("echo")
        wait_ready(ep, a, b)
        started = time.monotonic()
        result: dict[str, grpc.RpcError] = {}

        def call() -> None:
            try:
                _call(version, text="crash", timeout=15)
            except grpc.RpcError as exc:
                result["error"] = exc

        t = threading.Thread(target=call)
        t.start()
        # each delivery kills the replica that took it: both are gone after the two
        assert a.wait_exit(10) == 9 and b.wait_exit(10) == 9
        # JetStream gives up on the message when a puller asks for it a third time, as a
        # restarted replica does (the kubelet's, or kai dev's, restart): it gets the
        # MAX_DELIVERIES advisory, not the message, and the entrypoint answers INTERNAL
        c = version.node("echo")
        t.join(15)
        assert not t.is_alive()
        err = result["error"]
        assert err.code() == grpc.StatusCode.INTERNAL, err
        assert err.details().startswith("node echo: gave up on this request after 2")
        assert time.monotonic() - started < 10
        assert c.popen.poll() is None  # the message was not delivered again
    finally:
        version.close()


def test_sigterm_drains_in_flight_work(tmp_path: Path, shared_nats: NatsServer) -> None:
    version = _version(tmp_path, shared_nats.url, project="drain")
    try:
        ep, node = version.entrypoint(), version.node("echo")
        wait_ready(ep, node)
        result: dict[str, object] = {}

        def slow_call() -> None:
            try:
                result["reply"] = _call(version, text="slow", sleep=1.0)
            except grpc.RpcError as exc:
                result["error"] = exc

        t = threading.Thread(target=slow_call)
        t.start()
        time.sleep(0.4)  # the node is inside the handler now
        node.popen.send_signal(signal.SIGTERM)
        assert node.wait_exit(10) == 0
        t.join(10)
        assert "error" not in result, result
        assert result["reply"].text == "slow"  # type: ignore[attr-defined]
        assert "stopping: draining in-flight work" in node.text()
    finally:
        version.close()
