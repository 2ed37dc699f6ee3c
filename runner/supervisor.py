"""Run a version's processes on one machine: `kai dev` and the integration tests.

Each process of the plan becomes `python -m runner node|entrypoint` (this Python),
`replicas` times, with the plan's environment for this machine. The supervisor

* prefixes every line a child prints with its name (and replica index),
* waits until every child has printed its ready line (bounded by a timeout),
* reports a child that exits before it is ready with its exit code and last lines,
* stops everything with SIGTERM, then SIGKILL after a grace period.

Children run in their own session (process group): a Ctrl-C in the terminal
reaches only the supervisor, which then stops them in order. On Linux a child
also gets SIGTERM when the supervisor dies, and an exit hook kills what is left,
so no child outlives it.

The supervisor never imports the renderer: callers hand it :class:`ProcessSpec`
values (renderer.cli.dev builds them from the plan).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import os
import re
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

# The line a runner process prints once it serves (see runner/__main__.py).
READY_LINE = re.compile(
    r"entrypoint ready: grpc \S+:\d+, web \S+:\d+|node \S+ ready \(web :\d+\)"
)
TAIL_LINES = 40
DEFAULT_READY_TIMEOUT = 60.0
DEFAULT_GRACE = 10.0
_COLORS = (36, 33, 35, 32, 34, 91, 96, 93, 95, 92)
_LIVE: set[int] = set()  # pids of children not reaped yet, for the exit hook


@dataclass(frozen=True)
class ProcessSpec:
    """One process of a plan, as the supervisor runs it."""

    name: str
    role: str  # "node" or "entrypoint" (runner.contract.ROLE_*)
    env: Mapping[str, str]
    replicas: int = 1
    free_ports: tuple[str, ...] = ()  # env keys that get a fresh loopback port per replica


class StartupError(Exception):
    """A child exited, or stayed silent, before it was ready."""

    def __init__(self, label: str, reason: str, output: list[str], returncode: int | None):
        self.label = label
        self.reason = reason
        self.output = output
        self.returncode = returncode
        super().__init__(f"{label} {reason}")


@dataclass(eq=False)
class Child:
    """One running replica of a process."""

    spec: ProcessSpec
    index: int
    label: str
    proc: asyncio.subprocess.Process
    env: dict[str, str]
    ready: bool = False
    expected_exit: bool = False
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    pump: asyncio.Task[None] | None = None
    ready_at: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def signal(self, sig: int) -> None:
        """Send `sig` to the child (not its group: a test's kill is precise)."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# Sets "SIGTERM me when my parent dies" (Linux PR_SET_PDEATHSIG), then becomes the
# runner with execv: the setting survives exec. It runs in the child's own fresh
# interpreter, never between fork and exec of the supervisor (a preexec_fn there is
# unsafe next to gRPC's threads).
_LAUNCHER = """\
import ctypes, os, signal, sys
parent = int(os.environ.pop("KAI_SUPERVISOR_PID", "0"))
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
except Exception:
    pass
if parent and os.getppid() != parent:
    sys.exit(1)
os.execv(sys.argv[1], sys.argv[1:])
"""
_USE_LAUNCHER = sys.platform.startswith("linux")


def _argv(python: str, role: str) -> list[str]:
    runner = [python, "-m", "runner", role]
    if not _USE_LAUNCHER:
        return runner
    return [sys.executable, "-S", "-c", _LAUNCHER, *runner]


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_LIVE):
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


