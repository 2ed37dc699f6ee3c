"""Run a version's entrypoint and nodes in this process, on the in-memory transport.

The processes are the real ones (`runner.entrypoint.Entrypoint`, `runner.node.NodeProcess`,
started with `start()` and stopped with `stop()`), with a real gRPC server on a loopback
port; only the broker is `runner.transport.memory.MemoryBroker`. Every proto is written as
`proto/logic.proto`, so tests share one generated `logic_pb2`: keep PROTO the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from runner import contract, node
from runner.entrypoint import Entrypoint
from runner.entrypoint import prepare as prepare_entrypoint
from runner.proto import CompiledProto, compile_proto
from runner.transport.memory import MemoryBroker, MemoryTransport

PROTO = """\
syntax = "proto3";
package logic;
message Req { string text = 1; double sleep = 2; int32 grow = 3; }
message Resp { string text = 1; string seen = 2; bytes blob = 3; }
service Logic { rpc Run (Req) returns (Resp); }
"""


@dataclass
class MemoryRun:
    root: Path
    env: contract.RunnerEnv
    broker: MemoryBroker
    compiled: CompiledProto
    entrypoint: Entrypoint | None = None
    nodes: dict[str, list[node.NodeProcess]] = field(default_factory=dict)
    channel: grpc.aio.Channel | None = None
    # each process's runner.tracing.Tracing, made from its environment (None: from the
    # environment, as a real process)
    tracing_for: Callable[[contract.RunnerEnv], Any] | None = None

    def _tracing(self, env: contract.RunnerEnv) -> Any:
        return self.tracing_for(env) if self.tracing_for is not None else None

    async def start_entrypoint(self, transport: MemoryTransport | None = None) -> Entrypoint:
        ep = prepare_entrypoint(self.env, transport or MemoryTransport(self.broker, self.env),
                                self._tracing(self.env))
        await ep.start()
        self.entrypoint = ep
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{ep.grpc_port}")
        return ep

    async def start_node(self, name: str) -> node.NodeProcess:
        env = replace(self.env, node=name, handler=f"src/{name}.py")
        proc = node.prepare(env, MemoryTransport(self.broker, env), self._tracing(env))
        await proc.start()
        self.nodes.setdefault(name, []).append(proc)
        return proc

    async def nodes_taking_work(self) -> None:
        """Have the entrypoint see the nodes' consumers now, rather than at its next poll."""
        assert self.entrypoint is not None
        await self.entrypoint.nodes.poll()

    def request(self, **fields: Any) -> Any:
        return self.compiled.message_class("logic.Req")(**fields)

    async def call(self, deadline: float = 5.0, **fields: Any) -> Any:
        raw = await self.call_raw(self.request(**fields).SerializeToString(), deadline)
        return self.compiled.message_class("logic.Resp").FromString(raw)

    async def call_raw(self, payload: bytes, deadline: float = 5.0) -> bytes:
        assert self.channel is not None
        stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(
            "/logic.Logic/Run")
        return await stub(payload, timeout=deadline)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        for procs in self.nodes.values():
            for p in procs:
                await p.stop(1.0)
        if self.entrypoint is not None:
            await self.entrypoint.stop(0.5)


@contextlib.asynccontextmanager
async def memory_run(root: Path, nodes: dict[str, str], chain: list[str] | None = None,
                     replicas: dict[str, int] | None = None, start: bool = True,
                     broker: MemoryBroker | None = None,
                     tracing_for: Callable[[contract.RunnerEnv], Any] | None = None,
                     delivery: str = contract.DEFAULT_DELIVERY,
                     **env: Any) -> AsyncIterator[MemoryRun]:
    """A version with `nodes` (name -> source) in one workflow `chain` (default: their order),
    whose hops travel as `delivery` says (contract.DELIVERY_MODES)."""
    vdir = root / "version"
    (vdir / "proto").mkdir(parents=True, exist_ok=True)
    (vdir / "proto" / "logic.proto").write_text(PROTO)
    (vdir / "src").mkdir(exist_ok=True)
    for name, code in nodes.items():
        (vdir / "src" / f"{name}.py").write_text(textwrap.dedent(code))
    renv = contract.RunnerEnv(
        project="logic", version="v1", version_dir=str(vdir), proto="proto/logic.proto",
        workflows=(contract.Workflow("wf", "Run", tuple(chain or nodes), delivery),),
        nats_url="memory://", storage="memory", grpc_port=0, web_port=0,
        bind_host="127.0.0.1", config_dir=str(root / "config"), **env)
    saved_path = list(sys.path)
    run = MemoryRun(root, renv, broker or MemoryBroker(),
                    compile_proto(vdir, "proto/logic.proto"), tracing_for=tracing_for)
    try:
        if start:
            await run.start_entrypoint()
            for name in nodes:
                for _ in range((replicas or {}).get(name, 1)):
                    await run.start_node(name)
            await run.nodes_taking_work()
        yield run
    finally:
        await run.close()
        sys.path[:] = saved_path


# --- for the tests that use it -----------------------------------------------------------


def run(scenario: Callable[[], Awaitable[None]], limit: float = 30) -> None:
    asyncio.run(asyncio.wait_for(scenario(), limit))


async def failure(r: MemoryRun, deadline: float = 5.0, **fields: object
                  ) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await r.call(deadline=deadline, **fields)
    return failed.value.code(), failed.value.details() or ""


async def until(check: Callable[[], bool], limit: float = 5.0) -> None:
    for _ in range(int(limit / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")
