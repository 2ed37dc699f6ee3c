"""renderer.krtfile: .krt archives are imported safely and built reproducibly."""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from renderer import krtfile
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


def pax_named(name: str) -> tuple[tarfile.TarInfo, bytes]:
    """A file whose name travels in a pax header (a ustar name cannot hold a NUL)."""
    info = tarfile.TarInfo("placeholder")
    info.pax_headers = {"path": name}
    return info, b"x"


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


def test_a_hard_link_to_an_earlier_file_gets_its_bytes(tmp_path: Path) -> None:
    archive = tar_gz(tmp_path / "a.krt", [
        file("krt.yml", KRT.encode()),
        file("src/main.py", b"print(1)"),
        link("src/hard.py", "./src/main.py", tarfile.LNKTYPE),
        link("other/deep/hard.py", "src/main.py", tarfile.LNKTYPE),
    ])
    got = extract_krt(archive, tmp_path / "t")
    for name in ("src/main.py", "src/hard.py", "other/deep/hard.py"):
        path = tmp_path / "t" / name
        assert path.read_bytes() == b"print(1)" and not path.is_symlink()
    assert (tmp_path / "t/src/hard.py").stat().st_ino != (tmp_path / "t/src/main.py").stat().st_ino
    assert got.members == 4 and got.size == len(KRT) + 3 * len(b"print(1)")


