"""What the entrypoint and the node processes share: the transport connection and its state,
re-creating streams and consumers after a reconnect, and the web server with the probes.

A process is ready when it is connected, its streams (and consumers) exist, it has started
and it is not stopping (the entrypoint adds that every node takes work: runner.readiness);
``/readyz`` answers 200 exactly then, and 503 with the reason otherwise. After a reconnect,
or when the broker seems to have lost a stream or the consumer's requests,
:meth:`ensure_soon` re-creates them in the background (:class:`Reensure`), one series at a
time, with backoff.
Settings (bind host, concurrency, ack wait ...) come from ``contract.RunnerEnv``. A process
traces (``tracing``, runner.tracing) only when its environment turns tracing on, and
exports the spans still waiting when it closes.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from . import contract
from .transport import ConnectionEvents, Transport
from .web import Route, WebServer

if TYPE_CHECKING:
    from .tracing import Tracing

log = logging.getLogger("runner.process")


def tracing_from_env(env: contract.RunnerEnv) -> Tracing | None:
    """The process's tracing (runner.tracing) when its environment turns tracing on, else
    None; OpenTelemetry is imported only then."""
    if not env.tracing:
        return None
    from . import tracing

    return tracing.from_env(env)


class Reensure:
    """Re-create streams and consumers in the background, with backoff, one series at a time.

    Called after a reconnect, or when a stream or pull requests vanish (a NATS restart
    with memory storage, an operator deleting a stream). `ensure` does the work; `live`
    says whether it is still worth trying (not stopping, connected).
    """

    DELAYS = (0.0, 0.5, 1.0, 2.0, 5.0)

    def __init__(self, ensure: Callable[[], Awaitable[None]], live: Callable[[], bool]) -> None:
        self._ensure = ensure
        self._live = live
        self._task: asyncio.Task[None] | None = None

    def soon(self) -> None:
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.create_task(self._again(), name="re-ensure streams")

    async def _again(self) -> None:
        for delay in self.DELAYS:
            await asyncio.sleep(delay)
            if not self._live():
                return
            try:
                await self._ensure()
                return
            except Exception as exc:
                log.warning("re-creating streams and consumers failed: %s", exc)


class RunnerProcess(abc.ABC):
    """The base of the entrypoint and the node: connection state, re-ensure, probes."""

    def __init__(self, env: contract.RunnerEnv, transport: Transport,
                 tracing: Tracing | None = None) -> None:
        self.env = env
        self.transport = transport
        self.tracing = tracing  # None: tracing is off (the untraced code paths)
        self.connected = False
        self.streams_ok = False
        self.started = False
        self.stopping = False
        self.web: WebServer | None = None
        self._reensure = Reensure(self.ensure, self._live)

    @property
    def bind_host(self) -> str:
        return self.env.bind_host

    def ready(self) -> bool:
        return self.started and self.connected and self.streams_ok and not self.stopping

    def not_ready_reason(self) -> str:
        """Why the process is not ready ("" when nothing of its own stops it)."""
        if self.stopping:
            return "stopping"
        if not self.connected:
            return "not connected to NATS"
        if not self.streams_ok:
            return "its streams and consumers are not there yet"
        if not self.started:
            return "starting"
        return ""

    def _live(self) -> bool:
        return not self.stopping and self.transport.is_connected

    async def start_web(self, port: int, routes: Mapping[str, Route] | None = None) -> WebServer:
        """Serve /healthz, /readyz and /metrics, and `routes`, on the bind host."""
        web = WebServer.probes(self.bind_host, port, self.ready, self.not_ready_reason)
        web.routes.update(routes or {})
        await web.start()
        self.web = web
        return web

    async def connect(self, name: str) -> None:
        await self.transport.connect(name, ConnectionEvents(self._on_disconnect,
                                                            self._on_reconnect))
        self.connected = True
        await self.state_changed()

    async def ensure(self) -> None:
        """Create (or find) every stream and consumer this process needs; sets streams_ok."""
        try:
            await self.ensure_streams()
            self.streams_ok = True
        except Exception:
            self.streams_ok = False
            raise
        finally:
            await self.state_changed()

    def ensure_soon(self) -> None:
        self._reensure.soon()

    @abc.abstractmethod
    async def ensure_streams(self) -> None:
        """The process's own streams and consumers (idempotent)."""

    async def state_changed(self) -> None:
        """Called when readiness may have changed (the entrypoint updates gRPC health)."""
        return None

    async def reconnected(self) -> None:
        """Called after a reconnect, before the streams are ensured again."""
        return None

    async def _on_disconnect(self) -> None:
        self.connected = False
        await self.state_changed()

    async def _on_reconnect(self) -> None:
        self.connected = True
        await self.state_changed()
        await self.reconnected()
        self.ensure_soon()

    async def close(self, grace: float) -> None:
        """Close the transport (flushing for up to `grace` seconds) and the web server."""
        await self.transport.close(flush_timeout=max(0.1, min(2.0, grace)))
        if self.web is not None:
            await self.web.close()
        if self.tracing is not None:  # export the spans still waiting
            from .tracing import SHUTDOWN_TIMEOUT

            try:
                await asyncio.wait_for(asyncio.to_thread(self.tracing.shutdown),
                                       SHUTDOWN_TIMEOUT + 1.0)
            except Exception as exc:
                log.warning("tracing: the last spans were not exported: %s",
                            exc or type(exc).__name__)
