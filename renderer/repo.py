"""The GitOps repo: find it, load it, render it, and change it with one git commit each.

A GitOps repo holds `kai.yaml` (desired state), `versions/<version>/` (sources),
`rendered/<project>/` (generated, what Argo CD syncs) and `deploy/` (the Argo CD
and Flux objects). The commands in renderer.cli are thin wrappers over this module.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import git
from .atomic import tree_names, write_file, write_tree
from .changeset import Changeset, recover_interrupted
from .images import (
    BUILD_COMMENT,
    DEFAULT_REGISTRY,
    default_images,
    map_comment,
    registry_problem,
)
from .krt import MANIFEST_NAMES, Version
from .lifecycle import NothingToDo, Transition, transition
from .lock import repo_lock
from .problems import InputError, Problem
from .project import (
    DEFAULT_KUBERNETES_VERSION,
    DEPLOY_DIR,
    PROJECT_FILE,
    RENDERED_DIR,
    STOPPED,
    VERSIONS_DIR,
    Build,
    Project,
    VersionState,
)
from .versionfiles import copied_files
from .worktree import branch_worktree, recover_worktrees

if TYPE_CHECKING:
    from .yamlsafe import Document

Tree = dict[str, bytes]
GITKEEP = ".gitkeep"
PLACEHOLDER_URL = "https://git.example.com/your-org/your-gitops-repo.git"
PLACEHOLDER_NOTE = (
    "# kai init found no git remote (and got no --repo-url): replace the repository\n"
    "# URL below with your GitOps repo's URL.\n"
)
GITIGNORE = "__pycache__/\n*.py[cod]\n.venv/\n.kai/\n.DS_Store\n"
ADD_SCRATCH = ".kai-add-"  # kai add's scratch folder in versions/: `.kai-add-<pid>-…`


class RepoError(Exception):
    """The repo is not in a state the command can work with; the message says why."""


@dataclass(frozen=True)
class Repo:
    """A loaded GitOps repo: kai.yaml plus every version it lists, validated."""

    root: Path
    project: Project
    versions: dict[str, Version]

    @property
    def rendered_dir(self) -> Path:
        return self.project.rendered_dir

    @property
    def rendered_rel(self) -> str:
        return self.project.rendered_rel


@dataclass(frozen=True)
class Result:
    """What a state-changing command did."""

    summary: str  # `publish greeter-v2 (greeter-v1 → started)`
    message: str  # the commit message
    paths: tuple[str, ...]  # repo-relative paths written
    sha: str | None = None  # None with --no-commit
    branch: str | None = None  # the branch the commit is on
    transition: Transition | None = None


# --- finding and loading ---------------------------------------------------------------


def find_root(start: Path | None = None) -> Path:
    """The nearest directory from `start` (default: cwd) upwards that holds kai.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PROJECT_FILE).is_file():
            return folder
    raise RepoError(
        f"no {PROJECT_FILE} in {here} or any parent directory; run the command inside a "
        "GitOps repo, pass --repo DIR, or create one with `kai init DIR`"
    )


def resolve_root(repo: Path | None) -> Path:
    """`--repo DIR` when given (it must hold kai.yaml), else found from the cwd upwards."""
    if repo is None:
        return find_root()
    root = repo.resolve()
    if not (root / PROJECT_FILE).is_file():
        raise RepoError(f"{repo}: no {PROJECT_FILE} here; create one with `kai init {repo}`")
    return root


