"""The A/B variants of the chain benchmark: their spec, and the comparison with ours."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench import variants
from bench.variants import Variant


def test_a_spec_names_the_interpreter_path_and_environment() -> None:
    v = variants.parse("py312:python=/v/bin/python,pythonpath=/w,env.B=2,env.A=x=y")
    assert v == Variant("py312", python="/v/bin/python", pythonpath="/w",
                        env=(("A", "x=y"), ("B", "2")))
    assert v.system == "kai [py312]"
    assert v.describe() == "python=/v/bin/python, pythonpath=/w, A=x=y, B=2"
    assert variants.parse("same:").describe() == "nothing changed (A/A)"


@pytest.mark.parametrize("spec", ["", "nolabel", ":python=x", "a b:", "x:color=red",
                                  "x:python", "x:env.=1"])
def test_a_bad_spec_says_what_is_allowed(spec: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="KEY"):
        variants.parse(spec)


def test_the_order_rotates_so_every_system_takes_every_position() -> None:
    a, b = Variant("a"), Variant("b")
    assert variants.order([a, b], 0) == [None, a, b]
    assert variants.order([a, b], 1) == [a, b, None]
    assert variants.order([a, b], 2) == [b, None, a]
    assert variants.order([a, b], 3) == [None, a, b]
    assert variants.order([], 1) == [None]


def _run(system: str, p50s: list[float], rps: list[float], cpu: list[float]) -> dict:
    return {
        "system": system, "nodes": 3,
        "cells": [{"payload": 100, "concurrency": 1, "p50_ms": sorted(p50s)[1],
                   "throughput_rps": sorted(rps)[1],
                   "rounds": [{"p50_ms": p, "throughput_rps": r}
                              for p, r in zip(p50s, rps, strict=True)]}],
        "cpu": {"servers_ms_per_request": sorted(cpu)[1], "nats_server_ms_per_request": 0.5},
        "cpu_rounds": cpu,
        "processes": [{"role": "entrypoint", "peak_rss_mb": 60.0},
                      {"role": "node", "peak_rss_mb": 40.0}, {"role": "node", "peak_rss_mb": 45.0}],
    }  # fmt: skip


def test_a_variant_is_compared_round_by_round() -> None:
    runs = [_run("kai", [2.0, 2.2, 1.8], [400, 380, 420], [1.0, 1.1, 0.9]),
            _run("kai [fast]", [1.5, 2.3, 1.7], [500, 390, 430], [0.8, 0.9, 1.0])]
    (row,) = variants.compare(runs, [Variant("fast")], [(100, 1)])
    (cell,) = row["cells"]
    assert cell["p50_ratio"] == round(1.7 / 2.0, 4)
    assert cell["p50_better_rounds"] == 2  # 1.5 < 2.0 and 1.7 < 1.8, not 2.3 < 2.2
    assert cell["throughput_better_rounds"] == 3
    assert cell["p50_ratio_per_round"] == [0.75, round(2.3 / 2.2, 4), round(1.7 / 1.8, 4)]
    assert row["cpu"]["better_rounds"] == 2 and row["cpu"]["runner_ratio"] == 0.9
    assert row["peak_rss_mb"] == {"entrypoint": {"variant": 60.0, "ours": 60.0},
                                  "node": {"variant": 45.0, "ours": 45.0}}
    lines = variants.format_rows([row], lambda n: f"{n} B")
    assert any("better in 2/3" in x for x in lines), lines


def test_a_patch_variant_runs_a_patched_copy_of_the_runner(tmp_path: Path) -> None:
    import difflib

    source = (variants.ROOT / "runner" / "__init__.py").read_text().splitlines(keepends=True)
    patched = [*source, "PATCHED = True\n"]
    patch = tmp_path / "mark.patch"
    patch.write_text("".join(difflib.unified_diff(
        source, patched, "a/runner/__init__.py", "b/runner/__init__.py")))
    (v,) = variants.prepare([variants.parse(f"mark:patch={patch},pythonpath=/extra")],
                            tmp_path / "work")
    first, rest = v.pythonpath.split(":", 1)
    assert rest == "/extra"
    assert (tmp_path / "work" / "variant-mark" / "runner" / "__init__.py").read_text().endswith(
        "PATCHED = True\n")
    assert first == str(tmp_path / "work" / "variant-mark")
    assert not list((tmp_path / "work").rglob("__pycache__"))
    assert variants.prepare([Variant("plain")], tmp_path / "work") == [Variant("plain")]


def test_a_patch_that_does_not_apply_says_which(tmp_path: Path) -> None:
    patch = tmp_path / "bad.patch"
    patch.write_text("--- a/runner/nothere.py\n+++ b/runner/nothere.py\n@@ -1 +1 @@\n-x\n+y\n")
    with pytest.raises(RuntimeError, match=r"variant bad: .*bad\.patch does not apply"):
        variants.prepare([variants.parse(f"bad:patch={patch}")], tmp_path / "work")


def test_the_ab_rows_come_out_as_markdown() -> None:
    from bench import markdown

    runs = [_run("kai", [2.0, 2.2, 1.8], [400, 380, 420], [1.0, 1.1, 0.9]),
            _run("kai [fast]", [1.5, 2.3, 1.7], [500, 390, 430], [0.8, 0.9, 1.0])]
    ab = variants.compare(runs, [Variant("fast")], [(100, 1)])
    text = markdown.ab_table({"analysis": {"ab": ab}})
    head, rule, row = text.splitlines()
    assert head.startswith("| variant | nodes | cell |") and rule.startswith("| --- |")
    assert row.startswith("| fast | 3 | 100 B, 1 in flight | 1.70 (2.00) | 0.850 | 2/3 |"), row
