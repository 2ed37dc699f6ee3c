"""At most once: a workflow's hops over core NATS request/reply, without JetStream.

A workflow with ``delivery: at-most-once`` (krt.yml; ``contract.Workflow.delivery``) keeps
no stream, consumer or claim bucket. What travels, and who does what:

* a call of step ``i`` is one core NATS message to ``contract.call_subject(p, v, wf, i)``,
  with the same headers as a JetStream step (:func:`~runner.transport.base.step_headers`:
  the call id and step in Nats-Msg-Id, the deadline, the final reply subject HDR_REPLY, the
  request id when the client chose it). Every replica of the step's node joins the queue
  group ``contract.queue_group(...)`` on that subject (:class:`CallServer`), so each call
  goes to one of them; the node runs the same handler as for a JetStream step, and passes
  its output on to step ``i + 1`` the same way, or answers HDR_REPLY (the entrypoint's
  one reply inbox) on the last step, exactly as a JetStream node does;
* the NATS reply subject of a call is ``<the sender's own inbox>.<HDR_REPLY>``: when no
  replica subscribes to the step's subject, the server answers the sender there with a
  503 ("no responders"), and the sender answers the caller UNAVAILABLE
  (:func:`answer_no_responders`): on step 0 the call surely did not run (it keeps no
  backlog: one that arrives while no replica of the first node runs fails at once); on a
  later step the nodes before it did run it;
* a replica tells the caller that a call it holds (running, or waiting for a free slot) is
  still being worked on: an empty message with header HDR_ALIVE to HDR_REPLY, every
  :func:`beat_period` (an eighth of the ack wait), sent only for calls held when the timer
  fires, so a call answered within a few milliseconds costs none. The reply listener of the
  process that sent the call (:class:`CallWatch`) answers it UNAVAILABLE when it has heard
  nothing of it for the ack wait (``KAI_ACK_WAIT``): the replica holding it crashed or lost
  NATS. Such a call is never delivered again, and it may have partly run (the entrypoint
  cannot know how far it got), which the message says;
* a replica also answers readiness probes (an empty request to
  ``contract.probe_subject(call subject)``, in the same queue group) as soon as it
  subscribes, which is after its ``init``: the entrypoint's readiness (runner.readiness)
  is made of them for these steps;
* payloads travel in the message itself: one that does not fit in one NATS message is
  refused (RESOURCE_EXHAUSTED), never put into the claim bucket.

``ctx.prediction``, ``ctx.measurement`` and ``ctx.db`` are unchanged: they use the project's
data stream, whatever the workflow's delivery. This module holds what the NATS
implementation (runner.transport.natscore) and the in-memory one share; it imports no
broker client.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from .. import contract
from .base import ALIVE, Alive, Consumer, Delivery, Handle, OnReply, StepError

if TYPE_CHECKING:
    from .base import Transport

log = logging.getLogger("runner.transport")

QUEUED_PER_SLOT = 8  # calls a replica holds waiting for a slot, per slot; more are refused


def beat_period(ack_wait: float) -> float:
    """Seconds between the signs of life of the calls a replica holds (and between the
    checks of a caller's watch): an eighth of the ack wait, within which a silent call is
    lost."""
    return max(0.02, ack_wait / 8)


# --- what a step is ------------------------------------------------------------------------


def step_of(env: contract.RunnerEnv, subject: str) -> tuple[str, int, tuple[str, ...]] | None:
    """(workflow, step, chain) of the at-most-once step whose calls arrive on `subject`."""
    for wf in env.workflows:
        for step in range(len(wf.chain)):
            if contract.call_subject(env.project, env.version, wf.name, step) == subject:
                return wf.name, step, wf.chain
    return None


def _node_of(env: contract.RunnerEnv, subject: str) -> str:
    found = step_of(env, subject)
    return found[2][found[1]] if found else subject


def no_responders_error(env: contract.RunnerEnv, subject: str) -> StepError:
    """The answer to a call that no replica of its step took."""
    found = step_of(env, subject)
    if found is None:
        return StepError.of("UNAVAILABLE", f"no replica takes the calls of {subject}")
    workflow, step, chain = found
    if step == 0:
        return StepError.of(
            "UNAVAILABLE", f"no replica of node {chain[0]} takes calls (workflow {workflow} is "
            "at-most-once and keeps no backlog): not run; try again shortly")
    return StepError.of(
        "UNAVAILABLE", f"no replica of node {chain[step]} takes calls (workflow {workflow} "
        f"is at-most-once): the request may have partly run (through node {chain[step - 1]})")


async def answer_no_responders(transport: Transport, subject: str, reply: str) -> None:
    """Answer the caller of a call to `subject` that no replica took (the broker's 503)."""
    if not reply:
        return
    try:
        await transport.reply_error(reply, no_responders_error(transport.env, subject))
    except Exception as exc:  # its caller's watch answers it once the ack wait is over
        log.debug("no-responders answer to %s not sent: %s", reply, exc)


# --- the caller's side ---------------------------------------------------------------------


def lost_error(window: float) -> StepError:
    return StepError.of(
        "UNAVAILABLE", f"no sign of life from the node handling this call for {window:g}s (a "
        "replica crashed or lost NATS); at-most-once calls are never delivered again, and "
        "this one may have partly run")


class CallWatch:
    """The at-most-once calls a reply listener waits for, each with when it was last heard of.

    It stands between the transport and the listener's `on_reply`: a sign of life (ALIVE)
    refreshes its call and goes no further; any other answer ends the call and is passed on.
    A call unheard of for `window` seconds is answered UNAVAILABLE (:func:`lost_error`).
    A check runs every :func:`beat_period` while a call is watched, and not otherwise.
    """

    def __init__(self, prefix: str, on_reply: OnReply, window: float) -> None:
        self.prefix = prefix
        self.on_reply = on_reply
        self.window = window
        self.period = beat_period(window)
        self.heard: dict[str, float] = {}  # call id -> monotonic seconds
        self._task: asyncio.Task[None] | None = None

    def sent(self, headers: Mapping[str, str]) -> None:
        """A call was sent: watch it when its answer comes to this listener."""
        reply = headers.get(contract.HDR_REPLY, "")
        if not reply.startswith(self.prefix):
            return  # a node passing a call on: the entrypoint's listener watches it
        self.heard[reply[len(self.prefix):]] = time.monotonic()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(),
                                                                name="at-most-once calls")

    def __call__(self, call_id: str, answer: bytes | StepError | Alive) -> None:
        if answer is ALIVE:
            if call_id in self.heard:
                self.heard[call_id] = time.monotonic()
            return
        if self.heard:
            self.heard.pop(call_id, None)
        self.on_reply(call_id, answer)

    async def _watch(self) -> None:
        try:
            while self.heard:
                await asyncio.sleep(self.period)
                now = time.monotonic()
                lost = [c for c, at in self.heard.items() if now - at >= self.window]
                for call_id in lost:
                    del self.heard[call_id]
                    self.on_reply(call_id, lost_error(self.window))
        finally:
            self._task = None

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


def watching(env: contract.RunnerEnv, prefix: str,
             on_reply: OnReply) -> tuple[CallWatch | None, OnReply]:
    """The watch of a reply listener, and what the transport calls for each answer: the
    watch when the version has an at-most-once workflow, else `on_reply` itself."""
    if not any(wf.at_most_once for wf in env.workflows):
        return None, on_reply
    watch = CallWatch(prefix, on_reply, env.ack_wait)
    return watch, watch


# --- the replica's side --------------------------------------------------------------------


class CoreDelivery(Delivery):
    """One call taken from a step's queue group. Nothing is stored, so there is nothing to
    settle: ack and term are no-ops; a nak (deliver it again) cannot be done, and answers
    the caller UNAVAILABLE; in_progress is the server's signs of life (:class:`CallServer`)."""

    __slots__ = ("server",)

    def __init__(self, payload: bytes, headers: Mapping[str, str], server: CallServer) -> None:
        super().__init__(payload, headers)
        self.server = server

    @property
    def delivery_count(self) -> int:
        return 1

    async def ack(self) -> None:
        return None

    async def nak(self, delay: float | None = None) -> None:
        await self.server.refuse(self, "could not handle this call now, and at-most-once "
                                 "calls are never delivered again; it may have partly run")

    async def in_progress(self) -> None:
        return None

    async def term(self) -> None:
        return None


class CallServer(Consumer):
    """One replica's membership of an at-most-once step's queue group (module docstring).

    Each call is offered as it arrives (:meth:`offer`): run as a task when fewer than
    `max_inflight` run, else held in order until one ends, up to QUEUED_PER_SLOT per slot;
    beyond that it is answered UNAVAILABLE (not run). Every call held (running or waiting)
    gets a sign of life every :func:`beat_period` until its deadline. :meth:`stop` leaves
    the group, lets the calls held finish within the grace, then answers those left over
    UNAVAILABLE. An implementation subscribes and unsubscribes.
    """

    def __init__(self, transport: Transport, subject: str, queue: str, handle: Handle,
                 max_inflight: int) -> None:
        self.transport = transport
        self.subject = subject
        self.queue = queue
        self.node = _node_of(transport.env, subject)
        self._handle = handle
        self.max_inflight = max(1, max_inflight)
        self.max_queued = QUEUED_PER_SLOT * self.max_inflight
        self.period = beat_period(transport.env.ack_wait)
        self.running: set[CoreDelivery] = set()
        self.queued: deque[CoreDelivery] = deque()
        self.tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._done = False  # stopped: what arrives now is refused

    @abc.abstractmethod
    async def subscribe(self) -> None:
        """Join the queue group on the call subject and on its probe subject; return once
        the broker knows of both."""

    @abc.abstractmethod
    async def unsubscribe(self) -> None:
        """Leave both; calls already on their way are still offered."""

    async def start(self) -> None:
        await self.subscribe()
        self._ticker = asyncio.get_running_loop().create_task(
            self._beat(), name=f"signs of life {self.subject}")

    def reset(self) -> None:
        return None  # core subscriptions come back with the connection by themselves

    def offer(self, d: CoreDelivery) -> None:
        if self._done:
            self._spawn(self.refuse(d, "is shutting down: not run; try again shortly"))
        elif len(self.running) < self.max_inflight:
            self._run(d)
        elif len(self.queued) < self.max_queued:
            self.queued.append(d)
        else:
            self._spawn(self.refuse(d, f"has {len(self.queued)} calls waiting already: not "
                                    "run; try again shortly"))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _run(self, d: CoreDelivery) -> None:
        self.running.add(d)
        self._spawn(self._go(d))

    async def _go(self, d: CoreDelivery) -> None:
        try:
            await self._handle(d)
        except Exception:
            log.exception("unexpected error handling a call of %s", self.subject)
        finally:
            self.running.discard(d)
            if self.queued and not self._done:
                self._run(self.queued.popleft())

    async def refuse(self, d: CoreDelivery, why: str) -> None:
        """Answer the caller of `d` UNAVAILABLE: this replica of the node `why`."""
        if not d.reply:
            return
        try:
            await self.transport.reply_error(d.reply,
                                             StepError.of("UNAVAILABLE", f"node {self.node} {why}"))
        except Exception as exc:  # its caller's watch answers it
            log.debug("answer to %s not sent: %s", d.reply, exc)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            now = time.time()
            for d in [*self.running, *self.queued]:
                deadline = d.deadline
                if d.reply and not (deadline and now >= deadline):
                    try:
                        await self.transport.reply_alive(d.reply)
                    except Exception:  # the connection: the next beat tries again
                        pass

    async def stop(self, grace: float) -> None:
        """Leave the group; the calls held have `grace` seconds to finish."""
        end = time.monotonic() + grace
        try:
            await asyncio.wait_for(self.unsubscribe(), max(0.1, grace))
        except Exception as exc:
            log.debug("leaving %s: %s", self.subject, exc)
        while self.tasks and (left := end - time.monotonic()) > 0:
            await asyncio.wait(set(self.tasks), timeout=left)
        self._done = True
        waiting, running = [*self.queued], [*self.running]
        self.queued.clear()
        cut = [*self.tasks]
        for t in cut:
            t.cancel()
        await asyncio.gather(*cut, return_exceptions=True)
        await asyncio.gather(
            *(self.refuse(d, "is shutting down: not run; try again shortly") for d in waiting),
            *(self.refuse(d, "stopped while handling this call (its drain took longer than "
                          "the grace period): it may have partly run") for d in running))
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)

    async def abandon(self) -> None:
        """The process died (tests): nothing held is answered, and no sign of life follows."""
        self._done = True
        self.queued.clear()
        tasks = [*self.tasks, *([self._ticker] if self._ticker else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["QUEUED_PER_SLOT", "CallServer", "CallWatch", "CoreDelivery", "answer_no_responders",
           "beat_period", "lost_error", "no_responders_error", "step_of", "watching"]
