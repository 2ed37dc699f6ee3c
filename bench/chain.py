"""The chain benchmark: a gRPC call through the real entrypoint and N nodes, against its floors.

    python -m bench.chain [--quick] [--nodes 3,10] [--payloads 100,102400]
                          [--concurrency 1,32] [--seconds 5] [--warmup 1] [--requests N]
                          [--json bench/results/chain.json] [--plot bench/results/chain.png]

What one run does, all on loopback:

1. starts its own nats-server (JetStream, file storage in a temporary directory);
2. floors: a bare grpc.aio echo server (bench.floors grpc-echo), and for each chain
   length N a bare nats-py chain of N hop processes (bench.floors nats-hop) driven
   by core NATS request/reply; the floors run on the same event loop as the runner
   processes (uvloop when importable; --asyncio-floors for asyncio's default loop), and
   the loop each side actually ran on is read from its processes and recorded;
   and the JetStream floor of each N: our message pattern without our code (bench.floors
   js-front + N js-hop: a gRPC front, a work-queue stream, N durable pull consumers that
   publish, wait for the PubAck and ack), driven through gRPC like ours;
3. ours: for each N, writes a generated version (kaibench.proto with rpc Echo(Payload)
   returns (Payload), N pass-through nodes in the KRE 1.23 style) to a temporary
   directory and starts `python -m runner entrypoint` plus one `python -m runner node`
   per node with the environment of runner.contract, as the plan gives it;
4. drives every target with the same client (bench.loadgen, a separate process) for each
   payload size and concurrency: a warm-up, then a measured phase;
5. reads the peak RSS (VmHWM) of every runner process before stopping it;
6. prints a table with each of our figures as a ratio to its floor, writes JSON and,
   when matplotlib is installed, a PNG of latency against chain length and concurrency;
7. the large cells (--large, 1 MiB and 8 MiB; 1 MiB once in --quick): the 3-node chain on
   a second nats-server with NATS's default max payload (1 MiB), so each payload travels
   through the version's claim bucket (runner.transport), against the same floors with the
   payload in one message (the first server takes messages up to 16 MiB), and against the
   same chain with the smallest payload, measured in the same run of it;
8. the at-most-once cells (--at-most-once-nodes, 3 by default): the same chain with
   `delivery: at-most-once` (core NATS request/reply with queue groups, no JetStream), against
   the same floors, printed as `kai (at-most-once)` beside the at-least-once rows;
   the traced cells (--traced-nodes, 3 by default): the same chain with OpenTelemetry
   tracing on (every span made and written, to /dev/null: KAI_TRACES_FILE), printed as
   `kai (traced)`, and "tracing" under the table compares each cell with the untraced one;
9. the peers (bench.peers, the `[bench-peers]` extra): Ray Serve, the same pass-through
   chain as deployments composed with handles behind its gRPC proxy, skipped with one line
   when not installed; and `kai dev`'s cold start to its first answer (bench.devstart).

The floor of an N-node chain is "composed": the grpc.aio echo (client → server) plus the
N-hop NATS chain. Latency floors add; throughput floors combine as 1/(1/a + 1/b), since
on a 2-core machine the CPU one request costs in each part adds up.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import variants
from bench.procs import Child, ProcessGroup, proc_status_kb, sigterm_as_interrupt, wait_for_line
from bench.targets import payload_size
from bench.targets import target as _target
from bench.variants import Variant

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
METHOD = "/kaibench.Bench/Echo"
PROJECT = "kaibench"

PROTO = """syntax = "proto3";

package kaibench;

// The chain benchmark's contract: one bytes payload, passed through every node.
message Payload {
  bytes data = 1;
}

service Bench {
  rpc Echo (Payload) returns (Payload);
}
"""

NODE_ANY = '''"""A pass-through node in the KRE 1.23 style: data is an Any, unpacked by hand."""

from kaibench_pb2 import Payload


async def handler(ctx, data):
    msg = Payload()
    data.Unpack(msg)
    return msg
'''

NODE_TYPED = '''"""A pass-through node with a typed handler: the runner unpacks the message."""

from kaibench_pb2 import Payload


async def handler(ctx, data: Payload) -> Payload:
    return data
'''

# The overhead targets (milliseconds, requests per second, megabytes).
TARGET_P50_MS = 3.0
TARGET_P99_MS = 10.0
TARGET_RPS = 800.0
TARGET_PER_NODE_MS = 0.6
TARGET_RSS_MB = 80.0
AT_MOST_ONCE_SYSTEM = "kai-at-most-once"  # the chain with `delivery: at-most-once`
TRACED_SYSTEM = "kai-traced"  # the chain with tracing on (spans made, written to /dev/null)


@dataclass
class Settings:
    nodes: list[int] = field(default_factory=lambda: [3, 10])
    payloads: list[int] = field(default_factory=lambda: [100, 100 * 1024])
    concurrency: list[int] = field(default_factory=lambda: [1, 32])
    warmup: float = 1.0
    seconds: float = 5.0
    requests: int = 0
    timeout: float = 10.0
    storage: str = "file"
    handler: str = "any"
    floors: bool = True
    ours: bool = True
    # The floors run on the event loop the runner processes use (runner/__main__.py:
    # uvloop when importable), so the ratios compare like with like; --asyncio-floors
    # puts them on asyncio's default loop instead.
    uvloop_floors: bool = True
    startup_timeout: float = 90.0
    quick: bool = False
    # the large cells: payloads over NATS's default max payload, through the claim bucket
    large: list[int] = field(default_factory=lambda: [1024 * 1024, 8 * 1024 * 1024])
    large_nodes: int = 3
    large_concurrency: list[int] = field(default_factory=lambda: [1, 4])
    # the chain lengths also measured with `delivery: at-most-once` (core NATS, no JetStream)
    at_most_once_nodes: list[int] = field(default_factory=lambda: [3])
    # the chain lengths also measured with tracing on (runner.tracing, spans to /dev/null)
    traced_nodes: list[int] = field(default_factory=lambda: [3])
    pythonpath: str = ""  # prepended for the runner processes only (to try a patched runner)
    peers: bool = True  # Ray Serve beside ours (bench.peers), when installed
    peer_python: str = ""  # the Python that runs the peers ("": this one)
    rounds: int = 1  # the floors and ours, interleaved this many times (medians reported)
    dev_starts: int = 3  # times `kai dev` is started cold to its first answer (0: never)
    variants: list[Variant] = field(default_factory=list)  # A/B beside ours (bench.variants)

    @property
    def cells(self) -> list[tuple[int, int]]:
        return [(p, c) for p in self.payloads for c in self.concurrency]

    @property
    def large_cells(self) -> list[tuple[int, int]]:
        return [(p, c) for p in self.large for c in self.large_concurrency]

    @property
    def claims_small_cells(self) -> list[tuple[int, int]]:
        """The claims chain's own small-payload cells: the same chain, payloads inline."""
        return [(min(self.payloads), c) for c in self.large_concurrency]


# --- helpers ---------------------------------------------------------------------------


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def free_port() -> int:
    from runner.natsserver import free_port as _free_port

    return _free_port()


