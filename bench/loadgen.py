"""The load generator: one client process that drives a target cell by cell.

    python -m bench.loadgen grpc --address 127.0.0.1:P --method /kaibench.Bench/Echo \
        --cells '[[100, 1], [100, 32]]' --warmup 1 --seconds 5 [--requests N]
    python -m bench.loadgen nats --url nats://127.0.0.1:P --subject floor.s0 --cells ...

It runs in its own process, so it never shares an event loop (or a GIL) with
the servers it measures. For gRPC it sends a pre-encoded `kaibench.Payload`
message (field 1, bytes) with identity serializers, so the client does the
same, minimal work against every target: our entrypoint and the bare
grpc.aio echo alike. For NATS it sends the raw payload with core
request/reply (one shared reply inbox, as nats-py does by default).

Each cell (payload size, concurrency) runs a warm-up and then a measured phase
that stops after `--seconds` or after `--requests` answers, whichever comes
first. Every call has a deadline (`--timeout`), so a cell always ends. The
result is one JSON line on stdout, prefixed with ``RESULT ``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

Call = Callable[[bytes], Awaitable[bytes]]

GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


def encode_payload_message(payload: bytes) -> bytes:
    """`kaibench.Payload{data: payload}` in protobuf wire format (field 1, length-delimited)."""
    n = len(payload)
    head = bytearray(b"\x0a")
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            head.append(byte | 0x80)
        else:
            head.append(byte)
            break
    return bytes(head) + payload


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(latencies_ns: list[int], elapsed: float, errors: int) -> dict[str, Any]:
    lat = sorted(x / 1e6 for x in latencies_ns)
    count = len(lat)
    return {
        "requests": count,
        "errors": errors,
        "seconds": round(elapsed, 4),
        "throughput_rps": round(count / elapsed, 2) if elapsed > 0 else 0.0,
        "p50_ms": round(percentile(lat, 50), 4),
        "p90_ms": round(percentile(lat, 90), 4),
        "p99_ms": round(percentile(lat, 99), 4),
        "max_ms": round(lat[-1], 4) if lat else math.nan,
        "mean_ms": round(sum(lat) / count, 4) if count else math.nan,
    }


def describe_error(exc: BaseException) -> str:
    """One short line: a gRPC status code and details, or the exception's type and text."""
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    if callable(code) and callable(details):
        try:
            return f"{code().name}: {details()}"[:300]
        except Exception:
            pass
    return f"{type(exc).__name__}: {exc}"[:300]


async def _phase(
    call: Call,
    request: bytes,
    expect_len: int,
    concurrency: int,
    seconds: float,
    max_requests: int,
    record: bool,
) -> tuple[list[int], float, int, list[str]]:
    """Run `concurrency` workers until `seconds` pass or `max_requests` answers arrive."""
    latencies: list[int] = []
    errors = 0
    messages: list[str] = []
    done = 0
    start = time.perf_counter()
    end = start + seconds
    clock = time.perf_counter_ns

    async def worker() -> None:
        nonlocal errors, done
        while time.perf_counter() < end and (max_requests <= 0 or done < max_requests):
            t0 = clock()
            try:
                reply = await call(request)
            except Exception as exc:  # the error is counted and reported, never hidden
                errors += 1
                if len(messages) < 5:
                    messages.append(describe_error(exc))
                await asyncio.sleep(0.01)  # an error loop must not spin
                continue
            t1 = clock()
            if len(reply) != expect_len:
                errors += 1
                if len(messages) < 5:
                    messages.append(f"reply of {len(reply)} bytes, expected {expect_len}")
                continue
            done += 1
            if record:
                latencies.append(t1 - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start, errors, messages


async def run_cells(
    call: Call,
    cells: list[tuple[int, int]],
    *,
    wrap: Callable[[bytes], bytes],
    warmup: float,
    seconds: float,
    requests: int,
) -> list[dict[str, Any]]:
    out = []
    for size, concurrency in cells:
        payload = os.urandom(size)
        request = wrap(payload)
        warm, _, _, _ = await _phase(call, request, len(request), concurrency, warmup, 0, True)
        lat, elapsed, errors, messages = await _phase(
            call, request, len(request), concurrency, seconds, requests, True
        )
        cell = {"payload": size, "concurrency": concurrency, **summarize(lat, elapsed, errors)}
        cell["warmup_requests"] = len(warm)
        if messages:
            cell["error_samples"] = messages
        out.append(cell)
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    cells = [(int(s), int(c)) for s, c in json.loads(args.cells)]
    common = {"warmup": args.warmup, "seconds": args.seconds, "requests": args.requests}
    if args.kind == "grpc":
        import grpc  # imported before the CPU clock starts: start-up is not the cells' cost
    else:
        import nats
    cpu0 = time.process_time()  # the client's CPU cost of the cells, start-up excluded
    if args.kind == "grpc":
        async with grpc.aio.insecure_channel(args.address, options=GRPC_OPTIONS) as channel:
            stub = channel.unary_unary(args.method)
            timeout = args.timeout

            async def grpc_call(req: bytes) -> bytes:
                reply: bytes = await stub(req, timeout=timeout)
                return reply

            results = await run_cells(grpc_call, cells, wrap=encode_payload_message, **common)
    else:
        nc = await nats.connect(args.url, max_reconnect_attempts=0)
        subject = args.subject
        timeout = args.timeout
        try:

            async def nats_call(req: bytes) -> bytes:
                msg = await nc.request(subject, req, timeout=timeout)
                return msg.data

            results = await run_cells(nats_call, cells, wrap=lambda b: b, **common)
        finally:
            await nc.close()
    return {
        "kind": args.kind,
        "loop": args.loop_name,
        "cells": results,
        "client_cpu_s": round(time.process_time() - cpu0, 3),
    }


async def probe(address: str, method: str, seconds: float) -> str | None:
    """Call until one Echo answers correctly (None) or `seconds` pass (the last error)."""
    import grpc

    request = encode_payload_message(b"probe")
    end = time.monotonic() + seconds
    last = "no answer"
    async with grpc.aio.insecure_channel(address, options=GRPC_OPTIONS) as channel:
        stub = channel.unary_unary(method)
        while time.monotonic() < end:
            try:
                reply = await stub(request, timeout=2.0)
            except Exception as exc:
                last = describe_error(exc)
            else:
                if reply == request:
                    return None
                last = f"unexpected reply {reply!r}"
            await asyncio.sleep(0.2)
    return last


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("kind", choices=("grpc", "nats", "probe"))
    parser.add_argument("--address", help="host:port of the gRPC server")
    parser.add_argument("--method", default="/kaibench.Bench/Echo")
    parser.add_argument("--url", help="NATS URL")
    parser.add_argument("--subject", default="floor.s0")
    parser.add_argument("--cells", default="[]", help="JSON list of [payload bytes, in flight]")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per cell")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--requests", type=int, default=0, help="stop a cell after N answers")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of each call (s)")
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args(argv)
    if args.kind == "probe":  # wait until the target answers (bounded by --seconds)
        error = asyncio.run(probe(args.address, args.method, args.seconds))
        print("READY" if error is None else f"FAILED {error}", flush=True)
        return 0 if error is None else 1
    args.loop_name = "asyncio"
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        args.loop_name = "uvloop"
    result = asyncio.run(main_async(args))
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
