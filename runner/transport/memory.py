"""An in-process :class:`Transport`, with the semantics the runner relies on from JetStream.

One :class:`MemoryBroker` stands for the server; every process under test (an entrypoint,
nodes, several replicas of one node) gets its own :class:`MemoryTransport` on it, all on one
event loop. What it keeps of JetStream:

* streams capture subjects by prefix (``kai.<p>.<v>.<wf>.>``); a publish to a subject no
  stream captures fails with :class:`NoStream`; one over the payload limit with
  :class:`TooLarge`; a transport that is not connected raises :class:`Unreachable`;
* message-id de-duplication: a second publish with the same ``Nats-Msg-Id`` within the
  duplicate window is accepted and dropped;
* work-queue semantics: a durable consumer per step, shared by every transport that
  consumes it (replicas), each message handed to one of them at a time (round robin among
  those with room), removed from the stream when acked or termed;
* a delivery not settled within the consumer's ack wait (restarted by ``in_progress``) is
  delivered again; ``nak(delay)`` delivers it again after `delay`; after ``max_deliver``
  deliveries it is not delivered again and the stream's gave-up callbacks are called (the
  MAX_DELIVERIES advisory), the message staying in the stream;
* a consumer's state: a subscriber with room to take a message counts as one request
  waiting (a JetStream pull request outstanding; a busy one, like a replica with all its
  slots taken, asks for nothing), deliveries are counted, unsettled messages are those out;
* replies: core subscriptions on ``prefix + "*"``;
* the data sink: records in publish order per subject (the data stream must exist);
* the claim bucket, created with the work streams: objects by name, each gone after the
  bucket's TTL (``claim_ttl``, the work stream's max age by default);
* at most once (runner.transport.core): queue groups by subject, each call to one member
  (round robin among the connected ones of each group); a call to a subject without one is
  answered UNAVAILABLE on its reply, as the sender's transport does with NATS's 503; the
  signs of life; probes answered by any connected member.

:meth:`MemoryTransport.disconnect` and :meth:`MemoryTransport.reconnect` simulate an outage
of one process's connection, with its connection events; :meth:`MemoryTransport.crash` a
killed process (nothing it has in flight is settled).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import contract
from .base import (
    ALIVE,
    WORK_MAX_AGE,
    Alive,
    ConnectionEvents,
    Consumer,
    ConsumerState,
    Delivery,
    GaveUp,
    Handle,
    NoStream,
    ObjectGone,
    OnGaveUp,
    OnReply,
    StepError,
    TooLarge,
    Transport,
    Unreachable,
    header_safe,
    headers_size,
)
from .core import CallServer, CallWatch, CoreDelivery, answer_no_responders, watching

log = logging.getLogger("runner.transport")

DEFAULT_MAX_PAYLOAD = 1024 * 1024  # nats-server's default


@dataclass
class _Stored:
    subject: str
    payload: bytes
    headers: dict[str, str]
    at: float = 0.0  # when it was stored (unix seconds), as JetStream's ack subject says


@dataclass
class _InFlight:
    delivery: MemoryDelivery
    timer: asyncio.TimerHandle


@dataclass
class _Durable:
    """A durable consumer's state on the broker: what is ready, what is out, how often."""

    stream: _Stream
    name: str
    filter_subject: str
    ack_wait: float
    max_deliver: int
    ready: deque[int] = field(default_factory=deque)
    out: dict[int, _InFlight] = field(default_factory=dict)
    deliveries: dict[int, int] = field(default_factory=dict)
    subscribers: list[MemoryConsumer] = field(default_factory=list)
    delivered: int = 0  # deliveries so far, redeliveries included
    _turn: int = 0

    def state(self) -> ConsumerState:
        return ConsumerState(waiting=sum(1 for s in self.subscribers if s.has_room()),
                             delivered=self.delivered, unsettled=len(self.out))

    def pump(self) -> None:
        """Hand ready messages to subscribers with room, round robin."""
        while self.ready:
            live = [s for s in self.subscribers if s.has_room()]
            if not live:
                return
            target = live[self._turn % len(live)]
            self._turn += 1
            seq = self.ready.popleft()
            stored = self.stream.messages.get(seq)
            if stored is None:
                continue
            count = self.deliveries.get(seq, 0) + 1
            self.deliveries[seq] = count
            self.delivered += 1
            delivery = MemoryDelivery(self, seq, count, stored, target.transport)
            timer = asyncio.get_running_loop().call_later(self.ack_wait, self._expired, delivery)
            self.out[seq] = _InFlight(delivery, timer)
            target.dispatch(delivery)

    def current(self, delivery: MemoryDelivery) -> bool:
        entry = self.out.get(delivery.seq)
        return entry is not None and entry.delivery is delivery

    def settle(self, seq: int) -> None:
        entry = self.out.pop(seq, None)
        if entry is not None:
            entry.timer.cancel()

    def remove(self, seq: int) -> None:
        """Acked or termed: gone from the stream (work queue)."""
        self.settle(seq)
        self.deliveries.pop(seq, None)
        self.stream.messages.pop(seq, None)
        self.pump()

    def again(self, seq: int, delay: float | None) -> None:
        self.settle(seq)
        if delay:
            asyncio.get_running_loop().call_later(delay, self._requeue, seq)
        else:
            self._requeue(seq)

    def _requeue(self, seq: int) -> None:
        if seq not in self.stream.messages or seq in self.out:
            return
        if self.deliveries.get(seq, 0) >= self.max_deliver:
            self.stream.gave_up(self, seq)
            return
        self.ready.appendleft(seq)
        self.pump()

    def touch(self, delivery: MemoryDelivery) -> None:
        entry = self.out.get(delivery.seq)
        if entry is None or entry.delivery is not delivery:
            return
        entry.timer.cancel()
        entry.timer = asyncio.get_running_loop().call_later(self.ack_wait, self._expired,
                                                            delivery)

    def _expired(self, delivery: MemoryDelivery) -> None:
        if self.current(delivery):
            self.out.pop(delivery.seq)
            self._requeue(delivery.seq)


