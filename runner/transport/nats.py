"""The JetStream implementation of runner.transport.base.Transport.

* :meth:`NatsTransport.connect`: a connection that reconnects forever and reports its state;
* ``ensure_*``: idempotent creation of what a version needs (safe on every start and
  reconnect): one work-queue stream per workflow, the project's data stream, one durable
  pull consumer per step;
* :func:`consumer_state`: a consumer's info (``$JS.API.CONSUMER.INFO``): ``num_waiting``,
  the pull requests outstanding (the server drops those of a closed connection at once),
  the deliveries and ``num_ack_pending``;
* :class:`Publisher`: publish to JetStream and wait for the PubAck, cheaply;
* :class:`Puller`: a pull consumer that keeps a bounded number of messages in flight,
  asking the server for more as work finishes (one subscription, batched pull requests);
* :func:`scan`: read every message of one subject of a stream (for `ctx.db.find`);
* :class:`Claims`: the version's claim bucket, a JetStream object store (runner.transport.base
  has the claim check);
* at most once (runner.transport.core, on core NATS in runner.transport.natscore): calls,
  queue groups, signs of life and probes.

Wire protocol (see also runner.contract for the names):

* step input (JetStream, subject ``step_subject(p, v, wf, i)``): payload a serialized
  ``google.protobuf.Any``; three headers: Nats-Msg-Id ``"{call_id}:{step}"`` (so a
  redelivered step publishes no duplicate, and where a node reads the request id from),
  HDR_DEADLINE (absolute unix seconds) and HDR_REPLY, the subject of the answer:
  ``"{entrypoint inbox}.{call_id}"`` (the node's queue wait starts at the time the stream
  stored the message, which JetStream puts in its ack subject: ``NatsDelivery.published``);
  HDR_REQUEST_ID only when the client chose the request id
  (``x-request-id``), which then differs from the call id; and, while tracing is on, the
  W3C trace context (``traceparent``, ``tracestate``: runner.tracing);
* reply (core NATS, to HDR_REPLY): on success no headers at all, the payload is the
  serialized rpc response; otherwise HDR_STATUS (a grpc.StatusCode name) and HDR_ERROR.
  The entrypoint matches the answer to its call by the last token of the subject;
* a payload too large for one message (the claim check): the message carries no payload
  and one more header, HDR_CLAIM, the name of the object in the object store bucket
  ``contract.claims_bucket(p, v)`` that holds it (a claimed reply has that header only);
* at most once (runner.transport.core): a step's input is a core NATS message to
  ``call_subject(p, v, wf, i)`` with the same headers, its NATS reply subject the sender's
  no-responders inbox followed by HDR_REPLY; a reply with HDR_ALIVE only is a sign of life.

Every header costs a Python encode on one side and a Python parse on the other (nats-py),
on every hop, so the envelope carries no more than these.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import importlib.util
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.manager import JetStreamManager
from nats.js.object_store import ObjectStore

from .. import contract
from . import natsauth, natscore
from .base import (
    ALIVE,
    CLAIM_MARGIN,
    WORK_MAX_AGE,
    ConnectionEvents,
    Consumer,
    ConsumerState,
    Delivery,
    GaveUp,
    Handle,
    NoStream,
    NotStored,
    ObjectGone,
    OnGaveUp,
    OnReply,
    StepError,
    TooLarge,
    Transport,
    TransportError,
    Unreachable,
    header_safe,
    request_id_of,
    status_code,
)
from .core import CallWatch, watching

log = logging.getLogger("runner.transport")

STATUS_HDR = "Status"  # NATS status header on pull responses
PENDING_HDR = "Nats-Pending-Messages"
JS_TIMEOUT = 5.0  # seconds for JetStream API calls
_KEEP_FOREVER = {"Nats-TTL": "never"}  # a data record the stream's max age never removes


# --- connection ------------------------------------------------------------------


async def connect(url: str, name: str, events: ConnectionEvents | None = None, *,
                  auth_dir: str = "", ca_file: str = "") -> Client:
    """Connect to NATS, retrying until it answers; the client then reconnects forever.

    `url` may list several servers, separated by commas. `auth_dir` and `ca_file` are the
    credentials and the CA file (runner.transport.natsauth; empty: none). Raises
    NatsSetupError, with one line, when they cannot be used, or when the first server
    that answers refuses the credentials (or their lack) or presents a certificate they
    do not trust: trying again with the same ones cannot help.
    """
    events = events or ConnectionEvents()
    servers = contract.nats_servers(url) or [url]
    options = natsauth.connect_options(auth_dir, ca_file)
    kind = natsauth.auth_kind(auth_dir)
    if any(server.split("://", 1)[0].lower() in ("ws", "wss") for server in servers):
        if importlib.util.find_spec("aiohttp") is None:  # nats-py's websocket transport
            raise natsauth.NatsSetupError(f"NATS at {url}: a ws:// or wss:// URL needs the "
                                          "aiohttp package (pip install aiohttp)")
    if kind:
        log.info("nats: authenticating with the %s in %s", natsauth.LABELS[kind], auth_dir)
    errors_seen = 0
    first = True  # until the first connection: nats-py would retry a refusal forever

    async def on_error(exc: Exception) -> None:
        nonlocal errors_seen
        if first:
            problem = natsauth.first_connection_problem(url, exc, auth_dir, kind, ca_file)
            if problem:
                raise natsauth.NatsSetupError(problem)  # out of nats-py's connect loop
        errors_seen += 1
        loud = errors_seen in (1, 10) or errors_seen % 100 == 0
        level = logging.WARNING if loud else logging.DEBUG
        log.log(level, "nats %s: %s", url, exc or type(exc).__name__)

    async def on_disconnect() -> None:
        log.warning("nats disconnected from %s", url)
        if events.on_disconnect:
            await events.on_disconnect()

    async def on_reconnect() -> None:
        nonlocal errors_seen
        errors_seen = 0
        log.info("nats reconnected to %s", url)
        if events.on_reconnect:
            await events.on_reconnect()

    async def on_closed() -> None:
        log.info("nats connection closed")

    nc = Client()
    try:
        await nc.connect(
            servers=servers,
            name=name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]  # seconds, a float works
            connect_timeout=2,
            ping_interval=10,
            max_outstanding_pings=3,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            closed_cb=on_closed,
            **options,
        )
    except natsauth.NatsSetupError:
        with contextlib.suppress(Exception):  # a TLS socket's close may wait for the peer
            await asyncio.wait_for(nc.close(), 2.0)
        raise
    first = False
    return nc


# --- streams and consumers ---------------------------------------------------------


def _storage(storage: str) -> api.StorageType:
    return api.StorageType.MEMORY if storage == "memory" else api.StorageType.FILE


async def _ensure_stream(jsm: JetStreamManager, config: api.StreamConfig) -> bool:
    """Create the stream, or update an existing one to `config`; False when the existing
    stream differs in what JetStream cannot change (it is then used as it is)."""
    try:
        await jsm.add_stream(config)
        return True
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != 10058:  # stream name already in use with a different configuration
            raise
    try:
        await jsm.update_stream(config)
        return True
    except nats.js.errors.APIError as exc:
        log.warning("stream %s exists with another configuration (%s); using it", config.name,
                    exc.description)
        return False


async def ensure_work_stream(js_mgr: JetStreamManager, env: contract.RunnerEnv,
                             workflow: str) -> str:
    """The work-queue stream of one workflow of the version; returns its name."""
    name = contract.stream_name(env.project, env.version, workflow)
    await _ensure_stream(
        js_mgr,
        api.StreamConfig(
            name=name,
            subjects=[contract.stream_subjects(env.project, env.version, workflow)],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=_storage(env.storage),
            duplicate_window=contract.DUPLICATE_WINDOW,
            max_age=WORK_MAX_AGE,
            discard=api.DiscardPolicy.OLD,
        ),
    )
    return name


async def ensure_data_stream(js_mgr: JetStreamManager, env: contract.RunnerEnv) -> str:
    """The project's stream of predictions, measurements and db documents (kept, not consumed)."""
    name = contract.data_stream_name(env.project)
    # Its limits come from kai.yaml (runtime.dataStream); 0 means none. The de-duplication
    # window may not be longer than the records are kept.
    max_age = max(env.data_max_age, 0.0)
    max_bytes = env.data_max_bytes if env.data_max_bytes > 0 else -1
    window = min(contract.DUPLICATE_WINDOW, max_age) if max_age else contract.DUPLICATE_WINDOW
    config = api.StreamConfig(
        name=name,
        subjects=[contract.data_subjects(env.project)],
        retention=api.RetentionPolicy.LIMITS,
        storage=_storage(env.storage),
        duplicate_window=window,
        max_age=max_age,
        max_bytes=max_bytes,
        discard=api.DiscardPolicy.OLD,
        allow_msg_ttl=True,  # db documents carry `Nats-TTL: never` (contract.data_kept_forever)
    )
    if not await _ensure_stream(js_mgr, config):
        # Kept with its other settings (another storage, say), the stream still gets
        # the limits: they bound the disk it takes.
        existing = (await js_mgr.stream_info(name)).config
        try:
            await js_mgr.update_stream(replace(existing, max_age=max_age, max_bytes=max_bytes,
                                               duplicate_window=window, allow_msg_ttl=True))
        except nats.js.errors.APIError as exc:
            log.warning("stream %s: cannot set its limits (%s)", name, exc.description)
    return name