def load(root: Path, skip: Iterable[str] = (), only: Iterable[str] | None = None,
         project: Project | None = None) -> Repo:
    """Load kai.yaml and every version it lists (all problems reported at once).

    `only` limits the versions loaded to those named; `project` is kai.yaml when the
    caller already loaded it.
    """
    from .projectfile import load_project
    from .validate import read_version, version_settings_problems
    from .yamlsafe import load_yaml

    if project is None:
        project = load_project(root)
    problems: list[Problem] = []
    versions: dict[str, Version] = {}
    docs: dict[str, Document] = {}
    skipped = set(skip)
    wanted = None if only is None else set(only)
    for name in sorted(project.versions):
        if name in skipped or (wanted is not None and name not in wanted):
            continue
        folder = root / VERSIONS_DIR / name
        rel = f"{VERSIONS_DIR}/{name}"
        if not folder.is_dir():
            problems.append(
                Problem(PROJECT_FILE, path=f"versions.{name}",
                        message=f"{rel}/ does not exist; add the version with `kai add`")
            )
            continue
        try:
            version, docs[name] = read_version(folder, display_root=root)
        except InputError as exc:
            problems.extend(exc.problems)
            continue
        if version.name != name:
            problems.append(
                Problem(f"{rel}/{version.manifest}", path="version",
                        message=f"is {version.name!r}, but the folder and kai.yaml say {name!r}")
            )
            continue
        versions[name] = version
    if versions:  # how kai.yaml's node settings fit the versions, with positions
        pdoc = load_yaml(root / PROJECT_FILE, PROJECT_FILE)
        for name, version in versions.items():
            problems += version_settings_problems(project, pdoc, version, docs[name])
    if problems:
        raise InputError(problems)
    return Repo(root=root, project=replace(project, root=root), versions=versions)


def render(repo: Repo, project: Project | None = None,
           versions: Mapping[str, Version] | None = None) -> Tree:
    """The whole rendered/<project>/ tree (validated) for `project` (default: the repo's)."""
    from .render import render_project

    return render_project(project or repo.project,
                          dict(versions if versions is not None else repo.versions))


@dataclass(frozen=True)
class Rendered:
    """What `kai render` found (and, unless checking, wrote)."""

    repo: Repo
    tree: Tree
    diffs: list[tuple[str, str]]  # (path under rendered/<project>, added|removed|changed)
    stale: list[str]  # rendered/<old> trees of an earlier project name (removed unless check)


def render_repo(root: Path, check: bool = False, notify: Notify | None = None) -> Rendered:
    """`kai render [--check]`: render the whole repo and compare it with rendered/.

    Unless `check`, write the new tree and remove stale trees, all or nothing, holding
    the repo lock; with `check`, hold it shared and write nothing.
    """
    from .diff import compare_tree
    from .rename import stale_paths

    tell = notify or _quiet
    command = "kai render --check" if check else "kai render"
    with repo_lock(root, command, shared=check, on_wait=tell):
        if not check:
            _recover(root, tell)
        loaded = load(root)
        tree = render(loaded)
        found = Rendered(loaded, tree, compare_tree(loaded.rendered_dir, tree),
                         stale_paths(root, loaded.project.name))
        if check:
            return found
        with Changeset(root, command, in_git=False) as changes:
            if found.diffs:
                changes.put_tree(loaded.rendered_rel, tree)
            for rel in found.stale:
                changes.remove_tree(rel)
            changes.apply(None)
        return found


# --- changing state --------------------------------------------------------------------


Notify = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def apply_state_change(root: Path, version: str | None, action: str, commit: bool = True,
                       branch: str | None = None, notify: Notify = _quiet,
                       weight: int | None = None) -> Result:
    """Run one lifecycle command: kai.yaml, re-render, one commit `kai: <summary>`.

    `weight`: the canary's share for action `canary` (0 ends it; `version` None then ends
    whichever version is the canary), see lifecycle.transition.

    Holds the repo lock from reading kai.yaml to the commit (renderer.lock); `notify` hears
    that it waits, and what it recovered from a killed command. Refuses when the files it
    touches have uncommitted changes. Everything is staged first and made visible together
    (renderer.changeset): a failed render, a full disk or a refusing git hook changes
    nothing. A request that changes nothing raises lifecycle.NothingToDo.

    With `branch`, the commit is made on a new branch in a temporary worktree: the
    checkout at `root` (its branch, index and files) stays as it is.

    In a git repo only the versions whose state changes are loaded and re-rendered;
    every other version's files are kept from the committed tree on disk
    (renderer.incremental). Without git, or when that tree does not have the shape
    kai.yaml gives, everything is loaded and rendered.
    """
    if branch and not commit:
        raise RepoError("--branch makes a commit on the new branch; drop --no-commit")
    command = " ".join(["kai", action, *([version] if version else []),
                        *([] if weight is None else [f"--weight {weight}"])])
    with repo_lock(root, command, on_wait=notify):
        in_git = _recover(root, notify)
        if not branch:
            return _state_change(root, version, action, commit, command, in_git, weight)
        if not in_git:
            raise RepoError(f"{root} is not a git repository; --branch needs one")
        _refuse_dirty(root, [PROJECT_FILE, VERSIONS_DIR, load_project_name(root)])
        with branch_worktree(root, branch) as work:
            result = _state_change(work, version, action, True, command, True, weight)
        return replace(result, branch=branch)


