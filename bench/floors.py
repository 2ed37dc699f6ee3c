"""The floors the chain benchmark is measured against, each a separate process.

    python -m bench.floors grpc-echo --port P --method /kaibench.Bench/Echo
        a bare grpc.aio unary server that returns the request bytes unchanged;
    python -m bench.floors nats-hop --url URL --subject S (--next S2 | --last)
        one hop of a bare nats-py chain: subscribe to S and republish each
        message to S2 with the same reply subject, or (--last) answer the
        reply subject. N of them in a row, driven by core NATS request/reply,
        are the transport floor of an N-node chain;
    python -m bench.floors js-front --port P --url URL --stream S --subjects 'x.>' --first x.s0
        the front of the JetStream floor (our message pattern without our code): a grpc.aio
        generic handler that creates the work-queue stream, publishes each request to the
        first step's subject, waits for the PubAck and then for the answer on its reply inbox;
    python -m bench.floors js-hop --url URL --stream S --consumer C --subject x.s0 \
            (--next x.s1 | --last)
        one hop of it: a durable pull consumer on the step's subject; each message is
        published to the next step (and its PubAck awaited) before it is acked, or (--last)
        answered on the reply inbox its header names, then acked. The front plus N hops is
        the JetStream floor of an N-node chain: the limit of the at-least-once design.

Each prints ``READY loop=<uvloop|asyncio>`` on stdout once it serves, and stops on SIGTERM/SIGINT.
No protobuf work is done: the floors are the cost of the transports alone. The JetStream
floor's settings (the stream's storage, de-duplication window and max age, the consumers' ack
wait, max deliver and messages in flight) are given on the command line by bench/chain.py,
which reads them from the runner's contract; these processes import no runner code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


def _install_loop(use_uvloop: bool) -> str:
    if use_uvloop:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            return "uvloop"
        except ImportError:
            pass
    return "asyncio"


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve_until_signal(port: int, method: str, loop_name: str,
                              call: Callable[..., Awaitable[bytes]]) -> None:
    """Serve `method` (bytes in, bytes out) with `call` on loopback `port`, say READY, and
    stop on SIGTERM or SIGINT."""
    import grpc

    service, _, rpc = method.strip("/").rpartition("/")
    handler = grpc.method_handlers_generic_handler(
        service, {rpc: grpc.unary_unary_rpc_method_handler(call)}
    )
    server = grpc.aio.server(options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"READY loop={loop_name}", flush=True)
    await _until_signal()
    await server.stop(grace=1.0)


async def grpc_echo(port: int, method: str, loop_name: str) -> None:
    import grpc

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    await _serve_until_signal(port, method, loop_name, echo)


async def nats_hop(url: str, subject: str, next_subject: str | None, loop_name: str) -> None:
    import nats
    from nats.aio.msg import Msg

    nc = await nats.connect(url, max_reconnect_attempts=0)
    if next_subject is None:

        async def on_msg(msg: Msg) -> None:
            if msg.reply:
                await nc.publish(msg.reply, msg.data)

    else:
        nxt = next_subject

        async def on_msg(msg: Msg) -> None:
            await nc.publish(nxt, msg.data, reply=msg.reply)

    await nc.subscribe(subject, cb=on_msg, pending_msgs_limit=1_000_000)
    await nc.flush()
    print(f"READY loop={loop_name}", flush=True)
    await _until_signal()
    with contextlib.suppress(Exception):
        await nc.drain()


# --- the JetStream floor -------------------------------------------------------------------

MSG_ID_HDR = "Nats-Msg-Id"  # JetStream's de-duplication id: "<call>:<step>", as ours
REPLY_HDR = "Floor-Reply"  # the subject of the answer (the front's inbox and the call)
STATUS_HDR = "Status"  # a pull request's end (408 expired, 409 ...) or a heartbeat (100)
PENDING_HDR = "Nats-Pending-Messages"  # what an ended pull request had left
PULL_EXPIRES = 5.0  # seconds a pull request waits on the server


async def js_front(port: int, method: str, url: str, stream: str, subjects: str, first: str,
                   storage: str, duplicate_window: float, max_age: float,
                   loop_name: str) -> None:
    """The gRPC front: each call is published to `first`, stored (PubAck), then answered."""
    import grpc
    import nats
    from nats.aio.msg import Msg
    from nats.js import api

    nc = await nats.connect(url, max_reconnect_attempts=0)
    jsm = nc.jsm()
    await jsm.add_stream(api.StreamConfig(
        name=stream, subjects=[subjects], retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.MEMORY if storage == "memory" else api.StorageType.FILE,
        duplicate_window=duplicate_window, max_age=max_age, discard=api.DiscardPolicy.OLD,
    ))
    inbox = nc.new_inbox()
    ack_prefix, reply_prefix = inbox + ".a.", inbox + ".r."
    acks: dict[str, asyncio.Future[bytes]] = {}
    replies: dict[str, asyncio.Future[bytes]] = {}

    def settle(waiting: dict[str, asyncio.Future[bytes]], skip: int) -> Any:
        async def on_msg(msg: Msg) -> None:
            fut = waiting.pop(msg.subject[skip:], None)
            if fut is not None and not fut.done():
                fut.set_result(msg.data)
        return on_msg

    await nc.subscribe(ack_prefix + "*", cb=settle(acks, len(ack_prefix)),
                       pending_msgs_limit=1_000_000)
    await nc.subscribe(reply_prefix + "*", cb=settle(replies, len(reply_prefix)),
                       pending_msgs_limit=1_000_000)
    await nc.flush()
    seq = 0
    run_id = os.urandom(4).hex()  # call ids of this process: no duplicate of an earlier one's

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        nonlocal seq
        seq += 1
        call = f"{run_id}{seq}"
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[bytes] = loop.create_future()
        answered: asyncio.Future[bytes] = loop.create_future()
        acks[call], replies[call] = acked, answered
        try:
            await nc.publish(first, request, reply=ack_prefix + call,
                             headers={MSG_ID_HDR: call + ":0", REPLY_HDR: reply_prefix + call})
            puback = await acked
            if b'"error"' in puback:
                await context.abort(grpc.StatusCode.UNAVAILABLE, puback.decode(errors="replace"))
            return await answered
        finally:  # a cancelled call (its deadline) leaves nothing behind
            acks.pop(call, None)
            replies.pop(call, None)

    await _serve_until_signal(port, method, loop_name, echo)
    with contextlib.suppress(Exception):
        await nc.drain()


async def js_hop(url: str, stream: str, consumer: str, subject: str, next_subject: str | None,
                 step: int, ack_wait: float, max_deliver: int, max_inflight: int,
                 loop_name: str) -> None:
    """One step: pull, publish the next step and wait for its PubAck (or answer), then ack.

    No task and no future per message: a delivery publishes and is kept until its PubAck
    arrives on this hop's own inbox, whose callback acks it. Pull requests ask for as many
    messages as are free of `max_inflight`, once a quarter of it is free.
    """
    import nats
    from nats.aio.msg import Msg
    from nats.js import api

    nc = await nats.connect(url, max_reconnect_attempts=0)
    await nc.jsm().add_consumer(stream, api.ConsumerConfig(
        name=consumer, durable_name=consumer, filter_subject=subject,
        deliver_policy=api.DeliverPolicy.ALL, ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait, max_deliver=max_deliver, max_ack_pending=10_000, max_waiting=512,
    ))
    pull_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
    pull_inbox, ack_prefix = nc.new_inbox(), nc.new_inbox() + "."
    low_water = max(1, max_inflight // 4)
    expires_ns = int(PULL_EXPIRES * 1e9)
    pulls: dict[str, int] = {}  # open pull request -> its batch
    waiting: dict[str, Msg] = {}  # our publish's token -> the delivery it came from
    inflight = owed = pulled = published = 0

    async def pull() -> None:
        nonlocal owed, pulled
        free = max_inflight - inflight - owed
        if free >= low_water:
            pulled += 1
            token = str(pulled)
            pulls[token] = free
            owed += free
            await nc.publish(pull_subject, b'{"batch":%d,"expires":%d}' % (free, expires_ns),
                             reply=f"{pull_inbox}.{token}")

    async def done(msg: Msg) -> None:
        nonlocal inflight
        await msg.ack()
        inflight -= 1
        await pull()

    async def on_delivery(msg: Msg) -> None:
        nonlocal inflight, owed, published
        hdrs = msg.headers or {}
        if not msg.reply:  # no ack subject: the status of a pull request
            if hdrs.get(STATUS_HDR) == "100":
                return
            batch = pulls.pop(msg.subject[len(pull_inbox) + 1:], None)
            if batch is not None:
                left = hdrs.get(PENDING_HDR, "")
                if left.isdigit():
                    owed = max(0, owed - int(left))
                else:  # not told: owe at most what the open requests still may send
                    owed = min(owed, sum(pulls.values()))
                await pull()
            return
        owed = max(0, owed - 1)
        inflight += 1
        reply = hdrs.get(REPLY_HDR, "")
        if next_subject is None:
            if reply:
                await nc.publish(reply, msg.data)
            await done(msg)
            return
        published += 1
        token = str(published)
        waiting[token] = msg
        call = hdrs.get(MSG_ID_HDR, "").split(":", 1)[0]
        await nc.publish(next_subject, msg.data, reply=ack_prefix + token,
                         headers={MSG_ID_HDR: f"{call}:{step + 1}", REPLY_HDR: reply})

    async def on_puback(ack: Msg) -> None:
        nonlocal inflight
        msg = waiting.pop(ack.subject[len(ack_prefix):], None)
        if msg is None:
            return
        if b'"error"' in ack.data:  # not stored: let JetStream deliver it again
            await msg.nak()
            inflight -= 1
            await pull()
            return
        await done(msg)

    await nc.subscribe(ack_prefix + "*", cb=on_puback, pending_msgs_limit=1_000_000)
    await nc.subscribe(pull_inbox + ".*", cb=on_delivery, pending_msgs_limit=1_000_000)
    await pull()
    await nc.flush()
    print(f"READY loop={loop_name}", flush=True)
    await _until_signal()
    with contextlib.suppress(Exception):
        await nc.drain()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floors")
    parser.add_argument(
        "--uvloop", action="store_true", help="run on uvloop (asyncio's loop when not importable)"
    )
    sub = parser.add_subparsers(dest="kind", required=True)
    g = sub.add_parser("grpc-echo")
    g.add_argument("--port", type=int, required=True)
    g.add_argument("--method", default="/kaibench.Bench/Echo")
    h = sub.add_parser("nats-hop")
    h.add_argument("--url", required=True)
    h.add_argument("--subject", required=True)
    end = h.add_mutually_exclusive_group(required=True)
    end.add_argument("--next")
    end.add_argument("--last", action="store_true")
    f = sub.add_parser("js-front", help="the JetStream floor's gRPC front")
    f.add_argument("--port", type=int, required=True, help="gRPC port (127.0.0.1)")
    f.add_argument("--method", default="/kaibench.Bench/Echo", help="the one unary method")
    f.add_argument("--url", required=True, help="NATS URL")
    f.add_argument("--stream", required=True, help="name of the work-queue stream to create")
    f.add_argument("--subjects", required=True, help="the stream's subject filter")
    f.add_argument("--first", required=True, help="subject of the first step")
    f.add_argument("--storage", choices=("file", "memory"), default="file",
                   help="the stream's storage")
    f.add_argument("--duplicate-window", type=float, required=True,
                   help="seconds the stream remembers Nats-Msg-Id values")
    f.add_argument("--max-age", type=float, required=True,
                   help="seconds an undelivered message is kept")
    j = sub.add_parser("js-hop", help="one hop of the JetStream floor")
    j.add_argument("--url", required=True, help="NATS URL")
    j.add_argument("--stream", required=True, help="the work-queue stream")
    j.add_argument("--consumer", required=True, help="name of the durable pull consumer")
    j.add_argument("--subject", required=True, help="the subject this step consumes")
    j.add_argument("--step", type=int, required=True, help="this step's index (0-based)")
    j.add_argument("--ack-wait", type=float, required=True, help="the consumer's ack wait (s)")
    j.add_argument("--max-deliver", type=int, required=True,
                   help="the consumer's deliveries per message")
    j.add_argument("--max-inflight", type=int, required=True,
                   help="messages this hop works on at once")
    jend = j.add_mutually_exclusive_group(required=True)
    jend.add_argument("--next", help="the next step's subject")
    jend.add_argument("--last", action="store_true", help="answer on the reply inbox")
    args = parser.parse_args(argv)
    loop_name = _install_loop(args.uvloop)
    coro: Any
    if args.kind == "grpc-echo":
        coro = grpc_echo(args.port, args.method, loop_name)
    elif args.kind == "nats-hop":
        coro = nats_hop(args.url, args.subject, None if args.last else args.next, loop_name)
    elif args.kind == "js-front":
        coro = js_front(args.port, args.method, args.url, args.stream, args.subjects,
                        args.first, args.storage, args.duplicate_window, args.max_age,
                        loop_name)
    else:
        coro = js_hop(args.url, args.stream, args.consumer, args.subject,
                      None if args.last else args.next, args.step, args.ack_wait,
                      args.max_deliver, args.max_inflight, loop_name)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