async def ensure_consumer(js_mgr: JetStreamManager, env: contract.RunnerEnv, workflow: str,
                          step: int, node: str) -> str:
    """The durable pull consumer of one step, shared by every replica of its node."""
    stream = contract.stream_name(env.project, env.version, workflow)
    durable = contract.consumer_name(step, node)
    config = api.ConsumerConfig(
        name=durable,
        durable_name=durable,
        filter_subject=contract.step_subject(env.project, env.version, workflow, step),
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=env.ack_wait,
        max_deliver=env.max_deliver,
        max_ack_pending=10_000,
        max_waiting=512,
    )
    try:
        await js_mgr.add_consumer(stream, config)
    except nats.js.errors.BadRequestError as exc:
        # An existing consumer with another configuration: use it as it is.
        log.warning("consumer %s/%s: %s; using the existing one", stream, durable,
                    exc.description)
        await js_mgr.consumer_info(stream, durable)
    return durable


async def consumer_state(js_mgr: JetStreamManager, stream: str, consumer: str,
                         within: float) -> ConsumerState | None:
    """The consumer's state from its info; None when the consumer (or stream) is not there."""
    try:
        async with asyncio.timeout(within):
            info = await js_mgr.consumer_info(stream, consumer, timeout=within)
    except nats.js.errors.NotFoundError:
        return None
    except Exception as exc:
        raise _transport_error(exc) from None
    return ConsumerState(waiting=info.num_waiting or 0,
                         delivered=info.delivered.consumer_seq if info.delivered else 0,
                         unsettled=info.num_ack_pending or 0)


