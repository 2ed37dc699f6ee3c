"""What the entrypoint and the nodes need from a message transport, and nothing more.

A :class:`Transport` is one process's connection to the broker, for one version
(``contract.RunnerEnv``). It offers:

* :meth:`~Transport.connect` and :meth:`~Transport.close`, with :class:`ConnectionEvents`
  (disconnect, reconnect) and :attr:`~Transport.is_connected`;
* stream and consumer set-up, idempotent (safe on every start and reconnect):
  :meth:`~Transport.ensure_work_stream`, :meth:`~Transport.ensure_data_stream`,
  :meth:`~Transport.ensure_consumer` (one durable consumer per step, shared by every
  replica of its node: work-queue semantics);
* :meth:`~Transport.publish`: store a step's input (headers from :func:`step_headers`:
  the message id ``"{call_id}:{step}"`` that de-duplicates a republished step, the
  deadline, the reply subject and, when the client chose it, the request id), waiting
  until the broker has stored it;
* :meth:`~Transport.consume`: a :class:`Consumer` that hands each message to a handler as
  a :class:`Delivery` (``ack``, ``nak(delay)``, ``in_progress``, ``term``; payload, request
  id, deadline, reply subject, delivery count), at most `max_inflight` at a time;
* replies to the entrypoint's inbox: :meth:`~Transport.reply_ok` (the rpc's response) or
  :meth:`~Transport.reply_error` (a :class:`StepError`), received by
  :meth:`~Transport.listen_replies`; :meth:`~Transport.on_gave_up` reports a message that
  reached its maximum deliveries;
* the data sink behind ``ctx.prediction``, ``ctx.measurement`` and ``ctx.db``:
  :meth:`~Transport.save_record` and :meth:`~Transport.scan_records`;
* :attr:`~Transport.max_payload`, the largest message the broker takes, and
  :attr:`~Transport.max_message`, the largest payload the runner carries (``KAI_MAX_MESSAGE``);
* :meth:`~Transport.consumer_state`: what the broker knows of one durable consumer now (a
  :class:`ConsumerState`: replicas asking for work, deliveries, messages unsettled), which
  the entrypoint's readiness is made of (runner.readiness).

The claim check. A step input or a reply too large for one message (over
:attr:`~Transport.max_payload` less its headers and :data:`CLAIM_MARGIN`) is put into the
version's object store bucket (``contract.claims_bucket``, created with the work streams, its
TTL the work stream's max age), and the message carries only the header HDR_CLAIM, the
object's name (:func:`claim_name`: ``"{request_id}.s{step}"`` or ``"{request_id}.reply"``).
This class does it in :meth:`~Transport.publish` and :meth:`~Transport.reply_ok` and undoes it
before the handler (:meth:`~Transport.with_claims`: :attr:`Delivery.payload` is the object) and
the reply listener see a message, so the processes never know. The object of a step's input
is deleted once that step's message is acked or termed: a redelivered step (its replica
died) still finds it. A reply's object is deleted once the listener has read it; a message
given up (max deliveries) takes its object along. What is left over (a process killed
between ack and delete, a request whose message expired unread) expires with the bucket's
TTL. An implementation provides :meth:`~Transport.publish_message`,
:meth:`~Transport.reply_message`, :meth:`~Transport.put_object`,
:meth:`~Transport.get_object` and :meth:`~Transport.delete_object`.

At most once (a workflow with ``delivery: at-most-once``; runner.transport.core has how):
:meth:`~Transport.call_step` sends a step's input over core NATS to one replica of the
step's queue group, which :meth:`~Transport.serve` joins; nothing is stored, acked or
delivered again. :meth:`~Transport.reply_alive` is a replica's sign of life for a call it
still holds, and :meth:`~Transport.probe_step` asks whether any replica of a step is there.

Errors of :meth:`~Transport.publish` are the :class:`TransportError` subclasses below, so
callers need not know the broker. ``runner.transport.nats`` is the JetStream
implementation (the wire protocol is described there); ``runner.transport.memory`` is an
in-process one with the same semantics, for tests without a server.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import contract

if TYPE_CHECKING:
    import grpc

log = logging.getLogger("runner.transport")

STORE_TIMEOUT = 5.0  # seconds to wait for the broker to store one message
REPUBLISH_FOR = contract.DUPLICATE_WINDOW / 2  # seconds publish_until may send one message
WORK_MAX_AGE = 3600.0  # undelivered work older than this is dropped; the claims' TTL too
# Room left in a message for what the broker and client add (beyond the headers counted).
CLAIM_MARGIN = 1024
FETCH_TIMEOUT = 30.0  # seconds at most to read a claimed object
CLAIM_RATE = 20e6  # bytes a second an object store write is allowed at least
_NO_HEADERS: dict[str, str] = {}
_UNSAFE_NAME = re.compile(r"[^-_=.A-Za-z0-9]")


# --- errors --------------------------------------------------------------------------


class StepError(Exception):
    """A request that ends in a non-OK gRPC status, with the message for the client."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def of(cls, name: str, message: str) -> StepError:
        """The error of the status code named `name` (a ``grpc.StatusCode`` member's name)."""
        return cls(status_code(name), message)

    def __repr__(self) -> str:
        return f"StepError({self.code.name}, {self.message!r})"


