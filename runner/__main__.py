"""`python -m runner node|entrypoint`: the runner image's command.

The process reads its settings from the environment (runner.contract.RunnerEnv) and logs
one line per record to stderr::

    2024-05-01T12:00:00.123 INFO entrypoint: <message>
    2024-05-01T12:00:00.123 INFO node etl: <message>

Ready lines (what a supervisor waits for; the ports are the bound ones, so port 0 in the
environment works and the line tells which port was taken):

    entrypoint ready: grpc <host>:<port>, web <host>:<port>
    node <name> ready (web :<port>)

regular expressions: ``entrypoint ready: grpc (\\S+):(\\d+), web (\\S+):(\\d+)`` and
``node (\\S+) ready \\(web :(\\d+)\\)``. A node's line comes once its ``init`` has returned and
it takes work. The entrypoint's comes once it serves; its probes (``/readyz``, gRPC health)
pass only once every node takes work as well (runner.readiness).

Start-up failures print ``<role> [<name>]: cannot start: <reason>`` on stderr and exit
non-zero: 2 for a bad environment, proto, module or handler, 3 when `init` fails, 1 for
anything else. For a module that does not import or an `init` that raises, lines
``<role> [<name>]:   <file>:<line>, in <function>: <code>`` follow (the author's frames,
innermost last), then the exception.

SIGTERM or SIGINT drains (stop taking work, finish what is in flight, close NATS) and
exits 0 within the grace period (``--grace``, 25 s by default).

The event loop is uvloop's when it is importable (a dependency; it is not built for every
platform), else asyncio's own; ``KAI_EVENT_LOOP=asyncio`` forces asyncio's. On the chain
benchmark uvloop cut the per-message cost of every runner process (docs/performance.md).

With glibc, the process caps malloc at 2 arenas (``mallopt(M_ARENA_MAX, 2)``, as
``MALLOC_ARENA_MAX=2`` would; a ``MALLOC_ARENA_MAX`` in the environment wins): otherwise
every thread that allocates (grpc's, the sync-handler pool) gets an arena of its own, and
their fragmentation is what made the entrypoint's peak RSS grow most under load.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Protocol

from . import contract

EXIT_ENV = 2
EXIT_OTHER = 1
DEFAULT_GRACE = 25.0
M_ARENA_MAX = -8  # glibc's mallopt parameter number
MALLOC_ARENAS = 2


class Process(Protocol):
    async def start(self) -> None: ...
    async def stop(self, grace: float) -> None: ...


class _OneLine(logging.Formatter):
    """One line per record: tracebacks are folded onto the line."""

    def __init__(self, label: str) -> None:
        super().__init__(f"%(asctime)s.%(msecs)03d %(levelname)s {label}: %(message)s",
                         "%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def setup_logging(label: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine(label))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("nats").setLevel(logging.CRITICAL)  # reconnect noise; we log our own


async def serve(proc: Process, label: str, grace: float) -> int:
    log = logging.getLogger("runner")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(proc.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        log.info("signal received while starting: stopping")
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await _stop(proc, grace)
        return 0
    exc = starting.exception()
    if exc is not None:
        code = getattr(exc, "code", EXIT_OTHER)
        _say_cannot_start(label, exc)
        stopping.cancel()
        await _stop(proc, 2.0)
        return code if isinstance(code, int) else EXIT_OTHER
    await stopping
    log.info("stopping: draining in-flight work (grace %.0fs)", grace)
    await _stop(proc, grace)
    log.info("stopped")
    return 0


def _say_cannot_start(label: str, exc: BaseException) -> None:
    """The one-line reason, then the error's `details` lines (where the author's code
    failed: ``file:line, in function: code`` lines, then the exception), each indented."""
    reason = str(exc) or type(exc).__name__
    if reason.startswith(label + ": "):
        reason = reason[len(label) + 2:]
    lines = [f"{label}: cannot start: {reason}"]
    lines += [f"{label}:   {line}" for line in getattr(exc, "details", ())]
    print("\n".join(lines), file=sys.stderr, flush=True)


async def _stop(proc: Process, grace: float) -> None:
    try:
        await asyncio.wait_for(proc.stop(max(0.1, grace - 2.0)), grace)
    except Exception as exc:
        logging.getLogger("runner").warning("unclean stop: %s", exc or type(exc).__name__)


def loop_factory(environ: dict[str, str] | os._Environ[str] = os.environ,
                 ) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """The event loop to run on: ("uvloop", its factory), or ("asyncio", None)."""
    if environ.get(contract.ENV_EVENT_LOOP, "").strip().lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", None


def limit_malloc_arenas(environ: dict[str, str] | os._Environ[str] = os.environ,
                        arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas before any thread starts; False where that is not possible."""
    if environ.get("MALLOC_ARENA_MAX"):
        return False  # glibc has read it at start-up; the environment's choice wins
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc and musl have it; macOS does not
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runner",
        description="Run one process of a KAI version (settings come from KAI_* variables).")
    parser.add_argument("role", choices=[contract.ROLE_NODE, contract.ROLE_ENTRYPOINT],
                        help="node: run the node KAI_NODE; entrypoint: serve the rpcs over gRPC")
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE,
                        help="seconds to drain on SIGTERM before exiting (default 25)")
    args = parser.parse_args(argv)
    try:
        env = contract.RunnerEnv.from_environ()
    except contract.ContractError as exc:
        print(f"{args.role}: cannot start: {exc}", file=sys.stderr, flush=True)
        return EXIT_ENV
    label = f"node {env.node}" if args.role == contract.ROLE_NODE else "entrypoint"
    setup_logging(label, env.log_level)
    started = time.monotonic()
    limit_malloc_arenas()  # before grpc, NATS or the handler pool start any thread
    proc: Process
    try:
        if args.role == contract.ROLE_NODE:
            from . import node

            proc = node.prepare(env)
        else:
            from . import entrypoint

            proc = entrypoint.prepare(env)
    except Exception as exc:
        code = getattr(exc, "code", EXIT_ENV)
        _say_cannot_start(label, exc)
        return code if isinstance(code, int) else EXIT_ENV
    loop_name, factory = loop_factory()
    logging.getLogger("runner").debug("prepared in %.3fs; event loop: %s",
                                      time.monotonic() - started, loop_name)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve(proc, label, args.grace))


if __name__ == "__main__":
    rc = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate()
           if t is not threading.main_thread()):
        os._exit(rc)  # a sync handler still runs in a worker thread: do not wait for it
    sys.exit(rc)
