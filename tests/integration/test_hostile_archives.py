"""Hostile .krt archives through `kai validate` and `kai add`: each is refused with one line
naming the member, writes nothing outside, and leaks no outside file into the repo."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import secrets
import stat
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from renderer.cli import main
from renderer.krtfile import MAX_MEMBERS, MAX_UNPACKED, build_krt, extract_krt
from renderer.problems import InputError
from tests.conftest import EXAMPLES, git

pytestmark = pytest.mark.integration

GREETER = EXAMPLES / "greeter"
UP = "../" * 40  # from any folder on this machine, up to /
DEPTH = 20  # links in the re-pointed chain (Linux follows at most 40 in a row)

Member = tuple[tarfile.TarInfo, bytes | None]


# --- building archives from raw members ------------------------------------------------------


def info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", mode: int = 0o644,
         size: int = 0) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname, member.mode, member.size = kind, linkname, mode, size
    return member


def reg(name: str, data: bytes = b"x") -> Member:
    return info(name, size=len(data)), data


def folder(name: str) -> Member:
    return info(name, tarfile.DIRTYPE, mode=0o755), None


def sym(name: str, target: str) -> Member:
    return info(name, tarfile.SYMTYPE, target), None


def hard(name: str, target: str) -> Member:
    return info(name, tarfile.LNKTYPE, target), None


def special(name: str, kind: bytes) -> Member:
    return info(name, kind), None


def pack(path: Path, members: list[Member]) -> Path:
    """A gzipped tar holding exactly `members`, in order (sizes as declared in the headers)."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


def version_members() -> list[Member]:
    """examples/greeter as regular members: an archive that imports when nothing is added."""
    out: list[Member] = []
    for path in sorted(GREETER.rglob("*")):
        rel = path.relative_to(GREETER).as_posix()
        if "__pycache__" in rel:
            continue
        out.append(folder(rel) if path.is_dir() else reg(rel, path.read_bytes()))
    return out


# --- the sandbox -----------------------------------------------------------------------------


@dataclass
class Sandbox:
    root: Path
    outside: Path  # what no member may reach
    secret: Path  # a file there, holding `token`
    token: str
    repo: Path

    @property
    def outside_rel(self) -> str:
        """The outside folder as a path relative to /."""
        return self.outside.as_posix().lstrip("/")


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    token = f"kai-outside-secret-{secrets.token_hex(16)}"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(token + "\n")
    (outside / "keep").mkdir()
    temp = tmp_path / "tmp"  # every temporary folder lands in the sandbox too
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    repo = tmp_path / "gitops"
    assert kai("init", str(repo), "--project", "demo", "--namespace", "kai-demo").exit_code == 0
    yield Sandbox(tmp_path, outside, outside / "secret.txt", token, repo)


def kai(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[object, ...]]:
    """Every path under `root` (but `skip`) with its type, mode and content hash."""
    out: dict[str, tuple[object, ...]] = {}
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if Path(here, d) not in skip)
        for name in dirs + sorted(files):
            path = Path(here, name)
            st_ = path.lstat()
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(st_.st_mode):
                out[rel] = ("file", st_.st_mode, hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                out[rel] = ("other", st_.st_mode)
    return out


def git_text(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True).stdout \
        .decode("utf-8", "replace")


def assert_no_token_in_repo(box: Sandbox) -> None:
    token = box.token
    for path in (box.repo / "versions").rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert token.encode() not in path.read_bytes(), path
    assert token not in git_text(box.repo, "log", "-p", "--all")
    revs = git_text(box.repo, "rev-list", "--all").split()
    found = subprocess.run(["git", "grep", "-I", "-F", token, *revs], cwd=box.repo,
                           capture_output=True)
    assert found.returncode == 1, found.stdout  # 1: no match
    objects = subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"],
                             cwd=box.repo, check=True, capture_output=True).stdout
    assert token.encode() not in objects
    # and no copy anywhere else in the sandbox (leftover temporary files included)
    for here, _, files in os.walk(box.root):
        for name in files:
            path = Path(here, name)
            if path != box.secret and not path.is_symlink():
                assert token.encode() not in path.read_bytes(), path


