"""Peers measured beside KAI in the same run, with the same client and cells: Ray Serve.

Ray Serve comes with the `[bench-peers]` extra (`pip install -e '.[bench,bench-peers]'`,
ray[serve] pinned there), best in a venv of its own given with `--peer-python`: Ray brings
aiohttp, which nats-py imports whenever it is installed, in every process of ours and of the
floors (about 11 MB more RSS and 80 ms more start-up each). Without it the peer is skipped
with one line. It serves the same
pass-through chain as ours: N deployments composed with handles (step 1 is the ingress
and awaits step 2 through its handle, and so on; the last returns the request), behind
Ray's gRPC proxy, which hands each step the `kaibench.Payload` message. Settings that make
it fair on this machine:

* `num_cpus` 0.25 per deployment (Ray's logical CPUs: at least the machine's, and enough
  for N deployments), `max_ongoing_requests` 64;
* access logs off, log level WARNING (Serve's logging config, `ray.init`);
* `RAY_worker_niceness=0`: its default of 15 starves Ray's workers on a loaded machine.

Ray's processes listen on every interface (its gRPC proxy binds `[::]`), so the peer runs
in a network namespace of its own, with a loopback interface only (`unshare --net`); its
load generator and probe join that namespace (`nsenter --net`). The peer's process starts
the Ray cluster (its processes share the peer's session), prints ``READY`` once the
application is up, and shuts Ray down on SIGTERM; whatever of that session is still alive
afterwards is stopped by its pid.

    python -m bench.peers ray-serve --port P --http-port P2 --nodes N --gen DIR --temp-dir DIR
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PEER = "ray-serve"
SYSTEM = "peer-ray"
NUM_CPUS = 0.25  # per deployment
MAX_ONGOING = 64
LOG_LEVEL = "WARNING"
# Ray reads these from the environment of the process that starts the cluster.
RAY_ENV = {"RAY_worker_niceness": "0", "RAY_USAGE_STATS_ENABLED": "0"}
SERVICER = "kaibench_pb2_grpc.add_BenchServicer_to_server"
INSTALL = "pip install -e '.[bench,bench-peers]'"


def logical_cpus(nodes: int) -> int:
    """Ray's logical CPUs: the machine's, or more when N deployments need more."""
    return max(os.cpu_count() or 1, math.ceil(NUM_CPUS * nodes))


def settings_text(nodes: list[int]) -> str:
    return (f"num_cpus {NUM_CPUS} per deployment, max_ongoing_requests {MAX_ONGOING}, access"
            f" logs off, log level {LOG_LEVEL}, RAY_worker_niceness=0, logical CPUs"
            f" {', '.join(str(logical_cpus(n)) for n in nodes)}; gRPC proxy, loopback-only"
            " network namespace")


# --- availability -----------------------------------------------------------------------


def unavailable(python: str = sys.executable) -> tuple[str | None, dict[str, str]]:
    """Why the Ray peer cannot run with `python` (None: it can), and the versions it would
    run."""
    where = "" if python == sys.executable else f" in {python}"
    if python == sys.executable and importlib.util.find_spec("ray") is None:
        return f"ray[serve] is not installed ({INSTALL}, or --peer-python)", {}
    try:
        out = subprocess.run(
            [python, "-c", "import json, ray, ray.serve, grpc; print(json.dumps("
             "{'ray': ray.__version__, 'grpcio': grpc.__version__}))"],
            capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return "importing ray.serve took more than 180 s", {}
    except OSError as exc:
        return f"cannot run {python} ({exc.strerror or exc}): give --peer-python a Python", {}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        if "No module named 'ray'" in last:
            return f"ray[serve] is not installed{where} ({INSTALL})", {}
        return f"ray.serve does not import{where} ({last}; {INSTALL})", {}
    versions: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return (f"{tool} (util-linux) is not on PATH: Ray listens on every interface, and"
                    " the peer runs in a loopback-only network namespace"), versions
    try:
        probe = subprocess.run(["unshare", "--net", "--", "true"], capture_output=True,
                               text=True, timeout=30, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "unshare --net did not return within 30 s", versions
    if probe.returncode != 0:
        why = probe.stderr.strip() or f"exit code {probe.returncode}"
        return (f"cannot make a network namespace (unshare --net: {why}): Ray listens on every"
                " interface, and the peer runs on loopback only"), versions
    return None, versions


# --- measuring (in the bench's process) -----------------------------------------------------


def measure(group: Any, workdir: Path, s: Any, log: Any) -> tuple[list[dict[str, Any]],
                                                                   dict[str, Any]]:
    """Measure Ray Serve for every chain length of `s` (a bench.chain.Settings); returns its
    runs and its summary (versions and settings, or why it was skipped)."""
    python = s.peer_python or sys.executable
    reason, versions = unavailable(python)
    summary: dict[str, Any] = {"system": SYSTEM, "python": python}
    if reason is not None:
        print(f"peer {PEER}: skipped: {reason}", file=log, flush=True)
        return [], {PEER: {**summary, "skipped": reason, "versions": versions}}
    summary.update(versions=versions, settings=settings_text(s.nodes),
                   num_cpus_per_deployment=NUM_CPUS, max_ongoing_requests=MAX_ONGOING,
                   env=RAY_ENV)
    gen = workdir / "ray-gen"
    compile_proto(gen)
    runs = []
    for n in s.nodes:
        print(f"peer: ray serve, {n} deployments through its gRPC proxy", file=log, flush=True)
        try:
            runs.append(measure_ray(group, workdir, gen, n, s, python))
        except RuntimeError as exc:  # the peer failing does not fail our benchmark
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no reason given"
            print(f"peer {PEER}: could not run: {first} (logs: {workdir / 'logs'})",
                  file=log, flush=True)
            summary["skipped"] = f"could not run with {n} deployments: {first}"
            break
    return runs, {PEER: summary}


def compile_proto(gen: Path) -> None:
    """kaibench_pb2.py and kaibench_pb2_grpc.py, for the proxy and the deployments."""
    from bench.chain import PROTO

    gen.mkdir(parents=True, exist_ok=True)
    (gen / "kaibench.proto").write_text(PROTO)
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{gen}", f"--python_out={gen}",
         f"--grpc_python_out={gen}", str(gen / "kaibench.proto")],
        check=True, capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def measure_ray(group: Any, workdir: Path, gen: Path, n: int, s: Any,
                python: str) -> dict[str, Any]:
    from bench.chain import (
        METHOD,
        ROOT,
        RssSampler,
        child_env,
        cpu_summary,
        free_port,
        loop_of,
        run_loadgen,
        wait_ready,
    )
    from bench.procs import wait_for_line

    port, http_port = free_port(), free_port()
    env = child_env(RAY_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(gen), env["PYTHONPATH"]])
    argv = ["unshare", "--net", "--", python, "-m", "bench.peers", "ray-serve",
            "--port", str(port), "--http-port", str(http_port), "--nodes", str(n),
            "--gen", str(gen), "--temp-dir", str(workdir / "ray")]  # fmt: skip
    start = time.monotonic()
    driver = group.spawn(f"ray-serve-n{n}", argv, role="peer", env=env, cwd=ROOT,
                         stdout_pipe=True)
    try:
        wait_for_line(driver, b"READY", s.startup_timeout + 60)
        enter = ["nsenter", f"--net=/proc/{driver.pid}/ns/net", "--"]
        address = f"127.0.0.1:{port}"
        wait_ready(group, [driver], address, s.startup_timeout, enter)
        startup = time.monotonic() - start
        pids = {f"ray-n{n}-{comm(pid)}-{pid}": pid for pid in session_pids(driver.pid)}
        with RssSampler(pids) as rss:
            load = run_loadgen(group, f"client-ray-n{n}", "grpc",
                               ["--address", address, "--method", METHOD], s, None, enter)
        processes = rss.report(dict.fromkeys(pids, "peer"))
    finally:
        group.stop(driver, grace=20.0)
        stop_session(driver.pid)
    return {
        "system": SYSTEM,
        "nodes": n,
        "loop": loop_of(processes),
        "client_loop": load.get("loop"),
        "startup_seconds": round(startup, 2),
        "logical_cpus": logical_cpus(n),
        "cells": load["cells"],
        "processes": processes,
        "cpu": cpu_summary(load, processes, {}),
    }


def session_pids(sid: int) -> list[int]:
    """Every live process of session `sid` (the peer and the Ray cluster it started)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 3 and fields[3] == str(sid) and fields[0] != "Z":
            out.append(int(entry.name))
    return sorted(out)


