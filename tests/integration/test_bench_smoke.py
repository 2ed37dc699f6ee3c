"""Smoke runs of the benchmarks: each one runs and reports its figures.

Only the shape of the report is checked (keys present, numbers positive). No timing
is asserted here: the targets are shown by `python -m bench`, never by a test.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

LATENCY_KEYS = ("p50_ms", "p90_ms", "p99_ms", "max_ms", "throughput_rps")


def run_bench(module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and not math.isnan(value) and value > 0


def test_chain_bench_quick_reports_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "chain.json"
    proc = run_bench(
        "bench.chain", "--quick", "--json", str(out), "--plot", str(tmp_path / "c.png")
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "p50 ms" in proc.stdout and "targets (issue 4)" in proc.stdout
    result = json.loads(out.read_text())
    systems = {(r["system"], r["nodes"]) for r in result["runs"]}
    assert {("floor-grpc", 0), ("floor-nats", 2), ("floor-nats", 3), ("kai", 2), ("kai", 3)} <= (
        systems
    )
    # the large cells: 1 MiB once, the 3-node chain through the claim bucket, and its floors
    assert {("floor-grpc-large", 0), ("floor-nats-large", 3), ("kai-claims", 3)} <= systems
    # the 3-node chain at most once too (core NATS), beside the same floors
    assert ("kai-at-most-once", 3) in systems
    assert {r["delivery"] for r in result["runs"] if r["system"].startswith("kai")} == {
        "at-least-once", "at-most-once"}
    for run in result["runs"]:
        large = run["system"].endswith(("-large", "-claims"))
        # 2 payloads × 2 concurrencies; a large run: 1 MiB, 1 in flight
        assert len(run["cells"]) == (1 if large else 4), run["system"]
        if large:
            assert run["cells"][0]["payload"] == 1024 * 1024
        for cell in run["cells"]:
            assert cell["requests"] > 0
            for key in LATENCY_KEYS:
                assert positive(cell[key]), (run["system"], run["nodes"], cell)
        for p in run["processes"]:
            assert positive(p["peak_rss_mb"]), p
    kai_processes = [p for r in result["runs"] if r["system"] == "kai" for p in r["processes"]]
    assert {p["role"] for p in kai_processes} == {"entrypoint", "node"}
    (large_row,) = result["analysis"]["large_rows"]
    assert large_row["kai"]["requests"] > 0 and large_row["kai"]["errors"] == 0, large_row
    assert "kai (claims)" in proc.stdout and "kai (at-most-once)" in proc.stdout
    (amo_run,) = [r for r in result["runs"] if r["system"] == "kai-at-most-once"]
    assert all(c["errors"] == 0 for c in amo_run["cells"]), amo_run["cells"]
    assert len(result["analysis"]["at_most_once_rows"]) == 4
    for row in (result["analysis"]["rows"] + result["analysis"]["large_rows"]
                + result["analysis"]["at_most_once_rows"]):
        assert row["kai"] is not None and row["floor"] is not None
        assert all(positive(v) for v in row["ratio"].values()), row
    assert {t["target"].split(":")[0] for t in result["analysis"]["targets"]}
    # which event loop each side ran on is recorded (the floors follow the runner's)
    assert set(result["loops"]) == {"kai", "floors", "client"}
    assert all(v in ("uvloop", "asyncio") for v in result["loops"].values()), result["loops"]
    assert all(r["loop"] in ("uvloop", "asyncio") for r in result["runs"])
    assert all(t["value"] is not None for t in result["analysis"]["targets"])


def test_render_bench_quick_reports_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "render.json"
    proc = run_bench("bench.render", "--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "full render s" in proc.stdout
    result = json.loads(out.read_text())
    (size,) = result["sizes"]
    assert size["versions"] == 10
    assert size["objects"] > 10 * 5  # a Deployment per node, at least
    for key in ("full_render", "check", "publish"):
        assert positive(size[key]["median_s"]), key
    assert positive(size["full_render"]["objects_per_s"])
    assert size["full_render"]["fresh_copy_per_sample"] is True
    assert len(size["full_render"]["user_cpu_s"]) == len(size["full_render"]["samples"])
    assert all(positive(v) for v in size["phases_in_process"].values())
    assert positive(result["cli_startup"]["median_s"])
    assert [t["target"] for t in result["targets"]]
