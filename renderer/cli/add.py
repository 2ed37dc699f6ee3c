"""`kai add`: import a version into the GitOps repo, stopped."""

from __future__ import annotations

from pathlib import Path

import click

from renderer.repo import add_version

from .repoopts import guarded, notify, repo_option, root_of


@click.command(short_help="Validate a version (dir or .krt) and add it, stopped.")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace versions/VERSION if it already exists.")
@click.option("--no-commit", is_flag=True, help="Write the files but do not commit.")
@repo_option
def add(source: Path, force: bool, no_commit: bool, repo: Path | None) -> None:
    """Validate SOURCE and copy it to versions/VERSION/, registered stopped in kai.yaml.

    SOURCE is a version directory (with krt.yml), its krt.yml, or a KRE .krt file.
    Symlinks, __pycache__ and .git are not copied. Makes one commit `kai: add VERSION`.
    The manifest's warnings (as `kai validate` prints them) go to stderr.
    """
    with guarded():
        root = root_of(repo)
        result = add_version(root, source, force=force, commit=not no_commit,
                             notify=notify)
    click.echo(result.summary)
    _report(result.sha, result.branch, result.message, result.paths)


def _report(sha: str | None, branch: str | None, message: str, paths: tuple[str, ...]) -> None:
    if sha:
        click.echo(f"committed {sha[:12]} on {branch or 'detached HEAD'}: {message}")
    else:
        click.echo(f"not committed (--no-commit); changed: {', '.join(paths)}")