# --- the hostile family ----------------------------------------------------------------------


def repointed_chain(box: Sandbox) -> tuple[list[Member], list[Member], list[Member]]:
    """Links that all point inside when each is written, until the first one is re-pointed.

    `L0 -> d/d/.../d` (DEPTH folders), and `Li -> L(i-1)/..`: each Li is a folder of the
    archive, the last one its top. Re-pointing `L0 -> .` makes each Li one folder further
    up, so the last is / (the archive is unpacked less than DEPTH folders deep). Returns
    (build, re-point, point back): the last puts every link inside again, for a check
    that runs at the end.
    """
    deep = "/".join(["d"] * DEPTH)
    build = [folder("/".join(["d"] * n)) for n in range(1, DEPTH + 1)]
    build.append(sym("L0", deep))
    build += [sym(f"L{i}", f"L{i - 1}/..") for i in range(1, DEPTH + 1)]
    return build, [sym("L0", ".")], [sym("L0", deep)]


def chain_write_hardlink(box: Sandbox) -> list[Member]:
    build, out, back = repointed_chain(box)
    return build + out + [hard(f"L{DEPTH}/{box.outside_rel}/pwned.txt", "krt.yml")] + back


def chain_write_file(box: Sandbox) -> list[Member]:
    build, out, back = repointed_chain(box)
    return build + out + [reg(f"L{DEPTH}/{box.outside_rel}/pwned.txt", b"pwned")] + back


def chain_read_hardlink(box: Sandbox) -> list[Member]:
    # a file named like the secret, seen inside while the chain points inside; then the
    # hard link to that name is taken when the chain points out
    build, out, back = repointed_chain(box)
    decoy = f"L{DEPTH}/{box.outside_rel}/secret.txt"
    return [*build, reg(decoy, b"decoy"), *out, hard("src/etl/leak.txt", decoy), *back]


def short_chain(box: Sandbox) -> list[Member]:
    return [sym("a", "b"), sym("b", "."), sym("b", "../../outside"), hard("a/x", "krt.yml"),
            reg("a/y", b"pwned")]


def many_members(count: int) -> bytes:
    """`count` empty folder members d/000000, d/000001, ..., gzipped (built header by header
    from one template: tarfile would take seconds)."""
    template = bytearray(info("d/000000", tarfile.DIRTYPE, mode=0o755)
                         .tobuf(format=tarfile.USTAR_FORMAT))
    template[148:156] = b" " * 8
    base = sum(template) - sum(template[2:8])
    blocks = []
    for i in range(count):
        digits = b"%06d" % i
        block = bytearray(template)
        block[2:8] = digits
        block[148:156] = b"%06o\0 " % (base + sum(digits))
        blocks.append(bytes(block))
    return gzip.compress(b"".join(blocks) + bytes(1024), compresslevel=1, mtime=0)


def zero_stream(members: list[tuple[str, int]]) -> bytes:
    """Regular members of `size` zero bytes each, gzipped chunk by chunk (never all in memory)."""
    gz = zlib.compressobj(1, zlib.DEFLATED, 31)
    out = []
    chunk = bytes(1024 * 1024)
    for name, size in members:
        out.append(gz.compress(info(name, size=size).tobuf(format=tarfile.USTAR_FORMAT)))
        for start in range(0, size, len(chunk)):
            out.append(gz.compress(chunk[: min(len(chunk), size - start)]))
        out.append(gz.compress(bytes(-size % 512)))
    out.append(gz.compress(bytes(1024)))
    out.append(gz.flush())
    return b"".join(out)


def sparse_bomb() -> Member:
    # a GNU sparse (pax 0.1) member: a terabyte declared, no data stored
    member = info("src/etl/sparse.bin")
    member.pax_headers = {"GNU.sparse.major": "0", "GNU.sparse.minor": "1",
                          "GNU.sparse.map": "0,0", "GNU.sparse.size": str(1 << 40)}
    return member, b""


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Sandbox, Path], object]  # writes the archive
    member: str  # what the error line says of the member ({out}: the outside folder)


