"""The runner images' locks: runner/locks/<flavor>.txt, resolved from <flavor>.in.

Regenerate them (every flavor, or the ones named) with CPython 3.11 on Linux x86_64:

    python runner/locks/lock.py [FLAVOR ...]

A flavor's .in says what it asks for; its .txt pins every distribution the image installs
(`name==version`, sorted), and the image keeps it at /opt/kai/constraints.txt, so whatever
is installed on top of it later cannot move those pins.

pip resolves each .in as the image installs it, not as this host would:
`pip install --dry-run --ignore-installed --report` for the images' Python and platforms
(CPython 3.11; wheels for manylinux_2_28 and older, --only-binary=:all:; each machine the
flavor is built for, MACHINES). pip takes those from --python-version and --platform, but
evaluates environment markers (`python_version`, `platform_machine`) with the interpreter
it runs on, so this runs on CPython 3.11 on Linux x86_64 only (it says so and stops
otherwise), and a dependency that only an aarch64 marker asks for is not seen.

The resolution uses PyPI only, with a pinned pip (PIP_VERSION) in a throwaway venv: no pip
configuration file is read and the PIP_* settings that add indexes, links or constraints
are dropped. pip reads each wheel's metadata (PEP 658 files, or HTTP range requests into
the wheel where an index does not serve those: fast-deps), so no multi-GB torch or CUDA
wheel is downloaded.

A dependency published as an sdist only (SDIST_ONLY: pure Python) is first built into a
wheel with that pip, offered to the resolutions by --find-links; the image's own pip
builds it the same way, from the sdist, as it installs it.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

LOCKS = Path(__file__).resolve().parent
FLAVORS = ("runner", "runner-ml", "runner-gpu")

# The images' Python: python:3.11-slim (Debian) and UBI 9's python3.11 (the CUDA base).
# Wheels up to manylinux_2_28 run on the glibc of both (2.34 and newer).
PYTHON = (3, 11)
GLIBC_MINOR = 28
# The machines each flavor is built for (docker-bake.hcl's platforms); pip evaluates
# markers as on HOST_MACHINE, the first of each.
MACHINES = {
    "runner": ("x86_64", "aarch64"),
    "runner-ml": ("x86_64",),
    "runner-gpu": ("x86_64",),
}
HOST_MACHINE = "x86_64"
DOCKER_PLATFORMS = {"x86_64": "linux/amd64", "aarch64": "linux/arm64"}

PIP_VERSION = "26.3"
# Runner dependencies that PyPI has as sdists only, all pure Python: --only-binary=:all:
# cannot take them, so resolve() builds their wheels first (sdist_wheels)
SDIST_ONLY = ("nkeys",)
# PIP_* settings that only say how to reach an index; every other one (find-links, extra
# indexes, constraints, a config file) would change what resolves, so it is dropped
PIP_NETWORK_SETTINGS = ("PIP_CERT", "PIP_CLIENT_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_INDEX_URL",
                        "PIP_PROXY", "PIP_RETRIES", "PIP_TRUSTED_HOST")
PIP_TIMEOUT = 900.0

NOTES = {
    "runner-ml": (
        "PyPI's torch for Linux x86_64 is the CUDA build, so these pins include the CUDA\n"
        "packages it needs (cuda-*, nvidia-*, triton); the image installs torch's CPU build of\n"
        "the same release (+cpu, from the PyTorch CPU index), which needs none of them.\n"
    ),
}


class LockError(Exception):
    """A lock could not be made or read: one line saying what and why."""


@dataclass(frozen=True)
class Resolution:
    """One pip resolution: a flavor's .in for one machine, optionally under its lock; or
    `source`, requirements installed on top of the flavor (an image built on it)."""

    flavor: str
    machine: str
    constrained: bool = False
    source: Path | None = None

    @property
    def requirements(self) -> Path:
        return self.source or LOCKS / f"{self.flavor}.in"

    @property
    def lock(self) -> Path:
        return LOCKS / f"{self.flavor}.txt"


def platform_tags(machine: str) -> list[str]:
    """The wheel platforms the images accept on `machine`: manylinux_2_28 down to the oldest."""
    oldest = 17 if machine == "aarch64" else 5  # no older manylinux for aarch64
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MINOR, oldest - 1, -1)]
    legacy = ("2014",) if machine == "aarch64" else ("2014", "2010", "1")
    return [*tags, *(f"manylinux{name}_{machine}" for name in legacy)]


def marker_environment(machine: str = HOST_MACHINE) -> dict[str, str]:
    """What a requirement's environment markers see in the image (PEP 508 names)."""
    return {
        "implementation_name": "cpython",
        "os_name": "posix",
        "platform_machine": machine,
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "python_version": f"{PYTHON[0]}.{PYTHON[1]}",
        "sys_platform": "linux",
    }


