"""The runner image flavors: runner/Dockerfile, docker-bake.hcl and runner/locks agree.

No Docker engine runs here, so these read the files: every flavor is a Dockerfile target
that installs its own lock, a bake target that builds that target under REGISTRY and TAG
for the machines its lock is resolved for, and a lock that pins the runner's requirements.
tests/integration/test_image_locks.py resolves the locks with pip.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from renderer.nodesource import RUNNER_PYTHON
from renderer.project import RUNNER_TAG
from runner.contract import VERSION_MOUNT
from runner.locks import lock

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "runner" / "Dockerfile"
BAKE = ROOT / "docker-bake.hcl"
UID = "10001"


# --- reading the Dockerfile ---------------------------------------------------------------

@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for instruction, args in self.instructions if instruction == keyword]


def _logical_lines(text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return lines


def _stages(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """The stages of a Dockerfile by name (an unnamed one by its number)."""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in _logical_lines(path.read_text(encoding="utf-8")):
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)(?: AS (\S+))?", args.strip(), re.IGNORECASE)
            assert match, f"{path}: FROM {args}"
            name = match[2] or str(len(stages))
            assert name not in stages, f"{path}: two stages named {name}"
            current = stages[name] = Stage(name, match[1])
        elif current is not None:
            current.instructions.append((instruction, args.strip()))
    return stages


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.args("ENV"):
        env.update(re.findall(r"(\w+)=(\S+)", args))
    return env


def _global_args() -> dict[str, str]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    head = text[:text.index("\nFROM ")]
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", head, re.MULTILINE))


# --- reading the bake file (HCL, as simply as this file is written) -----------------------

def _blocks(kind: str) -> dict[str, str]:
    text = BAKE.read_text(encoding="utf-8")
    return dict(re.findall(rf'^{kind} "([^"]+)" {{\n(.*?)^}}', text, re.MULTILINE | re.DOTALL))


def _attribute(body: str, name: str) -> object:
    match = re.search(rf"^\s*{name}\s*=\s*(.+)$", body, re.MULTILINE)
    assert match, f"no {name} in {body!r}"
    return json.loads(match[1])


# --- the flavors --------------------------------------------------------------------------

def test_every_flavor_is_a_dockerfile_target_that_installs_its_own_lock() -> None:
    stages = _stages()
    for flavor in lock.FLAVORS:
        assert flavor in stages, f"no stage {flavor} in runner/Dockerfile"
        runs = " ".join(stages[flavor].args("RUN"))
        installs = re.findall(r"locks/install\.sh (\S+) ", runs)
        assert installs == [flavor], f"{flavor} runs install.sh for {installs}"
        assert (lock.LOCKS / f"{flavor}.in").is_file()
        assert (lock.LOCKS / f"{flavor}.txt").is_file()


def test_every_flavor_runs_as_the_numeric_user_with_the_runner_entrypoint() -> None:
    stages = _stages()
    for flavor in lock.FLAVORS:
        stage = stages[flavor]
        assert stage.args("USER") == [f"{UID}:{UID}"], flavor
        # nothing but checks after the switch: the install runs as root, before it
        after_user = stage.instructions[[i for i, _ in stage.instructions].index("USER") + 1:]
        assert all(instruction == "RUN" and args.startswith("python -c ")
                   for instruction, args in after_user), flavor
        base = stages[stage.base]
        assert base.args("ENTRYPOINT") == ['["python", "-m", "runner"]'], flavor
        assert base.args("CMD") == ['["node"]'], flavor
        assert base.args("WORKDIR") == ["/tmp"], flavor
        env = _env(base)
        assert (env["HOME"], env["TMPDIR"], env["PYTHONDONTWRITEBYTECODE"]) \
            == ("/tmp", "/tmp", "1"), flavor


def test_the_two_bases_give_the_same_runtime_settings() -> None:
    bases = {_stages()[flavor].base for flavor in lock.FLAVORS}
    assert len(bases) == 2
    settings = []
    for name in sorted(bases):
        base = _stages()[name]
        env = {key: value for key, value in _env(base).items() if key != "PATH"}
        settings.append((env, base.args("EXPOSE"), base.args("ENTRYPOINT"), base.args("CMD"),
                         base.args("LABEL")))
    assert settings[0] == settings[1]


def test_the_ml_flavors_download_the_stopwords_where_nltk_looks() -> None:
    stages = _stages()
    for flavor in ("runner-ml", "runner-gpu"):
        assert _env(stages[flavor])["NLTK_DATA"] == "/usr/share/nltk_data"
        assert "NLTK_CORPORA=stopwords" in " ".join(stages[flavor].args("RUN"))
    assert "NLTK_CORPORA" not in " ".join(stages["runner"].args("RUN"))
    # runner-ml alone takes torch from the CPU index; runner-gpu takes PyPI's CUDA build
    assert "TORCH_INDEX=https://download.pytorch.org/whl/cpu" in " ".join(
        stages["runner-ml"].args("RUN"))
    assert "TORCH_INDEX" not in " ".join(stages["runner-gpu"].args("RUN"))


def test_every_image_runs_the_python_the_locks_resolve_for() -> None:
    major, minor = lock.PYTHON
    assert lock.PYTHON == RUNNER_PYTHON
    assert _global_args()["PYTHON_IMAGE"].startswith(f"python:{major}.{minor}-")
    cuda = " ".join(_stages()["cuda-base"].args("RUN"))
    assert f"python{major}.{minor} -m venv /opt/venv" in cuda
    assert _env(_stages()["cuda-base"])["PATH"].startswith("/opt/venv/bin:")


def test_install_script_is_valid_shell() -> None:
    subprocess.run(["sh", "-n", str(lock.LOCKS / "install.sh")], check=True, timeout=30)


# --- the bake file ------------------------------------------------------------------------

def test_the_bake_file_builds_every_flavor_under_registry_and_tag() -> None:
    variables = _blocks("variable")
    assert set(variables) == {"REGISTRY", "TAG"}
    assert _attribute(variables["TAG"], "default") == RUNNER_TAG
    groups = _blocks("group")
    assert _attribute(groups["default"], "targets") == list(lock.FLAVORS)
    targets = _blocks("target")
    common = targets["_flavor"]
    assert _attribute(common, "dockerfile") == "runner/Dockerfile"
    assert _attribute(common, "context") == "."
    for flavor in lock.FLAVORS:
        body = targets[flavor]
        assert _attribute(body, "inherits") == ["_flavor"], flavor
        assert _attribute(body, "target") == flavor, flavor
        assert _attribute(body, "tags") == [f"${{REGISTRY}}/{flavor}:${{TAG}}"], flavor
        assert _attribute(body, "platforms") \
            == [lock.DOCKER_PLATFORMS[machine] for machine in lock.MACHINES[flavor]], flavor


# --- the locks ----------------------------------------------------------------------------

def _included(requirements: Path) -> list[Path]:
    """`requirements` and every file it takes in with -r, depth first."""
    files = [requirements]
    for line in requirements.read_text(encoding="utf-8").splitlines():
        if line.startswith("-r "):
            files += _included((requirements.parent / line[3:].strip()).resolve())
    return files


@pytest.mark.parametrize("flavor", lock.FLAVORS)
def test_a_lock_is_written_as_lock_py_writes_it(flavor: str) -> None:
    """Sorted `name==version` lines under the header naming the regenerate command."""
    path = lock.LOCKS / f"{flavor}.txt"
    text = path.read_text(encoding="utf-8")
    assert text == lock.render_lock(flavor, lock.read_lock(path))
    assert f"python runner/locks/lock.py {flavor}" in text


@pytest.mark.parametrize("flavor", lock.FLAVORS)
def test_a_flavor_asks_for_the_runner_requirements_and_its_lock_satisfies_them(
        flavor: str) -> None:
    runner_requirements = ROOT / "runner" / "requirements.txt"
    assert runner_requirements in _included(lock.LOCKS / f"{flavor}.in")
    pins = lock.read_lock(lock.LOCKS / f"{flavor}.txt")
    checked = 0
    for line in runner_requirements.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        requirement = Requirement(line)
        for machine in lock.MACHINES[flavor]:
            marker = requirement.marker
            if marker is not None and not marker.evaluate(lock.marker_environment(machine)):
                continue
            name = lock.canonical_name(requirement.name)
            assert name in pins, f"{flavor}.txt does not pin {name}"
            assert requirement.specifier.contains(pins[name], prereleases=True), \
                f"{flavor}.txt pins {name}=={pins[name]}, the runner needs {requirement}"
            checked += 1
    assert checked >= 8


def test_the_ml_flavors_pin_torch_as_their_inputs_ask() -> None:
    for flavor in ("runner-ml", "runner-gpu"):
        pins = lock.read_lock(lock.LOCKS / f"{flavor}.txt")
        asked = "\n".join(path.read_text(encoding="utf-8")
                          for path in _included(lock.LOCKS / f"{flavor}.in"))
        for name in ("torch", "torchvision"):
            assert f"\n{name}=={pins[name]}\n" in asked, (flavor, name)


def test_the_docs_name_the_ml_releases_the_lock_pins() -> None:
    """docs/runner-image.md's KRE table gives major.minor of what runner-ml.txt pins."""
    pins = lock.read_lock(lock.LOCKS / "runner-ml.txt")
    text = (ROOT / "docs" / "runner-image.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| [^|]+ \| (.+) \|$", text[text.index("| kre-py 1.23 |"):],
                      re.MULTILINE)
    named = [(name, version) for name, version
             in re.findall(r"\b([A-Za-z][\w-]*) (\d+\.\d+)\b", " ".join(rows))
             if lock.canonical_name(name) in pins]  # not "CUDA 13.0"
    assert len(named) >= 10
    for name, version in named:
        pinned = pins[lock.canonical_name(name)]
        assert pinned == version or pinned.startswith(f"{version}."), (name, version, pinned)


