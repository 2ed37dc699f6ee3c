"""The renderer benchmark: full render, `kai render --check` and `kai publish` as repos grow.

    python -m bench.render [--quick] [--sizes 10,100,500] [--nodes 5] [--repeat 3]
                           [--json bench/results/render.json]

For each size it generates a GitOps repo in a temporary directory (`kai init` through
renderer.repo.init_repo, then the versions written straight into versions/ and their
states into kai.yaml, which is much faster than `kai add` per version): every version
has `--nodes` nodes in one workflow and is started, and the first one is published.
Then, timing the real `kai` command (a fresh process each time, as a user or CI runs it):

* **full render**: `kai render` on a fresh copy of the repo's sources (kai.yaml,
  versions/, ..., without rendered/ and .git), one copy per sample, all made before the
  first sample and kept until the size is done, so every object is rendered, validated
  (kubernetes-validate, strict) and written into a tree no deletion just preceded; the
  repo itself is then rendered untimed for the two measurements below;
* **check**: `kai render --check` on the unchanged, committed repo;
* **publish**: `kai publish <next version>` (kai.yaml, re-render, one git commit).

It also times `kai --version` (interpreter start-up and the CLI's imports: the floor
every command pays) and, in this process, the phases of a render (load and validate
the versions, render and validate the objects, compare with the tree on disk).
It reports seconds, objects per second, seconds per version at each size and a linear
fit of the full render's cost against the number of versions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PROJECT = "bench"
NAMESPACE = "bench"

TARGET_FULL_500_S = 10.0
TARGET_PUBLISH_500_S = 1.5
LINEAR_TOLERANCE = 1.5  # marginal cost per version may grow at most this much with size

PROTO = """syntax = "proto3";

package kaibench;

message Request {
  string name = 1;
  bytes data = 2;
}

message Response {
  string text = 1;
}

