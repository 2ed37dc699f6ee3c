"""krt.yml as KRE 1.x accepted it: ignored keys and KRE's name limit warn, null lists are
empty, typos stay errors, --strict refuses the warnings, and Go nodes are refused.

The manifests below mimic the shapes KRE's greeter template and the price-estimator
example had over time (entrypoint with proto, image and src; nodes; sequential workflows).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from renderer.cli import main
from renderer.krt import Config
from renderer.problems import InputError, InputWarning
from renderer.validate import load_version, validate_path

SRC_IGNORED = ("warning: entrypoint.src is ignored (KRE 1.x ignored it too: the entrypoint "
               "is generated from the proto)")
GO_LATER = "Go nodes are not supported yet"

# --- the manifests ---------------------------------------------------------------------------

GREETER_ONE_WORKFLOW = """\
version: greeter-v1
description: Version for testing.
entrypoint:
  proto: public_input.proto
  image: konstellation/kre-runtime-entrypoint:latest
  src: src/entrypoint/entrypoint.py

nodes:
  - name: greeter
    image: konstellation/kre-py:1.2.0
    src: src/greeter/main.py

workflows:
  - name: greeting-workflow
    entrypoint: Greet
    sequential:
      - greeter
"""

GREETER_LATEST = GREETER_ONE_WORKFLOW.replace("kre-py:1.2.0", "kre-py:latest")

GREETER_TWO_WORKFLOWS = """\
version: greeter-v1
description: Version for testing.
entrypoint:
  proto: public_input.proto
  image: konstellation/kre-runtime-entrypoint:latest
  src: src/entrypoint/entrypoint.py

nodes:
  - name: greeter
    image: konstellation/kre-py:latest
    src: src/greeter/main.py

workflows:
  - name: greeting
    entrypoint: Greet
    sequential:
      - greeter

  - name: saluting
    entrypoint: Salute
    sequential:
      - greeter
"""

GREETER_GPU = """\
version: greeter-v1
description: Version for testing.
entrypoint:
  proto: public_input.proto
  image: konstellation/kre-entrypoint:1.6.0
  src: src/entrypoint/entrypoint.py

config:
  variables:
  files:

nodes:
  - name: py-greeter
    image: konstellation/kre-py:1.23.0
    src: src/py-greeter/main.py
    # gpu is an optional value, defaults to false.
    gpu: false

workflows:
  - name: py-greeting
    entrypoint: PyGreet
    sequential:
      - py-greeter
"""

GREETER_PY_AND_GO = """\
version: greeter-v1
description: Version for testing.
entrypoint:
  proto: public_input.proto
  image: konstellation/kre-entrypoint:latest
  src: src/entrypoint/entrypoint.py

nodes:
  - name: py-greeter
    image: konstellation/kre-py:latest
    src: src/py-greeter/main.py
    gpu: false

  - name: go-greeter
    image: konstellation/kre-go:latest
    src: bin/go-greeter
    gpu: false

workflows:
  - name: py-greeting
    entrypoint: PyGreet
    sequential:
      - py-greeter

  - name: go-greeting
    entrypoint: GoGreet
    sequential:
      - go-greeter
"""

GO_GREETER = """\
version: go-greeter-v5
description: Version for testing.
entrypoint:
  proto: public_input.proto
  image: konstellation/kre-runtime-entrypoint:latest
  src: src/entrypoint/entrypoint.py

nodes:
  - name: greeter
    image: konstellation/kre-go:1.0.2
    src: bin/greeter

workflows:
  - name: greeting-workflow
    entrypoint: Greet
    sequential:
      - greeter
"""

PRICE_ESTIMATOR = """\
version: price-estimator-v1
description: New Room Price predictions.

entrypoint:
  proto: public_input.proto
  image: konstellation/kre-entrypoint:1.6.0
  src: src/entrypoint/entrypoint.py

config:
  variables:
    - OUTPUT_PRICE_CURRENCY
  files:

nodes:
  - name: etl
    image: konstellation/kre-py:1.23.1
    src: src/etl/main.py
  - name: model
    image: konstellation/kre-py:1.23.1
    src: src/model/main.py
  - name: output
    image: konstellation/kre-py:1.23.1
    src: src/output/main.py
  - name: save-metric
    image: konstellation/kre-py:1.23.1
    src: src/save-prediction-metric/main.py