def appended(extra: Callable[[Sandbox], list[Member]]) -> Callable[[Sandbox, Path], object]:
    """The greeter version, then `extra`."""
    return lambda box, path: pack(path, version_members() + extra(box))


def prepended(extra: Callable[[Sandbox], list[Member]]) -> Callable[[Sandbox, Path], object]:
    """`extra`, then the greeter version."""
    return lambda box, path: pack(path, extra(box) + version_members())


def raw(data: Callable[[], bytes]) -> Callable[[Sandbox, Path], object]:
    """An archive written byte by byte."""
    return lambda box, path: path.write_bytes(data())


CASES = [
    Case("symlink-out-absolute",
         appended(lambda b: [sym("src/etl/evil", str(b.outside))]), '"src/etl/evil"'),
    Case("symlink-out-relative",
         appended(lambda b: [sym("src/etl/evil", UP + b.outside_rel)]), '"src/etl/evil"'),
    Case("symlink-to-the-secret-then-read",
         appended(lambda b: [sym("src/etl/leak.txt", str(b.secret))]), '"src/etl/leak.txt"'),
    Case("symlink-inside-first",
         prepended(lambda b: [sym("alias.yml", "krt.yml")]), '"alias.yml"'),
    Case("hardlink-out-absolute",
         appended(lambda b: [hard("src/etl/leak.txt", str(b.secret))]), '"src/etl/leak.txt"'),
    Case("hardlink-out-relative",
         appended(lambda b: [hard("src/etl/leak.txt", UP + b.outside_rel + "/secret.txt")]),
         '"src/etl/leak.txt"'),
    Case("hardlink-to-a-folder",
         appended(lambda b: [hard("src/etl/x", "src")]), '"src/etl/x"'),
    Case("hardlink-to-a-later-member",
         appended(lambda b: [hard("src/etl/x", "src/etl/later.py"), reg("src/etl/later.py")]),
         '"src/etl/x"'),
    Case("absolute-name",
         appended(lambda b: [reg(str(b.outside / "pwned.txt"), b"pwned")]),
         '"{out}/pwned.txt"'),
    Case("dotdot-name",
         appended(lambda b: [reg(UP + b.outside_rel + "/pwned.txt", b"pwned")]),
         '"../../'),
    Case("dotdot-inside-name",
         appended(lambda b: [reg("src/../../pwned.txt", b"pwned")]), '"src/../../pwned.txt"'),
    Case("drive-name", appended(lambda b: [reg("C:/pwned.txt", b"pwned")]), '"C:/pwned.txt"'),
    Case("backslash-name",
         appended(lambda b: [reg("..\\..\\pwned.txt", b"pwned")]), r'"..\\..\\pwned.txt"'),
    Case("char-device", appended(lambda b: [special("src/etl/tty", tarfile.CHRTYPE)]),
         '"src/etl/tty"'),
    Case("block-device", appended(lambda b: [special("src/etl/sda", tarfile.BLKTYPE)]),
         '"src/etl/sda"'),
    Case("fifo", appended(lambda b: [special("src/etl/pipe", tarfile.FIFOTYPE)]),
         '"src/etl/pipe"'),
    Case("duplicate-name",
         appended(lambda b: [reg("krt.yml", b"version: other-v1\n")]), '"krt.yml"'),
    Case("chain-write-hardlink", appended(chain_write_hardlink), '"L0"'),
    Case("chain-write-file", appended(chain_write_file), '"L0"'),
    Case("chain-read-hardlink", appended(chain_read_hardlink), '"L0"'),
    Case("chain-short", appended(short_chain), '"a"'),
    Case("too-many-members", raw(lambda: many_members(10 * MAX_MEMBERS)),
         f'more than {MAX_MEMBERS} members (refused at member "d/{MAX_MEMBERS:06d}")'),
    Case("size-bomb-zeros",
         raw(lambda: zero_stream([("krt.yml", 10), ("a.bin", MAX_UNPACKED // 2),
                                    ("b.bin", MAX_UNPACKED // 2 + 1)])),
         'more than 256 MiB (refused at member "b.bin")'),
    Case("size-bomb-sparse", appended(lambda b: [sparse_bomb()]),
         'more than 256 MiB (refused at member "src/etl/sparse.bin")'),
]


@pytest.mark.parametrize("command", ["validate", "add"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_hostile_archive_is_refused(sandbox: Sandbox, case: Case, command: str) -> None:
    box = sandbox
    archive = box.root / "hostile.krt"
    case.build(box, archive)
    head = git(box.repo, "rev-parse", "HEAD")
    history = git(box.repo, "log", "--format=%H %s")
    before = snapshot(box.root, skip=(box.repo / ".git",))

    args = ["validate", str(archive)] if command == "validate" else \
        ["add", str(archive), "--repo", str(box.repo)]
    result = kai(*args)

    assert result.exit_code == 1, result.output + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    expected = case.member.replace("{out}", str(box.outside))
    assert "hostile.krt: " in lines[0] and expected in lines[0], lines[0]
    assert "Traceback" not in result.output + result.stderr
    # nothing written anywhere: outside, the temporary folder, the repo's work tree
    assert snapshot(box.root, skip=(box.repo / ".git",)) == before
    assert list((box.root / "tmp").iterdir()) == []
    assert git(box.repo, "rev-parse", "HEAD") == head
    assert git(box.repo, "log", "--format=%H %s") == history
    assert git(box.repo, "status", "--porcelain", "--untracked-files=all", "--ignored") == ""
    assert_no_token_in_repo(box)


def test_the_chain_archives_import_without_their_hostile_part(sandbox: Sandbox) -> None:
    # the family above fails for what it adds, not for a broken version
    archive = pack(sandbox.root / "plain.krt", version_members())
    assert kai("validate", str(archive)).exit_code == 0
    assert kai("add", str(archive), "--repo", str(sandbox.repo)).exit_code == 0


# --- what a good archive still does ------------------------------------------------------------


def test_a_normal_archive_with_a_hard_link_imports(sandbox: Sandbox) -> None:
    main_py = (GREETER / "src/etl/main.py").read_bytes()
    archive = pack(sandbox.root / "greeter-v1.krt", [
        folder("."), *version_members(), folder("docs"),
        hard("docs/etl-main.py", "./src/etl/main.py"),
        (info("src/etl/run.sh", mode=0o4755, size=3), b"ok\n"),
    ])
    checked = kai("validate", str(archive))
    assert checked.exit_code == 0, checked.output + checked.stderr
    added = kai("add", str(archive), "--repo", str(sandbox.repo))
    assert added.exit_code == 0, added.output + added.stderr
    version = sandbox.repo / "versions" / "greeter-v1"
    copy = version / "docs" / "etl-main.py"
    assert copy.read_bytes() == main_py and not copy.is_symlink()
    assert (version / "src/etl/main.py").read_bytes() == main_py
    assert (version / "src/etl/run.sh").stat().st_mode & 0o7000 == 0  # no setuid
    assert git(sandbox.repo, "log", "-1", "--format=%s").strip() == "kai: add greeter-v1"
    assert git(sandbox.repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert list((sandbox.root / "tmp").iterdir()) == []


def test_a_built_krt_imports(sandbox: Sandbox) -> None:
    archive = build_krt(GREETER, sandbox.root / "built" / "greeter-v1.krt")
    got = extract_krt(archive, sandbox.root / "unpacked")
    assert file_bytes(got.target) == file_bytes(GREETER)
    assert kai("validate", str(archive)).exit_code == 0
    assert kai("add", str(archive), "--repo", str(sandbox.repo)).exit_code == 0


# --- random member sequences -------------------------------------------------------------------

def members(parts: list[str], prefixes: list[str], kinds: list[str],
            targets: list[str]) -> st.SearchStrategy[
        list[tuple[str, str, str, int, bytes]]]:
    """Sequences of (kind, name, link target, n, data); a target "{earlier}" stands for the
    name of the nth member before, "{out}" for the outside folder, "{up}" for it reached by
    ..s."""
    name = st.tuples(st.sampled_from(prefixes),
                     st.lists(st.sampled_from(parts), min_size=1, max_size=3).map("/".join)
                     ).map("".join)
    target = st.one_of(name, st.sampled_from(targets))
    member = st.tuples(st.sampled_from(kinds), name, target, st.integers(1, 10),
                       st.binary(max_size=6))
    return st.lists(member, max_size=10)


MEMBERS = st.one_of(
    # anything: names with .. or absolute, symlinks and hard links anywhere
    members(["a", "b", "src", "krt.yml", "..", "."], ["", "", "", "/", "../"],
            ["file", "dir", "symlink", "hardlink"],
            ["{earlier}", "{out}", "{up}", "{out}/secret.txt", "/", ".", ""]),
    # mostly fine: what is left to catch is duplicates, files in the way, bad hard links
    members(["a", "b", "c", "d", "src", "main.py", "x.txt"], [""],
            ["file", "file", "dir", "hardlink"], ["{earlier}"] * 6 + ["{up}"]),
)


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([True, True, True, False]), MEMBERS)
def test_random_members_are_refused_or_stay_inside(
    manifest: bool, members: list[tuple[str, str, str, int, bytes]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        outside = root / "outside"
        outside.mkdir()
        (outside / "secret.txt").write_text("outside-secret")
        work = root / "work"
        work.mkdir()
        rel_out = outside.as_posix().lstrip("/")

        archive: list[Member] = [reg("krt.yml", b"version: v\n")] if manifest else []

        def fill(text: str, back: int) -> str:
            earlier = archive[-min(back, len(archive))][0].name if archive else "x"
            return text.replace("{out}", outside.as_posix()).replace("{up}", UP + rel_out) \
                .replace("{earlier}", earlier)

        for kind, name, target, back, data in members:
            if kind == "file":
                archive.append(reg(name, data))
            elif kind == "dir":
                archive.append(folder(name))
            else:
                archive.append((sym if kind == "symlink" else hard)(name, fill(target, back)))
        pack(root / "a.krt", archive)
        before = snapshot(root, skip=(work,))
        try:
            got = extract_krt(root / "a.krt", work / "t", "a.krt")
        except InputError as exc:
            assert len(exc.problems) == 1 and "\n" not in str(exc)
            assert list(work.iterdir()) == []  # all or nothing
        else:
            expect = expected_files(archive, got.prefix)
            seen: dict[str, bytes] = {}
            for here, dirs, files in os.walk(got.target):
                for name in dirs + files:
                    path = Path(here, name)
                    mode = path.lstat().st_mode
                    assert stat.S_ISDIR(mode) or stat.S_ISREG(mode), path
                    assert mode & 0o7777 in (0o644, 0o755), path
                    assert os.path.realpath(path).startswith(os.path.realpath(got.target) + "/")
                    if stat.S_ISREG(mode):
                        seen[path.relative_to(got.target).as_posix()] = path.read_bytes()
            assert seen == expect
        assert snapshot(root, skip=(work,)) == before


def file_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def expected_files(archive: list[Member], prefix: str) -> dict[str, bytes]:
    """What a successful import holds: every file or hard link member, with its bytes."""
    data: dict[str, bytes] = {}
    out: dict[str, bytes] = {}
    for member, content in archive:
        name = "/".join(PurePosixPath(member.name).parts)
        if member.isfile():
            data[name] = content or b""
        elif member.islnk():
            data[name] = data["/".join(PurePosixPath(member.linkname).parts)]
        else:
            continue
        if name.startswith(prefix):
            out[name[len(prefix):]] = data[name]
    return out