@dataclass
class _Stream:
    name: str
    prefix: str  # subjects captured: those starting with it
    work_queue: bool
    broker: MemoryBroker
    messages: dict[int, _Stored] = field(default_factory=dict)
    consumers: dict[str, _Durable] = field(default_factory=dict)
    on_gave_up: list[OnGaveUp] = field(default_factory=list)
    _seen: dict[str, float] = field(default_factory=dict)  # message id -> monotonic time
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def store(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        msg_id = headers.get(contract.HDR_MSG_ID)
        now = time.monotonic()
        if msg_id:
            seen = self._seen.get(msg_id)
            if seen is not None and now - seen < self.broker.duplicate_window:
                return  # a duplicate: accepted, not stored
            self._seen[msg_id] = now
        seq = next(self._seq)
        self.messages[seq] = _Stored(subject, payload, dict(headers), time.time())
        for durable in self.consumers.values():
            if durable.filter_subject == subject:
                durable.ready.append(seq)
                durable.pump()

    def gave_up(self, durable: _Durable, seq: int) -> None:
        stored = self.messages[seq]

        async def delete() -> None:
            self.messages.pop(seq, None)

        event = GaveUp(self.name, durable.name, durable.deliveries.get(seq, 0),
                       dict(stored.headers), delete)
        for callback in self.on_gave_up:
            task = asyncio.get_running_loop().create_task(callback(event))
            self.broker.tasks.add(task)
            task.add_done_callback(self.broker.tasks.discard)


class MemoryBroker:
    """The in-process stand-in for the NATS server, shared by the transports of a test."""

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD,
                 duplicate_window: float = contract.DUPLICATE_WINDOW,
                 claim_ttl: float = WORK_MAX_AGE) -> None:
        self.max_payload = max_payload
        self.duplicate_window = duplicate_window
        self.claim_ttl = claim_ttl
        # bucket -> object name -> (monotonic time stored, data)
        self.buckets: dict[str, dict[str, tuple[float, bytes]]] = {}
        self.streams: dict[str, _Stream] = {}
        # (prefix, callback, the listening transport)
        self.subscriptions: list[tuple[str, OnReply, MemoryTransport]] = []
        self.records: list[tuple[str, bytes]] = []  # the data stream, in order
        self.tasks: set[asyncio.Task[None]] = set()
        # at most once: call subject -> queue group -> its members
        self.groups: dict[str, dict[str, list[MemoryCallServer]]] = {}
        self._turn = itertools.count()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def members(self, subject: str) -> list[list[MemoryCallServer]]:
        """The connected members of each queue group on `subject` (groups without one left
        out)."""
        out = []
        for members in self.groups.get(subject, {}).values():
            live = [m for m in members if m.transport.is_connected]
            if live:
                out.append(live)
        return out

    def stream(self, name: str, prefix: str, work_queue: bool) -> _Stream:
        found = self.streams.get(name)
        if found is None:
            found = self.streams[name] = _Stream(name, prefix, work_queue, self)
        return found

    def capturing(self, subject: str) -> _Stream | None:
        for s in self.streams.values():
            if subject.startswith(s.prefix):
                return s
        return None

    def objects(self, bucket: str) -> list[str]:
        """The names of the objects in `bucket` not yet expired, sorted (for tests)."""
        now = time.monotonic()
        found = self.buckets.get(bucket, {})
        return sorted(n for n, (at, _) in found.items() if now - at < self.claim_ttl)

    def pending(self, stream: str) -> int:
        """How many messages `stream` still holds (for tests: work left or given up)."""
        found = self.streams.get(stream)
        return len(found.messages) if found else 0


