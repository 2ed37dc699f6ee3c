"""At most once over core NATS: runner.transport.core's path on a nats-py connection.

* :func:`call`: a step's call, a plain publish with the NATS reply subject
  ``<the sender's no-responders inbox>.<HDR_REPLY>``;
* :func:`listen_no_responders`: that inbox (``<inbox>.>``, one subscription per process, made
  when the version has an at-most-once workflow); the server's 503 for a call no replica
  subscribed to names the call's subject (``Nats-Subject``), and the caller in HDR_REPLY
  is answered UNAVAILABLE;
* :class:`NatsCallServer`: a replica's queue subscriptions of a step's call subject and
  probe subject;
* :func:`probe`: a readiness probe, a core request (nats-py's request inbox).
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .. import contract
from .base import Handle, NotStored, TooLarge, Transport, Unreachable
from .core import CallServer, CoreDelivery, answer_no_responders

log = logging.getLogger("runner.transport")

STATUS_HDR = "Status"  # a NATS status message's header (503: no responders)
SUBJECT_HDR = "Nats-Subject"  # on a 503: the subject nobody subscribed to
ALIVE_HEADERS = {contract.HDR_ALIVE: "1"}
SUBSCRIBE_WITHIN = 5.0  # seconds for the server to confirm a replica's subscriptions
# A replica's calls wait in its own queue (CallServer), not in nats-py's: these only bound
# what nats-py holds between the socket and the callback.
PENDING_MSGS = 1_000_000
PENDING_BYTES = 512 * 1024 * 1024


async def call(nc: Client, subject: str, payload: bytes, headers: dict[str, str],
               no_responders: str) -> None:
    """Publish a step's call; its 503, if no replica subscribes, comes to `no_responders`."""
    reply = headers.get(contract.HDR_REPLY, "")
    try:
        await nc.publish(subject, payload, reply=no_responders + reply if no_responders and
                         reply else "", headers=headers)
    except nats.errors.MaxPayloadError as exc:
        raise TooLarge(str(exc)) from None
    except nats.errors.Error as exc:  # closed, reconnecting with a full buffer ...
        raise Unreachable(type(exc).__name__) from None


async def listen_no_responders(nc: Client, transport: Transport) -> str:
    """Subscribe this process's no-responders inbox; returns its prefix (``<inbox>.``)."""
    prefix = nc.new_inbox() + "."
    n = len(prefix)
    tasks: set[asyncio.Task[None]] = set()

    async def on_msg(msg: Msg) -> None:
        hdrs = msg.headers
        if not hdrs or hdrs.get(STATUS_HDR) != "503":
            return
        task = asyncio.create_task(answer_no_responders(
            transport, hdrs.get(SUBJECT_HDR, ""), msg.subject[n:]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    await nc.subscribe(prefix + ">", cb=on_msg)
    return prefix


async def probe(nc: Client, subject: str, within: float) -> bool:
    """Whether a replica answers the probe subject (False: no responders)."""
    try:
        await nc.request(subject, b"", timeout=within)
    except nats.errors.NoRespondersError:
        return False
    except (nats.errors.TimeoutError, TimeoutError):
        raise NotStored(f"no answer on {subject} within {within:g}s") from None
    except nats.errors.Error as exc:
        raise Unreachable(type(exc).__name__) from None
    return True


class NatsCallServer(CallServer):
    """A replica's queue subscriptions of one at-most-once step (runner.transport.core)."""

    def __init__(self, nc: Client, transport: Transport, subject: str, queue: str,
                 handle: Handle, max_inflight: int) -> None:
        super().__init__(transport, subject, queue, handle, max_inflight)
        self.nc = nc
        self._subs: list[Subscription] = []

    async def subscribe(self) -> None:
        nc = self.nc
        self._subs = [
            await nc.subscribe(self.subject, queue=self.queue, cb=self._on_call,
                               pending_msgs_limit=PENDING_MSGS,
                               pending_bytes_limit=PENDING_BYTES),
            await nc.subscribe(contract.probe_subject(self.subject), queue=self.queue,
                               cb=self._on_probe),
        ]
        # nats-py flush's timeout is annotated int, but handed to asyncio.wait_for
        await nc.flush(timeout=SUBSCRIBE_WITHIN)  # type: ignore[arg-type]

    async def _on_call(self, msg: Msg) -> None:
        self.offer(CoreDelivery(msg.data, msg.headers or {}, self))

    async def _on_probe(self, msg: Msg) -> None:
        if msg.reply:
            try:
                await self.nc.publish(msg.reply, b"")
            except nats.errors.Error:
                pass

    async def unsubscribe(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            try:
                # what the server sent before it saw the UNSUB is still handled
                await sub.drain()  # type: ignore[no-untyped-call]
            except nats.errors.Error as exc:  # closed or draining: nothing more arrives
                log.debug("drain of %s: %s", sub.subject, exc)


__all__ = ["NatsCallServer", "call", "listen_no_responders", "probe"]