service Bench {
  rpc Run (Request) returns (Response);
}
"""

NODE_SRC = '''"""Node {index} of a generated benchmark version."""

from public_input_pb2 import Response


async def handler(ctx, data):
    return Response(text="node {index}")
'''


@dataclass
class Settings:
    sizes: list[int] = field(default_factory=lambda: [10, 100, 500])
    nodes: int = 5
    repeat: int = 3
    publish_repeat: int = 3
    timeout: float = 600.0
    quick: bool = False


# --- generating a repo -----------------------------------------------------------------


def version_name(i: int) -> str:
    return f"v{i:04d}"


def write_version(versions_dir: Path, name: str, nodes: int) -> None:
    vdir = versions_dir / name
    (vdir / "src").mkdir(parents=True)
    (vdir / "public_input.proto").write_text(PROTO)
    node_names = [f"n{j + 1}" for j in range(nodes)]
    lines = [
        f"version: {name}",
        f"description: Generated benchmark version {name} with {nodes} nodes.",
        "entrypoint:",
        "  proto: public_input.proto",
        "  image: konstellation/kre-entrypoint:1.6.0",
        "nodes:",
    ]
    for j, node in enumerate(node_names):
        (vdir / "src" / node).mkdir()
        (vdir / "src" / node / "main.py").write_text(NODE_SRC.format(index=j + 1))
        lines += [
            f"  - name: {node}",
            "    image: konstellation/kre-py:1.23.0",
            f"    src: src/{node}/main.py",
        ]
    lines += [
        "workflows:",
        "  - name: run",
        "    entrypoint: Run",
        f"    sequential: [{', '.join(node_names)}]",
    ]
    (vdir / "krt.yml").write_text("\n".join(lines) + "\n")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=git_env()
    ).stdout


def git_env() -> dict[str, str]:
    env = dict(os.environ)
    for key, value in {
        "GIT_AUTHOR_NAME": "KAI Bench",
        "GIT_AUTHOR_EMAIL": "kai-bench@example.invalid",
        "GIT_COMMITTER_NAME": "KAI Bench",
        "GIT_COMMITTER_EMAIL": "kai-bench@example.invalid",
    }.items():
        env.setdefault(key, value)
    return env


def generate_repo(root: Path, size: int, nodes: int) -> None:
    """A committed GitOps repo with `size` started versions, the first one published."""
    from renderer.project import PUBLISHED, STARTED, VersionState
    from renderer.projectfile import dump_project, load_project
    from renderer.repo import init_repo

    with patched_environ(git_env()):
        init_repo(root, PROJECT, NAMESPACE, repo_url="https://git.example.invalid/bench.git")
    versions_dir = root / "versions"
    states: dict[str, VersionState] = {}
    for i in range(size):
        name = version_name(i)
        write_version(versions_dir, name, nodes)
        states[name] = VersionState(state=PUBLISHED if i == 0 else STARTED)
    project = load_project(root)
    (root / "kai.yaml").write_text(dump_project(replace(project, versions=states)))
    git(root, "add", "kai.yaml", "versions")
    git(root, "commit", "-q", "-m", f"bench: {size} versions")


@contextlib.contextmanager
def patched_environ(values: dict[str, str]) -> Any:
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# --- timing the CLI --------------------------------------------------------------------


def kai_argv() -> list[str]:
    script = Path(sys.executable).parent / "kai"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from renderer.cli import main; sys.exit(main())"]


def timed_kai(args: list[str], cwd: Path, timeout: float, ok: tuple[int, ...] = (0,)) -> float:
    """Run `kai ARGS`; return wall seconds. Raises with its output when the exit code is not ok."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*kai_argv(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=git_env(),
        stdin=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode not in ok:
        raise RuntimeError(
            f"`kai {' '.join(args)}` exited with {proc.returncode}:\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return elapsed


def timed_kai_cpu(args: list[str], cwd: Path, timeout: float) -> tuple[float, dict[str, float]]:
    """`timed_kai`, plus the user and system CPU seconds of the command (and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    elapsed = timed_kai(args, cwd, timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, {
        "user_s": round(after.ru_utime - before.ru_utime, 3),
        "sys_s": round(after.ru_stime - before.ru_stime, 3),
    }


def source_copy(root: Path, dest: Path) -> Path:
    """A copy of a repo's sources (kai.yaml, versions/, ...) without rendered/ and .git."""
    dest.mkdir(parents=True)
    for entry in root.iterdir():
        if entry.name in (".git", "rendered"):
            continue
        if entry.is_dir():
            shutil.copytree(entry, dest / entry.name)
        else:
            shutil.copy2(entry, dest / entry.name)
    return dest


def count_objects(rendered: Path) -> int:
    """Kubernetes objects in a rendered tree: one per YAML file, kustomization.yaml aside."""
    return sum(1 for p in rendered.rglob("*.yaml") if p.name != "kustomization.yaml")


def stats(samples: list[float]) -> dict[str, Any]:
    return {
        "samples": [round(x, 4) for x in samples],
        "min_s": round(min(samples), 4),
        "median_s": round(statistics.median(samples), 4),
    }


def phases(root: Path) -> dict[str, float]:
    """In-process breakdown of one render: load+validate versions, render+validate, compare."""
    from renderer.diff import compare_tree
    from renderer.repo import load
    from renderer.repo import render as render_tree

    t0 = time.perf_counter()
    repo = load(root)
    t1 = time.perf_counter()
    tree = render_tree(repo)
    t2 = time.perf_counter()
    compare_tree(repo.rendered_dir, tree)
    t3 = time.perf_counter()
    return {
        "load_validate_s": round(t1 - t0, 4),
        "render_validate_s": round(t2 - t1, 4),
        "compare_s": round(t3 - t2, 4),
    }


def measure_size(workdir: Path, size: int, s: Settings, log: Any) -> dict[str, Any]:
    root = workdir / f"repo-{size}"
    t0 = time.perf_counter()
    generate_repo(root, size, s.nodes)
    generate_s = time.perf_counter() - t0
    rendered = root / "rendered" / PROJECT
    # Every timed full render gets its own fresh copy of the sources, all made before the
    # first one, and none is deleted before the size is done: on ext4 without a journal,
    # creating thousands of files right after deleting thousands costs ~N² in the kernel
    # (the allocator rescans recently freed inodes), so rendering into a tree deleted
    # seconds before would time the file system instead of the renderer.
    copies = [source_copy(root, workdir / f"repo-{size}-full-{i}") for i in range(s.repeat)]
    print(f"  {size} versions: generated in {generate_s:.1f}s; full render", file=log, flush=True)
    full, full_cpu = [], []
    for copy in copies:
        elapsed, cpu = timed_kai_cpu(["render", "--repo", str(copy)], copy, s.timeout)
        full.append(elapsed)
        full_cpu.append(cpu)
    # The repo itself, rendered untimed, is what --check and publish are measured on.
    shutil.rmtree(rendered, ignore_errors=True)
    timed_kai(["render", "--repo", str(root)], root, s.timeout)
    objects = count_objects(rendered)
    files = sum(1 for p in rendered.rglob("*") if p.is_file())
    git(root, "add", "-A", "rendered")
    git(root, "commit", "-q", "-m", "bench: rendered")
    print(f"  {size} versions: render --check", file=log, flush=True)
    check = [
        timed_kai(["render", "--check", "--repo", str(root)], root, s.timeout)
        for _ in range(s.repeat)
    ]
    print(f"  {size} versions: publish", file=log, flush=True)
    publish = []
    for i in range(1, 1 + min(s.publish_repeat, size - 1)):
        publish.append(
            timed_kai(["publish", version_name(i), "--repo", str(root)], root, s.timeout)
        )
    breakdown = phases(root)
    full_stats = stats(full)
    return {
        "versions": size,
        "nodes_per_version": s.nodes,
        "objects": objects,
        "files": files,
        "generate_s": round(generate_s, 2),
        "full_render": {
            **full_stats,
            "fresh_copy_per_sample": True,
            "user_cpu_s": [c["user_s"] for c in full_cpu],
            "sys_cpu_s": [c["sys_s"] for c in full_cpu],
            "objects_per_s": round(objects / full_stats["median_s"], 1),
            "s_per_version": round(full_stats["median_s"] / size, 5),
        },
        "check": {**stats(check), "objects_per_s": round(objects / statistics.median(check), 1)},
        "publish": stats(publish) if publish else None,
        "phases_in_process": breakdown,
    }


# --- analysis -----------------------------------------------------------------------------


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float] | None:
    if len(xs) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return {
        "slope_s_per_version": round(slope, 5),
        "intercept_s": round(intercept, 4),
        "r2": round(r2, 4),
    }


