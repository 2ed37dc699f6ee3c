"""A/B variants of the runner, measured in the same run as ours (`--variant`).

A lever is tried by running the same chain twice in one run: ours as the tree has it, and a
variant with one thing changed — another interpreter, a patched copy of `runner/` first on
the path, or an environment variable. With `--rounds N` the two are interleaved (each round
measures ours and every variant, in an order that rotates), so both sides see the same
minutes of this shared machine. A variant with nothing changed (`same:`) is an A/A run: the
spread it shows is the noise a lever has to beat.

    --variant 'py312:python=/path/to/venv312/bin/python'
    --variant 'patched:pythonpath=/path/to/worktree'
    --variant 'headers3:patch=bench/levers/headers3.patch'
    --variant 'arena2:env.MALLOC_ARENA_MAX=2'
    --variant 'same:'

Each variant's cells are compared with ours cell by cell: p50 and requests per second, as
the ratio of the medians and round by round ("better in k of n rounds": a lever wins beyond
the noise when it is better in every round, which chance gives 2 / 2^n of the time), and
the CPU per request of the runner processes and of nats-server, and the peak RSS.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

OURS = "kai"
KEYS = ("python", "pythonpath", "patch")
ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "env."


@dataclass(frozen=True)
class Variant:
    """Ours with one thing changed, measured beside ours."""

    label: str
    python: str = ""  # the runner processes' interpreter ("": the bench's own)
    pythonpath: str = ""  # put first on the runner processes' path
    patch: str = ""  # a patch of runner/, applied to a copy of it (see `prepare`)
    env: tuple[tuple[str, str], ...] = ()  # set in the runner processes' environment

    @property
    def system(self) -> str:
        return f"{OURS} [{self.label}]"

    def describe(self) -> str:
        parts = [f"python={self.python}"] if self.python else []
        parts += [f"pythonpath={self.pythonpath}"] if self.pythonpath else []
        parts += [f"patch={self.patch}"] if self.patch else []
        parts += [f"{k}={v}" for k, v in self.env]
        return ", ".join(parts) or "nothing changed (A/A)"


def parse(spec: str) -> Variant:
    """`LABEL:KEY=VALUE[,KEY=VALUE...]`, KEY one of python, pythonpath, patch or env.NAME."""
    label, sep, rest = spec.partition(":")
    label = label.strip()
    if not sep or not label or any(c in label for c in "[], "):
        raise argparse.ArgumentTypeError(
            f"{spec!r}: expected LABEL:KEY=VALUE[,KEY=VALUE...] (a label without spaces,"
            " brackets or commas; KEY python, pythonpath, patch or env.NAME; `LABEL:` alone changes"
            " nothing, an A/A run)"
        )
    values: dict[str, str] = {}
    env: list[tuple[str, str]] = []
    for item in (x for x in rest.split(",") if x.strip()):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not (key in KEYS or (key.startswith(ENV_PREFIX) and len(key) > 4)):
            raise argparse.ArgumentTypeError(
                f"{spec!r}: {item!r} is not KEY=VALUE with KEY python, pythonpath, patch or"
                " env.NAME"
            )
        if key.startswith(ENV_PREFIX):
            env.append((key[len(ENV_PREFIX):], value))
        else:
            values[key] = value
    return Variant(label, env=tuple(sorted(env)), **values)


def prepare(variants: list[Variant], workdir: Path) -> list[Variant]:
    """Each variant with a `patch` gets a copy of this tree's runner/ with the patch applied
    (`git apply`, in `workdir`), first on its processes' path. Raises RuntimeError when a
    patch does not apply."""
    out = []
    for v in variants:
        if not v.patch:
            out.append(v)
            continue
        patch = Path(v.patch) if Path(v.patch).is_absolute() else ROOT / v.patch
        tree = workdir / f"variant-{v.label}"
        shutil.copytree(ROOT / "runner", tree / "runner",
                        ignore=shutil.ignore_patterns("__pycache__"))
        done = subprocess.run(["git", "apply", "--verbose", str(patch)], cwd=tree,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"variant {v.label}: {patch} does not apply to runner/:"
                               f" {done.stderr.strip()}")
        out.append(replace(v, pythonpath=os.pathsep.join(
            x for x in (str(tree), v.pythonpath) if x)))
    return out


def order(variants: list[Variant], round_index: int) -> list[Variant | None]:
    """Ours (None) and every variant, in the order of this round: rotated by one each round,
    so over as many rounds as there are systems each one runs in every position once. (Only
    reversing every other round left ours at the two ends, and a run at an end was seen to
    be slower than an A/A copy in the middle: `same:` beside ours shows such a bias.)"""
    seq: list[Variant | None] = [None, *variants]
    k = round_index % len(seq)
    return seq[k:] + seq[:k]


def _cell(run: dict[str, Any], payload: int, conc: int) -> dict[str, Any] | None:
    for c in run["cells"]:
        if c["payload"] == payload and c["concurrency"] == conc:
            return c
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def _better(mine: list[float], theirs: list[float], lower_is_better: bool) -> int:
    return sum(1 for a, b in zip(mine, theirs, strict=True)
               if (a < b if lower_is_better else a > b))


def _cpu(run: dict[str, Any]) -> tuple[float | None, float | None, list[float]]:
    cpu = run.get("cpu") or {}
    per_round = [x for x in run.get("cpu_rounds", []) if x is not None]
    return cpu.get("servers_ms_per_request"), cpu.get("nats_server_ms_per_request"), per_round


def _peak(run: dict[str, Any], role: str) -> float | None:
    peaks = [p["peak_rss_mb"] for p in run["processes"] if p["role"] == role]
    return max(peaks) if peaks else None


def compare(runs: list[dict[str, Any]], variants: list[Variant],
            cells: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Every variant's chain beside ours of the same length, cell by cell."""
    by = {(r["system"], r["nodes"]): r for r in runs}
    out = []
    for v in variants:
        for (system, n), run in sorted(by.items(), key=lambda kv: kv[0][1]):
            ours = by.get((OURS, n))
            if system != v.system or ours is None:
                continue
            row: dict[str, Any] = {"variant": v.label, "changes": v.describe(), "nodes": n,
                                   "cells": []}
            for payload, conc in cells:
                a, b = _cell(ours, payload, conc), _cell(run, payload, conc)
                if not (a and b):
                    continue
                ra, rb = a.get("rounds") or [a], b.get("rounds") or [b]
                row["cells"].append({
                    "payload": payload, "concurrency": conc,
                    "p50_ms": b["p50_ms"], "ours_p50_ms": a["p50_ms"],
                    "p50_ratio": _ratio(b["p50_ms"], a["p50_ms"]),
                    "throughput_rps": b["throughput_rps"],
                    "ours_throughput_rps": a["throughput_rps"],
                    "throughput_ratio": _ratio(b["throughput_rps"], a["throughput_rps"]),
                    "rounds": len(rb),
                    "p50_better_rounds": _better([x["p50_ms"] for x in rb],
                                                 [x["p50_ms"] for x in ra], True),
                    "throughput_better_rounds": _better([x["throughput_rps"] for x in rb],
                                                        [x["throughput_rps"] for x in ra], False),
                    "p50_ratio_per_round": [_ratio(x["p50_ms"], y["p50_ms"])
                                            for x, y in zip(rb, ra, strict=True)],
                })  # fmt: skip
            (cpu_b, nats_b, rounds_b), (cpu_a, nats_a, rounds_a) = _cpu(run), _cpu(ours)
            row["cpu"] = {
                "runner_ms_per_request": cpu_b, "ours_runner_ms_per_request": cpu_a,
                "runner_ratio": _ratio(cpu_b, cpu_a),
                "nats_server_ms_per_request": nats_b, "ours_nats_server_ms_per_request": nats_a,
                "better_rounds": _better(rounds_b, rounds_a, True)
                if len(rounds_a) == len(rounds_b) else None,
                "rounds": len(rounds_b),
            }  # fmt: skip
            row["peak_rss_mb"] = {
                role: {"variant": _peak(run, role), "ours": _peak(ours, role)}
                for role in ("entrypoint", "node")
            }
            out.append(row)
    return out


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_rows(rows: list[dict[str, Any]], size: Any) -> list[str]:
    """The A/B block printed under the chain table."""
    if not rows:
        return []
    out = ["", "A/B (each variant against ours, same run; ratio of the medians, and in how many"
           " rounds the variant was better)"]
    for row in rows:
        out.append(f"  [{row['variant']}] {row['changes']}, {row['nodes']} nodes:")
        for c in row["cells"]:
            per_round = ", ".join(_f(x) for x in c["p50_ratio_per_round"])
            out.append(
                f"    {size(c['payload'])}, {c['concurrency']} in flight: p50 {_f(c['p50_ms'])}"
                f" vs {_f(c['ours_p50_ms'])} ms (×{_f(c['p50_ratio'], 3)}, better in"
                f" {c['p50_better_rounds']}/{c['rounds']}; per round {per_round}), req/s"
                f" {_f(c['throughput_rps'], 0)} vs {_f(c['ours_throughput_rps'], 0)}"
                f" (×{_f(c['throughput_ratio'], 3)}, better in"
                f" {c['throughput_better_rounds']}/{c['rounds']})"
            )
        cpu, rss = row["cpu"], row["peak_rss_mb"]
        better = ("" if cpu["better_rounds"] is None
                  else f", better in {cpu['better_rounds']}/{cpu['rounds']}")
        out.append(
            f"    CPU ms per request, runner processes: {_f(cpu['runner_ms_per_request'], 3)} vs"
            f" {_f(cpu['ours_runner_ms_per_request'], 3)} (×{_f(cpu['runner_ratio'], 3)}"
            f"{better}); nats-server {_f(cpu['nats_server_ms_per_request'], 3)} vs"
            f" {_f(cpu['ours_nats_server_ms_per_request'], 3)}; peak RSS entrypoint"
            f" {_f(rss['entrypoint']['variant'], 1)} vs {_f(rss['entrypoint']['ours'], 1)} MB,"
            f" nodes {_f(rss['node']['variant'], 1)} vs {_f(rss['node']['ours'], 1)} MB"
        )
    return out