def run_loadgen(
    group: ProcessGroup, name: str, kind: str, target: list[str], s: Settings,
    cells: list[tuple[int, int]] | None = None, prefix: Sequence[str] = (),
) -> dict[str, Any]:
    """Run bench.loadgen against one target for every cell (`s.cells` unless given);
    `prefix` goes before its command (to enter a peer's network namespace)."""
    cells = s.cells if cells is None else cells
    argv = [
        *prefix,
        sys.executable,
        "-m",
        "bench.loadgen",
        kind,
        *target,
        "--cells",
        json.dumps(cells),
        "--warmup",
        str(s.warmup),
        "--seconds",
        str(s.seconds),
        "--requests",
        str(s.requests),
        "--timeout",
        str(s.timeout),
    ]
    child = group.spawn(name, argv, role="client", env=child_env(), cwd=ROOT, stdout_pipe=True)
    budget = len(cells) * (s.warmup + s.seconds + s.timeout) + 60
    line = wait_for_line(child, b"RESULT ", budget)
    group.stop(child)
    result: dict[str, Any] = json.loads(line.split(b"RESULT ", 1)[1])
    return result


def cpu_summary(
    load: dict[str, Any], processes: list[dict[str, Any]], others: dict[str, float | None]
) -> dict[str, Any]:
    """CPU milliseconds per answered request (warm-up included, all cells mixed), by part."""
    answered = sum(c["requests"] + c.get("warmup_requests", 0) for c in load["cells"])
    if not answered:
        return {"answered": 0}

    def per(x: float | None) -> float | None:
        return None if x is None else round(x * 1000 / answered, 4)

    servers = sum(p["cpu_s"] or 0.0 for p in processes)
    out: dict[str, Any] = {
        "answered": answered,
        "servers_ms_per_request": per(servers),
        "client_ms_per_request": per(load.get("client_cpu_s")),
    }
    for name, value in others.items():
        out[f"{name}_ms_per_request"] = per(value)
    out["by_process_ms_per_request"] = {p["name"]: per(p["cpu_s"]) for p in processes}
    return out