workflows:
  - name: ny-room-price
    entrypoint: MakePrediction
    sequential:
      - etl
      - model
      - output
  - name: save-metric
    entrypoint: SavePredictionMetric
    sequential:
      - save-metric
"""

RPCS = ("Greet", "Salute", "PyGreet", "GoGreet", "MakePrediction", "SavePredictionMetric")
PROTO = 'syntax = "proto3";\npackage main;\nmessage Request { string name = 1; }\n' \
    "message Response { string greeting = 1; }\nservice Entrypoint {\n" \
    + "".join(f"  rpc {rpc} (Request) returns (Response);\n" for rpc in RPCS) + "}\n"


def write(folder: Path, krt: str) -> Path:
    """A version with `krt` as its manifest, each .py node a module, each other src a
    binary, and KRE's generated entrypoint code next to them (as .krt files had it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "krt.yml").write_text(krt)
    (folder / "public_input.proto").write_text(PROTO)
    data: dict[str, Any] = yaml.safe_load(krt)
    srcs = [n["src"] for n in data.get("nodes") or [] if isinstance(n, dict) and "src" in n]
    for src in [*srcs, "src/entrypoint/entrypoint.py"]:
        path = folder / src
        path.parent.mkdir(parents=True, exist_ok=True)
        if src.endswith(".py"):
            path.write_text("def handler(ctx, data):\n    return data\n")
        else:
            path.write_bytes(b"\x7fELF\x02\x01\x01\x00")
    return folder


def kai(*args: str, cwd: Path) -> Any:
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)


def problems(folder: Path, root: Path, strict: bool = False) -> list[str]:
    with pytest.raises(InputError) as info:
        load_version(folder, root, strict=strict)
    return [str(p) for p in info.value.problems]


# --- accepted with a warning -----------------------------------------------------------------


@pytest.mark.parametrize(("krt", "line"), [
    (GREETER_ONE_WORKFLOW, 6), (GREETER_LATEST, 6), (GREETER_TWO_WORKFLOWS, 6),
    (GREETER_GPU, 6), (PRICE_ESTIMATOR, 7),
], ids=["greeter", "greeter-latest", "greeter-two-workflows", "greeter-gpu-null-config",
        "price-estimator"])
