"""Helpers for tests that run versions as real local processes (no mocks).

* :func:`write_version`: a small version directory from node code strings;
* :func:`running`: the version's rendered Deployments under runner.supervisor (as
  `kai dev` runs them) against a given NATS;
* :func:`kai`: the `kai` command line as a subprocess argv;
* :func:`descendants`: the live processes below a pid (to prove none is left).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import textwrap
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

from renderer.cli.dev import render_local, rendered_specs
from renderer.cli.devconfig import DevConfig
from renderer.project import Project
from renderer.validate import load_version
from runner.client import call, find_rpc, parse_request
from runner.proto import CompiledProto, compile_proto
from runner.supervisor import Supervisor, free_port

PROJECT = Project(name="test", namespace="test")


def write_version(root: Path, name: str, proto: str, nodes: Mapping[str, str],
                  workflows: Mapping[str, tuple[str, list[str]]],
                  replicas: Mapping[str, int] | None = None) -> Path:
    """A version directory: krt.yml, public_input.proto and src/<node>/main.py per node.

    `workflows` maps a workflow name to (rpc, chain).
    """
    folder = root / name
    (folder / "src").mkdir(parents=True)
    (folder / "public_input.proto").write_text(textwrap.dedent(proto))
    lines = [
        f"version: {name}",
        "description: A test version.",
        "entrypoint:",
        "  proto: public_input.proto",
        "  image: konstellation/kre-entrypoint:1.6.0",
        "nodes:",
    ]
    for node, code in nodes.items():
        (folder / "src" / node).mkdir()
        (folder / "src" / node / "main.py").write_text(textwrap.dedent(code))
        lines += [
            f"  - name: {node}",
            "    image: konstellation/kre-py:1.23.0",
            f"    src: src/{node}/main.py",
            f"    replicas: {(replicas or {}).get(node, 1)}",
        ]
    lines.append("workflows:")
    for workflow, (rpc, chain) in workflows.items():
        lines += [f"  - name: {workflow}", f"    entrypoint: {rpc}",
                  f"    sequential: [{', '.join(chain)}]"]
    (folder / "krt.yml").write_text("\n".join(lines) + "\n")
    return folder


@dataclass
class Running:
    """A version running locally: its supervisor, gRPC address and compiled proto."""

    supervisor: Supervisor
    address: str
    web_port: int
    compiled: CompiledProto
    log: list[str]
    channel: grpc.aio.Channel

    async def call(self, rpc: str, request: Mapping[str, object] | str,
                   deadline: float = 20.0) -> object:
        method = find_rpc(self.compiled, rpc)
        text = request if isinstance(request, str) else json.dumps(request)
        return await call(self.channel, method, parse_request(method, text), deadline)

    def output(self) -> str:
        return "\n".join(self.log)


@contextlib.asynccontextmanager
async def running(version_dir: Path, nats_url: str, work: Path,
                  env: Mapping[str, str] | None = None,
                  process_env: Mapping[str, str] | None = None,
                  ready_timeout: float = 45.0, grace: float = 10.0) -> AsyncIterator[Running]:
    """Start every process of the version's Deployments; stop them all on exit.

    `env` is added to every child's environment (and gives the values of config
    variables); `process_env` overrides contract variables (e.g. KAI_ACK_WAIT) in every
    process; `grace` replaces the Deployments' terminationGracePeriodSeconds.
    """
    version = load_version(version_dir)
    _, objects = render_local(PROJECT, version)
    port, web_port = free_port(), free_port()
    config = DevConfig(variables={n: (env or {})[n] for n in version.config.variables
                                  if n in (env or {})},
                       files={n: (env or {})[n].encode() for n in version.config.files
                              if n in (env or {})})
    specs = rendered_specs(objects, work, nats_url, config, port, web_port)
    if process_env:
        specs = [replace(s, env={**s.env, **process_env}) for s in specs]
    specs = [replace(s, grace=grace) for s in specs]
    log: list[str] = []
    supervisor = Supervisor(specs, base_env={**os.environ, **(env or {})},
                            ready_timeout=ready_timeout, grace=grace, echo=log.append,
                            color=False)
    try:
        await supervisor.start()
    except Exception:
        sys.stderr.write("\n".join(log[-80:]) + "\n")
        raise
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Running(supervisor, f"127.0.0.1:{port}", web_port,
                          compile_proto(version.directory, version.proto), log, channel)
    except BaseException:
        sys.stderr.write("\n".join(log[-80:]) + "\n")
        raise
    finally:
        await supervisor.stop()


def kai(*args: str) -> list[str]:
    """argv that runs the `kai` command line of this checkout with this Python."""
    return [sys.executable, "-c", "from renderer.cli import main; main()", *args]


def descendants(pid: int) -> set[int]:
    """Every live (non-zombie) process below `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