def _state_change(root: Path, version: str | None, action: str, commit: bool, command: str,
                  in_git: bool, weight: int | None = None) -> Result:
    from .incremental import render_change
    from .projectfile import edit_project, read_project_text
    from .rename import stale_paths

    project, text = read_project_text(root)
    # Fail fast on an illegal transition, before loading (and validating) any version.
    first = transition(project, version, action, weight=weight)
    changed = {c.version for c in first.changes}
    partial = in_git
    repo = load(root, only=changed if partial else None, project=project)
    version_obj = repo.versions.get(first.version)
    t = transition(repo.project, first.version, action,
                   config=version_obj.config if version_obj else None, weight=weight)
    new_project = t.apply(repo.project)
    stale = stale_paths(root, new_project.name)  # `project:` renamed since the last render
    touched = [PROJECT_FILE, repo.rendered_rel, *stale]
    running = {c.version for c in t.changes} | {
        n for n, s in t.states.items() if s != STOPPED
    }
    sources = [f"{VERSIONS_DIR}/{n}" for n in sorted(running)]
    _prepare_git(root, [*touched, *sources], commit, in_git=partial)
    # raises before anything is written
    change = render_change(repo.project, new_project, repo.versions, changed,
                           repo.rendered_dir) if partial else None
    kept: tuple[str, ...] = ()
    if change is None:
        if partial:
            repo = load(root, project=project)
        tree = render(repo, new_project)
    else:
        tree, kept = change.tree, change.kept
    message = f"kai: {t.summary}"
    with Changeset(root, command, in_git=partial, journal=True) as changes:
        changes.put_file(PROJECT_FILE, edit_project(text, new_project))
        changes.put_tree(repo.rendered_rel, tree, reuse=kept)
        for rel in stale:
            changes.remove_tree(rel)
        sha = _apply(changes, message if commit else None)
    return Result(t.summary, message, tuple(touched), sha,
                  git.current_branch(root) if commit else None, t)


def _recover(root: Path, notify: Notify) -> bool:
    """Before a writing command reads anything: undo what killed commands left behind.

    Returns whether `root` is in a git work tree (asked once here, for the caller too).
    """
    in_git = git.is_repo(root)
    recover_interrupted(root, _watched(root), notify, in_git)
    if in_git:
        recover_worktrees(root, notify)
    return in_git


def _watched(root: Path) -> list[str]:
    """The paths whose crash leftovers a writing command cleans up: kai.yaml, versions/ and
    every tree under rendered/. Found on disk, not from kai.yaml: it is read (and validated)
    once, after the recovery, which may restore it."""
    trees = tree_names(root / RENDERED_DIR)
    return [PROJECT_FILE, VERSIONS_DIR, *(f"{RENDERED_DIR}/{name}" for name in trees)]


def load_project_name(root: Path) -> str:
    """rendered/<project>, as kai.yaml names it now."""
    from .projectfile import load_project

    return load_project(root).rendered_rel