class MemoryDelivery(Delivery):
    """A delivery to one transport; settling it needs that transport to be connected."""

    __slots__ = ("_count", "_durable", "_owner", "_stored_at", "seq")

    def __init__(self, durable: _Durable, seq: int, count: int, stored: _Stored,
                 owner: MemoryTransport) -> None:
        self.payload = stored.payload
        self.headers = stored.headers
        self._stored_at = stored.at
        self._durable = durable
        self._owner = owner
        self.seq = seq
        self._count = count

    @property
    def delivery_count(self) -> int:
        return self._count

    @property
    def published(self) -> float:
        return self._stored_at

    async def ack(self) -> None:
        self._owner._check()
        if self.seq in self._durable.stream.messages:
            self._durable.remove(self.seq)

    async def nak(self, delay: float | None = None) -> None:
        self._owner._check()
        if self._durable.current(self):
            self._durable.again(self.seq, delay)

    async def in_progress(self) -> None:
        self._owner._check()
        self._durable.touch(self)

    async def term(self) -> None:
        self._owner._check()
        if self._durable.current(self):
            self._durable.remove(self.seq)


class MemoryConsumer(Consumer):
    """One transport's subscription of a durable consumer."""

    def __init__(self, transport: MemoryTransport, durable: _Durable, handle: Handle,
                 max_inflight: int) -> None:
        self.transport = transport
        self._durable = durable
        self._handle = handle
        self.max_inflight = max_inflight
        self.inflight = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self._running = False

    def has_room(self) -> bool:
        return self._running and self.transport.is_connected and \
            self.inflight < self.max_inflight

    async def start(self) -> None:
        self._running = True
        self._durable.subscribers.append(self)
        self._durable.pump()

    def reset(self) -> None:
        self._durable.pump()

    def dispatch(self, delivery: MemoryDelivery) -> None:
        self.inflight += 1
        task = asyncio.get_running_loop().create_task(self._run(delivery))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, delivery: MemoryDelivery) -> None:
        try:
            await self._handle(delivery)
        except Exception:
            log.exception("unexpected error handling a message of %s", self._durable.name)
        finally:
            self.inflight -= 1
            self._durable.pump()

    async def stop(self, grace: float) -> None:
        self._running = False
        if self in self._durable.subscribers:
            self._durable.subscribers.remove(self)
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=grace)
            for t in pending:
                t.cancel()


