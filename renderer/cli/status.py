"""`kai status [--json]`: versions, desired states, workflows and rendered resources."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import click
import yaml

from renderer.problems import InputError
from renderer.project import KUSTOMIZATION, PUBLISHED, VERSIONS_DIR

from .repoopts import guarded, repo_option, root_of


@click.command(short_help="Show versions, states, rpc → chain, rendered objects.")
@click.option("--json", "as_json", is_flag=True, help="Print the same information as JSON.")
@repo_option
def status(as_json: bool, repo: Path | None) -> None:
    """Show each version's desired state, its workflows (rpc → chain) and what is rendered.

    Resources are counted from rendered/PROJECT as it is on disk; run
    `kai render --check` to see whether that is up to date.
    """
    with guarded():
        data = collect(root_of(repo))
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
            version = load_version(root / VERSIONS_DIR / name, display_root=root)
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
    }


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
    if data["unregistered"]:
        lines.append(f"not in kai.yaml: {', '.join(data['unregistered'])} (kai add "
                     f"{VERSIONS_DIR}/NAME registers one)")
    return "\n".join(lines) + "\n"

