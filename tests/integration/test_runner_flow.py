"""Flow control of a node: a bounded number of messages in flight, and no stall between
waves (the node asks for more as soon as work finishes, not when a pull expires)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from runner_procs import wait_ready
from test_runner_failures import _call, _version

from runner import contract
from runner.natsserver import NatsServer

pytestmark = pytest.mark.integration


def test_concurrency_is_bounded_and_waves_follow_each_other(
        tmp_path: Path, shared_nats: NatsServer) -> None:
    version = _version(tmp_path, shared_nats.url, project="flow")
    version.extra_env = {contract.ENV_CONCURRENCY: "2"}
    try:
        wait_ready(version.entrypoint(), version.node("echo"))
        started = time.monotonic()

        def one(i: int) -> float:
            _call(version, text=f"r{i}", sleep=0.3, timeout=20)
            return time.monotonic() - started

        with ThreadPoolExecutor(8) as pool:
            done = sorted(pool.map(one, range(8)))
        # 8 requests, 2 at a time, 0.3 s each: four waves of two ...
        for i, t in enumerate(done):
            assert t >= 0.3 * (i // 2 + 1) - 0.02, done
        # ... one after the other: a stall waiting for a pull to expire would add 5 s.
        assert done[-1] < 0.3 * 4 + 2.0, done
    finally:
        version.close()
