"""Architecture rules that keep the runner image small and dev/prod from drifting."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_runner_never_imports_renderer() -> None:
    offenders = [
        str(p.relative_to(ROOT)) for p in sorted((ROOT / "runner").rglob("*.py"))
        if "renderer" in _imports(p)
    ]
    assert offenders == []


def test_runner_imports_without_renderer_dependencies() -> None:
    """The runner image has no jinja2, jsonschema, kubernetes-validate, ruamel.yaml or click."""
    code = (
        "import sys\n"
        "for name in ('jinja2', 'jsonschema', 'kubernetes_validate', 'click', 'ruamel',\n"
        "             'renderer'):\n"
        "    sys.modules[name] = None\n"
        "import runner.__main__, runner.node, runner.entrypoint, runner.supervisor\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_renderer_takes_the_environment_contract_from_the_runner() -> None:
    plan = _imports(ROOT / "renderer" / "plan.py")
    assert "runner" in plan


def test_runner_image_requirements_match_pyproject() -> None:
    """runner/requirements.txt (the image's install list) repeats pyproject's lines exactly."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [
        line.strip() for line in (ROOT / "runner" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines, "runner/requirements.txt lists nothing"
    missing = [line for line in lines if line not in deps]
    assert missing == []
    for renderer_only in ("click", "jinja2", "jsonschema", "kubernetes-validate", "pyyaml",
                          "ruamel.yaml"):
        assert not any(line.startswith(renderer_only) for line in lines)


def test_only_the_nats_transport_imports_nats() -> None:
    """The processes talk to the broker through runner.transport; nats-py stays behind it."""
    allowed = {"runner/transport/nats.py", "runner/transport/natscore.py",
               "runner/natsserver.py"}
    importers = {
        str(p.relative_to(ROOT)) for p in sorted((ROOT / "runner").rglob("*.py"))
        if "nats" in _imports(p)
    }
    assert importers <= allowed, sorted(importers - allowed)
    assert "runner/transport/nats.py" in importers  # the check sees the import it allows
    for process in ("entrypoint.py", "node.py", "process.py", "sdk.py"):
        assert "nats" not in _imports(ROOT / "runner" / process)


def test_import_check_sees_nested_and_dotted_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n    import nats.errors\n    from nats.aio.msg import Msg\n")
    assert "nats" in _imports(src)


def test_a_node_process_does_not_load_grpc() -> None:
    """grpc's core costs a node about 9 MB; its error codes are looked up only on failure."""
    code = (
        "import sys\n"
        "import runner.__main__, runner.node, runner.transport, runner.transport.nats\n"
        "assert 'grpc' not in sys.modules, 'runner.node imports grpc'\n"
        "from runner.transport import StepError\n"
        "import grpc\n"
        "assert StepError.of('NOT_FOUND', 'x').code is grpc.StatusCode.NOT_FOUND\n"
        "assert StepError.of('NO_SUCH_CODE', 'x').code is grpc.StatusCode.UNKNOWN\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_every_runner_package_is_packaged() -> None:
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "runner").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