def growth(sizes: list[dict[str, Any]], key: str) -> dict[str, Any]:
    xs = [float(r["versions"]) for r in sizes if r.get(key)]
    ys = [r[key]["median_s"] for r in sizes if r.get(key)]
    out: dict[str, Any] = {"fit": linear_fit(xs, ys)}
    marginal = []
    for (x0, y0), (x1, y1) in zip(
        zip(xs, ys, strict=True), list(zip(xs, ys, strict=True))[1:], strict=False
    ):
        marginal.append(
            {"from": int(x0), "to": int(x1), "s_per_version": round((y1 - y0) / (x1 - x0), 5)}
        )
    out["marginal"] = marginal
    if len(marginal) >= 2 and marginal[0]["s_per_version"] > 0:
        out["marginal_growth"] = round(
            marginal[-1]["s_per_version"] / marginal[0]["s_per_version"], 2
        )
    return out


def targets(sizes: list[dict[str, Any]], grow: dict[str, Any]) -> list[dict[str, Any]]:
    by = {r["versions"]: r for r in sizes}
    big = by.get(500)
    out = []
    value = big["full_render"]["median_s"] if big else None
    out.append(
        {
            "target": "full render with strict validation, 500 versions × 5 nodes",
            "value": value,
            "limit": TARGET_FULL_500_S,
            "unit": "s",
            "met": None if value is None else value <= TARGET_FULL_500_S,
        }
    )
    mg = grow.get("marginal_growth")
    out.append(
        {
            "target": "full render cost grows linearly (marginal s/version, last ÷ first)",
            "value": mg,
            "limit": LINEAR_TOLERANCE,
            "unit": "×",
            "met": None if mg is None else mg <= LINEAR_TOLERANCE,
        }
    )
    pub = big["publish"]["median_s"] if big and big.get("publish") else None
    out.append(
        {
            "target": "kai publish, 500 versions",
            "value": pub,
            "limit": TARGET_PUBLISH_500_S,
            "unit": "s",
            "met": None if pub is None else pub <= TARGET_PUBLISH_500_S,
        }
    )
    return out


