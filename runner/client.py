"""Call one rpc of a version over gRPC, JSON in and JSON out.

Shared by `kai call` and `kai dev --call`. The request JSON follows the protobuf
JSON mapping (field names as in the .proto or lowerCamelCase); the reply is
printed with the .proto field names and every field, defaults included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from .proto import CompiledProto

DEFAULT_TIMEOUT = 30.0
# No size limit of the client's own (gRPC's default takes replies up to 4 MiB only): the
# entrypoint enforces the version's max message (KAI_MAX_MESSAGE, runtime.maxMessage).
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1),
                   ("grpc.max_send_message_length", -1)]


class CallUsageError(Exception):
    """The call cannot be made as asked (unknown rpc, bad JSON); a one-line message."""


class CallFailed(Exception):
    """The server answered with a gRPC error."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code.name}: {details}")


@dataclass(frozen=True)
class Rpc:
    """One rpc of a compiled proto, ready to be called generically."""

    method: MethodDescriptor
    request_class: type[Message]
    response_class: type[Message]

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def name(self) -> str:
        return self.method.name


def find_rpc(compiled: CompiledProto, name: str) -> Rpc:
    methods = compiled.methods()
    method = methods.get(name)
    if method is None:
        available = ", ".join(sorted(methods)) or "none"
        raise CallUsageError(f'unknown rpc "{name}" (available: {available})')
    if method.client_streaming or method.server_streaming:
        raise CallUsageError(f'rpc "{name}" is streaming; only unary rpcs can be called')
    return Rpc(
        method=method,
        request_class=compiled.message_class(method.input_type),
        response_class=compiled.message_class(method.output_type),
    )


def parse_request(rpc: Rpc, text: str) -> Message:
    """The rpc's request message from JSON text; CallUsageError on bad JSON."""
    what = f"{rpc.name} ({rpc.method.input_type.full_name})"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CallUsageError(f"request for {what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CallUsageError(f"request for {what} must be a JSON object, not {text.strip()!r}")
    try:
        return json_format.ParseDict(value, rpc.request_class())
    except json_format.ParseError as exc:
        detail = " ".join(str(exc).split())
        raise CallUsageError(f"request does not fit {what}: {detail}") from None


def to_json(message: Message) -> str:
    return json_format.MessageToJson(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        indent=2,
    )


async def call(
    target: str | grpc.aio.Channel, rpc: Rpc, request: Message, deadline: float = DEFAULT_TIMEOUT
) -> Message:
    """One unary call, `deadline` in seconds; CallFailed carries the gRPC status.

    `target` is an address (a channel is opened for the call) or an open channel.
    """
    if isinstance(target, str):
        async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
            return await call(channel, rpc, request, deadline)
    stub: grpc.aio.UnaryUnaryMultiCallable[Message, Message] = target.unary_unary(
        rpc.path,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=rpc.response_class.FromString,
    )
    try:
        return await stub(request, timeout=deadline)
    except grpc.aio.AioRpcError as exc:
        raise CallFailed(exc.code(), exc.details() or "") from None


async def call_json(
    address: str,
    compiled: CompiledProto,
    rpc_name: str,
    request_json: str,
    deadline: float = DEFAULT_TIMEOUT,
) -> str:
    """Find the rpc, parse the JSON, call it and return the reply as JSON text."""
    rpc = find_rpc(compiled, rpc_name)
    request = parse_request(rpc, request_json)
    return to_json(await call(address, rpc, request, deadline))
