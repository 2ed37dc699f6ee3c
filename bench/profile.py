"""Where the CPU of a request goes: ours against the JetStream floor, part by part.

    python -m bench.profile [--nodes 3] [--payload 100] [--concurrency 32] [--seconds 12]
                            [--rate 200] [--json bench/results/profile.json] [--keep DIR]

It runs the chain benchmark twice in a child process (`bench.chain --no-floors` for ours,
`--floors-only` for the floors) with one long cell, and while the load runs it samples the
entrypoint and every node of ours, and the JetStream floor's front and hops, with py-spy
(`--native`, so syscalls and grpc's threads show). Each process's samples are put in parts by
their innermost frame (socket writes and reads, getpid, our runner code, nats-py, asyncio,
grpc, protobuf, metrics, the floor's own code, ...), and each part is given its share of the
CPU the process used per answered request (from /proc, as the chain benchmark measures it),
so the table reads in microseconds of CPU per request, ours beside the floor's, role by role.

Samples of the event loop waiting (epoll) are left out of the shares: py-spy counts a thread
in a system call as active. py-spy is not a project dependency (`pip install py-spy`); without
it this prints one line and exits 2. Like every benchmark, this asserts nothing.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

WAIT = "event loop wait (epoll)"
NATIVE = {
    "sendmsg": "socket writes", "write": "socket writes", "writev": "socket writes",
    "send": "socket writes", "recv": "socket reads", "read": "socket reads",
    "readv": "socket reads", "recvmsg": "socket reads", "epoll_wait": WAIT,
    "epoll_pwait": WAIT, "getpid": "getpid (get_running_loop, Python 3.11)",
    "gc_collect_main": "garbage collector",
}  # fmt: skip
PYTHON = (  # innermost Python frame's file → part; first match wins
    ("/runner/", "runner (ours)"), ("/bench/floors.py", "floor's own code"),
    ("/nats/", "nats-py"), ("/asyncio/", "asyncio"), ("/uvloop/", "asyncio"),
    ("/grpc/", "grpc (Python layer)"), ("/google/protobuf/", "protobuf"),
    ("/prometheus_client/", "metrics (prometheus-client)"),
    ("/opentelemetry/", "tracing"),
)  # fmt: skip
_FRAME = re.compile(r"^(?P<fn>.*) \((?P<file>[^:()]*)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Target:
    """A process to sample: its name, role and pid, and whose side it is on."""

    side: str  # "kai" or "floor"
    role: str  # "entrypoint", "middle", "last"
    name: str
    pid: int


def part_of(stack: list[str]) -> str:
    """The part a sample belongs to, by its innermost frame (native syscalls by name)."""
    inner = _FRAME.match(stack[-1]) if stack else None
    if inner and inner["fn"] in NATIVE:
        return NATIVE[inner["fn"]]
    for frame in reversed(stack):
        m = _FRAME.match(frame)
        if m and m["file"].endswith(".py"):
            path = "/" + m["file"]  # py-spy shortens site-packages paths to "nats/..."
            for needle, part in PYTHON:
                if needle in path:
                    return part
            return "other Python"
    joined = ";".join(stack)
    if "cygrpc" in joined or "libgrpc" in joined:
        return "grpc core (native)"
    return "other native"


def parse_raw(text: str) -> collections.Counter[str]:
    """py-spy's raw (collapsed) output: "frame;frame;... count" per line → samples per part."""
    parts: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            parts[part_of(stack.split(";"))] += int(count)
    return parts


def own_frames(text: str, needle: str, top: int = 12) -> list[tuple[str, int]]:
    """The lines of our own code (files containing `needle`) with the most samples of their
    own (samples whose part is our code, at their innermost frame)."""
    lines: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not (stack and count.isdigit()):
            continue
        frames = stack.split(";")
        if part_of(frames) not in ("runner (ours)", "floor's own code"):
            continue
        for frame in reversed(frames):
            m = _FRAME.match(frame)
            if m and needle in "/" + m["file"]:
                where = ("/" + m["file"]).split(needle, 1)[1]
                lines[f"{m['fn']} ({needle.strip('/')}/{where}:{m['line']})"] += int(count)
                break
    return lines.most_common(top)


