"""Prometheus metrics of the runner processes (served on /metrics by runner.web).

Entrypoint: requests by rpc and gRPC status code, and request latency.
Node: messages by node, workflow and outcome, and handler latency.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# Latencies of a pipeline step are usually milliseconds; keep resolution there.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter(
    "kai_entrypoint_requests",
    "gRPC requests answered by the entrypoint, by rpc and status code",
    ["rpc", "code"],
)
REQUEST_SECONDS = Histogram(
    "kai_entrypoint_request_seconds",
    "Time from receiving a gRPC request to answering it",
    ["rpc"],
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
    ["node", "workflow", "outcome"],
)
HANDLER_SECONDS = Histogram(
    "kai_node_handler_seconds",
    "Time spent in the node's handler",
    ["node"],
    buckets=BUCKETS,
)
