"""The seam between the runner's processes and the message broker.

The entrypoint and the nodes speak only to :class:`Transport` (``base``); ``nats`` is the
NATS JetStream implementation the processes run on, ``memory`` an in-process one with the
same semantics for tests. ``core`` is the at-most-once path (core NATS request/reply, for
workflows with ``delivery: at-most-once``), which ``natscore`` runs on nats-py. Only
``runner.transport.nats`` and the modules it uses import nats-py.
"""

from __future__ import annotations

from .. import contract
from .base import (
    ALIVE,
    CLAIM_MARGIN,
    RETRYABLE,
    STORE_TIMEOUT,
    Alive,
    ClaimedDelivery,
    ConnectionEvents,
    Consumer,
    ConsumerState,
    Delivery,
    GaveUp,
    Handle,
    NoStream,
    NotStored,
    ObjectGone,
    OnGaveUp,
    OnReply,
    StepError,
    TooLarge,
    Transport,
    TransportError,
    Unreachable,
    call_id_of,
    claim_name,
    header_safe,
    headers_size,
    publish_until,
    request_id_of,
    status_code,
    step_headers,
)


def open_transport(env: contract.RunnerEnv) -> Transport:
    """The transport the runner processes use: NATS JetStream at ``env.nats_url``."""
    from .nats import NatsTransport

    return NatsTransport(env)


__all__ = [
    "ALIVE",
    "CLAIM_MARGIN",
    "RETRYABLE",
    "STORE_TIMEOUT",
    "Alive",
    "ClaimedDelivery",
    "ConnectionEvents",
    "Consumer",
    "ConsumerState",
    "Delivery",
    "GaveUp",
    "Handle",
    "NoStream",
    "NotStored",
    "ObjectGone",
    "OnGaveUp",
    "OnReply",
    "StepError",
    "TooLarge",
    "Transport",
    "TransportError",
    "Unreachable",
    "call_id_of",
    "claim_name",
    "header_safe",
    "headers_size",
    "open_transport",
    "publish_until",
    "request_id_of",
    "status_code",
    "step_headers",
]
