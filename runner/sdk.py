"""The node author's `ctx`, compatible with the KRE Python runner 1.23.

One :class:`Context` exists per node process (values set in `init` outlive requests,
as in KRE). What belongs to the request being handled (its id and workflow) lives in a
context variable, so concurrent requests each see their own `ctx.request_id` and their
own log prefix, in async handlers and in sync handlers that run in worker threads. A
handler ends a request with a status of its choice by raising :class:`Abort`.

Predictions, measurements and db documents are JSON records in the project's JetStream
data stream (``contract.data_stream_name(project)``); docs/node-sdk.md says how to read
them. Their save/find methods work both awaited in async code and called directly from
a sync handler (which runs in a worker thread): in the event loop thread they return an
awaitable task, in another thread they block until done and return the result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from . import contract

if TYPE_CHECKING:
    import grpc

T = TypeVar("T")
SAVE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Scope:
    """What belongs to the request being handled."""

    request_id: str = ""
    workflow: str = ""


NO_SCOPE = Scope()
SCOPE: contextvars.ContextVar[Scope] = contextvars.ContextVar("kai_scope", default=NO_SCOPE)


class SdkError(Exception):
    """A ctx method was called with values it does not accept."""


class Abort(Exception):
    """Raised by a handler to answer the client with `code` and `message`.

    ``raise Abort(grpc.StatusCode.NOT_FOUND, "no such room")`` (or
    ``ctx.abort(grpc.StatusCode.NOT_FOUND, "no such room")``) ends the request with that
    status and message, as the client sees them; the message is not retried. Any other
    exception answers INTERNAL. `code` must be a ``grpc.StatusCode`` other than OK.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        import grpc  # loaded already by whoever has a grpc.StatusCode to pass

        if not isinstance(code, grpc.StatusCode) or code is grpc.StatusCode.OK:
            raise SdkError(f"Abort needs a grpc.StatusCode other than OK, not {code!r}")
        super().__init__(message)
        self.code = code
        self.message = str(message)


# --- the data sink (implemented by the node process over NATS) ----------------------


@dataclass
class Sink:
    """Where records go: `publish(subject, record)` and `scan(subject) -> records`."""

    publish: Callable[[str, bytes], Coroutine[Any, Any, None]]
    scan: Callable[[str], Awaitable[list[bytes]]]
    loop: asyncio.AbstractEventLoop


class _Bridge:
    """Run a coroutine on the node's loop, from the loop thread or from a worker thread."""

    def __init__(self, sink: Sink, logger: logging.LoggerAdapter[logging.Logger]) -> None:
        self.sink = sink
        self.logger = logger
        self.pending: set[asyncio.Future[Any]] = set()

    def run(self, coro: Coroutine[Any, Any, T]) -> Any:
        loop = self.sink.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            task = loop.create_task(coro)
            self.pending.add(task)
            task.add_done_callback(self._done)
            return task
        if loop.is_closed():
            coro.close()
            raise SdkError("the node's event loop is not running")
        fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
        return fut.result(timeout=SAVE_TIMEOUT * 2)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self.pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.logger.warning("saving a record failed: %s", task.exception())

    async def drain(self, grace: float) -> None:
        if self.pending:
            await asyncio.wait(set(self.pending), timeout=grace)


def _utc_rfc3339(value: datetime | None) -> str:
    if value is None:
        value = datetime.now(UTC)
    offset = value.utcoffset()
    if offset is not None and offset.total_seconds() != 0:
        raise SdkError("utcdate must be a UTC datetime")
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class _Where:
    project: str
    version: str
    node: str

    def stamp(self, record: dict[str, Any]) -> bytes:
        scope = SCOPE.get()
        record["version"] = self.version
        record["workflow"] = scope.workflow
        record["node"] = self.node
        record["requestId"] = scope.request_id
        return json.dumps(record, separators=(",", ":"), default=str).encode()


class Prediction:
    """`ctx.prediction`: classification metrics (predicted vs true value)."""

    ERR_MISSING_VALUES = "missing_values"
    ERR_NEW_LABELS = "new_labels"
    PREDICTION_ERRORS = (ERR_MISSING_VALUES, ERR_NEW_LABELS)

    def __init__(self, where: _Where, bridge: _Bridge) -> None:
        self._where = where
        self._bridge = bridge

    def save(self, predicted_value: str = "", true_value: str = "",
             extra: dict[str, Any] | None = None, utcdate: datetime | None = None,
             error: str = "") -> Any:
        if error != "":
            if error not in self.PREDICTION_ERRORS:
                raise SdkError(f"[ctx.prediction.save] invalid value for error {error!r}: "
                               f"should be one of {', '.join(self.PREDICTION_ERRORS)}")
        else:
            for name, value in (("predicted_value", predicted_value), ("true_value", true_value)):
                if not isinstance(value, str) or value == "":
                    raise SdkError(f"[ctx.prediction.save] invalid {name!r}={value!r}: "
                                   "must be a non-empty string")
        record = {
            "date": _utc_rfc3339(utcdate),
            "error": error,
            "predictedValue": predicted_value,
            "trueValue": true_value,
            "extra": extra,
        }
        w = self._where
        subject = contract.data_subject(w.project, "prediction", w.version, w.node)
        return self._bridge.run(self._bridge.sink.publish(subject, w.stamp(record)))


PRECISIONS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


