"""Helpers for tests that drive the `kai` CLI against real git repos."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner, Result

from renderer.atomic import read_tree
from renderer.cli import main
from renderer.repo import load
from renderer.repo import render as render_tree
from tests.conftest import EXAMPLES, ROOT, git

GREETER = EXAMPLES / "greeter"


def kai(*args: str, ok: bool = True) -> Result:
    """`kai ARGS` in this process; asserts exit 0 unless `ok=False`."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output + result.stderr
    return result


def kai_process(*args: str, env: dict[str, str] | None = None,
                prelude: str = "") -> subprocess.Popen[str]:
    """`kai ARGS` as its own process (real concurrency, real signals).

    `prelude` is Python run before the CLI (to inject a fault).
    """
    code = f"{prelude}\nfrom renderer.cli import main\nmain()"
    path = os.pathsep.join(p for p in (os.fspath(ROOT), os.environ.get("PYTHONPATH")) if p)
    full_env = {**os.environ, "PYTHONPATH": path, **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=full_env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD").strip()


def log(repo: Path) -> list[str]:
    return git(repo, "log", "--format=%s").splitlines()


def clean(repo: Path) -> bool:
    return git(repo, "status", "--porcelain", "--untracked-files=all") == ""


def make_version(dst: Path, name: str, extra: str = "") -> Path:
    """A copy of examples/greeter under another version name."""
    shutil.copytree(GREETER, dst, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = dst / "krt.yml"
    text = manifest.read_text().replace("version: greeter-v1", f"version: {name}", 1)
    manifest.write_text(text + extra)
    return dst


def states(repo: Path, rev: str | None = None) -> dict[str, str]:
    """Each version's desired state in kai.yaml on disk, or at git revision `rev`."""
    text = (git(repo, "show", f"{rev}:./kai.yaml") if rev
            else (repo / "kai.yaml").read_text())
    doc = yaml.safe_load(text)
    return {name: (v or {}).get("state", "stopped") for name, v in doc["versions"].items()}


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` but .git/, for before/after comparisons."""
    return {rel: data for rel, data in read_tree(root).items()
            if not rel.startswith(".git/")}


def render_check_at(repo: Path, rev: str, scratch: Path) -> list[str]:
    """`kai render --check` on a clean export of commit `rev`: the differing paths."""
    out = scratch / rev[:12]
    out.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=repo, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", os.fspath(out)], input=archive, check=True)
    prefix = git(repo, "rev-parse", "--show-prefix").strip()
    root = out / prefix if prefix else out
    loaded = load(root)
    tree = render_tree(loaded)
    current = read_tree(loaded.rendered_dir)
    return sorted(p for p in set(tree) | set(current) if tree.get(p) != current.get(p))


def rendered_files(folder: Path) -> list[str]:
    """Every rendered object file below `folder` (not kustomize's own file), sorted."""
    return sorted(str(p) for p in folder.rglob("*.yaml") if p.name != "kustomization.yaml")


def validate_strict(files: list[str], kubernetes_version: str,
                    may_warn: tuple[str, ...] = ()) -> None:
    """The real `kubernetes-validate --strict` passes every file. It bundles no schema for a
    custom resource, so such a file only warns: allowed for file names starting with one
    of `may_warn`, and for no other file."""
    script = Path(sys.executable).parent / "kubernetes-validate"
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "kubernetes_validate"]
    proc = subprocess.run([*cli, "--strict", "-k", kubernetes_version, "--quiet", *files],
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ERROR" not in proc.stdout, proc.stdout
    warned = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("WARN")]
    assert all(Path(f).name.startswith(may_warn) for f in warned), proc.stdout


def drop_build(root: Path) -> None:
    """Take the `build:` section `kai init` writes out of kai.yaml again (amending the init
    commit), for a repo whose versions cannot have images of their own."""
    text = (root / "kai.yaml").read_text()
    start = text.index("# Version images:")
    (root / "kai.yaml").write_text(text[:start] + text[text.index("versions:", start):])
    git(root, "commit", "-qa", "--amend", "--no-edit")
