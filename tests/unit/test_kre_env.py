"""KRE's environment: the KRT_* names kre-py 1.23 read, and config files in variables.

The aliases are set in the plan from the contract variables (runner.contract.KRE_ALIASES),
so the rendered Deployments and `kai dev` carry them with the same values as ours.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from renderer.cli.dev import DevError, render_local, rendered_specs
from renderer.cli.devconfig import DevConfig
from renderer.krt import Config
from renderer.plan import build_plan
from renderer.project import ConfigSource, Nats, Project, VersionState
from renderer.render import RenderError, render_version
from renderer.validate import load_version
from runner import contract

ROOT = Path(__file__).resolve().parent.parent.parent
NATS = "nats://nats.example.svc:4333"
# What code written for kre-py 1.23 reads and KAI gives it, on a node.
NODE_ALIASES = {
    "KRT_BASE_PATH": contract.ENV_VERSION_DIR,
    "KRT_HANDLER_PATH": contract.ENV_HANDLER,
    "KRT_NATS_SERVER": contract.ENV_NATS_URL,
    "KRT_NODE_ID": contract.ENV_NODE,
    "KRT_NODE_NAME": contract.ENV_NODE,
    "KRT_VERSION": contract.ENV_VERSION,
    "KRT_VERSION_ID": contract.ENV_VERSION,
}
ENTRYPOINT_ALIASES = {k: v for k, v in NODE_ALIASES.items()
                      if v not in (contract.ENV_NODE, contract.ENV_HANDLER)}
# kre-py 1.23 read these too; they have no meaning here and are not set.
LEFT_OUT = ("KRT_NATS_INPUT", "KRT_NATS_OUTPUT", "KRT_NATS_MONGO_WRITER", "KRT_MONGO_URI",
            "KRT_INFLUX_URI", "KRT_NATS_SUBJECTS_FILE", "KRT_REQUEST_TIMEOUT",
            "KRT_WORKFLOW_NAME", "KRT_WORKFLOW_ID")
CONFIG = Config(variables=("API_KEY",), files=("MODEL_CONF", "CERT"))


def greeter(config: Config = CONFIG) -> Any:
    return replace(load_version(ROOT / "examples" / "greeter"), config=config)


def project(version_name: str, source: ConfigSource | None = None) -> Project:
    return Project(name="demo", namespace="demo", nats=Nats(url=NATS),
                   versions={version_name: VersionState(
                       "started", source or ConfigSource("secret", "greeter-cfg"))})


def kre_names(env: dict[str, str]) -> set[str]:
    return {k for k in env if k.startswith(contract.KRE_ENV_PREFIX)}


def test_the_plan_gives_every_process_the_aliases_with_our_values() -> None:
    version = greeter()
    plan = build_plan(project(version.name), version)
    ep = plan.entrypoint
    assert kre_names(ep.env) == set(ENTRYPOINT_ALIASES)
    for alias, ours in ENTRYPOINT_ALIASES.items():
        assert ep.env[alias] == ep.env[ours], alias
    assert (ep.env["KRT_VERSION"], ep.env["KRT_BASE_PATH"], ep.env["KRT_NATS_SERVER"]) == (
        "greeter-v1", contract.VERSION_MOUNT, NATS)
    assert len(plan.nodes) == 3
    for node in plan.nodes:
        assert kre_names(node.env) == set(NODE_ALIASES), node.name
        for alias, ours in NODE_ALIASES.items():
            assert node.env[alias] == node.env[ours], (node.name, alias)
        [declared] = [n for n in version.nodes if n.name == node.node]
        assert node.env["KRT_NODE_NAME"] == node.env["KRT_NODE_ID"] == declared.name
        assert node.env["KRT_HANDLER_PATH"] == declared.src
        assert node.env["KRT_VERSION_ID"] == node.env["KRT_VERSION"] == "greeter-v1"
    for process in plan.processes:
        assert not set(LEFT_OUT) & set(process.env)
        assert list(process.env) == sorted(process.env)


def test_the_rendered_deployments_carry_the_plans_aliases_as_plain_values() -> None:
    version = greeter()
    proj = project(version.name)
    plan = build_plan(proj, version)
    by_name = {p.name: p for p in plan.processes}
    for obj in render_version(proj, plan):
        if obj["kind"] != "Deployment":
            continue
        [container] = obj["spec"]["template"]["spec"]["containers"]
        values = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        process = by_name[obj["metadata"]["name"]]
        assert {k: values[k] for k in kre_names(values)} == \
            {k: process.env[k] for k in kre_names(process.env)}


def test_the_aliases_follow_a_changed_contract_variable() -> None:
    env = contract.RunnerEnv("p", "v", "/x", "a.proto", (), nats_url="nats://a:1",
                             node="n", handler="src/n.py",
                             extra={contract.ENV_VERSION: "v2"}).to_environ()
    assert (env["KRT_VERSION"], env["KRT_VERSION_ID"], env["KRT_NODE_NAME"],
            env["KRT_BASE_PATH"], env["KRT_NATS_SERVER"]) == ("v2", "v2", "n", "/x", "nats://a:1")
    # the contract reads none of them back: ours are the settings
    assert contract.RunnerEnv.from_environ({**env, "KRT_VERSION": "other"}).version == "v2"
    version = greeter(Config())
    [node, *_] = build_plan(project(version.name), version).nodes
    local = node.local_env(Path("/here"), "nats://127.0.0.1:9", Path("/cfg"))
    assert (local["KRT_BASE_PATH"], local["KRT_NATS_SERVER"]) == ("/here", "nats://127.0.0.1:9")


def test_kai_dev_sets_them_again_for_this_machine(tmp_path: Path) -> None:
    version = greeter()
    _, objects = render_local(project(version.name), version)
    config = DevConfig({"API_KEY": "k"}, {"MODEL_CONF": b'{"depth": 3}\n', "CERT": b"c"})
    specs = rendered_specs(objects, tmp_path, "nats://127.0.0.1:4999", config, 7000, 7001)
    assert len(specs) == 4
    for spec in specs:
        aliases = NODE_ALIASES if spec.role == contract.ROLE_NODE else ENTRYPOINT_ALIASES
        assert kre_names(dict(spec.env)) == set(aliases), spec.name
        for alias, ours in aliases.items():
            assert spec.env[alias] == spec.env[ours], (spec.name, alias)
        assert spec.env["KRT_NATS_SERVER"] == "nats://127.0.0.1:4999"
        assert spec.env["KRT_BASE_PATH"] == str(tmp_path / "pods" / spec.name / "version")


# --- config files in the environment -------------------------------------------------------


def specs_with(tmp_path: Path, files: dict[str, bytes]) -> dict[str, Any]:
    version = greeter(Config(variables=("API_KEY",), files=tuple(files)))
    _, objects = render_local(project(version.name), version)
    out = rendered_specs(objects, tmp_path, "nats://127.0.0.1:1",
                         DevConfig({"API_KEY": "k"}, files), 7000, 7001)
    return {s.name: s for s in out}


def test_kai_dev_puts_each_config_files_bytes_in_its_variable(tmp_path: Path) -> None:
    content = "température: 21\n".encode() + b"\xff\xfe latin-1, not UTF-8\n"
    by_name = specs_with(tmp_path, {"MODEL_CONF": content, "EMPTY": b""})
    ep = by_name.pop("greeter-v1-entrypoint")
    assert "MODEL_CONF" not in ep.env  # as in the cluster: the entrypoint gets no config
    for spec in by_name.values():
        assert os.fsencode(spec.env["MODEL_CONF"]) == content
        assert spec.env["EMPTY"] == ""
        mounted = Path(spec.env[contract.ENV_CONFIG_DIR]) / "MODEL_CONF"
        assert mounted.read_bytes() == content  # the mounted file stays


@pytest.mark.parametrize("name", ["MODEL_CONF", "X"])
def test_a_config_file_at_the_bound_goes_one_byte_more_is_refused(tmp_path: Path,
                                                                  name: str) -> None:
    fits = contract.MAX_ENV_ENTRY - len(name) - 2  # NAME=value and its NUL
    by_name = specs_with(tmp_path / "a", {name: b"x" * fits})
    assert len(by_name["greeter-v1-etl"].env[name]) == fits
    with pytest.raises(DevError) as refused:
        specs_with(tmp_path / "b", {name: b"x" * (fits + 1)})
    assert str(refused.value) == (
        f"Deployment greeter-v1-etl: config file {name} cannot be the environment variable "
        f"{name}, which the cluster sets too (the pod would not start): {name}=<value> takes "
        f"{contract.MAX_ENV_ENTRY + 1} bytes, more than the {contract.MAX_ENV_ENTRY} one "
        "environment entry may (Linux MAX_ARG_STRLEN); keep it under 128 KiB and free of NUL "
        "bytes (docs/node-sdk.md)")


def test_a_config_file_with_a_nul_byte_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DevError, match=r"config file KEYSTORE cannot be the environment "
                                       r"variable KEYSTORE, .*: it holds a NUL byte"):
        specs_with(tmp_path, {"KEYSTORE": b"\x30\x82\x00\x01"})


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.sysconf("SC_PAGE_SIZE") != 4096,
                    reason="MAX_ARG_STRLEN is 32 pages of 4 KiB here")
def test_the_bound_is_the_kernels() -> None:
    """One entry of MAX_ENV_ENTRY bytes starts a process; one byte more does not (E2BIG)."""
    fits = contract.MAX_ENV_ENTRY - len("X=") - 1
    assert contract.env_entry_problem("X", b"x" * fits) is None
    assert contract.env_entry_problem("X", b"x" * (fits + 1)) is not None
    done = subprocess.run([sys.executable, "-c", "import os; print(len(os.environ['X']))"],
                          env={"X": "x" * fits}, capture_output=True, text=True, timeout=60,
                          check=True)
    assert done.stdout.strip() == str(fits)
    with pytest.raises(OSError) as refused:
        subprocess.run([sys.executable, "-c", ""], env={"X": "x" * (fits + 1)}, timeout=60)
    assert refused.value.errno == 7  # E2BIG


# --- reserved names --------------------------------------------------------------------------


def test_krt_names_are_reserved_like_kai_names() -> None:
    for name in ("KAI_PROJECT", "KRT_VERSION", "KRT_MONGO_URI", "KRT_ANYTHING"):
        assert contract.is_reserved_env(name), name
    for name in ("KRTX", "API_KEY", "MY_KRT_VERSION", "KAIX"):
        assert not contract.is_reserved_env(name), name
    assert contract.reserved_env_rule() == "names starting with KAI_ or KRT_"


@pytest.mark.parametrize("config", [Config(variables=("KRT_VERSION",)),
                                    Config(files=("KRT_BASE_PATH",)),
                                    Config(files=("KAI_CONFIG_DIR",))])
def test_a_config_name_that_would_take_a_runner_variable_is_refused(config: Config) -> None:
    version = greeter(config)
    proj = project(version.name)
    name = (*config.variables, *config.files)[0]
    with pytest.raises(RenderError, match=f"config {name} clash with the runner's own "
                                          "environment variables \\(names starting with "
                                          "KAI_ or KRT_\\)"):
        render_version(proj, build_plan(proj, version))
