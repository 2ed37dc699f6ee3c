"""`kai status [--json]`: versions, desired states, workflows and rendered resources."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import click
import yaml

from renderer.diff import compare_tree
from renderer.lock import repo_lock
from renderer.problems import InputError
from renderer.project import KUSTOMIZATION, PUBLISHED, VERSIONS_DIR, Project
from renderer.rename import deploy_references, stale_paths
from renderer.repo import Repo, load

from .repoopts import guarded, notify, repo_option, root_of


@click.command(short_help="Show versions, states, rpc → chain, rendered objects.")
@click.option("--json", "as_json", is_flag=True, help="Print the same information as JSON.")
@repo_option
def status(as_json: bool, repo: Path | None) -> None:
    """Show each version's desired state, its workflows (rpc → chain) and what is rendered.

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


def collect(root: Path) -> dict[str, Any]:
    """The status of the repo at `root` as plain data (what --json prints)."""
    from renderer.projectfile import load_project
    from renderer.validate import load_version

    project = load_project(root)
    rendered = project.rendered_dir
    loaded: Repo | InputError
    try:
        loaded = load(root, project=project)
    except InputError as exc:
        loaded = exc  # each version's own problems are shown below too
    versions: list[dict[str, Any]] = []
    for name in sorted(project.versions):
        vs = project.versions[name]
        entry: dict[str, Any] = {
            "name": name,
            "state": vs.state,
            "published": vs.state == PUBLISHED,
            "config": ({"kind": vs.config.kind, "secret": vs.config.secret}
                       if vs.config else None),
            "workflows": [],
            "problems": [],
            "resources": _resources(rendered / name),
        }
        try:
            version = (loaded.versions[name] if isinstance(loaded, Repo) else
                       load_version(root / VERSIONS_DIR / name, display_root=root))
        except InputError as exc:
            entry["problems"] = [str(p) for p in exc.problems]
        except OSError as exc:
            entry["problems"] = [f"{VERSIONS_DIR}/{name}: {exc.strerror or exc}"]
        else:
            entry["description"] = version.description
            entry["workflows"] = [
                {"name": w.name, "rpc": w.entrypoint, "chain": list(w.sequential)}
                for w in version.workflows
            ]
        versions.append(entry)
    folder = root / VERSIONS_DIR
    unregistered = sorted(
        p.name for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in project.versions
    ) if folder.is_dir() else []
    return {
        "project": project.name,
        "namespace": project.namespace,
        "published": project.published,
        "versions": versions,
        "project_resources": _resources(rendered, recursive=False),
        "unregistered": unregistered,
        "rendered": rendered_status(project, loaded),
        "deploy_warnings": [str(p) for p in deploy_references(root, project)],
    }


def rendered_status(project: Project, loaded: Repo | InputError) -> dict[str, Any]:
    """Would `kai render` change anything? Rendered in memory and compared with the disk.

    `loaded` is the loaded repo, or why it did not load. `up_to_date` is None when the
    repo cannot be rendered (`problems` says why); `differs` lists the files of
    rendered/PROJECT that differ, `stale` the trees of an earlier project name that a
    render removes.
    """
    from renderer.repo import render

    stale = stale_paths(project.root, project.name)
    out: dict[str, Any] = {"path": project.rendered_rel, "up_to_date": None, "differs": [],
                           "stale": stale, "problems": []}
    try:
        if isinstance(loaded, InputError):
            raise loaded
        tree = render(loaded)
    except InputError as exc:
        out["problems"] = [str(p) for p in exc.problems]
        return out
    out["differs"] = [f"{project.rendered_rel}/{rel}"
                      for rel, _ in compare_tree(project.rendered_dir, tree)]
    out["up_to_date"] = not out["differs"] and not stale
    return out


def _resources(folder: Path, recursive: bool = True) -> dict[str, Any]:
    kinds: Counter[str] = Counter()
    if folder.is_dir():
        files = folder.rglob("*.yaml") if recursive else folder.glob("*.yaml")
        for path in files:
            if path.name != KUSTOMIZATION:  # kustomize's own file, not a resource
                kinds[_kind(path) or "?"] += 1
    return {"count": sum(kinds.values()), "kinds": dict(sorted(kinds.items()))}


def _kind(path: Path) -> str | None:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return str(doc["kind"]) if isinstance(doc, dict) and "kind" in doc else None


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
        state = v["state"] + (" *" if v["published"] else "")
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
    if data["published"]:
        lines.append("* published: its Service is active-entrypoint, with the Ingress")
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
