"""`kai call`: call one rpc of a running version with JSON and print the reply as JSON."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import click

from renderer.krt import Version
from renderer.problems import InputError
from runner.client import DEFAULT_TIMEOUT, CallFailed, CallUsageError, call_json
from runner.proto import CompiledProto, ProtoError

EXIT_INPUT = 1  # bad version, unknown rpc, bad JSON
EXIT_RPC = 2  # the server answered with a gRPC error (or could not be reached)


def _exit_with(problems: Sequence[object]) -> NoReturn:
    """Print problems one per line on stderr and exit with EXIT_INPUT."""
    for problem in problems:
        click.echo(str(problem), err=True)
    sys.exit(EXIT_INPUT)


def load_or_exit(version_dir: Path) -> Version:
    """The validated version; its problems, one per line, and exit 1 when it has any."""
    from renderer.validate import load_version

    try:
        return load_version(version_dir)
    except InputError as exc:
        _exit_with(exc.problems)


def compile_or_exit(version: Version) -> CompiledProto:
    """The version's compiled proto (the one validation compiled, when unchanged)."""
    from renderer.validate import compiled_proto

    try:
        return compiled_proto(version)
    except ProtoError as exc:
        _exit_with(exc.problems)


def print_call(address: str, compiled: CompiledProto, rpc: str, request: str,
               timeout: float) -> int:
    """Make the call and print the reply (stdout) or the error (stderr); the exit code."""
    try:
        reply = asyncio.run(call_json(address, compiled, rpc, request, timeout))
    except CallUsageError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_INPUT
    except CallFailed as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_RPC
    click.echo(reply)
    return 0


@click.command(short_help="Call an rpc of a running version with JSON.")
@click.argument("version_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("rpc")
@click.argument("request", metavar="JSON", default="{}")
@click.option("--address", default="127.0.0.1:9000", show_default=True, metavar="HOST:PORT",
              help="The version's entrypoint.")
@click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, type=click.FloatRange(0.001),
              help="The call's deadline, in seconds.")
def call(version_dir: Path, rpc: str, request: str, address: str, timeout: float) -> None:
    """Call RPC of a running version with a JSON request and print the reply as JSON.

    The JSON follows the protobuf JSON mapping of the rpc's request message
    (field names as in the .proto, or lowerCamelCase). The version's proto is
    compiled locally to encode the request and decode the reply.

    \b
    Exit codes:
      0  the reply was printed
      1  bad input: the version does not validate, unknown rpc or bad JSON
      2  the call failed: `error: <gRPC status code>: <details>` on stderr

    \b
    Example:
      kai call examples/greeter PyGreet '{"name": "Ada"}'
    """
    version = load_or_exit(version_dir)
    compiled = compile_or_exit(version)
    sys.exit(print_call(address, compiled, rpc, request, timeout))