def _apply(changes: Changeset, message: str | None) -> str | None:
    """Make the staged changes visible and commit them; explain a refusing hook."""
    try:
        return changes.apply(message)
    except git.HookRefused as exc:
        raise git.HookRefused(
            f"{exc}; nothing was changed (the work tree is as it was). Fix what the hook "
            "reports, or run the command with --no-commit and commit by hand",
            exc.output,
        ) from exc
    except git.GitError as exc:
        raise RepoError(f"{exc}; nothing was changed") from exc


def _refuse_dirty(root: Path, paths: list[str]) -> None:
    dirty = git.dirty_paths(root, paths)
    if dirty:
        shown = ", ".join(dirty[:10]) + (f" and {len(dirty) - 10} more" if len(dirty) > 10 else "")
        raise RepoError(
            f"uncommitted changes in {shown}; commit or stash them first "
            "(kai would overwrite them)"
        )


def _prepare_git(root: Path, paths: list[str], commit: bool,
                 in_git: bool | None = None) -> None:
    """Refuse to overwrite uncommitted work (and to commit outside git).

    `in_git`: whether `root` is in a git work tree, when the caller already asked.
    """
    if not (git.is_repo(root) if in_git is None else in_git):
        if commit:
            raise RepoError(
                f"{root} is not a git repository; run `git init` there, or pass --no-commit"
            )
        return
    _refuse_dirty(root, paths)


def _commit(root: Path, message: str, paths: Iterable[str]) -> str:
    """Commit files already written (kai init); on failure, say how to finish by hand."""
    paths = list(paths)
    try:
        return git.commit(root, message, paths)
    except git.GitError as exc:
        finish = (f"the files were written but not committed: fix that, then "
                  f"`git add {' '.join(paths)}` and `git commit -m {message!r}`")
        if isinstance(exc, git.HookRefused):
            raise git.HookRefused(f"{exc}; {finish}", exc.output) from exc
        raise RepoError(f"{exc}; {finish}") from exc


# --- kai init ---------------------------------------------------------------------------


def init_repo(directory: Path, project: str, namespace: str, repo_url: str | None = None,
              branch: str = "main", commit: bool = True, ci: bool = True,
              secret_ref: str = "", notify: Notify = _quiet,
              registry: str = DEFAULT_REGISTRY) -> Result:
    """Scaffold a GitOps repo in `directory` (created when missing) and commit it.

    `ci`: also write the pull-request check's CI workflow (see `_ci_workflow`).
    `secret_ref`: the Secret with Flux's git credentials (deploy/flux's `spec.secretRef`).
    `registry`: where the runner images live (the image map, renderer.images).
    Into an existing git repo, it holds that repo's lock while it writes and commits.
    """
    root = directory.resolve()
    existing = next((p for p in (root, *root.parents) if p.is_dir()), root)
    args = (root, directory, project, namespace, repo_url, branch, commit, ci, secret_ref,
            registry)
    if git.is_repo(existing):
        with repo_lock(existing, f"kai init {directory}", on_wait=notify):
            return _init(*args)
    return _init(*args)


