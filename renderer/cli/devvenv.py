"""Which Python runs a version's processes under `kai dev`, and `--install`'s cached venvs.

Without `--install` the processes run this Python (`sys.executable`), and a version whose
requirements.txt (renderer.requirements) it does not satisfy is refused: one line per
requirement, then the pip command that installs them into this Python.

With `--install`, what is missing goes into a venv under the user cache folder,
`$XDG_CACHE_HOME/kai/venvs/<key>` (default `~/.cache`), and the processes run its
Python. The key is a sha256 over the requirements file's bytes, this Python's version and
its environment (`sys.prefix`), so the same requirements on the same Python reuse one
venv. The venv is made from this Python with `--system-site-packages`, and a `.pth` file
adds this environment's site folders after its own, so the runner and its dependencies
import there as here while what the venv installs comes first. pip installs the
requirements, they are checked again, and only then is the marker file `.kai-complete`
written (atomically), last: a venv without it (an install that failed or was killed) is
removed and made again, never used. The whole build holds a lock file beside the venv
(`<key>.lock`, renderer.lock.file_lock), so concurrent `kai dev --install` runs of the
same requirements build it once: the others wait, then reuse it.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import site
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from renderer.atomic import write_file
from renderer.lock import LockError, file_lock, timeout_from_env
from renderer.requirements import (
    REQUIREMENTS_FILE,
    Line,
    ListingError,
    Unsatisfied,
    installed_distributions,
    read,
    unsatisfied,
)

MARKER = ".kai-complete"
PARENT_PTH = "kai-parent-environment.pth"
LOCK_TIMEOUT = 1800.0  # seconds another install of the same venv may take (KAI_LOCK_TIMEOUT)
KEY_LENGTH = 16  # hex digits of the sha256 in the venv's folder name
KEY_FORMAT = "kai-dev-venv 1"  # part of the key: a change in how venvs are made changes it


class Unmet(Exception):
    """The requirements are not met and cannot be; `lines` say which and what to do."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))


def shown(path: Path, cwd: Path | None = None) -> str:
    """`path` relative to the current directory when it is below it, else absolute."""
    here = (cwd or Path.cwd()).resolve()
    full = Path(os.path.abspath(path))
    try:
        return full.relative_to(here).as_posix()
    except ValueError:
        return str(full)


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`$XDG_CACHE_HOME/kai/venvs` (an absolute XDG_CACHE_HOME only, as the spec says),
    else `~/.cache/kai/venvs`."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "kai" / "venvs"


def venv_key(requirements: bytes) -> str:
    """The venv's name for these requirements on this Python (see the module doc)."""
    digest = hashlib.sha256()
    for part in (KEY_FORMAT, sys.implementation.name, sys.version, sys.prefix):
        digest.update(part.encode() + b"\0")
    digest.update(requirements)
    return digest.hexdigest()[:KEY_LENGTH]


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def python_for(version_dir: Path, install: bool, say: Callable[[str], None],
               command: str = "kai dev --install") -> str:
    """The interpreter that runs the version's processes (see the module doc).

    Raises InputError for a requirements.txt that cannot be read, Unmet when a requirement
    is not met (and not `install`, or the install failed), LockError when another install
    holds the venv too long.
    """
    path = version_dir / REQUIREMENTS_FILE
    file = shown(path)
    lines = read(version_dir, file)
    if lines is None:
        return sys.executable
    missing = _unmet(lines, sys.executable)
    if not missing:
        if install:
            say(f"kai dev: {sys.executable} meets {file} already; --install has nothing to do")
        return sys.executable
    if not install:
        pip = shlex.join([sys.executable, "-m", "pip", "install", "-r", file])
        many = "requirement is" if len(missing) == 1 else "requirements are"
        raise Unmet([*(str(m.problem(file)) for m in missing),
                     f"error: {len(missing)} {many} not met by {sys.executable}; install "
                     f"with: {pip} (or pass --install: kai dev installs the requirements into "
                     "a cached venv and runs the version there)"])
    return str(venv_python(ensure_venv(path, lines, file, say, command)))


