"""The benchmarks' results as Markdown tables, for docs/performance.md.

    python -m bench.markdown chain bench/results/chain.json    # every cell, with its ratios
    python -m bench.markdown ab bench/results/chain.json       # the A/B of --variant runs
    python -m bench.markdown goals bench/results/targets.json  # the goals, met or not
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import chain


def _f(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def ab_table(result: dict[str, Any]) -> str:
    """One row per variant, chain length and cell: the variant's figure against ours, the
    ratio of the medians and in how many rounds the variant was better."""
    head = ("variant", "nodes", "cell", "p50 ms (ours)", "p50 ×", "better",
            "req/s (ours)", "req/s ×", "better", "CPU ms/req (ours)", "CPU ×", "better",
            "peak RSS entrypoint MB (ours)")
    rows: list[tuple[str, ...]] = [head]
    for row in result["analysis"].get("ab") or []:
        cpu, rss = row["cpu"], row["peak_rss_mb"]["entrypoint"]
        for i, c in enumerate(row["cells"]):
            first = i == 0
            rows.append((
                row["variant"] if first else "", str(row["nodes"]) if first else "",
                f"{chain._size(c['payload'])}, {c['concurrency']} in flight",
                f"{_f(c['p50_ms'])} ({_f(c['ours_p50_ms'])})", _f(c["p50_ratio"], 3),
                f"{c['p50_better_rounds']}/{c['rounds']}",
                f"{_f(c['throughput_rps'], 0)} ({_f(c['ours_throughput_rps'], 0)})",
                _f(c["throughput_ratio"], 3), f"{c['throughput_better_rounds']}/{c['rounds']}",
                f"{_f(cpu['runner_ms_per_request'], 3)}"
                f" ({_f(cpu['ours_runner_ms_per_request'], 3)})" if first else "",
                _f(cpu["runner_ratio"], 3) if first else "",
                f"{cpu['better_rounds']}/{cpu['rounds']}"
                if first and cpu["better_rounds"] is not None else "",
                f"{_f(rss['variant'], 1)} ({_f(rss['ours'], 1)})" if first else "",
            ))  # fmt: skip
    return chain.markdown(rows, bold=())


def goals_table(goals: list[dict[str, Any]]) -> str:
    rows: list[tuple[str, ...]] = [("goal", "measured", "target", "status")]
    for t in goals:
        sign = {"max": "≤ ", "min": "≥ "}.get(t.get("better", ""), "")
        status = {True: "met", False: "**not met**", None: "not measured"}[t["met"]]
        detail = f" ({t['detail']})" if t.get("detail") else ""
        value = "–" if t["value"] is None else f"{t['value']:g} {t['unit']}"
        rows.append((t["target"], value + detail, f"{sign}{t['limit']:g} {t['unit']}", status))
    return chain.markdown(rows, bold=())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.markdown", description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("chain", "ab", "goals"))
    p.add_argument("json", type=Path)
    a = p.parse_args(argv)
    try:
        data = json.loads(a.json.read_text())
        if a.what == "chain":
            print(chain.markdown(chain.cell_rows(data)))
        elif a.what == "ab":
            print(ab_table(data))
        else:
            print(goals_table(data if isinstance(data, list) else data["analysis"]["goals"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"bench.markdown: {a.json}: not a {a.what} result ({exc})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
