"""The status of a GitOps repo as plain data: versions, desired states, workflows, what is
rendered on disk, and whether `kai render` would change it. `kai status` formats it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from .diff import compare_tree
from .problems import InputError
from .project import KUSTOMIZATION, PUBLISHED, VERSIONS_DIR, Project
from .rename import deploy_references, stale_paths
from .repo import Repo, load


def collect(root: Path) -> dict[str, Any]:
    """The status of the repo at `root` as plain data (what --json prints)."""
    from .projectfile import load_project
    from .validate import load_version

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
            "canary": vs.canary or None,  # its weight, when it is the canary
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
        "traffic": traffic(project),
        "versions": versions,
        "project_resources": _resources(rendered, recursive=False),
        "unregistered": unregistered,
        "rendered": rendered_status(project, loaded),
        "deploy_warnings": [str(p) for p in deploy_references(root, project)],
    }


def traffic(project: Project) -> dict[str, Any]:
    """How outside traffic splits between the published version and the canary, and
    through what: "ingress" (ingress-nginx) or "gateway" (a GRPCRoute)."""
    canary = project.canary
    return {
        "through": "ingress" if project.gateway is None else "gateway",
        "canary": {"version": canary[0], "weight": canary[1]} if canary else None,
        "split": [{"version": version, "weight": weight}
                  for version, weight in project.traffic],
    }


def rendered_status(project: Project, loaded: Repo | InputError) -> dict[str, Any]:
    """Would `kai render` change anything? Rendered in memory and compared with the disk.

    `loaded` is the loaded repo, or why it did not load. `up_to_date` is None when the
    repo cannot be rendered (`problems` says why); `differs` lists the files of
    rendered/PROJECT that differ, `stale` the trees of an earlier project name that a
    render removes.
    """
    from .repo import render

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