def drive(group: ProcessGroup, client: str, kind: str, target: list[str], s: Settings,
          cells: list[tuple[int, int]] | None, children: list[Child], roles: dict[str, str],
          others: dict[str, int] | None = None,
          ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Drive serving `children` with the load client (`run_loadgen`), their RSS and CPU (and
    that of `others`, e.g. nats-server) sampled meanwhile: (the load's result, the processes'
    report, CPU per request)."""
    with RssSampler({c.name: c.pid for c in children}, others=others) as rss:
        load = run_loadgen(group, client, kind, target, s, cells)
    processes = rss.report(roles)
    return load, processes, cpu_summary(load, processes, rss.others_cpu())


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (/proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, ValueError, IndexError):
        return None


def event_loop(pid: int) -> str | None:
    """The event loop a running process serves on: "uvloop" when uvloop's extension is
    mapped into it, else "asyncio"; None when /proc/<pid>/maps cannot be read.

    The runner (runner/__main__.py) and the floors (bench/floors.py) import uvloop only
    to run on it, so having it loaded is having it as the loop.
    """
    try:
        with open(f"/proc/{pid}/maps", encoding="ascii", errors="replace") as f:
            maps = f.read()
    except OSError:
        return None
    return "uvloop" if "/uvloop/loop." in maps else "asyncio"


def loop_of(processes: list[dict[str, Any]]) -> str | None:
    """One name for the loops of a run's processes ("mixed" when they differ)."""
    loops = {p.get("loop") for p in processes}
    if not loops or None in loops:
        return None
    return loops.pop() if len(loops) == 1 else "mixed"


class RssSampler:
    """Samples VmRSS of a set of pids in a thread; VmHWM (the kernel's peak) is read at the end.

    It also takes the CPU time each pid (and each of `others`, e.g. nats-server) used
    between entering and `report()`: the CPU cost of a run, process by process.
    """

    def __init__(
        self, pids: dict[str, int], interval: float = 0.25, others: dict[str, int] | None = None
    ) -> None:
        self.pids = pids
        self.others = others or {}
        self.interval = interval
        self.max_rss_kb: dict[str, int] = dict.fromkeys(pids, 0)
        self.cpu_start: dict[str, float | None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for name, pid in self.pids.items():
                kb = proc_status_kb(pid, "VmRSS")
                if kb is not None and kb > self.max_rss_kb[name]:
                    self.max_rss_kb[name] = kb

    def __enter__(self) -> RssSampler:
        for name, pid in {**self.pids, **self.others}.items():
            self.cpu_start[name] = cpu_seconds(pid)
        self._thread.start()
        return self

    def cpu_used(self, name: str, pid: int) -> float | None:
        start, now = self.cpu_start.get(name), cpu_seconds(pid)
        return None if start is None or now is None else round(now - start, 3)

    def others_cpu(self) -> dict[str, float | None]:
        return {name: self.cpu_used(name, pid) for name, pid in self.others.items()}

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def report(self, roles: dict[str, str]) -> list[dict[str, Any]]:
        out = []
        for name, pid in self.pids.items():
            hwm = proc_status_kb(pid, "VmHWM")
            peak = max(hwm or 0, self.max_rss_kb[name])
            out.append(
                {
                    "name": name,
                    "role": roles.get(name, ""),
                    "pid": pid,
                    "peak_rss_mb": round(peak / 1024, 1),
                    "sampled_max_rss_mb": round(self.max_rss_kb[name] / 1024, 1),
                    "cpu_s": self.cpu_used(name, pid),
                    "loop": event_loop(pid),
                }
            )
        return out


# --- the floors --------------------------------------------------------------------------


def floor_argv(s: Settings, *args: str) -> list[str]:
    return [sys.executable, "-m", "bench.floors", *(["--uvloop"] if s.uvloop_floors else []), *args]


def measure_grpc_floor(group: ProcessGroup, s: Settings,
                       cells: list[tuple[int, int]] | None = None,
                       system: str = "floor-grpc") -> dict[str, Any]:
    port = free_port()
    server = group.spawn(
        "floor-grpc-echo",
        floor_argv(s, "grpc-echo", "--port", str(port), "--method", METHOD),
        role="floor",
        env=child_env(),
        cwd=ROOT,
        stdout_pipe=True,
    )
    wait_for_line(server, b"READY", s.startup_timeout)
    load, processes, cpu = drive(group, f"client-{system}", "grpc",
                                 ["--address", f"127.0.0.1:{port}", "--method", METHOD], s,
                                 cells, [server], {server.name: "floor"})
    group.stop(server)
    return {
        "system": system,
        "nodes": 0,
        "loop": loop_of(processes),
        "client_loop": load.get("loop"),
        "cells": load["cells"],
        "processes": processes,
        "cpu": cpu,
    }


def measure_nats_floor(
    group: ProcessGroup, nats_url: str, n: int, s: Settings, others: dict[str, int],
    cells: list[tuple[int, int]] | None = None, system: str = "floor-nats",
) -> dict[str, Any]:
    hops: list[Child] = []
    for i in range(n):
        subject = f"floor{n}.s{i}"
        end = ["--last"] if i == n - 1 else ["--next", f"floor{n}.s{i + 1}"]
        hops.append(
            group.spawn(
                f"floor-nats{n}-hop{i}",
                floor_argv(s, "nats-hop", "--url", nats_url, "--subject", subject, *end),
                role="floor",
                env=child_env(),
                cwd=ROOT,
                stdout_pipe=True,
            )
        )
    for hop in hops:
        wait_for_line(hop, b"READY", s.startup_timeout)
    load, processes, cpu = drive(group, f"client-{system}{n}", "nats",
                                 ["--url", nats_url, "--subject", f"floor{n}.s0"], s, cells,
                                 hops, {h.name: "floor" for h in hops}, others)
    for hop in hops:
        group.stop(hop)
    return {
        "system": system,
        "nodes": n,
        "loop": loop_of(processes),
        "client_loop": load.get("loop"),
        "cells": load["cells"],
        "processes": processes,
        "cpu": cpu,
    }


def measure_js_floor(
    group: ProcessGroup, nats_url: str, n: int, s: Settings, others: dict[str, int],
    cells: list[tuple[int, int]] | None = None, system: str = "floor-js",
) -> dict[str, Any]:
    """The JetStream floor of an N-node chain: a gRPC front and N pull-consumer hops, with the
    stream and consumer settings of runner.contract and runner.transport (bench.floors)."""
    from runner import contract
    from runner.transport.base import WORK_MAX_AGE

    prefix = f"{system}.n{n}"
    port = free_port()
    front = group.spawn(
        f"{system}{n}-front",
        floor_argv(s, "js-front", "--port", str(port), "--method", METHOD, "--url", nats_url,
                   "--stream", f"{system}-n{n}".upper(), "--subjects", f"{prefix}.>",
                   "--first", f"{prefix}.s0", "--storage", s.storage,
                   "--duplicate-window", str(contract.DUPLICATE_WINDOW),
                   "--max-age", str(WORK_MAX_AGE)),
        role="floor", env=child_env(), cwd=ROOT, stdout_pipe=True,
    )  # fmt: skip
    wait_for_line(front, b"READY", s.startup_timeout)  # the stream exists
    hops: list[Child] = []
    for i in range(n):
        end = ["--last"] if i == n - 1 else ["--next", f"{prefix}.s{i + 1}"]
        hops.append(group.spawn(
            f"{system}{n}-hop{i}",
            floor_argv(s, "js-hop", "--url", nats_url, "--stream", f"{system}-n{n}".upper(),
                       "--consumer", f"s{i}", "--subject", f"{prefix}.s{i}", "--step", str(i),
                       "--ack-wait", str(contract.DEFAULT_ACK_WAIT),
                       "--max-deliver", str(contract.DEFAULT_MAX_DELIVER),
                       "--max-inflight", str(contract.DEFAULT_CONCURRENCY), *end),
            role="floor", env=child_env(), cwd=ROOT, stdout_pipe=True,
        ))  # fmt: skip
    for hop in hops:
        wait_for_line(hop, b"READY", s.startup_timeout)
    children = [front, *hops]
    address = f"127.0.0.1:{port}"
    startup = wait_ready(group, children, address, s.startup_timeout)
    load, processes, cpu = drive(group, f"client-{system}{n}", "grpc",
                                 ["--address", address, "--method", METHOD], s, cells,
                                 children, {c.name: "floor" for c in children}, others)
    for c in children:
        group.stop(c)
    return {
        "system": system,
        "nodes": n,
        "storage": s.storage,
        "loop": loop_of(processes),
        "client_loop": load.get("loop"),
        "startup_seconds": round(startup, 2),
        "cells": load["cells"],
        "processes": processes,
        "cpu": cpu,
    }


# --- ours ----------------------------------------------------------------------------------


def write_version(root: Path, n: int, style: str, delivery: str = "at-least-once",
                  ) -> tuple[str, Path, tuple[str, ...]]:
    """Write a version with `n` pass-through nodes; return (name, directory, node names)."""
    at_most_once = delivery == "at-most-once"
    name = f"kaibench-n{n}" + ("-amo" if at_most_once else "")
    vdir = root / name
    nodes = tuple(f"node-{i + 1}" for i in range(n))
    (vdir / "src").mkdir(parents=True, exist_ok=True)
    (vdir / "kaibench.proto").write_text(PROTO)
    code = NODE_TYPED if style == "typed" else NODE_ANY
    lines = [
        f"version: {name}",
        f"description: Chain benchmark with {n} pass-through nodes.",
        "entrypoint:",
        "  proto: kaibench.proto",
        "  image: konstellation/kre-entrypoint:1.6.0",
        "nodes:",
    ]
    for node in nodes:
        (vdir / "src" / node).mkdir(exist_ok=True)
        (vdir / "src" / node / "main.py").write_text(code)
        lines += [
            f"  - name: {node}",
            "    image: konstellation/kre-py:1.23.0",
            f"    src: src/{node}/main.py",
        ]
    lines += [
        "workflows:",
        "  - name: echo",
        "    entrypoint: Echo",
        f"    sequential: [{', '.join(nodes)}]",
        *([f"    delivery: {delivery}"] if at_most_once else []),
    ]
    (vdir / "krt.yml").write_text("\n".join(lines) + "\n")
    return name, vdir, nodes


def runner_envs(
    version: str, vdir: Path, nodes: tuple[str, ...], nats_url: str, s: Settings, grpc_port: int,
    delivery: str = "at-least-once",
) -> dict[str, tuple[str, dict[str, str]]]:
    """name -> (role, environment) of every runner process, from runner.contract."""
    from runner import contract

    base = contract.RunnerEnv(
        project=PROJECT,
        version=version,
        version_dir=str(vdir),
        proto="kaibench.proto",
        workflows=(contract.Workflow("echo", "Echo", nodes, delivery),),
        nats_url=nats_url,
        config_dir=str(vdir / "config"),
        grpc_port=grpc_port,
        web_port=free_port(),
        storage=s.storage,
        log_level="WARNING",
    )
    out = {f"{version}-entrypoint": (contract.ROLE_ENTRYPOINT, base.to_environ())}
    for node in nodes:
        env = contract.RunnerEnv(
            **{
                **asdict(base),
                "workflows": base.workflows,
                "node": node,
                "handler": f"src/{node}/main.py",
                "web_port": free_port(),
            }
        )
        out[f"{version}-{node}"] = (contract.ROLE_NODE, env.to_environ())
    return out


def wait_ready(group: ProcessGroup, children: list[Child], address: str, timeout: float,
               prefix: Sequence[str] = ()) -> float:
    """Wait until an Echo call through the whole chain succeeds; return the seconds it took.

    The calls come from a probe process (bench.loadgen probe): this process never starts
    gRPC threads of its own, since it forks the other processes.
    """
    start = time.monotonic()
    argv = [*prefix, sys.executable, "-m", "bench.loadgen", "probe", "--address", address,
            "--method", METHOD, "--seconds", str(timeout)]  # fmt: skip
    probe = group.spawn("probe", argv, role="client", env=child_env(), cwd=ROOT, stdout_pipe=True)
    try:
        while True:
            for c in children:
                if not c.alive():
                    raise RuntimeError(
                        f"{c.name} exited with code {c.proc.returncode} during start-up:\n"
                        + c.log_tail()
                    )
            try:
                wait_for_line(probe, b"READY", 0.5)
                return time.monotonic() - start
            except RuntimeError:
                if probe.alive() and time.monotonic() - start < timeout + 5:
                    continue
                tails = "\n".join(f"--- {c.name}\n{c.log_tail(10)}" for c in children)
                raise RuntimeError(
                    f"the chain did not answer within {timeout:.0f}s:\n{tails}"
                ) from None
    finally:
        group.stop(probe)


def measure_ours(
    group: ProcessGroup, workdir: Path, nats_url: str, n: int, s: Settings, others: dict[str, int],
    cells: list[tuple[int, int]] | None = None, system: str = "kai",
    delivery: str = "at-least-once", extra_env: dict[str, str] | None = None,
    variant: Variant | None = None,
) -> dict[str, Any]:
    """Start the version's runner processes, drive every cell and stop them; `variant`
    changes their interpreter, path or environment (an A/B lever, bench.variants)."""
    if variant is not None:
        system = variant.system
        extra_env = {**(extra_env or {}), **dict(variant.env)}
    version, vdir, nodes = write_version(workdir / "versions", n, s.handler, delivery)
    grpc_port = free_port()
    children: list[Child] = []
    roles: dict[str, str] = {}
    envs = runner_envs(version, vdir, nodes, nats_url, s, grpc_port, delivery)
    for name, (role, env) in envs.items():
        argv = [(variant and variant.python) or sys.executable, "-m", "runner", role]
        penv = {**child_env(env), **(extra_env or {})}
        for first in (s.pythonpath, variant.pythonpath if variant else ""):
            if first:
                penv["PYTHONPATH"] = os.pathsep.join([first, penv["PYTHONPATH"]])
        children.append(group.spawn(name, argv, role=role, env=penv, cwd=workdir))
        roles[name] = role
    address = f"127.0.0.1:{grpc_port}"
    startup = wait_ready(group, children, address, s.startup_timeout)
    load, processes, cpu = drive(group, f"client-{system}-n{n}", "grpc",
                                 ["--address", address, "--method", METHOD], s, cells,
                                 children, roles, others)
    for c in children:
        if not c.alive():
            raise RuntimeError(f"{c.name} died during the run:\n{c.log_tail()}")
    for c in children:
        group.stop(c, grace=10.0)
    return {
        "system": system,
        "nodes": n,
        "handler": s.handler,
        "storage": s.storage,
        "delivery": delivery,
        "loop": loop_of(processes),
        "client_loop": load.get("loop"),
        "startup_seconds": round(startup, 2),
        "cells": load["cells"],
        "processes": processes,
        "cpu": cpu,
    }


# --- analysis ----------------------------------------------------------------------------


def _cell(run: dict[str, Any] | None, payload: int, conc: int) -> dict[str, Any] | None:
    if run is None:
        return None
    for c in run["cells"]:
        if c["payload"] == payload and c["concurrency"] == conc:
            return c
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 4)


def composed_floor(grpc_cell: dict[str, Any], nats_cell: dict[str, Any]) -> dict[str, float]:
    out = {k: grpc_cell[k] + nats_cell[k] for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")}
    a, b = grpc_cell["throughput_rps"], nats_cell["throughput_rps"]
    out["throughput_rps"] = 1.0 / (1.0 / a + 1.0 / b) if a > 0 and b > 0 else 0.0
    return {k: round(v, 4) for k, v in out.items()}


def analyse(runs: list[dict[str, Any]], s: Settings) -> dict[str, Any]:
    rows = _rows(runs, s.nodes, s.cells, "kai", "floor-grpc", "floor-nats", "floor-js")
    nats = {r["nodes"]: r for r in runs if r["system"] == "floor-nats"}
    ours = {r["nodes"]: r for r in runs if r["system"] == "kai"}
    large = _rows(runs, [s.large_nodes], s.large_cells, "kai-claims", "floor-grpc-large",
                  "floor-nats-large", "floor-js-large")
    peer_rows = []
    for run in runs:
        if run["system"].startswith("peer-"):
            peer_rows += _rows(runs, [run["nodes"]], s.cells, run["system"], "floor-grpc",
                               "floor-nats", "floor-js")
    at_most_once = _rows(runs, s.at_most_once_nodes, s.cells, AT_MOST_ONCE_SYSTEM,
                         "floor-grpc", "floor-nats", "floor-js")
    traced = _rows(runs, s.traced_nodes, s.cells, TRACED_SYSTEM, "floor-grpc", "floor-nats",
                   "floor-js")
    return {"rows": rows, "large_rows": large, "peer_rows": peer_rows,
            "at_most_once_rows": at_most_once, "traced_rows": traced,
            "tracing": tracing_cost(runs, s),
            "claims": claims_vs_small(runs, s), "per_hop": per_hop(runs, s),
            "ab": variants.compare(runs, s.variants, s.cells),
            "targets": targets(ours, nats, s)}


def _server_cpu(run: dict[str, Any] | None) -> float | None:
    """CPU ms per answered request of a run's processes and its nats-server."""
    cpu = (run or {}).get("cpu") or {}
    if cpu.get("servers_ms_per_request") is None:
        return None
    return float(cpu["servers_ms_per_request"] + (cpu.get("nats_server_ms_per_request") or 0))


def per_hop(runs: list[dict[str, Any]], s: Settings) -> dict[str, Any]:
    """What each added node (or hop) costs, from the shortest to the longest chain: p50 of the
    smallest payload at the lowest concurrency, and CPU per request (all cells mixed); and
    our CPU per request over the JetStream floor's, chain by chain."""
    small, conc = min(s.payloads), min(s.concurrency)
    lo, hi = min(s.nodes), max(s.nodes)
    out: dict[str, Any] = {"from": lo, "to": hi, "payload": small, "concurrency": conc}
    by = {(r["system"], r["nodes"]): r for r in runs}
    for system in ("kai", "floor-js", "floor-nats"):
        a, b = _cell(by.get((system, lo)), small, conc), _cell(by.get((system, hi)), small, conc)
        ca, cb = _server_cpu(by.get((system, lo))), _server_cpu(by.get((system, hi)))
        out[system] = {
            "p50_ms": round((b["p50_ms"] - a["p50_ms"]) / (hi - lo), 4)
            if a and b and hi > lo else None,
            "cpu_ms": round((cb - ca) / (hi - lo), 4)
            if ca is not None and cb is not None and hi > lo else None,
        }
    out["cpu_ratio_to_js"] = {
        str(n): _ratio(_server_cpu(by.get(("kai", n))), _server_cpu(by.get(("floor-js", n))))
        for n in s.nodes
    }
    return out


def tracing_cost(runs: list[dict[str, Any]], s: Settings) -> list[dict[str, Any]]:
    """Each cell of a traced chain beside the same cell untraced (the same chain length):
    the p50 it adds and the throughput it keeps."""
    by = {(r["system"], r["nodes"]): r for r in runs}
    out = []
    for n in s.traced_nodes:
        for payload, conc in s.cells:
            on = _cell(by.get((TRACED_SYSTEM, n)), payload, conc)
            off = _cell(by.get(("kai", n)), payload, conc)
            if not (on and off):
                continue
            out.append({
                "nodes": n, "payload": payload, "concurrency": conc,
                "p50_ms": on["p50_ms"], "untraced_p50_ms": off["p50_ms"],
                "extra_p50_ms": round(on["p50_ms"] - off["p50_ms"], 4),
                "throughput_ratio": _ratio(on["throughput_rps"], off["throughput_rps"]),
            })  # fmt: skip
    return out


def claims_vs_small(runs: list[dict[str, Any]], s: Settings) -> list[dict[str, Any]]:
    """Each large cell (through the claim bucket) beside the same chain's small-payload cell
    at the same concurrency, both from the one run of that chain."""
    run = next((r for r in runs if r["system"] == "kai-claims"), None)
    out = []
    for payload, conc in s.large_cells:
        big, small = _cell(run, payload, conc), _cell(run, min(s.payloads), conc)
        if not (big and small):
            continue
        extra = big["p50_ms"] - small["p50_ms"]
        out.append({
            "nodes": s.large_nodes, "payload": payload, "concurrency": conc,
            "small_payload": small["payload"],
            "p50_ms": big["p50_ms"], "small_p50_ms": small["p50_ms"],
            "p50_ratio": _ratio(big["p50_ms"], small["p50_ms"]),
            "throughput_rps": big["throughput_rps"],
            "small_throughput_rps": small["throughput_rps"],
            "throughput_ratio": _ratio(big["throughput_rps"], small["throughput_rps"]),
            "extra_p50_ms_per_mib": round(extra / (payload / 2**20), 3),
        })  # fmt: skip
    return out


def _rows(runs: list[dict[str, Any]], node_counts: list[int], cells: list[tuple[int, int]],
          kai: str, grpc_system: str, nats_system: str,
          js_system: str) -> list[dict[str, Any]]:
    """The figures of `kai` (ours, or a peer) in each cell beside its composed floor and its
    JetStream floor, and their ratios; a peer's row also has ours of the same cell."""
    grpc_floor = next((r for r in runs if r["system"] == grpc_system), None)
    nats = {r["nodes"]: r for r in runs if r["system"] == nats_system}
    ours = {r["nodes"]: r for r in runs if r["system"] == kai}
    js = {r["nodes"]: r for r in runs if r["system"] == js_system}
    rows = []
    for n in node_counts:
        for payload, conc in cells:
            g, f, o = _cell(grpc_floor, payload, conc), _cell(nats.get(n), payload, conc), None
            o = _cell(ours.get(n), payload, conc)
            j = _cell(js.get(n), payload, conc)
            floor = composed_floor(g, f) if g and f else None
            row: dict[str, Any] = {
                "nodes": n,
                "payload": payload,
                "concurrency": conc,
                "kai": o,
                "floor": floor,
                "js_floor": j,
            }
            if kai != "kai":
                row["system"] = kai
                row["ours"] = _cell(next((r for r in runs if r["system"] == "kai"
                                          and r["nodes"] == n), None), payload, conc)
            if o and j:
                row["ratio_to_js"] = {
                    "p50": _ratio(o["p50_ms"], j["p50_ms"]),
                    "p99": _ratio(o["p99_ms"], j["p99_ms"]),
                    "throughput": _ratio(o["throughput_rps"], j["throughput_rps"]),
                }
            if o and floor:
                row["ratio"] = {
                    "p50": _ratio(o["p50_ms"], floor["p50_ms"]),
                    "p99": _ratio(o["p99_ms"], floor["p99_ms"]),
                    "throughput": _ratio(o["throughput_rps"], floor["throughput_rps"]),
                }
                row["ratio_to_grpc"] = {
                    "p50": _ratio(o["p50_ms"], g["p50_ms"]) if g else None,
                    "throughput": _ratio(o["throughput_rps"], g["throughput_rps"]) if g else None,
                }
                row["ratio_to_nats"] = {
                    "p50": _ratio(o["p50_ms"], f["p50_ms"]) if f else None,
                    "throughput": _ratio(o["throughput_rps"], f["throughput_rps"]) if f else None,
                }
            rows.append(row)
    return rows


def loops_summary(runs: list[dict[str, Any]]) -> dict[str, str | None]:
    """Which event loop each side of the comparison ran on, as observed in its processes."""

    def side(systems: tuple[str, ...], key: str = "loop") -> str | None:
        loops = {r.get(key) for r in runs if r["system"] in systems}
        if not loops:
            return None
        return loops.pop() if len(loops) == 1 else "mixed"

    return {
        "kai": side(("kai",)),
        "floors": side(("floor-grpc", "floor-nats", "floor-js")),
        "client": side(("kai", "floor-grpc", "floor-nats", "floor-js"), "client_loop"),
    }


def targets(
    ours: dict[int, dict[str, Any]], nats: dict[int, dict[str, Any]], s: Settings
) -> list[dict[str, Any]]:
    out = []
    small = min(s.payloads)
    lo, hi = min(s.nodes), max(s.nodes)
    c1 = _cell(ours.get(3), small, 1)
    out.append(
        _target("3 nodes, 100 B, 1 in flight: p50", c1 and c1["p50_ms"], TARGET_P50_MS, "max", "ms")
    )
    out.append(
        _target("3 nodes, 100 B, 1 in flight: p99", c1 and c1["p99_ms"], TARGET_P99_MS, "max", "ms")
    )
    c32 = _cell(ours.get(3), small, max(s.concurrency))
    out.append(
        _target(
            f"3 nodes, 100 B, {max(s.concurrency)} in flight: throughput",
            c32 and c32["throughput_rps"],
            TARGET_RPS,
            "min",
            "req/s",
        )
    )
    per_node = None
    a, b = _cell(ours.get(lo), small, 1), _cell(ours.get(hi), small, 1)
    if a and b and hi > lo:
        per_node = (b["p50_ms"] - a["p50_ms"]) / (hi - lo)
    out.append(
        _target(
            f"each added node (p50, {lo}→{hi} nodes, 100 B, 1 in flight)",
            per_node,
            TARGET_PER_NODE_MS,
            "max",
            "ms",
        )
    )
    fa, fb = _cell(nats.get(lo), small, 1), _cell(nats.get(hi), small, 1)
    if fa and fb and hi > lo:
        out[-1]["floor"] = round((fb["p50_ms"] - fa["p50_ms"]) / (hi - lo), 3)
    peaks = [p["peak_rss_mb"] for r in ours.values() for p in r["processes"]]
    out.append(
        _target(
            "peak RSS of each runner process",
            max(peaks) if peaks else None,
            TARGET_RSS_MB,
            "max",
            "MB",
        )
    )
    return out


# --- output ------------------------------------------------------------------------------


def _fmt(v: float | None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


_size = payload_size


def cell_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """The chain table's rows, its head first: every floor's cells, then ours and the peers'
    with their ratios to the floors."""
    head = (
        "system",
        "nodes",
        "payload",
        "in flight",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "req/s",
        "p50 ×floor",
        "p99 ×floor",
        "req/s ×floor",
        "p50 ×js",
        "req/s ×js",
    )
    lines: list[tuple[str, ...]] = [head]
    def floor_row(label: str, nodes: str, c: dict[str, Any]) -> tuple[str, ...]:
        return (label, nodes, _size(c["payload"]), str(c["concurrency"]), _fmt(c["p50_ms"]),
                _fmt(c["p90_ms"]), _fmt(c["p99_ms"]), _fmt(c["max_ms"]),
                _fmt(c["throughput_rps"], 0), "", "", "", "", "")

    for run in result["runs"]:
        if run["system"] in ("floor-grpc", "floor-grpc-large"):
            lines.extend(floor_row("floor grpc.aio echo", "-", c) for c in run["cells"])
    for run in result["runs"]:
        if run["system"] in ("floor-nats", "floor-nats-large"):
            lines.extend(floor_row("floor nats-py hops", str(run["nodes"]), c)
                         for c in run["cells"])
    for run in result["runs"]:
        if run["system"] in ("floor-js", "floor-js-large"):
            lines.extend(floor_row("floor JetStream", str(run["nodes"]), c)
                         for c in run["cells"])
    analysis = result["analysis"]
    rows = [("kai", r) for r in analysis["rows"]]
    rows += [("kai (claims)", r) for r in analysis.get("large_rows", [])]
    rows += [("kai (at-most-once)", r) for r in analysis.get("at_most_once_rows", [])]
    rows += [("kai (traced)", r) for r in analysis.get("traced_rows", [])]
    rows += [(PEER_LABELS.get(r["system"], r["system"]), r)
             for r in analysis.get("peer_rows", [])]
    for label, row in rows:
        o, r, js = row["kai"], row.get("ratio") or {}, row.get("ratio_to_js") or {}
        if not o:
            continue
        lines.append(
            (
                label,
                str(row["nodes"]),
                _size(row["payload"]),
                str(row["concurrency"]),
                _fmt(o["p50_ms"]),
                _fmt(o["p90_ms"]),
                _fmt(o["p99_ms"]),
                _fmt(o["max_ms"]),
                _fmt(o["throughput_rps"], 0),
                _fmt(r.get("p50"), 1),
                _fmt(r.get("p99"), 1),
                _fmt(r.get("throughput"), 2),
                _fmt(js.get("p50"), 2),
                _fmt(js.get("throughput"), 2),
            )
        )
    return lines


def markdown(rows: list[tuple[str, ...]], bold: tuple[str, ...] = ("kai",)) -> str:
    """Rows (head first) as a Markdown table; the rows whose first cell is in `bold` in bold."""
    out = ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
    for row in rows[1:]:
        cells = [f"**{v}**" if row[0] in bold and v and i in (0, 4, 8) else v
                 for i, v in enumerate(row)]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def table(result: dict[str, Any]) -> str:
    lines = cell_rows(result)
    head = lines[0]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for i, line in enumerate(lines):
        out.append(
            "  ".join(
                v.ljust(w) if j < 4 else v.rjust(w)
                for j, (v, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    errors = [
        (r["system"], r["nodes"], c["payload"], c["concurrency"], c["errors"])
        for r in result["runs"]
        for c in r["cells"]
        if c["errors"]
    ]
    if errors:
        out.append("")
        out.append(
            "errors: " + "; ".join(f"{s} n={n} {_size(p)} c={c}: {e}" for s, n, p, c, e in errors)
        )
    procs = [p for r in result["runs"] for p in r["processes"]]
    if procs:
        out.append("")
        out.append(
            "peak RSS (VmHWM): "
            + ", ".join(f"{p['name']} {p['peak_rss_mb']:.0f} MB" for p in procs)
        )
    cpu_lines = []
    for run in result["runs"]:
        cpu = run.get("cpu") or {}
        if not cpu.get("answered"):
            continue
        label = {"floor-grpc": "floor grpc", "floor-nats": "floor nats", "kai": "kai",
                 "floor-grpc-large": "floor grpc (large)",
                 "floor-nats-large": "floor nats (large)", "kai-claims": "kai (claims)",
                 "floor-js": "floor JetStream", "floor-js-large": "floor JetStream (large)",
                 AT_MOST_ONCE_SYSTEM: "kai (at-most-once)", TRACED_SYSTEM: "kai (traced)",
                 **PEER_LABELS}.get(run["system"], run["system"])
        parts = [f"servers {_fmt(cpu.get('servers_ms_per_request'), 3)}"]
        if cpu.get("nats_server_ms_per_request") is not None:
            parts.append(f"nats-server {_fmt(cpu['nats_server_ms_per_request'], 3)}")
        parts.append(f"client {_fmt(cpu.get('client_ms_per_request'), 3)}")
        nodes = f" n={run['nodes']}" if run["nodes"] else ""
        cpu_lines.append(f"  {label}{nodes}: " + ", ".join(parts))
    if cpu_lines:
        out.append("")
        out.append("CPU ms per answered request (all cells of the run, warm-up included):")
        out.extend(cpu_lines)
    loops = result.get("loops") or {}
    if loops:
        out.append("")
        out.append(
            f"event loops: kai runner processes {loops.get('kai') or '-'}, floors"
            f" {loops.get('floors') or '-'}, client {loops.get('client') or '-'}"
        )
        if loops.get("kai") and loops.get("floors") and loops["kai"] != loops["floors"]:
            out.append("  (not like for like: the ×floor ratios compare different loops)")
    out.extend(_more_tables(result))
    out.append("")
    out.append("targets (overhead):")
    for t in result["analysis"]["targets"]:
        mark = {True: "met", False: "NOT MET", None: "not measured"}[t["met"]]
        extra = f" (floor {t['floor']} {t['unit']})" if "floor" in t else ""
        out.append(
            f"  {t['target']}: {_fmt(t['value'])} {t['unit']} (limit {t['limit']}){extra}: {mark}"
        )
    return "\n".join(out)


PEER_LABELS = {"peer-ray": "ray serve"}


def _more_tables(result: dict[str, Any]) -> list[str]:
    """The JetStream floor's per-hop cost, the claim check against small payloads, the
    peers, `kai dev`'s cold start and the goals (floor, peer, footprint)."""
    from bench import targets as goals

    analysis, out = result["analysis"], []
    if result.get("aiohttp_installed"):
        out += ["", "note: aiohttp is installed in this Python, so nats-py imports it in every"
                " process of ours and the floors (about 11 MB more RSS and 80 ms more start-up"
                " each); the peers' venv belongs apart (--peer-python)"]
    hop = analysis.get("per_hop") or {}
    if hop and hop.get("to", 0) > hop.get("from", 0):
        out += ["", f"each added node ({hop['from']}→{hop['to']} nodes, {_size(hop['payload'])},"
                f" {hop['concurrency']} in flight): p50 ms / CPU ms per request (servers +"
                " nats-server, all cells mixed)"]
        for system, label in (("kai", "kai node"), ("floor-js", "JetStream floor hop"),
                              ("floor-nats", "core NATS floor hop")):
            h = hop.get(system) or {}
            out.append(f"  {label}: {_fmt(h.get('p50_ms'), 3)} / {_fmt(h.get('cpu_ms'), 3)}")
        ratios = ", ".join(f"{n} nodes {_fmt(v)}" for n, v in hop["cpu_ratio_to_js"].items())
        out.append(f"  kai CPU per request ÷ JetStream floor's: {ratios}")
    traced = analysis.get("tracing") or []
    if traced:
        out += ["", "tracing (kai, on: every span made and written to /dev/null; off: the same"
                " chain untraced, same run)"]
        for t in traced:
            out.append(
                f"  {t['nodes']} nodes, {_size(t['payload'])}, {t['concurrency']} in flight:"
                f" p50 {_fmt(t['p50_ms'])} vs {_fmt(t['untraced_p50_ms'])} ms"
                f" ({t['extra_p50_ms']:+.3f} ms), req/s ×{_fmt(t['throughput_ratio'], 3)}"
            )
    claims = analysis.get("claims") or []
    if claims:
        out += ["", "claim check (kai, same chain and run): a payload over the NATS max payload"
                " against the smallest payload"]
        for c in claims:
            out.append(
                f"  {c['nodes']} nodes, {_size(c['payload'])} vs {_size(c['small_payload'])},"
                f" {c['concurrency']} in flight: p50 {_fmt(c['p50_ms'])} vs"
                f" {_fmt(c['small_p50_ms'])} ms (×{_fmt(c['p50_ratio'], 1)}), req/s"
                f" {_fmt(c['throughput_rps'], 1)} vs {_fmt(c['small_throughput_rps'], 0)}"
                f" (×{_fmt(c['throughput_ratio'], 3)}); +{_fmt(c['extra_p50_ms_per_mib'], 1)}"
                " ms p50 per MiB"
            )
    for name, peer in sorted((result.get("peers") or {}).items()):
        if peer.get("skipped"):
            out += ["", f"peer {name}: skipped: {peer['skipped']}"]
            continue
        versions = ", ".join(f"{k} {v}" for k, v in sorted(peer.get("versions", {}).items()))
        out += ["", f"peer {name} ({versions}; {peer.get('settings', '')}):"]
        for row in analysis.get("peer_rows", []):
            if row["system"] != peer.get("system"):
                continue
            o, p = row.get("ours"), row["kai"]
            if not (o and p):
                continue
            out.append(
                f"  {row['nodes']} nodes, {_size(row['payload'])}, {row['concurrency']} in"
                f" flight: p50 {_fmt(p['p50_ms'])} ms (kai {_fmt(o['p50_ms'])}: ×"
                f"{_fmt(_ratio(p['p50_ms'], o['p50_ms']), 1)} lower), req/s"
                f" {_fmt(p['throughput_rps'], 0)} (kai {_fmt(o['throughput_rps'], 0)}: ×"
                f"{_fmt(_ratio(o['throughput_rps'], p['throughput_rps']), 1)})"
            )
        for run in result["runs"]:
            if run["system"] == peer.get("system"):
                total = sum(p["peak_rss_mb"] for p in run["processes"])
                out.append(f"  {run['nodes']} nodes: cold start {run['startup_seconds']:.1f} s,"
                           f" {len(run['processes'])} processes, {total:.0f} MB peak RSS in"
                           " all")
    out += variants.format_rows(analysis.get("ab") or [], _size)
    dev = result.get("kai_dev")
    if dev:
        samples = ", ".join(_fmt(x) for x in dev["seconds"])
        out += ["", f"kai dev cold start to the first answer ({dev['nodes']} nodes): median"
                f" {_fmt(dev['median_s'])} s ({samples})"]
    if analysis.get("goals"):
        out += ["", goals.format_targets("goals", analysis["goals"])]
    return out


def plot(result: dict[str, Any], path: Path) -> bool:
    """Latency (p50, with p99 as the bar's top) against chain length, per concurrency."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    s = result["settings"]
    fig, axes = plt.subplots(
        1, len(s["payloads"]), figsize=(6.5 * len(s["payloads"]), 5), squeeze=False
    )
    runs = result["runs"]
    for ax, payload in zip(axes[0], s["payloads"], strict=True):
        for conc, color in zip(
            s["concurrency"], ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=False
        ):
            for system, style, label in (
                ("kai", "-o", "kai"), (AT_MOST_ONCE_SYSTEM, "x", "kai at most once"),
                ("floor-js", ":^", "JetStream floor"), ("floor-nats", "--s", "composed floor"),
            ):
                xs, p50, p99 = [], [], []
                for r in sorted(
                    (r for r in runs if r["system"] == system), key=lambda r: r["nodes"]
                ):
                    if system == "floor-nats":
                        g = _cell(
                            next((x for x in runs if x["system"] == "floor-grpc"), None),
                            payload,
                            conc,
                        )
                        f = _cell(r, payload, conc)
                        c = composed_floor(g, f) if g and f else None
                    else:
                        c = _cell(r, payload, conc)
                    if c:
                        xs.append(r["nodes"])
                        p50.append(c["p50_ms"])
                        p99.append(c["p99_ms"])
                if xs:
                    ax.errorbar(
                        xs,
                        p50,
                        yerr=[[0] * len(xs), [b - a for a, b in zip(p50, p99, strict=True)]],
                        fmt=style,
                        color=color,
                        capsize=4,
                        label=f"{label}, {conc} in flight",
                    )
        ax.set_title(f"payload {_size(payload)}: p50 (bar to p99)")
        ax.set_xlabel("nodes in the chain")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("KAI chain latency vs its floors (JetStream: our message pattern without our"
                 " code; composed: gRPC echo + N bare NATS hops)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model or platform.processor(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# --- main ---------------------------------------------------------------------------------


def _ints(raw: str) -> list[int]:
    return [int(x) for x in raw.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m bench.chain", description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke mode: 2 and 3 nodes, 1 and 4 in flight, at most 0.25 s or 25 answers a cell",
    )
    p.add_argument("--nodes", type=_ints, help="chain lengths (default 3,10)")
    p.add_argument("--payloads", type=_ints, help="payload sizes in bytes (default 100,102400)")
    p.add_argument("--concurrency", type=_ints, help="requests in flight (default 1,32)")
    p.add_argument(
        "--large",
        type=_ints,
        help="payload sizes in bytes of the large cells, through the claim bucket (default "
        "1048576,8388608; --quick: 1048576; 0: none)",
    )
    p.add_argument(
        "--large-concurrency",
        type=_ints,
        help="requests in flight in the large cells (default 1,4; --quick: 1)",
    )
    p.add_argument(
        "--at-most-once-nodes",
        type=_ints,
        help="chain lengths also measured with `delivery: at-most-once` (core NATS request/"
        "reply, no JetStream) beside the default at-least-once (default 3; 0: none)",
    )
    p.add_argument(
        "--traced-nodes",
        type=_ints,
        help="chain lengths also measured with OpenTelemetry tracing on, every span made and "
        "written to /dev/null (default 3; 0: none)",
    )
    p.add_argument("--seconds", type=float, help="measured seconds per cell (default 5)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per cell (default 1)")
    p.add_argument("--requests", type=int, help="also stop a cell after N answers (default: no)")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline of each call (s)")
    p.add_argument(
        "--storage",
        choices=("file", "memory"),
        default="file",
        help="JetStream storage of the version's streams",
    )
    p.add_argument(
        "--handler",
        choices=("any", "typed"),
        default="any",
        help="node style: KRE `Any` + Unpack, or a typed handler",
    )
    p.add_argument(
        "--pythonpath",
        default="",
        help="put DIR first on the runner processes' PYTHONPATH (try a patched runner copy)",
    )
    loops = p.add_mutually_exclusive_group()
    loops.add_argument(
        "--asyncio-floors",
        action="store_true",
        help="run the floors on asyncio's default loop (default: the runner's, uvloop when"
        " importable)",
    )
    loops.add_argument(
        "--uvloop-floors", action="store_true", help="run the floors on uvloop (the default)"
    )
    p.add_argument("--no-floors", action="store_true", help="measure only ours")
    p.add_argument("--rounds", type=int,
                   help="measure the floors and ours this many times, interleaved (every other"
                   " round ours first), and report each cell's medians (default 1)")
    p.add_argument("--peer-python", default="",
                   help="the Python that runs the peers: a venv with the [bench-peers] extra"
                   " (default: this one; Ray brings aiohttp, which nats-py then imports in"
                   " every process of ours and the floors, so keep them apart)")
    p.add_argument("--no-peers", action="store_true",
                   help="do not measure the peers (Ray Serve, when installed)")
    p.add_argument("--dev-starts", type=int,
                   help="times `kai dev` is started cold to its first answer (default 3;"
                   " --quick: 1; 0: never)")
    p.add_argument("--floors-only", action="store_true", help="measure only the floors")
    p.add_argument("--variant", action="append", type=variants.parse, default=[],
                   metavar="LABEL:KEY=VALUE,...",
                   help="also measure ours with one thing changed, beside ours in every round"
                   " (A/B): KEY python (the runner processes' interpreter), pythonpath (put"
                   " first on their path), patch (a patch of runner/, e.g. bench/levers/*.patch,"
                   " applied to a copy) or env.NAME; `LABEL:` alone is an A/A run. Repeatable")
    p.add_argument("--json", type=Path, default=RESULTS / "chain.json")
    p.add_argument("--plot", type=Path, default=RESULTS / "chain.png")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    a = p.parse_args(argv)
    s = Settings(
        quick=a.quick,
        timeout=a.timeout,
        storage=a.storage,
        handler=a.handler,
        uvloop_floors=not a.asyncio_floors,
        floors=not a.no_floors,
        ours=not a.floors_only,
        pythonpath=a.pythonpath,
        peers=not a.no_peers,
        peer_python=a.peer_python,
        variants=a.variant,
    )
    if a.quick:
        s.nodes, s.concurrency, s.seconds, s.warmup, s.requests = [2, 3], [1, 4], 0.25, 0.05, 25
        s.large, s.large_concurrency = [1024 * 1024], [1]
        s.dev_starts = 1
    for attr in ("nodes", "payloads", "concurrency", "seconds", "warmup", "requests", "large",
                 "large_concurrency", "at_most_once_nodes", "traced_nodes", "dev_starts",
                 "rounds"):
        if getattr(a, attr) is not None:
            setattr(s, attr, getattr(a, attr))
    s.large = [x for x in s.large if x > 0]
    s.at_most_once_nodes = [x for x in s.at_most_once_nodes if x > 0]
    s.traced_nodes = [x for x in s.traced_nodes if x > 0]
    s.rounds = max(1, s.rounds)
    return s, a


def run(s: Settings, workdir: Path, log: Any = sys.stderr) -> dict[str, Any]:
    from runner.natsserver import NatsServer

    runs: list[dict[str, Any]] = []
    with (
        # the floors' messages carry the large payloads whole
        NatsServer(store_dir=workdir / "nats", max_payload=16 * 1024 * 1024) as nats_server,
        ProcessGroup(workdir / "logs") as group,
    ):
        url = nats_server.url
        others = {"nats_server": nats_server.proc.pid} if nats_server.proc else {}

        def floors(round_index: int) -> None:
            print("floor: grpc.aio echo", file=log, flush=True)
            runs.append(measure_grpc_floor(group, s))
            for n in s.nodes:
                print(f"floor: {n} nats-py hops", file=log, flush=True)
                runs.append(measure_nats_floor(group, url, n, s, others))
            for n in s.nodes:
                print(f"floor: JetStream, gRPC front + {n} pull-consumer hops", file=log,
                      flush=True)
                runs.append(measure_js_floor(group, url, n, s, others))

        prepared = variants.prepare(s.variants, workdir)  # patches applied to copies

        def ours(round_index: int) -> None:
            for n in s.nodes:
                for variant in variants.order(prepared, round_index):
                    label = f" [{variant.label}]" if variant else ""
                    print(f"kai{label}: {n}-node chain", file=log, flush=True)
                    runs.append(measure_ours(group, workdir, url, n, s, others,
                                             variant=variant))
            for n in s.at_most_once_nodes:
                print(f"kai: {n}-node chain, at most once", file=log, flush=True)
                runs.append(measure_ours(group, workdir, url, n, s, others,
                                         system=AT_MOST_ONCE_SYSTEM, delivery="at-most-once"))
            for n in s.traced_nodes:
                from runner.contract import ENV_TRACES_FILE

                print(f"kai: {n}-node chain, traced", file=log, flush=True)
                runs.append(measure_ours(group, workdir, url, n, s, others, system=TRACED_SYSTEM,
                                         extra_env={ENV_TRACES_FILE: os.devnull}))

        parts = [part for part, on in ((floors, s.floors), (ours, s.ours)) if on]
        for r in range(s.rounds):  # interleaved: every other round, ours first
            if s.rounds > 1:
                print(f"round {r + 1} of {s.rounds}", file=log, flush=True)
            for part in parts if r % 2 == 0 else parts[::-1]:
                part(r)
        runs[:] = merge_rounds(runs)
        if s.large:
            runs += measure_large(group, workdir, url, others, s, log)
        out: dict[str, Any] = {"runs": runs}
        if s.peers:
            from bench import peers

            peer_runs, out["peers"] = peers.measure(group, workdir, s, log)
            runs += peer_runs
        if s.ours and s.dev_starts > 0:
            from bench import devstart

            print(f"kai dev: cold start to the first answer, {s.dev_starts}×", file=log,
                  flush=True)
            out["kai_dev"] = devstart.measure(group, workdir, s)
    return out


MEDIAN_KEYS = ("p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms", "throughput_rps")


def merge_rounds(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One run per system and chain length: each cell's figures the median of its rounds
    (which it keeps under "rounds"), CPU per request the median, peak RSS the highest."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["system"], run["nodes"]), []).append(run)
    out = []
    for group in groups.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        merged = {**group[0], "rounds": len(group)}
        cells = []
        for i, cell in enumerate(group[0]["cells"]):
            same = [g["cells"][i] for g in group]
            c = {**cell, **{k: round(statistics.median(x[k] for x in same), 4)
                            for k in MEDIAN_KEYS}}
            for k in ("requests", "errors", "warmup_requests"):
                c[k] = sum(x.get(k, 0) for x in same)
            c["rounds"] = [{"p50_ms": x["p50_ms"], "throughput_rps": x["throughput_rps"]}
                           for x in same]
            cells.append(c)
        merged["cells"] = cells
        peak: dict[str, float] = {}
        for g in group:
            for proc in g["processes"]:
                peak[proc["name"]] = max(peak.get(proc["name"], 0.0), proc["peak_rss_mb"])
        merged["processes"] = [{**proc, "peak_rss_mb": peak[proc["name"]]}
                               for proc in group[0]["processes"]]
        cpu = dict(group[0]["cpu"])
        for k, v in cpu.items():
            figures = [g["cpu"].get(k) for g in group]
            if k.endswith("_ms_per_request") and isinstance(v, float | int) and all(
                    isinstance(x, float | int) for x in figures):
                cpu[k] = round(statistics.median(figures), 4)
        merged["cpu"] = cpu
        merged["cpu_rounds"] = [g["cpu"].get("servers_ms_per_request") for g in group]
        if "startup_seconds" in merged:
            merged["startup_seconds"] = round(statistics.median(
                g["startup_seconds"] for g in group), 2)
        out.append(merged)
    return out


def measure_large(group: ProcessGroup, workdir: Path, floor_url: str,
                  floor_others: dict[str, int], s: Settings, log: Any) -> list[dict[str, Any]]:
    """The large cells: the floors on the first server (one message each), ours on a server
    with NATS's default max payload (each payload through the claim bucket)."""
    from runner.natsserver import NatsServer

    runs: list[dict[str, Any]] = []
    n, cells = s.large_nodes, s.large_cells
    if s.floors:
        print("floor: grpc.aio echo, large payloads", file=log, flush=True)
        runs.append(measure_grpc_floor(group, s, cells, "floor-grpc-large"))
        print(f"floor: {n} nats-py hops, large payloads", file=log, flush=True)
        runs.append(measure_nats_floor(group, floor_url, n, s, floor_others, cells,
                                       "floor-nats-large"))
        print(f"floor: JetStream, {n} hops, large payloads", file=log, flush=True)
        runs.append(measure_js_floor(group, floor_url, n, s, floor_others, cells,
                                     "floor-js-large"))
    if s.ours:
        with NatsServer(store_dir=workdir / "nats-claims") as claims_server:
            others = {"nats_server": claims_server.proc.pid} if claims_server.proc else {}
            print(f"kai: {n}-node chain, large payloads through claims (and the smallest "
                  "payload, inline, for comparison)", file=log, flush=True)
            runs.append(measure_ours(group, workdir / "claims", claims_server.url, n, s,
                                     others, [*cells, *s.claims_small_cells], "kai-claims"))
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    s, a = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="kai-bench-chain-"))
    started = time.time()
    keep = a.keep
    try:
        with sigterm_as_interrupt():
            result = run(s, workdir)
    except KeyboardInterrupt:
        print("interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        keep = True
        print(f"chain benchmark failed: {exc}", file=sys.stderr)
        print(f"logs kept in {workdir / 'logs'}", file=sys.stderr)
        return 1
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result["settings"] = asdict(s)
    result["machine"] = machine()
    result["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
    result["wall_seconds"] = round(time.time() - started, 1)
    result["loops"] = loops_summary(result["runs"])
    result["python"] = sys.executable
    result["aiohttp_installed"] = importlib.util.find_spec("aiohttp") is not None
    result["analysis"] = analyse(result["runs"], s)
    from bench import targets as goals

    result["analysis"]["goals"] = goals.chain_targets(result)
    print(table(result))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nJSON: {a.json}")
    if not a.no_plot:
        if plot(result, a.plot):
            result["plot"] = str(a.plot)
            print(f"plot: {a.plot}")
        else:
            print("plot skipped: matplotlib is not installed (pip install '.[bench]')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
