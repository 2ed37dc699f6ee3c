"""`kai gc`: list, and with --yes delete, the JetStream streams of stopped versions."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from types import FrameType

import click

from renderer import gc as gclib
from renderer.lock import repo_lock
from renderer.projectfile import load_project

from .repoopts import guarded, notify, repo_option, root_of

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT


@click.command(short_help="Delete the NATS streams of versions that are not started.")
@repo_option
@click.option("--nats", "nats_url", metavar="URL", default=None,
              help="The NATS server to clean (default: kai.yaml nats.url, the address "
              "inside the cluster; from outside it, e.g. through `kubectl port-forward`, "
              "pass this).")
@click.option("--nats-creds", "nats_creds", metavar="FILE", default=None,
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A NATS .creds file (user JWT and nkey seed) to connect with, for a "
              "server that requires one; use the account the versions run in.")
@click.option("--dry-run", is_flag=True,
              help="Only list what would be deleted, and say so.")
@click.option("--yes", is_flag=True,
              help="Delete what is listed. Without it nothing is deleted.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=gclib.DEFAULT_TIMEOUT,
              show_default=True, metavar="SECONDS",
              help="How long the connection, and each request to NATS, may take.")
def gc(repo: Path | None, nats_url: str | None, nats_creds: Path | None, dry_run: bool,
       yes: bool, timeout: float) -> None:
    """Delete the JetStream streams and consumers of versions no longer started.

    A version's processes create, on the NATS server, a work-queue stream per
    workflow (KAI_<project>_<version>_<workflow>) with a durable consumer per
    step (s<step>-<node>), and a claim bucket for payloads too large for one
    message (object store KAI_<project>_<version>_CLAIMS, stream
    OBJ_KAI_<project>_<version>_CLAIMS). Stopping a version removes its pods, not
    these. `kai gc` lists those of this project's versions that kai.yaml neither
    starts nor publishes, versions no longer in kai.yaml included: one line each,
    with its version, what it is, its name and its messages and bytes (each
    consumer on the line after its stream, with its messages pending), sorted.

    \b
    Never touched:
    - the project's data stream KAI_<project>_DATA (predictions, measurements,
      and db documents, which are kept forever);
    - any stream of another project, and any stream whose name is not one the
      runner makes, or that captures other subjects than the runner's would;
    - every stream of a version whose consumers still have pull requests
      waiting: a process of it still runs (its stop is not synced yet). It is
      listed as `kept:`; run kai gc again once its pods are gone.

    Nothing is deleted without --yes, and kai gc never asks: without --yes it
    lists and says to pass --yes (--dry-run says it is a dry run), on a terminal
    and in CI alike. Run it once the stop is synced: by hand, or as a CI job
    after a merge to the branch Argo CD or Flux syncs, with --yes.

    \b
    Exit codes:
      0    nothing to collect; listed only (--dry-run, or no --yes); or all
           of it deleted
      1    kai.yaml cannot be read, NATS cannot be reached (one line says
           why), a request got no answer within --timeout, or a deletion
           failed
      2    bad usage (--dry-run with --yes, a --nats-creds file that does
           not exist, an unknown option)
      130  interrupted (Ctrl-C); what was deleted before stays deleted
    """
    if dry_run and yes:
        raise click.UsageError("--dry-run and --yes contradict each other; pass one")
    with guarded():
        root = root_of(repo)
        with repo_lock(root, "kai gc", shared=True, on_wait=notify):
            project = load_project(root)
    url = nats_url or project.nats.url
    running = gclib.running_versions(project)
    previous = signal.signal(signal.SIGINT, _interrupted)
    try:
        code = asyncio.run(_run(project.name, running, url, nats_creds, dry_run, yes,
                                limit=timeout, from_kai_yaml=nats_url is None))
    except gclib.GcError as exc:
        click.echo(f"error: {exc}", err=True)
        raise click.exceptions.Exit(EXIT_FAILED) from None
    finally:
        signal.signal(signal.SIGINT, previous)
    raise click.exceptions.Exit(code)


def _interrupted(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C stops at once. Each deletion is one request the server carries out whole, so
    nothing is left half done; and no cancelled coroutine can keep waiting (asyncio.run's
    own Ctrl-C cancels, which Python 3.11's wait_for may swallow)."""
    sys.stdout.flush()
    click.echo("error: interrupted; run kai gc again to see what is left", err=True)
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


async def _run(project: str, running: frozenset[str], url: str, creds: Path | None,
               dry_run: bool, yes: bool, limit: float, from_kai_yaml: bool) -> int:
    try:
        conn = await gclib.connect(url, creds, limit)
    except gclib.GcError as exc:
        hint = (" (kai.yaml nats.url; from outside the cluster pass --nats URL)"
                if from_kai_yaml else "")
        raise gclib.GcError(f"{exc}{hint}") from None
    try:
        selection = await gclib.survey(conn, project, running)
        for line in gclib.listing(selection):
            click.echo(line)
        for line in gclib.notes(selection):
            click.echo(line)
        where = gclib.shown_url(url)
        if not selection.garbage:
            click.echo(f"nothing to collect: project {project} has no streams of stopped "
                       f"or removed versions on {where}")
            return 0
        what = gclib.summary(selection)
        if dry_run:
            click.echo(f"dry run: would delete {what}; nothing deleted")
            return 0
        if not yes:
            click.echo(f"nothing deleted: pass --yes to delete {what}")
            return 0
        errors = await gclib.delete(conn, selection.garbage)
        for line in errors:
            click.echo(line, err=True)
        if errors:
            return EXIT_FAILED
        click.echo(f"deleted {what}")
        return 0
    finally:
        await conn.close()