class Measurement:
    """`ctx.measurement`: time series points (what KRE wrote to InfluxDB)."""

    PRECISION_S = "s"
    PRECISION_MS = "ms"
    PRECISION_US = "us"
    PRECISION_NS = "ns"

    def __init__(self, where: _Where, bridge: _Bridge) -> None:
        self._where = where
        self._bridge = bridge

    def save(self, measurement: str, fields: Mapping[str, Any], tags: Mapping[str, str],
             time: datetime | None = None, precision: str = PRECISION_NS) -> Any:
        if not isinstance(measurement, str) or not measurement:
            raise SdkError("[ctx.measurement.save] measurement must be a non-empty string")
        if not isinstance(fields, Mapping) or not fields:
            raise SdkError("[ctx.measurement.save] fields must be a non-empty dict")
        precision = str(getattr(precision, "value", precision)).lower()
        if precision not in PRECISIONS:
            raise SdkError(f"[ctx.measurement.save] unknown precision {precision!r}: "
                           "use ctx.measurement.PRECISION_S, _MS, _US or _NS")
        when = time or datetime.now(UTC)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        ns = int(when.timestamp()) * 10**9 + when.microsecond * 1000
        w = self._where
        record = {
            "measurement": measurement,
            "fields": dict(fields),
            "tags": {**dict(tags or {}), "version": w.version},
            "time": ns // PRECISIONS[precision],
            "precision": precision,
            "date": _utc_rfc3339(when.astimezone(UTC)),
        }
        subject = contract.data_subject(w.project, "measurement", w.version, measurement)
        return self._bridge.run(self._bridge.sink.publish(subject, w.stamp(record)))


class Database:
    """`ctx.db`: documents in named collections, shared by the project's versions."""

    def __init__(self, where: _Where, bridge: _Bridge) -> None:
        self._where = where
        self._bridge = bridge

    def _subject(self, collection: str, method: str) -> str:
        if not isinstance(collection, str) or not collection:
            raise SdkError(f"[ctx.db.{method}] invalid collection {collection!r}: "
                           "must be a non-empty string")
        return contract.data_subject(self._where.project, "db", collection)

    def save(self, collection: str, doc: Mapping[str, Any]) -> Any:
        subject = self._subject(collection, "save")
        if not isinstance(doc, Mapping):
            raise SdkError(f"[ctx.db.save] the document must be a dict, not {type(doc).__name__}")
        record = {"collection": collection, "doc": dict(doc),
                  "date": _utc_rfc3339(None)}
        return self._bridge.run(self._bridge.sink.publish(subject, self._where.stamp(record)))

    def find(self, collection: str, query: Mapping[str, Any]) -> Any:
        subject = self._subject(collection, "find")
        if not isinstance(query, Mapping):
            raise SdkError(f"[ctx.db.find] the query must be a dict, not {type(query).__name__}")
        return self._bridge.run(self._find(subject, collection, dict(query)))

    async def _find(self, subject: str, collection: str, query: dict[str, Any]) -> list[Any]:
        out = []
        for raw in await self._bridge.sink.scan(subject):
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            doc = record.get("doc")
            if record.get("collection") != collection or not isinstance(doc, dict):
                continue
            if all(k in doc and doc[k] == v for k, v in query.items()):
                out.append(doc)
        return out


class _RequestLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the request id, node and workflow."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        scope = SCOPE.get()
        node = self.extra["node"] if self.extra else ""
        return f"[request={scope.request_id or '-'} node={node} "\
               f"workflow={scope.workflow or '-'}] {msg}", kwargs


class Context:
    """The `ctx` a node's `init(ctx)` and `handler(ctx, data)` receive."""

    def __init__(self, env: contract.RunnerEnv, sink: Sink,
                 environ: Mapping[str, str] | None = None) -> None:
        node = env.node or ""
        self._env = env
        self._environ = os.environ if environ is None else environ
        self._values: dict[str, Any] = {}
        self.logger: logging.LoggerAdapter[logging.Logger] = _RequestLogger(
            logging.getLogger(f"node.{node}"), {"node": node})
        where = _Where(env.project, env.version, node)
        self._bridge = _Bridge(sink, self.logger)
        self.prediction = Prediction(where, self._bridge)
        self.measurement = Measurement(where, self._bridge)
        self.db = Database(where, self._bridge)

    @property
    def request_id(self) -> str:
        return SCOPE.get().request_id

    @property
    def workflow(self) -> str:
        return SCOPE.get().workflow

    @property
    def node(self) -> str:
        return self._env.node or ""

    @property
    def version(self) -> str:
        return self._env.version

    def path(self, relative_path: str) -> str:
        """A path inside the version's files."""
        return os.path.join(self._env.version_dir, relative_path)

    def abort(self, code: grpc.StatusCode, message: str) -> NoReturn:
        """End the request with this status and message (raises :class:`Abort`)."""
        raise Abort(code, message)

    def set(self, key: str, value: Any) -> None:
        self._values[key] = value

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def get_config(self, name: str) -> str:
        """A declared config variable's value, or a declared config file's path."""
        if name in self._env.config_variables:
            if name not in self._environ:
                raise SdkError(f"config variable {name} is declared but not set")
            return self._environ[name]
        if name in self._env.config_files:
            return os.path.join(self._env.config_dir, name)
        declared = sorted({*self._env.config_variables, *self._env.config_files})
        raise SdkError(f"config {name!r} is not declared in krt.yml "
                       f"(declared: {', '.join(declared) or 'none'})")

    async def drain(self, grace: float) -> None:
        """Wait for records saved without `await` (fire and forget) to be stored."""
        await self._bridge.drain(grace)