# --- the example of an image built on a flavor ----------------------------------------

def test_the_custom_image_example_extends_a_flavor_within_its_pins() -> None:
    example = ROOT / "examples" / "custom-image"
    (stage,) = _stages(example / "Dockerfile").values()
    assert stage.base == f"${{REGISTRY}}/runner-ml:{RUNNER_TAG}"
    users = stage.args("USER")
    assert users[0] == "root" and users[-1] == f"{UID}:{UID}"
    assert [i for i, _ in stage.instructions][-1] == "USER"
    installs = [args for args in stage.args("RUN") if "pip install" in args]
    assert installs and all("-c /opt/kai/constraints.txt" in args for args in installs)
    for args in stage.args("COPY"):
        destination = args.split()[-1]
        assert not destination.startswith(VERSION_MOUNT), destination
    assert (example / "requirements.txt").is_file()
    assert (example / "models").is_dir()


# --- the build context --------------------------------------------------------------------

def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path, or a folder above it, decides."""
    parents = [path, *("/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 1))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _dockerignore_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in parents):
            ignored = not negated
    return ignored


def _context_sources() -> list[str]:
    """What the Dockerfile takes from the build context: COPY sources and bind mounts."""
    sources: list[str] = []
    for stage in _stages().values():
        for args in stage.args("COPY"):
            words = [word for word in args.split() if not word.startswith("--")]
            if "--from=" not in args:
                sources += words[:-1]
        for args in stage.args("RUN"):
            for mount in re.findall(r"--mount=(\S+)", args):
                options = dict(option.split("=", 1) for option in mount.split(","))
                if options.get("type") == "bind" and "from" not in options:
                    sources.append(options["source"])
    return sorted(set(sources))


def test_the_build_context_holds_what_the_dockerfile_takes_and_little_else() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = _context_sources()
    assert {"pyproject.toml", "README.md", "renderer", "runner", "templates"} <= set(sources)
    for source in sources:
        path = ROOT / source
        files = [path] if path.is_file() else [
            p for p in path.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
        assert files, source
        ignored = [str(p.relative_to(ROOT)) for p in files
                   if _ignored(p.relative_to(ROOT).as_posix(), patterns)]
        assert ignored == [], f"{source}: the Dockerfile needs these, .dockerignore drops them"
    for kept_out in (".git", ".venv", "tests/unit/test_image_flavors.py", "docs/runner-image.md",
                     "examples/custom-image/Dockerfile", "renderer/__pycache__/x.pyc"):
        assert _ignored(kept_out, patterns), kept_out


def test_the_dockerignore_reader_follows_dockers_rules() -> None:
    assert _ignored("docs/a/b.md", ["docs"])
    assert not _ignored("renderer/docs.py", ["docs"])
    assert _ignored("runner/x/__pycache__/y.pyc", ["**/__pycache__"])
    assert not _ignored("keep.md", ["*.md", "!keep.md"])


# --- lock.py's own errors -----------------------------------------------------------------

def test_lock_refuses_an_unknown_flavor_in_one_line() -> None:
    done = subprocess.run([sys.executable, str(lock.LOCKS / "lock.py"), "runner-xl"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr == ("error: unknown flavor 'runner-xl': the flavors are runner, "
                           "runner-ml, runner-gpu\n")


def test_lock_refuses_another_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    with pytest.raises(lock.LockError, match=r"resolve for CPython 3\.11 on Linux x86_64.*"
                       r"on linux aarch64: run it with CPython 3\.11 on Linux x86_64"):
        lock.check_interpreter()


def test_read_lock_names_the_line_it_cannot_read(tmp_path: Path) -> None:
    bad = tmp_path / "x.txt"
    bad.write_text("# header\nnumpy==2.4.6\npandas>=3\n")
    with pytest.raises(lock.LockError, match=r"x\.txt:3:1: expected name==version, got "
                       r"'pandas>=3'"):
        lock.read_lock(bad)
    bad.write_text("Jinja2==3.1.6\njinja2==3.1.5\n")
    with pytest.raises(lock.LockError, match=r"x\.txt:2:1: jinja2 is pinned twice"):
        lock.read_lock(bad)


def test_merge_pins_refuses_a_name_that_resolves_apart_per_machine() -> None:
    merged = lock.merge_pins("runner", {"x86_64": {"a": "1", "b": "2"}, "aarch64": {"a": "1"}})
    assert merged == {"a": "1", "b": "2"}
    with pytest.raises(lock.LockError, match=r"runner: a resolves to 1 on x86_64 and to 2 on "
                       r"aarch64; pin it in runner/locks/runner\.in"):
        lock.merge_pins("runner", {"x86_64": {"a": "1"}, "aarch64": {"a": "2"}})


def test_pip_runs_on_pypi_only_whatever_this_machine_configures() -> None:
    env = lock.pip_environment({"PIP_FIND_LINKS": "/opt/wheels", "PIP_CONSTRAINT": "/x",
                                "PIP_EXTRA_INDEX_URL": "file:///opt/pypi", "PIP_CERT": "/ca",
                                "PATH": "/bin"})
    assert env["PIP_CONFIG_FILE"] == os.devnull
    assert "PIP_FIND_LINKS" not in env and "PIP_CONSTRAINT" not in env
    assert "PIP_EXTRA_INDEX_URL" not in env
    assert (env["PIP_CERT"], env["PATH"]) == ("/ca", "/bin")


def test_the_resolve_command_is_for_the_images_not_this_host() -> None:
    command = lock.resolve_command(Path("/venv/bin/python"),
                                   lock.Resolution("runner", "aarch64", constrained=True),
                                   Path("/tmp/r.json"))
    joined = " ".join(command)
    assert "--dry-run --ignore-installed" in joined
    assert "--only-binary=:all: --python-version 3.11" in joined
    assert "--platform manylinux_2_28_aarch64" in joined
    assert "--platform manylinux2014_aarch64" in joined
    assert "x86_64" not in joined
    assert command[-4:] == ["-c", str(lock.LOCKS / "runner.txt"),
                            "-r", str(lock.LOCKS / "runner.in")]
