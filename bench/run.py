"""Run the whole benchmark suite: the chain benchmark, then the renderer benchmark.

    python -m bench [--quick] [--only chain|render] [--results DIR] [--peer-python PY]

Each part prints its table and writes its JSON (and the chain's PNG) into
`--results` (default bench/results/); at the end, the goals (floor, peer, footprint) of every
part that ran, each met or not (bench/targets.py), also written to targets.json.
Exit status: 0 when every part ran, 1 when one failed. Targets that are not met
do not fail the run: the benchmark shows them, it does not assert them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import chain, render, targets

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a small smoke run of each benchmark")
    p.add_argument("--only", choices=("chain", "render"), help="run one benchmark")
    p.add_argument("--results", type=Path, default=RESULTS, help="where JSON and PNG go")
    p.add_argument("--peer-python", default="",
                   help="the Python of a venv with the [bench-peers] extra, to run the peers"
                   " apart from ours (see bench/peers.py)")
    a = p.parse_args(argv)
    quick = ["--quick"] if a.quick else []
    status = 0
    if a.only in (None, "chain"):
        print("== chain benchmark ==", flush=True)
        status |= chain.main([
            *quick,
            *(["--peer-python", a.peer_python] if a.peer_python else []),
            "--json", str(a.results / "chain.json"),
            "--plot", str(a.results / "chain.png"),
        ])  # fmt: skip
        sys.stdout.flush()
    ran: dict[str, Any] = {}
    if a.only in (None, "chain") and not status:
        ran["chain"] = json.loads((a.results / "chain.json").read_text())
    if a.only in (None, "render"):
        print("\n== renderer benchmark ==", flush=True)
        rstatus = render.main([*quick, "--json", str(a.results / "render.json")])
        if not rstatus:
            ran["render"] = json.loads((a.results / "render.json").read_text())
        status |= rstatus
    if ran:
        found = [*ran.get("chain", {}).get("analysis", {}).get("goals", []),
                 *(targets.render_targets(ran["render"]) if "render" in ran else [])]
        print("\n" + targets.format_targets("goals, every part of this run",
                                            found))
        (a.results / "targets.json").write_text(json.dumps(found, indent=2) + "\n")
    return 1 if status else 0


if __name__ == "__main__":
    sys.exit(main())
