"""A tiny HTTP/1.1 server for probes, metrics and the proto (asyncio streams, no framework).

Routes are exact paths answering GET (and HEAD). Every response closes the connection,
which is all that probes, Prometheus and `curl` need.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("runner.web")

TEXT = "text/plain; charset=utf-8"
READ_TIMEOUT = 10.0
REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request",
           503: "Service Unavailable", 500: "Internal Server Error"}


@dataclass(frozen=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = TEXT


Route = Callable[[], Awaitable[Response]]


def text(body: str, status: int = 200) -> Response:
    return Response(status, body.encode(), TEXT)


@dataclass
class WebServer:
    """Serve `routes` on host:port. `port=0` picks a free port (see `.port` after start)."""

    host: str
    port: int
    routes: dict[str, Route] = field(default_factory=dict)
    _server: asyncio.Server | None = None

    @classmethod
    def probes(cls, host: str, port: int, ready: Callable[[], bool],
               reason: Callable[[], str] | None = None) -> WebServer:
        """A server with /healthz, /readyz and /metrics.

        /readyz answers from `ready()` and `reason()` (why not), which must not wait for
        anything: 200 "ready", or 503 "not ready: <reason>".
        """

        async def healthz() -> Response:
            return text("ok\n")

        async def readyz() -> Response:
            if ready():
                return text("ready\n")
            why = reason() if reason is not None else ""
            return text(f"not ready: {why}\n" if why else "not ready\n", 503)

        async def metrics() -> Response:
            return Response(200, generate_latest(), CONTENT_TYPE_LATEST)

        return cls(host, port, {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics})

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except TimeoutError:
                pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split()
            if len(parts) != 3:
                response = text("bad request\n", 400)
                method = "GET"
            else:
                method, target = parts[0], parts[1]
                path = target.split("?", 1)[0]
                route = self.routes.get(path)
                if route is None:
                    response = text("not found\n", 404)
                elif method not in ("GET", "HEAD"):
                    response = text("method not allowed\n", 405)
                else:
                    try:
                        response = await route()
                    except Exception:
                        log.exception("web route %s failed", path)
                        response = text("internal error\n", 500)
            reason = REASONS.get(response.status, "")
            header = (
                f"HTTP/1.1 {response.status} {reason}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode("latin-1")
            writer.write(header if method == "HEAD" else header + response.body)
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            writer.close()