def test_kre_manifests_validate_with_one_warning(tmp_path: Path, krt: str, line: int) -> None:
    write(tmp_path / "v", krt)
    result = kai("validate", "v", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stderr == f"v/krt.yml:{line}:3: {SRC_IGNORED}\n"
    assert result.stdout.startswith("ok: ")


def test_the_warning_is_data_too(tmp_path: Path) -> None:
    version = load_version(write(tmp_path / "v", PRICE_ESTIMATOR), tmp_path)
    assert version.warnings == (InputWarning(
        "v/krt.yml", 7, 3, "entrypoint.src",
        "is ignored (KRE 1.x ignored it too: the entrypoint is generated from the proto)"),)
    assert version.config == Config(variables=("OUTPUT_PRICE_CURRENCY",))
    # warnings are not part of what a version is
    without = write(tmp_path / "w", PRICE_ESTIMATOR.replace(
        "  src: src/entrypoint/entrypoint.py\n", ""))
    assert load_version(without, tmp_path).warnings == ()
    assert load_version(without, tmp_path).nodes == version.nodes


def test_json_lists_the_warnings(tmp_path: Path) -> None:
    write(tmp_path / "v", GREETER_ONE_WORKFLOW)
    result = kai("validate", "--json", "v", cwd=tmp_path)
    assert result.exit_code == 0 and result.stderr == ""
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and doc["problems"] == []
    assert doc["warnings"] == [{
        "file": "v/krt.yml", "line": 6, "col": 3, "path": "entrypoint.src",
        "message": "is ignored (KRE 1.x ignored it too: the entrypoint is generated from "
                   "the proto)",
    }]


@pytest.mark.parametrize("config", [
    "config:\n", "config: null\n", "config:\n  variables:\n", "config:\n  files: ~\n",
    "config:\n  variables: null\n  files: null\n",
])
def test_null_config_counts_as_empty(tmp_path: Path, config: str) -> None:
    krt = GREETER_ONE_WORKFLOW.replace("  src: src/entrypoint/entrypoint.py\n", "")
    krt = krt.replace("nodes:", config + "nodes:")
    version = load_version(write(tmp_path / "v", krt), tmp_path)
    assert version.config == Config() and version.warnings == ()


def test_lists_kre_refused_as_null_stay_refused(tmp_path: Path) -> None:
    krt = GREETER_ONE_WORKFLOW.replace("    sequential:\n      - greeter\n", "    sequential:\n")
    write(tmp_path / "v", krt)
    assert problems(tmp_path / "v", tmp_path) == [
        "v/krt.yml:16:16: workflows[0].sequential: expected a list, got nothing (null)"]
    write(tmp_path / "w", "version: w\ndescription: d\nentrypoint: {proto: public_input.proto"
                          ", image: i}\nnodes:\nworkflows:\n")
    assert problems(tmp_path / "w", tmp_path) == [
        "w/krt.yml:4:7: nodes: expected a list, got nothing (null)",
        "w/krt.yml:5:11: workflows: expected a list, got nothing (null)",
    ]


def test_krt_version_v1_is_ignored_and_v2_refused(tmp_path: Path) -> None:
    krt = "krtVersion: v1\n" + GREETER_ONE_WORKFLOW
    version = load_version(write(tmp_path / "v", krt), tmp_path)
    assert [str(w) for w in version.warnings] == [
        "v/krt.yml:1:1: warning: krtVersion is ignored (KRE 8 marked KRT v1 manifests with it, "
        "the only format KAI reads)",
        f"v/krt.yml:7:3: {SRC_IGNORED}",
    ]
    write(tmp_path / "v2", krt.replace("krtVersion: v1", "krtVersion: v2"))
    with pytest.raises(InputError) as info:
        load_version(tmp_path / "v2", tmp_path)
    assert [str(p) for p in info.value.problems] == [
        'v2/krt.yml:1:13: krtVersion: must be one of: v1; got "v2": KAI reads KRT v1 manifests '
        "only (nodes, and workflows with sequential); KRT v2 (workflows that list their own "
        "nodes) is not supported"
    ]
    assert [w.path for w in info.value.warnings] == ["entrypoint.src"]  # not krtVersion


_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    krt_version=st.booleans(),
    src=st.one_of(st.just(None), st.just("src/entrypoint/entrypoint.py"), _SCALAR,
                  st.lists(_SCALAR, max_size=2)),
    with_src=st.booleans(),
    config=st.sampled_from([None, {}, {"variables": None}, {"files": None},
                            {"variables": None, "files": None}, {"variables": ["API_KEY"]}]),
    suffix=st.sampled_from(["", "-abcdefghi", "-abcdefghijklmn"]),
)
def test_fuzz_kre_leniency(krt_version: bool, src: Any, with_src: bool, config: Any,
                           suffix: str) -> None:
    """Whatever mix of ignored keys, null lists and long names: the version loads, each
    ignored key and long name is one warning, and --strict refuses exactly those."""
    data: dict[str, Any] = yaml.safe_load(GREETER_ONE_WORKFLOW)
    data["version"] += suffix
    data["nodes"][0]["name"] += suffix
    data["workflows"][0]["sequential"] = [data["nodes"][0]["name"]]
    if krt_version:
        data["krtVersion"] = "v1"
    if with_src:
        data["entrypoint"]["src"] = src
    else:
        del data["entrypoint"]["src"]
    data["config"] = config
    with tempfile.TemporaryDirectory() as tmp:
        _check_leniency(Path(tmp), data, krt_version, with_src)


def _check_leniency(tmp_path: Path, data: dict[str, Any], krt_version: bool,
                    with_src: bool) -> None:
    folder = write(tmp_path / "v", yaml.safe_dump(data, sort_keys=False))
    version = load_version(folder, tmp_path)
    expected = {"krtVersion"} if krt_version else set()
    expected |= {"entrypoint.src"} if with_src else set()
    expected |= {path for path, name in (("version", data["version"]),
                                         ("nodes[0].name", data["nodes"][0]["name"]))
                 if len(name) >= 20}
    assert sorted(w.path for w in version.warnings) == sorted(expected)
    assert list(version.warnings) == sorted(version.warnings)
    if expected:
        with pytest.raises(InputError) as info:
            load_version(folder, tmp_path, strict=True)
        assert [p.path for p in info.value.problems] == [w.path for w in version.warnings]
    else:
        assert load_version(folder, tmp_path, strict=True) == version


# --- still refused ---------------------------------------------------------------------------


