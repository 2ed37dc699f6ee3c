"""Load and validate versions: krt.yml against its schema, then the semantic rules.

`load_version` returns a checked :class:`~renderer.krt.Version` or raises
InputError with every problem at once, each as
`versions/greeter-v1/krt.yml:12:7: workflows[0].sequential[1]: node "inference" is not
defined (defined: etl, output)`.

Manifests as KRE 1.x accepted them load too: a key KRE 1.x carried but KAI ignores (the
schema marks it `deprecated`) and a name KRE 1.x would have refused are warnings
(`Version.warnings`), which `strict` turns into problems. Go nodes are refused.

`validate_path` checks what `kai validate` accepts: a version directory, a manifest,
a `.krt` archive or a whole GitOps repo, and returns a :class:`Report`.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from runner import contract
from runner.proto import CompiledProto, ProtoError, compile_proto

from . import autoscalingfile
from .build import image_need, size_problem
from .images import image_name
from .krt import MANIFEST_NAMES, Node, Version, dict_or_empty, list_or_empty, str_or_empty
from .krtfile import extract_krt
from .nodesource import source_problems
from .plan import MAX_NAME, PlanError, derived_names
from .problems import InputError, InputWarning, Problem
from .project import (
    PROJECT_FILE,
    PUBLISHED,
    STARTED,
    VERSIONS_DIR,
    Project,
    lacks_config_source,
)
from .projectfile import read_project
from .requirements import REQUIREMENTS_FILE
from .requirements import problems as requirements_problems
from .scheduling import ProcessSettings, excesses, unknown_node
from .schedulingfile import project_source
from .schemacheck import deprecated_fields, schema_problems
from .versionfiles import VersionFilesError, left_out, shipped_files
from .yamlsafe import Document, FieldPath, format_path, load_yaml, shown_path

SCHEMA = "krt.schema.json"
KRE_NAME_LIMIT = 20  # KRE 1.x refused version, node and workflow names this long (`lt=20`)
GO_IMAGE = "kre-go"  # KRE's Go runner image, under any registry and tag


@dataclass(frozen=True)
class Shown:
    """How the files of one version are named in problems: `prefix` + `sep` + relative path.

    A version directory gives ("versions/greeter-v1", "/"); an archive ("greeter-v1.krt", "!").
    """

    prefix: str
    sep: str = "/"

    def __call__(self, rel: str) -> str:
        if self.prefix in ("", "."):
            return rel
        return f"{self.prefix}{self.sep}{rel}"


# --- one version ------------------------------------------------------------------------------


def load_version(path: Path, display_root: Path | None = None, strict: bool = False) -> Version:
    """Load and validate the version at `path` (its directory, or its krt.yml / krt.yaml).

    Files are named relative to `display_root` (default: the current directory).
    Raises InputError with every problem found. The version's warnings are in
    `Version.warnings`; with `strict`, each is a problem instead.
    """
    return read_version(path, display_root, strict=strict)[0]


def read_version(
    path: Path, display_root: Path | None = None, shown: Shown | None = None,
    strict: bool = False,
) -> tuple[Version, Document]:
    """Like load_version, but also return the manifest document (for positions)."""
    path = Path(path)
    directory, manifest = _locate(path, display_root)
    if shown is None:
        shown = Shown(shown_path(directory, display_root))
    doc = load_yaml(directory / manifest, shown(manifest))
    problems = schema_problems(doc, SCHEMA)
    version = Version.from_dict(doc.data, directory, manifest)
    problems += _semantic_problems(doc, version, directory, shown)
    warnings = _kre_warnings(doc, version, {p.path for p in problems if p.file == doc.file})
    if strict:
        problems += [w.as_problem() for w in warnings]
        warnings = []
    if problems:
        raise InputError(problems, warnings)
    return replace(version, warnings=tuple(sorted(set(warnings)))), doc


def _locate(path: Path, display_root: Path | None) -> tuple[Path, str]:
    shown = shown_path(path, display_root)
    if path.is_dir():
        found = [name for name in MANIFEST_NAMES if (path / name).is_file()]
        if len(found) > 1:
            raise InputError(
                [Problem(shown, message="both krt.yml and krt.yaml exist; keep only one")]
            )
        if not found:
            raise InputError([Problem(shown, message="no krt.yml (or krt.yaml) in this directory")])
        return path, found[0]
    if path.is_file():
        return path.parent, path.name
    raise InputError([Problem(shown, message="does not exist")])


# --- semantic checks ------------------------------------------------------------------------


def _semantic_problems(doc: Document, version: Version, directory: Path,
                       shown: Shown) -> list[Problem]:
    data = doc.data
    out: list[Problem] = []
    workflows = list_or_empty(data.get("workflows"))
    out += _unique(doc, "nodes", "name", lambda v, _j, at: f'node "{v}" is defined twice ({at})')
    out += _unique(doc, "workflows", "name",
                   lambda v, _j, at: f'workflow "{v}" is defined twice ({at})')
    out += _unique(
        doc, "workflows", "entrypoint",
        lambda v, j, at: f'rpc "{v}" already runs workflow "{_name_of(workflows, j)}" ({at}); '
        "an rpc serves one workflow",
    )
    defined = list(dict.fromkeys(n.name for n in version.nodes if n.name))
    for i, wf in enumerate(workflows):
        for k, step in enumerate(list_or_empty(dict_or_empty(wf).get("sequential"))):
            if isinstance(step, str) and step not in defined:
                listed = ", ".join(defined) if defined else "none"
                out.append(doc.problem(("workflows", i, "sequential", k),
                                       f'node "{step}" is not defined (defined: {listed})'))
    try:
        real_root: Path | None = directory.resolve()
    except (OSError, RuntimeError):
        real_root = None
    shipped: set[str] | None = None
    try:
        selected = shipped_files(directory)
        shipped = {rel for rel, _ in selected}
        too_large = size_problem(selected)
        if too_large:
            out.append(Problem(shown.prefix or ".", message=too_large))
    except VersionFilesError as exc:
        out.append(Problem(shown(exc.file), exc.line, 1 if exc.line else 0, "", exc.message))
    for i, node in enumerate(version.nodes):
        src = node.src
        # a path that cannot name a file in the version is that; else a Go node is refused
        go = [] if src and _path_problem(src) else go_node_reasons(node)
        if go:
            out.append(doc.problem(("nodes", i), _go_refusal(version, node, go)))
            continue
        if src:
            message = _file_problem(directory, src, real_root) \
                or _shipped_problem(directory, src, shipped)
            if message:
                out.append(doc.problem(("nodes", i, "src"), message))
            else:
                out += [Problem(shown(src), line, col, f"nodes[{i}].src", message)
                        for line, col, message in source_problems(directory / src)]
    out += _resource_problems(doc, version)
    out += autoscalingfile.krt_problems(doc)
    out += _proto_problems(doc, version, directory, shown, shipped)
    out += _requirements_problems(directory, shown, shipped)
    out += _name_length_problems(doc, version)
    config = dict_or_empty(data.get("config"))
    for section in ("variables", "files"):  # a file's content is a variable too (as in KRE)
        for i, name in enumerate(list_or_empty(config.get(section))):
            if isinstance(name, str) and contract.is_reserved_env(name):
                out.append(doc.problem(
                    ("config", section, i),
                    f'"{name}" is reserved: {contract.reserved_env_rule()} are the '
                    "runner's own environment; rename it"))
    return out


def _resource_problems(doc: Document, version: Version) -> list[Problem]:
    """A node's own requests above its own limits (over the project default, see
    version_settings_problems)."""
    out = []
    for i, node in enumerate(version.nodes):
        for e in excesses([node.resources]):
            section, _ = e.culprit
            out.append(doc.problem(("nodes", i, "resources", section, e.resource), e.message()))
    return out


def version_settings_problems(project: Project, pdoc: Document, version: Version,
                              vdoc: Document) -> list[Problem]:
    """How kai.yaml's settings of `version` fit its krt.yml (`vdoc`): each node kai.yaml
    sets must be the version's, and no request may end up above its limit once the
    project default, the krt.yml node's resources and kai.yaml's override are merged.
    (A request and limit both from one of them are checked where it is read.)"""
    out: list[Problem] = []
    vs = project.versions.get(version.name)
    if vs is None:
        return out
    at = ("versions", version.name, "nodes")
    defined = [n.name for n in version.nodes]
    for name in vs.nodes:
        if name not in defined:
            out.append(pdoc.problem((*at, name), unknown_node(version.name, name, defined),
                                    key=True))
    for i, node in enumerate(version.nodes):
        override = vs.nodes.get(node.name, ProcessSettings())
        # each layer: the document and path of its `resources` (None for the project's)
        places: list[tuple[Document, FieldPath] | None] = [
            None, (vdoc, ("nodes", i, "resources")), (pdoc, (*at, node.name, "resources"))]
        for e in excesses([project.resources, node.resources, override.resources]):
            if e.request_layer == e.limit_layer:
                continue
            section, layer = e.culprit
            other, other_layer = e.other
            here, other_place = places[layer], places[other_layer]
            assert here is not None  # the culprit is the later layer, never the project's
            if other_place is None:
                source = project_source(pdoc, other, e.resource)
            else:
                source = f"{other_place[0].file} " \
                    f"{format_path((*other_place[1], other, e.resource))}"
            out.append(here[0].problem((*here[1], section, e.resource), e.message(source)))
    out += autoscalingfile.version_problems(project, pdoc, version, vdoc)
    return out


def go_node_reasons(node: Node) -> list[str]:
    """Why `node` is a Go node, which KAI cannot run yet (none: it is a Python node).

    A node is Go when its `src` is not a .py file (KRE's Go nodes name a compiled
    binary, like bin/go-greeter) or its image is KRE's Go runner (`kre-go`, any
    registry and tag).
    """
    reasons = []
    if node.src and not node.src.endswith(".py"):
        reasons.append(f'src "{node.src}" is not a .py file')
    if image_name(node.image).rsplit("/", 1)[-1] == GO_IMAGE:
        reasons.append(f"image {node.image} is KRE's Go runner")
    return reasons


def _go_refusal(version: Version, node: Node, reasons: list[str]) -> str:
    name = f'node "{node.name}"' if node.name else "this node"
    workflows = [w.name for w in version.workflows_of(node.name)] if node.name else []
    where = "from nodes"
    if workflows:
        where += f" and from workflow{'s' if len(workflows) > 1 else ''} {', '.join(workflows)}"
    return (f"{name} is a Go node ({'; '.join(reasons)}); Go nodes are not supported yet: "
            f"drop it {where}, or port it to Python")


# --- KRE 1.x leniency: accepted, with a warning -------------------------------------------


def _kre_warnings(doc: Document, version: Version, refused: set[str]) -> list[InputWarning]:
    """Keys KRE 1.x manifests carried that KAI ignores (those the schema marks deprecated),
    and names KRE 1.x would have refused. `refused`: field paths with a problem already."""
    out = [doc.warning(path, f"is ignored ({why})", key=True)
           for path, why in deprecated_fields(doc.data, SCHEMA)]
    named: list[tuple[FieldPath, str]] = [(("version",), version.name)]
    named += [(("nodes", i, "name"), n.name) for i, n in enumerate(version.nodes)]
    named += [(("workflows", i, "name"), w.name) for i, w in enumerate(version.workflows)]
    out += [doc.warning(path, f'"{name}" is {len(name)} characters long; KRE 1.x would refuse '
                              f"this (its names were shorter than {KRE_NAME_LIMIT} characters)")
            for path, name in named if len(name) >= KRE_NAME_LIMIT]
    return [w for w in out if w.path not in refused]


def _shipped_problem(directory: Path, rel: str, shipped: set[str] | None) -> str | None:
    """Why the file `rel` (inside the version) would not reach the pods, or None."""
    if shipped is None or rel in shipped:
        return None
    reason = left_out(directory, rel) or "it is not among the files that ship"
    return f'"{rel}" would not reach the pods: {reason}'


def _requirements_problems(directory: Path, shown: Shown,
                           shipped: set[str] | None) -> list[Problem]:
    """The version's requirements.txt (renderer.requirements), which must ship with it."""
    if not (directory / REQUIREMENTS_FILE).is_file():
        return []
    message = _shipped_problem(directory, REQUIREMENTS_FILE, shipped)
    if message:
        return [Problem(shown(REQUIREMENTS_FILE), message=f"{message}; the version's "
                        "requirements ship with it (its image installs them)")]
    return requirements_problems(directory, shown(REQUIREMENTS_FILE))