def _unmet(lines: Sequence[Line], python: str) -> list[Unsatisfied]:
    try:
        return unsatisfied(lines, installed_distributions(python))
    except ListingError as exc:
        raise Unmet([f"error: {exc}"]) from None


def ensure_venv(requirements: Path, lines: Sequence[Line], file: str,
                say: Callable[[str], None], command: str = "kai dev --install",
                environ: Mapping[str, str] | None = None) -> Path:
    """The complete cached venv for `requirements` (its parsed `lines`), made when needed.
    `file` is how the requirements file is named in messages."""
    data = requirements.read_bytes()
    root = cache_dir(environ)
    venv = root / venv_key(data)
    if (venv / MARKER).is_file():
        say(f"kai dev: using the venv {venv} (cached for {file})")
        return venv
    try:
        with file_lock(root / f"{venv.name}.lock", command, doing=f" on the venv {venv}",
                       what=f"the lock of the venv {venv}", on_wait=say,
                       timeout=timeout_from_env(LOCK_TIMEOUT)):
            if (venv / MARKER).is_file():  # another run built it while this one waited
                say(f"kai dev: using the venv {venv} (cached for {file})")
                return venv
            _build(venv, requirements, lines, file, data, say)
    except (LockError, OSError) as exc:
        raise Unmet([f"error: {exc}"]) from None
    return venv


def _build(venv: Path, requirements: Path, lines: Sequence[Line], file: str, data: bytes,
           say: Callable[[str], None]) -> None:
    if venv.exists() or venv.is_symlink():
        say(f"kai dev: removing the incomplete venv {venv} (no {MARKER}: its install did not "
            "finish)")
        if venv.is_dir() and not venv.is_symlink():
            shutil.rmtree(venv)
        else:
            venv.unlink()
    say(f"kai dev: installing {file} into the venv {venv}")
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
         "create the venv")
    python = str(venv_python(venv))
    _link_parent(venv, python)
    has_pip = subprocess.run([python, "-c", "import pip"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
                             check=False).returncode == 0
    if not has_pip:  # neither this environment nor the system site has pip
        _run([python, "-m", "ensurepip", "--default-pip"], "install pip into the venv")
    _run([python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
          "-r", str(requirements)], f"install {file}")
    missing = _unmet(lines, python)
    if missing:
        raise Unmet([*(str(m.problem(file)) for m in missing),
                     f"error: pip installed {file} into {venv}, but these requirements are "
                     "still not met there"])
    write_file(venv / MARKER, f"{REQUIREMENTS_FILE} sha256 {hashlib.sha256(data).hexdigest()}\n"
                              f"python {sys.version.split()[0]} {sys.prefix}\n")
    say(f"kai dev: the venv {venv} is ready")


def _link_parent(venv: Path, python: str) -> None:
    """A .pth in the venv that adds this environment's site folders after the venv's own
    (`site.addsitedir`, so their .pth files, editable installs among them, count too)."""
    done = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    purelib = Path(done.stdout.strip())
    folders = [*site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        folders.append(site.getusersitepackages())
    text = "".join(f"import site; site.addsitedir({folder!r})\n"
                   for folder in dict.fromkeys(folders))
    write_file(purelib / PARENT_PTH, text)


def _run(argv: list[str], what: str) -> None:
    """Run `argv` with its output on stderr; Unmet saying `what` failed when it does."""
    try:
        out: int | None = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        out = None  # stderr is no file (a test's capture): the child's goes where it goes
    try:
        code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, check=False).returncode
    except OSError as exc:
        raise Unmet([f"error: could not {what}: {shlex.join(argv)}: "
                     f"{exc.strerror or type(exc).__name__}"]) from None
    if code != 0:
        raise Unmet([f"error: could not {what} (exit code {code}): {shlex.join(argv)}; "
                     "its output is above"])
