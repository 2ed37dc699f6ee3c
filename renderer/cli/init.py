"""`kai init`: scaffold a GitOps repo."""

from __future__ import annotations

from pathlib import Path

import click

from renderer.checks import is_dns_subdomain
from renderer.images import DEFAULT_REGISTRY
from renderer.repo import init_repo

from .repoopts import fail, guarded, notify


@click.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--project", required=True, help="Project name (a Kubernetes name, e.g. demo).")
@click.option("--namespace", required=True, help="Namespace the versions run in.")
@click.option(
    "--repo-url",
    default=None,
    help="URL Argo CD / Flux clone (default: `git remote get-url origin`, else a placeholder).",
)
@click.option(
    "--branch", default="main", show_default=True,
    help="The branch Argo CD / Flux track (and the initial branch of a new git repo).",
)
@click.option(
    "--secret-ref", "secret_ref", metavar="NAME", default="",
    help="For a private repo: the Secret in flux-system with Flux's git credentials "
         "(the GitRepository's spec.secretRef); see below for what it holds.",
)
@click.option(
    "--no-ci", is_flag=True,
    help="Do not write the CI workflow (.github/workflows/kai*.yaml) that runs "
    "`kai validate` and `kai render --check` on every pull request, and builds and pushes "
    "the version images the registry lacks.",
)
@click.option(
    "--registry", metavar="REGISTRY", default=DEFAULT_REGISTRY, show_default=True,
    help="The registry you own and push the runner images to (host[:port]/path, e.g. "
    "ghcr.io/acme): the image map sends the KRE images to REGISTRY/runner, "
    "REGISTRY/runner-ml and, on gpu nodes, REGISTRY/runner-gpu. The default is a "
    "placeholder to replace.",
)
def init(directory: Path, project: str, namespace: str, repo_url: str | None,
         branch: str, secret_ref: str, no_ci: bool, registry: str) -> None:
    """Create a GitOps repo in DIRECTORY.

    Writes kai.yaml (project, namespace, the image map onto the runner images in
    --registry, ingress defaults), versions/, deploy/ (an Argo CD Application and a
    Flux GitRepository + Kustomization that point at rendered/PROJECT), the initial
    rendered/PROJECT/, a .gitignore and a
    GitHub Actions workflow that runs `kai validate .` and `kai render --check` on
    pull requests and builds and pushes the version images the registry lacks
    (at the top of the git repository: .github/workflows/kai.yaml, or
    .github/workflows/kai-PROJECT.yaml when DIRECTORY is a subfolder of it), runs
    `git init` when DIRECTORY is not in a git repo, and commits it all.

    Argo CD gets the repo URL as given. Flux accepts only http(s):// and ssh://
    URLs, so an scp-like URL (git@github.com:acme/ops.git) is written to its
    GitRepository as ssh://git@github.com/acme/ops.git.

    \b
    --secret-ref NAME: a Secret NAME in namespace flux-system that holds, for
      an ssh:// URL: `identity` (the private key) and `known_hosts`;
      for an https:// URL: `username` and `password` (a token).
    `flux create secret git NAME --url=URL` makes one. Argo CD takes its
    credentials from its own repository settings, not from this Secret.
    """
    if secret_ref and not is_dns_subdomain(secret_ref):
        raise fail(
            f"error: --secret-ref {secret_ref!r} is not a valid Kubernetes name: use "
            "lower-case letters, digits, '-' and '.', starting and ending with a letter "
            "or digit (at most 253)"
        )
    with guarded():
        result = init_repo(directory, project, namespace, repo_url=repo_url, branch=branch,
                           secret_ref=secret_ref, ci=not no_ci, notify=notify,
                           registry=registry)
    click.echo(f"created GitOps repo {directory} (project {project}, namespace {namespace})")
    for path in result.paths:
        click.echo(f"  {path}")
    if result.sha:
        click.echo(f"committed {result.sha[:12]} on {result.branch}: {result.message}")
    click.echo(f"next: kai add PATH --repo {directory}   (a version directory or a .krt file)")
