"""`kai dev` runs what `kai render` writes: the rendered Deployments become ProcessSpecs."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from renderer.cli.dev import (
    DevError,
    deployment_spec,
    remove_stale_work_dirs,
    render_local,
    rendered_specs,
)
from renderer.cli.devconfig import DevConfig
from renderer.krt import Config
from renderer.project import Project
from renderer.validate import load_version
from runner import __main__ as runner_main
from runner import contract
from runner.supervisor import GRPC, HTTP

ROOT = Path(__file__).resolve().parent.parent.parent
PROJECT = Project(name="dev", namespace="dev")


def objects() -> list[dict[str, Any]]:
    version = load_version(ROOT / "examples" / "greeter")
    version = replace(version, config=Config(variables=("API_KEY",)))
    return render_local(PROJECT, version)[1]  # no config source in kai.yaml: kai dev needs none


def specs(work: Path, secrets: dict[str, str] | None = None) -> dict[str, Any]:
    config = DevConfig({"API_KEY": "s3cret"} if secrets is None else secrets, {})
    out = rendered_specs(objects(), work, "nats://127.0.0.1:1", config, 7000, 7001)
    return {s.name: s for s in out}


def test_each_deployment_runs_with_its_command_env_probes_and_grace(tmp_path: Path) -> None:
    by_name = specs(tmp_path)
    assert sorted(by_name) == ["greeter-v1-entrypoint", "greeter-v1-etl",
                               "greeter-v1-inference", "greeter-v1-output"]
    ep, etl = by_name["greeter-v1-entrypoint"], by_name["greeter-v1-etl"]
    assert (ep.role, etl.role) == (contract.ROLE_ENTRYPOINT, contract.ROLE_NODE)
    assert ep.env[contract.ENV_GRPC_PORT] == "7000" and ep.env[contract.ENV_WEB_PORT] == "7001"
    assert etl.free_ports == (contract.ENV_WEB_PORT,)
    for spec in (ep, etl):
        # the version volume of its own pod, on this machine
        pod = tmp_path / "pods" / spec.name
        assert spec.env[contract.ENV_VERSION_DIR] == str(pod / "version")
        assert spec.env["TMPDIR"] == spec.env["HOME"] == str(pod / "tmp")
        assert spec.env[contract.ENV_NATS_URL] == "nats://127.0.0.1:1"
        # no config file declared: no config volume, the pod's path is left as it is
        assert spec.env[contract.ENV_CONFIG_DIR] == contract.CONFIG_MOUNT
        assert spec.env[contract.ENV_BIND_HOST] == "127.0.0.1"
    # a secretKeyRef gets its value; the entrypoint, as in the cluster, does not get it
    assert etl.env["API_KEY"] == "s3cret" and "API_KEY" not in ep.env
    # the rendered probes, on the ports this machine gives the replica
    assert ep.readiness is not None and ep.readiness.kind == GRPC
    assert ep.readiness.port_env == contract.ENV_GRPC_PORT
    assert ep.liveness is not None and (ep.liveness.kind, ep.liveness.path,
                                        ep.liveness.port_env) == (HTTP, "/healthz",
                                                                  contract.ENV_WEB_PORT)
    assert etl.readiness is not None and (etl.readiness.path, etl.readiness.port_env) == (
        "/readyz", contract.ENV_WEB_PORT)
    assert etl.liveness is not None and (etl.liveness.period, etl.liveness.initial_delay,
                                         etl.liveness.failure_threshold) == (20, 10, 3)


def test_the_rendered_grace_period_covers_the_runners_drain(tmp_path: Path) -> None:
    for spec in specs(tmp_path).values():
        assert spec.grace is not None and spec.grace >= runner_main.DEFAULT_GRACE, spec.name


def test_what_kai_dev_cannot_run_gets_one_line(tmp_path: Path) -> None:
    with pytest.raises(DevError, match="config API_KEY is not set: pass --config API_KEY="):
        specs(tmp_path / "a", {})
    [deployment] = [o for o in objects() if o["metadata"]["name"] == "greeter-v1-etl"]
    odd = copy.deepcopy(deployment)
    odd["spec"]["template"]["spec"]["containers"][0]["command"] = ["sh", "-c", "serve"]
    with pytest.raises(DevError, match="greeter-v1-etl: cannot run its command"):
        deployment_spec(odd, {}, tmp_path, "", DevConfig({"API_KEY": "x"}, {}), 1, 2)
    odd = copy.deepcopy(deployment)
    odd["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    with pytest.raises(DevError, match="env POD_IP: kai dev runs only a value or a secretKeyRef"):
        deployment_spec(odd, {}, tmp_path, "", DevConfig({"API_KEY": "x"}, {}), 1, 2)
    odd = copy.deepcopy(deployment)
    odd["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = 1
    with pytest.raises(DevError, match="probe port 1 is neither"):
        deployment_spec(odd, {}, tmp_path, "", DevConfig({"API_KEY": "x"}, {}), 1, 2)


def test_only_the_folders_of_dead_runs_are_removed(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    gone = int(dead.stdout)
    stale = tmp_path / f"kai-dev-{gone}-abc"
    (stale / "nats").mkdir(parents=True)
    mine = tmp_path / f"kai-dev-{os.getpid()}-xyz"
    mine.mkdir()
    other = tmp_path / "kai-dev-notapid-1"
    other.mkdir()
    assert remove_stale_work_dirs(tmp_path) == [
        f"removed {stale}: left by kai dev (pid {gone}), which was killed"]
    assert not stale.exists() and mine.is_dir() and other.is_dir()


def test_a_port_with_only_time_wait_connections_is_free_and_a_listener_is_not() -> None:
    """A port an earlier run used (its connections in TIME_WAIT) is not "taken"."""
    import socket

    from renderer.cli.dev import DevError, check_port

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    with pytest.raises(DevError, match=f"port {port} is taken"):
        check_port(port, "--port")
    served.close()  # the server side closes first: its end stays in TIME_WAIT
    client.close()
    listener.close()
    check_port(port, "--port")
