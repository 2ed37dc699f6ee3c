"""The `kai` command line.

Each command lives in its own module in this package, named after it; this
module holds the group and registers them. Commands print input problems one per
line (file:line:col: path: message) and exit 1; they never show a traceback for
bad input.
"""

from __future__ import annotations

import importlib

import click

from renderer import __version__

# command name -> "module:function" inside renderer.cli
COMMANDS: dict[str, str] = {
    "validate": "validate:validate",
    "init": "init:init",
    "add": "add:add",
    "start": "lifecycle:start",
    "stop": "lifecycle:stop",
    "publish": "lifecycle:publish",
    "unpublish": "lifecycle:unpublish",
    "canary": "lifecycle:canary",
    "status": "status:status",
    "render": "render:render",
    "diff": "render:diff",
    "build": "build:build",
    "dev": "dev:dev",
    "call": "call:call",
    "gc": "gc:gc",
}


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs (keeps `kai --help` fast)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        command: click.Command = getattr(importlib.import_module(f"renderer.cli.{module}"), attr)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kai")
def main() -> None:
    """KAI Server: run ML/data pipeline versions on Kubernetes through GitOps.

    A version is a krt.yml manifest, a .proto contract and node source. `kai`
    validates versions, keeps their desired state in a git repo (kai.yaml),
    renders plain Kubernetes YAML for Argo CD or Flux, and runs a version on
    your machine with `kai dev`.
    """