def test_a_typo_is_still_an_error(tmp_path: Path) -> None:
    krt = GREETER_ONE_WORKFLOW.replace("  src: src/entrypoint", "  scr: src/entrypoint")
    krt = krt.replace("    src: src/greeter/main.py", "    src: src/greeter/main.py\n    gpus: 1")
    write(tmp_path / "v", krt)
    result = kai("validate", "v", cwd=tmp_path)
    assert result.exit_code == 1 and result.stdout == ""
    # a typo is not steered towards the ignored key, which `allowed` does not offer either
    assert result.stderr.splitlines() == [
        'v/krt.yml:6:3: entrypoint.scr: unknown field "scr"; allowed: proto, image',
        'v/krt.yml:12:5: nodes[0].gpus: unknown field "gpus" (did you mean "gpu"?); allowed: '
        "name, image, src, gpu, replicas, resources, autoscaling",
    ]


def test_src_is_ignored_only_under_entrypoint(tmp_path: Path) -> None:
    krt = GREETER_ONE_WORKFLOW.replace("    entrypoint: Greet\n",
                                       "    entrypoint: Greet\n    src: x.py\n")
    write(tmp_path / "v", krt)
    assert problems(tmp_path / "v", tmp_path) == [
        'v/krt.yml:16:5: workflows[0].src: unknown field "src"; allowed: name, entrypoint, '
        "sequential, delivery"]


def test_errors_and_warnings_print_together_sorted(tmp_path: Path) -> None:
    krt = GREETER_TWO_WORKFLOWS.replace("      - greeter\n\n", "      - ghost\n\n")
    krt = krt.replace("name: saluting", "name: saluting-everyone-twice")
    write(tmp_path / "v", krt)
    result = kai("validate", "v", cwd=tmp_path)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"v/krt.yml:6:3: {SRC_IGNORED}",
        'v/krt.yml:17:9: workflows[0].sequential[0]: node "ghost" is not defined '
        "(defined: greeter)",
        'v/krt.yml:19:11: warning: workflows[1].name "saluting-everyone-twice" is 23 characters '
        "long; KRE 1.x would refuse this (its names were shorter than 20 characters)",
    ]


# --- --strict --------------------------------------------------------------------------------


def test_strict_turns_warnings_into_errors(tmp_path: Path) -> None:
    write(tmp_path / "v", GREETER_TWO_WORKFLOWS)
    result = kai("validate", "--strict", "v", cwd=tmp_path)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        "v/krt.yml:6:3: entrypoint.src: is ignored (KRE 1.x ignored it too: the entrypoint is "
        "generated from the proto) [--strict]\n")
    doc = json.loads(kai("validate", "--strict", "--json", "v", cwd=tmp_path).stdout)
    assert doc["ok"] is False and doc["warnings"] == [] and doc["versions"] == []
    assert [p["path"] for p in doc["problems"]] == ["entrypoint.src"]
    clean = GREETER_TWO_WORKFLOWS.replace("  src: src/entrypoint/entrypoint.py\n", "")
    (tmp_path / "v" / "krt.yml").write_text(clean)
    result = kai("validate", "--strict", "v", cwd=tmp_path)
    assert result.exit_code == 0 and result.stderr == ""


def test_strict_in_a_repo_and_an_archive(tmp_path: Path) -> None:
    from renderer.krtfile import build_krt

    root = tmp_path / "repo"
    write(root / "versions" / "greeter-v1", GREETER_ONE_WORKFLOW)
    (root / "kai.yaml").write_text("project: demo\nnamespace: kai-demo\nversions:\n"
                                   "  greeter-v1: {state: stopped}\n")
    report = validate_path(root, tmp_path)
    assert report.ok and [str(w) for w in report.warnings] == [
        f"repo/versions/greeter-v1/krt.yml:6:3: {SRC_IGNORED}"]
    assert report.lines() == [str(w) for w in report.warnings]
    strict = validate_path(root, tmp_path, strict=True)
    assert not strict.ok and strict.versions == () and strict.warnings == ()
    assert [p.path for p in strict.problems] == ["entrypoint.src"]
    archive = build_krt(root / "versions" / "greeter-v1", tmp_path / "greeter-v1.krt")
    assert validate_path(archive, tmp_path).lines() == [f"greeter-v1.krt!krt.yml:6:3: "
                                                        f"{SRC_IGNORED}"]
    assert validate_path(archive, tmp_path, strict=True).lines() == [
        "greeter-v1.krt!krt.yml:6:3: entrypoint.src: is ignored (KRE 1.x ignored it too: the "
        "entrypoint is generated from the proto) [--strict]"]