# --- publishing -----------------------------------------------------------------------


def _expire(fut: asyncio.Future[bytes]) -> None:
    if not fut.done():
        fut.set_exception(NotStored("no PubAck in time"))


class Publisher:
    """Publish to JetStream and wait for the server's PubAck ("stored").

    What ``JetStreamContext.publish`` does, for less per message: the PubAcks come back on
    one wildcard subscription of this publisher's own inbox, matched by a counter token (no
    random token per message), with a timer instead of ``asyncio.wait_for``, and the PubAck
    is checked for an error without building a ``PubAck`` object. Raises the transport's
    errors: :class:`NotStored` (no PubAck in time), :class:`NoStream` (no stream listens on
    the subject), :class:`Unreachable` (the connection, or the server's 503),
    :class:`TooLarge`, and :class:`TransportError` for any other error the server reports.
    """

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._prefix = ""
        self._waiting: dict[str, asyncio.Future[bytes]] = {}
        self._seq = 0

    async def start(self) -> None:
        self._prefix = self.nc.new_inbox() + "."
        await self.nc.subscribe(self._prefix + "*", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        fut = self._waiting.pop(msg.subject[len(self._prefix):], None)
        if fut is None or fut.done():
            return
        hdrs = msg.headers
        if hdrs and not msg.data and hdrs.get(STATUS_HDR) == "503":  # no responders
            fut.set_exception(NoStream("no stream takes the subject"))
        else:
            fut.set_result(msg.data)

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str],
                      ack_wait: float) -> None:
        if not self._prefix:
            await self.start()
        self._seq += 1
        token = str(self._seq)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self._waiting[token] = fut
        timer = loop.call_later(ack_wait, _expire, fut)
        try:
            await self.nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            data = await fut
        except nats.errors.MaxPayloadError as exc:
            raise TooLarge(str(exc)) from None
        except nats.errors.Error as exc:  # closed, reconnecting with a full buffer ...
            raise Unreachable(type(exc).__name__) from None
        finally:
            timer.cancel()
            self._waiting.pop(token, None)
        if b'"error"' in data:
            resp = json.loads(data)
            if "error" in resp:
                try:
                    nats.js.errors.APIError.from_error(resp["error"])  # raises
                except nats.js.errors.ServiceUnavailableError as exc:
                    raise Unreachable(exc.description or "JetStream unavailable") from None
                except nats.js.errors.APIError as exc:
                    raise TransportError(exc.description or str(exc)) from None