def comm(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/comm").read_text().strip() or "?").replace(" ", "_")
    except OSError:
        return "?"


def stop_session(sid: int, grace: float = 10.0) -> None:
    """Stop what is left of session `sid`: SIGTERM, then SIGKILL after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        left = session_pids(sid)
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.2)


# --- the peer's process (inside its network namespace) --------------------------------------


def loopback_only() -> None:
    """Bring the namespace's loopback interface up; refuse to run with any other interface."""
    import fcntl
    import socket
    import struct

    names = {line.split(":", 1)[0].strip()
             for line in Path("/proc/net/dev").read_text().splitlines()[2:] if ":" in line}
    if names != {"lo"}:
        raise SystemExit(f"error: network interfaces {sorted(names)}: the Ray peer runs only in"
                         " a network namespace with a loopback interface alone (unshare --net)")
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, siocgifflags, ifreq))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


def serve_ray(port: int, http_port: int, nodes: int, gen: str, temp_dir: str) -> None:
    import importlib
    import logging

    loopback_only()
    sys.path.insert(0, gen)
    ray = importlib.import_module("ray")  # the `[bench-peers]` extra: no types for it here
    serve = importlib.import_module("ray.serve")
    config = importlib.import_module("ray.serve.config")
    HTTPOptions, gRPCOptions = config.HTTPOptions, config.gRPCOptions
    LoggingConfig = importlib.import_module("ray.serve.schema").LoggingConfig

    Path(temp_dir).mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=logical_cpus(nodes), include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, _node_ip_address="127.0.0.1", _temp_dir=temp_dir)
    quiet = LoggingConfig(log_level=LOG_LEVEL, enable_access_log=False)
    serve.start(
        http_options=HTTPOptions(host="127.0.0.1", port=http_port),
        grpc_options=gRPCOptions(port=port, grpc_servicer_functions=[SERVICER]),
        logging_config=quiet,
    )

    class Step:
        """A pass-through step: hands the request to the next step, or returns it."""

        def __init__(self, next_step: Any = None) -> None:
            self.next_step = next_step

        async def Echo(self, request: Any) -> Any:  # the rpc's name
            if self.next_step is None:
                return request
            return await self.next_step.Echo.remote(request)

    deployment = serve.deployment(ray_actor_options={"num_cpus": NUM_CPUS},
                                  max_ongoing_requests=MAX_ONGOING, logging_config=quiet)(Step)
    app = None
    for i in reversed(range(nodes)):
        app = deployment.options(name=f"step{i + 1}").bind(app)
    serve.run(app, name="bench", logging_config=quiet)
    stop = threading.Event()  # after ray.init, whose own SIGTERM handler would exit at once
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"READY ray {ray.__version__}", flush=True)
    while not stop.wait(0.5):
        pass
    with contextlib.suppress(Exception):
        serve.shutdown()
    ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split(
        "\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    r = sub.add_parser("ray-serve", help="serve the pass-through chain on Ray Serve")
    r.add_argument("--port", type=int, required=True, help="the gRPC proxy's port")
    r.add_argument("--http-port", type=int, required=True, help="the HTTP proxy's port")
    r.add_argument("--nodes", type=int, required=True, help="deployments in the chain")
    r.add_argument("--gen", required=True, help="folder of kaibench_pb2(_grpc).py")
    r.add_argument("--temp-dir", required=True, help="Ray's temporary folder (its session)")
    args = parser.parse_args(argv)
    serve_ray(args.port, args.http_port, args.nodes, args.gen, args.temp_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
