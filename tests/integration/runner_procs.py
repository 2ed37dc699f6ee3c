"""Start real runner processes (`python -m runner node|entrypoint`) for integration tests.

Processes get the contract environment, port 0 (they report the bound ports in their
ready line) and log to a file under the test's tmp dir; `wait_ready` polls that file.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import nats

from runner import contract

ROOT = Path(__file__).resolve().parents[2]
EP_READY = re.compile(r"entrypoint ready: grpc (\S+):(\d+), web (\S+):(\d+)")
NODE_READY = re.compile(r"node (\S+) ready \(web :(\d+)\)")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    grpc_port: int = 0
    web_port: int = 0

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_line(self, pattern: re.Pattern[str], timeout: float = 20.0) -> re.Match[str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = pattern.search(self.text())
            if m:
                return m
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n"
                                     f"{self.text()}")
            time.sleep(0.02)
        raise AssertionError(f"{self.name}: no {pattern.pattern!r} within {timeout}s:\n"
                             f"{self.text()}")

    def wait_exit(self, timeout: float = 20.0) -> int:
        return self.popen.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


@dataclass
class Version:
    """A version written into a temporary directory, with its contract environment."""

    dir: Path
    env: contract.RunnerEnv
    logs: Path
    procs: list[Proc] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    def spawn(self, role: str, node: str | None = None, handler: str | None = None,
              extra: dict[str, str] | None = None) -> Proc:
        env = replace(self.env, node=node, handler=handler, grpc_port=0, web_port=0)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("KAI_")}
        environ.update(env.to_environ())
        environ.update(self.extra_env)
        environ.update(extra or {})
        environ[contract.ENV_BIND_HOST] = "127.0.0.1"
        environ["PYTHONPATH"] = str(ROOT)
        environ["PYTHONUNBUFFERED"] = "1"
        name = node or role
        log = self.logs / f"{name}-{len(self.procs)}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "runner", role], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=environ, cwd=str(self.dir))
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def entrypoint(self, extra: dict[str, str] | None = None) -> Proc:
        return self.spawn(contract.ROLE_ENTRYPOINT, extra=extra)

    def node(self, name: str, extra: dict[str, str] | None = None) -> Proc:
        return self.spawn(contract.ROLE_NODE, node=name, handler=f"src/{name}/main.py",
                          extra=extra)

    def close(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.kill()
        for p in self.procs:
            try:
                p.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass


def wait_ready(*procs: Proc, timeout: float = 30.0) -> None:
    for p in procs:
        if p.name == contract.ROLE_ENTRYPOINT:
            m = p.wait_line(EP_READY, timeout)
            p.grpc_port, p.web_port = int(m[2]), int(m[4])
        else:
            m = p.wait_line(NODE_READY, timeout)
            p.web_port = int(m[2])


def wait_taking_work(ep: Proc, timeout: float = 15.0) -> None:
    """Wait until the entrypoint's /readyz is 200: every node takes work (its ready line
    comes earlier, once it serves)."""
    end = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        status, body = http_get(ep.web_port, "/readyz")
        if status == 200:
            return
        if time.monotonic() > end or ep.popen.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"the entrypoint was not ready within {timeout}s ({status} "
                         f"{body.strip()}):\n{ep.text()}")


def write_version(root: Path, nats_url: str, proto: str, nodes: dict[str, str],
                  workflows: list[contract.Workflow], project: str = "test",
                  version: str = "v1", storage: str = "memory", **env: object) -> Version:
    """Write `proto` as proto/api.proto and each node's code as src/<node>/main.py."""
    vdir = root / "version"
    (vdir / "proto").mkdir(parents=True, exist_ok=True)
    (vdir / "proto" / "api.proto").write_text(proto)
    for name, code in nodes.items():
        (vdir / "src" / name).mkdir(parents=True, exist_ok=True)
        (vdir / "src" / name / "main.py").write_text(code)
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    renv = contract.RunnerEnv(
        project=project, version=version, version_dir=str(vdir), proto="proto/api.proto",
        workflows=tuple(workflows), nats_url=nats_url, storage=storage,
        config_dir=str(root / "config"), **env)  # type: ignore[arg-type]
    return Version(vdir, renv, logs)


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


# --- a chain whose nodes record what they handle ---------------------------------------

TRACE_PACKAGE = "trace"
TRACE_PROTO = f"""
syntax = "proto3";
package {TRACE_PACKAGE};
message Req {{ string id = 1; double sleep = 2; }}
message Resp {{ string id = 1; string request_id = 2; }}
service Chain {{ rpc Run (Req) returns (Resp); }}
"""
TRACE_RPC = f"/{TRACE_PACKAGE}.Chain/Run"

# Each node appends "<pid> <id> <request id>" to <LOG_DIR>/<node>.log when it handles one;
# "middle" and "last" sleep `sleep` seconds; "last" answers with the id and the request id.
TRACE_NODE = '''
import asyncio
import os

from api_pb2 import Req, Resp


async def handler(ctx, data: Req):
    with open(os.path.join(os.environ["LOG_DIR"], ctx.node + ".log"), "a") as f:
        f.write(f"{os.getpid()} {data.id} {ctx.request_id}\\n")
    if data.sleep and ctx.node in ("last", "middle"):
        await asyncio.sleep(data.sleep)
    if ctx.node == "last":
        return Resp(id=data.id, request_id=ctx.request_id)
    return data
'''


def trace_version(root: Path, nats_url: str, chain: tuple[str, ...], project: str,
                  delivery: str = contract.DEFAULT_DELIVERY, **env: object) -> Version:
    """A version of one workflow `run` (rpc Run) through `chain`, of TRACE_NODE nodes that
    log into `root`, whose hops travel as `delivery` says."""
    version = write_version(root, nats_url, TRACE_PROTO, {name: TRACE_NODE for name in chain},
                            [contract.Workflow("run", "Run", chain, delivery)], project=project,
                            **env)  # type: ignore[arg-type]
    version.extra_env = {"LOG_DIR": str(root)}
    return version


def traced(root: Path, node: str) -> list[tuple[int, str, str]]:
    """What `node` of a trace_version handled: (pid, id, request id), in order."""
    path = root / f"{node}.log"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        pid, rid, request_id = line.split()
        out.append((int(pid), rid, request_id))
    return out


async def consumer_waiting(url: str, stream: str, consumer: str) -> int:
    """How many pull requests wait on a durable consumer: a replica of its node pulling."""
    nc = await nats.connect(url, connect_timeout=5)
    try:
        info = await nc.jsm(timeout=5).consumer_info(stream, consumer)
        return info.num_waiting or 0
    finally:
        await nc.close()
