"""The node process: load the author's module, consume the node's steps, pass results on.

Start-up, in order (any failure stops the process with a clear message, never later):

1. generate ``<proto stem>_pb2`` into a temporary directory put first on ``sys.path``
   (so a stale shipped ``*_pb2.py`` cannot break the node), then import the module from
   ``KAI_VERSION_DIR/KAI_HANDLER`` with its own folder on ``sys.path``;
2. check it defines ``handler(ctx, data)`` (``init(ctx)`` is optional; both sync or async);
3. connect to NATS, create the workflows' streams and this node's durable consumers;
4. run ``init(ctx)`` once, then take messages and log ``node <name> ready``.

Per message (see runner.transport for the wire protocol): drop expired work; decode the
``Any`` (undecodable → INVALID_ARGUMENT); call the handler (``data`` is the ``Any``, or the
unpacked message when the parameter is annotated with a message class); publish the output
to the next step with ``Nats-Msg-Id = "<request id>:<next step>"`` — or, on the last step,
check the rpc's output type and answer the entrypoint inbox — and only then ack. A handler
exception answers INTERNAL ``node <name>: <message>``. Sync handlers run in a thread pool.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import importlib.util
import inspect
import logging
import os
import sys
import tempfile
import time
import typing
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client
from nats.aio.msg import Msg

from . import contract, metrics, transport
from .proto import ProtoError, compile_proto, generate_pb2
from .sdk import SCOPE, Context, Scope, Sink
from .web import WebServer

log = logging.getLogger("runner.node")

EXIT_LOAD = 2  # the module does not load, or has no handler
EXIT_INIT = 3  # init(ctx) failed
AnyMsg = any_pb2.Any
TYPE_URL_PREFIX = "type.googleapis.com/"
_TYPE_URLS: dict[Any, str] = {}


def _type_url(msg: Message) -> str:
    """The `Any` type URL of a message (what `Any.Pack` sets), cached per message type."""
    descriptor = msg.DESCRIPTOR
    url = _TYPE_URLS.get(descriptor)
    if url is None:
        url = _TYPE_URLS[descriptor] = TYPE_URL_PREFIX + descriptor.full_name
    return url


class StartupError(Exception):
    """The node cannot start; `code` is the process exit code."""

    def __init__(self, message: str, code: int = EXIT_LOAD) -> None:
        super().__init__(message)
        self.code = code


# --- loading the author's module -----------------------------------------------------


@dataclass(frozen=True)
class NodeModule:
    module: ModuleType
    handler: Callable[..., Any]
    init: Callable[..., Any] | None
    handler_async: bool
    init_async: bool
    data_type: type[Message] | None  # set when `data` is annotated with a message class


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None))  # noqa: B004 - callable objects with async __call__


def prepare_pb2(env: contract.RunnerEnv, tmp_root: str | None = None) -> Path:
    """Generate the version's `_pb2` modules and put them first on sys.path."""
    out = Path(tempfile.mkdtemp(prefix="kai-pb2-", dir=tmp_root or _tmp_root()))
    try:
        entry = generate_pb2(Path(env.version_dir), env.proto, out)
    except ProtoError as exc:
        raise StartupError(f"the proto {env.proto} does not compile: {exc}") from None
    for folder in (str(out), str(entry.parent)):
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)
    return out


def _tmp_root() -> str:
    return os.environ.get("TMPDIR") or contract.TMP_DIR