def _name_of(items: list[Any], index: int) -> str:
    return str_or_empty(dict_or_empty(items[index]).get("name"))


def _unique(doc: Document, section: str, key: str,
            message: Callable[[str, int, str], str]) -> list[Problem]:
    """A problem for each repeated `section[i].key`; `message(value, first index, 'first at')`."""
    out: list[Problem] = []
    first: dict[str, int] = {}
    for i, item in enumerate(list_or_empty(doc.data.get(section))):
        value = dict_or_empty(item).get(key)
        if not isinstance(value, str):
            continue
        if value in first:
            j = first[value]
            at = f"first at {section}[{j}], line {doc.position((section, j, key))[0]}"
            out.append(doc.problem((section, i, key), message(value, j, at)))
        else:
            first[value] = i
    return out


def _path_problem(rel: str) -> str | None:
    """Why `rel`, as written, cannot name a file inside the version, or None."""
    pure = PurePosixPath(rel)
    if "\\" in rel:
        return f'"{rel}": use "/" to separate folders'
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", rel):
        return f'"{rel}" must be a path relative to the version directory'
    if ".." in pure.parts:
        return f'"{rel}" must stay inside the version directory (no "..")'
    return None


def _file_problem(directory: Path, rel: str, real_root: Path | None = None) -> str | None:
    """Why `rel` is not a regular file inside `directory`, or None when it is.

    `real_root` is `directory.resolve()` when the caller already has it.
    """
    shape = _path_problem(rel)
    if shape:
        return shape
    full = directory / rel
    try:
        inside = full.resolve().is_relative_to(real_root or directory.resolve())
    except (OSError, RuntimeError):
        return f'"{rel}" cannot be resolved (a symlink loop?)'
    if not inside:
        return f'"{rel}" leads outside the version directory through a symlink'
    if not full.exists():
        return f'file "{rel}" does not exist in the version directory'
    if full.is_dir():
        return f'"{rel}" is a directory; name a file in it'
    if not full.is_file():
        return f'"{rel}" is not a regular file'
    return None


