"""`kai validate PATH [--json] [--strict]`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from renderer.problems import Problem
from renderer.validate import Checked, Report, validate_path


@click.command(short_help="Validate a version, krt.yml, .krt or GitOps repo.")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
@click.option("--strict", is_flag=True,
              help="Treat warnings (KRE 1.x keys that are ignored, names KRE 1.x would "
                   "refuse) as errors: print them as problems and exit 1.")
def validate(path: Path, as_json: bool, strict: bool) -> None:
    """Validate a version, a krt.yml, a KRE .krt archive or a whole GitOps repo.

    PATH is a version directory (holding krt.yml), a krt.yml / krt.yaml file, a
    .krt archive, or a GitOps repo (a directory with kai.yaml: kai.yaml and every
    versions/*/ are checked, and how they fit together).

    Every problem is printed on stderr, one line each, as
    FILE:LINE:COL: FIELD: MESSAGE, and the exit code is 1. Warnings (what KRE
    1.x accepted and KAI ignores) are printed there too, as
    FILE:LINE:COL: warning: ..., sorted by position with the problems; they
    leave the exit code at 0 unless --strict. With --json, a document
    {"ok", "problems", "warnings", "versions", ...} goes to stdout instead.
    """
    try:
        report = validate_path(path, strict=strict)
    except Exception as exc:  # a bug must still not show the user a traceback
        report = Report(str(path), "version",
                        (Problem(str(path), message=f"internal error: {exc!r}"),))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, sort_keys=False))
    else:
        for line in report.lines():
            click.echo(line, err=True)
        if report.ok:
            _summary(report)
    if not report.ok:
        sys.exit(1)


def _summary(report: Report) -> None:
    if report.project is not None:
        count = len(report.versions)
        click.echo(f"ok: project {report.project.name} (namespace {report.project.namespace}), "
                   f"{count} version{'s' if count != 1 else ''}")
    for checked in report.versions:
        _version_summary(checked)


def _version_summary(checked: Checked) -> None:
    v = checked.version
    state = f" [{checked.state}]" if checked.state else ""
    click.echo(f"ok: {v.name}{state} ({checked.file})")
    click.echo(f"  nodes: {', '.join(n.name for n in v.nodes)}")
    for wf in v.workflows:
        chain = " → ".join(wf.sequential)
        click.echo(f"  workflow {wf.name}: {wf.entrypoint} → {chain}")
