"""KAI Server benchmarks: the chain benchmark (gRPC → NATS JetStream → nodes) and the
renderer benchmark, each measured against its floors in the same run.

Run everything with ``python -m bench`` (see bench/README.md).
"""