def test_validate_help_names_strict() -> None:
    result = CliRunner().invoke(main, ["validate", "--help"])
    assert result.exit_code == 0 and "--strict" in result.output


# --- KRE 1.x's name limit --------------------------------------------------------------------


def test_names_of_20_characters_or_more_warn(tmp_path: Path) -> None:
    krt = GREETER_GPU.replace("greeter-v1", "greeter-v1-abcdefghi")  # 20
    krt = krt.replace("py-greeter", "py-greeter-abcdefghi")  # 20
    krt = krt.replace("name: py-greeting", "name: py-greeting-abcdefg")  # 19: fine
    version = load_version(write(tmp_path / "v", krt), tmp_path)
    assert [str(w) for w in version.warnings] == [
        'v/krt.yml:1:10: warning: version "greeter-v1-abcdefghi" is 20 characters long; '
        "KRE 1.x would refuse this (its names were shorter than 20 characters)",
        f"v/krt.yml:6:3: {SRC_IGNORED}",
        'v/krt.yml:13:11: warning: nodes[0].name "py-greeter-abcdefghi" is 20 characters long; '
        "KRE 1.x would refuse this (its names were shorter than 20 characters)",
    ]
    with pytest.raises(InputError) as info:
        load_version(tmp_path / "v", tmp_path, strict=True)
    assert [p.path for p in info.value.problems] == ["version", "entrypoint.src",
                                                     "nodes[0].name"]


def test_a_name_that_is_refused_does_not_warn_too(tmp_path: Path) -> None:
    krt = GREETER_GPU.replace("name: py-greeter", "name: Py-Greeter-Upper-Case-Name")
    krt = krt.replace("- py-greeter", "- Py-Greeter-Upper-Case-Name")
    write(tmp_path / "v", krt)
    with pytest.raises(InputError) as info:
        load_version(tmp_path / "v", tmp_path)
    assert [p.path for p in info.value.problems] == ["nodes[0].name"]
    assert [w.path for w in info.value.warnings] == ["entrypoint.src"]


# --- Go nodes --------------------------------------------------------------------------------


def go_refusal(line: int, index: int, node: str, reasons: str, workflows: str = "") -> str:
    where = f" and from {workflows}" if workflows else ""
    return (f'v/krt.yml:{line}:5: nodes[{index}]: node "{node}" is a Go node ({reasons}); '
            f"{GO_LATER}: drop it from nodes{where}, or port it to Python")


def test_go_node_by_src_and_image(tmp_path: Path) -> None:
    write(tmp_path / "v", GREETER_PY_AND_GO)
    result = kai("validate", "v", cwd=tmp_path)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"v/krt.yml:6:3: {SRC_IGNORED}",
        go_refusal(14, 1, "go-greeter", 'src "bin/go-greeter" is not a .py file; image '
                   "konstellation/kre-go:latest is KRE's Go runner", "workflow go-greeting"),
    ]
    # dropping the node and its workflow, as the message says, leaves a valid version
    krt = GREETER_PY_AND_GO.split("  - name: go-greeter\n")[0] + "workflows:\n" \
        + GREETER_PY_AND_GO.split("workflows:\n")[1].split("\n  - name: go-greeting")[0]
    (tmp_path / "v" / "krt.yml").write_text(krt)
    version = load_version(tmp_path / "v", tmp_path)
    assert [n.name for n in version.nodes] == ["py-greeter"]


def test_go_node_by_src_alone(tmp_path: Path) -> None:
    krt = GREETER_PY_AND_GO.replace("konstellation/kre-go:latest", "konstellation/kre-py:latest")
    write(tmp_path / "v", krt)
    assert problems(tmp_path / "v", tmp_path) == [go_refusal(
        14, 1, "go-greeter", 'src "bin/go-greeter" is not a .py file', "workflow go-greeting")]


def test_go_node_whose_binary_is_not_built_is_refused_as_go(tmp_path: Path) -> None:
    write(tmp_path / "v", GO_GREETER)
    (tmp_path / "v" / "bin" / "greeter").unlink()  # KRE's template built it; git kept bin/ empty
    assert problems(tmp_path / "v", tmp_path) == [go_refusal(
        9, 0, "greeter", 'src "bin/greeter" is not a .py file; image konstellation/kre-go:1.0.2 '
        "is KRE's Go runner", "workflow greeting-workflow")]


