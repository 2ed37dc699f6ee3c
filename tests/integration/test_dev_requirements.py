"""`kai dev` and a version's requirements.txt: an unmet requirement stops it with the pip
command that installs it; `--install` installs into a cached venv that the processes run,
that a later run reuses, that an interrupted install leaves to be made again, and that
concurrent runs build once. Real pip, real venvs, real processes."""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import EXAMPLES
from local_run import kai

from renderer.cli import devvenv
from renderer.requirements import parse
from runner.supervisor import free_port

pytestmark = pytest.mark.integration
INSTALLABLE = "appdirs==1.4.4"  # one small pure-Python wheel, not in the test environment
TIMEOUT = 300


def version_needing(tmp_path: Path, requirements: str, module: str = "") -> Path:
    """examples/greeter with a requirements.txt, its etl node importing `module`."""
    version = tmp_path / "greeter"
    shutil.copytree(EXAMPLES / "greeter", version)
    (version / "requirements.txt").write_text(requirements)
    if module:
        etl = version / "src" / "etl" / "main.py"
        etl.write_text(f"import {module}  # noqa: F401\n{etl.read_text()}")
    return version


def dev_call(version: Path, *extra: str, cwd: Path | None = None,
             cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if cache is not None:
        env["XDG_CACHE_HOME"] = str(cache)
    argv = kai("dev", str(version), "--port", str(free_port()), "--web-port",
               str(free_port()), "--call", "PyGreet", '{"name": "ada"}', *extra)
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd,
                          env=env)


def test_an_unmet_requirement_stops_kai_dev_with_the_pip_command(tmp_path: Path) -> None:
    version_needing(tmp_path, "# the nodes need\nkai-no-such-package==1.0\nclick>=8\n")
    done = dev_call(Path("greeter"), cwd=tmp_path)
    assert done.returncode == 1
    pip = shlex.join([sys.executable, "-m", "pip", "install", "-r", "greeter/requirements.txt"])
    assert done.stderr.splitlines() == [
        "greeter/requirements.txt:2:1: kai-no-such-package==1.0: not installed",
        f"error: 1 requirement is not met by {sys.executable}; install with: {pip} (or pass "
        "--install: kai dev installs the requirements into a cached venv and runs the "
        "version there)",
    ]
    assert done.stdout == ""


def test_install_runs_the_processes_in_a_cached_venv_reused_later(tmp_path: Path) -> None:
    assert importlib.util.find_spec("appdirs") is None, "the test needs appdirs not installed"
    version = version_needing(tmp_path, f"{INSTALLABLE}\n", module="appdirs")
    cache = tmp_path / "cache"
    first = dev_call(version, "--install", cache=cache)
    assert first.returncode == 0, first.stderr
    assert '"Hello, Ada!"' in first.stdout  # the etl node imported appdirs: the venv's Python
    assert "kai dev: installing " in first.stderr
    assert "Successfully installed appdirs-1.4.4" in first.stderr
    [venv] = [p for p in (cache / "kai" / "venvs").iterdir() if p.is_dir()]
    assert (venv / devvenv.MARKER).is_file()

    second = dev_call(version, "--install", cache=cache)
    assert second.returncode == 0, second.stderr
    assert '"Hello, Ada!"' in second.stdout
    assert f"kai dev: using the venv {venv} (cached for " in second.stderr
    # no pip run: nothing installed, nothing said about it
    assert "installing" not in second.stderr and "Successfully" not in second.stderr


def test_an_interrupted_install_is_made_again_not_used(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"{INSTALLABLE}\n")
    lines = parse(requirements.read_text())
    environ = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    real_run = devvenv._run

    def killed_after_pip(argv: list[str], what: str) -> None:
        real_run(argv, what)
        if "pip" in argv:  # pip has written the package; the marker is not written yet
            raise KeyboardInterrupt

    monkeypatch.setattr(devvenv, "_run", killed_after_pip)
    with pytest.raises(KeyboardInterrupt):
        devvenv.ensure_venv(requirements, lines, "requirements.txt", print, environ=environ)
    [venv] = [p for p in devvenv.cache_dir(environ).iterdir() if p.is_dir()]
    assert not (venv / devvenv.MARKER).exists()
    (venv / "left-by-the-killed-install").write_text("")

    monkeypatch.setattr(devvenv, "_run", real_run)
    said: list[str] = []
    assert devvenv.ensure_venv(requirements, lines, "requirements.txt", said.append,
                               environ=environ) == venv
    assert said[0].startswith(f"kai dev: removing the incomplete venv {venv} (no ")
    assert not (venv / "left-by-the-killed-install").exists()
    assert (venv / devvenv.MARKER).is_file()


def test_concurrent_installs_of_the_same_requirements_build_once(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"{INSTALLABLE}\n")
    lines = parse(requirements.read_text())
    environ = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    said: list[str] = []
    venvs: list[Path] = []

    def install() -> None:
        venvs.append(devvenv.ensure_venv(requirements, lines, "requirements.txt", said.append,
                                         environ=environ))

    threads = [threading.Thread(target=install) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert len(venvs) == 2 and venvs[0] == venvs[1], said
    assert sum(line.startswith("kai dev: installing ") for line in said) == 1, said
    assert sum(line.startswith("kai dev: using the venv ") for line in said) == 1, said
    python = devvenv.venv_python(venvs[0])
    check = subprocess.run([str(python), "-c", "import appdirs, runner.node"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr  # the runner imports there too