_STREAMING = {
    (True, False): "client-streaming",
    (False, True): "server-streaming",
    (True, True): "bidirectional streaming",
}


def _proto_problems(doc: Document, version: Version, directory: Path,
                    shown: Shown, shipped: set[str] | None = None) -> list[Problem]:
    rel = version.proto
    if not rel.endswith(".proto"):
        return []  # missing or wrong: the schema said so
    where = ("entrypoint", "proto")
    message = _file_problem(directory, rel) or _shipped_problem(directory, rel, shipped)
    if message:
        return [doc.problem(where, message)]
    try:
        compiled = _compile_proto(directory, rel)
    except ProtoError as exc:
        return [
            Problem(shown(p.file), p.line, p.col, "", p.message)
            if p.line else doc.problem(where, f"{rel} does not compile: {p.message}")
            for p in exc.problems
        ]
    out = _import_problems(doc, compiled, rel, directory, shipped)
    if not compiled.services:
        example = "service Entrypoint { rpc PyGreet (Request) returns (Response); }"
        return [*out, doc.problem(where, f"{rel} defines no service; add one, e.g. {example}")]
    methods = compiled.methods()
    services = ", ".join(s.name for s in compiled.services)
    available = ", ".join(methods) or "none"
    for i, wf in enumerate(version.workflows):
        rpc = wf.entrypoint
        if not rpc:
            continue
        method = methods.get(rpc)
        path: FieldPath = ("workflows", i, "entrypoint")
        if method is None:
            out.append(doc.problem(path, f'rpc "{rpc}" is not defined by service {services} '
                                         f"in {rel} (available: {available})"))
            continue
        kind = _STREAMING.get((method.client_streaming, method.server_streaming))
        if kind:
            out.append(doc.problem(
                path,
                f'rpc "{rpc}" is {kind}; a workflow needs a unary rpc, like '
                f"rpc {rpc} ({method.input_type.name}) returns ({method.output_type.name})",
            ))
    return out