def status_code(name: str) -> grpc.StatusCode:
    """The gRPC status code named `name` (as on the wire); UNKNOWN for a name it does not know.

    grpc is imported here, when a code is first needed, not with this module: a node process
    that never fails never loads grpc's core (about 9 MB of memory per process).
    """
    import grpc

    try:
        return grpc.StatusCode[name]
    except KeyError:
        return grpc.StatusCode.UNKNOWN


class TransportError(Exception):
    """Publishing failed; the subclasses say why."""


class NotStored(TransportError):
    """The broker did not confirm in time that it stored the message: it may have (publish
    it again with the same message id; the stream keeps one copy)."""


class NoStream(TransportError):
    """No stream takes the subject (deleted, or lost by a broker restart)."""


class Unreachable(TransportError):
    """The broker is not reachable (connection closed, reconnecting, buffer full)."""


class TooLarge(TransportError):
    """The message is over the broker's payload limit."""


class ObjectGone(TransportError):
    """The claimed object is not in the bucket (deleted, or expired with its TTL)."""


# Failures worth retrying until the deadline (the broker may come back).
RETRYABLE: tuple[type[Exception], ...] = (NotStored, NoStream, Unreachable)


# --- connection ------------------------------------------------------------------------


@dataclass
class ConnectionEvents:
    """Callbacks a process registers to follow the connection's state."""

    on_disconnect: Callable[[], Awaitable[None]] | None = None
    on_reconnect: Callable[[], Awaitable[None]] | None = None


# --- consumers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsumerState:
    """What the broker knows of one durable consumer at one moment.

    `waiting` counts the requests for messages outstanding (pull requests: a replica asks
    for work; none while every replica is busy, or none runs); `delivered`, the deliveries
    so far (redeliveries included); `unsettled`, the messages delivered and not yet acked
    or termed.
    """

    waiting: int
    delivered: int
    unsettled: int

    def moved_since(self, before: ConsumerState) -> bool:
        """Whether a message was delivered or settled since `before` (work going on)."""
        return (self.delivered, self.unsettled) != (before.delivered, before.unsettled)


# --- messages ---------------------------------------------------------------------------


