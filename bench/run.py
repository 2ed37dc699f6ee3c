"""Run the whole benchmark suite: the chain benchmark, then the renderer benchmark.

    python -m bench [--quick] [--only chain|render] [--results DIR]

Each part prints its table and writes its JSON (and the chain's PNG) into
`--results` (default bench/results/). Exit status: 0 when every part ran, 1 when
one failed. Targets that are not met do not fail the run: the benchmark shows
them, it does not assert them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import chain, render

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a small smoke run of each benchmark")
    p.add_argument("--only", choices=("chain", "render"), help="run one benchmark")
    p.add_argument("--results", type=Path, default=RESULTS, help="where JSON and PNG go")
    a = p.parse_args(argv)
    quick = ["--quick"] if a.quick else []
    status = 0
    if a.only in (None, "chain"):
        print("== chain benchmark ==", flush=True)
        status |= chain.main([
            *quick,
            "--json", str(a.results / "chain.json"),
            "--plot", str(a.results / "chain.png"),
        ])  # fmt: skip
        sys.stdout.flush()
    if a.only in (None, "render"):
        print("\n== renderer benchmark ==", flush=True)
        status |= render.main([*quick, "--json", str(a.results / "render.json")])
    return 1 if status else 0


if __name__ == "__main__":
    sys.exit(main())
