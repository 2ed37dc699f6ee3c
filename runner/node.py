"""The node process: load the author's module, consume the node's steps, pass results on.

Start-up, in order (any failure stops the process with a clear message, never later):

1. generate ``<stem>_pb2`` for the proto and every proto it imports into a temporary
   directory (``kai-pb2-<pid>-*``, deleted when the process ends) put first on ``sys.path``
   (so a stale shipped ``*_pb2.py`` cannot break the node), then import the module from
   ``KAI_VERSION_DIR/KAI_HANDLER`` with its own folder, then the version's ``src/``, on
   ``sys.path``;
2. check it defines ``handler(ctx, data)`` (``init(ctx)`` is optional; both sync or async);
3. connect to NATS, create the workflows' streams and this node's durable consumers;
4. run ``init(ctx)`` once, then take messages and log ``node <name> ready``.

Per message (a ``transport.Delivery``; runner.transport.nats has the wire protocol): drop
expired work; decode the ``Any`` (undecodable → INVALID_ARGUMENT); call the handler
(``data`` is the ``Any``, or the unpacked message when the parameter is annotated with a
message class); store the output as the next step's input, with the message id
``"<request id>:<next step>"`` — or, on the last step, check the rpc's output type and
answer the entrypoint inbox — and only then ack. While the handler runs, the message is
kept alive (``in_progress`` every ack wait / 4), so only a dead replica's work is delivered
again. A handler that raises ``sdk.Abort`` answers its code and message; any other
exception answers INTERNAL ``node <name>: <message>``. Sync handlers run in a thread pool.

Metrics (runner.metrics): per route, the step's time, the handler's, and the queue wait
before it (from the message being stored, ``Delivery.published``, to the handler's start).
Tracing (runner.tracing, only when the environment turns it on): each step runs in a
CONSUMER span, a child of the context its message carries, and its output's message carries
this span's.

A step of an at-most-once workflow (``delivery: at-most-once``) comes as a call of its queue
group instead (``Transport.serve``, runner.transport.core), and its output goes on as a call
(``Transport.call_step``): no stream, consumer or ack, nothing delivered again; the handling
in between is the same.

A node process does not import grpc (about 9 MB of memory): the status codes of its errors
are looked up when an error happens (``StepError.of``), and a handler that raises ``Abort``
has imported grpc itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import importlib.util
import inspect
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
import typing
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from . import contract, metrics
from .process import RunnerProcess, tracing_from_env
from .proto import ProtoError, compile_proto, generate_pb2
from .sdk import NO_SCOPE, SCOPE, Abort, Context, Scope, Sink
from .transport import (
    Consumer,
    Delivery,
    StepError,
    Transport,
    TransportError,
    open_transport,
    publish_until,
    step_headers,
)

if TYPE_CHECKING:
    from .tracing import Tracing

log = logging.getLogger("runner.node")

EXIT_LOAD = 2  # the module does not load, or has no handler
EXIT_INIT = 3  # init(ctx) failed
SHARED_SRC = "src"  # the version's folder of code shared by its nodes, on sys.path
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
    """The node cannot start; `code` is the process exit code, `details` the lines shown
    under the one-line message (where the author's code failed)."""

    def __init__(self, message: str, code: int = EXIT_LOAD,
                 details: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


MAX_FRAMES = 10  # the innermost frames of the author's code shown for a start-up failure


def user_traceback(exc: BaseException, version_dir: str) -> tuple[str, ...]:
    """Where `exc` came from in the version's own files, innermost last, then the exception:

        src/etl/main.py:12, in init: table = load(ctx.path("table.json"))
        src/common/text.py:3, in load: return TABLES[lang]
        KeyError: 'fr'

    Frames outside the version (the runner, the standard library, packages) are left out;
    paths are relative to the version. At most MAX_FRAMES frames, the innermost.
    """
    root = os.path.realpath(version_dir) + os.sep
    frames: list[str] = []
    for frame in traceback.extract_tb(exc.__traceback__):
        file = os.path.realpath(frame.filename)
        if not file.startswith(root):
            continue
        code = f": {frame.line.strip()}" if frame.line and frame.line.strip() else ""
        frames.append(f"{file[len(root):]}:{frame.lineno}, in {frame.name}{code}")
    if len(frames) > MAX_FRAMES:
        frames = [f"... {len(frames) - MAX_FRAMES} more", *frames[-MAX_FRAMES:]]
    exception = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return (*frames, exception)


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


PB2_PREFIX = "kai-pb2-"  # the generated modules' folder: kai-pb2-<pid>-<random>
_OWN_PB2: set[str] = set()  # the folders this process made and has not removed


def prepare_pb2(env: contract.RunnerEnv, tmp_root: str | None = None) -> Path:
    """Generate the version's `_pb2` modules and put their folders first on sys.path.

    The folder, ``<tmp>/kai-pb2-<pid>-<random>``, is the process's own: :func:`remove_pb2`
    deletes it when the process ends, and folders left by processes that are gone (killed)
    are deleted here first.
    """
    root = tmp_root or _tmp_root()
    remove_stale_pb2(root)
    out = Path(tempfile.mkdtemp(prefix=f"{PB2_PREFIX}{os.getpid()}-", dir=root))
    _OWN_PB2.add(str(out))
    try:
        modules = generate_pb2(Path(env.version_dir), env.proto, out)
    except ProtoError as exc:
        remove_pb2(out)
        raise StartupError(f"the proto {env.proto} does not compile: {exc}") from None
    folders = list(dict.fromkeys([str(out), *(str(m.parent) for m in modules)]))
    for folder in reversed(folders):
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)
    return out


def remove_pb2(folder: Path | None) -> None:
    """Delete a folder of generated modules (what is already imported stays loaded)."""
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        _OWN_PB2.discard(str(folder))


def remove_stale_pb2(tmp_root: str) -> None:
    """Delete the `kai-pb2-<pid>-*` folders of processes that no longer run.

    A folder with this process's own pid that it did not make is stale too: it was left by
    an earlier process with the same pid (a restarted container, where the node is pid 1).
    """
    try:
        entries = list(os.scandir(tmp_root))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(PB2_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        pid_text = entry.name[len(PB2_PREFIX):].partition("-")[0]
        if not pid_text.isdigit():
            continue  # not named by pid (an older runner's): its owner cannot be told
        pid = int(pid_text)
        if os.path.abspath(entry.path) in _OWN_PB2:
            continue
        if pid == os.getpid() or not _alive(pid):
            shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user
        return True
    return True


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
    # After the generated pb2 folders, before site-packages: the node's own folder, then
    # the version's src/ (code shared by the nodes: src/common/text.py is `common.text`).
    generated = 0
    while generated < len(sys.path) and PB2_PREFIX in sys.path[generated]:
        generated += 1
    shared = Path(env.version_dir) / SHARED_SRC
    for folder in (str(path.parent), *([str(shared)] if shared.is_dir() else [])):
        if folder not in sys.path:
            sys.path.insert(generated, folder)
        generated = sys.path.index(folder) + 1
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
        details = () if isinstance(exc, SyntaxError) else user_traceback(exc, env.version_dir)
        raise StartupError(f"node {env.node}: importing {env.handler} failed{where}: "
                           f"{type(exc).__name__}: {exc}", details=details) from None
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
    # at most once: the step's calls arrive on `subject`, in queue group `consumer`, and its
    # output goes on as a call to `next_subject` (runner.transport.core); stream is ""
    at_most_once: bool = False
    subject: str = ""  # the subject of the step's input


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
            amo = wf.at_most_once  # core NATS calls in a queue group, no stream
            out.append(Route(
                workflow=wf.name,
                rpc=wf.rpc,
                step=step,
                stream="" if amo else contract.stream_name(env.project, env.version, wf.name),
                consumer=contract.queue_group(env.project, env.version, wf.name, step, name)
                if amo else contract.consumer_name(step, name),
                next_subject=None if last else contract.input_subject(
                    env.project, env.version, wf, step + 1),
                next_step=step + 1,
                output_type=method.output_type.full_name,
                at_most_once=amo,
                subject=contract.input_subject(env.project, env.version, wf, step),
            ))
    if not out:
        raise StartupError(f"node {env.node} is in no workflow's chain")
    return out


# --- calling the author's functions ----------------------------------------------------


async def invoke(fn: Callable[..., Any], is_async: bool, pool: Executor | None, scope: Scope,
                 *args: Any) -> Any:
    """Call the author's `handler` or `init` in `scope` (what `ctx.request_id` and the log
    prefix see), and reset the scope afterwards.

    An async function is awaited on the loop; a sync one runs in `pool` (a worker thread,
    with a copy of the context, so it sees the scope too); an awaitable it returns is
    awaited.
    """
    token = SCOPE.set(scope)
    try:
        if is_async:
            return await fn(*args)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(pool, contextvars.copy_context().run, fn, *args)
        if inspect.isawaitable(result):
            result = await result
        return result
    finally:
        SCOPE.reset(token)


_OUTCOMES = {"INVALID_ARGUMENT": metrics.INVALID, "RESOURCE_EXHAUSTED": metrics.TOO_LARGE}


def _outcome(error: StepError) -> str:
    return _OUTCOMES.get(error.code.name, metrics.ERROR)


def _handler_error(name: str, exc: Exception) -> StepError:
    """What the client is told when the handler raised `exc`."""
    if isinstance(exc, Abort):
        return StepError(exc.code, exc.message)
    if isinstance(exc, DecodeError):
        return StepError.of("INVALID_ARGUMENT", f"node {name}: cannot decode its input: {exc}")
    return StepError.of("INTERNAL", f"node {name}: {exc}" if str(exc)
                        else f"node {name}: {type(exc).__name__}")


# --- the running node -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Timers:
    """A route's histograms (runner.metrics), labelled once."""

    step: Any
    handler: Any
    queue_wait: Any


@dataclass(slots=True)
class _Working:
    """A delivery being worked on, and when it was last kept alive (monotonic seconds)."""

    delivery: Delivery
    alive_at: float


class NodeProcess(RunnerProcess):
    """One node process: a consumer per route, the handler on each delivery."""

    def __init__(self, env: contract.RunnerEnv, mod: NodeModule, routes: list[Route],
                 transport: Transport, tracing: Tracing | None = None) -> None:
        super().__init__(env, transport, tracing)
        self.mod = mod
        self.routes = routes
        self.concurrency = env.concurrency
        self.ctx: Context | None = None
        self.consumers: list[Consumer] = []
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: dict[int, _Working] = {}  # by id(delivery)
        self._ticker: asyncio.Task[None] | None = None
        self._counters: dict[tuple[str, str], Any] = {}
        self.pb2_dir: Path | None = None  # the generated modules, deleted by stop()

    def _count(self, route: Route, outcome: str) -> None:
        counter = self._counters.get((route.workflow, outcome))
        if counter is None:
            counter = metrics.MESSAGES.labels(self.env.version, route.workflow, self.name,
                                              outcome)
            self._counters[(route.workflow, outcome)] = counter
        counter.inc()

    @property
    def name(self) -> str:
        return self.env.node or ""

    async def start(self) -> None:
        web = await self.start_web(self.env.web_port)
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency,
                                        thread_name_prefix=f"node-{self.name}")
        await self.connect(f"kai-node-{self.env.version}-{self.name}")
        await self.ensure()
        self.ctx = Context(self.env, Sink(self.transport.save_record,
                                          self.transport.scan_records,
                                          asyncio.get_running_loop()))
        await self._run_init()
        for route in self.routes:
            if route.at_most_once:
                consumer = self.transport.serve(route.subject, route.consumer,
                                                self._handler_for(route), self.concurrency)
            else:
                consumer = self.transport.consume(route.stream, route.consumer,
                                                  self._handler_for(route), self.concurrency,
                                                  on_lost=self.ensure_soon)
            await consumer.start()
            self.consumers.append(consumer)
        self._ticker = asyncio.create_task(self._keep_alive())
        self.started = True
        log.info("node %s ready (web :%d)", self.name, web.port)

    async def ensure_streams(self) -> None:
        t = self.transport
        await t.ensure_data_stream()
        for route in self.routes:
            if route.at_most_once:
                continue  # no stream, no consumer
            await t.ensure_work_stream(route.workflow)
            await t.ensure_consumer(route.workflow, route.step, self.name)

    async def ensure(self) -> None:
        await super().ensure()
        for c in self.consumers:
            c.reset()

    async def reconnected(self) -> None:
        for c in self.consumers:
            c.reset()

    async def _run_init(self) -> None:
        init = self.mod.init
        if init is None:
            return
        try:
            await invoke(init, self.mod.init_async, self._pool, NO_SCOPE, self.ctx)
        except Exception as exc:
            raise StartupError(f"node {self.name}: init failed: {type(exc).__name__}: {exc}",
                               EXIT_INIT, user_traceback(exc, self.env.version_dir)) from exc

    async def _keep_alive(self) -> None:
        """Tell the broker that messages still being worked on are alive (so no redelivery).

        Every ack_wait / 4, each message not kept alive for that long gets ``in_progress``:
        no message goes more than half the ack wait without a sign of life.
        """
        period = max(0.05, self.env.ack_wait / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for work in list(self._inflight.values()):
                if now - work.alive_at >= period:
                    work.alive_at = now
                    try:
                        await work.delivery.in_progress()
                    except Exception:
                        pass

    def _handler_for(self, route: Route) -> Callable[[Delivery], Any]:
        labels = (self.env.version, route.workflow, self.name)
        timers = _Timers(metrics.STEP_SECONDS.labels(*labels),
                         metrics.HANDLER_SECONDS.labels(*labels),
                         metrics.QUEUE_WAIT_SECONDS.labels(*labels))
        if self.tracing is None:  # chosen once: no span, no trace headers per message
            return functools.partial(self._handle, route=route, timers=timers)
        attributes = self.tracing.step_attributes(
            route.workflow, self.name, route.step,
            contract.step_subject(self.env.project, self.env.version, route.workflow,
                                  route.step))
        return functools.partial(self._traced_handle, route=route, timers=timers,
                                 attributes=attributes)

    async def _traced_handle(self, d: Delivery, route: Route, timers: _Timers,
                             attributes: dict[str, Any]) -> None:
        """:meth:`_handle` in the step's span (runner.tracing), a child of the one whose
        context the message carries; the next step's message carries this one's."""
        assert self.tracing is not None
        span = self.tracing.step_span(self.name, route.workflow, d.headers, attributes,
                                      d.request_id)
        await self.tracing.run(span, self._handle(d, route, timers))

    async def _fail(self, d: Delivery, route: Route, error: StepError) -> None:
        log.warning("request %s: %s %s", d.request_id, error.code.name, error.message)
        if self.tracing is not None:
            self.tracing.current_failed(error)
        reply = d.reply
        if reply:
            await self.transport.reply_error(reply, error)
        await d.ack()
        self._count(route, _outcome(error))

    async def _handle(self, d: Delivery, route: Route, timers: _Timers) -> None:
        key = id(d)
        taken = time.monotonic()
        self._inflight[key] = _Working(d, taken)
        # The request's scope for all of its handling: ctx.logger lines outside the
        # handler (its failure) carry the request id too.
        scope = SCOPE.set(Scope(d.request_id, route.workflow))
        try:
            await self._step(d, route, timers)
        except StepError as error:
            await self._fail(d, route, error)
        finally:
            del self._inflight[key]
            SCOPE.reset(scope)
            timers.step.observe(time.monotonic() - taken)

    async def _step(self, d: Delivery, route: Route, timers: _Timers) -> None:
        deadline = d.deadline
        if deadline and time.time() >= deadline:
            await d.ack()
            self._count(route, metrics.EXPIRED)
            return
        name = self.name
        try:
            data = AnyMsg.FromString(d.payload)
        except DecodeError as exc:
            raise StepError.of("INVALID_ARGUMENT",
                               f"node {name}: cannot decode its input: {exc}") from None
        arg: Any = data
        if self.mod.data_type is not None:
            arg = self.mod.data_type()
            if not data.Unpack(arg):
                got = data.TypeName() or "nothing"
                raise StepError.of("INTERNAL", f"node {name}: received {got}, but its handler's "
                                   f"data is annotated {arg.DESCRIPTOR.full_name}")
        published = d.published
        if published:
            timers.queue_wait.observe(max(0.0, time.time() - published))
        started = time.perf_counter()
        try:
            out = await invoke(self.mod.handler, self.mod.handler_async, self._pool,
                               Scope(d.request_id, route.workflow), self.ctx, arg)
        except Exception as exc:
            if not isinstance(exc, (Abort, DecodeError)):
                self.ctx.logger.exception("handler failed")  # type: ignore[union-attr]
            raise _handler_error(name, exc) from None
        finally:
            timers.handler.observe(time.perf_counter() - started)
        if deadline and time.time() >= deadline:
            await d.ack()  # the entrypoint has answered DEADLINE_EXCEEDED already
            self._count(route, metrics.EXPIRED)
            return
        if not isinstance(out, Message):
            raise StepError.of(
                "INTERNAL",
                f"node {name} returned {type(out).__name__}, expected a protobuf message"
                + (f" of type {route.output_type}" if route.next_subject is None else ""))
        if route.next_subject is None:
            return await self._answer(d, route, out)
        payload = AnyMsg(type_url=_type_url(out),
                         value=out.SerializeToString()).SerializeToString()
        # Only the serialized output stays alive while it is being stored: with 32 messages
        # in flight, every copy of a large payload held across that wait adds up.
        del data, arg, out
        await self._forward(d, route, deadline, payload)

    async def _answer(self, d: Delivery, route: Route, out: Message) -> None:
        got = out.DESCRIPTOR.full_name
        if got != route.output_type:
            raise StepError.of("INTERNAL", f"node {self.name} returned {got}, but rpc "
                               f"{route.rpc} returns {route.output_type}")
        payload = out.SerializeToString()
        if self.transport.oversize(payload, {}, route.at_most_once):
            raise StepError.of("RESOURCE_EXHAUSTED",
                               f"node {self.name}: the reply is {len(payload)} bytes, "
                               + self.transport.over_max_message(route.at_most_once))
        reply = d.reply
        if reply:
            await self.transport.reply_ok(reply, payload)
        await d.ack()
        self._count(route, metrics.OK)

    async def _forward(self, d: Delivery, route: Route, deadline: float,
                       payload: bytes) -> None:
        """Store the step's output (a serialized `Any`) as the next step's input, then ack."""
        assert route.next_subject is not None
        headers = step_headers(d.call_id, route.next_step,
                               d.deadline_header or repr(time.time() + self.env.request_timeout),
                               d.reply, d.request_id, sent_at=route.at_most_once)
        if self.tracing is not None:
            self.tracing.inject(headers)
        size = self.transport.oversize(payload, headers, route.at_most_once)
        if size:
            raise StepError.of("RESOURCE_EXHAUSTED",
                               f"node {self.name}: its output is {size} bytes, "
                               + self.transport.over_max_message(route.at_most_once))
        if route.at_most_once:
            return await self._call_next(d, route, payload, headers)
        until = deadline or time.time() + self.env.request_timeout
        stored = await publish_until(self.transport, route.next_subject, payload, headers,
                                     until, self._is_stopping)
        await d.ack()  # stored, or too late to matter (the client has its answer)
        self._count(route, metrics.OK if stored else metrics.EXPIRED)

    async def _call_next(self, d: Delivery, route: Route, payload: bytes,
                         headers: dict[str, str]) -> None:
        """At most once: pass the output on as a call of the next step (sent once; the
        entrypoint answers UNAVAILABLE if it gets lost)."""
        assert route.next_subject is not None
        try:
            await self.transport.call_step(route.next_subject, payload, headers)
        except TransportError as exc:
            log.warning("request %s: not passed on to step %d (%s); its caller is answered "
                        "UNAVAILABLE", d.request_id, route.next_step, exc or type(exc).__name__)
            if d.reply:
                try:
                    await self.transport.reply_error(d.reply, StepError.of(
                        "UNAVAILABLE", f"node {self.name}: could not pass the request on "
                        f"({exc}); it may have partly run"))
                except Exception:  # no connection: the entrypoint's watch answers it
                    pass
            self._count(route, metrics.ERROR)
            return
        self._count(route, metrics.OK)

    def _is_stopping(self) -> bool:
        return self.stopping

    async def stop(self, grace: float) -> None:
        """Drain: stop fetching, finish in-flight messages, close the transport, and delete
        the generated modules' folder (also when the drain is cut short)."""
        self.stopping = True
        end = time.monotonic() + grace
        try:
            if self._ticker is not None:
                self._ticker.cancel()
            await asyncio.gather(*(c.stop(max(0.1, end - time.monotonic()))
                                   for c in self.consumers))
            if self.ctx is not None:
                await self.ctx.drain(max(0.1, min(5.0, end - time.monotonic())))
            await self.close(end - time.monotonic())
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
        finally:
            remove_pb2(self.pb2_dir)
            self.pb2_dir = None


def prepare(env: contract.RunnerEnv, transport: Transport | None = None,
            tracing: Tracing | None = None) -> NodeProcess:
    """Everything that can fail before connecting: pb2, module, handler, routes.

    `tracing`: the process's (runner.tracing); None takes it from the environment (none
    when it does not turn tracing on)."""
    if not env.node:
        raise StartupError(f"{contract.ENV_NODE} is not set: which node is this?")
    pb2 = prepare_pb2(env)
    try:
        mod = load_module(env)
        routes = routes_of(env)
        proc = NodeProcess(env, mod, routes, transport or open_transport(env),
                           tracing or tracing_from_env(env))
    except BaseException:
        remove_pb2(pb2)
        raise
    proc.pb2_dir = pb2
    return proc
