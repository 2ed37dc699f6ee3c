"""`kai render [--check]` and `kai diff`: rebuild rendered/<project>, or show what would change."""

from __future__ import annotations

from pathlib import Path

import click

from renderer.atomic import read_tree
from renderer.diff import FileChange, diff_stat, name_status, patch, tree_changes
from renderer.lock import repo_lock
from renderer.rename import deploy_references, stale_trees
from renderer.repo import Repo, load, render_repo
from renderer.repo import render as render_tree

from .repoopts import fail, guarded, notify, repo_option, root_of


def warn_deploy(loaded: Repo) -> None:
    """One line on stderr for each deploy/ object that syncs another project's tree."""
    for problem in deploy_references(loaded.root, loaded.project):
        click.echo(f"warning: {problem}", err=True)


def _rel(loaded: Repo, tree: Path) -> str:
    return tree.relative_to(loaded.root).as_posix()


@click.command()
@click.option(
    "--check", is_flag=True,
    help="Change nothing; exit 1 when rendered/PROJECT is stale or invalid, or a tree of "
         "an earlier project name is left under rendered/ (for CI).",
)
@repo_option
def render(check: bool, repo: Path | None) -> None:
    """Rebuild rendered/PROJECT from kai.yaml and versions/.

    The output is validated (kubernetes-validate, strict) and swapped in atomically.
    With --check nothing is written: the command lists the files that differ
    (added / removed / changed) and exits 1 when there are any — the check a pull
    request runs.

    After `project:` in kai.yaml is renamed, the tree of the old name
    (rendered/OLD, when kai wrote it) is removed once the new one is written,
    and a warning names each deploy/ file that still syncs rendered/OLD.
    """
    with guarded():
        found = render_repo(root_of(repo), check=check, notify=notify)
    loaded, tree, diffs = found.repo, found.tree, found.diffs
    stale = [loaded.root / rel for rel in found.stale]
    where = loaded.rendered_rel
    warn_deploy(loaded)
    if check:
        for rel, status in diffs:
            click.echo(f"{status}: {where}/{rel}")
        for old in stale:
            click.echo(f"stale: {_rel(loaded, old)} (left from an earlier project name; "
                       "`kai render` removes it)")
        if diffs:
            raise fail(
                f"error: {where} is out of date ({len(diffs)} file(s) differ); "
                "run `kai render` and commit the result"
            )
        if stale:
            raise fail(
                f"error: {len(stale)} stale tree(s) under rendered/; run `kai render` and "
                "commit the result"
            )
        click.echo(f"{where} is up to date ({len(tree)} files)")
        return
    for old in stale:
        click.echo(f"removed {_rel(loaded, old)} (project is now {loaded.project.name})")
    if not diffs:
        click.echo(f"{where} is up to date ({len(tree)} files)")
        return
    counts = {s: sum(1 for _, st in diffs if st == s) for s in ("added", "changed", "removed")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    click.echo(f"rendered {where}: {len(tree)} files ({summary})")


def render_changes(loaded: Repo, tree: dict[str, bytes]) -> list[FileChange]:
    """What `kai render` would change: rendered/PROJECT, and the stale trees it removes."""
    where = loaded.rendered_rel
    stale = stale_trees(loaded.root, loaded.project.name)
    if len(stale) == 1 and not loaded.rendered_dir.exists():  # `project:` was renamed
        return tree_changes(read_tree(stale[0]), tree, where, _rel(loaded, stale[0]))
    changes = tree_changes(read_tree(loaded.rendered_dir), tree, where)
    for old in stale:
        changes += tree_changes(read_tree(old), {}, _rel(loaded, old))
    return sorted(changes, key=lambda c: c.shown_path)


@click.command(short_help="Show what `kai render` would change, as a diff.")
@click.option("--stat", "stat", is_flag=True,
              help="One line per file with its +/- line counts, and a summary (git diff --stat).")
@click.option("--name-status", "names", is_flag=True,
              help="One line per file: M, A, D or R<similarity> and the path(s).")
@repo_option
def diff(stat: bool, names: bool, repo: Path | None) -> None:
    """Show the unified diff of what `kai render` would change (it writes nothing).

    A version's ConfigMap carries a hash of its files in its name, so a code
    change renames it: the diff shows it as a rename (`rename from` / `rename
    to`) with only the changed lines. The diff has git's headers; `git apply`
    takes it.

    \b
    Exit codes (as `git diff --exit-code`):
      0  a render changes nothing
      1  a render changes something (the diff is on stdout), or the repo
         cannot be rendered (the problems are on stderr, nothing on stdout)
    """
    if stat and names:
        raise click.UsageError("--stat and --name-status do not go together; pick one")
    with guarded():
        root = root_of(repo)
        with repo_lock(root, "kai diff", shared=True, on_wait=notify):
            loaded = load(root)
            changes = render_changes(loaded, render_tree(loaded))
    if not changes:
        click.echo(f"{loaded.rendered_rel} is up to date; a render changes nothing", err=True)
        return
    text = diff_stat(changes) if stat else name_status(changes) if names else patch(changes)
    click.echo(text, nl=False)
    raise click.exceptions.Exit(1)
