"""What a version's pods get: every file of the version but what is left out, through the
real CLI (kai init, add, start) into a rendered ConfigMap that kubernetes-validate accepts."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import yaml

from renderer.plan import CONFIGMAP_LIMIT
from renderer.project import DEFAULT_KUBERNETES_VERSION
from tests.integration.gitops_helpers import (
    clean,
    drop_build,
    kai,
    log,
    make_version,
    validate_strict,
)

pytestmark = pytest.mark.integration

TEXT_PY = "def shout(s: str) -> str:\n    return s.upper() + '!'\n"
LOOKUP = json.dumps({"ada": "Ada Lovelace"}) + "\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "gitops"
    kai("init", str(root), "--project", "demo", "--namespace", "kai-demo")
    return root


def rich_version(dst: Path) -> Path:
    """examples/greeter plus shared code, data, a .kaiignore'd folder, docs and caches."""
    version = make_version(dst, "rich-v1")
    extra: dict[str, bytes] = {
        "data/lookup.json": LOOKUP.encode(),
        "data/model.bin": bytes(range(256)),  # not UTF-8: travels as binaryData
        "src/common/__init__.py": b"",
        "src/common/text.py": TEXT_PY.encode(),
        ".kaiignore": b"# local experiments stay out of the pods (and of the GitOps repo)\n"
                      b"scratch/\n",
        "scratch/notes.txt": b"not for the pods",
        "scratch/big.bin": b"\0" * (CONFIGMAP_LIMIT + 1),  # would not fit: ignored, not counted
        "docs/index.md": b"# rich-v1\n",
        "src/etl/__pycache__/main.cpython-311.pyc": b"\0\0",
        "src/common/stale.pyc": b"\0",
    }
    for rel, data in extra.items():
        path = version / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return version


SHIPPED = [
    ".kaiignore", "README.md", "data/lookup.json", "data/model.bin", "krt.yml",
    "public_input.proto", "src/common/__init__.py", "src/common/text.py", "src/etl/main.py",
    "src/inference/main.py", "src/inference/rules.json", "src/output/main.py",
]


def configmap_files(folder: Path) -> tuple[str, dict[str, bytes]]:
    """The rendered ConfigMap's name and its files, as a pod's volume lays them out."""
    (cm_file,) = folder.glob("configmap-*.yaml")
    cm = yaml.safe_load(cm_file.read_text())
    by_key = {k: v.encode() for k, v in cm.get("data", {}).items()}
    by_key |= {k: base64.b64decode(v) for k, v in cm.get("binaryData", {}).items()}
    layouts = []
    for dep_file in sorted(folder.glob("deployment-*.yaml")):
        pod = yaml.safe_load(dep_file.read_text())["spec"]["template"]["spec"]
        (vol,) = [v for v in pod["volumes"] if v["name"] == "version"]
        assert vol["configMap"]["name"] == cm["metadata"]["name"]
        layouts.append({item["path"]: item["key"] for item in vol["configMap"]["items"]})
    assert layouts and all(layout == layouts[0] for layout in layouts)
    assert sorted(layouts[0].values()) == sorted(by_key)  # every key mounted, none missing
    return cm["metadata"]["name"], {path: by_key[key] for path, key in layouts[0].items()}


def test_the_pods_get_every_file_but_what_is_left_out(repo: Path, tmp_path: Path) -> None:
    source = rich_version(tmp_path / "src" / "rich-v1")
    assert kai("validate", str(source)).exit_code == 0
    kai("add", str(source), "--repo", str(repo))
    copy = repo / "versions" / "rich-v1"
    # the copy: what .kaiignore excludes and the caches stay behind; docs/ is kept in git
    copied = sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file())
    assert copied == sorted([*SHIPPED, "docs/index.md"])
    kai("start", "rich-v1", "--repo", str(repo))
    folder = repo / "rendered" / "demo" / "rich-v1"
    name, files = configmap_files(folder)
    assert sorted(files) == SHIPPED
    for rel, data in files.items():
        assert data == (source / rel).read_bytes(), rel
    assert files["src/common/text.py"] == TEXT_PY.encode()
    assert files["data/lookup.json"] == LOOKUP.encode()
    # the same files, the same ConfigMap: a second render changes nothing
    assert kai("render", "--check", "--repo", str(repo)).exit_code == 0
    assert clean(repo)

    validate_strict(sorted(str(p) for p in folder.glob("*.yaml")), DEFAULT_KUBERNETES_VERSION)

    # a data file edited in the version rolls the pods: a new ConfigMap name
    (copy / "data" / "lookup.json").write_text(json.dumps({"ada": "Countess"}) + "\n")
    kai("render", "--repo", str(repo))
    assert configmap_files(folder)[0] != name


def test_kai_add_refuses_a_version_too_large_for_a_configmap(repo: Path, tmp_path: Path) -> None:
    drop_build(repo)
    big = make_version(tmp_path / "big-v1", "big-v1")
    (big / "data").mkdir()
    (big / "data" / "table.csv").write_text("1," * (CONFIGMAP_LIMIT // 2 + 1))
    result = kai("add", str(big), "--repo", str(repo), ok=False)
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert re.fullmatch(
        r"error: version big-v1 needs an image of its own, since its files take 10\d\d KiB "
        r"\(10\d{5} bytes\) in a ConfigMap, more than the 1008 KiB \(1032192 bytes\) one "
        r"holds, but kai.yaml has no `build:`; add `build: \{registry: REGISTRY\}` to "
        r"kai\.yaml, with a registry you push to \(see docs/version-images\.md\)", line), line
    assert "Traceback" not in result.output
    assert not (repo / "versions" / "big-v1").exists()
    assert log(repo) == ["kai: init demo (namespace kai-demo)"]
    assert clean(repo)
    # excluded from what ships, the same file is fine, and kai add leaves it behind
    (big / ".kaiignore").write_text("data/\n")
    kai("add", str(big), "--repo", str(repo))
    assert not (repo / "versions" / "big-v1" / "data").exists()
    assert (repo / "versions" / "big-v1" / ".kaiignore").read_text() == "data/\n"
