"""Prometheus metrics of the runner processes (served on /metrics by runner.web).

Every metric carries the version's name (`version`), so one Prometheus can tell versions
apart (and the dashboards, renderer.dashboards, select one).

Entrypoint: requests by rpc and gRPC status code, and their end-to-end time (from receiving
the request to answering it) by rpc and status code.
Node, by workflow and node: messages by outcome; the step's time (from taking the message to
having passed its output on, or answered, and acked it), the handler's share of it, and the
queue wait before it (from the step's message being stored, as its JetStream ack subject
says, or for a call over core NATS sent, HDR_PUBLISHED, to the start of the handler).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# Latencies of a pipeline step are usually milliseconds; keep resolution there.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter(
    "kai_entrypoint_requests",
    "gRPC requests answered by the entrypoint, by rpc and status code",
    ["version", "rpc", "code"],
)
REQUEST_SECONDS = Histogram(
    "kai_entrypoint_request_seconds",
    "Time from receiving a gRPC request to answering it, by rpc and status code",
    ["version", "rpc", "code"],
    buckets=BUCKETS,
)

# Node message outcomes.
OK = "ok"  # output published (or reply sent, on the last node)
ERROR = "error"  # handler raised, or returned something unusable: an error reply was sent
INVALID = "invalid"  # the payload could not be decoded
EXPIRED = "expired"  # the deadline had passed: acked and dropped
TOO_LARGE = "too_large"  # output over the server's max payload
REDELIVERED = "redelivered"  # a message seen again (after a crash or a timeout elsewhere)

MESSAGES = Counter(
    "kai_node_messages",
    "Messages handled by a node, by outcome",
    ["version", "workflow", "node", "outcome"],
)
HANDLER_SECONDS = Histogram(
    "kai_node_handler_seconds",
    "Time spent in the node's handler",
    ["version", "workflow", "node"],
    buckets=BUCKETS,
)
STEP_SECONDS = Histogram(
    "kai_node_step_seconds",
    "Time a node takes for one step: from taking its message to having stored its output "
    "for the next step (or answered) and acked it",
    ["version", "workflow", "node"],
    buckets=BUCKETS,
)
QUEUE_WAIT_SECONDS = Histogram(
    "kai_node_queue_wait_seconds",
    "Time from a step's message being published to the start of the node's handler",
    ["version", "workflow", "node"],
    buckets=BUCKETS,
)