def step_headers(call_id: str, step: int, deadline: str, reply: str,
                 request_id: str = "", sent_at: bool = False) -> dict[str, str]:
    """The headers of a step's input: message id ``"<call id>:<step>"``, deadline (unix
    seconds), reply subject, HDR_REQUEST_ID when the request id is not the call id, and with
    `sent_at` the time it is sent (HDR_PUBLISHED: now, unix seconds).

    `sent_at` is for calls over core NATS (at most once) only: a JetStream message carries
    the time the stream stored it in its ack subject (:attr:`Delivery.published`), so it
    goes without that header (one header fewer to encode and parse on every hop).

    The call id is unique per rpc call (it keys the reply and de-duplicates a republished
    step); the request id is what node code, logs and records see (``ctx.request_id``). They
    are the same unless the client chose the request id (``x-request-id``): a client may
    send the same id twice, and each call must still run.
    """
    headers = {
        contract.HDR_MSG_ID: f"{call_id}:{step}",
        contract.HDR_DEADLINE: deadline,
        contract.HDR_REPLY: reply,
    }
    if request_id and request_id != call_id:
        headers[contract.HDR_REQUEST_ID] = request_id
    if sent_at:
        headers[contract.HDR_PUBLISHED] = f"{time.time():.6f}"
    return headers


def headers_size(headers: Mapping[str, str]) -> int:
    """The size of a header block on the wire (NATS/1.0 line, k: v lines, blank line)."""
    # map() over the keys and values: no generator frame per header (twice per message)
    return 14 + sum(map(len, headers)) + sum(map(len, headers.values())) + 4 * len(headers)


def call_id_of(headers: Mapping[str, str]) -> str:
    """The call id a step message carries (in its message id, ``"{call_id}:{step}"``)."""
    msg_id = headers.get(contract.HDR_MSG_ID)
    if msg_id:
        return msg_id.rpartition(":")[0]
    return headers.get(contract.HDR_REQUEST_ID, "")


def request_id_of(headers: Mapping[str, str]) -> str:
    """The request id a step message carries: HDR_REQUEST_ID, else its call id."""
    return headers.get(contract.HDR_REQUEST_ID) or call_id_of(headers)


def claim_name(call_id: str, what: str) -> str:
    """The object name of a claimed payload: `what` is ``"s{step}"`` or ``"reply"``.

    Keyed by the call id, unique to each call (a client may repeat its x-request-id)."""
    return _UNSAFE_NAME.sub("_", f"{call_id}.{what}")


def header_safe(text: str, limit: int = 4000) -> str:
    """Header values are one line; keep them so and bounded."""
    one_line = " ".join(str(text).split())
    return one_line if len(one_line) <= limit else one_line[: limit - 3] + "..."


class Delivery(abc.ABC):
    """One message handed to a consumer's handler, which must settle it (ack, nak or term)."""

    __slots__ = ("headers", "payload")

    def __init__(self, payload: bytes, headers: Mapping[str, str]) -> None:
        self.payload = payload
        self.headers = headers

    @property
    def request_id(self) -> str:
        """The request id (``ctx.request_id``; the client's ``x-request-id`` if it sent one)."""
        return request_id_of(self.headers)

    @property
    def call_id(self) -> str:
        """The rpc call's unique id, the root of the step messages' ids."""
        return call_id_of(self.headers)

    @property
    def reply(self) -> str:
        """Where the final answer goes (``"<entrypoint inbox>.<request id>"``), or ""."""
        return self.headers.get(contract.HDR_REPLY, "")

    @property
    def deadline_header(self) -> str | None:
        """The deadline as it travels (passed on unchanged to the next step)."""
        return self.headers.get(contract.HDR_DEADLINE)

    @property
    def deadline(self) -> float:
        """The absolute deadline in unix seconds; 0.0 when there is none (or it is not a number)."""
        raw = self.headers.get(contract.HDR_DEADLINE)
        try:
            return float(raw) if raw else 0.0
        except ValueError:
            return 0.0

    @property
    def published(self) -> float:
        """When the message was stored or sent (unix seconds): HDR_PUBLISHED here (a call
        over core NATS); a transport that stores messages says when it stored it. 0.0 when
        unknown."""
        raw = self.headers.get(contract.HDR_PUBLISHED)
        try:
            return float(raw) if raw else 0.0
        except ValueError:
            return 0.0

    @property
    @abc.abstractmethod
    def delivery_count(self) -> int:
        """How many times this message was delivered, this time included (1 the first time)."""

    @abc.abstractmethod
    def ack(self) -> Awaitable[None]:
        """Done: the message is removed."""

    @abc.abstractmethod
    def nak(self, delay: float | None = None) -> Awaitable[None]:
        """Not done: deliver it again (after `delay` seconds, if given)."""

    @abc.abstractmethod
    def in_progress(self) -> Awaitable[None]:
        """Still working: restart the ack wait, so it is not redelivered meanwhile."""

    @abc.abstractmethod
    def term(self) -> Awaitable[None]:
        """Never deliver it again."""


