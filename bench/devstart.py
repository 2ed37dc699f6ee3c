"""`kai dev`'s cold start: from starting the command to its first answer.

The chain benchmark's generated 3-node version is run with
``kai dev <version> --call Echo '{"data": ...}'`` (a fresh `kai` process, its embedded
nats-server, the entrypoint and every node, as a user starts it), and the time is taken
from starting the command to the reply on its stdout: rendering the version, starting
nats-server, the runner processes and their readiness, and the one call. Stopping
afterwards is not counted.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

NODES = 3
REQUEST = '{"data": "a2Fp"}'  # kaibench.Payload{data: b"kai"} as JSON


def measure(group: Any, workdir: Path, s: Any) -> dict[str, Any]:
    """Start `kai dev` `s.dev_starts` times (s: a bench.chain.Settings); each one's seconds."""
    from bench.chain import child_env, free_port, write_version
    from bench.procs import wait_for_line
    from bench.render import kai_argv

    _, vdir, _ = write_version(workdir / "dev-versions", NODES, s.handler)
    seconds = []
    for i in range(s.dev_starts):
        argv = [*kai_argv(), "dev", str(vdir), "--port", str(free_port()),
                "--web-port", str(free_port()), "--call", "Echo", REQUEST,
                "--timeout", str(s.timeout), "--ready-timeout", str(s.startup_timeout)]
        start = time.monotonic()
        child = group.spawn(f"kai-dev-{i}", argv, role="dev", env=child_env(), cwd=workdir,
                            stdout_pipe=True)
        try:
            wait_for_line(child, b'"data"', s.startup_timeout + s.timeout)
            seconds.append(round(time.monotonic() - start, 3))
        finally:
            group.stop(child, grace=30.0)  # it stops by itself after --call
    return {"nodes": NODES, "seconds": seconds,
            "median_s": round(statistics.median(seconds), 3) if seconds else None}
