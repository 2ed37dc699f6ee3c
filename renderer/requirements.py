"""A version's `requirements.txt`: the Python packages its nodes need beyond the runner's.

The file sits at the top of the version and ships with its other files. A version image
(`kai build`) installs it with pip under the runner flavor's constraints; `kai dev` checks
it against the Python that runs the version's processes (renderer.cli.dev) and, with
`--install`, installs it into a cached venv (renderer.cli.devvenv).

Each line is read with `packaging.requirements.Requirement`: one requirement as PEP 508
writes it (`name[extras] version-specifier ; marker`, e.g. `pandas>=2.2,<3`). Blank lines
and comments (a line starting with `#`, or ` #` after a requirement) are skipped. What the
image and this machine cannot both honour is refused with one line
(`requirements.txt:LINE:COL: ...`): pip options (`-r`, `-c`, `-e`, `--index-url`,
`--hash`...), URLs and direct references (`name @ URL`), local paths and archives, line
continuations.

A requirement is satisfied when its marker does not apply to this Python, or a
distribution of its name (compared as `packaging.utils.canonicalize_name` does) is
installed at a version its specifier contains, pre-releases included (as pip accepts an
installed version). Only the named distribution is checked, not its extras.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import InvalidMarker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion

from .problems import InputError, Problem

REQUIREMENTS_FILE = "requirements.txt"
MAX_SIZE = 256 * 1024
ALLOWED = ("write one requirement per line, as name[extras] version-specifier ; marker "
           "(e.g. pandas>=2.2,<3)")
_COMMENT = re.compile(r"(^|\s)#.*$")
_TRAILING_OPTION = re.compile(r"\s(--?[A-Za-z][\w-]*)")  # `six==1.17 --hash=sha256:...`
_ARCHIVES = (".whl", ".zip", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")
_OPTION_HINTS = {
    "-r": "list those requirements in this file instead",
    "--requirement": "list those requirements in this file instead",
    "-c": "the runner image's constraints apply already",
    "--constraint": "the runner image's constraints apply already",
    "-e": "editable installs need a local checkout, which a version image does not have",
    "--editable": "editable installs need a local checkout, which a version image does not have",
}
_LOCAL = ("a local path or archive is not supported: a version image cannot reach it; "
          f"publish the package to an index, or put its code in the version; {ALLOWED}")
_INDEX_HINT = "configure the package index in pip's own configuration (pip.conf, PIP_INDEX_URL)"


@dataclass(frozen=True)
class Line:
    """One requirement of the file, where it was written."""

    line: int
    col: int
    text: str  # as written, without its comment
    requirement: Requirement

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)

    def applies(self, environment: Mapping[str, str] | None = None) -> bool:
        """Whether its marker (if any) holds for `environment` (default: this Python)."""
        marker = self.requirement.marker
        return marker is None or marker.evaluate(dict(environment) if environment else None)


@dataclass(frozen=True)
class Unsatisfied:
    """A requirement the environment does not meet, and what it has instead."""

    wanted: Line
    installed: str | None  # the installed version, None when the distribution is missing

    def problem(self, file: str) -> Problem:
        have = "not installed" if self.installed is None else f"{self.installed} is installed"
        return Problem(file, self.wanted.line, self.wanted.col,
                       message=f"{self.wanted.text}: {have}")


def parse(text: str, file: str = REQUIREMENTS_FILE) -> list[Line]:
    """The requirements of `text`, or InputError with one Problem per line refused."""
    lines: list[Line] = []
    problems: list[Problem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        body = _COMMENT.sub("", raw).rstrip()
        stripped = body.lstrip()
        if not stripped:
            continue
        col = len(body) - len(stripped) + 1
        result = _parse_line(stripped)
        if isinstance(result, Requirement):
            lines.append(Line(number, col, stripped, result))
        else:
            offset, message = result
            problems.append(Problem(file, number, col + offset, message=message))
    if problems:
        raise InputError(problems)
    return lines


def _parse_line(text: str) -> Requirement | tuple[int, str]:
    """A requirement, or (offset into `text`, why it is refused)."""
    if text.startswith("-"):
        return 0, _option_refusal(text)
    if text.endswith("\\"):
        return len(text) - 1, f"a line continuation (\\) is not supported; {ALLOWED}"
    if _looks_local(text):
        return 0, _LOCAL
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        return _refusal(text, exc)
    if requirement.url:
        at = text.find("@")
        return max(at, 0), (f"a direct reference ({requirement.name} @ URL) is not supported: "
                            f"name a release on the package index instead; {ALLOWED}")
    if requirement.marker is not None:
        try:
            requirement.marker.evaluate()
        except (InvalidMarker, UndefinedComparison, UndefinedEnvironmentName) as exc:
            at = text.find(";")
            return max(at, 0), f"marker cannot be evaluated: {exc}"
    return requirement


def _option_refusal(text: str) -> str:
    option = text.split(None, 1)[0].split("=", 1)[0]
    hint = _OPTION_HINTS.get(option, _INDEX_HINT if "index" in option or option in (
        "-i", "-f", "--find-links", "--trusted-host") else None)
    why = f"; {hint}" if hint else ""
    return f"pip option {option} is not supported{why}; {ALLOWED}"


def _looks_local(text: str) -> bool:
    """A path or an archive, as pip takes a line for one (`./pkg`, `dist/x-1.0.whl`)."""
    first = text.split(";", 1)[0].strip().lower()
    if "://" in first:
        return False  # a URL: refused as one
    return first.startswith((".", "/", "~")) or first.endswith(_ARCHIVES)


def _refusal(text: str, exc: InvalidRequirement) -> tuple[int, str]:
    """Why `text`, which packaging could not read, is refused: (offset, message)."""
    option = _TRAILING_OPTION.search(text)
    if option:
        return option.start(1), _option_refusal(text[option.start(1):])
    if "://" in text or text.lower().startswith(("git+", "hg+", "svn+", "bzr+")):
        return 0, f"a URL is not supported: name a release on the package index instead; {ALLOWED}"
    if "/" in text or "\\" in text:
        return 0, _LOCAL
    cause = exc.__cause__
    span = getattr(cause, "span", None)
    message = getattr(cause, "message", None) or str(exc).splitlines()[0]
    offset = span[1] if isinstance(span, tuple) and len(span) == 2 else 0
    return min(offset, len(text)), f"not a requirement: {message}; {ALLOWED}"


def read(directory: Path, file: str = REQUIREMENTS_FILE) -> list[Line] | None:
    """The requirements of the version at `directory`, None when it has no requirements.txt.

    Problems are named `file` (how the caller shows the version's requirements.txt).
    Raises InputError.
    """
    path = Path(directory) / REQUIREMENTS_FILE
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > MAX_SIZE:
            raise InputError([Problem(file, message=f"is larger than {MAX_SIZE // 1024} KiB")])
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError([Problem(file, message=f"is not UTF-8 text ({exc.reason})")]) from None
    except OSError as exc:
        raise InputError([Problem(file, message=f"cannot be read: {exc.strerror}")]) from None
    return parse(text, file)


def problems(directory: Path, file: str = REQUIREMENTS_FILE) -> list[Problem]:
    """What `kai validate` says about the version's requirements.txt (nothing without one)."""
    try:
        read(directory, file)
    except InputError as exc:
        return exc.problems
    return []


def unsatisfied(lines: Sequence[Line], installed: Mapping[str, str],
                environment: Mapping[str, str] | None = None) -> list[Unsatisfied]:
    """The requirements that apply (their markers, for `environment`) and that `installed`
    (canonical name → version, see installed_distributions) does not meet, in file order."""
    out = []
    for line in lines:
        if not line.applies(environment):
            continue
        version = installed.get(line.name)
        if version is None or not _contains(line.requirement, version):
            out.append(Unsatisfied(line, version))
    return out


def _contains(requirement: Requirement, version: str) -> bool:
    try:
        return requirement.specifier.contains(version, prereleases=True)
    except InvalidVersion:
        return False


# Run by the interpreter being checked: its distributions in sys.path order, (name, version).
_LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m, json, sys\n"
    "json.dump([[d.metadata['Name'], d.version] for d in m.distributions()"
    " if d.metadata['Name']], sys.stdout)\n"
)


class ListingError(Exception):
    """The interpreter to check could not list its distributions; a one-line message."""


def installed_distributions(python: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Canonical name → version of every distribution `python` sees, run with `env` as the
    version's processes are; the first on its sys.path wins, as for an import."""
    try:
        done = subprocess.run([python, "-c", _LIST_DISTRIBUTIONS], capture_output=True,
                              text=True, env=None if env is None else dict(env), timeout=120,
                              check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ListingError(f"cannot run {python} to list its packages: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ListingError(f"{python} could not list its packages: {last}")
    try:
        listed = json.loads(done.stdout)
    except ValueError:
        raise ListingError(f"{python} printed no list of its packages") from None
    found: dict[str, str] = {}
    for name, version in listed:
        found.setdefault(canonicalize_name(str(name)), str(version))
    return found