def test_a_big_file_and_its_hard_links(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # over one read chunk
    archive = tar_gz(tmp_path / "a.krt", [
        file("krt.yml", KRT.encode()), file("big.bin", data),
        link("a/big.bin", "big.bin", tarfile.LNKTYPE),
        link("b/big.bin", "big.bin", tarfile.LNKTYPE),
    ])
    extract_krt(archive, tmp_path / "t")
    for name in ("big.bin", "a/big.bin", "b/big.bin"):
        assert (tmp_path / "t" / name).read_bytes() == data


def test_names_with_dot_slash_and_a_top_dot_folder(tmp_path: Path) -> None:
    top = tarfile.TarInfo("./")
    top.type = tarfile.DIRTYPE
    archive = tar_gz(tmp_path / "a.krt", [(top, None), file("./krt.yml", KRT.encode()),
                                          file("./src//main.py")])
    extract_krt(archive, tmp_path / "t")
    assert (tmp_path / "t/krt.yml").read_text() == KRT
    assert (tmp_path / "t/src/main.py").is_file()


def test_modes_are_0644_or_0755_only(tmp_path: Path) -> None:
    run, plain, folder = file("run.sh"), file("data.txt"), tarfile.TarInfo("dir")
    run[0].mode, plain[0].mode = 0o6777, 0o4600
    folder.type, folder.mode = tarfile.DIRTYPE, 0o1777
    archive = tar_gz(tmp_path / "a.krt", [file("krt.yml"), run, plain, (folder, None),
                                          file("implied/x")])
    extract_krt(archive, tmp_path / "t")
    mode = {name: (tmp_path / "t" / name).stat().st_mode & 0o7777
            for name in ("run.sh", "data.txt", "dir", "implied", "implied/x")}
    assert mode == {"run.sh": 0o755, "data.txt": 0o644, "dir": 0o755, "implied": 0o755,
                    "implied/x": 0o644}


def test_dotdot_member(tmp_path: Path) -> None:
    archive = tar_gz(tmp_path / "a.krt", [file("krt.yml"), file("../evil.py")])
    assert refused(archive, tmp_path / "t") == (
        'a.krt: member "../evil.py" leaves the archive ("..")'
    )
    assert not (tmp_path / "evil.py").exists()


def test_absolute_member(tmp_path: Path) -> None:
    archive = tar_gz(tmp_path / "a.krt", [file("/tmp/evil.py")])
    assert refused(archive, tmp_path / "t") == 'a.krt: member "/tmp/evil.py" has an absolute path'


@pytest.mark.parametrize("target", ["/etc/passwd", "../../etc/passwd", "src/../../../x",
                                    "main.py", ".", "../v"])
def test_every_symlink_is_refused(tmp_path: Path, target: str) -> None:
    # even one that points inside: KRE's builder writes only files and folders
    archive = tar_gz(tmp_path / "a.krt", [file("krt.yml"), file("src/main.py"),
                                          link("src/evil", target)])
    assert refused(archive, tmp_path / "t") == (
        f'a.krt: member "src/evil" is a symlink (to "{target}"); '
        "a .krt holds only files and folders"
    )


def test_hardlink_escape(tmp_path: Path) -> None:
    archive = tar_gz(tmp_path / "a.krt", [file("krt.yml"),
                                          link("x", "/etc/passwd", tarfile.LNKTYPE)])
    assert refused(archive, tmp_path / "t") == (
        'a.krt: member "x" is a hard link to "/etc/passwd", not to an earlier regular file of '
        "the archive"
    )


@pytest.mark.parametrize("target", ["../krt.yml", "later.py", "src", "hard.py", "krt.yml/..",
                                    "", "src\\main.py"])
def test_a_hard_link_only_to_an_earlier_regular_file(tmp_path: Path, target: str) -> None:
    folder = tarfile.TarInfo("src")
    folder.type = tarfile.DIRTYPE
    archive = tar_gz(tmp_path / "a.krt", [
        file("krt.yml"), (folder, None), link("hard.py", "krt.yml", tarfile.LNKTYPE),
        link("x", target, tarfile.LNKTYPE), file("later.py"),
    ])
    assert refused(archive, tmp_path / "t") == (
        f'a.krt: member "x" is a hard link to {json.dumps(target)}, not to an earlier regular '
        "file of the archive"
    )


@pytest.mark.parametrize(("members", "message"), [
    ([file("krt.yml"), file("src/a.py"), file("./src/a.py")],
     'member "./src/a.py" appears twice in the archive'),
    ([file("krt.yml"), file("src"), file("src/a.py")],
     'member "src/a.py" lies inside "src", which is a file'),
    ([file("krt.yml"), file("src/a.py"), file("src")],
     'member "src" is a file, but other members lie inside it'),
    ([file("krt.yml"), file("src/a.py"), link("src", "krt.yml", tarfile.LNKTYPE)],
     'member "src" is a file, but other members lie inside it'),
    ([file("krt.yml"), file("C:/evil.py")], 'member "C:/evil.py" has an absolute path'),
    ([file("krt.yml"), file("src\\..\\evil.py")],
     'member "src\\\\..\\\\evil.py" has a backslash in its name'),
    ([file("krt.yml"), pax_named("a\x00b")],
     'member "a\\u0000b" has a control character in its name'),
    ([file("krt.yml"), file("a\nb")], 'member "a\\nb" has a control character in its name'),
    ([file("krt.yml"), file("./")], 'member "./" is a file without a name'),
])
def test_names_that_cannot_be_written(tmp_path: Path, members: list[tuple[tarfile.TarInfo,
                                                                          bytes]],
                                      message: str) -> None:
    archive = tar_gz(tmp_path / "a.krt", list(members))
    assert refused(archive, tmp_path / "t") == f"a.krt: {message}"


def test_device_file(tmp_path: Path) -> None:
    info = tarfile.TarInfo("dev")
    info.type = tarfile.CHRTYPE
    archive = tar_gz(tmp_path / "a.krt", [file("krt.yml"), (info, None)])
    assert refused(archive, tmp_path / "t") == 'a.krt: member "dev" is a device or special file'


def test_oversized_archive(tmp_path: Path) -> None:
    archive = tar_gz(tmp_path / "a.krt", [file("krt.yml"), file("big", b"x" * 2048)])
    assert refused(archive, tmp_path / "t", max_size=1024) == (
        'a.krt: the archive unpacks to more than 1024 bytes (refused at member "big")'
    )


def test_hard_links_count_towards_the_size(tmp_path: Path) -> None:
    archive = tar_gz(tmp_path / "a.krt", [file("krt.yml"), file("big", b"x" * 600),
                                          link("again", "big", tarfile.LNKTYPE)])
    assert refused(archive, tmp_path / "t", max_size=1024) == (
        'a.krt: the archive unpacks to more than 1024 bytes (refused at member "again")'
    )


def test_a_huge_extended_header_is_not_read(tmp_path: Path) -> None:
    # a pax header claiming 64 MiB of zeros (64 KiB compressed): refused, not read into memory
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    pax.size = 64 * 1024 * 1024
    stream = pax.tobuf(format=tarfile.USTAR_FORMAT) + bytes(pax.size)
    (tmp_path / "a.krt").write_bytes(gzip.compress(stream, compresslevel=1))
    assert refused(tmp_path / "a.krt", tmp_path / "t") == (
        "a.krt: a member's header is larger than 1 MiB"
    )


def test_a_lying_header_is_refused_before_reading(tmp_path: Path) -> None:
    # a header that claims 300 MiB, with no data behind it: refused at the header
    info = tarfile.TarInfo("huge.bin")
    info.size = 300 * 1024 * 1024
    (tmp_path / "a.krt").write_bytes(gzip.compress(info.tobuf(format=tarfile.PAX_FORMAT)))
    assert refused(tmp_path / "a.krt", tmp_path / "t") == (
        'a.krt: the archive unpacks to more than 256 MiB (refused at member "huge.bin")'
    )


def test_too_many_members(tmp_path: Path) -> None:
    archive = tar_gz(tmp_path / "a.krt", [file(f"f{i}") for i in range(5)])
    assert refused(archive, tmp_path / "t", max_members=4) == (
        'a.krt: the archive holds more than 4 members (refused at member "f4")'
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


def test_the_writer_never_goes_through_a_link_or_a_file(tmp_path: Path) -> None:
    # the header checks leave no link in the stage; the writer refuses one all the same
    stage = tmp_path / "stage"
    (stage / "real").mkdir(parents=True)
    (stage / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    (tmp_path / "outside").mkdir()
    (stage / "file").write_text("x")
    root = os.open(stage, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for parts in (["link"], ["link", "x"], ["file"], ["real", "..", "link"]):
            with pytest.raises(krtfile._Refused, match="on its path is not a folder"):
                os.close(krtfile._folder(root, parts, "m"))
        with pytest.raises(krtfile._Refused, match="already exists"):
            krtfile._create(root, "file", "m", 0o644)
        with pytest.raises(krtfile._Refused, match="not a folder"):
            krtfile._create(root, "link/new", "m", 0o644)
        os.close(krtfile._folder(root, ["real", "new"], "m"))
    finally:
        os.close(root)
    assert list((tmp_path / "outside").iterdir()) == []
    assert (stage / "real" / "new").is_dir()


@pytest.mark.parametrize(("name", "message"), [
    ("/".join(["a"] * 65), "is nested deeper than 64 folders"),
    ("a" * 1025, "has a name longer than 1024 characters"),
])
def test_names_too_deep_or_too_long(tmp_path: Path, name: str, message: str) -> None:
    archive = tar_gz(tmp_path / "a.krt", [file("krt.yml"), file(name)])
    assert message in refused(archive, tmp_path / "t")


def test_a_name_the_file_system_refuses_names_the_member(tmp_path: Path) -> None:
    name = "src/" + "n" * 300  # one part longer than a file name may be
    archive = tar_gz(tmp_path / "a.krt", [file("krt.yml"), file(name)])
    assert refused(archive, tmp_path / "t") == (
        f'a.krt: member "{name[:200]}...": cannot write it: File name too long'
    )


def test_a_full_disk_while_writing_leaves_nothing(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tar_gz(tmp_path / "a.krt", [file("krt.yml"), file("a/x"), file("b/y")])
    real_mkdir = os.mkdir

    def mkdir(path: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        if path == "b" and dir_fd is not None:  # the writer's folder "b"
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_mkdir(path, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mkdir", mkdir)
    assert refused(archive, tmp_path / "t") == (
        'a.krt: member "b/y": cannot write it: No space left on device'
    )


def test_a_long_run_of_extended_headers(tmp_path: Path) -> None:
    # tarfile reads each one with a deeper call: refused, not a crash
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, record = tarfile.XHDTYPE, b"11 a=bcdef\n"
    header.size = len(record)
    block = header.tobuf(format=tarfile.USTAR_FORMAT) + record + bytes(512 - len(record))
    stream = block * 3000 + tarfile.TarInfo("krt.yml").tobuf(format=tarfile.USTAR_FORMAT)
    (tmp_path / "a.krt").write_bytes(gzip.compress(stream + bytes(1024)))
    assert refused(tmp_path / "a.krt", tmp_path / "t") == (
        "a.krt: corrupt .krt archive: too many extended headers in a row"
    )