# Compiled protos by entry file, with the bytes of every file protoc read for them:
# versions of a project often share their proto, and protoc is most of a version's load.
_PROTOS: dict[str, list[tuple[dict[str, bytes | None], CompiledProto]]] = {}


def compiled_proto(version: Version) -> CompiledProto:
    """The version's compiled proto: the one its validation compiled, when the files are
    unchanged since (so a command that loads a version does not run protoc twice)."""
    return _compile_proto(version.directory, version.proto)


def _compile_proto(directory: Path, rel: str) -> CompiledProto:
    """compile_proto, reusing an earlier result when every file it was compiled from (the
    entry file and its imports, looked up first in `directory`) has the same bytes here."""
    for sources, compiled in _PROTOS.get(rel, []):
        if all(_read_or_none(directory / name) == data for name, data in sources.items()):
            return compiled
    compiled = compile_proto(directory, rel)
    sources = {f.name: _read_or_none(directory / f.name) for f in compiled.file_set.file}
    entries = _PROTOS.setdefault(rel, [])
    entries.append((sources, compiled))
    del entries[:-8]  # a few distinct protos per entry name are plenty
    return compiled


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _import_problems(doc: Document, compiled: CompiledProto, rel: str, directory: Path,
                     shipped: set[str] | None) -> list[Problem]:
    """The runner compiles the proto again in the pod: every file it imports must ship."""
    out = []
    for name in compiled.files:
        if name == rel or not (directory / name).is_file():
            continue  # not from the version (an include path of protoc's own)
        message = _shipped_problem(directory, name, shipped)
        if message:
            out.append(doc.problem(("entrypoint", "proto"), f"{rel} imports {message}"))
    return out