@pytest.mark.parametrize("image", [
    "konstellation/kre-go:1.0", "konstellation/kre-go", "kre-go:1.9.0",
    "docker.io/konstellation/kre-go:1.9.0",
    "registry.example.com:5000/mirror/kre-go@sha256:" + "0" * 64,
    "localhost:5000/kre-go:latest@sha256:" + "a" * 64,
])
def test_go_node_by_image_under_any_registry_and_tag(tmp_path: Path, image: str) -> None:
    krt = GREETER_PY_AND_GO.replace("src: bin/go-greeter", "src: src/go-greeter/main.py")
    write(tmp_path / "v", krt.replace("konstellation/kre-go:latest", image))
    assert problems(tmp_path / "v", tmp_path) == [go_refusal(
        14, 1, "go-greeter", f"image {image} is KRE's Go runner", "workflow go-greeting")]


@pytest.mark.parametrize("image", [
    "konstellation/kre-py:1.23.0", "konstellation/kre-go-tools:1.0", "kre-gopher:1",
    "example.com/kre-go/runner:1.0", "konstellation/kre-py:kre-go",
])
def test_other_images_are_not_go(tmp_path: Path, image: str) -> None:
    krt = GREETER_GPU.replace("konstellation/kre-py:1.23.0", image)
    assert load_version(write(tmp_path / "v", krt), tmp_path).nodes[0].image == image


def test_a_go_node_in_several_workflows_names_them(tmp_path: Path) -> None:
    krt = GREETER_PY_AND_GO.replace("      - py-greeter\n", "      - py-greeter\n      - "
                                    "go-greeter\n")
    write(tmp_path / "v", krt)
    assert problems(tmp_path / "v", tmp_path) == [go_refusal(
        14, 1, "go-greeter", 'src "bin/go-greeter" is not a .py file; image '
        "konstellation/kre-go:latest is KRE's Go runner", "workflows py-greeting, go-greeting")]


def test_a_bad_path_is_named_before_go(tmp_path: Path) -> None:
    krt = GREETER_PY_AND_GO.replace("src: bin/go-greeter", "src: ../bin/go-greeter")
    write(tmp_path / "v" / "inner", krt)
    assert problems(tmp_path / "v" / "inner", tmp_path / "v") == [
        'inner/krt.yml:16:10: nodes[1].src: "../bin/go-greeter" must stay inside the version '
        'directory (no "..")']


# --- kai add shows the warnings once ---------------------------------------------------------


@pytest.mark.integration
def test_add_prints_the_warnings_once(tmp_path: Path) -> None:
    repo = tmp_path / "gitops"
    assert kai("init", str(repo), "--project", "demo", "--namespace", "kai-demo",
               cwd=tmp_path).exit_code == 0
    write(tmp_path / "price-estimator-v1", PRICE_ESTIMATOR)
    result = kai("add", "price-estimator-v1", "--repo", str(repo), cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stderr == f"price-estimator-v1/krt.yml:7:3: {SRC_IGNORED}\n"
    assert result.stdout.startswith("add price-estimator-v1\n")
    # the manifest is kept as written; the key stays ignored in the repo
    assert "  src: src/entrypoint/entrypoint.py\n" in (
        repo / "versions" / "price-estimator-v1" / "krt.yml").read_text()
    result = kai("render", "--repo", str(repo), cwd=tmp_path)
    assert result.exit_code == 0 and "warning" not in result.stderr
    assert validate_path(repo, tmp_path).warnings != ()


@pytest.mark.integration
def test_add_refuses_a_go_node(tmp_path: Path) -> None:
    repo = tmp_path / "gitops"
    kai("init", str(repo), "--project", "demo", "--namespace", "kai-demo", cwd=tmp_path)
    write(tmp_path / "greeter-v1", GREETER_PY_AND_GO)
    result = kai("add", "greeter-v1", "--repo", str(repo), cwd=tmp_path)
    assert result.exit_code == 1 and not (repo / "versions" / "greeter-v1").exists()
    assert result.stderr.count("\n") == 1 and GO_LATER in result.stderr
    assert result.stderr.startswith('greeter-v1/krt.yml:14:5: nodes[1]: node "go-greeter"')
