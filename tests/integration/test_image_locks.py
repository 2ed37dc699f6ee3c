"""The runner image flavors' locks resolve with pip, for the images' Python and platforms.

Each flavor's .in is resolved under its own lock, as the image installs it (`pip install
--dry-run --ignore-installed --report -c runner/locks/<flavor>.txt -r <flavor>.in`, the
command runner/locks/lock.py makes, for CPython 3.11 and manylinux wheels), from PyPI
only: the resolution must succeed and install exactly what the lock pins, at those
versions, with no unpinned transitive dependency. tests/unit/test_image_flavors.py checks
that the pins satisfy the runner's own requirements.

runner-ml takes torch and torchvision from the PyTorch CPU index in the image (2.14.1+cpu,
which `torch==2.14.1` admits). Resolving the plain release on PyPI is enough here: it is
the same release, and what its CPU build depends on is a part of what PyPI's CUDA build
depends on, all of it pinned.

pip reads the wheels' metadata only (runner/locks/lock.py says how), so no torch or CUDA
wheel is downloaded. The slim flavor is also installed for real into a venv (some 20 MB),
and the runner imports from it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from runner.locks import lock

ROOT = Path(__file__).resolve().parents[2]
RESOLUTIONS = [lock.Resolution(flavor, machine, constrained=True)
               for flavor in lock.FLAVORS for machine in lock.MACHINES[flavor]]
# examples/custom-image installs its requirements on runner-ml, under runner-ml's pins
EXAMPLE = lock.Resolution("runner-ml", lock.HOST_MACHINE, constrained=True,
                          source=ROOT / "examples" / "custom-image" / "requirements.txt")


def _host_fits() -> bool:
    try:
        lock.check_interpreter()
    except lock.LockError:
        return False
    return True


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not _host_fits(), reason="pip evaluates environment markers with its "
                       "own interpreter: the locks resolve on CPython 3.11, Linux x86_64 only"),
]


@pytest.fixture(scope="module")
def pip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Python of a venv with the pip the locks are made with."""
    return lock.make_pip(tmp_path_factory.mktemp("pip") / "venv")


@pytest.fixture(scope="module")
def resolved(pip: Path,
             tmp_path_factory: pytest.TempPathFactory) -> dict[lock.Resolution, dict[str, str]]:
    """Every flavor's resolution for every machine it is built for (side by side)."""
    tmp = tmp_path_factory.mktemp("locks")
    everything = [*RESOLUTIONS, EXAMPLE]
    pins = lock.resolve(pip, everything, tmp, cache=tmp / "cache")
    return dict(zip(everything, pins, strict=True))


@pytest.mark.parametrize("resolution", RESOLUTIONS,
                         ids=[f"{r.flavor}-{r.machine}" for r in RESOLUTIONS])
def test_a_flavor_resolves_to_nothing_but_its_pins(
        resolved: dict[lock.Resolution, dict[str, str]], resolution: lock.Resolution) -> None:
    pins = lock.read_lock(resolution.lock)
    got = resolved[resolution]
    assert got, "pip resolved nothing"
    unpinned = sorted(f"{name}=={version}" for name, version in got.items() if name not in pins)
    assert unpinned == [], f"resolved but not pinned in {resolution.lock.name}"
    moved = sorted(f"{name}: pinned {pins[name]}, resolved {version}"
                   for name, version in got.items() if pins[name] != version)
    assert moved == []


@pytest.mark.parametrize("flavor", lock.FLAVORS)
def test_a_lock_pins_only_what_its_flavor_resolves_to(
        resolved: dict[lock.Resolution, dict[str, str]], flavor: str) -> None:
    """No stale pin: each one is installed on at least one machine the flavor is built for."""
    wanted = set().union(*(pins for resolution, pins in resolved.items()
                           if resolution.flavor == flavor and resolution.source is None))
    stale = sorted(set(lock.read_lock(lock.LOCKS / f"{flavor}.txt")) - wanted)
    assert stale == [], f"pinned in {flavor}.txt but not resolved: regenerate the lock"


def test_the_custom_image_example_installs_on_runner_ml_within_its_pins(
        resolved: dict[lock.Resolution, dict[str, str]]) -> None:
    pins = lock.read_lock(EXAMPLE.lock)
    got = resolved[EXAMPLE]
    assert "lightgbm" in got
    # whatever the flavor pins stays as pinned (pip holds it to -c); the rest is new
    assert {name: got[name] for name in got if name in pins} \
        == {name: pins[name] for name in got if name in pins}
    assert "numpy" in got


def test_the_slim_flavor_installs_and_runs_the_runner(pip: Path, tmp_path: Path) -> None:
    """A real install of runner.in under runner.txt: exactly the pins, and the runner imports."""
    venv = tmp_path / "venv"
    env = lock.pip_environment()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   env=env, timeout=120)
    python = venv / "bin" / "python"
    flavor = lock.Resolution("runner", lock.HOST_MACHINE, constrained=True)
    wheels = lock.sdist_wheels(pip, [flavor], tmp_path / "wheels")  # as the image's pip does
    subprocess.run(
        [str(pip), "-m", "pip", "--python", str(python), "install", "--quiet", "--no-cache-dir",
         "--only-binary=:all:", "--find-links", str(wheels), "-c", str(flavor.lock),
         "-r", str(flavor.requirements)],
        check=True, env=env, timeout=600)
    listed = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m\n"
         "for d in m.distributions(): print(d.metadata['Name'], d.version)"],
        # not from the checkout, whose kai_server.egg-info would be listed too
        check=True, env=env, capture_output=True, text=True, timeout=60,
        cwd=tmp_path).stdout.splitlines()
    installed = dict(line.split(" ") for line in listed)
    assert {lock.canonical_name(name): version for name, version in installed.items()} \
        == lock.read_lock(flavor.lock)

    # the image's own check, as runner/locks/install.sh runs it, the renderer out of reach
    check = re.search(r'^python -c "(import runner\.[^"]*)"$',
                      (lock.LOCKS / "install.sh").read_text(encoding="utf-8"), re.MULTILINE)
    assert check is not None, "install.sh no longer checks that the runner imports"
    code = f"import sys\nsys.modules['renderer'] = None\n{check[1]}\n"
    run_env = {**env, "PYTHONPATH": str(ROOT)}
    subprocess.run([str(python), "-c", code], check=True, cwd=ROOT, env=run_env, timeout=60)
    shown = subprocess.run([str(python), "-m", "runner", "--help"], check=True, cwd=ROOT,
                           env=run_env, capture_output=True, text=True, timeout=60)
    assert "{node,entrypoint}" in shown.stdout