def shares(parts: collections.Counter[str], cpu_us: float | None) -> dict[str, float | None]:
    """Each part's µs of CPU per request: its share of the non-waiting samples."""
    busy = sum(n for p, n in parts.items() if p != WAIT)
    return {p: (round(cpu_us * n / busy, 1) if cpu_us is not None and busy else None)
            for p, n in sorted(parts.items()) if p != WAIT}


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (by /proc's parent pids)."""
    parents: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents[ppid].append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def find_targets(bench_pid: int, side: str, nodes: int) -> list[Target] | None:
    """The processes to sample once the load generator runs; None until then."""
    found = {pid: _cmdline(pid) for pid in _children(bench_pid)}
    if not any("bench.loadgen grpc" in c for c in found.values()):
        return None
    if side == "kai":
        front = [p for p, c in found.items() if "-m runner entrypoint" in c]
        hops = sorted((p for p, c in found.items() if "-m runner node" in c),
                      key=lambda p: _env(p).get("KAI_NODE", ""))
    else:
        front = [p for p, c in found.items() if " js-front" in c]
        hops = sorted((p for p, c in found.items() if " js-hop" in c),
                      key=lambda p: int(found[p].split("--step ", 1)[1].split()[0]))
    if len(front) != 1 or len(hops) != nodes:
        return None
    out = [Target(side, "entrypoint", f"{side}-front", front[0])]
    out += [Target(side, "last" if i == nodes - 1 else "middle", f"{side}-hop{i + 1}", p)
            for i, p in enumerate(hops)]
    return out


def _env(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            items = f.read().split(b"\0")
    except OSError:
        return {}
    return dict(x.decode(errors="replace").split("=", 1) for x in items if b"=" in x)


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def profile_side(side: str, a: argparse.Namespace, spy: str, work: Path) -> dict[str, Any]:
    """Run one side's chain benchmark with one long cell, sample its processes meanwhile."""
    out = work / side
    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "bench.chain", "--no-floors" if side == "kai" else
            "--floors-only", "--nodes", str(a.nodes), "--payloads", str(a.payload),
            "--concurrency", str(a.concurrency), "--seconds", str(a.seconds + 4),
            "--warmup", "1", "--large", "0", "--no-peers", "--dev-starts", "0",
            "--at-most-once-nodes", "0", "--traced-nodes", "0", "--no-plot",
            "--json", str(out / "chain.json")]  # fmt: skip
    with open(out / "bench.log", "wb") as log:
        bench = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        try:
            targets = None
            deadline = time.monotonic() + 240
            while targets is None and bench.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
                targets = find_targets(bench.pid, side, a.nodes)
            if targets is None:
                raise RuntimeError(f"{side}: its processes did not come up under load "
                                   f"(see {out / 'bench.log'})")
            time.sleep(2.0)  # past the warm-up
            with contextlib.ExitStack() as logs:
                spies = [subprocess.Popen(
                    [spy, "record", "--native", "-r", str(a.rate), "-d", str(a.seconds),
                     "--format", "raw", "-o", str(out / f"{t.name}.txt"), "--pid", str(t.pid)],
                    stdout=subprocess.DEVNULL,
                    stderr=logs.enter_context(open(out / f"{t.name}.py-spy.log", "wb")))
                    for t in targets]  # fmt: skip
                for spy_proc in spies:
                    spy_proc.wait(timeout=a.seconds + 60)
            bench.wait(timeout=600)
        finally:
            if bench.poll() is None:
                bench.terminate()
                bench.wait(timeout=30)
    result = json.loads((out / "chain.json").read_text())
    run = next(r for r in result["runs"]
               if r["system"] == ("kai" if side == "kai" else "floor-js"))
    cpu = run["cpu"]["by_process_ms_per_request"]
    names = [p["name"] for p in run["processes"]]  # front first, then the hops in order
    cell = run["cells"][0]
    processes = []
    for t, name in zip(targets, names, strict=True):
        samples = out / f"{t.name}.txt"
        if not samples.exists():
            log = (out / f"{t.name}.py-spy.log").read_text(errors="replace").strip()
            raise RuntimeError(f"py-spy took no samples of {name}: {log[-300:] or 'no output'}")
        raw = samples.read_text()
        parts = parse_raw(raw)
        cpu_us = None if cpu.get(name) is None else cpu[name] * 1000
        processes.append({"role": t.role, "name": name, "samples": sum(parts.values()),
                          "cpu_us_per_request": cpu_us, "parts_us": shares(parts, cpu_us),
                          "own_lines": own_frames(raw, "/runner/" if side == "kai"
                                                  else "/bench/")})  # fmt: skip
    return {"side": side, "throughput_rps": cell["throughput_rps"], "p50_ms": cell["p50_ms"],
            "nats_server_us_per_request": (run["cpu"].get("nats_server_ms_per_request")
                                           or 0) * 1000,
            "processes": processes}


def by_role(side: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """entrypoint, middle (the mean of the middle hops) and last, as one row each."""
    out: dict[str, dict[str, Any]] = {}
    for role in ("entrypoint", "middle", "last"):
        procs = [p for p in side["processes"] if p["role"] == role]
        if not procs:
            continue
        parts: dict[str, float] = collections.defaultdict(float)
        for p in procs:
            for k, v in p["parts_us"].items():
                parts[k] += (v or 0.0) / len(procs)
        cpu = [p["cpu_us_per_request"] for p in procs if p["cpu_us_per_request"] is not None]
        out[role] = {"cpu_us": sum(cpu) / len(cpu) if cpu else None, "parts": dict(parts)}
    return out


def table(kai: dict[str, Any], floor: dict[str, Any], a: argparse.Namespace) -> str:
    ours, theirs = by_role(kai), by_role(floor)
    lines = [f"profile: {a.nodes} nodes, {a.payload} B, {a.concurrency} in flight; py-spy"
             f" {a.rate} Hz for {a.seconds} s per process; µs of CPU per answered request"
             " (each part its share of the process's CPU)",
             f"  throughput: kai {kai['throughput_rps']:.0f} req/s, JetStream floor"
             f" {floor['throughput_rps']:.0f} req/s"]
    for role, label in (("entrypoint", "entrypoint / floor front"),
                        ("middle", "middle node / floor hop"), ("last", "last node / last hop")):
        o, t = ours.get(role), theirs.get(role)
        if not (o and t):
            continue
        lines += ["", f"  {label}: {_f(o['cpu_us'])} / {_f(t['cpu_us'])} µs"
                  f" (+{_f((o['cpu_us'] or 0) - (t['cpu_us'] or 0))})"]
        keys = sorted(set(o["parts"]) | set(t["parts"]),
                      key=lambda k: -(o["parts"].get(k, 0) - t["parts"].get(k, 0)))
        for k in keys:
            a_, b_ = o["parts"].get(k, 0.0), t["parts"].get(k, 0.0)
            if max(a_, b_) >= 0.5:
                lines.append(f"    {k:<40} {a_:7.1f} {b_:7.1f} {a_ - b_:+7.1f}")
    lines += ["", f"  nats-server: {_f(kai['nats_server_us_per_request'])} /"
              f" {_f(floor['nats_server_us_per_request'])} µs per request"]
    for p in kai["processes"]:
        if p["role"] in ("entrypoint", "middle") and p["own_lines"]:
            total = p["samples"] or 1
            lines += ["", f"  our lines with the most samples, {p['name']} (% of its samples):"]
            lines += [f"    {n / total:6.1%} {where}" for where, n in p["own_lines"][:8]]
            if p["role"] == "middle":
                break
    return "\n".join(lines)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=3, help="chain length (default 3)")
    p.add_argument("--payload", type=int, default=100, help="payload bytes (default 100)")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    p.add_argument("--seconds", type=int, default=12,
                   help="whole seconds sampled (default 12; py-spy takes whole seconds)")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--json", type=Path, default=RESULTS / "profile.json")
    p.add_argument("--keep", type=Path, help="keep the raw samples and logs in this directory")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    spy = py_spy()
    if spy is None:
        print("bench.profile: py-spy is not installed (pip install py-spy); nothing measured",
              file=sys.stderr)
        return 2
    work = a.keep or Path(tempfile.mkdtemp(prefix="kai-bench-profile-"))
    try:
        kai = profile_side("kai", a, spy, work)
        floor = profile_side("floor", a, spy, work)
    except (RuntimeError, subprocess.TimeoutExpired, OSError, KeyError, StopIteration) as exc:
        print(f"bench.profile failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(table(kai, floor, a))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"settings": vars(a) | {"json": str(a.json),
                                                         "keep": str(a.keep or "")},
                                  "kai": kai, "floor": floor}, indent=2) + "\n")
    print(f"\nJSON: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