def _init(root: Path, directory: Path, project: str, namespace: str, repo_url: str | None,
          branch: str, commit: bool, ci: bool, secret_ref: str, registry: str) -> Result:
    from .projectfile import dump_project, load_project
    from .render import render_deploy, render_project

    kai_yaml = root / PROJECT_FILE
    if kai_yaml.is_file() and kai_yaml.read_text(encoding="utf-8", errors="replace").strip():
        raise RepoError(f"{directory}/{PROJECT_FILE} already exists; refusing to overwrite it")
    _check_label("--project", project)
    _check_label("--namespace", namespace)
    problem = registry_problem(registry)
    if problem:
        raise RepoError(f"--registry {registry!r}: {problem}")
    model = Project(
        name=project,
        namespace=namespace,
        kubernetes_version=DEFAULT_KUBERNETES_VERSION,
        images=default_images(registry),
        build=Build(registry),
        root=root,
    )
    text = dump_project(model, {"images": map_comment(registry), "build": BUILD_COMMENT})
    root.mkdir(parents=True, exist_ok=True)
    for sub in (root / DEPLOY_DIR, model.rendered_dir):
        if sub.is_dir() and any(sub.iterdir()):
            raise RepoError(f"{sub} already exists and is not empty; refusing to overwrite it")
    workflow = _ci_workflow(root, model, branch) if ci else None
    if commit and not git.is_repo(root):
        git.init(root, branch)
    in_git = git.is_repo(root)
    url = repo_url or (git.remote_url(root) if in_git else None)
    # Argo CD and Flux take paths from the top of the git repository.
    repo_path = root.relative_to(git.toplevel(root).resolve()).as_posix() if in_git else "."
    deploy = render_deploy(model, url or PLACEHOLDER_URL, branch,
                           "" if repo_path == "." else repo_path, secret_ref)
    if not url:
        deploy = {p: PLACEHOLDER_NOTE.encode() + b for p, b in deploy.items()}
    rendered = render_project(model, {})
    write_file(kai_yaml, text)
    try:
        load_project(root)  # the written file must read back
    except InputError:
        kai_yaml.unlink()
        raise
    (root / VERSIONS_DIR).mkdir(exist_ok=True)
    (root / VERSIONS_DIR / GITKEEP).touch()
    write_tree(root / DEPLOY_DIR, deploy)
    write_tree(model.rendered_dir, rendered)
    gitignore = root / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text(GITIGNORE, encoding="utf-8")
    if workflow:
        (root / workflow[0]).parent.mkdir(parents=True, exist_ok=True)
        write_file(root / workflow[0], workflow[1])
    paths = (PROJECT_FILE, f"{VERSIONS_DIR}/{GITKEEP}", DEPLOY_DIR,
             model.rendered_rel, ".gitignore", *(workflow[:1] if workflow else ()))
    message = f"kai: init {project} (namespace {namespace})"
    sha = _commit(root, message, paths) if commit else None
    return Result(f"init {project}", message, paths, sha,
                  git.current_branch(root) if commit else None)


def _ci_workflow(root: Path, project: Project, branch: str) -> tuple[str, bytes]:
    """The CI workflow `kai init` writes: its path relative to `root`, and its bytes.

    It lives at the top of the git repository (`root` when not in one yet), in
    `.github/workflows/kai.yaml` when `root` is that top, else in
    `.github/workflows/kai-<project>.yaml`, running in `root`'s folder. Refuses to
    overwrite an existing file.
    """
    from .render import render_ci_workflow

    top = git.toplevel(root).resolve() if git.is_repo(root) else root
    repo_path = root.relative_to(top).as_posix()
    name = "kai.yaml" if repo_path == "." else f"kai-{project.name}.yaml"
    path = top / ".github" / "workflows" / name
    if path.exists() or path.is_symlink():
        raise RepoError(
            f"{path} already exists; refusing to overwrite it (pass --no-ci to skip the CI "
            "workflow)"
        )
    data = render_ci_workflow(project, branch, "" if repo_path == "." else repo_path)
    return os.path.relpath(path, root), data


def _check_label(option: str, value: str) -> None:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", value) or len(value) > 63:
        raise RepoError(
            f"{option} {value!r} is not a valid Kubernetes name: use at most 63 lower-case "
            "letters, digits and '-', starting and ending with a letter or digit"
        )


# --- kai add ----------------------------------------------------------------------------


