"""Run a version's processes on one machine, as a kubelet runs its pods: `kai dev` and tests.

Each process becomes `python -m runner node|entrypoint` (this Python), `replicas` times,
with the environment it gets in the cluster, on this machine's paths and ports. The
supervisor

* prefixes every line a child prints with its name (and replica index);
* counts a replica as ready when its readiness probe passes (the Deployment's probe: the
  runner's /readyz, or the entrypoint's gRPC health), or without a probe when it prints its
  ready line; start() waits until every replica is ready (bounded by a timeout);
* reports a replica that exits before it was ever ready with its exit code and last lines
  (a start-up failure: it is not restarted);
* restarts every other replica that exits (any code, or killed; restartPolicy Always) with
  a back-off: 0.5 s, doubling up to 10 s, back to 0.5 s once a run lasted 10 s; the other
  replicas keep serving, and a restarted replica counts as ready only once its readiness
  probe passes again;
* polls each liveness probe every `period` seconds, and restarts a replica whose probe
  fails `failure_threshold` times in a row;
* stops in order: the entrypoint first (it stops taking calls and drains), then the nodes
  (they finish what they hold); each with SIGTERM, then SIGKILL once its grace period
  (the Deployment's terminationGracePeriodSeconds) has passed.

A spec may name a user (`user`, `group`, `groups`: the pod's runAsUser, set before exec)
or ask for no capabilities at all (`drop_caps`, Linux: even uid 0 then obeys permission
bits), so a read-only volume stays read-only when the supervisor runs as root.

Children run in their own session (process group): a Ctrl-C in the terminal reaches
only the supervisor, which then stops them in order. On Linux a child also gets SIGTERM
when the supervisor dies, even by SIGKILL (PR_SET_PDEATHSIG, see :func:`die_with_parent`),
and an exit hook kills what is left, so no child outlives it.

The supervisor never imports the renderer: callers hand it :class:`ProcessSpec`
values (renderer.cli.dev builds them from the rendered Deployments).
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

from . import contract

# The line a runner process prints once it serves (see runner/__main__.py).
READY_LINE = re.compile(
    r"entrypoint ready: grpc \S+:\d+, web \S+:\d+|node \S+ ready \(web :\d+\)"
)
TAIL_LINES = 40
DEFAULT_READY_TIMEOUT = 60.0
DEFAULT_GRACE = 10.0
BACKOFF_FIRST = 0.5  # seconds before the first restart of a replica
BACKOFF_CAP = 10.0  # the back-off doubles up to this
BACKOFF_RESET = 10.0  # a run at least this long restarts after BACKOFF_FIRST again
STARTUP_POLL = 0.1  # seconds between readiness checks until the first pass
PROBE_HOST = "127.0.0.1"
HTTP = "http"
GRPC = "grpc"
STOP_ORDER = (contract.ROLE_ENTRYPOINT, contract.ROLE_NODE)  # who is stopped first
_COLORS = (36, 33, 35, 32, 34, 91, 96, 93, 95, 92)
_LIVE: set[int] = set()  # pids of children not reaped yet, for the exit hook


@dataclass(frozen=True)
class Probe:
    """A readiness or liveness check, as a container's probe describes it.

    `port_env` names the variable of the child's environment that holds the port (the
    Deployment's port, mapped to the one this replica was given on this machine).
    """

    kind: str  # HTTP (GET `path`, 200-399 passes) or GRPC (grpc.health.v1, SERVING passes)
    port_env: str
    path: str = "/"
    service: str = ""  # GRPC: the health service name ("" is the whole server)
    period: float = 10.0
    failure_threshold: int = 3
    initial_delay: float = 0.0
    timeout: float = 1.0

    async def check(self, env: Mapping[str, str]) -> str | None:
        """None when the probe passes, else why not (a short phrase)."""
        try:
            port = int(env[self.port_env])
        except (KeyError, ValueError):
            return f"no port in {self.port_env}"
        if self.kind == GRPC:
            return await _grpc_check(port, self.service, self.timeout)
        return await _http_check(port, self.path, self.timeout)


async def _http_check(port: int, path: str, limit: float) -> str | None:
    what = f"GET {path}"
    try:
        async with asyncio.timeout(limit):
            reader, writer = await asyncio.open_connection(PROBE_HOST, port)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {PROBE_HOST}:{port}\r\n"
                             "Connection: close\r\n\r\n".encode())
                await writer.drain()
                status = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        return f"{what}: no answer within {limit:g}s"
    except OSError as exc:
        return f"{what}: {exc.strerror or type(exc).__name__}"
    parts = status.split()
    code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return None if 200 <= code < 400 else f"{what} answered {code or 'no status'}"


async def _grpc_check(port: int, service: str, limit: float) -> str | None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        async with grpc.aio.insecure_channel(f"{PROBE_HOST}:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=service), timeout=limit)
    except grpc.aio.AioRpcError as exc:
        return f"gRPC health check: {exc.code().name}"
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return None
    return f"gRPC health check: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"


@dataclass(frozen=True)
class ProcessSpec:
    """One process (a Deployment), as the supervisor runs it."""

    name: str
    role: str  # "node" or "entrypoint" (runner.contract.ROLE_*)
    env: Mapping[str, str]
    replicas: int = 1
    free_ports: tuple[str, ...] = ()  # env keys that get a fresh loopback port per replica
    readiness: Probe | None = None  # None: ready once it prints its ready line
    liveness: Probe | None = None
    grace: float | None = None  # seconds from SIGTERM to SIGKILL; None: the supervisor's
    user: int | None = None  # run as this uid (this process's when None)
    group: int | None = None  # ... and gid, with `groups` as the supplementary groups
    groups: tuple[int, ...] = ()
    drop_caps: bool = False  # Linux: start without any capability (root ignores no bits then)


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
    """One run of one replica of a process (a restart is a new Child in the same place)."""

    spec: ProcessSpec
    index: int
    label: str
    proc: asyncio.subprocess.Process
    env: dict[str, str]
    restarts: int = 0  # runs of this replica before this one
    backoff: float = 0.0  # the delay this run was restarted after (0: first run)
    ready: bool = False  # its readiness passes now
    was_ready: bool = False  # it passed at least once in this run
    expected_exit: bool = False
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    pump: asyncio.Task[None] | None = None
    probes: list[asyncio.Task[None]] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    line_seen: asyncio.Event = field(default_factory=asyncio.Event)

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
# program with execv: the setting survives exec. It runs in the child's own fresh
# interpreter, never between fork and exec of the parent (a preexec_fn there is
# unsafe next to gRPC's threads).
# With KAI_SUPERVISOR_NO_CAPS=1 it first empties the capability bounding set and every
# capability set (capset), so even uid 0 obeys permission bits after the exec.
_LAUNCHER = """\
import ctypes, os, signal, sys
parent = int(os.environ.pop("KAI_SUPERVISOR_PID", "0"))
no_caps = os.environ.pop("KAI_SUPERVISOR_NO_CAPS", "") == "1"
libc = ctypes.CDLL(None, use_errno=True)
try:
    libc.prctl(1, signal.SIGTERM)
