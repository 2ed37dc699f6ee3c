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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from . import git
from .krt import MANIFEST_NAMES, Version
from .lifecycle import Transition, transition
from .output import write_file, write_tree
from .problems import InputError, Problem
from .project import (
    DEFAULT_KUBERNETES_VERSION,
    DEPLOY_DIR,
    PROJECT_FILE,
    STOPPED,
    VERSIONS_DIR,
    Project,
    VersionState,
    default_images,
)

Tree = dict[str, bytes]
GITKEEP = ".gitkeep"
PLACEHOLDER_URL = "https://git.example.com/your-org/your-gitops-repo.git"
PLACEHOLDER_NOTE = (
    "# kai init found no git remote (and got no --repo-url): replace the repository\n"
    "# URL below with your GitOps repo's URL.\n"
)
GITIGNORE = "__pycache__/\n*.py[cod]\n.venv/\n.kai/\n.DS_Store\n"
SKIP_NAMES = frozenset({"__pycache__", ".git", ".DS_Store"})


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
    from .validate import load_version

    if project is None:
        project = load_project(root)
    problems: list[Problem] = []
    versions: dict[str, Version] = {}
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
            version = load_version(folder, display_root=root)
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
    if problems:
        raise InputError(problems)
    return Repo(root=root, project=replace(project, root=root), versions=versions)


def render(repo: Repo, project: Project | None = None,
           versions: Mapping[str, Version] | None = None) -> Tree:
    """The whole rendered/<project>/ tree (validated) for `project` (default: the repo's)."""
    from .render import render_project

    return render_project(project or repo.project,
                          dict(versions if versions is not None else repo.versions))


# --- changing state --------------------------------------------------------------------


def apply_state_change(root: Path, version: str, action: str, commit: bool = True,
                       branch: str | None = None) -> Result:
    """Run one lifecycle command: kai.yaml, re-render, one commit `kai: <summary>`.

    Refuses when the files it touches have uncommitted changes. kai.yaml is written
    only after the new tree rendered, so a failed render changes nothing.

    In a git repo only the versions whose state changes are loaded and re-rendered;
    every other version's files are kept from the committed tree on disk
    (renderer.incremental). Without git, or when that tree does not have the shape
    kai.yaml gives, everything is loaded and rendered.
    """
    from .incremental import render_change
    from .projectfile import edit_project, load_project

    if branch and not commit:
        raise RepoError("--branch makes a commit on the new branch; drop --no-commit")
    project = load_project(root)
    # Fail fast on an illegal transition, before loading (and validating) any version.
    changed = {c.version for c in transition(project, version, action).changes}
    partial = git.is_repo(root)
    repo = load(root, only=changed if partial else None, project=project)
    version_obj = repo.versions.get(version)
    t = transition(repo.project, version, action,
                   config=version_obj.config if version_obj else None)
    new_project = t.apply(repo.project)
    touched = [PROJECT_FILE, repo.rendered_rel]
    running = {c.version for c in t.changes} | {
        n for n, s in t.states.items() if s != STOPPED
    }
    sources = [f"{VERSIONS_DIR}/{n}" for n in sorted(running)]
    _prepare_git(root, [*touched, *sources], commit, branch, in_git=partial)
    # raises before anything is written
    change = render_change(repo.project, new_project, repo.versions, changed,
                           repo.rendered_dir) if partial else None
    if change is None:
        if partial:
            repo = load(root, project=project)
        tree, kept = render(repo, new_project), ()
    else:
        tree, kept = change.tree, change.kept
    text = edit_project((root / PROJECT_FILE).read_bytes().decode("utf-8"), new_project)
    if branch:
        git.create_branch(root, branch)
    write_tree(repo.rendered_dir, tree, reuse=kept)
    write_file(root / PROJECT_FILE, text)
    message = f"kai: {t.summary}"
    sha = _commit(root, message, touched) if commit else None
    return Result(t.summary, message, tuple(touched), sha,
                  git.current_branch(root) if commit else None, t)


def _prepare_git(root: Path, paths: list[str], commit: bool, branch: str | None,
                 in_git: bool | None = None) -> None:
    """Refuse to overwrite uncommitted work; check the branch can be created.

    `in_git`: whether `root` is in a git work tree, when the caller already asked.
    """
    if not (git.is_repo(root) if in_git is None else in_git):
        if commit:
            raise RepoError(
                f"{root} is not a git repository; run `git init` there, or pass --no-commit"
            )
        return
    dirty = git.dirty_paths(root, paths)
    if dirty:
        shown = ", ".join(dirty[:10]) + (f" and {len(dirty) - 10} more" if len(dirty) > 10 else "")
        raise RepoError(
            f"uncommitted changes in {shown}; commit or stash them first "
            "(kai would overwrite them)"
        )
    if branch:
        git.check_branch_name(root, branch)
        if git.branch_exists(root, branch):
            raise RepoError(
                f"branch {branch!r} already exists; choose another --branch name"
            )


def _commit(root: Path, message: str, paths: Iterable[str]) -> str:
    paths = list(paths)
    try:
        return git.commit(root, message, paths)
    except git.GitError as exc:
        raise RepoError(
            f"{exc}; the files were written but not committed: fix that, then "
            f"`git add {' '.join(paths)}` and `git commit -m {message!r}`"
        ) from exc


# --- kai init ---------------------------------------------------------------------------


