"""`kai dev` runs what `kai render` writes: the rendered Deployments become ProcessSpecs."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from renderer.cli import main
from renderer.cli.call import EXIT_INPUT
from renderer.cli.dev import (
    DEV_NATS_SECRET,
    DevError,
    deployment_spec,
    dev_secrets,
    remove_stale_work_dirs,
    render_local,
    rendered_specs,
)
from renderer.cli.devconfig import DevConfig
from renderer.krt import Config
from renderer.project import Nats, Project
from renderer.validate import load_version
from runner import __main__ as runner_main
from runner import contract
from runner.supervisor import GRPC, HTTP, free_port

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


# --- NATS credentials: --nats-creds takes the cluster's path, the cluster's Secrets stay out ---

CREDS = ("-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QifQ.e30.c2ln\n"
         "------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n"
         "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY\n"
         "------END USER NKEY SEED------\n")


def test_nats_creds_reach_every_process_as_a_mounted_auth_secret(tmp_path: Path) -> None:
    version = load_version(ROOT / "examples" / "greeter")
    cluster = replace(PROJECT, nats=Nats(auth_secret="cluster-auth", ca_secret="cluster-ca"))
    creds = tmp_path / "user.creds"
    creds.write_text(CREDS)
    _, objs = render_local(cluster, version, nats_creds=True)
    out = rendered_specs(objs, tmp_path / "work", "nats://127.0.0.1:1", DevConfig({}, {}),
                         7000, 7001, secrets=dev_secrets(creds))
    assert len(out) == 4
    for spec in out:
        auth = Path(spec.env[contract.ENV_NATS_AUTH_DIR])
        assert auth == tmp_path / "work" / "pods" / spec.name / "nats-auth"
        assert sorted(p.name for p in auth.iterdir()) == ["creds"]
        assert (auth / "creds").read_text() == CREDS
        assert contract.ENV_NATS_CA_FILE not in spec.env  # the cluster's CA is not here
    text = repr(objs)
    assert "cluster-auth" not in text and "cluster-ca" not in text
    assert DEV_NATS_SECRET in text


def test_without_nats_creds_no_nats_secret_is_mounted(tmp_path: Path) -> None:
    version = load_version(ROOT / "examples" / "greeter")
    cluster = replace(PROJECT, nats=Nats(auth_secret="cluster-auth", ca_secret="cluster-ca"))
    for spec in rendered_specs(render_local(cluster, version)[1], tmp_path, "nats://x:1",
                               DevConfig({}, {}), 7000, 7001):
        assert contract.ENV_NATS_AUTH_DIR not in spec.env
        assert contract.ENV_NATS_CA_FILE not in spec.env


def _dev(tmp_path: Path, *args: str) -> tuple[int, str]:
    ports = ("--port", str(free_port()), "--web-port", str(free_port()))
    result = CliRunner().invoke(main, ["dev", str(ROOT / "examples" / "greeter"), *ports,
                                       *args])
    return result.exit_code, result.stderr


def test_kai_dev_refuses_credentials_in_the_url_and_misplaced_creds(tmp_path: Path) -> None:
    code, err = _dev(tmp_path, "--nats", "nats://kai:hunter2@127.0.0.1:1")
    assert code == EXIT_INPUT
    assert err == ("error: --nats: the URL carries credentials (user:password@ or token@), "
                   "which would reach every process's environment and logs; pass a .creds "
                   "file with --nats-creds FILE\n")
    creds = tmp_path / "user.creds"
    creds.write_text(CREDS)
    code, err = _dev(tmp_path, "--nats-creds", str(creds))
    assert (code, err) == (EXIT_INPUT, "error: --nats-creds needs --nats URL (the embedded "
                                       "nats-server takes no credentials)\n")
    token = tmp_path / "token"
    token.write_text("just-a-token\n")
    code, err = _dev(tmp_path, "--nats", "nats://127.0.0.1:1", "--nats-creds", str(token))
    assert code == EXIT_INPUT
    assert err.startswith(f"error: --nats-creds: {token} is not a NATS .creds file ")
    assert err.count("\n") == 1