class NatsDelivery(Delivery):
    """A JetStream message as a :class:`Delivery` (settling it publishes to its reply)."""

    __slots__ = ("msg",)

    def __init__(self, msg: Msg) -> None:
        self.payload = msg.data
        self.headers = msg.headers or _NO_HEADERS
        self.msg = msg

    @property
    def delivery_count(self) -> int:
        return self.msg.metadata.num_delivered or 1

    @property
    def published(self) -> float:
        """When the stream stored the message (unix seconds), from the timestamp JetStream
        puts in its ack subject: ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.
        <consumer seq>.<ns>.<pending>``, or the 12-token form with a domain and an account
        hash before the stream and a random token at the end. 0.0 when it is not there."""
        tokens = (self.msg.reply or "").split(".")
        at = 7 if len(tokens) == 9 else 9 if len(tokens) >= 12 else 0
        try:
            return int(tokens[at]) / 1e9 if at else 0.0
        except ValueError:
            return 0.0

    # Plain functions returning nats-py's coroutine: no coroutine of ours per settlement.
    def ack(self) -> Awaitable[None]:
        return self.msg.ack()

    def nak(self, delay: float | None = None) -> Awaitable[None]:
        return self.msg.nak(delay)

    def in_progress(self) -> Awaitable[None]:
        return self.msg.in_progress()

    def term(self) -> Awaitable[None]:
        return self.msg.term()


_NO_HEADERS: dict[str, str] = {}


# --- pull consumer ----------------------------------------------------------------


@dataclass
class _Pull:
    batch: int
    expires_at: float  # monotonic