class ClaimedDelivery(Delivery):
    """A delivery whose payload came from the claim bucket; remembers whether it was settled
    for good (acked or termed), when its object may go."""

    __slots__ = ("done", "inner")

    def __init__(self, inner: Delivery, payload: bytes) -> None:
        super().__init__(payload, inner.headers)
        self.inner = inner
        self.done = False

    @property
    def delivery_count(self) -> int:
        return self.inner.delivery_count

    async def ack(self) -> None:
        await self.inner.ack()
        self.done = True

    def nak(self, delay: float | None = None) -> Awaitable[None]:
        return self.inner.nak(delay)

    def in_progress(self) -> Awaitable[None]:
        return self.inner.in_progress()

    async def term(self) -> None:
        await self.inner.term()
        self.done = True


class Consumer(abc.ABC):
    """A running subscription of one durable consumer (see :meth:`Transport.consume`)."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget outstanding requests for messages (the connection was lost) and ask again."""

    @abc.abstractmethod
    async def stop(self, grace: float) -> None:
        """Take no more messages; let those in flight finish (up to `grace` seconds)."""


@dataclass(frozen=True)
class GaveUp:
    """A step message that reached its maximum deliveries; `delete()` removes it."""

    stream: str
    consumer: str
    deliveries: int | str
    headers: Mapping[str, str]
    delete: Callable[[], Awaitable[None]]