_PATH_PART = re.compile(r"([A-Za-z_][\w-]*)|\[(\d+)\]")


def _name_length_problems(doc: Document, version: Version) -> list[Problem]:
    if not version.name:
        return []
    longest: dict[str, str] = {}
    for name, where in derived_names(version):
        if len(name) > len(longest.get(where, "")):
            longest[where] = name
    out = []
    for where, name in longest.items():
        if len(name) > MAX_NAME:
            path = tuple(int(i) if i else k for k, i in _PATH_PART.findall(where))
            out.append(doc.problem(
                path,
                f'the Kubernetes name "{name}" made from it is {len(name)} characters long; '
                f"at most {MAX_NAME} are allowed, so shorten {where}",
            ))
    return out


# --- kai validate PATH --------------------------------------------------------------------


@dataclass(frozen=True)
class Checked:
    """A version that passed validation, as `kai validate` reports it."""

    version: Version
    file: str  # its manifest, as named in problems
    state: str | None = None  # its desired state in kai.yaml, when validated in a repo

    def to_json(self) -> dict[str, Any]:
        v = self.version
        out: dict[str, Any] = {
            "name": v.name,
            "description": v.description,
            "manifest": self.file,
            "proto": v.proto,
            "nodes": [
                {"name": n.name, "image": n.image, "src": n.src, "gpu": n.gpu,
                 "replicas": n.replicas,
                 **({"autoscaling": n.autoscaling.to_dict()} if n.autoscaling else {})}
                for n in v.nodes
            ],
            "workflows": [
                {"name": w.name, "entrypoint": w.entrypoint, "sequential": list(w.sequential),
                 "delivery": w.delivery}
                for w in v.workflows
            ],
            "config": {"variables": list(v.config.variables), "files": list(v.config.files)},
        }
        if self.state is not None:
            out["state"] = self.state
        return out