def load_module(env: contract.RunnerEnv) -> NodeModule:
    """Import the node's module and find its handler (and init)."""
    if not env.handler:
        raise StartupError(f"{contract.ENV_HANDLER} is not set: which file holds the handler?")
    path = Path(env.version_dir) / env.handler
    if path.is_dir():
        path = path / "__init__.py"
    if not path.is_file():
        raise StartupError(f"node {env.node}: handler file {env.handler} not found "
                           f"in {env.version_dir}")
    folder = str(path.parent)
    if folder not in sys.path:
        # After the generated pb2 folders, before site-packages.
        generated = sum(1 for p in sys.path[:2] if "kai-pb2-" in p)
        sys.path.insert(generated, folder)
    name = path.stem if path.name != "__init__.py" else path.parent.name
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise StartupError(f"node {env.node}: cannot import {env.handler}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # SyntaxError, ImportError, SystemExit, anything at import
        where = ""
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == str(path):
                where = f" (line {tb.tb_lineno})"
            tb = tb.tb_next
        if isinstance(exc, SyntaxError):
            where = f" (line {exc.lineno})"
        raise StartupError(f"node {env.node}: importing {env.handler} failed{where}: "
                           f"{type(exc).__name__}: {exc}") from None
    handler = getattr(module, "handler", None)
    if not callable(handler):
        raise StartupError(f"node {env.node}: {env.handler} defines no handler(ctx, data) "
                           "function")
    init = getattr(module, "init", None)
    if init is not None and not callable(init):
        raise StartupError(f"node {env.node}: `init` in {env.handler} is not a function")
    return NodeModule(module, handler, init, _is_async(handler),
                      init is not None and _is_async(init), _data_type(env, handler))


def _data_type(env: contract.RunnerEnv, handler: Callable[..., Any]) -> type[Message] | None:
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        return None
    if len(params) < 2:
        raise StartupError(f"node {env.node}: handler must take two arguments (ctx, data)")
    annotation = params[1].annotation
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):
        try:
            annotation = typing.get_type_hints(handler).get(params[1].name)
        except Exception as exc:
            raise StartupError(f"node {env.node}: cannot resolve the annotation "
                               f"{params[1].annotation!r} of handler's data: {exc}") from None
    if isinstance(annotation, type) and issubclass(annotation, Message):
        if annotation.DESCRIPTOR.full_name == AnyMsg.DESCRIPTOR.full_name:
            return None
        return annotation
    return None


# --- routes: where this node sits in each workflow ------------------------------------


@dataclass(frozen=True)
class Route:
    workflow: str
    rpc: str
    step: int
    stream: str
    consumer: str
    next_subject: str | None  # None on the last step
    next_step: int
    output_type: str  # the rpc's output type (full name), checked on the last step


def routes_of(env: contract.RunnerEnv) -> list[Route]:
    try:
        compiled = compile_proto(Path(env.version_dir), env.proto)
    except ProtoError as exc:
        raise StartupError(f"the proto {env.proto} does not compile: {exc}") from None
    methods = compiled.methods()
    out = []
    for wf in env.workflows:
        for step, name in enumerate(wf.chain):
            if name != env.node:
                continue
            method = methods.get(wf.rpc)
            if method is None:
                raise StartupError(f"workflow {wf.name}: rpc {wf.rpc} is not in {env.proto}")
            last = step == len(wf.chain) - 1
            out.append(Route(
                workflow=wf.name,
                rpc=wf.rpc,
                step=step,
                stream=contract.stream_name(env.project, env.version, wf.name),
                consumer=contract.consumer_name(step, name),
                next_subject=None if last else contract.step_subject(
                    env.project, env.version, wf.name, step + 1),
                next_step=step + 1,
                output_type=method.output_type.full_name,
            ))
    if not out:
        raise StartupError(f"node {env.node} is in no workflow's chain")
    return out


# --- the running node -------------------------------------------------------------------