except Exception:
    pass
if parent and os.getppid() != parent:
    sys.exit(1)
if no_caps:
    class Head(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]
    for cap in range(64):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP; past the last cap: EINVAL
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    if libc.capset(ctypes.byref(Head(0x20080522, 0)), (Data * 2)()) != 0:
        sys.stderr.write("cannot drop capabilities: " + os.strerror(ctypes.get_errno()) + "\\n")
        sys.exit(1)
os.execv(sys.argv[1], sys.argv[1:])
"""
_PARENT_ENV = "KAI_SUPERVISOR_PID"
_NO_CAPS_ENV = "KAI_SUPERVISOR_NO_CAPS"
_USE_LAUNCHER = sys.platform.startswith("linux")


def die_with_parent(argv: list[str], env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """argv and env that run `argv` so it gets SIGTERM when this process dies (Linux).

    `argv[0]` must be a path. The child must be started from the thread that lives as long
    as this process (the main thread, or the event loop's): the signal follows that thread.
    """
    if not _USE_LAUNCHER:
        return list(argv), dict(env)
    return ([sys.executable, "-S", "-c", _LAUNCHER, *argv],
            {**env, _PARENT_ENV: str(os.getpid())})


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_LIVE):
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


def exit_reason(returncode: int | None) -> str:
    """`code 3`, or `code -9 (killed)` for a signal."""
    if returncode is not None and returncode < 0:
        try:
            name = signal.strsignal(-returncode) or f"signal {-returncode}"
        except ValueError:
            name = f"signal {-returncode}"
        return f"code {returncode} ({name.lower()})"
    return f"code {returncode}"


def next_backoff(previous: float, ran: float) -> float:
    """The delay before the next restart of a replica whose last run lasted `ran` seconds."""
    if previous <= 0 or ran >= BACKOFF_RESET:
        return BACKOFF_FIRST
    return min(BACKOFF_CAP, previous * 2)


class Supervisor:
    """Start, watch, restart and stop a set of runner processes. An async context manager."""

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
        restart: bool = True,
    ) -> None:
        self.specs = tuple(specs)
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.ready_timeout = ready_timeout
        self.grace = grace
        self.echo = echo or _stderr_line
        self.color = sys.stderr.isatty() if color is None else color
        self.python = python
        self.restart = restart
        self.children: list[Child] = []  # the current run of every replica
        self._changed = asyncio.Event()
        self._exits: asyncio.Queue[Child] = asyncio.Queue()
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._restarts: set[asyncio.Task[None]] = set()
        self._width = max((len(_label(s, i)) for s in self.specs for i in range(s.replicas)),
                          default=0)
        self._colors = itertools.cycle(_COLORS)
        self._color_of: dict[str, int] = {}

    # --- starting --------------------------------------------------------------

    async def start(self) -> None:
        """Start every replica of every process and wait until all are ready.

        Raises StartupError (after stopping everything) when one exits before it was
        ever ready, or the timeout passes.
        """
        try:
            for spec in self.specs:
                for index in range(spec.replicas):
                    try:
                        await self._spawn(spec, index)
                    except OSError as exc:  # E2BIG: its environment is too large, ...
                        raise StartupError(_label(spec, index),
                                           f"cannot start: {exc.strerror or exc}",
                                           [], None) from None
            await self._wait_ready([c.label for c in self.children])
        except BaseException:
            await self.stop()
            raise

    async def add_replica(self, name: str) -> Child:
        """Start one more replica of process `name` and wait until it is ready."""
        spec = next(s for s in self.specs if s.name == name)
        index = 1 + max((c.index for c in self.children if c.spec.name == name), default=-1)
        child = await self._spawn(spec, index)
        await self._wait_ready([child.label])
        return self._current(child.label)

    async def wait_ready(self, limit: float | None = None) -> None:
        """Wait until every replica is ready (after restarts); StartupError after `limit`."""
        await self._wait_ready([c.label for c in self.children], limit)

    def all_ready(self) -> bool:
        return all(c.ready for c in self.children)

    async def _spawn(self, spec: ProcessSpec, index: int, restarts: int = 0,
                     backoff: float = 0.0) -> Child:
        env = {**self.base_env, **spec.env, "PYTHONUNBUFFERED": "1"}
        for key in spec.free_ports:
            env[key] = str(free_port())
        argv, full_env = die_with_parent([self.python, "-m", "runner", spec.role], env)
        if spec.drop_caps:
            full_env[_NO_CAPS_ENV] = "1"
        who: dict[str, object] = {}
        if spec.user is not None:
            who = {"user": spec.user, "group": spec.user if spec.group is None else spec.group,
                   "extra_groups": list(spec.groups)}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
            limit=1 << 20,
            **who,  # type: ignore[arg-type]
        )
        _LIVE.add(proc.pid)
        child = Child(spec, index, _label(spec, index), proc, env, restarts, backoff)
        place = next((i for i, c in enumerate(self.children) if c.label == child.label), None)
        if place is None:
            self.children.append(child)
        else:
            self.children[place] = child
        child.pump = asyncio.create_task(self._pump(child), name=f"pump {child.label}")
        child.probes.append(asyncio.create_task(self._readiness(child),
                                                name=f"readiness {child.label}"))
        if spec.liveness is not None:
            child.probes.append(asyncio.create_task(self._liveness(child, spec.liveness),
                                                    name=f"liveness {child.label}"))
        self._changed.set()
        return child

    def _current(self, label: str) -> Child:
        return next(c for c in self.children if c.label == label)

    async def _wait_ready(self, labels: list[str], within: float | None = None) -> None:
        limit = self.ready_timeout if within is None else within
        deadline = time.monotonic() + limit
        while True:
            current = [self._current(label) for label in labels]
            for child in current:
                if self._failed_start(child):
                    await self._drain(child)
                    raise StartupError(
                        child.label,
                        f"exited with {exit_reason(child.returncode)} before it was ready",
                        list(child.tail),
                        child.returncode,
                    )
            waiting = [c for c in current if not c.ready]
            if not waiting:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                child = waiting[0]
                raise StartupError(
                    child.label,
                    f"was not ready within {limit:g}s",
                    list(child.tail),
                    child.returncode,
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _failed_start(self, child: Child) -> bool:
        """An exit that is not restarted: any, without restarts; else a first run's exit
        before it was ever ready (a start-up failure)."""
        if child.running or child.expected_exit:
            return False
        return not self.restart or (child.restarts == 0 and not child.was_ready)

    async def _drain(self, child: Child) -> None:
        """Let the pump read the last lines of an exited child (bounded)."""
        if child.pump is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(child.pump), 2.0)

    # --- probes -------------------------------------------------------------------

    def _set_ready(self, child: Child, ready: bool, why: str = "") -> None:
        if ready == child.ready or not child.running:
            return
        child.ready = ready
        self._changed.set()
        if ready:
            first = not child.was_ready
            child.was_ready = True
            if child.ready_at is None:
                child.ready_at = time.monotonic()
            if first and child.restarts:
                self.echo(f"{child.label} is ready again (restart {child.restarts})")
            elif not first:
                self.echo(f"{child.label} is ready again")
        else:
            self.echo(f"{child.label} is not ready: {why}")

    async def _readiness(self, child: Child) -> None:
        probe = child.spec.readiness
        if probe is None:
            await child.line_seen.wait()
            self._set_ready(child, True)
            return
        await asyncio.sleep(probe.initial_delay)
        while child.running:  # until the first pass: often, as a start-up probe would
            if await probe.check(child.env) is None:
                break
            await asyncio.sleep(STARTUP_POLL)
        self._set_ready(child, True)
        failures = 0
        while child.running:
            await asyncio.sleep(probe.period)
            why = await probe.check(child.env)
            if why is None:
                failures = 0
                self._set_ready(child, True)
                continue
            failures += 1
            if failures >= probe.failure_threshold:
                self._set_ready(child, False, f"readiness probe failed {failures} times ({why})")

    async def _liveness(self, child: Child, probe: Probe) -> None:
        await asyncio.sleep(probe.initial_delay)
        failures = 0
        while child.running:
            why = await probe.check(child.env)
            failures = 0 if why is None else failures + 1
            if failures >= probe.failure_threshold:
                self.echo(f"{child.label} failed its liveness probe {failures} times ({why}); "
                          "stopping it to restart it")
                await self._terminate([child])
                return
            await asyncio.sleep(probe.period)

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
                if not child.line_seen.is_set() and READY_LINE.search(line):
                    child.line_seen.set()
        finally:
            await child.proc.wait()
            _LIVE.discard(child.pid)
            child.ready = False
            for task in child.probes:
                if task is not asyncio.current_task():
                    task.cancel()
            self._changed.set()
            if not child.expected_exit and not self._stopping:
                self._exited(child)

    def _exited(self, child: Child) -> None:
        """A child exited on its own: restart it (with back-off), or report it."""
        if not self.restart or self._failed_start(child):
            self._print(child, f"exited with {exit_reason(child.returncode)}")
            self._exits.put_nowait(child)
            return
        delay = next_backoff(child.backoff, time.monotonic() - child.started_at)
        restarts = child.restarts + 1
        self.echo(f"{child.label} exited with {exit_reason(child.returncode)}; "
                  f"restarting in {delay:g} s (restart {restarts})")
        task = asyncio.create_task(self._restart(child, delay, restarts),
                                   name=f"restart {child.label}")
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _restart(self, child: Child, delay: float, restarts: int) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), delay)
        if self._stopping or self._current(child.label) is not child:
            return
        try:
            await self._spawn(child.spec, child.index, restarts, delay)
        except OSError as exc:
            self.echo(f"{child.label} cannot be restarted: {exc}")

    def _print(self, child: Child, line: str) -> None:
        prefix = child.label.ljust(self._width)
        if self.color:
            code = self._color_of.setdefault(child.spec.name, next(self._colors))
            prefix = f"\x1b[{code}m{prefix}\x1b[0m"
        self.echo(f"{prefix} | {line}")

    # --- watching and stopping ----------------------------------------------------------

    async def wait_exit(self) -> Child:
        """The next child that exits on its own and is not restarted (restart=False, or a
        start-up failure of a replica added later)."""
        return await self._exits.get()

    def live(self, name: str | None = None) -> list[Child]:
        return [c for c in self.children if c.running and (name is None or c.spec.name == name)]

    async def stop_child(self, child: Child, sig: int = signal.SIGTERM) -> int | None:
        """Stop one child on purpose, for good (SIGTERM, SIGKILL after its grace period)."""
        child.expected_exit = True
        await self._terminate([child], sig)
        return child.returncode

    async def stop(self) -> None:
        """Stop every child in order: the entrypoint, then the nodes (SIGTERM to each group,
        SIGKILL after the grace period). Pending restarts are dropped."""
        self._stopping = True
        self._stop_event.set()
        if self._restarts:
            await asyncio.gather(*self._restarts, return_exceptions=True)
        stages = [[c for c in self.children if c.spec.role == role] for role in STOP_ORDER]
        stages.append([c for c in self.children if c.spec.role not in STOP_ORDER])
        for stage in stages:
            if any(c.running for c in stage):
                names = sorted({c.spec.name for c in stage if c.running})
                self.echo(f"stopping {', '.join(names)}")
            await self._terminate(stage)

    def kill(self) -> None:
        """SIGKILL every child now (a second Ctrl-C); a stop() under way then ends soon."""
        self._stopping = True
        self._stop_event.set()
        for child in self.children:
            child.expected_exit = True
            if child.running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)

    def _grace(self, child: Child) -> float:
        return self.grace if child.spec.grace is None else child.spec.grace

    async def _terminate(self, children: list[Child], sig: int = signal.SIGTERM) -> None:
        for child in children:
            child.expected_exit = child.expected_exit or self._stopping
            if child.running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, sig)
        await asyncio.gather(*(self._wait_or_kill(c) for c in children))
        for child in children:
            await self._drain(child)

    async def _wait_or_kill(self, child: Child) -> None:
        """Wait for a signalled child up to its grace period, then SIGKILL its group."""
        grace = self._grace(child)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(child.proc.wait()), grace)
        if child.running:
            self.echo(f"{child.label} did not stop within {grace:g}s: killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            await child.proc.wait()

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
