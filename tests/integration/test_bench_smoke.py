"""Smoke runs of the benchmarks: each one runs and reports its figures.

Only the shape of the report is checked (keys present, numbers positive). No timing
is asserted here: the targets are shown by `python -m bench`, never by a test.
"""

from __future__ import annotations

import importlib.util
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


def run_bench(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
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
    assert "p50 ms" in proc.stdout and "targets (overhead)" in proc.stdout
    result = json.loads(out.read_text())
    systems = {(r["system"], r["nodes"]) for r in result["runs"]}
    assert {("floor-grpc", 0), ("floor-nats", 2), ("floor-nats", 3), ("kai", 2), ("kai", 3)} <= (
        systems
    )
    # the JetStream floor: a gRPC front and 2 or 3 pull-consumer hops, no runner code
    assert {("floor-js", 2), ("floor-js", 3)} <= systems
    # the large cells: 1 MiB once, the 3-node chain through the claim bucket, and its floors
    assert {("floor-grpc-large", 0), ("floor-nats-large", 3), ("floor-js-large", 3),
            ("kai-claims", 3)} <= systems
    # the 3-node chain at most once too (core NATS), beside the same floors
    assert ("kai-at-most-once", 3) in systems
    # and traced (every span made, written to /dev/null), beside the untraced one
    assert ("kai-traced", 3) in systems
    assert len(result["analysis"]["traced_rows"]) == 4
    traced = result["analysis"]["tracing"]
    assert len(traced) == 4 and all(t["nodes"] == 3 for t in traced), traced
    assert all(isinstance(t["extra_p50_ms"], float) and positive(t["throughput_ratio"])
               for t in traced), traced
    assert "kai (traced)" in proc.stdout and "tracing (kai, on:" in proc.stdout
    assert {r["delivery"] for r in result["runs"] if r["system"].startswith("kai")} == {
        "at-least-once", "at-most-once"}
    for run in result["runs"]:
        large = run["system"].endswith("-large")
        if run["system"] == "kai-claims":  # 1 MiB through the claims, and 100 B inline
            assert [c["payload"] for c in run["cells"]] == [1024 * 1024, 100], run["cells"]
        elif large:  # a large floor: 1 MiB, 1 in flight
            assert [c["payload"] for c in run["cells"]] == [1024 * 1024], run["system"]
        else:  # 2 payloads × 2 concurrencies
            assert len(run["cells"]) == 4, run["system"]
        for cell in run["cells"]:
            assert cell["requests"] > 0
            for key in LATENCY_KEYS:
                assert positive(cell[key]), (run["system"], run["nodes"], cell)
        for p in run["processes"]:
            assert positive(p["peak_rss_mb"]), p
    kai_processes = [p for r in result["runs"] if r["system"] == "kai" for p in r["processes"]]
    assert {p["role"] for p in kai_processes} == {"entrypoint", "node"}
    js_processes = [p for r in result["runs"] if r["system"] == "floor-js" for p in r["processes"]]
    assert sum(p["name"].endswith("-front") for p in js_processes) == 2  # one per chain length
    assert len(js_processes) == 2 + 2 + 3
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
        # every cell of ours also as a ratio to the JetStream floor of the same chain length
        assert row["js_floor"] is not None and row["js_floor"]["errors"] == 0, row
        assert all(positive(v) for v in row["ratio_to_js"].values()), row
    assert "p50 ×js" in proc.stdout and "floor JetStream" in proc.stdout
    hop = result["analysis"]["per_hop"]
    assert (hop["from"], hop["to"]) == (2, 3)
    assert all(hop[s]["p50_ms"] is not None for s in ("kai", "floor-js", "floor-nats")), hop
    assert "JetStream floor hop" in proc.stdout
    # the claim check against the same chain with a small payload, from the same run
    (claim,) = result["analysis"]["claims"]
    assert (claim["payload"], claim["small_payload"], claim["concurrency"]) == (2**20, 100, 1)
    assert positive(claim["p50_ratio"]) and positive(claim["throughput_ratio"]), claim
    assert "claim check" in proc.stdout
    # the peer: measured when the `[bench-peers]` extra is installed, else one clear line
    peer = result["peers"]["ray-serve"]
    if importlib.util.find_spec("ray") is None:
        assert "not installed" in peer["skipped"], peer
        (line,) = [x for x in proc.stdout.splitlines() if x.startswith("peer ray-serve")]
        assert line.startswith("peer ray-serve: skipped: ray[serve] is not installed"), line
        assert "bench-peers" in line
        assert not [r for r in result["runs"] if r["system"] == "peer-ray"]
    elif not peer.get("skipped"):
        assert peer["versions"]["ray"], peer
        assert {r["nodes"] for r in result["runs"] if r["system"] == "peer-ray"} == {2, 3}
        assert all(r["ours"] and r["kai"] for r in result["analysis"]["peer_rows"])
    # kai dev, started cold once, answered
    assert result["kai_dev"]["nodes"] == 3 and len(result["kai_dev"]["seconds"]) == 1
    assert positive(result["kai_dev"]["median_s"])
    # the goals (floor, peer, footprint) are shown (met or not), never asserted
    shown = result["analysis"]["goals"]
    assert "goals" in proc.stdout
    assert len([t for t in shown if t["target"].startswith("ray-serve")]) == 2
    for t in shown:
        assert t["met"] in (True, False, None) and t["unit"], t
        if not t["target"].startswith("ray-serve"):
            assert t["value"] is not None, t
    assert {t["target"].split(":")[0] for t in result["analysis"]["targets"]}
    # which event loop each side ran on is recorded (the floors follow the runner's)
    assert set(result["loops"]) == {"kai", "floors", "client"}
    assert all(v in ("uvloop", "asyncio") for v in result["loops"].values()), result["loops"]
    assert all(r["loop"] in ("uvloop", "asyncio") for r in result["runs"])
    assert all(t["value"] is not None for t in result["analysis"]["targets"])


def test_chain_bench_rounds_are_interleaved_and_merged(tmp_path: Path) -> None:
    out = tmp_path / "chain.json"
    # an A/B variant: a directory first on the runner processes' path, whose sitecustomize
    # leaves a mark per runner process (`python -m runner ...`; not the entrypoint's protoc
    # child) in the directory its environment variable names
    patched, marks = tmp_path / "patched", tmp_path / "marks"
    patched.mkdir()
    marks.mkdir()
    (patched / "sitecustomize.py").write_text(
        "import os\n"
        "argv = open('/proc/self/cmdline', 'rb').read().split(b'\\0')\n"
        "if os.environ.get('KAI_BENCH_MARKS') and argv[1:3] == [b'-m', b'runner']:\n"
        "    open(os.path.join(os.environ['KAI_BENCH_MARKS'], str(os.getpid())), 'w').close()\n"
    )
    proc = run_bench(
        "bench.chain", "--quick", "--rounds", "2", "--nodes", "2", "--payloads", "100",
        "--concurrency", "1", "--large", "0", "--no-peers", "--dev-starts", "0",
        "--variant", f"marked:pythonpath={patched},env.KAI_BENCH_MARKS={marks}",
        "--json", str(out), "--no-plot",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.count("round ") == 2
    result = json.loads(out.read_text())
    keys = [(r["system"], r["nodes"]) for r in result["runs"]]
    assert sorted(keys) == sorted(set(keys))  # one run per system and chain length
    assert {"floor-js", "kai", "kai [marked]"} <= {system for system, _ in keys}
    # the variant's path and environment reached its processes, and only its: an entrypoint
    # and two nodes in each of the two rounds
    assert len(list(marks.iterdir())) == 2 * 3
    (ab,) = result["analysis"]["ab"]
    assert (ab["variant"], ab["nodes"]) == ("marked", 2)
    (cell,) = ab["cells"]
    assert cell["rounds"] == 2 and len(cell["p50_ratio_per_round"]) == 2, cell
    assert positive(cell["p50_ratio"]) and positive(cell["throughput_ratio"]), cell
    assert 0 <= cell["p50_better_rounds"] <= 2 and ab["cpu"]["rounds"] == 2, ab
    assert "A/B (each variant against ours" in proc.stdout and "[marked]" in proc.stdout
    for run in result["runs"]:
        assert run["rounds"] == 2, run["system"]
        (cell,) = run["cells"]
        # the second round's JetStream floor reuses the first's stream: no call is lost to
        # de-duplication, every call of both rounds is answered
        assert len(cell["rounds"]) == 2 and cell["errors"] == 0, (run["system"], cell)
        assert all(positive(r["p50_ms"]) for r in cell["rounds"]), cell
        assert min(r["p50_ms"] for r in cell["rounds"]) <= cell["p50_ms"]
        assert cell["p50_ms"] <= max(r["p50_ms"] for r in cell["rounds"])


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


def test_bench_suite_prints_the_goals(tmp_path: Path) -> None:
    proc = run_bench("bench", "--only", "render", "--quick", "--results", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "goals, every part of this run:" in proc.stdout
    shown = json.loads((tmp_path / "targets.json").read_text())
    # a quick run renders 10 versions: the 500-version targets are shown as not measured
    assert [t["target"] for t in shown] == [
        "full render with strict validation, 500 versions",
        "kai publish, 500 versions",
    ]
    assert all(t["met"] is None and t["value"] is None for t in shown), shown
    assert proc.stdout.count(": not measured") >= 2


def test_targets_are_judged_in_their_direction() -> None:
    from bench.targets import format_targets, peer_targets, target

    assert target("p50 ratio", 1.1, 1.1, "max", "×")["met"] is True
    assert target("p50 ratio", 1.2, 1.1, "max", "×")["met"] is False
    assert target("req/s ratio", 0.94, 0.95, "min", "×")["met"] is False
    assert target("req/s ratio", math.nan, 0.95, "min", "×")["met"] is None
    skipped = {"settings": {}, "analysis": {"peer_rows": []},
               "peers": {"ray-serve": {"system": "peer-ray", "skipped": "not installed"}}}
    shown = peer_targets(skipped)
    assert [t["met"] for t in shown] == [None, None]
    assert "not measured (skipped: not installed)" in format_targets("t", shown)
    # the worst cell decides: one cell under 5× is enough to miss the target
    cell = {"nodes": 3, "payload": 100, "system": "peer-ray"}
    rows = [
        {**cell, "concurrency": 1, "ours": {"p50_ms": 1.0, "throughput_rps": 900.0},
         "kai": {"p50_ms": 9.0, "throughput_rps": 100.0}},
        {**cell, "concurrency": 32, "ours": {"p50_ms": 10.0, "throughput_rps": 400.0},
         "kai": {"p50_ms": 40.0, "throughput_rps": 100.0}},
    ]
    measured = {"analysis": {"peer_rows": rows}, "peers": {"ray-serve": {"system": "peer-ray"}}}
    p50, rps = peer_targets(measured)
    assert (p50["value"], p50["met"]) == (4.0, False) and "32 in flight" in p50["detail"]
    assert (rps["value"], rps["met"]) == (4.0, False)


def test_peer_python_without_ray_is_skipped_with_one_line(tmp_path: Path) -> None:
    from bench.peers import unavailable

    reason, versions = unavailable(str(tmp_path / "no-python"))
    assert reason is not None and "cannot run" in reason and "--peer-python" in reason
    base = Path(sys.base_prefix) / "bin" / "python3"  # the interpreter under this venv
    if base.is_file() and subprocess.run([str(base), "-c", "import ray"],
                                         capture_output=True, timeout=120).returncode != 0:
        reason, versions = unavailable(str(base))
        assert reason == (f"ray[serve] is not installed in {base} "
                          "(pip install -e '.[bench,bench-peers]')"), reason
        assert versions == {}
