"""renderer.versionfiles: what `kai add` copies and what ships to the pods, on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from renderer.versionfiles import (
    VersionFilesError,
    copied_files,
    left_out,
    shipped_files,
)


def tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def shipped(root: Path) -> list[str]:
    return [rel for rel, _ in shipped_files(root)]


def copied(root: Path) -> list[str]:
    return [rel for rel, _ in copied_files(root)]


BASE = {
    "krt.yml": "version: v\n",
    "public_input.proto": "syntax = 'proto3';\n",
    "src/etl/main.py": "def handler(ctx, data): ...\n",
    "src/common/text.py": "X = 1\n",
    "data/lookup.json": "{}\n",
}


def test_every_file_ships_but_caches_vcs_and_docs(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        **BASE,
        "src/etl/__pycache__/main.cpython-311.pyc": b"\0",
        "src/etl/old.pyc": b"\0",
        "src/etl/old.pyo": b"\0",
        ".git/config": "[core]\n",
        "sub/.hg/x": "x",
        "sub/.svn/x": "x",
        ".DS_Store": b"\0",
        "docs/index.md": "# docs\n",
        "src/docs/kept.md": "only the top docs/ is left out\n",
        ".env.example": "hidden files that are not VCS folders ship\n",
    })
    assert shipped(root) == [".env.example", "data/lookup.json", "krt.yml",
                             "public_input.proto", "src/common/text.py", "src/docs/kept.md",
                             "src/etl/main.py"]
    # kai add keeps the documentation in git; the rest is the same rule
    assert copied(root) == sorted([*shipped(root), "docs/index.md"])


def test_kaiignore_uses_gitignore_rules(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        **BASE,
        ".kaiignore": "# comments and blank lines are nothing\n\nscratch/\n*.log\n!keep.log\n"
                      "/top.txt\ndata/**/*.tmp\n!scratch/back.txt\n",
        "scratch/notes.txt": "x",
        "scratch/back.txt": "a file in an excluded folder cannot come back (as in git)",
        "a/run.log": "x",
        "a/keep.log": "negation re-includes",
        "top.txt": "anchored: only at the top",
        "a/top.txt": "kept",
        "data/x/y/z.tmp": "x",
        "data/z.tmp": "** matches no folder too",
        "b/scratch": "scratch/ names folders only: a file called scratch stays",
    })
    assert shipped(root) == [".kaiignore", "a/keep.log", "a/top.txt", "b/scratch",
                             "data/lookup.json", "krt.yml", "public_input.proto",
                             "src/common/text.py", "src/etl/main.py"]
    assert copied(root) == shipped(root)


def test_krtignore_first_then_kaiignore_which_can_re_include(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        **BASE,
        ".krtignore": "*.csv\nnotebooks/\n",
        ".kaiignore": "!data/needed.csv\n",
        "data/big.csv": "x",
        "data/needed.csv": "x",
        "notebooks/a.ipynb": "{}",
    })
    assert shipped(root) == [".kaiignore", ".krtignore", "data/lookup.json", "data/needed.csv",
                             "krt.yml", "public_input.proto", "src/common/text.py",
                             "src/etl/main.py"]
    assert left_out(root, "data/big.csv") == ".krtignore line 1 excludes it ('*.csv')"
    assert left_out(root, "notebooks/a.ipynb") == ".krtignore line 2 excludes it ('notebooks/')"
    assert left_out(root, "data/needed.csv") is None


def test_the_copy_keeps_ignore_files_and_manifest_whatever_they_say(tmp_path: Path) -> None:
    root = tree(tmp_path, {**BASE, ".kaiignore": ".kaiignore\n.krtignore\nkrt.yml\n",
                           ".krtignore": "", "sub/krt.yml": "only the top one is kept"})
    assert {".kaiignore", "krt.yml", "sub/krt.yml"}.isdisjoint(shipped(root))
    assert {".kaiignore", ".krtignore", "krt.yml"} <= set(copied(root))
    assert "sub/krt.yml" not in copied(root)


def test_left_out_names_each_reason(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        **BASE,
        ".kaiignore": "scratch/\n",
        "scratch/a.py": "x",
        "docs/a.py": "x",
        "src/__pycache__/a.py": "x",
        "src/a.pyc": "x",
        ".git/a.py": "x",
    })
    assert left_out(root, "scratch/a.py") == ".kaiignore line 1 excludes it ('scratch/')"
    assert left_out(root, "docs/a.py") == \
        "docs/ is left out (the version's documentation stays in git)"
    assert left_out(root, "src/__pycache__/a.py") == \
        "generated caches (__pycache__/) are left out"
    assert left_out(root, "src/a.pyc") == "compiled Python (*.pyc, *.pyo) is left out"
    assert left_out(root, ".git/a.py") == "version-control folders (.git/) are left out"
    assert left_out(root, "src/etl/main.py") is None


def test_symlinks_follow_the_copy_rule(tmp_path: Path) -> None:
    outside = tree(tmp_path / "outside", {"secret.txt": "not part of the version"})
    root = tree(tmp_path / "v", BASE)
    os.symlink(root / "data" / "lookup.json", root / "data" / "alias.json")
    os.symlink(outside / "secret.txt", root / "data" / "secret.txt")
    os.symlink(root / "src", root / "linked-src")
    os.symlink(root / "missing", root / "dangling")
    assert shipped(root) == ["data/alias.json", "data/lookup.json", "krt.yml",
                             "public_input.proto", "src/common/text.py", "src/etl/main.py"]
    assert copied(root) == shipped(root)
    assert left_out(root, "data/secret.txt") == \
        "it is a symlink that does not lead to a file inside the version"
    assert left_out(root, "linked-src/etl/main.py") == \
        "linked-src/ is a symlink, and folders are not followed through symlinks"


def test_an_invalid_pattern_names_its_file_and_line(tmp_path: Path) -> None:
    root = tree(tmp_path, {**BASE, ".kaiignore": "ok/\n!\n"})
    with pytest.raises(VersionFilesError) as info:
        shipped_files(root)
    assert (info.value.file, info.value.line) == (".kaiignore", 2)
    assert info.value.message == "invalid pattern '!'; see gitignore's pattern format"
    (root / ".kaiignore").write_text("[z-a]\n")
    with pytest.raises(VersionFilesError) as info:
        shipped_files(root)
    assert str(info.value) == (".kaiignore:1: invalid pattern '[z-a]' (bad character range "
                               "z-a); see gitignore's pattern format")


def test_an_ignore_file_that_is_not_text(tmp_path: Path) -> None:
    root = tree(tmp_path, {**BASE, ".krtignore": b"\xff\xfe"})
    with pytest.raises(VersionFilesError, match=r"^\.krtignore: is not UTF-8 text"):
        copied_files(root)


def test_a_file_name_that_cannot_be_a_configmap_path(tmp_path: Path) -> None:
    root = tree(tmp_path, BASE)
    with open(os.fsencode(root) + b"/data/caf\xe9.txt", "wb") as fh:
        fh.write(b"x")
    assert len(copied(root)) == len(BASE) + 1  # git copes; a ConfigMap item path cannot
    with pytest.raises(VersionFilesError) as info:
        shipped_files(root)
    assert str(info.value) == ("data/caf\\udce9.txt: the file name is not valid UTF-8; rename "
                               "it, or exclude it in .kaiignore")
    (root / ".kaiignore").write_text("data/caf*\n")
    assert len(shipped(root)) == len(BASE) + 1  # the .kaiignore itself


def test_sockets_and_fifos_are_left_out(tmp_path: Path) -> None:
    root = tree(tmp_path, BASE)
    os.mkfifo(root / "data" / "pipe")
    assert "data/pipe" not in shipped(root)
    assert left_out(root, "data/pipe") == "it is not a regular file"


def test_an_ignore_file_linked_from_outside_is_not_read(tmp_path: Path) -> None:
    outside = tree(tmp_path / "outside", {"patterns": "data/\n\\\n"})
    root = tree(tmp_path / "v", BASE)
    os.symlink(outside / "patterns", root / ".kaiignore")
    assert "data/lookup.json" in shipped(root)
    os.unlink(root / ".kaiignore")
    os.symlink(root / "data" / "rules", root / ".kaiignore")
    (root / "data" / "rules").write_text("data/\n")
    assert "data/lookup.json" not in shipped(root)


def test_requirements_txt_ships_and_is_copied(tmp_path: Path) -> None:
    """A version image installs it and kai dev checks it: it travels with the version."""
    root = tree(tmp_path, {**BASE, "requirements.txt": "pandas>=2\n"})
    assert "requirements.txt" in shipped(root)
    assert "requirements.txt" in copied(root)