def init_repo(directory: Path, project: str, namespace: str, repo_url: str | None = None,
              branch: str = "main", commit: bool = True) -> Result:
    """Scaffold a GitOps repo in `directory` (created when missing) and commit it."""
    from .projectfile import dump_project, load_project
    from .render import render_deploy, render_project

    root = directory.resolve()
    kai_yaml = root / PROJECT_FILE
    if kai_yaml.is_file() and kai_yaml.read_text(encoding="utf-8", errors="replace").strip():
        raise RepoError(f"{directory}/{PROJECT_FILE} already exists; refusing to overwrite it")
    _check_label("--project", project)
    _check_label("--namespace", namespace)
    model = Project(
        name=project,
        namespace=namespace,
        kubernetes_version=DEFAULT_KUBERNETES_VERSION,
        images=default_images(),
        root=root,
    )
    text = dump_project(model)
    root.mkdir(parents=True, exist_ok=True)
    for sub in (root / DEPLOY_DIR, model.rendered_dir):
        if sub.is_dir() and any(sub.iterdir()):
            raise RepoError(f"{sub} already exists and is not empty; refusing to overwrite it")
    if commit and not git.is_repo(root):
        git.init(root, branch)
    in_git = git.is_repo(root)
    url = repo_url or (git.remote_url(root) if in_git else None)
    # Argo CD and Flux take paths from the top of the git repository.
    repo_path = root.relative_to(git.toplevel(root).resolve()).as_posix() if in_git else "."
    deploy = render_deploy(model, url or PLACEHOLDER_URL, branch,
                           "" if repo_path == "." else repo_path)
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
    paths = (PROJECT_FILE, f"{VERSIONS_DIR}/{GITKEEP}", DEPLOY_DIR,
             model.rendered_rel, ".gitignore")
    message = f"kai: init {project} (namespace {namespace})"
    sha = _commit(root, message, paths) if commit else None
    return Result(f"init {project}", message, paths, sha,
                  git.current_branch(root) if commit else None)


def _check_label(option: str, value: str) -> None:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", value) or len(value) > 63:
        raise RepoError(
            f"{option} {value!r} is not a valid Kubernetes name: use at most 63 lower-case "
            "letters, digits and '-', starting and ending with a letter or digit"
        )


# --- kai add ----------------------------------------------------------------------------


def add_version(root: Path, source: Path, force: bool = False, commit: bool = True) -> Result:
    """Validate a version (directory, krt.yml or .krt file), copy it to versions/<name>/,
    register it stopped in kai.yaml (an existing entry keeps its state) and commit."""
    from .projectfile import edit_project

    source = source.resolve()
    if not source.exists():
        raise RepoError(f"{source}: no such file or directory")
    with tempfile.TemporaryDirectory(prefix=".kai-add-", dir=root / VERSIONS_DIR
                                     if (root / VERSIONS_DIR).is_dir() else root) as tmp:
        staging = Path(tmp) / "version"
        version_dir = _unpack_source(source, Path(tmp) / source.name)
        from .validate import load_version

        version = load_version(version_dir, display_root=version_dir.parent)
        name = version.name
        target = root / VERSIONS_DIR / name
        in_place = version_dir.resolve() == target.resolve()
        if target.exists() and not in_place and not force:
            raise RepoError(
                f"{VERSIONS_DIR}/{name} already exists; pass --force to replace it, or bump "
                "`version:` in krt.yml to add a new version"
            )
        repo = load(root, skip=[name])
        rel = f"{VERSIONS_DIR}/{name}"
        touched = [PROJECT_FILE, rel, repo.rendered_rel]
        _prepare_git(root, touched if not in_place else [PROJECT_FILE, repo.rendered_rel],
                     commit, None)
        if not in_place:
            copy_version(version_dir, staging)
            version = load_version(staging, display_root=Path(tmp))
        state = repo.project.versions.get(name, VersionState(STOPPED))
        new_project = replace(repo.project, versions={**repo.project.versions, name: state})
        tree = render(repo, new_project, {**repo.versions, name: version})
        text = edit_project((root / PROJECT_FILE).read_bytes().decode("utf-8"), new_project)
        if not in_place:
            _swap_dir(staging, target)
    write_tree(repo.rendered_dir, tree)
    write_file(root / PROJECT_FILE, text)
    summary = f"add {name}" + (f" (replaced, {state.state})" if force and not in_place
                               and name in repo.project.versions else "")
    message = f"kai: {summary}"
    sha = _commit(root, message, touched) if commit else None
    return Result(summary, message, tuple(touched), sha,
                  git.current_branch(root) if commit else None)


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
    """Copy a version's files: regular files only, no symlinks, no __pycache__ / .git.

    A symlink to a file inside the version is copied as a regular file; any other
    symlink is left out. Returns the copied relative paths.
    """
    src_real = src.resolve()
    copied: list[str] = []
    for folder, dirs, files in os.walk(src):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if d not in SKIP_NAMES and not (here / d).is_symlink())
        for fname in sorted(files):
            path = here / fname
            if fname in SKIP_NAMES or fname.endswith((".pyc", ".pyo")):
                continue
            if path.is_symlink():
                real = path.resolve()
                if not real.is_file() or not real.is_relative_to(src_real):
                    continue
            elif not path.is_file():
                continue  # sockets, fifos
            rel = path.relative_to(src)
            out = dst / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)
            copied.append(rel.as_posix())
    dst.mkdir(parents=True, exist_ok=True)
    return copied


def _swap_dir(new: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    old: Path | None = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