class MemoryTransport(Transport):
    """One process's connection to a :class:`MemoryBroker`."""

    def __init__(self, broker: MemoryBroker, env: contract.RunnerEnv) -> None:
        self.broker = broker
        self.env = env
        self.name = ""
        self._connected = False
        self._events = ConnectionEvents()
        self._consumers: list[MemoryConsumer] = []
        self._servers: list[MemoryCallServer] = []
        self._watch: CallWatch | None = None

    # connection

    async def connect(self, name: str, events: ConnectionEvents | None = None) -> None:
        self.name = name
        self._events = events or ConnectionEvents()
        self._connected = True

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def max_payload(self) -> int:
        return self.broker.max_payload

    async def flush(self, limit: float) -> None:
        self._check()
        await asyncio.sleep(0)

    async def close(self, flush_timeout: float = 0.0) -> None:
        self._connected = False
        for c in self._consumers:
            if c in c._durable.subscribers:
                c._durable.subscribers.remove(c)
        for server in self._servers:
            server.leave()
        if self._watch is not None:
            self._watch.close()

    async def crash(self) -> None:
        """Simulate the process being killed: what it has in flight is never settled (nor
        answered, for an at-most-once call)."""
        await self.close()
        tasks = [t for c in self._consumers for t in c.tasks]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            await server.abandon()

    async def disconnect(self) -> None:
        """Simulate a lost connection: nothing is delivered to or sent by this transport."""
        self._connected = False
        if self._events.on_disconnect is not None:
            await self._events.on_disconnect()

    async def reconnect(self) -> None:
        self._connected = True
        if self._events.on_reconnect is not None:
            await self._events.on_reconnect()
        for c in self._consumers:
            c.reset()

    def _check(self) -> None:
        if not self._connected:
            raise Unreachable("not connected")

    # streams and consumers

    async def ensure_work_stream(self, workflow: str) -> str:
        self._check()
        env = self.env
        name = contract.stream_name(env.project, env.version, workflow)
        prefix = contract.stream_subjects(env.project, env.version, workflow).rstrip(">")
        self.broker.stream(name, prefix, work_queue=True)
        self.broker.buckets.setdefault(self._bucket, {})
        return name

    @property
    def _bucket(self) -> str:
        return contract.claims_bucket(self.env.project, self.env.version)

    async def ensure_data_stream(self) -> str:
        self._check()
        name = contract.data_stream_name(self.env.project)
        self.broker.stream(name, contract.data_subjects(self.env.project).rstrip(">"),
                           work_queue=False)
        return name

    async def ensure_consumer(self, workflow: str, step: int, node: str) -> str:
        self._check()
        env = self.env
        stream = self.broker.streams.get(contract.stream_name(env.project, env.version,
                                                              workflow))
        if stream is None:
            raise NoStream(f"no stream for workflow {workflow}")
        name = contract.consumer_name(step, node)
        if name not in stream.consumers:
            subject = contract.step_subject(env.project, env.version, workflow, step)
            durable = _Durable(stream, name, subject, env.ack_wait, env.max_deliver)
            durable.ready.extend(seq for seq, m in stream.messages.items()
                                 if m.subject == subject)
            stream.consumers[name] = durable
        return name

    async def consumer_state(self, stream: str, consumer: str,
                             within: float) -> ConsumerState | None:
        self._check()
        found = self.broker.streams.get(stream)
        durable = found.consumers.get(consumer) if found is not None else None
        return durable.state() if durable is not None else None

    # steps

    async def publish_message(self, subject: str, payload: bytes, headers: dict[str, str],
                              within: float) -> None:
        self._check()
        if len(payload) + headers_size(headers) > self.broker.max_payload:
            raise TooLarge(f"{len(payload)} bytes")
        stream = self.broker.capturing(subject)
        if stream is None or not stream.work_queue:
            raise NoStream(f"no stream takes {subject}")
        stream.store(subject, payload, headers)

    # the claim bucket

    def _objects(self) -> dict[str, tuple[float, bytes]]:
        self._check()
        found = self.broker.buckets.get(self._bucket)
        if found is None:
            raise NoStream(f"no bucket {self._bucket}")
        return found

    async def put_object(self, name: str, data: bytes, within: float) -> None:
        objects = self._objects()
        await asyncio.sleep(0)
        objects[name] = (time.monotonic(), bytes(data))

    async def get_object(self, name: str, within: float) -> bytes:
        objects = self._objects()
        await asyncio.sleep(0)
        found = objects.get(name)
        if found is None or time.monotonic() - found[0] >= self.broker.claim_ttl:
            objects.pop(name, None)
            raise ObjectGone(f"no object {name} in {self._bucket}")
        return found[1]

    async def delete_object(self, name: str) -> None:
        self._objects().pop(name, None)

    def consume(self, stream: str, consumer: str, handle: Handle, max_inflight: int,
                on_lost: Callable[[], None] | None = None) -> Consumer:
        found = self.broker.streams.get(stream)
        if found is None or consumer not in found.consumers:
            raise NoStream(f"no consumer {consumer} on {stream}")
        c = MemoryConsumer(self, found.consumers[consumer], self.with_claims(handle),
                           max_inflight)
        self._consumers.append(c)
        return c

    async def on_gave_up(self, stream: str, callback: OnGaveUp) -> None:
        found = self.broker.streams.get(stream)
        if found is None:
            raise NoStream(f"no stream {stream}")

        async def with_claim(event: GaveUp) -> None:
            async def delete() -> None:
                await event.delete()
                await self._gave_up_claimed(event.headers)

            await callback(GaveUp(event.stream, event.consumer, event.deliveries,
                                  event.headers, delete))

        found.on_gave_up.append(with_claim)

    # replies

    async def listen_replies(self, prefix: str, on_reply: OnReply) -> None:
        self._check()
        self._watch, on_reply = watching(self.env, prefix, on_reply)
        self.broker.subscriptions.append((prefix, on_reply, self))

    def _send(self, reply: str, answer: bytes | StepError | Alive,
              claim: str | None = None) -> None:
        self._check()
        for prefix, callback, owner in list(self.broker.subscriptions):
            token = reply[len(prefix):]
            if reply.startswith(prefix) and token and "." not in token:
                if claim is None:
                    callback(token, answer)
                else:  # read by the listener's own transport, as a subscription would
                    task = asyncio.get_running_loop().create_task(
                        owner._read_claimed_reply(token, claim, callback))
                    self.broker.tasks.add(task)
                    task.add_done_callback(self.broker.tasks.discard)

    async def reply_message(self, reply: str, payload: bytes,
                            headers: dict[str, str] | None) -> None:
        claim = (headers or {}).get(contract.HDR_CLAIM)
        if headers and claim is None:
            raise ValueError("a reply message's only header is a claim")
        if len(payload) + headers_size(headers or {}) > self.broker.max_payload:
            raise TooLarge(f"{len(payload)} bytes")
        self._send(reply, payload, claim)

    async def reply_error(self, reply: str, error: StepError) -> None:
        self._send(reply, StepError(error.code, header_safe(error.message)))

    # at most once

    async def call_step(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        self._check()
        if len(payload) + headers_size(headers) > self.broker.max_payload:
            raise TooLarge(f"{len(payload)} bytes")
        if self._watch is not None:
            self._watch.sent(headers)
        groups = self.broker.members(subject)
        if not groups:  # NATS's 503, which the sender's transport turns into the answer
            self.broker.spawn(answer_no_responders(self, subject,
                                                   headers.get(contract.HDR_REPLY, "")))
            return
        for live in groups:
            member = live[next(self.broker._turn) % len(live)]
            member.offer(CoreDelivery(payload, dict(headers), member))

    def serve(self, subject: str, queue: str, handle: Handle, max_inflight: int) -> Consumer:
        server = MemoryCallServer(self, subject, queue, handle, max_inflight)
        self._servers.append(server)
        return server

    async def probe_step(self, subject: str, within: float) -> bool:
        self._check()
        await asyncio.sleep(0)
        return bool(self.broker.members(subject.removesuffix(contract.PROBE_SUFFIX)))

    async def reply_alive(self, reply: str) -> None:
        self._send(reply, ALIVE)

    # the data sink

    async def save_record(self, subject: str, record: bytes) -> None:
        self._check()
        stream = self.broker.capturing(subject)
        if stream is None or stream.work_queue:
            raise NoStream(f"no stream takes {subject}")
        self.broker.records.append((subject, record))

    async def scan_records(self, subject: str) -> list[bytes]:
        self._check()
        return [r for s, r in self.broker.records if s == subject]


class MemoryCallServer(CallServer):
    """One transport's membership of an at-most-once step's queue group."""

    transport: MemoryTransport

    def __init__(self, transport: MemoryTransport, subject: str, queue: str, handle: Handle,
                 max_inflight: int) -> None:
        super().__init__(transport, subject, queue, handle, max_inflight)

    async def subscribe(self) -> None:
        self.transport._check()
        group = self.transport.broker.groups.setdefault(self.subject, {}).setdefault(
            self.queue, [])
        if self not in group:
            group.append(self)

    def leave(self) -> None:
        group = self.transport.broker.groups.get(self.subject, {}).get(self.queue, [])
        if self in group:
            group.remove(self)

    async def unsubscribe(self) -> None:
        self.leave()


def records_of(broker: MemoryBroker, kind: str) -> list[Mapping[str, object]]:
    """The data-stream records of one kind ("prediction", "measurement", "db"), decoded."""
    marker = f".{kind}."
    return [json.loads(r) for s, r in broker.records if marker in s]


__all__ = ["MemoryBroker", "MemoryCallServer", "MemoryConsumer", "MemoryDelivery",
           "MemoryTransport", "records_of"]
