"""kai.yaml `tracing:`: validated, loaded, dumped, and rendered as OpenTelemetry's own
environment variables on every pod, with egress to the receiver."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from renderer.problems import InputError
from renderer.project import Tracing
from renderer.projectfile import dump_project, load_project
from renderer.render import render_project
from runner import contract
from tests.unit.test_render import make_project, make_version

HEAD = "project: demo\nnamespace: kai-demo\n"


def _load(tmp_path: Path, tracing: str) -> Any:
    (tmp_path / "kai.yaml").write_text(HEAD + tracing)
    return load_project(tmp_path, tmp_path)


def _problems(tmp_path: Path, tracing: str) -> list[str]:
    with pytest.raises(InputError) as info:
        _load(tmp_path, tracing)
    return [str(p) for p in info.value.problems]


def test_tracing_loads_and_round_trips(tmp_path: Path) -> None:
    project = _load(tmp_path, "tracing:\n  endpoint: http://otel.obs.svc:4317\n"
                              "  sampler: parentbased_traceidratio\n  samplerArg: 0.25\n"
                              "  namespace: obs\n")
    assert project.tracing == Tracing("http://otel.obs.svc:4317", "parentbased_traceidratio",
                                      0.25, "obs")
    assert project.tracing.port == 4317
    (tmp_path / "kai.yaml").write_text(dump_project(project))
    assert load_project(tmp_path) == project
    assert _load(tmp_path, "").tracing == Tracing()  # left out: off
    assert "tracing" not in dump_project(_load(tmp_path, ""))


@pytest.mark.parametrize(("endpoint", "message"), [
    ("http://otel:4318/v1/traces", "has a path: OTLP over gRPC takes HOST:PORT only"),
    ("http://otel", "needs its port"),
    ("otel:4317", "must be http://HOST:PORT (plaintext) or https://HOST:PORT (TLS)"),
    ("grpc://otel:4317", "must be http://HOST:PORT"),
    ("http://user:secret@otel:4317", "carries credentials"),
    ("http://otel:99999", "is not a URL with a valid port"),
])
def test_a_bad_endpoint_is_refused_at_its_position(tmp_path: Path, endpoint: str,
                                                   message: str) -> None:
    (problem,) = _problems(tmp_path, f"tracing:\n  endpoint: {endpoint}\n")
    assert problem.startswith(f'kai.yaml:4:13: tracing.endpoint: "{endpoint}" ')
    assert message in problem


def test_sampler_settings_are_checked(tmp_path: Path) -> None:
    (problem,) = _problems(tmp_path, "tracing:\n  endpoint: http://o:4317\n  samplerArg: 0.5\n")
    assert problem.startswith("kai.yaml:5:3: tracing.samplerArg: is the ratio of the "
                              "traceidratio and parentbased_traceidratio samplers")
    (problem,) = _problems(tmp_path, "tracing:\n  endpoint: http://o:4317\n  sampler: sometimes\n")
    assert problem.startswith("kai.yaml:5:12: tracing.sampler: ")
    (problem,) = _problems(tmp_path, "tracing:\n  endpoint: http://o:4317\n"
                                     "  sampler: traceidratio\n  samplerArg: 2\n")
    assert problem.startswith("kai.yaml:6:15: tracing.samplerArg: ")
    (problem,) = _problems(tmp_path, "tracing:\n  sampler: always_on\n")
    assert "endpoint" in problem


def test_the_schema_names_the_samplers_the_runner_knows() -> None:
    schema = json.loads(resources.files("renderer.schemas").joinpath("kai.schema.json")
                        .read_text())
    sampler = schema["properties"]["tracing"]["properties"]["sampler"]
    assert tuple(sampler["enum"]) == contract.TRACE_SAMPLERS


def _rendered(tmp_path: Path, tracing: Tracing) -> dict[str, Any]:
    version = make_version(tmp_path)
    project = make_project(tmp_path, {version.name: "started"}, tracing=tracing)
    tree = render_project(project, {version.name: version})  # every check passes
    return {path: yaml.safe_load(data) for path, data in tree.items()}


def _env(obj: dict[str, Any]) -> dict[str, str]:
    (container,) = obj["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_every_pod_gets_opentelemetrys_variables_and_its_service_name(tmp_path: Path) -> None:
    objs = _rendered(tmp_path, Tracing("https://otel.obs:4317", "traceidratio", 0.1))
    deployments = {o["metadata"]["name"]: o for o in objs.values() if o["kind"] == "Deployment"}
    assert sorted(deployments) == ["greeter-v1-entrypoint", "greeter-v1-etl", "greeter-v1-output"]
    for name, dep in deployments.items():
        env = _env(dep)
        assert env[contract.OTEL_ENDPOINT] == "https://otel.obs:4317"
        assert env[contract.OTEL_SERVICE_NAME] == f"demo-{name}"
        assert env[contract.OTEL_TRACES_SAMPLER] == "traceidratio"
        assert env[contract.OTEL_TRACES_SAMPLER_ARG] == "0.1"
        assert contract.RunnerEnv.from_environ(env).tracing
    policy = objs["networkpolicy-demo-default-deny.yaml"]
    assert policy["spec"]["egress"][-1] == {"ports": [{"port": 4317, "protocol": "TCP"}]}


def test_the_receivers_namespace_narrows_the_egress(tmp_path: Path) -> None:
    objs = _rendered(tmp_path, Tracing("http://otel.obs:14317", namespace="obs"))
    policy = objs["networkpolicy-demo-default-deny.yaml"]
    assert policy["spec"]["egress"][-1] == {
        "ports": [{"port": 14317, "protocol": "TCP"}],
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "obs"}}}]}


def test_without_tracing_no_pod_gets_an_otel_variable_or_egress(tmp_path: Path) -> None:
    objs = _rendered(tmp_path, Tracing())
    for obj in objs.values():
        if obj.get("kind") == "Deployment":
            env = contract.RunnerEnv.from_environ(_env(obj))
            assert not env.tracing
            assert not [k for k in _env(obj) if k.startswith("OTEL_")]
    assert len(objs["networkpolicy-demo-default-deny.yaml"]["spec"]["egress"]) == 2