@dataclass(frozen=True)
class Report:
    """What `kai validate PATH` found: problems, or the versions that passed; and warnings."""

    path: str
    kind: str  # "version", "archive" or "repo"
    problems: tuple[Problem, ...] = ()
    versions: tuple[Checked, ...] = ()
    project: Project | None = field(default=None, compare=False)
    warnings: tuple[InputWarning, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """The problems and warnings, one line each, sorted by file and position."""
        found: list[Problem | InputWarning] = [*self.problems, *self.warnings]
        found.sort(key=lambda p: (p.file, p.line, p.col, isinstance(p, InputWarning), str(p)))
        return [str(p) for p in found]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "path": self.path,
            "kind": self.kind,
            "project": self.project.name if self.project else None,
            "problems": [p.to_json() for p in self.problems],
            "warnings": [w.to_json() for w in self.warnings],
            "versions": [c.to_json() for c in self.versions],
        }


def validate_path(path: Path, display_root: Path | None = None, strict: bool = False) -> Report:
    """Validate a version dir, a krt.yml/krt.yaml, a .krt archive or a GitOps repo (kai.yaml).

    Never raises for bad input or unreadable files: everything ends up in `Report.problems`.
    With `strict`, every warning is a problem.
    """
    path = Path(path)
    shown = shown_path(path, display_root)
    try:
        return _validate_path(path, shown, display_root, strict)
    except InputError as exc:
        return Report(shown, "version", tuple(exc.problems), warnings=tuple(exc.warnings))
    except OSError as exc:
        return Report(shown, "version", (_os_problem(exc, shown),))


def _os_problem(exc: OSError, shown: str) -> Problem:
    return Problem(str(exc.filename or shown), message=str(exc.strerror or exc))


def _validate_path(path: Path, shown: str, display_root: Path | None, strict: bool) -> Report:
    if path.is_dir() and (path / PROJECT_FILE).is_file():
        return validate_repo(path, display_root, strict)
    if path.is_file() and path.name == PROJECT_FILE:
        return validate_repo(path.parent, display_root, strict)
    if path.is_file() and path.suffix == ".krt":
        return validate_archive(path, display_root, strict)
    if path.is_dir() and not any((path / m).is_file() for m in MANIFEST_NAMES):
        message = (f"neither a version (no {' or '.join(MANIFEST_NAMES)}) "
                   f"nor a GitOps repo (no {PROJECT_FILE})")
        return Report(shown, "version", (Problem(shown, message=message),))
    return _collect(shown, "version", lambda: _checked(path, display_root, None, strict))


def validate_archive(archive: Path, display_root: Path | None = None,
                     strict: bool = False) -> Report:
    """Extract a KRE .krt archive to a temporary directory and validate the version in it."""
    shown = shown_path(archive, display_root)

    def run() -> list[Checked]:
        with tempfile.TemporaryDirectory(prefix="kai-krt-") as tmp:
            target = Path(tmp) / "version"
            extracted = extract_krt(archive, target, display=shown)
            names = Shown(shown + "!" + extracted.prefix.rstrip("/"), "/") if extracted.prefix \
                else Shown(shown, "!")
            version, _ = read_version(target, display_root, names, strict)
            return [Checked(version, names(version.manifest))]

    return _collect(shown, "archive", run)


