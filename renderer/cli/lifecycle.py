"""`kai start|stop|publish|unpublish VERSION`: change a version's desired state;
`kai canary VERSION --weight N`: give a started version a share of the traffic."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from renderer.lifecycle import CANARY, PUBLISH, START, STOP, UNPUBLISH
from renderer.project import CANARY_MAX_WEIGHT
from renderer.repo import Result, apply_state_change

from .repoopts import guarded, notify, repo_option, root_of

F = TypeVar("F", bound=Callable[..., Any])


def _commit_options(func: F) -> F:
    """--no-commit, --branch and --repo (shown in that order): how every state command
    commits."""
    func = repo_option(func)
    func = click.option(
        "--branch", default=None, metavar="NAME",
        help="Commit on a new branch NAME (for a pull request), made from HEAD in a temporary "
        "worktree: your checkout, its branch and files stay as they are.",
    )(func)
    return click.option(
        "--no-commit", is_flag=True, help="Write kai.yaml and rendered/ but do not commit."
    )(func)


def _command(action: str, doc: str) -> click.Command:
    @click.command(name=action, help=doc)
    @click.argument("version")
    @_commit_options
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
            click.echo(change.describe())
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

A published version must be unpublished first; stopping the canary ends the canary.
Writes kai.yaml, re-renders and commits.""")
publish = _command(PUBLISH, """Publish VERSION (started → published).

Its Service becomes `active-entrypoint`, with the Ingress (or the GRPCRoute); the
version published before goes back to started. Publishing the canary promotes it: the
canary ends. Writes kai.yaml, re-renders and commits.""")
unpublish = _command(UNPUBLISH, """Unpublish VERSION (published → started).

A canary has no traffic left to share, so it ends too. Writes kai.yaml, re-renders and
commits `kai: unpublish VERSION`.""")


@click.command(name=CANARY)
@click.argument("version", required=False)
@click.option(
    "--weight", type=click.IntRange(0, CANARY_MAX_WEIGHT), default=None, metavar="N",
    help=f"The canary's share of the outside traffic in percent, 1 to {CANARY_MAX_WEIGHT}; "
    "the published version keeps the rest. 0 ends the canary, as --clear does.",
)
@click.option("--clear", is_flag=True,
              help="End the canary (VERSION, or whichever version is the canary when "
              "VERSION is left out): the published version takes all the traffic again.")
@_commit_options
def canary(version: str | None, weight: int | None, clear: bool, no_commit: bool,
           branch: str | None, repo: Path | None) -> None:
    """Send N% of the outside traffic to VERSION, a started version, beside the published one.

    Its Service gets the share through a second Ingress with ingress-nginx's canary
    annotations (or the GRPCRoute's weights, with kai.yaml `gateway:`). There is one
    canary at a time; `kai publish VERSION` promotes it, `--weight 0` or `--clear` ends
    it, and `kai stop VERSION` or unpublishing the published version ends it too.
    Writes kai.yaml (`versions.VERSION.canary: {weight: N}`), re-renders and commits.
    """
    with guarded():
        if clear and weight is not None:
            raise click.UsageError("give --weight N or --clear, not both")
        if not clear and weight is None:
            raise click.UsageError("give --weight N (0 ends the canary) or --clear")
        if version is None and not clear and weight != 0:
            raise click.UsageError("name the VERSION that gets the share of the traffic")
        root = root_of(repo)
        result = apply_state_change(root, version, CANARY, commit=not no_commit,
                                    branch=branch, notify=notify,
                                    weight=0 if clear else weight)
    report(result, new_branch=branch is not None)
