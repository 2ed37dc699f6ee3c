"""`kai render [--check]` and `kai diff`: rebuild rendered/<project>, or show what would change."""

from __future__ import annotations

from pathlib import Path

import click

from renderer.output import compare_tree, unified_diff, write_tree
from renderer.repo import load
from renderer.repo import render as render_tree

from .repoopts import fail, guarded, repo_option, root_of


@click.command()
@click.option(
    "--check", is_flag=True,
    help="Change nothing; exit 1 when rendered/PROJECT is stale or invalid (for CI).",
)
@repo_option
def render(check: bool, repo: Path | None) -> None:
    """Rebuild rendered/PROJECT from kai.yaml and versions/.

    The output is validated (kubernetes-validate, strict) and swapped in atomically.
    With --check nothing is written: the command lists the files that differ
    (added / removed / changed) and exits 1 when there are any — the check a pull
    request runs.
    """
    with guarded():
        loaded = load(root_of(repo))
        tree = render_tree(loaded)
        diffs = compare_tree(loaded.rendered_dir, tree)
        if not check and diffs:
            write_tree(loaded.rendered_dir, tree)
    where = loaded.rendered_rel
    if check:
        if diffs:
            for rel, status in diffs:
                click.echo(f"{status}: {where}/{rel}")
            raise fail(
                f"error: {where} is out of date ({len(diffs)} file(s) differ); "
                "run `kai render` and commit the result"
            )
        click.echo(f"{where} is up to date ({len(tree)} files)")
        return
    if not diffs:
        click.echo(f"{where} is up to date ({len(tree)} files)")
        return
    counts = {s: sum(1 for _, st in diffs if st == s) for s in ("added", "changed", "removed")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    click.echo(f"rendered {where}: {len(tree)} files ({summary})")


@click.command(short_help="Show what `kai render` would change, as a diff.")
@repo_option
def diff(repo: Path | None) -> None:
    """Show the unified diff of what `kai render` would change in rendered/PROJECT.

    Writes nothing and exits 0 (exit 1 only when the repo cannot be rendered).
    """
    with guarded():
        loaded = load(root_of(repo))
        tree = render_tree(loaded)
        text = unified_diff(loaded.rendered_dir, tree, label=loaded.rendered_rel)
    if text:
        click.echo(text, nl=False)
    else:
        click.echo(f"{loaded.rendered_rel} is up to date; a render changes nothing", err=True)