def table(result: dict[str, Any]) -> str:
    head = (
        "versions",
        "objects",
        "full render s",
        "objects/s",
        "s/version",
        "check s",
        "publish s",
        "load+validate s",
        "render+validate s",
    )
    rows = [head]
    for r in result["sizes"]:
        ph = r["phases_in_process"]
        rows.append(
            (
                str(r["versions"]),
                str(r["objects"]),
                f"{r['full_render']['median_s']:.2f}",
                f"{r['full_render']['objects_per_s']:.0f}",
                f"{r['full_render']['s_per_version']:.4f}",
                f"{r['check']['median_s']:.2f}",
                f"{r['publish']['median_s']:.2f}" if r.get("publish") else "-",
                f"{ph['load_validate_s']:.2f}",
                f"{ph['render_validate_s']:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    out = []
    for i, row in enumerate(rows):
        out.append("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    out.append("")
    out.append(f"`kai --version` (start-up floor): {result['cli_startup']['median_s']:.2f} s")
    fit = result["growth"]["full_render"]["fit"]
    if fit:
        out.append(
            f"full render fit: {fit['intercept_s']:.2f} s + {fit['slope_s_per_version'] * 1000:.1f}"
            f" ms × versions (R² {fit['r2']:.3f})"
        )
    for m in result["growth"]["full_render"]["marginal"]:
        out.append(f"  marginal {m['from']}→{m['to']}: {m['s_per_version'] * 1000:.1f} ms/version")
    out.append("full render samples (each on a fresh copy): wall / user CPU / system CPU s")
    for r in result["sizes"]:
        fr = r["full_render"]
        cells = zip(fr["samples"], fr.get("user_cpu_s", []), fr.get("sys_cpu_s", []), strict=False)
        out.append(
            f"  {r['versions']}: " + ", ".join(f"{w:.2f} / {u:.2f} / {y:.2f}" for w, u, y in cells)
        )
    pfit = result["growth"]["publish"]["fit"]
    if pfit:
        out.append(
            f"publish fit: {pfit['intercept_s']:.2f} s + {pfit['slope_s_per_version'] * 1000:.2f}"
            f" ms × versions (R² {pfit['r2']:.3f})"
        )
    out.append("")
    out.append("targets (overhead):")
    for t in result["targets"]:
        mark = {True: "met", False: "NOT MET", None: "not measured"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        out.append(f"  {t['target']}: {value} {t['unit']} (limit {t['limit']}): {mark}")
    return "\n".join(out)


# --- main ---------------------------------------------------------------------------------


def _ints(raw: str) -> list[int]:
    return [int(x) for x in raw.split(",") if x.strip()]


def run(s: Settings, workdir: Path, log: Any = sys.stderr) -> dict[str, Any]:
    startup = [timed_kai(["--version"], workdir, 60) for _ in range(3)]
    sizes = []
    for size in s.sizes:
        print(f"render: {size} versions × {s.nodes} nodes", file=log, flush=True)
        sizes.append(measure_size(workdir, size, s, log))
        for done in [workdir / f"repo-{size}", *workdir.glob(f"repo-{size}-full-*")]:
            shutil.rmtree(done, ignore_errors=True)
    grow = {
        "full_render": growth(sizes, "full_render"),
        "check": growth(sizes, "check"),
        "publish": growth(sizes, "publish"),
    }
    return {
        "cli_startup": stats(startup),
        "sizes": sizes,
        "growth": grow,
        "targets": targets(sizes, grow["full_render"]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    from bench.chain import machine
    from bench.procs import sigterm_as_interrupt

    p = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke mode: one 10-version repo, once")
    p.add_argument("--sizes", type=_ints, help="repo sizes in versions (default 10,100,500)")
    p.add_argument("--nodes", type=int, help="nodes per version (default 5)")
    p.add_argument("--repeat", type=int, help="runs of each timing (default 3; median reported)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one kai command may take")
    p.add_argument("--json", type=Path, default=RESULTS / "render.json")
    p.add_argument("--keep", action="store_true", help="keep the generated repos")
    a = p.parse_args(argv)
    s = Settings(timeout=a.timeout, quick=a.quick)
    if a.quick:
        s.sizes, s.repeat, s.publish_repeat = [10], 1, 1
    if a.sizes is not None:
        s.sizes = a.sizes
    if a.nodes is not None:
        s.nodes = a.nodes
    if a.repeat is not None:
        s.repeat = s.publish_repeat = max(1, a.repeat)
    workdir = Path(tempfile.mkdtemp(prefix="kai-bench-render-"))
    started = time.time()
    try:
        with sigterm_as_interrupt():
            result = run(s, workdir)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, subprocess.SubprocessError) as exc:
        print(f"render benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result["settings"] = asdict(s)
    result["machine"] = machine()
    result["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
    result["wall_seconds"] = round(time.time() - started, 1)
    print(table(result))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(f"\nJSON: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
