"""renderer.krtfile: .krt archives are imported safely and built reproducibly."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from renderer.krtfile import build_krt, extract_krt
from renderer.problems import InputError

KRT = "version: greeter-v1\n"


def make_version(folder: Path) -> Path:
    (folder / "src" / "etl").mkdir(parents=True)
    (folder / "docs").mkdir()
    (folder / "krt.yml").write_text(KRT)
    (folder / "public_input.proto").write_text('syntax = "proto3";\n')
    (folder / "src" / "etl" / "main.py").write_text("def handler(ctx, data):\n    return data\n")
    (folder / "src" / "etl" / "__pycache__").mkdir()
    (folder / "src" / "etl" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    (folder / ".hidden").write_text("x")
    return folder


def tar_gz(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A .krt holding exactly `members` (data None: no content)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(buf.getvalue())
    return path


def file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def refused(archive: Path, target: Path, **limits: int) -> str:
    with pytest.raises(InputError) as info:
        extract_krt(archive, target, "a.krt", **limits)
    assert len(info.value.problems) == 1
    # nothing half-extracted is left behind
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir() if p.name.endswith(".partial")] == []
    return str(info.value)


def test_build_and_extract_round_trip(tmp_path: Path) -> None:
    version = make_version(tmp_path / "v")
    archive = build_krt(version, tmp_path / "out" / "greeter-v1.krt")
    with tarfile.open(archive) as tar:
        assert tar.getnames() == [
            "docs", "krt.yml", "public_input.proto", "src", "src/etl", "src/etl/main.py"
        ]
    got = extract_krt(archive, tmp_path / "x" / "greeter-v1")
    assert got.prefix == "" and got.members == 6
    assert got.size == sum(len(p.read_bytes()) for p in got.target.rglob("*") if p.is_file())
    assert (got.target / "src/etl/main.py").read_text() == (
        version / "src/etl/main.py"
    ).read_text()
    assert (got.target / "docs").is_dir()


def test_build_is_reproducible(tmp_path: Path) -> None:
    version = make_version(tmp_path / "v")
    one = build_krt(version, tmp_path / "one.krt").read_bytes()
    (version / "krt.yml").touch()
    assert build_krt(version, tmp_path / "two.krt").read_bytes() == one


def test_build_needs_a_manifest(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    with pytest.raises(InputError, match=r"no krt\.yml"):
        build_krt(tmp_path / "v", tmp_path / "v.krt")


def test_build_refuses_a_symlink_out(tmp_path: Path) -> None:
    version = make_version(tmp_path / "v")
    (tmp_path / "secret").write_text("s")
    (version / "src" / "leak").symlink_to(tmp_path / "secret")
    with pytest.raises(InputError, match="symlink leads outside the version"):
        build_krt(version, tmp_path / "v.krt")


def test_manifest_inside_one_top_level_folder(tmp_path: Path) -> None:
    archive = tar_gz(tmp_path / "a.krt", [
        file("greeter-v1/krt.yml", KRT.encode()),
        file("greeter-v1/src/main.py"),
        file("__MACOSX/._krt.yml"),
    ])
    got = extract_krt(archive, tmp_path / "t")
    assert got.prefix == "greeter-v1/"
    assert (tmp_path / "t" / "krt.yml").read_text() == KRT
    assert (tmp_path / "t" / "src" / "main.py").is_file()


def test_internal_links_are_kept(tmp_path: Path) -> None:
    archive = tar_gz(tmp_path / "a.krt", [
        file("krt.yml", KRT.encode()),
        file("src/main.py", b"print(1)"),
        link("src/alias.py", "main.py"),
        link("src/hard.py", "src/main.py", tarfile.LNKTYPE),
    ])
    extract_krt(archive, tmp_path / "t")
    assert (tmp_path / "t/src/alias.py").read_bytes() == b"print(1)"
    assert (tmp_path / "t/src/hard.py").read_bytes() == b"print(1)"


def test_dotdot_member(tmp_path: Path) -> None:
    archive = tar_gz(tmp_path / "a.krt", [file("krt.yml"), file("../evil.py")])
    assert refused(archive, tmp_path / "t") == (
        'a.krt: member "../evil.py" leaves the archive ("..")'
    )
    assert not (tmp_path / "evil.py").exists()


def test_absolute_member(tmp_path: Path) -> None:
    archive = tar_gz(tmp_path / "a.krt", [file("/tmp/evil.py")])
    assert refused(archive, tmp_path / "t") == 'a.krt: member "/tmp/evil.py" has an absolute path'


@pytest.mark.parametrize("target", ["/etc/passwd", "../../etc/passwd", "src/../../../x"])
def test_symlink_escape(tmp_path: Path, target: str) -> None:
    archive = tar_gz(tmp_path / "a.krt", [file("krt.yml"), link("src/evil", target)])
    assert refused(archive, tmp_path / "t") == (
        f'a.krt: member "src/evil" is a symlink pointing outside the archive ({target})'
    )


def test_symlink_escape_from_the_top_level_folder(tmp_path: Path) -> None:
    # inside the archive, but outside the version once its folder becomes the target
    archive = tar_gz(tmp_path / "a.krt", [file("v/krt.yml"), link("v/up", "../v")])
    assert refused(archive, tmp_path / "t") == (
        'a.krt: member "up" is a symlink pointing outside the version'
    )


def test_hardlink_escape(tmp_path: Path) -> None:
    archive = tar_gz(tmp_path / "a.krt", [file("krt.yml"),
                                          link("x", "/etc/passwd", tarfile.LNKTYPE)])
    assert refused(archive, tmp_path / "t") == (
        'a.krt: member "x" is a hard link to "/etc/passwd", not to an earlier file of the archive'
    )


def test_device_file(tmp_path: Path) -> None:
    info = tarfile.TarInfo("dev")
    info.type = tarfile.CHRTYPE
    archive = tar_gz(tmp_path / "a.krt", [file("krt.yml"), (info, None)])
    assert refused(archive, tmp_path / "t") == 'a.krt: member "dev" is a device or special file'


def test_oversized_archive(tmp_path: Path) -> None:
    archive = tar_gz(tmp_path / "a.krt", [file("krt.yml"), file("big", b"x" * 2048)])
    assert refused(archive, tmp_path / "t", max_size=1024) == (
        "a.krt: the archive unpacks to more than 1024 bytes"
    )


def test_a_lying_header_is_refused_before_reading(tmp_path: Path) -> None:
    # a header that claims 300 MiB, with no data behind it: refused at the header
    info = tarfile.TarInfo("huge.bin")
    info.size = 300 * 1024 * 1024
    (tmp_path / "a.krt").write_bytes(gzip.compress(info.tobuf(format=tarfile.PAX_FORMAT)))
    assert refused(tmp_path / "a.krt", tmp_path / "t") == (
        "a.krt: the archive unpacks to more than 256 MiB"
    )


def test_too_many_members(tmp_path: Path) -> None:
    archive = tar_gz(tmp_path / "a.krt", [file(f"f{i}") for i in range(5)])
    assert refused(archive, tmp_path / "t", max_members=4) == (
        "a.krt: the archive holds more than 4 members"
    )


def test_not_gzip(tmp_path: Path) -> None:
    (tmp_path / "a.krt").write_bytes(b"PK\x03\x04 a zip file")
    assert refused(tmp_path / "a.krt", tmp_path / "t") == (
        "a.krt: not a .krt file: expected a gzip-compressed tar archive"
    )


def test_corrupt_gzip(tmp_path: Path) -> None:
    good = tar_gz(tmp_path / "good.krt", [file("krt.yml", b"x" * 5000)]).read_bytes()
    (tmp_path / "a.krt").write_bytes(good[: len(good) // 2])
    assert refused(tmp_path / "a.krt", tmp_path / "t").startswith("a.krt: corrupt .krt archive: ")


def test_gzip_but_not_tar(tmp_path: Path) -> None:
    (tmp_path / "a.krt").write_bytes(gzip.compress(b"hello, not a tar"))
    assert refused(tmp_path / "a.krt", tmp_path / "t").startswith("a.krt: corrupt .krt archive: ")


def test_no_manifest(tmp_path: Path) -> None:
    archive = tar_gz(tmp_path / "a.krt", [file("a/krt.yml"), file("b/krt.yml")])
    assert refused(archive, tmp_path / "t") == (
        "a.krt: no krt.yml at the top of the archive or inside a single top-level folder"
    )


def test_target_must_be_new_or_empty(tmp_path: Path) -> None:
    archive = tar_gz(tmp_path / "a.krt", [file("krt.yml")])
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "keep").write_text("mine")
    with pytest.raises(InputError, match="exists and is not empty"):
        extract_krt(archive, tmp_path / "t", "a.krt")
    assert (tmp_path / "t" / "keep").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert extract_krt(archive, tmp_path / "empty").target == tmp_path / "empty"


def test_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        extract_krt(tmp_path / "nope.krt", tmp_path / "t", "nope.krt")
    assert str(info.value) == "nope.krt: cannot extract: No such file or directory"


def test_symlink_through_a_link_to_the_root(tmp_path: Path) -> None:
    # lexically inside, but `d` is the version root itself, so d/.. is its parent
    archive = tar_gz(tmp_path / "a.krt", [
        file("v/krt.yml"), link("v/d", "."), link("v/x", "d/../v/krt.yml"),
    ])
    assert refused(archive, tmp_path / "t") == (
        'a.krt: member "x" is a symlink pointing outside the version'
    )
