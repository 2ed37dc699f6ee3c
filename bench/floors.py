"""The floors the chain benchmark is measured against, each a separate process.

    python -m bench.floors grpc-echo --port P --method /kaibench.Bench/Echo
        a bare grpc.aio unary server that returns the request bytes unchanged;
    python -m bench.floors nats-hop --url URL --subject S (--next S2 | --last)
        one hop of a bare nats-py chain: subscribe to S and republish each
        message to S2 with the same reply subject, or (--last) answer the
        reply subject. N of them in a row, driven by core NATS request/reply,
        are the transport floor of an N-node chain.

Each prints ``READY loop=<uvloop|asyncio>`` on stdout once it serves, and stops on SIGTERM/SIGINT.
No protobuf work is done: the floors are the cost of the transports alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

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


async def grpc_echo(port: int, method: str, loop_name: str) -> None:
    import grpc

    service, _, rpc = method.strip("/").rpartition("/")

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        service, {rpc: grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.aio.server(options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"READY loop={loop_name}", flush=True)
    await _until_signal()
    await server.stop(grace=1.0)


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
    args = parser.parse_args(argv)
    loop_name = _install_loop(args.uvloop)
    if args.kind == "grpc-echo":
        coro = grpc_echo(args.port, args.method, loop_name)
    else:
        coro = nats_hop(args.url, args.subject, None if args.last else args.next, loop_name)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
