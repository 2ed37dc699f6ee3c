"""`kai start|stop|publish|unpublish VERSION`: change a version's desired state."""

from __future__ import annotations

from pathlib import Path

import click

from renderer.lifecycle import PUBLISH, START, STOP, UNPUBLISH
from renderer.repo import Result, apply_state_change

from .repoopts import guarded, notify, repo_option, root_of


def _command(action: str, doc: str) -> click.Command:
    @click.command(name=action, help=doc)
    @click.argument("version")
    @click.option(
        "--no-commit", is_flag=True, help="Write kai.yaml and rendered/ but do not commit."
    )
    @click.option(
        "--branch", default=None, metavar="NAME",
        help="Commit on a new branch NAME (for a pull request), made from HEAD in a temporary "
        "worktree: your checkout, its branch and files stay as they are.",
    )
    @repo_option
    def command(version: str, no_commit: bool, branch: str | None, repo: Path | None) -> None:
        with guarded():
            root = root_of(repo)
            result = apply_state_change(root, version, action, commit=not no_commit,
                                        branch=branch, notify=notify)
        report(result, new_branch=branch is not None)

    return command


def report(result: Result, new_branch: bool = False) -> None:
    """What changed, and where the commit is."""
    if result.transition:
        for change in result.transition.changes:
            click.echo(f"{change.version}: {change.before} → {change.after}")
    if result.sha:
        click.echo(f"committed {result.sha[:12]} on {result.branch or 'detached HEAD'}: "
                   f"{result.message}")
        if new_branch and result.branch:
            click.echo("your checkout is unchanged; push the branch and open a pull request: "
                       f"git push -u origin {result.branch}")
    else:
        click.echo(f"not committed (--no-commit); changed: {', '.join(result.paths)}")


start = _command(START, """Start VERSION (stopped → started).

Writes kai.yaml, re-renders rendered/PROJECT and commits `kai: start VERSION`.
Refused while the version declares config that kai.yaml gives no source.""")
stop = _command(STOP, """Stop VERSION (started → stopped); its resources are pruned.

A published version must be unpublished first. Writes kai.yaml, re-renders and commits.""")
publish = _command(PUBLISH, """Publish VERSION (started → published).

Its Service becomes `active-entrypoint`, with the Ingress; the version published
before goes back to started. Writes kai.yaml, re-renders and commits.""")
unpublish = _command(UNPUBLISH, """Unpublish VERSION (published → started).

Writes kai.yaml, re-renders and commits `kai: unpublish VERSION`.""")