def pip_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment pip runs in: PyPI only, whatever this machine's pip is told."""
    env = {key: value for key, value in (os.environ if base is None else base).items()
           if not key.startswith("PIP_") or key in PIP_NETWORK_SETTINGS}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_INPUT="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def check_interpreter() -> None:
    """pip evaluates markers with the interpreter it runs on: it must be like the images'."""
    here = (sys.implementation.name, sys.version_info[:2], sys.platform, platform.machine())
    if here != ("cpython", PYTHON, "linux", HOST_MACHINE):
        wanted = f"CPython {PYTHON[0]}.{PYTHON[1]} on Linux {HOST_MACHINE}"
        raise LockError(
            f"the locks resolve for {wanted}, the images' Python, and this is "
            f"{sys.implementation.name} {sys.version_info[0]}.{sys.version_info[1]} on "
            f"{sys.platform} {platform.machine()}: run it with {wanted} "
            "(pip evaluates environment markers with its own interpreter)")


def make_pip(venv: Path) -> Path:
    """A venv at `venv` with pip PIP_VERSION; returns its Python."""
    check_interpreter()
    env = pip_environment()
    _run([sys.executable, "-m", "venv", str(venv)], env, "create a venv")
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-cache-dir",
          f"pip=={PIP_VERSION}"], env, f"install pip {PIP_VERSION}")
    return python


def sdist_wheels(python: Path, resolutions: Sequence[Resolution], wheels: Path) -> Path:
    """Build the wheels of SDIST_ONLY into `wheels`: the version each constrained
    resolution's lock pins, else the newest. Returns `wheels`."""
    specs = set()
    for resolution in resolutions:
        pins = read_lock(resolution.lock) if resolution.constrained else {}
        specs |= {f"{name}=={pins[name]}" if name in pins else name for name in SDIST_ONLY}
    _run([str(python), "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-cache-dir",
          "--wheel-dir", str(wheels), *sorted(specs)], pip_environment(),
         f"build wheels of {', '.join(sorted(specs))}")
    return wheels


def resolve_command(python: Path, resolution: Resolution, report: Path,
                    cache: Path | None = None, find_links: Path | None = None) -> list[str]:
    """The pip command that resolves `resolution` as the image installs it, into `report`
    (with the wheels sdist_wheels built in `find_links`)."""
    command = [
        str(python), "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
        "--report", str(report), "--use-feature=fast-deps",
        "--only-binary=:all:", "--python-version", f"{PYTHON[0]}.{PYTHON[1]}",
        "--implementation", "cp", "--abi", f"cp{PYTHON[0]}{PYTHON[1]}", "--abi", "abi3",
        "--abi", "none",
    ]
    for tag in platform_tags(resolution.machine):
        command += ["--platform", tag]
    command += ["--cache-dir", str(cache)] if cache else ["--no-cache-dir"]
    if find_links:
        command += ["--find-links", str(find_links)]
    if resolution.constrained:
        command += ["-c", str(resolution.lock)]
    return [*command, "-r", str(resolution.requirements)]


def read_report(report: Path) -> dict[str, str]:
    """{canonical name: version} that a pip --report would install (local labels dropped)."""
    installs = json.loads(report.read_text(encoding="utf-8"))["install"]
    return {canonical_name(item["metadata"]["name"]): public_version(item["metadata"]["version"])
            for item in installs}


def resolve(python: Path, resolutions: Sequence[Resolution], workdir: Path,
            cache: Path | None = None) -> list[dict[str, str]]:
    """Run the resolutions side by side (pip mostly waits on the index); their pins, in order."""
    wheels = sdist_wheels(python, resolutions, workdir / "wheels")

    def one(number: int) -> dict[str, str]:
        resolution = resolutions[number]
        report = workdir / f"{number}-{resolution.flavor}-{resolution.machine}.report.json"
        constraint = f" under {_shown(resolution.lock)}" if resolution.constrained else ""
        _run(resolve_command(python, resolution, report, cache, wheels), pip_environment(),
             f"resolve {_shown(resolution.requirements)}{constraint} for {resolution.machine}")
        return read_report(report)

    with ThreadPoolExecutor(max_workers=max(1, len(resolutions))) as pool:
        return list(pool.map(one, range(len(resolutions))))