class Alive:
    """What a reply listener gets for a sign of life (HDR_ALIVE) of a call still being worked
    on (at most once); the one instance is :data:`ALIVE`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ALIVE"


ALIVE = Alive()

Handle = Callable[[Delivery], Awaitable[None]]
OnReply = Callable[[str, "bytes | StepError | Alive"], None]
OnGaveUp = Callable[[GaveUp], Coroutine[Any, Any, None]]


class Transport(abc.ABC):
    """One process's connection to the broker, for the version of `env`."""

    env: contract.RunnerEnv

    # connection

    @abc.abstractmethod
    async def connect(self, name: str, events: ConnectionEvents | None = None) -> None:
        """Connect, retrying until the broker answers; reconnect forever afterwards."""

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool: ...

    @property
    @abc.abstractmethod
    def max_payload(self) -> int:
        """The largest message (payload and headers) the broker takes, in bytes."""

    @property
    def max_message(self) -> int:
        """The largest payload (a request, step output or reply) the runner carries, in bytes."""
        return self.env.max_message

    @abc.abstractmethod
    async def flush(self, limit: float) -> None:
        """Wait (up to `limit` seconds) until the broker has seen everything sent so far."""

    @abc.abstractmethod
    async def close(self, flush_timeout: float = 0.0) -> None:
        """Close the connection (after flushing, for up to `flush_timeout` seconds)."""

    # streams and consumers

    @abc.abstractmethod
    async def ensure_work_stream(self, workflow: str) -> str:
        """The work-queue stream of one workflow of the version; returns its name."""

    @abc.abstractmethod
    async def ensure_data_stream(self) -> str:
        """The project's stream of predictions, measurements and db documents."""

    @abc.abstractmethod
    async def ensure_consumer(self, workflow: str, step: int, node: str) -> str:
        """The durable consumer of one step, shared by every replica; returns its name."""

    @abc.abstractmethod
    async def consumer_state(self, stream: str, consumer: str,
                             within: float) -> ConsumerState | None:
        """The state of durable `consumer` of `stream` now; None when there is no such
        consumer (or stream). A :class:`TransportError` when the broker does not answer
        within `within` seconds."""

    # steps

    def oversize(self, payload: bytes, headers: Mapping[str, str],
                 at_most_once: bool = False) -> int:
        """The message's size when it is over :attr:`max_message` (at most once: or when it
        does not fit in one message, since those never go through the claim bucket), else 0."""
        size = len(payload) + headers_size(headers)
        if size > self.max_message or (at_most_once and not self.fits(payload, headers)):
            return size
        return 0

    def over_max_message(self, at_most_once: bool = False) -> str:
        """How a RESOURCE_EXHAUSTED message names the limit a payload is over."""
        if at_most_once and self.max_payload - CLAIM_MARGIN < self.max_message:
            return (f"over the NATS server's max payload of {self.max_payload} bytes, which "
                    "the messages of an at-most-once workflow cannot exceed (they never go "
                    "through the claim bucket)")
        return (f"over the runner's max message of {self.max_message} bytes "
                "(kai.yaml runtime.maxMessage)")

    def fits(self, payload: bytes, headers: Mapping[str, str]) -> bool:
        """Whether the payload travels in the message itself (else through a claim)."""
        return len(payload) + headers_size(headers) + CLAIM_MARGIN <= self.max_payload

    def publish(self, subject: str, payload: bytes, headers: dict[str, str],
                within: float) -> Awaitable[None]:
        """Store a step's input within `within` seconds; else raise a :class:`TransportError`.

        A payload too large for one message goes to the claim bucket first.
        """
        if self.fits(payload, headers):
            return self.publish_message(subject, payload, headers, within)
        return self._publish_claimed(subject, payload, headers, within)

    async def _publish_claimed(self, subject: str, payload: bytes, headers: dict[str, str],
                               within: float) -> None:
        msg_id = headers.get(contract.HDR_MSG_ID, "")
        call_id, _, step = msg_id.rpartition(":")
        name = claim_name(call_id, f"s{step}")
        started = time.monotonic()
        await self.put_object(name, payload, within + len(payload) / CLAIM_RATE)
        claimed = {**headers, contract.HDR_CLAIM: name}
        try:
            await self.publish_message(subject, b"", claimed,
                                       max(within - (time.monotonic() - started), 0.5))
        except (NoStream, Unreachable, TooLarge):
            await self.forget_object(name)  # surely not stored: nothing will read it
            raise

    @abc.abstractmethod
    def publish_message(self, subject: str, payload: bytes, headers: dict[str, str],
                        within: float) -> Awaitable[None]:
        """Store one message (it fits) within `within` seconds; else a :class:`TransportError`."""

    # the claim bucket

    @abc.abstractmethod
    async def put_object(self, name: str, data: bytes, within: float) -> None:
        """Store `data` as object `name` of the version's claim bucket (replacing one there)."""

    @abc.abstractmethod
    async def get_object(self, name: str, within: float) -> bytes:
        """Object `name` of the claim bucket; :class:`ObjectGone` when it is not there."""

    @abc.abstractmethod
    async def delete_object(self, name: str) -> None:
        """Remove object `name` from the claim bucket, leaving nothing of it; none is fine."""

    async def forget_object(self, name: str) -> None:
        """Delete an object no-one needs any more; on failure it is left to the bucket's TTL."""
        try:
            await self.delete_object(name)
        except Exception as exc:
            log.debug("claim %s not deleted (%s); it expires with the bucket's TTL", name,
                      exc)

    def with_claims(self, handle: Handle) -> Handle:
        """`handle`, fed the claimed payload of a message that carries HDR_CLAIM.

        Messages without a claim go straight to `handle`. A claimed one gets its object
        read first (unless its deadline has passed: the handler then drops it unread, and
        the payload is empty); the object is deleted once the handler acked or termed it.
        An object that is gone ends the request (INTERNAL) and terms the message; one that
        cannot be read now (the broker) has the message delivered again shortly.
        """
        def run(d: Delivery) -> Awaitable[None]:
            if contract.HDR_CLAIM not in d.headers:
                return handle(d)
            return self._claimed(handle, d)

        return run

    async def _claimed(self, handle: Handle, d: Delivery) -> None:
        name = d.headers[contract.HDR_CLAIM]
        deadline = d.deadline
        left = deadline - time.time() if deadline else FETCH_TIMEOUT
        payload = b""
        if left > 0:
            alive = asyncio.create_task(self._keep_alive(d))  # a long read is no dead replica
            try:
                payload = await self.get_object(name, min(left, FETCH_TIMEOUT))
            except ObjectGone:
                log.warning("request %s: its input %s is gone from the claim bucket",
                            d.request_id, name)
                if d.reply:
                    await self.reply_error(d.reply, StepError.of(
                        "INTERNAL", f"the input of this request's step ({name}) is no longer "
                        "in the claim bucket (expired or deleted)"))
                await d.term()
                return
            except Exception as exc:
                log.info("request %s: cannot read its input %s now (%s); retrying",
                         d.request_id, name, exc or type(exc).__name__)
                await d.nak(1.0)
                return
            finally:
                alive.cancel()
        claimed = ClaimedDelivery(d, payload)
        del payload
        try:
            await handle(claimed)
        finally:
            if claimed.done:
                await self.forget_object(name)

    async def _keep_alive(self, d: Delivery) -> None:
        """Restart `d`'s ack wait every quarter of it (until cancelled)."""
        period = max(0.05, self.env.ack_wait / 4)
        while True:
            await asyncio.sleep(period)
            try:
                await d.in_progress()
            except Exception:  # the connection: the next tick tries again
                pass

    async def _gave_up_claimed(self, headers: Mapping[str, str]) -> None:
        """A message given up: its claimed object goes with it."""
        name = headers.get(contract.HDR_CLAIM)
        if name:
            await self.forget_object(name)

    async def _read_claimed_reply(self, request_id: str, name: str,
                                  on_reply: OnReply) -> None:
        """A reply that came through the claim bucket: read it, hand it on, delete it."""
        answer: bytes | StepError
        try:
            answer = await self.get_object(name, FETCH_TIMEOUT)
        except Exception as exc:
            answer = StepError.of("INTERNAL", f"the reply ({name}) could not be read from the "
                                  f"claim bucket: {exc or type(exc).__name__}")
        on_reply(request_id, answer)
        del answer
        await self.forget_object(name)

    @abc.abstractmethod
    def consume(self, stream: str, consumer: str, handle: Handle, max_inflight: int,
                on_lost: Callable[[], None] | None = None) -> Consumer:
        """A consumer of the durable `consumer` of `stream` (start it with ``start()``).

        `handle` runs as a task per delivery and settles it; `on_lost` is called when
        the broker seems to have forgotten the consumer or its requests (re-ensure).
        """

    @abc.abstractmethod
    async def on_gave_up(self, stream: str, callback: OnGaveUp) -> None:
        """Call `callback` for each message of `stream` that reached its maximum deliveries."""

    # replies

    @abc.abstractmethod
    async def listen_replies(self, prefix: str, on_reply: OnReply) -> None:
        """Receive the replies sent to ``prefix + <call id>``: `on_reply(call_id, reply)`."""

    def reply_ok(self, reply: str, payload: bytes) -> Awaitable[None]:
        """Answer the entrypoint with the rpc's serialized response (through a claim when it
        is too large for one message)."""
        if self.fits(payload, _NO_HEADERS):
            return self.reply_message(reply, payload, None)
        return self._reply_claimed(reply, payload)

    async def _reply_claimed(self, reply: str, payload: bytes) -> None:
        name = claim_name(reply.rpartition(".")[2], "reply")
        await self.put_object(name, payload, STORE_TIMEOUT + len(payload) / CLAIM_RATE)
        await self.reply_message(reply, b"", {contract.HDR_CLAIM: name})

    @abc.abstractmethod
    def reply_message(self, reply: str, payload: bytes,
                      headers: dict[str, str] | None) -> Awaitable[None]:
        """Send one reply message (no headers: success, the payload the response)."""

    @abc.abstractmethod
    async def reply_error(self, reply: str, error: StepError) -> None:
        """Answer the entrypoint with a non-OK status."""

    # at most once (runner.transport.core)

    @abc.abstractmethod
    def call_step(self, subject: str, payload: bytes,
                  headers: dict[str, str]) -> Awaitable[None]:
        """Send a step's input (it fits in one message; headers from :func:`step_headers`) to
        one replica of the queue group on `subject`, not stored. :class:`Unreachable` or
        :class:`TooLarge` when it cannot be sent. When no replica takes it, the reply subject
        (HDR_REPLY) is answered UNAVAILABLE; a reply listener of this transport that sent a
        call is answered UNAVAILABLE too when the call shows no sign of life for the ack wait
        (runner.transport.core)."""

    @abc.abstractmethod
    def serve(self, subject: str, queue: str, handle: Handle, max_inflight: int) -> Consumer:
        """Join queue group `queue` on `subject` (and its probe subject): `handle` runs as a
        task per call, at most `max_inflight` at a time (start it with ``start()``)."""

    @abc.abstractmethod
    async def probe_step(self, subject: str, within: float) -> bool:
        """Whether a replica answers on probe subject `subject` (False: none subscribes); a
        :class:`TransportError` when no answer comes within `within` seconds."""

    @abc.abstractmethod
    def reply_alive(self, reply: str) -> Awaitable[None]:
        """Tell the caller waiting on `reply` that its call is still being worked on."""

    # the data sink

    @abc.abstractmethod
    async def save_record(self, subject: str, record: bytes) -> None:
        """Store one record (a prediction, measurement or db document) on `subject`."""

    @abc.abstractmethod
    async def scan_records(self, subject: str) -> list[bytes]:
        """Every record stored on `subject`, oldest first."""


async def publish_until(transport: Transport, subject: str, payload: bytes,
                        headers: dict[str, str], deadline: float,
                        stopping: Callable[[], bool]) -> bool:
    """Publish, retrying through outages until `deadline` (unix time).

    Every attempt sends the same `headers`, so the same message id: the stream keeps one
    copy however many attempts it stored. It remembers ids for DUPLICATE_WINDOW only, so
    attempts stop half that long after the first (a later copy could run twice).
    Returns True once the broker stored the message (or recognised it as a duplicate).
    """
    deadline = min(deadline, time.time() + REPUBLISH_FOR)
    delay = 0.05
    while True:
        remaining = deadline - time.time()
        if remaining <= 0:
            return False
        try:
            await transport.publish(subject, payload, headers,
                                    min(STORE_TIMEOUT, max(remaining, 0.05)))
            return True
        except RETRYABLE as exc:
            if stopping() and remaining > STORE_TIMEOUT * 4:
                deadline = time.time() + STORE_TIMEOUT * 4  # draining: do not wait forever
            log.debug("publish to %s failed (%s); retrying", subject, type(exc).__name__)
        await asyncio.sleep(min(delay, max(deadline - time.time(), 0)))
        delay = min(delay * 2, 1.0)
