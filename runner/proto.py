"""Compile a version's .proto with grpcio-tools, in process or in a child process.

Both sides use this: the renderer to validate a version (the rpc exists and is
unary), the runner to serve the rpcs through generic handlers and to build the
message classes node code works with. No generated code is needed on disk,
except the `<stem>_pb2.py` modules that :func:`generate_pb2` writes (for the proto and
each proto it imports) for node code that imports them by name.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

_LOCK = threading.Lock()
_PROTOC_LINE = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): (?P<msg>.*)$")


@dataclass(frozen=True)
class ProtoProblem:
    """One protoc diagnostic: the file (relative to the include root), 1-based position."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.col}: {self.message}"
        return f"{self.file}: {self.message}"


class ProtoError(Exception):
    """The proto does not compile. `problems` holds every diagnostic protoc gave."""

    def __init__(self, problems: list[ProtoProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems) or "protoc failed")


def _wkt_include() -> str:
    return str(resources.files("grpc_tools") / "_proto")


# protoc in a child process: the same grpcio-tools, run by this interpreter
_CHILD_PROTOC = "import sys; from grpc_tools import protoc; sys.exit(protoc.main(sys.argv))"
CHILD_TIMEOUT = 60.0


def _run_protoc(args: list[str], in_child: bool = False) -> tuple[int, str]:
    """Run protoc and capture what it writes to stderr: in process, or with `in_child` in a
    child process of the same interpreter. The child keeps grpcio-tools' compiler (about
    7 MB of resident memory once it has run) out of a long-lived process that needs it once.
    """
    if in_child:
        try:
            done = subprocess.run([sys.executable, "-c", _CHILD_PROTOC, *args],
                                  capture_output=True, timeout=CHILD_TIMEOUT,
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            return 1, f"protoc did not finish within {CHILD_TIMEOUT:g}s"
        return done.returncode, done.stderr.decode("utf-8", "replace")
    from grpc_tools import protoc

    with _LOCK, tempfile.TemporaryFile(mode="w+b") as err:
        saved = os.dup(2)
        try:
            os.dup2(err.fileno(), 2)
            code = protoc.main(["protoc", *args])
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        return code, err.read().decode("utf-8", "replace")


def _relative(file: str, root: Path) -> str:
    try:
        return str(Path(file).relative_to(root))
    except ValueError:
        return file


def _problems(stderr: str, default_file: str, root: Path) -> list[ProtoProblem]:
    out: list[ProtoProblem] = []
    for raw in stderr.splitlines():
        line = raw.strip()
        if not line:
            continue
        m = _PROTOC_LINE.match(line)
        if m:
            file = _relative(m["file"], root)
            out.append(ProtoProblem(file, int(m["line"]), int(m["col"]), m["msg"].strip()))
        else:
            out.append(ProtoProblem(default_file, 0, 0, line))
    return out


def _failure(stderr: str, proto: str, root: Path) -> ProtoError:
    problems = _problems(stderr, proto, root)
    return ProtoError(problems or [ProtoProblem(proto, 0, 0, "protoc failed")])


@dataclass
class CompiledProto:
    """A compiled proto: its descriptors, message classes and service."""

    file_set: descriptor_pb2.FileDescriptorSet
    pool: descriptor_pool.DescriptorPool
    proto: str  # the entry file, relative to the include root

    @property
    def services(self) -> list[ServiceDescriptor]:
        fd = self.pool.FindFileByName(self.proto)
        return [fd.services_by_name[name] for name in sorted(fd.services_by_name)]

    def methods(self) -> dict[str, MethodDescriptor]:
        """Every rpc of every service in the entry file, by rpc name."""
        out: dict[str, MethodDescriptor] = {}
        for service in self.services:
            for method in service.methods:
                out.setdefault(method.name, method)
        return out

    def message_class(self, descriptor: Descriptor | str) -> type[Message]:
        if isinstance(descriptor, str):
            descriptor = self.pool.FindMessageTypeByName(descriptor)
        return message_factory.GetMessageClass(descriptor)

    @property
    def files(self) -> list[str]:
        """The files the proto consists of (itself and what it imports), minus well-known types."""
        return sorted(f.name for f in self.file_set.file if not f.name.startswith("google/"))


def compile_proto(root: Path, proto: str, in_child: bool = False) -> CompiledProto:
    """Compile `root/proto` (and its imports) and load it into a fresh descriptor pool;
    `in_child`: run protoc in a child process (see :func:`_run_protoc`).

    Raises ProtoError with protoc's diagnostics when it does not compile.
    """
    root = Path(root)
    if not (root / proto).is_file():
        raise ProtoError([ProtoProblem(proto, 0, 0, "file not found")])
    with tempfile.TemporaryDirectory(prefix="kai-proto-") as tmp:
        out = Path(tmp) / "set.pb"
        code, stderr = _run_protoc(
            [
                f"-I{root}",
                f"-I{_wkt_include()}",
                "--include_imports",
                f"--descriptor_set_out={out}",
                proto,
            ],
            in_child,
        )
        if code != 0 or not out.exists():
            raise _failure(stderr, proto, root)
        file_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for fd in file_set.file:
        pool.Add(fd)
    return CompiledProto(file_set=file_set, pool=pool, proto=proto)


def generate_pb2(root: Path, proto: str, out_dir: Path) -> list[Path]:
    """Write `<stem>_pb2.py` for `root/proto` and every proto it imports into `out_dir`.

    Every file of the version the proto needs, directly or not, gets its module (the
    well-known types come with the installed protobuf). Generated with the protobuf
    runtime that is installed, so they always load. Returns the modules' paths, the
    entry file's first.
    """
    root = Path(root)
    names = sorted(f.name for f in compile_proto(root, proto).file_set.file)
    files = [f for f in names
             if f != proto and not f.startswith("google/protobuf/") and (root / f).is_file()]
    out_dir.mkdir(parents=True, exist_ok=True)
    code, stderr = _run_protoc(
        [f"-I{root}", f"-I{_wkt_include()}", f"--python_out={out_dir}", proto, *files]
    )
    if code != 0:
        raise _failure(stderr, proto, root)
    return [out_dir / (f[: -len(".proto")] + "_pb2.py") for f in (proto, *files)]