def merge_pins(flavor: str, per_machine: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """One lock for every machine of a flavor: the same version wherever a name resolves."""
    pins: dict[str, str] = {}
    seen: dict[str, str] = {}
    for machine, resolved in per_machine.items():
        for name, version in resolved.items():
            if pins.setdefault(name, version) != version:
                raise LockError(
                    f"{flavor}: {name} resolves to {pins[name]} on {seen[name]} and to "
                    f"{version} on {machine}; pin it in runner/locks/{flavor}.in")
            seen.setdefault(name, machine)
    return pins


def canonical_name(name: str) -> str:
    """PEP 503's normalized name: `Jinja2` and `typing_extensions` as pip compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def public_version(version: str) -> str:
    """The version without its local label: 2.14.1+cpu is pinned as 2.14.1."""
    return version.split("+", 1)[0]


def render_lock(flavor: str, pins: Mapping[str, str]) -> str:
    """A lock file's text: a header saying how it was made, then sorted `name==version` lines."""
    machines = " and ".join(MACHINES[flavor])
    header = (
        f"{flavor}: the pins of the {flavor} image, installed as pip constraints and kept\n"
        f"at /opt/kai/constraints.txt in it. Resolved from runner/locks/{flavor}.in for CPython\n"
        f"{PYTHON[0]}.{PYTHON[1]} on {machines}, manylinux_2_{GLIBC_MINOR} wheels and older.\n"
        f"{NOTES.get(flavor, '')}"
        f"Regenerate, with CPython {PYTHON[0]}.{PYTHON[1]} on Linux {HOST_MACHINE}:\n"
        f"  python runner/locks/lock.py {flavor}\n"
    )
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [f"{name}=={pins[name]}" for name in sorted(pins)]
    return "\n".join(lines) + "\n"


def read_lock(path: Path) -> dict[str, str]:
    """{canonical name: version} of a lock file; anything but `name==version` is refused."""
    pins: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LockError(f"{_shown(path)}: cannot read the lock: {exc.strerror}") from exc
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        if match is None:
            raise LockError(f"{_shown(path)}:{number}:1: expected name==version, got {line!r}")
        name = canonical_name(match[1])
        if name in pins:
            raise LockError(f"{_shown(path)}:{number}:1: {name} is pinned twice")
        pins[name] = match[2]
    return pins


def lock(flavors: Sequence[str]) -> None:
    """Write runner/locks/<flavor>.txt for each of `flavors`."""
    resolutions = [Resolution(flavor, machine) for flavor in flavors
                   for machine in MACHINES[flavor]]
    with tempfile.TemporaryDirectory(prefix="kai-lock-") as tmp:
        python = make_pip(Path(tmp) / "venv")
        resolved = dict(zip(resolutions, resolve(python, resolutions, Path(tmp)), strict=True))
    for flavor in flavors:
        pins = merge_pins(flavor, {resolution.machine: pins
                                   for resolution, pins in resolved.items()
                                   if resolution.flavor == flavor})
        (LOCKS / f"{flavor}.txt").write_text(render_lock(flavor, pins), encoding="utf-8")
        print(f"wrote runner/locks/{flavor}.txt: {len(pins)} pins")


def main(argv: Sequence[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv)
    if any(name in ("-h", "--help") for name in names):
        print(__doc__.strip())
        return 0
    unknown = [name for name in names if name not in FLAVORS]
    if unknown:
        print(f"error: unknown flavor {unknown[0]!r}: the flavors are {', '.join(FLAVORS)}",
              file=sys.stderr)
        return 2
    try:
        lock(list(dict.fromkeys(names)) or list(FLAVORS))
    except LockError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _run(command: list[str], env: Mapping[str, str], what: str) -> None:
    try:
        done = subprocess.run(command, env=dict(env), capture_output=True, text=True,
                              check=False, timeout=PIP_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise LockError(f"pip could not {what}: no answer in {exc.timeout:.0f} s") from exc
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR:")] or lines or ["no output"]
        raise LockError(f"pip could not {what}: {' '.join(errors[-2:])}")


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(LOCKS.parent.parent))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