@dataclass
class Puller(Consumer):
    """Consume one durable pull consumer with at most `max_inflight` messages in flight.

    One subscription receives everything. JetStream delivers a message with its own
    subject, so messages cannot be told apart by pull request; what is tracked is the
    total credit still owed by the server (`owed`). Each pull request has its own reply
    subject (``<inbox>.<n>``) so its end (408 expired, 409 ...), which carries how many
    messages it had left, is matched exactly. `handle(delivery)` runs as a task per
    message and must settle it itself.
    """

    nc: Client
    stream: str
    consumer: str
    handle: Handle
    max_inflight: int = contract.DEFAULT_CONCURRENCY
    expires: float = 5.0
    on_lost: Callable[[], None] | None = None  # pull requests vanish: re-ensure
    inflight: int = 0
    owed: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _pulls: dict[str, _Pull] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: bool = False
    _seq: int = 0
    _inbox: str = ""
    _sub: Subscription | None = None
    _loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox + ".*", cb=self._on_msg,
                                            pending_msgs_limit=self.max_inflight * 64)
        self._loop_task = asyncio.create_task(self._loop(), name=f"pull {self.consumer}")

    def reset(self) -> None:
        """Forget outstanding pull requests (the connection was lost) and pull again."""
        self._pulls.clear()
        self.owed = 0
        self._wake.set()

    async def _on_msg(self, msg: Msg) -> None:
        hdrs = msg.headers
        if hdrs and STATUS_HDR in hdrs and not msg.reply:
            self._on_status(msg.subject[len(self._inbox) + 1:], hdrs)
            return
        if self.owed > 0:
            self.owed -= 1
        if self._stopping:
            await msg.nak()  # arrived after we stopped: let another replica take it
            return
        self.inflight += 1
        task = asyncio.create_task(self._run(NatsDelivery(msg)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _on_status(self, token: str, hdrs: dict[str, str]) -> None:
        code = hdrs.get(STATUS_HDR, "")
        if code == "100":  # idle heartbeat
            return
        pull = self._pulls.pop(token, None)
        if pull is None:
            return
        try:
            left = int(hdrs.get(PENDING_HDR, ""))
        except ValueError:
            left = -1
        if left >= 0:
            self.owed = max(0, self.owed - left)
        else:
            self.owed = min(self.owed, sum(p.batch for p in self._pulls.values()))
        if code == "409":
            log.debug("pull %s/%s: %s", self.stream, self.consumer, hdrs.get("Description", ""))
        self._wake.set()

    async def _run(self, delivery: Delivery) -> None:
        try:
            await self.handle(delivery)
        except Exception:
            log.exception("unexpected error handling a message of %s", self.consumer)
        finally:
            self.inflight -= 1
            # Wake the pull loop only when it has a batch worth asking for.
            if self.max_inflight - self.inflight - self.owed >= self._low_water:
                self._wake.set()

    @property
    def _low_water(self) -> int:
        return max(1, self.max_inflight // 4)

    def _forget_lost(self, now: float) -> None:
        lost = [k for k, p in self._pulls.items() if p.expires_at < now]
        if not lost:
            return
        for k in lost:
            del self._pulls[k]
        # No-one told us how many those requests had left: owe at most what is still open.
        self.owed = min(self.owed, sum(p.batch for p in self._pulls.values()))
        if self.on_lost is not None:
            self.on_lost()

    async def _loop(self) -> None:
        low_water = self._low_water
        expires_ns = int(self.expires * 1e9)
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.consumer}"
        next_scan = 0.0
        while not self._stopping:
            self._wake.clear()
            now = time.monotonic()
            if now >= next_scan:  # at most once a second, not once a message
                self._forget_lost(now)
                next_scan = now + 1.0
            free = self.max_inflight - self.inflight - self.owed
            if free >= low_water and self.nc.is_connected:
                self._seq += 1
                token = str(self._seq)
                # Lost requests (no 408 ever comes) are forgotten a bit after they expire.
                self._pulls[token] = _Pull(free, time.monotonic() + self.expires + 1.0)
                self.owed += free
                body = b'{"batch":%d,"expires":%d}' % (free, expires_ns)
                try:
                    await self.nc.publish(subject, body, reply=f"{self._inbox}.{token}")
                except Exception as exc:  # closed or reconnecting: try again shortly
                    log.debug("pull request failed: %s", exc)
                    self._pulls.pop(token, None)
                    self.owed -= free
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            except TimeoutError:
                pass

    async def stop(self, grace: float) -> None:
        """Stop pulling, finish the messages in flight (up to `grace` seconds)."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=grace)
            for t in pending:
                t.cancel()
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # the connection may be gone already
                pass


# --- reading a subject back ----------------------------------------------------------


async def scan(nc: Client, js_mgr: JetStreamManager, stream: str, subject: str,
               limit: float = 10.0) -> list[bytes]:
    """Every message currently stored on `subject` in `stream`, oldest first.

    Costs one ephemeral consumer and a transfer of every message on the subject.
    """
    info = await js_mgr.add_consumer(
        stream,
        api.ConsumerConfig(
            filter_subject=subject,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=30.0,
            mem_storage=True,
            max_waiting=1,
        ),
    )
    name = info.name
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    out: list[bytes] = []
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"
    try:
        async with asyncio.timeout(limit):
            pending = info.num_pending or 0
            while pending > 0:
                batch = min(pending, 1000)
                await nc.publish(next_subject, json.dumps({"batch": batch, "no_wait": True})
                                 .encode(), reply=inbox)
                got = 0
                while got < batch:
                    msg = await sub.next_msg(timeout=limit)
                    if msg.headers and STATUS_HDR in msg.headers and not msg.reply:
                        if msg.headers[STATUS_HDR] == "100":
                            continue
                        pending = 0
                        break
                    got += 1
                    out.append(msg.data)
                    pending = msg.metadata.num_pending
                    if pending == 0:
                        break
    finally:
        await sub.unsubscribe()
        try:
            await js_mgr.delete_consumer(stream, name)
        except Exception:  # it expires by itself anyway
            pass
    return out


# --- the claim bucket ------------------------------------------------------------------


def _transport_error(exc: Exception) -> TransportError:
    """A nats-py error as the transport's."""
    if isinstance(exc, (nats.errors.TimeoutError, TimeoutError)):
        return NotStored("the object store did not answer in time")
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):
        return Unreachable(exc.description or "JetStream unavailable")
    if isinstance(exc, nats.js.errors.NotFoundError):
        return NoStream(str(exc) or "no such stream")
    if isinstance(exc, nats.errors.MaxPayloadError):
        return TooLarge(str(exc))
    if isinstance(exc, nats.errors.Error):  # closed, no responders, reconnecting ...
        return Unreachable(type(exc).__name__)
    return TransportError(str(exc) or type(exc).__name__)


class Claims:
    """The version's claim bucket: a JetStream object store (stream ``OBJ_<bucket>``).

    Objects are written in chunks as large as a message allows (nats-py's default of
    128 KiB would cost a PubAck per 128 KiB). A delete purges the object's meta and its
    chunks, so nothing of it stays (nats-py's delete leaves a tombstone until the TTL).
    """

    def __init__(self, js: JetStreamContext, env: contract.RunnerEnv, chunk: int) -> None:
        self.js = js
        self.bucket = contract.claims_bucket(env.project, env.version)
        self.stream = contract.claims_stream(env.project, env.version)
        self.env = env
        self.chunk = chunk
        self._store: ObjectStore | None = None

    async def ensure(self) -> None:
        """Create the bucket (its TTL the work stream's max age), or find it."""
        config = api.ObjectStoreConfig(ttl=WORK_MAX_AGE, storage=_storage(self.env.storage),
                                       description="payloads too large for one message")
        try:
            self._store = await self.js.create_object_store(self.bucket, config=config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != 10058:  # exists with another configuration: use it as it is
                raise
            self._store = await self.js.object_store(self.bucket)

    async def _obs(self) -> ObjectStore:
        if self._store is None:
            try:
                self._store = await self.js.object_store(self.bucket)
            except nats.js.errors.NotFoundError:
                raise NoStream(f"no object store {self.bucket}") from None
        return self._store

    def _meta_subject(self, name: str) -> str:
        token = base64.urlsafe_b64encode(name.encode()).decode()
        return f"$O.{self.bucket}.M.{token}"

    async def put(self, name: str, data: bytes, within: float) -> None:
        meta = api.ObjectMeta(name=name,
                              options=api.ObjectMetaOptions(max_chunk_size=self.chunk))
        try:
            obs = await self._obs()
            await asyncio.wait_for(obs.put(name, data, meta=meta), within)
        except TransportError:
            raise
        except Exception as exc:
            raise _transport_error(exc) from None

    async def get(self, name: str, within: float) -> bytes:
        """The object's bytes, its chunks read one direct get each (nats-py's get streams
        them through an ordered push consumer, whose flow control costs ~60 ms per MiB).

        An object replaced while it is read (a redelivered step storing its output again)
        loses its old chunks: it is read again, from its new metadata.
        """
        try:
            async with asyncio.timeout(within):
                obs = await self._obs()
                for _ in range(3):
                    info = await obs.get_info(name)
                    whole = await self._chunks(info)
                    if whole is not None:
                        return whole
        except nats.js.errors.ObjectNotFoundError:
            raise ObjectGone(f"no object {name} in {self.bucket}") from None
        except TransportError:
            raise
        except Exception as exc:
            raise _transport_error(exc) from None
        raise ObjectGone(f"object {name} in {self.bucket} is incomplete")

    async def _chunks(self, info: api.ObjectInfo) -> bytes | None:
        """The chunks of the object `info` describes, joined; None when some are missing or
        they do not match its digest."""
        subject = f"$O.{self.bucket}.C.{info.nuid}"
        chunks: list[bytes] = []
        digest = hashlib.sha256()
        seq = 1
        for _ in range(info.chunks or 0):
            try:
                msg = await self.js.get_msg(self.stream, seq=seq, subject=subject,
                                            direct=True, next=True)
            except nats.js.errors.NotFoundError:
                return None
            data = msg.data or b""
            digest.update(data)
            chunks.append(data)
            seq = (msg.seq or seq) + 1
        whole = b"".join(chunks)
        expected = (info.digest or "").partition("=")[2]
        if len(whole) != (info.size or 0) or (
                expected and base64.urlsafe_b64decode(expected) != digest.digest()):
            return None
        return whole

    async def delete(self, name: str) -> None:
        try:
            obs = await self._obs()
            info = await obs.get_info(name)
        except (nats.js.errors.ObjectNotFoundError, NoStream):
            return
        except Exception as exc:
            raise _transport_error(exc) from None
        # The meta first: a reader never finds meta whose chunks are gone.
        await self.js.purge_stream(self.stream, subject=self._meta_subject(name))
        await self.js.purge_stream(self.stream, subject=f"$O.{self.bucket}.C.{info.nuid}")


# --- the transport ----------------------------------------------------------------------


class NatsTransport(Transport):
    """:class:`Transport` over NATS JetStream (the wire protocol is in the module docstring)."""

    def __init__(self, env: contract.RunnerEnv) -> None:
        self.env = env
        self.nc: Client | None = None
        self._publisher: Publisher | None = None
        self._jsm: JetStreamManager | None = None
        self._claims: Claims | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._watch: CallWatch | None = None  # the at-most-once calls the listener awaits
        self._no_responders = ""  # the inbox prefix of the 503s of this process's calls

    async def connect(self, name: str, events: ConnectionEvents | None = None) -> None:
        nc = await connect(self.env.nats_url, name, events, auth_dir=self.env.nats_auth_dir,
                           ca_file=self.env.nats_ca_file)
        self.nc = nc
        self._jsm = nc.jsm(timeout=JS_TIMEOUT)
        # a chunk is a message with no headers: as large as the server takes, less a margin
        self._claims = Claims(nc.jetstream(timeout=JS_TIMEOUT), self.env,
                              max(nc.max_payload - CLAIM_MARGIN, nc.max_payload // 2))
        self._publisher = Publisher(nc)
        await self._publisher.start()
        if any(wf.at_most_once for wf in self.env.workflows):
            self._no_responders = await natscore.listen_no_responders(nc, self)

    def _client(self) -> Client:
        if self.nc is None:
            raise Unreachable("not connected")
        return self.nc

    def _bucket(self) -> Claims:
        if self._claims is None:
            raise Unreachable("not connected")
        return self._claims

    def _manager(self) -> JetStreamManager:
        if self._jsm is None:
            raise Unreachable("not connected")
        return self._jsm

    @property
    def is_connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    @property
    def max_payload(self) -> int:
        return self.nc.max_payload if self.nc is not None else 1024 * 1024

    async def flush(self, limit: float) -> None:
        # nats-py annotates flush's timeout as int, but hands it to asyncio.wait_for
        await self._client().flush(timeout=limit)  # type: ignore[arg-type]

    async def close(self, flush_timeout: float = 0.0) -> None:
        nc = self.nc
        if self._watch is not None:
            self._watch.close()
        if nc is None or nc.is_closed:
            return
        if flush_timeout > 0:
            try:
                await asyncio.wait_for(nc.flush(), flush_timeout)
            except Exception:
                pass
        await nc.close()

    async def ensure_work_stream(self, workflow: str) -> str:
        name = await ensure_work_stream(self._manager(), self.env, workflow)
        await self._bucket().ensure()  # the version's claim bucket goes with its work
        return name

    async def ensure_data_stream(self) -> str:
        return await ensure_data_stream(self._manager(), self.env)

    async def ensure_consumer(self, workflow: str, step: int, node: str) -> str:
        return await ensure_consumer(self._manager(), self.env, workflow, step, node)

    async def consumer_state(self, stream: str, consumer: str,
                             within: float) -> ConsumerState | None:
        return await consumer_state(self._manager(), stream, consumer, within)

    def publish_message(self, subject: str, payload: bytes, headers: dict[str, str],
                        within: float) -> Awaitable[None]:
        if self._publisher is None:
            raise Unreachable("not connected")
        return self._publisher.publish(subject, payload, headers, within)

    async def put_object(self, name: str, data: bytes, within: float) -> None:
        await self._bucket().put(name, data, within)

    async def get_object(self, name: str, within: float) -> bytes:
        return await self._bucket().get(name, within)

    async def delete_object(self, name: str) -> None:
        await self._bucket().delete(name)

    def consume(self, stream: str, consumer: str, handle: Handle, max_inflight: int,
                on_lost: Callable[[], None] | None = None) -> Consumer:
        return Puller(self._client(), stream, consumer, self.with_claims(handle),
                      max_inflight=max_inflight, on_lost=on_lost)

    async def on_gave_up(self, stream: str, callback: OnGaveUp) -> None:
        jsm = self._manager()

        async def on_advisory(msg: Msg) -> None:
            try:
                event = json.loads(msg.data)
                stream, consumer = event["stream"], event["consumer"]
                seq, deliveries = int(event["stream_seq"]), event.get("deliveries", "?")
                stored = await jsm.get_msg(stream, seq)
            except Exception as exc:  # gone already, or not ours to read
                log.debug("max-deliveries advisory not handled: %s", exc)
                return

            headers = stored.headers or {}

            async def delete() -> None:
                await jsm.delete_msg(stream, seq)
                await self._gave_up_claimed(headers)

            await callback(GaveUp(stream, consumer, deliveries, headers, delete))

        await self._client().subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.*", cb=on_advisory)

    async def listen_replies(self, prefix: str, on_reply: OnReply) -> None:
        n = len(prefix)
        ok = "OK"
        self._watch, on_reply = watching(self.env, prefix, on_reply)

        async def on_msg(msg: Msg) -> None:
            hdrs = msg.headers
            if hdrs:
                claim = hdrs.get(contract.HDR_CLAIM)
                if claim is not None:  # read it aside: the other replies need not wait
                    task = asyncio.create_task(
                        self._read_claimed_reply(msg.subject[n:], claim, on_reply))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    return
                if contract.HDR_ALIVE in hdrs:  # at most once: a call still worked on
                    on_reply(msg.subject[n:], ALIVE)
                    return
                code = hdrs.get(contract.HDR_STATUS, ok)
                if code != ok:
                    on_reply(msg.subject[n:], StepError(status_code(code),
                                                        hdrs.get(contract.HDR_ERROR, "")))
                    return
            on_reply(msg.subject[n:], msg.data)

        await self._client().subscribe(prefix + "*", cb=on_msg, pending_msgs_limit=1_000_000,
                                       pending_bytes_limit=512 * 1024 * 1024)

    def reply_message(self, reply: str, payload: bytes,
                      headers: dict[str, str] | None) -> Awaitable[None]:
        return self._client().publish(reply, payload, headers=headers)  # none: success

    async def reply_error(self, reply: str, error: StepError) -> None:
        await self._client().publish(
            reply, b"",
            headers={contract.HDR_STATUS: error.code.name,
                     contract.HDR_ERROR: header_safe(error.message)})

    # at most once (runner.transport.core)

    def call_step(self, subject: str, payload: bytes,
                  headers: dict[str, str]) -> Awaitable[None]:
        if self._watch is not None:
            self._watch.sent(headers)
        return natscore.call(self._client(), subject, payload, headers, self._no_responders)

    def serve(self, subject: str, queue: str, handle: Handle, max_inflight: int) -> Consumer:
        return natscore.NatsCallServer(self._client(), self, subject, queue, handle,
                                       max_inflight)

    async def probe_step(self, subject: str, within: float) -> bool:
        return await natscore.probe(self._client(), subject, within)

    def reply_alive(self, reply: str) -> Awaitable[None]:
        return self._client().publish(reply, b"", headers=natscore.ALIVE_HEADERS)

    async def save_record(self, subject: str, record: bytes) -> None:
        js = self._client().jetstream(timeout=JS_TIMEOUT)
        headers = _KEEP_FOREVER if contract.data_kept_forever(subject) else None
        try:
            await js.publish(subject, record, timeout=JS_TIMEOUT, headers=headers)
        except nats.js.errors.NoStreamResponseError:
            raise NoStream(f"no stream takes {subject}") from None

    async def scan_records(self, subject: str) -> list[bytes]:
        return await scan(self._client(), self._manager(),
                          contract.data_stream_name(self.env.project), subject)


__all__ = ["Claims", "NatsTransport", "Publisher", "Puller", "connect", "request_id_of", "scan"]
