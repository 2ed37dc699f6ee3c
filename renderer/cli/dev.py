"""`kai dev`: run a version on this machine from the same Deployments the cluster gets.

The version is rendered in memory (renderer.render.render_version); each Deployment
becomes a runner.supervisor.ProcessSpec (command, env, replicas, probes, grace period),
its volumes written into the run's folder (renderer.cli.devpod: the ConfigMap's files,
read-only, and as root the pod's user).
An embedded nats-server (JetStream, a temporary store in `kai-dev-<pid>-*`) unless
`--nats URL`, then the entrypoint and every node under runner.supervisor, which restarts
what exits and stops them in order; nats-server is stopped last.
First the version's requirements.txt is checked against the Python the processes run, or
with `--install` installed into a cached venv whose Python runs them (renderer.cli.devvenv).
`--nats-creds FILE` reaches the processes as the cluster's nats.auth Secret does: the
version is rendered with an auth Secret of kai dev's own (DEV_NATS_SECRET), whose volume
holds FILE as `creds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from renderer.atomic import pid_alive
from renderer.krt import Version
from renderer.plan import PlanError, VersionPlan, build_plan
from renderer.problems import InputError
from renderer.project import (
    PROJECT_FILE,
    STARTED,
    VERSIONS_DIR,
    ConfigSource,
    Project,
    VersionState,
)
from renderer.render import SECRET, render_version
from runner import contract
from runner.client import CallFailed, CallUsageError, call_json, find_rpc, parse_request
from runner.natsserver import NatsServer, NatsServerError
from runner.proto import CompiledProto
from runner.supervisor import (
    DEFAULT_READY_TIMEOUT,
    GRPC,
    HTTP,
    Probe,
    ProcessSpec,
    StartupError,
    Supervisor,
)
from runner.transport import natsauth

from . import devconfig, devpod, devvenv
from .call import EXIT_INPUT, EXIT_RPC, compile_or_exit, load_or_exit

T = TypeVar("T")
HOST = "127.0.0.1"
SHOW_LINES = 15  # lines of a failed process's output repeated in the error
K8S_GRACE = 30.0  # Kubernetes' terminationGracePeriodSeconds when a pod names none
WORK_PREFIX = "kai-dev-"  # temporary folders: kai-dev-<pid>-<random>
EXIT_INTERRUPTED = 130  # Ctrl-C before the processes started (128 + SIGINT)
DEV_NATS_SECRET = "kai-dev-nats-auth"  # the nats.auth Secret that carries --nats-creds


class DevError(Exception):
    """`kai dev` cannot start as asked; a one-line message."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived."""


@dataclass(frozen=True)
class Options:
    port: int
    web_port: int
    nats_url: str | None
    ready_timeout: float
    call: tuple[str, str] | None
    call_timeout: float
    nats_creds: Path | None = None
    python: str = sys.executable  # the interpreter of the processes (renderer.cli.devvenv)


def find_project(version_dir: Path) -> Project:
    """The project of the GitOps repo around the version, or a local one named "dev"."""
    from renderer.projectfile import load_project
    from renderer.repo import RepoError, find_root

    try:
        root = find_root(version_dir)
    except RepoError:
        return Project(name="dev", namespace="dev")
    return load_project(root)