def add_version(root: Path, source: Path, force: bool = False, commit: bool = True,
                notify: Notify = _quiet) -> Result:
    """Validate a version (directory, krt.yml or .krt file), copy it to versions/<name>/,
    register it stopped in kai.yaml (an existing entry keeps its state) and commit.

    Holds the repo lock and writes all or nothing, as the state commands do. Adding a
    version that is already there with the same files raises lifecycle.NothingToDo.
    The version's warnings (renderer.validate: KRE 1.x leniency) go to `notify`.
    """
    from .build import image_need
    from .projectfile import edit_project, read_project_text
    from .rename import stale_paths
    from .validate import load_version

    source = source.resolve()
    if not source.exists():
        raise RepoError(f"{source}: no such file or directory")
    with repo_lock(root, f"kai add {source.name}", on_wait=notify):
        in_git = _recover(root, notify)
        scratch_dir = root / VERSIONS_DIR if (root / VERSIONS_DIR).is_dir() else root
        with tempfile.TemporaryDirectory(prefix=f"{ADD_SCRATCH}{os.getpid()}-",
                                         dir=scratch_dir) as tmp:
            staging = Path(tmp) / "version"
            version_dir = _unpack_source(source, Path(tmp) / source.name)
            version = load_version(version_dir, display_root=version_dir.parent)
            for warning in version.warnings:  # once: the copy below is the same manifest
                notify(str(warning))
            name = version.name
            rel = f"{VERSIONS_DIR}/{name}"
            target = root / rel
            in_place = version_dir.resolve() == target.resolve()
            project, text = read_project_text(root)
            registered = name in project.versions
            if not in_place:
                copy_version(version_dir, staging)
            if registered and (in_place or _same_files(staging, target)):
                raise NothingToDo(f"{rel} is already in kai.yaml with these files; "
                                  "nothing to do")
            if target.exists() and not in_place and not force:
                raise RepoError(
                    f"{rel} already exists with other files; pass --force to replace it, or "
                    "bump `version:` in krt.yml to add a new version"
                )
            repo = load(root, skip=[name], project=project)
            stale = stale_paths(root, project.name)
            touched = [PROJECT_FILE, rel, repo.rendered_rel, *stale]
            _prepare_git(root, touched if not in_place else [PROJECT_FILE, repo.rendered_rel,
                                                             *stale], commit, in_git=in_git)
            if not in_place:
                version = load_version(staging, display_root=Path(tmp))
            state = repo.project.versions.get(name, VersionState(STOPPED))
            new_project = replace(repo.project,
                                  versions={**repo.project.versions, name: state})
            image_need(new_project, version)  # refused even when stopped: a start cannot fail
            tree = render(repo, new_project, {**repo.versions, name: version})
            summary = f"add {name}" + (f" (replaced, {state.state})" if force and not in_place
                                       and registered else "")
            message = f"kai: {summary}"
            with Changeset(root, f"kai add {source.name}", in_git=in_git,
                           journal=True) as changes:
                if not in_place:
                    changes.put_dir(rel, staging)
                changes.put_tree(repo.rendered_rel, tree)
                for stale_rel in stale:
                    changes.remove_tree(stale_rel)
                changes.put_file(PROJECT_FILE, edit_project(text, new_project))
                sha = _apply(changes, message if commit else None)
    return Result(summary, message, tuple(touched), sha,
                  git.current_branch(root) if commit else None)


def _same_files(a: Path, b: Path) -> bool:
    """Do the version folders `a` and `b` hold the same files, byte for byte?"""
    if not b.is_dir():
        return False
    files_a, files_b = dict(copied_files(a)), dict(copied_files(b))
    if files_a.keys() != files_b.keys():
        return False
    return all(files_a[rel].read_bytes() == files_b[rel].read_bytes() for rel in files_a)


def _unpack_source(source: Path, scratch: Path) -> Path:
    """The version directory for `source`: the directory itself, a krt.yml's folder, or a
    .krt archive unpacked (safely) into `scratch`."""
    if source.is_dir():
        return source
    if source.name.endswith((".krt", ".tar.gz", ".tgz")):
        from .krtfile import extract_krt

        scratch.mkdir(parents=True)
        extract_krt(source, scratch)
        return scratch
    if source.name in MANIFEST_NAMES:
        return source.parent
    raise RepoError(
        f"{source}: expected a version directory, its krt.yml, or a .krt file"
    )


def copy_version(src: Path, dst: Path) -> list[str]:
    """Copy the files `kai add` copies (versionfiles.copied_files) to `dst`; returns their
    relative paths."""
    copied: list[str] = []
    for rel, path in copied_files(src):
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out)
        copied.append(rel)
    dst.mkdir(parents=True, exist_ok=True)
    return copied
