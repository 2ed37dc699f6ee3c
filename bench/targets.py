"""The goals (floor, peer, footprint), computed from the chain and renderer benchmarks' results.

They are shown by `python -m bench` (each one met, not met, or not measured in this run),
never asserted: a run that misses one still exits 0. The chain's part is printed under the
chain's table; `python -m bench` prints all of them at the end, the renderer's included.

* 3-node chain, 100 B: p50 ≤ 1.1× the JetStream floor's, and throughput at 32 in flight
  ≥ 0.95× the floor's;
* each added node ≤ 0.15 ms of p50 above the JetStream floor's cost per hop;
* at least 5× Ray Serve's throughput and a 5× lower p50, in every cell;
* each runner process ≤ 60 MB RSS; `kai dev` cold start to the first answer ≤ 1.5 s;
* the renderer's: a full render of 500 versions ≤ 10 s, a publish ≤ 1.5 s.
"""

from __future__ import annotations

import math
from typing import Any

P50_VS_JS = 1.1
THROUGHPUT_VS_JS = 0.95
NODE_ABOVE_HOP_MS = 0.15
PEER_FACTOR = 5.0
RUNNER_RSS_MB = 60.0
DEV_START_S = 1.5
CHAIN_NODES = 3  # the chain the ratio targets name


def payload_size(n: int) -> str:
    """A payload's size as the benchmarks print it: "100 B", "100 KB", "8192 KB"."""
    return f"{n // 1024} KB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


def target(name: str, value: float | None, limit: float, better: str, unit: str,
           detail: str = "") -> dict[str, Any]:
    """One target: `better` is "max" (met when value ≤ limit) or "min" (value ≥ limit)."""
    met = None
    if value is not None and not math.isnan(value):
        met = value <= limit if better == "max" else value >= limit
    out: dict[str, Any] = {
        "target": name,
        "value": None if value is None else round(value, 3),
        "limit": limit,
        "unit": unit,
        "met": met,
    }
    if better in ("max", "min"):
        out["better"] = better
    if detail:
        out["detail"] = detail
    return out


def _ms(cell: dict[str, Any] | None, key: str, digits: int = 2) -> str:
    value = (cell or {}).get(key)
    return "-" if value is None else f"{value:.{digits}f}"


def _row(rows: list[dict[str, Any]], nodes: int, payload: int, conc: int) -> dict[str, Any]:
    for r in rows:
        if (r["nodes"], r["payload"], r["concurrency"]) == (nodes, payload, conc):
            return r
    return {}


def chain_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The chain's goals from a bench.chain result (runs, analysis, peers, kai_dev)."""
    s, analysis = result["settings"], result["analysis"]
    small, top = min(s["payloads"]), max(s["concurrency"])
    lo = min(s["concurrency"])
    out = []
    row = _row(analysis["rows"], CHAIN_NODES, small, lo)
    js = row.get("js_floor") or {}
    out.append(target(
        f"{CHAIN_NODES} nodes, {payload_size(small)}, {lo} in flight: p50 ÷ JetStream floor's",
        (row.get("ratio_to_js") or {}).get("p50"), P50_VS_JS, "max", "×",
        f"kai {_ms(row.get('kai'), 'p50_ms')} ms, floor {_ms(js, 'p50_ms')} ms" if js else "",
    ))  # fmt: skip
    row = _row(analysis["rows"], CHAIN_NODES, small, top)
    js = row.get("js_floor") or {}
    out.append(target(
        f"{CHAIN_NODES} nodes, {payload_size(small)}, {top} in flight: req/s ÷ JetStream floor's",
        (row.get("ratio_to_js") or {}).get("throughput"), THROUGHPUT_VS_JS, "min", "×",
        f"kai {_ms(row.get('kai'), 'throughput_rps', 0)} req/s, floor"
        f" {_ms(js, 'throughput_rps', 0)} req/s" if js else "",
    ))  # fmt: skip
    hop = analysis.get("per_hop") or {}
    node = (hop.get("kai") or {}).get("p50_ms")
    floor_hop = (hop.get("floor-js") or {}).get("p50_ms")
    above = None if node is None or floor_hop is None else node - floor_hop
    out.append(target(
        f"each added node above the JetStream floor's cost per hop (p50, {hop.get('from')}→"
        f"{hop.get('to')} nodes)", above, NODE_ABOVE_HOP_MS, "max", "ms",
        f"kai node {node:.3f} ms, floor hop {floor_hop:.3f} ms" if above is not None else "",
    ))  # fmt: skip
    out += peer_targets(result)
    processes = [p for r in result["runs"] if r["system"] == "kai" for p in r["processes"]]
    by_role: dict[str, float] = {}
    for p in processes:
        by_role[p["role"]] = max(by_role.get(p["role"], 0.0), p["peak_rss_mb"])
    out.append(target(
        "peak RSS of each runner process (VmHWM)",
        max(by_role.values()) if by_role else None, RUNNER_RSS_MB, "max", "MB",
        ", ".join(f"{role} ≤ {mb:.0f} MB" for role, mb in sorted(by_role.items())),
    ))  # fmt: skip
    dev = result.get("kai_dev") or {}
    out.append(target(
        "kai dev cold start to the first answer (median)", dev.get("median_s"), DEV_START_S,
        "max", "s", f"{dev.get('nodes')} nodes, {len(dev.get('seconds', []))} starts"
        if dev else "",
    ))  # fmt: skip
    return out


