"""`kai status [--json]`: versions, desired states, workflows and rendered resources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from renderer.lock import repo_lock
from renderer.project import VERSIONS_DIR
from renderer.status import collect

from .repoopts import guarded, notify, repo_option, root_of


@click.command(short_help="Show versions, states, rpc → chain, rendered objects.")
@click.option("--json", "as_json", is_flag=True, help="Print the same information as JSON.")
@repo_option
def status(as_json: bool, repo: Path | None) -> None:
    """Show each version's desired state, its workflows (rpc → chain) and what is rendered.

    The traffic line shows how outside traffic splits between the published version
    and the canary (JSON: "traffic": {"through", "canary", "split"}).

    Resources are counted from rendered/PROJECT as it is on disk. The repo is
    rendered in memory too, and compared with rendered/PROJECT: `up to date`,
    or `out of date (N files differ)` when `kai render` would change it (JSON:
    "rendered": {"path", "up_to_date", "differs", "stale", "problems"}; up_to_date
    is null when the repo cannot be rendered, and problems says why).
    """
    with guarded():
        root = root_of(repo)
        with repo_lock(root, "kai status", shared=True, on_wait=notify):
            data = collect(root)
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        click.echo(table(data), nl=False)


def _kinds_text(resources: dict[str, Any]) -> str:
    if not resources["count"]:
        return "-"
    parts = [f"{n} {k}" if n > 1 else k for k, n in resources["kinds"].items()]
    return f"{resources['count']}: {', '.join(parts)}"


def table(data: dict[str, Any]) -> str:
    """The human table of `collect`'s data."""
    lines = [
        f"project {data['project']} (namespace {data['namespace']}), "
        f"published: {data['published'] or 'none'}",
        "",
    ]
    rows: list[tuple[str, str, str, str]] = [("VERSION", "STATE", "WORKFLOWS (rpc → chain)",
                                              "RENDERED")]
    for v in data["versions"]:
        flows = [" → ".join([w["rpc"], *w["chain"]]) for w in v["workflows"]]
        if v["problems"]:
            flows = [f"invalid: run `kai validate {VERSIONS_DIR}/{v['name']}`"]
        state = v["state"] + (" *" if v["published"] else "") + (
            f" (canary {v['canary']}%)" if v["canary"] else "")
        flows = flows or ["-"]
        rows.append((v["name"], state, flows[0], _kinds_text(v["resources"])))
        rows.extend(("", "", extra, "") for extra in flows[1:])
    if len(rows) == 1:
        rows.append(("(no versions: kai add PATH)", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r[:3], widths, strict=True)]
        lines.append("  ".join([*cells, r[3]]).rstrip())
    lines.append("")
    lines.append(f"project-level: {_kinds_text(data['project_resources'])}")
    route = "the GRPCRoute" if data["traffic"]["through"] == "gateway" else "the Ingress"
    if data["published"]:
        lines.append(f"* published: its Service is active-entrypoint, with {route}")
    split = data["traffic"]["split"]
    if split:
        shares = ", ".join(f"{s['version']} {s['weight']}%" for s in split)
        how = ("the GRPCRoute's backend weights" if data["traffic"]["through"] == "gateway"
               else "a second Ingress with ingress-nginx's canary-weight")
        lines.append(f"traffic: {shares}" + (f" (canary through {how})"
                                             if len(split) > 1 else f" (through {route})"))
    lines.extend(_rendered_text(data["rendered"]))
    lines.extend(f"warning: {w}" for w in data["deploy_warnings"])
    if data["unregistered"]:
        lines.append(f"not in kai.yaml: {', '.join(data['unregistered'])} (kai add "
                     f"{VERSIONS_DIR}/NAME registers one)")
    return "\n".join(lines) + "\n"


def _rendered_text(rendered: dict[str, Any]) -> list[str]:
    where = rendered["path"]
    if rendered["up_to_date"] is None:
        problems = rendered["problems"]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return [f"{where}: cannot be rendered: {problems[0] if problems else '?'}{more}; "
                "`kai render --check` lists every problem"]
    lines = []
    differs = len(rendered["differs"])
    if differs:
        lines.append(f"{where}: out of date ({differs} file{'s' if differs != 1 else ''} "
                     "differ); run kai render")
    elif not rendered["stale"]:
        lines.append(f"{where}: up to date")
    lines.extend(f"{old}: left from an earlier project name; run kai render to remove it"
                 for old in rendered["stale"])
    return lines