class Supervisor:
    """Start, watch and stop a set of runner processes. Use as an async context manager."""

    def __init__(
        self,
        specs: Iterable[ProcessSpec],
        *,
        base_env: Mapping[str, str] | None = None,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        grace: float = DEFAULT_GRACE,
        echo: Callable[[str], None] | None = None,
        color: bool | None = None,
        python: str = sys.executable,
    ) -> None:
        self.specs = tuple(specs)
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.ready_timeout = ready_timeout
        self.grace = grace
        self.echo = echo or _stderr_line
        self.color = sys.stderr.isatty() if color is None else color
        self.python = python
        self.children: list[Child] = []
        self._changed = asyncio.Event()
        self._exits: asyncio.Queue[Child] = asyncio.Queue()
        self._stopping = False
        self._width = max((len(_label(s, i)) for s in self.specs for i in range(s.replicas)),
                          default=0)
        self._colors = itertools.cycle(_COLORS)
        self._color_of: dict[str, int] = {}

    # --- starting --------------------------------------------------------------

    async def start(self) -> None:
        """Start every replica of every process and wait until all are ready.

        Raises StartupError (after stopping everything) when one exits first or
        the timeout passes.
        """
        try:
            for spec in self.specs:
                for index in range(spec.replicas):
                    await self._spawn(spec, index)
            await self._wait_ready(self.children)
        except BaseException:
            await self.stop()
            raise

    async def add_replica(self, name: str) -> Child:
        """Start one more replica of process `name` and wait until it is ready."""
        spec = next(s for s in self.specs if s.name == name)
        index = 1 + max((c.index for c in self.children if c.spec.name == name), default=-1)
        child = await self._spawn(spec, index)
        await self._wait_ready([child])
        return child

    async def _spawn(self, spec: ProcessSpec, index: int) -> Child:
        env = {**self.base_env, **spec.env, "PYTHONUNBUFFERED": "1",
               "KAI_SUPERVISOR_PID": str(os.getpid())}
        for key in spec.free_ports:
            env[key] = str(free_port())
        proc = await asyncio.create_subprocess_exec(
            *_argv(self.python, spec.role),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
            limit=1 << 20,
        )
        _LIVE.add(proc.pid)
        child = Child(spec, index, _label(spec, index), proc, env)
        child.pump = asyncio.create_task(self._pump(child), name=f"pump {child.label}")
        self.children.append(child)
        return child

    async def _wait_ready(self, children: list[Child]) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            for child in children:
                if not child.running and not child.ready:
                    await self._drain(child)
                    raise StartupError(
                        child.label,
                        f"exited with code {child.returncode} before it was ready",
                        list(child.tail),
                        child.returncode,
                    )
            waiting = [c for c in children if not c.ready]
            if not waiting:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                child = waiting[0]
                raise StartupError(
                    child.label,
                    f"was not ready within {self.ready_timeout:g}s",
                    list(child.tail),
                    child.returncode,
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def _drain(self, child: Child) -> None:
        """Let the pump read the last lines of an exited child (bounded)."""
        if child.pump is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(child.pump), 2.0)

    # --- output -------------------------------------------------------------------

    async def _pump(self, child: Child) -> None:
        stream = child.proc.stdout
        assert stream is not None
        try:
            while True:
                try:
                    raw = await stream.readline()
                except ValueError:  # a line longer than the limit: take what is there
                    raw = await stream.read(1 << 20)
                if not raw:
                    break
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                child.tail.append(line)
                self._print(child, line)
                if not child.ready and READY_LINE.search(line):
                    child.ready = True
                    child.ready_at = time.monotonic()
                    self._changed.set()
        finally:
            await child.proc.wait()
            _LIVE.discard(child.pid)
            self._changed.set()
            if not child.expected_exit and not self._stopping:
                self._print(child, f"exited with code {child.returncode}")
                self._exits.put_nowait(child)

    def _print(self, child: Child, line: str) -> None:
        prefix = child.label.ljust(self._width)
        if self.color:
            code = self._color_of.setdefault(child.spec.name, next(self._colors))
            prefix = f"\x1b[{code}m{prefix}\x1b[0m"
        self.echo(f"{prefix} | {line}")

    # --- watching and stopping ----------------------------------------------------------

    async def wait_exit(self) -> Child:
        """The next child that exits on its own (not through stop() or stop_child())."""
        return await self._exits.get()

    def live(self, name: str | None = None) -> list[Child]:
        return [c for c in self.children if c.running and (name is None or c.spec.name == name)]

    async def stop_child(self, child: Child, sig: int = signal.SIGTERM) -> int | None:
        """Stop one child on purpose (SIGTERM, then SIGKILL after the grace period)."""
        child.expected_exit = True
        await self._terminate([child], sig)
        return child.returncode

    async def stop(self) -> None:
        """Stop every child: SIGTERM to each group, wait, SIGKILL after the grace period."""
        self._stopping = True
        await self._terminate(self.children)

    async def _terminate(self, children: list[Child], sig: int = signal.SIGTERM) -> None:
        for child in children:
            child.expected_exit = child.expected_exit or self._stopping
            if child.running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, sig)
        waits = [asyncio.ensure_future(c.proc.wait()) for c in children]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self.grace)
            for fut in pending:
                fut.cancel()
        for child in children:
            if child.running:
                self.echo(f"{child.label} did not stop within {self.grace:g}s: killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                await child.proc.wait()
        for child in children:
            await self._drain(child)

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _label(spec: ProcessSpec, index: int) -> str:
    return f"{spec.name}#{index}" if spec.replicas > 1 or index > 0 else spec.name


def _stderr_line(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
