"""Static checks of a node's Python module, without running it.

`kai validate` reports here what would stop the node at start-up in the pod
(runner.node): the module does not compile, defines no `handler`, or binds `handler`
or `init` to something that is not a function. Each file is parsed once; results are
kept by content, so validating the same sources again costs a hash.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

RUNNER_PYTHON = (3, 11)  # the runner image's Python (runner/Dockerfile): its grammar counts
MAX_CACHED = 4096

# (line, col, message); line 0 when the problem has no position in the file
SourceProblem = tuple[int, int, str]

_CACHE: dict[bytes, tuple[SourceProblem, ...]] = {}

_NOT_CALLABLE: dict[type[ast.AST], str] = {
    ast.Constant: "a constant",
    ast.JoinedStr: "a string",
    ast.List: "a list",
    ast.ListComp: "a list",
    ast.Tuple: "a tuple",
    ast.Dict: "a dict",
    ast.DictComp: "a dict",
    ast.Set: "a set",
    ast.SetComp: "a set",
    ast.GeneratorExp: "a generator",
}


def source_problems(path: Path) -> tuple[SourceProblem, ...]:
    """What is wrong with the node module at `path` (a readable file), sorted by line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return ((0, 0, f"cannot be read: {exc.strerror or exc}"),)
    key = hashlib.sha256(data).digest()
    found = _CACHE.get(key)
    if found is None:
        found = tuple(sorted(check_source(data, path.name)))
        if len(_CACHE) >= MAX_CACHED:
            del _CACHE[next(iter(_CACHE))]
        _CACHE[key] = found
    return found


def check_source(data: bytes, filename: str = "<node>") -> list[SourceProblem]:
    """The problems of one module's source: a syntax error, or its handler and init."""
    try:
        tree = ast.parse(data, filename, feature_version=RUNNER_PYTHON)
        compile(tree, filename, "exec", dont_inherit=True)  # what the parser lets through
    except SyntaxError as exc:
        return [(exc.lineno or 0, (exc.offset or 1) if exc.lineno else 0,
                 f"syntax error: {exc.msg}")]
    except ValueError as exc:  # null bytes, on some Python releases
        return [(0, 0, f"syntax error: {exc}")]
    except (RecursionError, MemoryError):
        return [(0, 0, "does not compile: it nests too deeply for Python's compiler")]
    bindings = _top_level_bindings(tree)
    out: list[SourceProblem] = []
    handler = bindings.get("handler")
    if handler is None:
        if not _may_bind_elsewhere(tree, "handler"):
            out.append((0, 0, "defines no handler; a node module needs a top-level "
                              "`def handler(ctx, data)` (or `async def`)"))
    else:
        out += _callable_problem("handler", handler)
        if isinstance(handler, ast.FunctionDef | ast.AsyncFunctionDef) \
                and not handler.decorator_list and _arity(handler) < 2:  # a decorator may wrap it
            out.append((handler.lineno, handler.col_offset + 1,
                        "handler must take two arguments (ctx, data)"))
    init = bindings.get("init")
    if init is not None and not _is_none(init):
        out += _callable_problem("init", init)
    return out


def _top_level_bindings(tree: ast.Module) -> dict[str, ast.AST]:
    """The last statement at module level (also inside if/try/with there) binding each
    name: a def, a class, an import alias, or the value of an assignment."""
    found: dict[str, ast.AST] = {}

    def visit(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                found[stmt.name] = stmt
            elif isinstance(stmt, ast.Assign):
                for target in stmt.targets:
                    if isinstance(target, ast.Name):
                        found[target.id] = _at(stmt.value, stmt)
                    else:  # `a, handler = ...`: bound, to a value this cannot see
                        for name in ast.walk(target):
                            if isinstance(name, ast.Name):
                                found[name.id] = stmt
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                if isinstance(stmt.target, ast.Name):
                    found[stmt.target.id] = _at(stmt.value, stmt)
            elif isinstance(stmt, ast.Import | ast.ImportFrom):
                for alias in stmt.names:
                    found[(alias.asname or alias.name).split(".")[0]] = stmt
            elif isinstance(stmt, ast.If):
                visit(stmt.body)
                visit(stmt.orelse)
            elif isinstance(stmt, ast.Try | ast.TryStar):
                for part in (stmt.body, *(h.body for h in stmt.handlers), stmt.orelse,
                             stmt.finalbody):
                    visit(part)
            elif isinstance(stmt, ast.With | ast.AsyncWith):
                visit(stmt.body)

    visit(tree.body)
    return found


def _may_bind_elsewhere(tree: ast.Module, name: str) -> bool:
    """Could `name` be bound where this cannot follow: `from x import *`, or a function
    that declares it `global`?"""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            return True
        if isinstance(node, ast.Global) and name in node.names:
            return True
    return False


def _at(value: ast.expr, stmt: ast.stmt) -> ast.expr:
    """The assigned value, positioned at its statement (where a reader looks)."""
    value.lineno, value.col_offset = stmt.lineno, stmt.col_offset
    return value


def _callable_problem(name: str, node: ast.AST) -> list[SourceProblem]:
    if isinstance(node, ast.ClassDef):
        what = "a class"
    elif isinstance(node, ast.Constant) and node.value is None:
        what = "None"
    else:
        what = _NOT_CALLABLE.get(type(node), "")
    if not what:
        return []
    line, col = getattr(node, "lineno", 0), getattr(node, "col_offset", 0) + 1
    return [(line, col, f"{name} must be a function, but here it is {what}")]


def _is_none(node: ast.AST) -> bool:
    """`init = None` is how a module says it has no init (the runner accepts it)."""
    return isinstance(node, ast.Constant) and node.value is None


def _arity(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """How many parameters the runner's signature check sees (it needs two)."""
    a = fn.args
    return (len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + (a.vararg is not None)
            + (a.kwarg is not None))