def _checked(path: Path, display_root: Path | None, shown: Shown | None,
             strict: bool) -> list[Checked]:
    version, doc = read_version(path, display_root, shown, strict)
    return [Checked(version, doc.file)]


def _collect(shown: str, kind: str, run: Callable[[], list[Checked]]) -> Report:
    try:
        checked = tuple(run())
    except InputError as exc:
        return Report(shown, kind, tuple(exc.problems), warnings=tuple(exc.warnings))
    except OSError as exc:
        return Report(shown, kind, (_os_problem(exc, shown),))
    warnings = tuple(sorted({w for c in checked for w in c.version.warnings}))
    return Report(shown, kind, (), checked, warnings=warnings)


def validate_repo(root: Path, display_root: Path | None = None, strict: bool = False) -> Report:
    """Validate kai.yaml, every versions/*/ and how they fit together."""
    root = Path(root)
    shown = shown_path(root, display_root)
    problems: list[Problem] = []
    warnings: list[InputWarning] = []
    project: Project | None = None
    pdoc: Document | None = None
    try:
        project, pdoc = read_project(root, display_root)
    except InputError as exc:
        problems += exc.problems
    loaded: dict[str, tuple[Version, Document]] = {}
    versions_dir = root / VERSIONS_DIR
    dirs = sorted(d for d in versions_dir.iterdir() if d.is_dir() and not d.name.startswith(".")) \
        if versions_dir.is_dir() else []
    for directory in dirs:
        try:
            version, doc = read_version(directory, display_root, strict=strict)
        except InputError as exc:
            problems += exc.problems
            warnings += exc.warnings
            continue
        warnings += version.warnings
        if version.name != directory.name:
            problems.append(doc.problem(
                ("version",),
                f'version "{version.name}" sits in {VERSIONS_DIR}/{directory.name}/; the folder '
                f"must be named after the version ({VERSIONS_DIR}/{version.name}/)",
            ))
            continue
        loaded[version.name] = (version, doc)
    if project is not None and pdoc is not None:
        problems += _cross_problems(project, pdoc, loaded, {d.name for d in dirs})
    checked = tuple(
        Checked(v, doc.file, project.state_of(name) if project else None)
        for name, (v, doc) in sorted(loaded.items())
    )
    return Report(shown, "repo", tuple(sorted(set(problems))), checked, project,
                  tuple(sorted(set(warnings))))


def _cross_problems(project: Project, pdoc: Document, loaded: dict[str, tuple[Version, Document]],
                    dirs: set[str]) -> list[Problem]:
    out = []
    for name, (version, doc) in loaded.items():
        try:
            image_need(project, version)  # in any state: so `kai start` cannot fail on it
        except PlanError as exc:
            out.append(pdoc.problem(("versions", name), str(exc), key=True)
                       if name in project.versions else Problem(doc.file, message=str(exc)))
    for name, vs in project.versions.items():
        if name not in dirs:
            out.append(pdoc.problem(
                ("versions", name),
                f"{VERSIONS_DIR}/{name}/ does not exist; add the version with `kai add` "
                "or remove this entry",
                key=True,
            ))
            continue
        if name in loaded:
            out += version_settings_problems(project, pdoc, *loaded[name])
        if name not in loaded or vs.state not in (STARTED, PUBLISHED):
            continue
        config = loaded[name][0].config
        if lacks_config_source(config, vs.config):
            declared = "; ".join(
                f"{kind}: {', '.join(names)}"
                for kind, names in (("variables", config.variables), ("files", config.files))
                if names
            )
            out.append(pdoc.problem(
                ("versions", name, "state"),
                f"{name} is {vs.state} but its config ({declared}) has no source; add "
                f"`config: {{secret: <Secret name>}}` under versions.{name}",
            ))
    return out
