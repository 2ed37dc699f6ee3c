"""A renamed project: the trees left under rendered/, and deploy/ files pointing at them.

kai renders into `rendered/<project>/`. When `project:` in kai.yaml changes, the tree of
the old name stays behind unless something removes it, and Argo CD or Flux keep syncing
it. `stale_trees` finds such trees: folders under rendered/ other than the project's
whose `kustomization.yaml` carries the header kai writes (a folder kai did not write is
never touched). `kai render` and the state commands remove them in the same change set
as the new tree (renderer.changeset), so the same commit deletes them.

deploy/ is the user's to edit, so kai does not rewrite it: `deploy_references` names
each Argo CD Application (`spec.source.path`, `spec.sources[].path`) and Flux
Kustomization (`spec.path`) under deploy/ that points at another project's
`rendered/<name>`, with the line to change.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from . import git, output
from .problems import Problem
from .project import DEPLOY_DIR, KUSTOMIZATION, PROJECT_FILE, RENDERED_DIR, Project

KAI_HEADER = output.header(PROJECT_FILE).encode("utf-8")  # first line of kustomization.yaml
MAX_DEPLOY_FILE = 1024 * 1024
_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# (API group, kind) -> the field paths that name the folder a GitOps controller syncs
SYNCED_PATHS: dict[tuple[str, str], tuple[tuple[str | int, ...], ...]] = {
    ("argoproj.io", "Application"): (("spec", "source", "path"), ("spec", "sources", -1, "path")),
    ("kustomize.toolkit.fluxcd.io", "Kustomization"): (("spec", "path"),),
}


def is_kai_tree(folder: Path) -> bool:
    """A real folder (not a symlink) whose kustomization.yaml kai wrote."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    kustomization = folder / KUSTOMIZATION
    if kustomization.is_symlink() or not kustomization.is_file():
        return False
    try:
        with open(kustomization, "rb") as fh:
            return fh.read(len(KAI_HEADER)) == KAI_HEADER
    except OSError:
        return False


def stale_trees(root: Path, project: str) -> list[Path]:
    """The kai-written trees under `root`/rendered/ other than rendered/`project`, sorted."""
    rendered = root / RENDERED_DIR
    if not rendered.is_dir():
        return []
    return sorted(p for p in rendered.iterdir()
                  if p.name != project and not p.name.startswith(".") and is_kai_tree(p))


def stale_paths(root: Path, project: str) -> list[str]:
    """`stale_trees` as repo-relative posix paths (`rendered/old`)."""
    return [f"{RENDERED_DIR}/{p.name}" for p in stale_trees(root, project)]


# --- deploy/ ------------------------------------------------------------------------------


def deploy_references(root: Path, project: Project) -> list[Problem]:
    """Each synced path under deploy/ that names another project's rendered/<name>.

    Only paths into this kai repo's own rendered/ count (the repo may sit in a folder
    of a bigger git repository); the problem says what to set the field to.
    """
    deploy = root / DEPLOY_DIR
    if not deploy.is_dir():
        return []
    prefix = _repo_path(root)
    problems: list[Problem] = []
    for path in sorted(p for p in deploy.rglob("*") if p.suffix in (".yaml", ".yml")):
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_DEPLOY_FILE:
            continue
        shown = path.relative_to(root).as_posix()
        try:
            docs = list(yaml.compose_all(path.read_text(encoding="utf-8"), Loader=_Loader))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # not ours to validate
        for doc in docs:
            for field, node in _synced_paths(doc):
                wanted = _retarget(node.value, prefix, project.name)
                if wanted is not None:
                    problems.append(Problem(
                        shown, node.start_mark.line + 1, node.start_mark.column + 1, field,
                        f"is {node.value}, but kai.yaml's project is {project.name}; set it "
                        f"to {wanted} and apply the file again (kubectl apply -f {shown})"))
    return problems


def _repo_path(root: Path) -> str:
    """Where the kai repo sits in its git repository ("" at the top, or without git)."""
    if not git.is_repo(root):
        return ""
    rel = root.resolve().relative_to(git.toplevel(root).resolve()).as_posix()
    return "" if rel == "." else rel


def _retarget(value: str, prefix: str, project: str) -> str | None:
    """`value` pointed at this project's tree, or None when it already is (or is not ours)."""
    lead = "./" if value.startswith("./") else ""
    trail = "/" if value.endswith("/") and len(value) > 1 else ""
    parts = [p for p in value[len(lead):].strip("/").split("/") if p not in ("", ".")]
    if len(parts) < 2 or parts[-2] != RENDERED_DIR or parts[-1] == project:
        return None
    if "/".join(parts[:-2]) != prefix:
        return None
    return lead + "/".join([*parts[:-1], project]) + trail


def _get(node: Node, key: str) -> Node | None:
    if not isinstance(node, MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, ScalarNode) and k.value == key:
            return v if isinstance(v, Node) else None
    return None


def _scalar(node: Node | None) -> str | None:
    return node.value if isinstance(node, ScalarNode) else None


def _synced_paths(doc: Node | None) -> Iterator[tuple[str, ScalarNode]]:
    """(field path, node) of each synced-folder field of one deploy object."""
    if not isinstance(doc, MappingNode):
        return
    api_version, kind = _scalar(_get(doc, "apiVersion")), _scalar(_get(doc, "kind"))
    if api_version is None or kind is None:
        return
    for fields in SYNCED_PATHS.get((api_version.rpartition("/")[0], kind), ()):
        yield from _walk(doc, fields, "")


def _walk(node: Node | None, fields: tuple[str | int, ...],
          shown: str) -> Iterator[tuple[str, ScalarNode]]:
    if node is None:
        return
    if not fields:
        if isinstance(node, ScalarNode):
            yield shown, node
        return
    head, rest = fields[0], fields[1:]
    if head == -1:  # every item of a list
        if isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                yield from _walk(item, rest, f"{shown}[{i}]")
        return
    yield from _walk(_get(node, str(head)), rest, f"{shown}.{head}" if shown else str(head))