@dataclass
class NodeProcess:
    env: contract.RunnerEnv
    mod: NodeModule
    routes: list[Route]
    concurrency: int = contract.DEFAULT_CONCURRENCY
    bind_host: str = contract.DEFAULT_BIND_HOST
    nc: Client | None = None
    ctx: Context | None = None
    web: WebServer | None = None
    pullers: list[transport.Puller] = field(default_factory=list)
    connected: bool = False
    streams_ok: bool = False
    started: bool = False
    stopping: bool = False
    _pool: ThreadPoolExecutor | None = None
    _inflight: dict[int, tuple[Msg, float]] = field(default_factory=dict)
    _reensure: transport.Reensure | None = None
    _ticker: asyncio.Task[None] | None = None
    _publisher: transport.Publisher | None = None
    _counters: dict[tuple[str, str], Any] = field(default_factory=dict)
    _latency: Any = None

    def _count(self, route: Route, outcome: str) -> None:
        counter = self._counters.get((route.workflow, outcome))
        if counter is None:
            counter = metrics.MESSAGES.labels(self.name, route.workflow, outcome)
            self._counters[(route.workflow, outcome)] = counter
        counter.inc()

    @property
    def name(self) -> str:
        return self.env.node or ""

    def ready(self) -> bool:
        return self.started and self.connected and self.streams_ok and not self.stopping

    async def start(self) -> None:
        self._latency = metrics.HANDLER_SECONDS.labels(self.name)
        self.web = WebServer.probes(self.bind_host, self.env.web_port, self.ready)
        await self.web.start()
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency,
                                        thread_name_prefix=f"node-{self.name}")
        self.nc = await transport.connect(
            self.env.nats_url, f"kai-node-{self.env.version}-{self.name}",
            transport.ConnectionEvents(self._on_disconnect, self._on_reconnect))
        self.connected = True
        await self._ensure()
        self._publisher = transport.Publisher(self.nc)
        await self._publisher.start()
        self.ctx = Context(self.env, data_sink(self.nc, self.env))
        await self._run_init()
        for route in self.routes:
            puller = transport.Puller(
                self.nc, route.stream, route.consumer, self._handler_for(route),
                max_inflight=self.concurrency, on_lost=self._ensure_soon)
            await puller.start()
            self.pullers.append(puller)
        self._ticker = asyncio.create_task(self._keep_alive())
        self.started = True
        log.info("node %s ready (web :%d)", self.name, self.web.port)

    async def _ensure(self) -> None:
        assert self.nc is not None
        jsm = self.nc.jsm(timeout=transport.JS_TIMEOUT)
        await transport.ensure_data_stream(jsm, self.env)
        for route in self.routes:
            await transport.ensure_work_stream(jsm, self.env, route.workflow)
            await transport.ensure_consumer(jsm, self.env, route.workflow, route.step, self.name)
        self.streams_ok = True

    async def _ensure_and_pull(self) -> None:
        await self._ensure()
        for p in self.pullers:
            p.reset()

    def _ensure_soon(self) -> None:
        if self._reensure is None:

            def failed() -> None:
                self.streams_ok = False

            self._reensure = transport.Reensure(
                self._ensure_and_pull,
                lambda: not self.stopping and self.nc is not None and self.nc.is_connected,
                failed)
        self._reensure.soon()

    async def _on_disconnect(self) -> None:
        self.connected = False

    async def _on_reconnect(self) -> None:
        self.connected = True
        for p in self.pullers:
            p.reset()
        self._ensure_soon()

    async def _run_init(self) -> None:
        init = self.mod.init
        if init is None:
            return
        assert self.ctx is not None
        try:
            if self.mod.init_async:
                await init(self.ctx)
            else:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(
                    self._pool, contextvars.copy_context().run, init, self.ctx)
                if inspect.isawaitable(result):
                    await result
        except Exception as exc:
            raise StartupError(f"node {self.name}: init failed: {type(exc).__name__}: {exc}",
                               EXIT_INIT) from exc

    async def _keep_alive(self) -> None:
        """Tell the server that long handlers are still working (so no redelivery)."""
        period = max(0.5, self.env.ack_wait / 3)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for msg, started in list(self._inflight.values()):
                if now - started >= period:
                    try:
                        await msg.in_progress()
                    except Exception:
                        pass

    def _handler_for(self, route: Route) -> Callable[[Msg], Any]:
        return functools.partial(self._handle, route=route)

    async def _call(self, arg: Any) -> Any:
        assert self.ctx is not None
        if self.mod.handler_async:
            return await self.mod.handler(self.ctx, arg)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            self._pool, contextvars.copy_context().run, self.mod.handler, self.ctx, arg)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _fail(self, msg: Msg, route: Route, request_id: str, reply: str, code: str,
                    message: str, outcome: str) -> None:
        assert self.nc is not None
        log.warning("request %s: %s %s", request_id, code, message)
        await transport.reply_status(self.nc, reply, code, message)
        await msg.ack()
        self._count(route, outcome)

    async def _handle(self, msg: Msg, route: Route) -> None:
        key = id(msg)
        self._inflight[key] = (msg, time.monotonic())
        try:
            await self._step(msg, route)
        finally:
            del self._inflight[key]

    async def _step(self, msg: Msg, route: Route) -> None:
        hdrs = msg.headers or {}
        request_id = transport.request_id_of(hdrs)
        reply = hdrs.get(contract.HDR_REPLY, "")
        raw_deadline = hdrs.get(contract.HDR_DEADLINE)
        try:
            deadline = float(raw_deadline) if raw_deadline else 0.0
        except ValueError:
            deadline = 0.0
        if deadline and time.time() >= deadline:
            await msg.ack()
            self._count(route, metrics.EXPIRED)
            return
        SCOPE.set(Scope(request_id, route.workflow))
        name = self.name
        try:
            data = AnyMsg.FromString(msg.data)
            arg: Any = data
            if self.mod.data_type is not None:
                arg = self.mod.data_type()
                if not data.Unpack(arg):
                    got = data.TypeName() or "nothing"
                    return await self._fail(
                        msg, route, request_id, reply, "INTERNAL",
                        f"node {name}: received {got}, but its handler's data is annotated "
                        f"{arg.DESCRIPTOR.full_name}", metrics.ERROR)
        except DecodeError as exc:
            return await self._fail(msg, route, request_id, reply, "INVALID_ARGUMENT",
                                    f"node {name}: cannot decode its input: {exc}",
                                    metrics.INVALID)
        started = time.perf_counter()
        try:
            out = await self._call(arg)
        except DecodeError as exc:
            return await self._fail(msg, route, request_id, reply, "INVALID_ARGUMENT",
                                    f"node {name}: cannot decode its input: {exc}",
                                    metrics.INVALID)
        except Exception as exc:
            self.ctx.logger.exception("handler failed")  # type: ignore[union-attr]
            return await self._fail(msg, route, request_id, reply, "INTERNAL",
                                    f"node {name}: {exc}" if str(exc)
                                    else f"node {name}: {type(exc).__name__}", metrics.ERROR)
        finally:
            self._latency.observe(time.perf_counter() - started)
        if deadline and time.time() >= deadline:
            await msg.ack()  # the entrypoint has answered DEADLINE_EXCEEDED already
            self._count(route, metrics.EXPIRED)
            return
        if not isinstance(out, Message):
            return await self._fail(
                msg, route, request_id, reply, "INTERNAL",
                f"node {name} returned {type(out).__name__}, expected a protobuf message"
                + (f" of type {route.output_type}" if route.next_subject is None else ""),
                metrics.ERROR)
        if route.next_subject is None:
            return await self._answer(msg, route, request_id, reply, out)
        payload = AnyMsg(type_url=_type_url(out),
                         value=out.SerializeToString()).SerializeToString()
        # Only the serialized output stays alive while it is being stored: with 32 messages
        # in flight, every copy of a large payload held across that wait adds up.
        del data, arg, out
        await self._forward(msg, route, request_id, reply, raw_deadline, deadline, payload)

    async def _answer(self, msg: Msg, route: Route, request_id: str, reply: str,
                      out: Message) -> None:
        nc = self.nc
        assert nc is not None
        got = out.DESCRIPTOR.full_name
        if got != route.output_type:
            return await self._fail(
                msg, route, request_id, reply, "INTERNAL",
                f"node {self.name} returned {got}, but rpc {route.rpc} returns "
                f"{route.output_type}", metrics.ERROR)
        payload = out.SerializeToString()
        size = len(payload) if len(payload) > nc.max_payload else 0
        if size:
            return await self._fail(
                msg, route, request_id, reply, "RESOURCE_EXHAUSTED",
                f"node {self.name}: the reply is {size} bytes, over the NATS server's max "
                f"payload of {nc.max_payload} bytes", metrics.TOO_LARGE)
        if reply:
            await nc.publish(reply, payload)  # no headers: success
        await msg.ack()
        self._count(route, metrics.OK)

    async def _forward(self, msg: Msg, route: Route, request_id: str, reply: str,
                       raw_deadline: str | None, deadline: float, payload: bytes) -> None:
        """Store the step's output (a serialized `Any`) as the next step's input, then ack."""
        nc = self.nc
        assert nc is not None and route.next_subject is not None
        headers = {
            contract.HDR_MSG_ID: f"{request_id}:{route.next_step}",
            contract.HDR_DEADLINE: raw_deadline
            or repr(time.time() + self.env.request_timeout),
            contract.HDR_REPLY: reply,
        }
        size = transport.over_limit(nc, payload, headers)
        if size:
            return await self._fail(
                msg, route, request_id, reply, "RESOURCE_EXHAUSTED",
                f"node {self.name}: its output is {size} bytes, over the NATS server's max "
                f"payload of {nc.max_payload} bytes", metrics.TOO_LARGE)
        until = deadline or time.time() + self.env.request_timeout
        assert self._publisher is not None
        stored = await transport.publish_until(self._publisher, route.next_subject, payload,
                                               headers, until, self._is_stopping)
        await msg.ack()  # stored, or too late to matter (the client has its answer)
        outcome = metrics.OK if stored else metrics.EXPIRED
        self._count(route, outcome)

    def _is_stopping(self) -> bool:
        return self.stopping

    async def stop(self, grace: float) -> None:
        """Drain: stop fetching, finish in-flight messages, close NATS."""
        self.stopping = True
        end = time.monotonic() + grace
        if self._ticker is not None:
            self._ticker.cancel()
        await asyncio.gather(*(p.stop(max(0.1, end - time.monotonic())) for p in self.pullers))
        if self.ctx is not None:
            await self.ctx.drain(max(0.1, min(5.0, end - time.monotonic())))
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.flush(), max(0.1, min(2.0, end - time.monotonic())))
            except Exception:
                pass
            await self.nc.close()
        if self.web is not None:
            await self.web.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def data_sink(nc: Client, env: contract.RunnerEnv) -> Sink:
    """Where `ctx` stores records: the project's data stream, over this connection."""
    js = nc.jetstream(timeout=transport.JS_TIMEOUT)
    jsm = nc.jsm(timeout=transport.JS_TIMEOUT)
    data_stream = contract.data_stream_name(env.project)

    async def publish(subject: str, record: bytes) -> None:
        await js.publish(subject, record, timeout=transport.JS_TIMEOUT)

    async def scan(subject: str) -> list[bytes]:
        return await transport.scan(nc, jsm, data_stream, subject)

    return Sink(publish, scan, asyncio.get_running_loop())


def concurrency_from(environ: dict[str, str] | os._Environ[str]) -> int:
    raw = environ.get(contract.ENV_CONCURRENCY, "")
    try:
        value = int(raw) if raw else contract.DEFAULT_CONCURRENCY
    except ValueError:
        raise StartupError(f"{contract.ENV_CONCURRENCY}={raw!r} is not a number") from None
    return max(1, value)


def prepare(env: contract.RunnerEnv) -> NodeProcess:
    """Everything that can fail before connecting: pb2, module, handler, routes."""
    if not env.node:
        raise StartupError(f"{contract.ENV_NODE} is not set: which node is this?")
    prepare_pb2(env)
    mod = load_module(env)
    routes = routes_of(env)
    return NodeProcess(env, mod, routes, concurrency=concurrency_from(os.environ),
                       bind_host=os.environ.get(contract.ENV_BIND_HOST)
                       or contract.DEFAULT_BIND_HOST)
