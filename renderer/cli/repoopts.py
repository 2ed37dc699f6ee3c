"""What the GitOps-repo commands share: the `--repo` option and one-line errors.

Every known failure (bad input, an illegal transition, git, the file system, the repo
lock) is printed as one line per problem on stderr with exit code 1, never a
traceback. A request that changes nothing prints `nothing to do: ...` and exits 0, so
automation may retry any command. What a refusing git hook printed is shown before the
error line. Set KAI_DEBUG=1 to see the traceback of an unexpected error.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from renderer.git import GitError, HookRefused
from renderer.lifecycle import LifecycleError, NothingToDo
from renderer.lock import LockError
from renderer.plan import PlanError
from renderer.problems import InputError
from renderer.repo import RepoError, resolve_root

F = TypeVar("F", bound=Callable[..., Any])


def repo_option(func: F) -> F:
    """`--repo DIR`; default: the nearest directory holding kai.yaml, from cwd upwards."""
    return click.option(
        "--repo",
        "repo",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="The GitOps repo (default: the nearest directory with kai.yaml, "
        "from the current directory upwards).",
    )(func)


def root_of(repo: Path | None) -> Path:
    return resolve_root(repo)


def notify(line: str) -> None:
    """What a command says while it works (waiting for the lock, recovering): stderr."""
    click.echo(line, err=True)


def fail(*lines: str) -> click.exceptions.Exit:
    for line in lines:
        click.echo(line, err=True)
    return click.exceptions.Exit(1)


@contextmanager
def guarded() -> Iterator[None]:
    """Turn every known failure into one line per problem on stderr and exit code 1."""
    try:
        yield
    except (click.exceptions.Exit, click.ClickException, click.Abort):
        raise
    except InputError as exc:
        raise fail(*(str(p) for p in exc.problems)) from None
    except NothingToDo as exc:
        click.echo(f"nothing to do: {_one_line(exc)}".replace("; nothing to do", ""))
        raise click.exceptions.Exit(0) from None
    except HookRefused as exc:
        for line in exc.output.splitlines():
            click.echo(f"  hook: {line}", err=True)
        raise fail(f"error: {_one_line(exc)}") from None
    except (RepoError, LifecycleError, GitError, PlanError, LockError) as exc:
        raise fail(f"error: {_one_line(exc)}") from None
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise fail(f"error: {where}{exc.strerror or exc}") from None
    except Exception as exc:
        if os.environ.get("KAI_DEBUG"):
            raise
        raise fail(
            f"error: unexpected {type(exc).__name__}: {_one_line(exc)} "
            "(this is a bug in kai; KAI_DEBUG=1 shows the traceback)"
        ) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