def resolve_version(arg: str, repo: Path | None = None, cwd: Path | None = None) -> Path:
    """The version directory `kai dev ARG` runs.

    ARG is a path to a version (its directory or krt.yml) when one exists; else, inside a
    GitOps repo (`repo`, or the nearest kai.yaml from `cwd` upwards), a version name:
    `versions/ARG`. Raises DevError naming the known versions when it is neither.
    """
    from renderer.repo import RepoError, find_root, resolve_root

    here = cwd or Path.cwd()
    candidate = Path(arg) if Path(arg).is_absolute() else here / arg
    if repo is not None:
        try:
            root = resolve_root(repo)
        except RepoError as exc:
            raise DevError(str(exc)) from None
    if candidate.exists() or candidate.is_symlink():
        return candidate
    if repo is None:
        try:
            root = find_root(here)
        except RepoError:
            raise DevError(
                f"{arg}: no such version directory, and no {PROJECT_FILE} in {here} or a "
                "parent to look it up in (pass a version directory, or --repo DIR)") from None
    folder = root / VERSIONS_DIR
    plain = arg not in ("", ".", "..") and "/" not in arg and "\\" not in arg
    if plain and (folder / arg).is_dir():
        return folder / arg
    known = sorted(p.name for p in folder.iterdir()
                   if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []
    raise DevError(f"{arg}: no such version directory, and no version {arg!r} in {folder}/ "
                   f"(known versions: {', '.join(known) or 'none; add one with kai add PATH'})")


def check_port(port: int, flag: str) -> None:
    """Fail early, with one line, when `port` has a listener already.

    SO_REUSEADDR as the servers themselves set it: connections of an earlier run still in
    TIME_WAIT do not make the port taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DevError(f"port {port} is taken; pick another with {flag} PORT") from None
            raise DevError(f"cannot use port {port} ({flag}): {exc.strerror}") from None


def render_local(project: Project, version: Version, nats_creds: bool = False,
                 ) -> tuple[VersionPlan, list[dict[str, Any]]]:
    """The version's plan and its objects as `kai render` renders it started, except that
    its config comes from a plain Secret: `kai dev` takes the values from `--config` and
    the environment, wherever the cluster gets them from; and its files always come in a
    ConfigMap: a version with an image of its own (renderer.build) runs its files from
    here, with this machine's Python packages. Nor are the cluster's NATS Secrets
    (nats.auth, nats.tls) mounted: with `nats_creds`, DEV_NATS_SECRET is the auth Secret
    (dev_secrets says what it holds)."""
    nats = dataclasses.replace(project.nats, ca_secret="",
                               auth_secret=DEV_NATS_SECRET if nats_creds else "")
    local = dataclasses.replace(project, nats=nats, versions={
        **project.versions,
        version.name: VersionState(STARTED, ConfigSource(SECRET, f"{version.name}-config")),
    })
    plan = build_plan(local, version, state=STARTED, local=True)
    return plan, render_version(local, plan)


def dev_secrets(nats_creds: Path | None) -> dict[str, dict[str, bytes]]:
    """The Secrets of kai dev's own that the rendered volumes name (besides the config
    Secret): DEV_NATS_SECRET with the `--nats-creds` file as its `creds` key. Raises
    DevError when the file is not a .creds file."""
    if nats_creds is None:
        return {}
    try:
        natsauth.check_creds_file(nats_creds)
        return {DEV_NATS_SECRET: {natsauth.CREDS: nats_creds.read_bytes()}}
    except natsauth.NatsSetupError as exc:
        raise DevError(f"--nats-creds: {exc}") from None
    except OSError as exc:
        raise DevError(f"--nats-creds: cannot read {nats_creds}: {exc.strerror}") from None


def rendered_specs(objects: list[dict[str, Any]], work: Path, nats_url: str,
                   config: devconfig.DevConfig, grpc_port: int, web_port: int,
                   guard: devpod.Guard = devpod.NOT_ROOT,
                   secrets: Mapping[str, Mapping[str, bytes]] | None = None,
                   ) -> list[ProcessSpec]:
    """The Deployments among a version's rendered objects (renderer.render.render_version,
    what `kai render` writes) as processes of this machine: each container's command, env
    (a secretKeyRef's value from `config`: a variable's, or a file's content), replicas,
    probes and terminationGracePeriodSeconds, with this machine's paths and ports (the
    entrypoint's: `grpc_port`, `web_port`; nodes': free ones). Each pod's volumes are
    written under `work/pods/<Deployment>` (renderer.cli.devpod); `guard` says as whom
    they run; `secrets` holds kai dev's own Secrets by name (dev_secrets).
    """
    configmaps = {str(o["metadata"]["name"]): o for o in objects if o.get("kind") == "ConfigMap"}
    scaled = autoscaled_replicas(objects)
    return [deployment_spec(obj, configmaps, work / "pods", nats_url, config, grpc_port,
                            web_port, guard, secrets,
                            replicas=scaled.get(str(obj["metadata"]["name"])))
            for obj in objects if obj.get("kind") == "Deployment"]


def autoscaled_replicas(objects: list[dict[str, Any]]) -> dict[str, int]:
    """The processes kai dev starts of each autoscaled Deployment, by name: its
    ScaledObject's or HPA's minimum (what the cluster keeps while idle), but at least one,
    so a node that may sleep in the cluster (minReplicas 0) runs here. Nothing scales a
    process under kai dev."""
    out: dict[str, int] = {}
    for obj in objects:
        kind, spec = obj.get("kind"), obj.get("spec") or {}
        if kind == "ScaledObject":
            low = spec.get("minReplicaCount", 0)  # KEDA's default
        elif kind == "HorizontalPodAutoscaler":
            low = spec.get("minReplicas", 1)  # Kubernetes' default
        else:
            continue
        out[str(spec["scaleTargetRef"]["name"])] = max(1, int(low))
    return out


def deployment_spec(obj: Mapping[str, Any], configmaps: Mapping[str, Mapping[str, Any]],
                    pods_dir: Path, nats_url: str, config: devconfig.DevConfig,
                    grpc_port: int, web_port: int,
                    guard: devpod.Guard = devpod.NOT_ROOT,
                    secrets: Mapping[str, Mapping[str, bytes]] | None = None,
                    replicas: int | None = None) -> ProcessSpec:
    """One rendered Deployment as a ProcessSpec (see rendered_specs); `replicas`: the
    processes to start when an autoscaler owns the count (autoscaled_replicas)."""
    name = str(obj["metadata"]["name"])
    pod = obj["spec"]["template"]["spec"]
    [container] = pod["containers"]
    command = tuple(container.get("command") or ())
    role = command[-1] if command else ""
    if command[:-1] != contract.RUNNER_COMMAND or role not in (contract.ROLE_NODE,
                                                               contract.ROLE_ENTRYPOINT):
        raise DevError(f"Deployment {name}: cannot run its command {list(command)} locally "
                       f"(expected {' '.join(contract.RUNNER_COMMAND)} node|entrypoint)")
    env: dict[str, str] = {}
    for item in container.get("env", ()):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if not isinstance(ref, Mapping) or "key" not in ref:
            raise DevError(f"Deployment {name}: env {item['name']}: kai dev runs only a "
                           "value or a secretKeyRef")
        env[item["name"]] = secret_value(name, str(item["name"]), str(ref["key"]), config)
    ports = {p["name"]: int(p["containerPort"]) for p in container.get("ports", ())}
    readiness = _probe(name, container.get("readinessProbe"), ports, env)
    liveness = _probe(name, container.get("livenessProbe"), ports, env)
    user = devpod.pod_user(guard, pod, container)
    try:
        mounts = devpod.materialise(name, pod, container, configmaps, config.files,
                                    pods_dir / name, user, secrets)
    except devpod.PodError as exc:
        raise DevError(str(exc)) from None
    env = devpod.local_env(env, mounts)
    env[contract.ENV_NATS_URL] = nats_url
    env[contract.ENV_BIND_HOST] = HOST  # loopback only: nothing is exposed off this machine
    free: tuple[str, ...] = ()
    if role == contract.ROLE_ENTRYPOINT:
        env[contract.ENV_GRPC_PORT], env[contract.ENV_WEB_PORT] = str(grpc_port), str(web_port)
    else:
        free = (contract.ENV_WEB_PORT,)
    env.update(contract.kre_aliases(env))  # after the local paths and NATS URL
    grace = float(pod.get("terminationGracePeriodSeconds", K8S_GRACE))
    count = int(obj["spec"].get("replicas", 1)) if replicas is None else replicas
    return ProcessSpec(name, role, env, count, free,
                       readiness=readiness, liveness=liveness, grace=grace, user=user.uid,
                       group=user.gid, groups=user.groups, drop_caps=user.drop_caps)


def secret_value(deployment: str, var: str, key: str, config: devconfig.DevConfig) -> str:
    """The value a secretKeyRef to `key` gives the variable `var`: the config variable's,
    or the config file's content (its bytes as they are, in os.environb). Raises DevError
    when it is not set, or cannot be an environment variable (the pod would not start)."""
    if key in config.variables:
        value = config.variables[key]
        raw, what = value.encode("utf-8", "surrogateescape"), "config"
    elif key in config.files:
        raw, what = config.files[key], "config file"
        value = os.fsdecode(raw)
    else:
        raise DevError(f"Deployment {deployment}: config {key} is not set: pass "
                       f"--config {key}=... or set it in the environment")
    problem = contract.env_entry_problem(var, raw)
    if problem:
        raise DevError(f"Deployment {deployment}: {what} {key} cannot be the environment "
                       f"variable {var}, which the cluster sets too (the pod would not "
                       f"start): {problem}; keep it under {contract.MAX_ENV_ENTRY // 1024} "
                       "KiB and free of NUL bytes (docs/node-sdk.md)")
    return value


def _probe(name: str, raw: Mapping[str, Any] | None, ports: Mapping[str, int],
           env: Mapping[str, str]) -> Probe | None:
    """A container probe as the supervisor polls it; its port becomes the variable of the
    contract that holds that port (KAI_GRPC_PORT or KAI_WEB_PORT), as this machine sets it."""
    if not raw:
        return None
    kind, action = (GRPC, raw["grpc"]) if "grpc" in raw else (HTTP, raw.get("httpGet"))
    if not isinstance(action, Mapping):
        raise DevError(f"Deployment {name}: a probe kai dev cannot run: {dict(raw)}")
    port = action.get("port")
    number = ports.get(port, 0) if isinstance(port, str) else int(port or 0)
    port_env = next((key for key in (contract.ENV_WEB_PORT, contract.ENV_GRPC_PORT)
                     if env.get(key) == str(number)), None)
    if port_env is None:
        raise DevError(f"Deployment {name}: probe port {port} is neither "
                       f"{contract.ENV_GRPC_PORT} nor {contract.ENV_WEB_PORT}")
    return Probe(kind, port_env, path=str(action.get("path", "/")),
                 service=str(action.get("service", "")),
                 period=float(raw.get("periodSeconds", 10)),
                 failure_threshold=int(raw.get("failureThreshold", 3)),
                 initial_delay=float(raw.get("initialDelaySeconds", 0)),
                 timeout=float(raw.get("timeoutSeconds", 1)))


def check_nats(url: str) -> None:
    """Fail early, with one line, when `--nats URL` carries credentials or does not answer."""
    if contract.nats_url_has_credentials(url):
        raise DevError(f"--nats: the URL {contract.NATS_URL_CREDENTIALS}, which would reach "
                       "every process's environment and logs; pass a .creds file with "
                       "--nats-creds FILE")
    servers = contract.nats_servers(url)
    first = servers[0] if servers else url
    try:
        host, port = contract.nats_address(first)
    except ValueError:
        raise DevError(f"--nats {url}: not a NATS URL (nats://HOST:PORT)") from None
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DevError(f"cannot reach NATS at {first}: {reason}") from None


async def _until(awaitable: Awaitable[T], stop: asyncio.Event) -> T:
    """Await `awaitable`, unless `stop` is set first: then cancel it, raise Interrupted."""
    task = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise Interrupted


def _exit_code(returncode: int | None) -> int:
    return returncode if returncode is not None and returncode > 0 else 1


def _say(message: str, err: bool) -> None:
    click.echo(message, err=err)


async def run(project: Project, version: Version, plan: VersionPlan,
              objects: list[dict[str, Any]], compiled: CompiledProto, opts: Options,
              config: devconfig.DevConfig, nats_url: str, work: Path) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    for line in devpod.custom_image_lines(project, objects):
        _say(line, True)
    uids = [devpod.pod_uid(o["spec"]["template"]["spec"], c)[0]
            for o in objects if o.get("kind") == "Deployment"
            for c in o["spec"]["template"]["spec"]["containers"]]
    guard = devpod.choose_guard(uids, work, opts.python)
    for line in guard.lines:
        _say(line, True)
    try:
        specs = rendered_specs(objects, work, nats_url, config, opts.port, opts.web_port,
                               guard, dev_secrets(opts.nats_creds))
    except DevError as exc:
        _say(f"error: {exc}", True)
        return EXIT_INPUT
    supervisor = Supervisor(specs, ready_timeout=opts.ready_timeout, python=opts.python)
    quiet = opts.call is not None  # stdout is for the reply then
    try:
        try:
            await _until(supervisor.start(), stop)
        except StartupError as exc:
            _say(f"error: {exc}", True)
            for line in exc.output[-SHOW_LINES:]:
                _say(f"  {line}", True)
            return _exit_code(exc.returncode)
        rpcs = ", ".join(w.rpc for w in plan.workflows)
        _say(f"ready: grpc {HOST}:{opts.port} (rpcs: {rpcs}), web http://{HOST}:{opts.web_port}",
             quiet)
        if opts.call is not None:
            return await _until(_call(compiled, opts), stop)
        await stop.wait()  # a replica that exits is restarted (runner.supervisor)
        raise Interrupted
    except Interrupted:
        _say("stopping: the entrypoint first, then the nodes, then nats-server", True)
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second one does not wait any more
            loop.add_signal_handler(sig, _kill_now, supervisor)
        await supervisor.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _kill_now(supervisor: Supervisor) -> None:
    _say("interrupted again: killing every process", True)
    supervisor.kill()


async def _call(compiled: CompiledProto, opts: Options) -> int:
    assert opts.call is not None
    rpc, request = opts.call
    try:
        reply = await call_json(f"{HOST}:{opts.port}", compiled, rpc, request, opts.call_timeout)
    except CallFailed as exc:
        _say(f"error: {exc}", True)
        return EXIT_RPC
    _say(reply, False)
    return 0


@click.command(short_help="Run a version locally on an embedded nats-server.")
@click.argument("target", metavar="VERSION")
@click.option("--port", default=contract.GRPC_PORT, show_default=True,
              type=click.IntRange(1, 65535), help="The entrypoint's gRPC port.")
@click.option("--web-port", default=contract.WEB_PORT, show_default=True,
              type=click.IntRange(1, 65535),
              help="The entrypoint's HTTP port (/proto, /healthz, /readyz, /metrics).")
@click.option("--nats", "nats_url", metavar="URL",
              help="Use this NATS server (with JetStream) instead of an embedded one. "
                   "No credentials in it: see --nats-creds.")
@click.option("--nats-creds", "nats_creds", metavar="FILE",
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Authenticate to --nats URL with this .creds file (user JWT and nkey "
                   "seed), as kai.yaml's nats.auth Secret does in the cluster.")
@click.option("--config", "configs", multiple=True, metavar="NAME=VALUE",
              help="A declared config value (repeatable). For a file, NAME=@path reads it "
                   "from a file. Undeclared on the command line: taken from the environment.")
@click.option("--call", "call_", nargs=2, metavar="RPC JSON",
              help="Once ready, make this one call, print the reply as JSON and exit.")
@click.option("--timeout", "call_timeout", default=30.0, show_default=True,
              type=click.FloatRange(0.001), help="The deadline of --call, in seconds.")
@click.option("--ready-timeout", default=DEFAULT_READY_TIMEOUT, show_default=True,
              type=click.FloatRange(0.1), help="How long every process may take to be ready.")
@click.option("--repo", "repo", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The GitOps repo whose versions/ a VERSION name is looked up in (default: "
                   "the nearest directory with kai.yaml, from the current directory upwards).")
@click.option("--install", is_flag=True,
              help="When this Python lacks a requirement of the version's requirements.txt, "
                   "install them into a venv cached under ~/.cache/kai/venvs (or "
                   "$XDG_CACHE_HOME/kai/venvs), made once per requirements file, and run "
                   "the processes with its Python.")
def dev(target: str, port: int, web_port: int, nats_url: str | None,
        nats_creds: Path | None, configs: tuple[str, ...], call_: tuple[str, str] | None,
        call_timeout: float, ready_timeout: float, repo: Path | None, install: bool) -> None:
    """Run VERSION locally: embedded NATS, the entrypoint and every node.

    VERSION is a version directory, or inside a GitOps repo the name of a
    version in its versions/ folder (`kai dev greeter-v1` is
    `kai dev versions/greeter-v1`).

    The processes get the command, environment, replicas and probes the
    rendered Deployments give them, on this machine's paths and ports (an
    autoscaled process runs its minReplicas, at least one: a node that may
    sleep in the cluster runs here, and nothing scales); their
    output is printed with their name in front. A node sees the rendered
    ConfigMap's files only, read-only (as root: run as the pod's runAsUser, or
    without capabilities), never the version directory itself. "ready" is printed once every
    replica's readiness probe passes. A process that exits, or fails its
    liveness probe, is restarted after 0.5 s, doubling up to 10 s. Ctrl-C stops
    the entrypoint, then the nodes, then NATS, each within its grace period
    (exit 0; a second Ctrl-C kills at once). A node that fails to start (its
    module does not import, `init` raises) stops everything, and `kai dev`
    exits non-zero with that node's error.

    A requirements.txt at the top of the version is checked first against
    this Python: a requirement it does not meet stops kai dev with one line
    each and the pip command that installs them; with --install they go
    into a cached venv instead, whose Python then runs the processes.

    \b
    Examples:
      kai dev examples/greeter
      kai dev examples/greeter --call PyGreet '{"name": "Ada"}'
      kai dev examples/kre-pandas --install   (its requirements.txt in a cached venv)
      kai dev my-v1 --config API_KEY=s3cret --config CERT=@cert.pem   (in a GitOps repo)
      kai dev my-v1 --nats tls://nats.example.com --nats-creds user.creds
    """
    opts = Options(port, web_port, nats_url, ready_timeout, call_ or None, call_timeout,
                   nats_creds=nats_creds)
    say = functools.partial(click.echo, err=True)
    try:
        version_dir = resolve_version(target, repo)
    except DevError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    version = load_or_exit(version_dir)
    compiled = compile_or_exit(version)
    try:
        if opts.call is not None:
            parse_request(find_rpc(compiled, opts.call[0]), opts.call[1])
        config = devconfig.resolve(version.config.variables, version.config.files,
                                   devconfig.parse_pairs(configs))
        if nats_creds is not None and not nats_url:
            raise DevError("--nats-creds needs --nats URL (the embedded nats-server takes "
                           "no credentials)")
        dev_secrets(nats_creds)  # a file that is no .creds file stops here
        check_port(port, "--port")
        check_port(web_port, "--web-port")
        if nats_url:
            check_nats(nats_url)
        project = find_project(version.directory)
        plan, objects = render_local(project, version, nats_creds is not None)
        python = devvenv.python_for(version.directory, install, say,
                                    f"kai dev {target} --install")
    except KeyboardInterrupt:
        click.echo("error: interrupted; a venv whose install did not finish is made again "
                   "by the next kai dev --install", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except devvenv.Unmet as exc:
        for line in exc.lines:
            click.echo(line, err=True)
        sys.exit(EXIT_INPUT)
    except InputError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EXIT_INPUT)
    except (CallUsageError, devconfig.ConfigError, DevError, PlanError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    opts = dataclasses.replace(opts, python=python)
    sys.exit(_serve(project, version, plan, objects, compiled, opts, config))


def _serve(project: Project, version: Version, plan: VersionPlan, objects: list[dict[str, Any]],
           compiled: CompiledProto, opts: Options, config: devconfig.DevConfig) -> int:
    for line in remove_stale_work_dirs(Path(tempfile.gettempdir())):
        click.echo(line, err=True)
    with tempfile.TemporaryDirectory(prefix=f"{WORK_PREFIX}{os.getpid()}-") as tmp:
        work = Path(tmp)
        work.chmod(0o711)  # the pods' users reach their own folders in it, list nothing
        nats: NatsServer | None = None
        try:
            if opts.nats_url is None:
                nats = NatsServer(store_dir=work / "nats", new_session=True)
                try:
                    nats.start()
                except NatsServerError as exc:
                    click.echo(f"error: {exc}", err=True)
                    return EXIT_INPUT
            url = opts.nats_url or (nats.url if nats else "")
            return asyncio.run(run(project, version, plan, objects, compiled, opts, config,
                                   url, work))
        finally:
            if nats is not None:
                if nats.proc is not None and nats.proc.poll() is None:
                    click.echo("stopping nats-server", err=True)
                nats.close()  # last: the processes that used it have stopped


def remove_stale_work_dirs(tmp: Path) -> list[str]:
    """Remove the `kai-dev-<pid>-*` folders of earlier runs whose process is gone (killed
    before it could clean up); one line for each."""
    said = []
    for path in sorted(tmp.glob(f"{WORK_PREFIX}*-*")):
        pid = path.name[len(WORK_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or pid_alive(int(pid)) or not path.is_dir() or path.is_symlink():
            continue
        for folder, _, _ in os.walk(path):  # its read-only volumes (0555) become removable
            with contextlib.suppress(OSError):
                os.chmod(folder, 0o700)
        shutil.rmtree(path, ignore_errors=True)
        said.append(f"removed {path}: left by kai dev (pid {pid}), which was killed")
    return said
