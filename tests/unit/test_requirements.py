"""renderer.requirements: a version's requirements.txt read with packaging and checked
against an environment; `kai validate` refusing what a version image cannot install."""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
from pathlib import Path

import pytest

from renderer.cli.devvenv import cache_dir, venv_key
from renderer.problems import InputError
from renderer.requirements import installed_distributions, parse, unsatisfied
from renderer.validate import load_version

ROOT = Path(__file__).resolve().parent.parent.parent
ALLOWED = "write one requirement per line, as name[extras] version-specifier ; marker"


def refused(text: str) -> list[str]:
    with pytest.raises(InputError) as info:
        parse(text)
    return [str(p) for p in info.value.problems]


def test_blank_lines_and_comments_are_skipped_and_positions_kept() -> None:
    lines = parse("# what the nodes need\n\npandas>=1.5,<4  # data frames\n"
                  "   Six == 1.17.0\nnumpy; python_version >= '3'\n")
    assert [(x.line, x.col, x.text, x.name) for x in lines] == [
        (3, 1, "pandas>=1.5,<4", "pandas"),
        (4, 4, "Six == 1.17.0", "six"),
        (5, 1, "numpy; python_version >= '3'", "numpy"),
    ]


@pytest.mark.parametrize(("text", "where", "says"), [
    ("-r more.txt", "1:1", "pip option -r is not supported; list those requirements in this file"),
    ("six\n  -c pins.txt", "2:3", "pip option -c is not supported"),
    ("-e ./lib", "1:1", "pip option -e is not supported; editable installs"),
    ("--index-url https://example.com/simple", "1:1",
     "pip option --index-url is not supported; configure the package index in pip's own"),
    ("six==1.17.0 --hash=sha256:00", "1:13", "pip option --hash is not supported"),
    ("git+https://example.com/a/b.git", "1:1", "a URL is not supported"),
    ("https://example.com/lib-1.0.whl", "1:1", "a URL is not supported"),
    ("lib @ https://example.com/lib-1.0.whl", "1:5",
     "a direct reference (lib @ URL) is not supported"),
    ("./vendor/lib", "1:1", "a local path or archive is not supported"),
    ("dist/lib-1.0.tar.gz", "1:1", "a local path or archive is not supported"),
    ("lib-1.0-py3-none-any.whl", "1:1", "a local path or archive is not supported"),
    ("six==1.0 \\", "1:10", "a line continuation (\\) is not supported"),
    ("six==1.0 foo", "1:10", "not a requirement: Expected"),
])
def test_what_an_image_cannot_install_is_refused_with_its_position(
        text: str, where: str, says: str) -> None:
    [line] = refused(text)
    assert line.startswith(f"requirements.txt:{where}: {says}"), line
    if not line.startswith(f"requirements.txt:{where}: a line"):
        assert ALLOWED in line  # each says what is allowed


def test_every_refused_line_is_reported_at_once() -> None:
    lines = refused("-r a.txt\nsix\n-r b.txt\n")
    assert [x.split(": ")[0] for x in lines] == ["requirements.txt:1:1", "requirements.txt:3:1"]


def test_names_compare_canonically_and_versions_by_specifier() -> None:
    lines = parse("PyYAML>=6\nruamel.yaml>=0.18\nFoo_Bar.Baz==1.0\nold<2\nbeta>=1.0\n"
                  "gone==1.0\nwindows-only; sys_platform == 'win32'\nodd>=1\n")
    installed = {"pyyaml": "6.0.2", "ruamel-yaml": "0.18.6", "foo-bar-baz": "1.0",
                 "old": "2.1", "beta": "2.0rc1", "odd": "not-a-version"}
    missing = unsatisfied(lines, installed)
    # pre-releases count, as pip accepts an installed one; a marker for another platform
    # does not apply; a version packaging cannot read satisfies nothing
    assert [str(m.problem("versions/v/requirements.txt")) for m in missing] == [
        "versions/v/requirements.txt:4:1: old<2: 2.1 is installed",
        "versions/v/requirements.txt:6:1: gone==1.0: not installed",
        "versions/v/requirements.txt:8:1: odd>=1: not-a-version is installed",
    ]


def test_installed_distributions_lists_what_an_interpreter_sees() -> None:
    found = installed_distributions(sys.executable)
    assert found["click"] == importlib.metadata.version("click")
    assert found["ruamel-yaml"] == importlib.metadata.version("ruamel.yaml")  # canonical names
    assert "kai-no-such-package" not in found


def test_the_venv_key_follows_the_requirements_and_the_cache_follows_xdg() -> None:
    assert venv_key(b"six==1.17.0\n") == venv_key(b"six==1.17.0\n")
    assert venv_key(b"six==1.17.0\n") != venv_key(b"six==1.16.0\n")
    assert cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/kai/venvs")
    # the XDG spec: a relative value is ignored
    assert cache_dir({"XDG_CACHE_HOME": "rel"}) == Path.home() / ".cache" / "kai" / "venvs"


def greeter(tmp_path: Path, requirements: str, kaiignore: str | None = None) -> Path:
    version = tmp_path / "greeter"
    shutil.copytree(ROOT / "examples" / "greeter", version)
    (version / "requirements.txt").write_text(requirements)
    if kaiignore is not None:
        (version / ".kaiignore").write_text(kaiignore)
    return version


def test_validate_refuses_requirements_a_version_image_cannot_install(tmp_path: Path) -> None:
    version = greeter(tmp_path, "pandas>=2\n--extra-index-url https://example.com\n")
    with pytest.raises(InputError) as info:
        load_version(version, display_root=tmp_path)
    assert [str(p).split(": ")[0] for p in info.value.problems] == [
        "greeter/requirements.txt:2:1"]
    load_version(greeter(tmp_path / "ok", "pandas>=2  # fine\n"))


def test_validate_refuses_a_requirements_file_that_would_not_ship(tmp_path: Path) -> None:
    version = greeter(tmp_path, "pandas>=2\n", kaiignore="*.txt\n")
    with pytest.raises(InputError) as info:
        load_version(version, display_root=tmp_path)
    [problem] = info.value.problems
    assert str(problem) == (
        'greeter/requirements.txt: "requirements.txt" would not reach the pods: .kaiignore '
        "line 1 excludes it ('*.txt'); the version's requirements ship with it (its image "
        "installs them)")
