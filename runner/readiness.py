"""The entrypoint's readiness: every node of its workflows can take work.

The entrypoint is ready (``/readyz`` 200, gRPC health SERVING) when it is ready itself
(runner.process: connected, its streams there, started, not stopping) and every step of
its workflows has a node replica taking work from that step's durable consumer.

How it knows: from the consumers' state on the broker (``Transport.consumer_state``,
JetStream's consumer info), polled in the background. A node replica creates its
consumers, runs ``init``, and only then starts pulling (runner.node,
``NodeProcess.start``); from then on it keeps a pull request outstanding at the server
whenever it has room for work, sent again as soon as one expires or is filled. The server
forgets the pull requests of a connection that closes (a replica killed) at once. So "the
consumer has a request waiting" (``num_waiting > 0``) is exactly "some replica has
finished ``init`` and asks for work", and the nodes send nothing new for it.

Heartbeats (each node publishing "alive" on a subject of its own) were the alternative,
and not chosen: a new subject that every node publishes on and that the NATS permissions
must allow, a timer in every node process, and the sign of a process being alive rather
than of it pulling from that consumer (a replica whose consumer was lost, or that is
still reconnecting, would go on beating).

What the consumer's state cannot tell apart: a replica with every concurrency slot taken
asks for nothing, as a dead one does. So a consumer counts as alive at a poll when a
request is waiting, or when a message was delivered or settled since the previous poll
(work going on). A step goes down only once its consumer was not seen alive for
DOWN_AFTER seconds: all the node's replicas died or lost NATS, or all are busy and
finished nothing for that long (then the node cannot take work either). It comes back up
at the first poll that sees it alive. The gap between two pull requests of a replica (one
expires or is filled, the next is sent) is far shorter than DOWN_AFTER: no flap.

A node that may scale to zero (KAI_SCALE_TO_ZERO, kai.yaml/krt.yml `autoscaling` with
`minReplicas: 0`) has no replica while nothing waits for it: its steps count as up while
their consumers exist (the entrypoint creates them, runner.entrypoint), since a request the
entrypoint refused would never reach the queue whose depth wakes the node.

Never blocking: the probes read the state kept here (:attr:`NodeWatch.ready`); a background
task updates it, every POLL_STARTING seconds while a step is down and every POLL_READY
seconds once all are up, asking for every consumer's state at once, each for at most
ASK_WITHIN seconds. A poll that gets no answer (the broker is unreachable, the consumer
info is refused) sees nothing alive: DOWN_AFTER seconds of that, and the nodes are down.
The cost is one JetStream API request per step and entrypoint replica per poll.

A step of an at-most-once workflow has no consumer (runner.transport.core): its replicas
join a queue group on the step's call subject, after their ``init``, and answer an empty
request on the step's probe subject (``contract.probe_subject``, in the same group; a plain
subject of the version, no ``$SYS`` account or system events needed) as soon as they have
joined. A poll sends one such probe per step (``Transport.probe_step``): an answer is a
replica there and its event loop running, "no responders" is none; no answer within
ASK_WITHIN sees nothing alive. A replica answers probes even with every slot busy, so
busy and dead are told apart there. The hysteresis (DOWN_AFTER) is the same.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from . import contract
from .transport import ConsumerState, Transport

log = logging.getLogger("runner.readiness")

DOWN_AFTER = 10.0  # seconds a step that was up may go unseen before it is down
POLL_STARTING = 0.5  # seconds between polls while a step is down
POLL_READY = 2.0  # seconds between polls once every step is up
ASK_WITHIN = 2.0  # seconds at most to get one consumer's state


@dataclass(frozen=True)
class Step:
    """One step of a workflow: its stream, its durable consumer and the node that runs it.

    At most once: `stream` is "", `consumer` the step's queue group and `probe` its probe
    subject (asked instead of a consumer's state)."""

    stream: str
    consumer: str
    node: str
    # the node may have no replica at all (autoscaled to zero, KAI_SCALE_TO_ZERO): the step
    # is up while its consumer is there, so the work waiting in it can wake the node
    scales_to_zero: bool = False
    probe: str = ""


def steps_of(env: contract.RunnerEnv) -> list[Step]:
    """Every step of the version's workflows, each (stream, consumer) once, in order."""
    found: dict[tuple[str, str], Step] = {}
    for wf in env.workflows:
        stream = contract.stream_name(env.project, env.version, wf.name)
        for index, node in enumerate(wf.chain):
            if wf.at_most_once:
                step = Step("", contract.queue_group(env.project, env.version, wf.name, index,
                                                     node), node,
                            probe=contract.probe_subject(contract.call_subject(
                                env.project, env.version, wf.name, index)))
            else:
                step = Step(stream, contract.consumer_name(index, node), node,
                            node in env.scale_to_zero)
            found.setdefault((step.stream, step.consumer), step)
    return list(found.values())


@dataclass
class _Watched:
    """What the polls saw of one step's consumer."""

    step: Step
    up: bool = False
    seen_at: float = 0.0  # when a poll last saw it alive (monotonic seconds)
    last: ConsumerState | None = None

    def see(self, state: ConsumerState | None, now: float, down_after: float) -> None:
        """One poll's answer: `state`, or None when the consumer is not there."""
        before, self.last = self.last, state
        alive = state is not None and (
            self.step.scales_to_zero or state.waiting > 0
            or (before is not None and state.moved_since(before)))
        self.mark(alive, now, down_after)

    def mark(self, alive: bool, now: float, down_after: float) -> None:
        """One poll's verdict: alive (a consumer taking work, a probe answered) or not."""
        if alive:
            self.up, self.seen_at = True, now
        else:
            self.unseen(now, down_after)

    def unseen(self, now: float, down_after: float) -> None:
        """A poll that did not see it alive (no answer, or nobody pulling)."""
        if self.up and now - self.seen_at >= down_after:
            self.up = False


class NodeWatch:
    """Whether every step of the workflows has a node replica taking work (module docstring).

    `on_change` is awaited after a poll that changed :attr:`ready`. `clock` is the monotonic
    time the hysteresis is measured in.
    """

    def __init__(self, transport: Transport, steps: Iterable[Step],
                 on_change: Callable[[], Awaitable[None]] | None = None, *,
                 down_after: float = DOWN_AFTER, ask_within: float = ASK_WITHIN,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.transport = transport
        self.on_change = on_change
        self.down_after = down_after
        self.ask_within = ask_within
        self._clock = clock
        self._watched = [_Watched(step) for step in steps]
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return all(w.up for w in self._watched)

    def down(self) -> list[str]:
        """The nodes with a step that is down (sorted)."""
        return sorted({w.step.node for w in self._watched if not w.up})

    def reason(self) -> str:
        """Why it is not ready ("" when it is)."""
        down = self.down()
        if not down:
            return ""
        nodes = f"node {down[0]}" if len(down) == 1 else f"nodes {', '.join(down)}"
        return f"no replica of {nodes} is taking work (yet)"

    async def poll(self) -> bool:
        """Ask for every step's consumer state once (bounded by ask_within); returns ready."""
        was_ready, was_down = self.ready, set(self.down())
        answers = await asyncio.gather(*(self._ask(w.step) for w in self._watched),
                                       return_exceptions=True)
        now = self._clock()
        for watched, answer in zip(self._watched, answers, strict=True):
            if isinstance(answer, BaseException):
                log.debug("consumer %s/%s: no state (%s)", watched.step.stream,
                          watched.step.consumer, answer or type(answer).__name__)
                watched.unseen(now, self.down_after)
            elif isinstance(answer, bool):  # a probe: answered, or no responders
                watched.mark(answer, now, self.down_after)
            else:
                watched.see(answer, now, self.down_after)
        self._log_changes(was_down, set(self.down()))
        if self.ready != was_ready and self.on_change is not None:
            await self.on_change()
        return self.ready

    async def _ask(self, step: Step) -> ConsumerState | bool | None:
        async with asyncio.timeout(self.ask_within):
            if step.probe:
                return await self.transport.probe_step(step.probe, self.ask_within)
            return await self.transport.consumer_state(step.stream, step.consumer,
                                                       self.ask_within)

    def _log_changes(self, was_down: set[str], down: set[str]) -> None:
        for node in sorted(was_down - down):
            log.info("node %s takes work", node)
        for node in sorted(down - was_down):
            log.warning("node %s: no replica seen taking work for %gs; not ready", node,
                        self.down_after)
        if was_down and not down:
            log.info("every node takes work: ready for calls")

    def start(self) -> None:
        """Poll in the background until :meth:`stop`."""
        if self._task is None:
            if not self.ready:
                log.info("ready once every node takes work: %s", ", ".join(self.down()))
            self._task = asyncio.create_task(self._run(), name="node readiness")

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # the watch must go on: the probes depend on it
                log.exception("polling the nodes' consumers failed")
            await asyncio.sleep(POLL_READY if self.ready else POLL_STARTING)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