def peer_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Ours against each peer, in its worst cell: its p50 ÷ ours, our req/s ÷ its."""
    out = []
    for name, peer in sorted((result.get("peers") or {}).items()):
        rows = [r for r in result["analysis"].get("peer_rows", [])
                if r.get("system") == peer.get("system") and r.get("ours") and r.get("kai")]
        lat = [(r["kai"]["p50_ms"] / r["ours"]["p50_ms"], r) for r in rows
               if r["ours"]["p50_ms"] > 0]
        thr = [(r["ours"]["throughput_rps"] / r["kai"]["throughput_rps"], r) for r in rows
               if r["kai"]["throughput_rps"] > 0]
        why = f"skipped: {peer['skipped']}" if peer.get("skipped") else ""
        for label, pairs in (("p50, theirs ÷ ours", lat), ("req/s, ours ÷ theirs", thr)):
            worst = min(pairs, key=lambda x: x[0]) if pairs else None
            detail = why
            if worst:
                r = worst[1]
                detail = (f"worst cell: {r['nodes']} nodes, {payload_size(r['payload'])},"
                          f" {r['concurrency']} in flight")
            out.append(target(f"{name}: {label}, every cell", worst[0] if worst else None,
                              PEER_FACTOR, "min", "×", detail))
    return out


def render_targets(render: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The renderer's targets from a bench.render result (None: the renderer did not run)."""
    from bench.render import TARGET_FULL_500_S, TARGET_PUBLISH_500_S

    by = {r["versions"]: r for r in (render or {}).get("sizes", [])}
    big = by.get(500) or {}
    full = (big.get("full_render") or {}).get("median_s")
    publish = (big.get("publish") or {}).get("median_s")
    return [
        target("full render with strict validation, 500 versions", full, TARGET_FULL_500_S,
               "max", "s"),
        target("kai publish, 500 versions", publish, TARGET_PUBLISH_500_S, "max", "s"),
    ]


def _value(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def format_targets(title: str, targets: list[dict[str, Any]]) -> str:
    """One line a target: its value, its limit and whether it is met."""
    lines = [f"{title}:"]
    for t in targets:
        mark = {True: "met", False: "NOT MET", None: "not measured"}[t["met"]]
        sign = {"max": "≤ ", "min": "≥ "}.get(t.get("better", ""), "")
        detail = f" ({t['detail']})" if t.get("detail") else ""
        lines.append(f"  {t['target']}: {_value(t['value'])} {t['unit']}"
                     f" (target {sign}{t['limit']} {t['unit']}): {mark}{detail}")
    return "\n".join(lines)
