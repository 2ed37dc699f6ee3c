"""`kai build VERSION`: write a version image's build context and build it; `kai build --list`."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from renderer import git
from renderer.build import (
    TOOLS,
    BuildError,
    build_commands,
    find_tool,
    no_image_note,
    rendered_images,
    version_image,
    write_context,
)
from renderer.lock import repo_lock
from renderer.plan import selected_files
from renderer.repo import RepoError, load

from .repoopts import fail, guarded, notify, repo_option, root_of

EXIT_NO_TOOL = 3  # no container tool: the context is written, the commands printed
CONTEXT_DIR = ".kai/build"  # in the repo, when git ignores it


@click.command(short_help="Build (and push) a version's own image.")
@click.argument("version", required=False)
@click.option(
    "--output", type=click.Path(path_type=Path, file_okay=False), default=None, metavar="DIR",
    help="Write the build context into DIR: a new or empty folder, or one kai build wrote "
         "before (replaced). Default: .kai/build/VERSION in the repo when git ignores it, "
         "else a new temporary folder.",
)
@click.option("--push", is_flag=True, help="Push the image once it is built.")
@click.option(
    "--tool", type=click.Choice(TOOLS), default=None,
    help="The container tool to run (default: the first of docker, buildah, podman on PATH).",
)
@click.option(
    "--list", "list_images", is_flag=True,
    help="Build nothing; print `VERSION IMAGE` for each version image the rendered tree "
         "names (started and published versions), one per line, sorted (for CI).",
)
@repo_option
def build(version: str | None, output: Path | None, push: bool, tool: str | None,
          list_images: bool, repo: Path | None) -> None:
    """Build the image of version VERSION, for a version that needs its own.

    A version needs an image when it has a requirements.txt at its top, or its
    files are too large for a ConfigMap; kai.yaml's `build:` says where it goes.
    Its tag, REGISTRY/PROJECT-VERSION:HASH, is a hash of everything it is built
    from, and is what `kai render` writes into the version's Deployments.

    The command writes the build context (a Dockerfile and the version's files
    under version/, the same bytes for the same sources) and prints its folder,
    then runs `docker build -t TAG DIR` (or `buildah bud -t`, `podman build -t`)
    and, with --push, `docker push TAG`. With no container tool on PATH it
    prints those commands instead. A version that needs no image says so.

    \b
    Exit codes:
      0  built (and pushed), or the version needs no image
      1  bad input, or the container tool failed
      3  no container tool on PATH: the context is written, the commands printed
    See docs/version-images.md.
    """
    if list_images:
        if version or output or push or tool:
            raise click.UsageError("--list takes no VERSION, --output, --push or --tool")
        with guarded():
            root = root_of(repo)
            with repo_lock(root, "kai build --list", shared=True, on_wait=notify):
                loaded = load(root)
                images = rendered_images(loaded.project, loaded.versions)
        for listed in images:
            click.echo(f"{listed.version} {listed.tag}")
        return
    if not version:
        raise click.UsageError("name the VERSION to build (or pass --list)")
    with guarded():
        root = root_of(repo)
        with repo_lock(root, f"kai build {version}", shared=True, on_wait=notify):
            loaded = load(root, only=[version])
            found = loaded.versions.get(version)
            if found is None:
                known = ", ".join(sorted(loaded.project.versions)) or "none"
                raise RepoError(f"no version {version} in kai.yaml (known: {known})")
            selected = selected_files(found)
            image = version_image(loaded.project, found, selected)
            if image is None:
                click.echo(f"version {version} needs no image: {no_image_note(selected)}")
                return
            target = output if output is not None else _default_context(root, version)
            try:
                context = write_context(image, target)
            except BuildError as exc:
                raise fail(f"error: {exc}") from None
    click.echo(f"wrote the build context of {image.tag} to {context}")
    _run(tool, image.tag, build_commands(tool or find_tool() or TOOLS[0], image, context, push))


def _default_context(root: Path, version: str) -> Path:
    """`.kai/build/VERSION` in the repo when git ignores it there, else a new temp folder."""
    folder = root / CONTEXT_DIR / version
    if git.is_repo(root) and git.is_ignored(root, f"{CONTEXT_DIR}/{version}"):
        return folder
    return Path(tempfile.mkdtemp(prefix=f"kai-build-{version}-"))


def _run(tool: str | None, tag: str, commands: list[list[str]]) -> None:
    """Run each command in turn; without the tool on PATH, print them and exit 3."""
    name = commands[0][0]
    if shutil.which(name) is None:
        what = f"{name} is not on PATH" if tool else \
            f"no {', '.join(TOOLS[:-1])} or {TOOLS[-1]} on PATH"
        click.echo(f"kai build: {what}; build the image with:", err=True)
        for command in commands:
            click.echo(shlex.join(command))
        raise click.exceptions.Exit(EXIT_NO_TOOL)
    for command in commands:
        click.echo(f"+ {shlex.join(command)}")
        sys.stdout.flush()
        code = subprocess.run(command, stdin=subprocess.DEVNULL, check=False).returncode
        if code:
            raise fail(f"error: `{shlex.join(command[:2])}` exited with code {code}")
    click.echo(f"{'built and pushed' if len(commands) > 1 else 'built'} {tag}")
