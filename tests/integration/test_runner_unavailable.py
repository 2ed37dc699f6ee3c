"""UNAVAILABLE means "not run", against a real nats-server and real gRPC.

A client may retry UNAVAILABLE, so a call answered so must never reach the last node: not
when nats-server stalls (SIGSTOP) under load, not when it is gone, not while the entrypoint
drains after SIGTERM. Calls the entrypoint took are finished (OK) or, when they may have
been stored, run out their deadline (DEADLINE_EXCEEDED); none is CANCELLED.

The processes run directly (`python -m runner ...`, tests/integration/runner_procs.py). Each
node appends "<pid> <id> <request id>" to <LOG_DIR>/<node>.log when it handles a request.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from runner_procs import (
    TRACE_PACKAGE,
    TRACE_RPC,
    Version,
    http_get,
    trace_version,
    traced,
    wait_ready,
)

from runner.natsserver import NatsServer
from runner.proto import compile_proto

pytestmark = pytest.mark.integration

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED

Outcome = tuple[str, grpc.StatusCode, str]  # (id, code, details)


def _version(tmp_path: Path, url: str) -> Version:
    return trace_version(tmp_path, url, ("first", "last"), "unavail")


def _handled(tmp_path: Path, node: str) -> collections.Counter[str]:
    """How many times `node` handled each call (by the call's id, one request id each)."""
    return collections.Counter(rid for _, rid, _ in traced(tmp_path, node))


class Client:
    """Calls Chain/Run over one channel; each call's outcome is kept in `done`."""

    def __init__(self, version: Version, port: int) -> None:
        compiled = compile_proto(version.dir, "proto/api.proto")
        self.req: Any = compiled.message_class(f"{TRACE_PACKAGE}.Req")
        self.resp: Any = compiled.message_class(f"{TRACE_PACKAGE}.Resp")
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(
            TRACE_RPC)
        self.done: list[Outcome] = []

    async def call(self, rid: str, deadline: float, sleep: float = 0.0) -> Outcome:
        payload = self.req(id=rid, sleep=sleep).SerializeToString()
        try:
            raw = await self.stub(payload, timeout=deadline)
            out = (rid, OK, self.resp.FromString(raw).id)
        except grpc.aio.AioRpcError as exc:
            out = (rid, exc.code(), exc.details() or "")
        self.done.append(out)
        return out

    async def steady(self, prefix: str, count: int, every: float, deadline: float
                     ) -> list[Outcome]:
        """`count` calls, one started every `every` seconds, each awaited on its own."""
        calls = []
        for i in range(count):
            calls.append(asyncio.ensure_future(self.call(f"{prefix}{i}", deadline)))
            await asyncio.sleep(every)
        return list(await asyncio.gather(*calls))

    async def closed_loop(self, prefix: str, until: asyncio.Event, sleep: float) -> None:
        """One call after another until `until` is set (at most 100,000)."""
        for i in range(100_000):
            if until.is_set():
                return
            _, code, _ = await self.call(f"{prefix}-{i}", 20.0, sleep)
            if code != OK:
                await asyncio.sleep(0.005)


@contextmanager
def stalled(server: NatsServer) -> Iterator[None]:
    """nats-server stopped (SIGSTOP) for the block; always continued afterwards."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.proc.send_signal(signal.SIGCONT)


def _settled(tmp_path: Path, limit: float = 10.0) -> None:
    """Wait until the last node's log stops growing (bounded): late work has landed."""
    end = time.monotonic() + limit
    seen = -1
    while time.monotonic() < end:
        now = sum(_handled(tmp_path, "last").values())
        if now == seen:
            return
        seen = now
        time.sleep(1.0)


def _by_code(done: list[Outcome]) -> dict[grpc.StatusCode, set[str]]:
    out: dict[grpc.StatusCode, set[str]] = collections.defaultdict(set)
    for rid, code, _ in done:
        out[code].add(rid)
    return out


STALL = 8.0


def test_a_stalled_nats_server_under_load_answers_no_unavailable_call_that_runs(
        tmp_path: Path, nats_server: NatsServer) -> None:
    """nats-server SIGSTOPped for 8 s while calls (20 s deadline) keep arriving, plus calls
    with a 3 s deadline that start during the stall."""
    version = _version(tmp_path, nats_server.url)
    try:
        ep, first, last = version.entrypoint(), version.node("first"), version.node("last")
        wait_ready(ep, first, last)

        async def scenario() -> tuple[list[Outcome], list[Outcome]]:
            client = Client(version, ep.grpc_port)
            try:
                assert (await client.call("warm", 10))[1] == OK
                load = asyncio.ensure_future(client.steady("r", 480, 0.025, 20.0))
                await asyncio.sleep(2.0)
                with stalled(nats_server):
                    await asyncio.sleep(1.0)
                    short = asyncio.ensure_future(client.steady("s", 10, 0.1, 3.0))
                    await asyncio.sleep(STALL - 1.0)
                return await load, await short
            finally:
                await client.channel.close()

        steady, short = asyncio.run(asyncio.wait_for(scenario(), 90))
        _settled(tmp_path)
    finally:
        version.close()

    codes = _by_code(steady)
    handled = _handled(tmp_path, "last")
    assert set(codes) <= {OK, DEADLINE_EXCEEDED, UNAVAILABLE}, {
        c: sorted(ids)[:3] for c, ids in codes.items()}
    ran_anyway = sorted(rid for rid in codes[UNAVAILABLE] if handled[rid])
    assert ran_anyway == [], f"answered UNAVAILABLE, yet run: {ran_anyway[:5]}"
    assert sorted(rid for rid in codes[OK] if handled[rid] != 1) == []
    # calls rode out the stall (the deadline is longer than it)
    assert len(codes[OK]) > len(steady) // 2, {c: len(ids) for c, ids in codes.items()}
    # calls with a deadline shorter than the stall, started during it, ran out of time: they
    # may have been stored (and the stall was real)
    assert [(rid, code) for rid, code, _ in short if code != DEADLINE_EXCEEDED] == []


def test_calls_while_nats_server_is_gone_are_unavailable_and_never_run(
        tmp_path: Path, nats_server: NatsServer) -> None:
    version = _version(tmp_path, nats_server.url)
    try:
        ep, first, last = version.entrypoint(), version.node("first"), version.node("last")
        wait_ready(ep, first, last)
        assert nats_server.proc is not None
        nats_server.proc.kill()
        nats_server.proc.wait(10)
        for _ in range(500):  # bounded: 10 s
            if http_get(ep.web_port, "/readyz")[0] != 200:
                break
            time.sleep(0.02)
        assert http_get(ep.web_port, "/readyz")[0] != 200

        async def gone() -> list[Outcome]:
            client = Client(version, ep.grpc_port)
            try:
                return await client.steady("gone", 20, 0.01, 10.0)
            finally:
                await client.channel.close()

        outcomes = asyncio.run(asyncio.wait_for(gone(), 30))
        assert [(rid, code) for rid, code, _ in outcomes if code != UNAVAILABLE] == []

        nats_server.proc = None
        nats_server.start()

        async def back() -> Outcome:
            client = Client(version, ep.grpc_port)
            try:
                for attempt in range(120):  # bounded: about 30 s
                    out = await client.call(f"back{attempt}", 5.0)
                    if out[1] == OK:
                        return out
                    await asyncio.sleep(0.25)
                raise AssertionError(f"no recovery after NATS came back: {client.done[-3:]}")
            finally:
                await client.channel.close()

        asyncio.run(asyncio.wait_for(back(), 60))
        _settled(tmp_path, 3.0)
    finally:
        version.close()
    handled = _handled(tmp_path, "first") + _handled(tmp_path, "last")
    assert sorted(rid for rid in handled if rid.startswith("gone")) == []


def test_sigterm_of_the_entrypoint_under_load_finishes_what_it_took_and_cancels_nothing(
        tmp_path: Path, nats_server: NatsServer) -> None:
    """32 clients call one after another when the entrypoint gets SIGTERM, and go on calling
    for a second after it; the calls of 8 of them take 0.3 s at the last node."""
    version = _version(tmp_path, nats_server.url)
    try:
        ep, first, last = version.entrypoint(), version.node("first"), version.node("last")
        wait_ready(ep, first, last)

        async def scenario() -> list[Outcome]:
            client = Client(version, ep.grpc_port)
            try:
                assert (await client.call("warm", 10))[1] == OK
                until = asyncio.Event()
                load = [asyncio.ensure_future(
                    client.closed_loop(f"w{w}", until, 0.3 if w < 8 else 0.0))
                        for w in range(32)]
                await asyncio.sleep(1.5)
                ep.popen.send_signal(signal.SIGTERM)
                await asyncio.sleep(1.0)
                until.set()
                await asyncio.gather(*load)
                return client.done
            finally:
                await client.channel.close()

        outcomes = asyncio.run(asyncio.wait_for(scenario(), 60))
        code = ep.wait_exit(30)
        _settled(tmp_path, 3.0)
    finally:
        version.close()

    assert code == 0, ep.text()
    codes = _by_code(outcomes)
    assert set(codes) <= {OK, UNAVAILABLE}, {c: sorted(ids)[:3] for c, ids in codes.items()}
    handled = _handled(tmp_path, "first")
    # every call the entrypoint took (it reached the first node) was finished
    assert sorted(rid for rid in handled if rid not in codes[OK]) == []
    assert sorted(rid for rid in codes[UNAVAILABLE] if handled[rid]) == []
    # calls were in flight at the signal, and calls came after it
    shutting_down = [d for _, c, d in outcomes if d == "the entrypoint is shutting down"]
    assert len(codes[OK]) > 32 and shutting_down, {c: len(ids) for c, ids in codes.items()}
