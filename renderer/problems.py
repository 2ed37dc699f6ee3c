"""One clear line per mistake in a user's input.

Every check of user input (krt.yml, kai.yaml, a .krt archive, the proto)
reports :class:`Problem` values; commands print them one per line and exit 1.
What is accepted but worth knowing (a KRE 1.x key that is ignored) is an
:class:`InputWarning`: printed the same way, and the exit code stays 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass


def _where(file: str, line: int, col: int) -> str:
    """`file`, or `file:line:col` when the position is known."""
    return f"{file}:{line}:{col}" if line else file


@dataclass(frozen=True, order=True)
class Problem:
    """A mistake at a place in a file: `file:line:col: path: message`.

    `line` and `col` are 1-based; 0 means the position is unknown. `path` is the
    field path inside the document, like `workflows[0].sequential[1]`.
    """

    file: str
    line: int = 0
    col: int = 0
    path: str = ""
    message: str = ""

    def __str__(self) -> str:
        where = _where(self.file, self.line, self.col)
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "path": self.path,
            "message": self.message,
        }


@dataclass(frozen=True, order=True)
class InputWarning:
    """Something accepted, but worth knowing: `file:line:col: warning: path message`.

    `message` continues the sentence that `path` starts (`entrypoint.src` + `is ignored
    (...)`); fields as in :class:`Problem`.
    """

    file: str
    line: int = 0
    col: int = 0
    path: str = ""
    message: str = ""

    def __str__(self) -> str:
        where = _where(self.file, self.line, self.col)
        return f"{where}: warning: {self.path} {self.message}" if self.path \
            else f"{where}: warning: {self.message}"

    def as_problem(self) -> Problem:
        """The warning as an error (`--strict`)."""
        return Problem(self.file, self.line, self.col, self.path, f"{self.message} [--strict]")

    def to_json(self) -> dict[str, object]:
        return asdict(self)  # the fields of Problem.to_json


class InputError(Exception):
    """Input that cannot be used; carries every problem found, sorted by position, and the
    warnings found on the way."""

    def __init__(self, problems: list[Problem],
                 warnings: Iterable[InputWarning] = ()) -> None:
        self.problems = sorted(set(problems))
        self.warnings = sorted(set(warnings))
        super().__init__("\n".join(str(p) for p in self.problems))
