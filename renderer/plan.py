"""The plan: every process of a version, with what it runs and the environment it gets.

The plan has two consumers, which is why dev and production cannot drift:

* the templates (renderer.render) turn it into Kubernetes objects;
* `kai dev` (runner.supervisor) starts it as local processes.

Environment names come from runner.contract, the one definition both sides share.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from runner import contract

from .autoscaling import (
    HPA,
    KEDA,
    ZERO_NEEDS_KEDA,
    Autoscaling,
    AutoscalingError,
    AutoscalingOverride,
    cpu_request_message,
    decide,
    layers,
    needs_max_message,
    no_work_message,
    node_triggers,
)
from .images import container_image
from .krt import Config, Node, Version
from .project import (
    PUBLISHED,
    STARTED,
    VERSIONS_DIR,
    ConfigSource,
    Project,
    lacks_config_source,
    no_config_source,
)
from .scheduling import (
    ProcessSettings,
    ResourceOverride,
    Resources,
    Scheduling,
    Toleration,
    excesses,
    merge,
    unknown_node,
)
from .versionfiles import Selected, VersionFilesError, shipped_files

MANAGED_BY = "kai"
ENTRYPOINT = "entrypoint"
NODE = "node"
ACTIVE_SERVICE = "active-entrypoint"
MAX_NAME = 63  # DNS-1123 / DNS-1035 label and label-value limit
HASH_LEN = 10
CONFIGMAP_LIMIT = 1024 * 1024 - 16 * 1024  # leave room for metadata under etcd's 1 MiB
CONFIGMAP_KEY_MAX = 253
RUN_AS = 10001  # uid and gid of every container
GRACE_SECONDS = 30
TMP_SIZE = "256Mi"
METRICS_PATH = "/metrics"  # Prometheus metrics, on every runner's web port (runner.web)
SPREAD_REPLICAS = 2  # from this many replicas on: a PodDisruptionBudget and spread by node
SECRET = "secret"
EXTERNAL_SECRET = "externalSecret"
SEALED_SECRET = "sealedSecret"
CONFIG_KINDS = (SECRET, EXTERNAL_SECRET, SEALED_SECRET)

_KEY_SAFE = re.compile(r"[^-.A-Za-z0-9]")


@dataclass(frozen=True)
class Port:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int  # the Service's port
    target: int  # the entrypoint container's port


@dataclass(frozen=True)
class Probe:
    """A readiness or liveness probe: gRPC health on `port`, or HTTP GET `path` when set."""

    port: int | str  # a port number, or the name of one of the container's ports
    path: str = ""
    period: int = 10
    failure_threshold: int | None = None
    initial_delay: int | None = None


@dataclass(frozen=True)
class Rollout:
    """A Deployment's RollingUpdate strategy, when it is not Kubernetes' default."""

    max_surge: int
    max_unavailable: int


# A GPU node's rollout takes a pod down before it starts the new one: no spare GPU needed.
GPU_ROLLOUT = Rollout(max_surge=0, max_unavailable=1)


@dataclass(frozen=True)
class Mounts:
    """Where a process finds its files: the version's, its config files and scratch space."""

    version: str = contract.VERSION_MOUNT
    config: str = contract.CONFIG_MOUNT
    tmp: str = contract.TMP_DIR
    tmp_size: str = TMP_SIZE
    nats_auth: str = contract.NATS_AUTH_MOUNT  # kai.yaml's nats.auth Secret, when it names one
    nats_ca: str = contract.NATS_CA_MOUNT  # kai.yaml's nats.tls.caSecret, when it names one


@dataclass(frozen=True)
class Process:
    """One process (a Deployment in the cluster, a child process in `kai dev`)."""

    name: str  # Kubernetes object name
    component: str  # ENTRYPOINT or NODE
    node: str | None  # the node's name in krt.yml, None for the entrypoint
    image: str  # what the Deployment names (renderer.images.container_image)
    command: tuple[str, ...]
    env: dict[str, str]  # the contract environment (and its KRE aliases), with cluster paths
    ports: tuple[Port, ...]
    replicas: int  # autoscaled: what `kai dev` starts (the Deployment names none)
    gpu: bool
    labels: dict[str, str]
    selector: dict[str, str]
    resources: Resources  # every layer merged (renderer.scheduling), with a GPU node's GPU
    container: str  # the container's name: the node's, or ENTRYPOINT
    readiness: Probe
    liveness: Probe
    tolerations: tuple[Toleration, ...] = ()
    node_selector: dict[str, str] = field(default_factory=dict)
    service_account: str = ""  # "": the namespace's default, and no token mounted
    image_pull_secrets: tuple[str, ...] = ()
    priority_class: str = ""
    rollout: Rollout | None = None  # None: Kubernetes' default RollingUpdate
    # from the version's Secret: the variables of these names (config variables, then each
    # config file's content, as KRE delivered files), and the files mounted in mounts.config
    secret_env: tuple[str, ...] = ()
    secret_files: tuple[str, ...] = ()
    run_as: int = RUN_AS  # uid and gid
    grace_seconds: int = GRACE_SECONDS
    mounts: Mounts = field(default_factory=Mounts)
    autoscaling: Autoscaling | None = None  # None: fixed replicas (renderer.autoscaling)

    @property
    def spread(self) -> bool:
        """Replicated (or autoscaled up to 2 or more): a PodDisruptionBudget lets a drain take
        only one replica at a time, and the replicas spread over nodes (by hostname) where
        they can."""
        most = self.autoscaling.max_replicas if self.autoscaling else self.replicas
        return most >= SPREAD_REPLICAS

    @property
    def automount_token(self) -> bool:
        """A named service account is for workload identity (or the Kubernetes API), which
        needs its token; without one, no token is mounted."""
        return bool(self.service_account)

    def local_env(self, version_dir: Path, nats_url: str, config_dir: Path,
                  ports: dict[str, int] | None = None) -> dict[str, str]:
        """The same environment with the paths and addresses of one local machine."""
        env = dict(self.env)
        env[contract.ENV_VERSION_DIR] = str(version_dir)
        env[contract.ENV_NATS_URL] = nats_url
        env[contract.ENV_CONFIG_DIR] = str(config_dir)
        for key, value in (ports or {}).items():
            env[key] = str(value)
        env.update(contract.kre_aliases(env))
        return env

    @property
    def web_port(self) -> Port:
        """The container port the runner serves /healthz, /readyz and METRICS_PATH on (its
        KAI_WEB_PORT): the entrypoint's `web`, a node's `metrics`."""
        port = int(self.env[contract.ENV_WEB_PORT])
        return next(p for p in self.ports if p.port == port)


@dataclass(frozen=True)
class ExternalSecret:
    """The ExternalSecret (external-secrets.io) that fills a version's config Secret."""

    name: str  # the Secret's name, and the ExternalSecret's
    labels: dict[str, str]
    store: str
    store_kind: str
    remote_key: str
    keys: tuple[str, ...]  # every declared config name, sorted


@dataclass(frozen=True)
class VersionPlan:
    project: str
    namespace: str
    version: str
    description: str
    state: str
    service_name: str  # the version's name, or ACTIVE_SERVICE when published
    processes: tuple[Process, ...]
    files: dict[str, bytes]  # version-relative posix path -> content (what ships in the ConfigMap)
    configmap_name: str  # "" with a version image
    config_variables: tuple[str, ...] = ()
    config_files: tuple[str, ...] = ()
    config_source: ConfigSource | None = None
    workflows: tuple[contract.Workflow, ...] = field(default_factory=tuple)
    # The image every process runs when the version has one of its own (renderer.build):
    # its files are baked in at the version mount, so no ConfigMap and no version volume.
    version_image: str = ""
    nats_auth_secret: str = ""  # mounted into every pod (Mounts.nats_auth) when set
    nats_ca_secret: str = ""  # mounted into every pod (Mounts.nats_ca) when set
    # with kai.yaml monitoring.dashboards: the version's own metrics/dashboards/*.json (file
    # name -> JSON text), shipped beside its generated dashboard (renderer.dashboards)
    dashboards: dict[str, str] = field(default_factory=dict)

    @property
    def published(self) -> bool:
        return self.state == PUBLISHED

    @property
    def entrypoint(self) -> Process:
        return next(p for p in self.processes if p.component == ENTRYPOINT)

    @property
    def nodes(self) -> tuple[Process, ...]:
        return tuple(p for p in self.processes if p.component == NODE)

    @property
    def secret_name(self) -> str | None:
        return self.config_source.secret if self.config_source else None

    @property
    def service_ports(self) -> tuple[ServicePort, ...]:
        """The ports of the version's Service, in front of its entrypoint."""
        return (ServicePort("grpc", contract.GRPC_PORT, contract.GRPC_PORT),
                ServicePort("web", 80, contract.WEB_PORT))

    @property
    def configmap_labels(self) -> dict[str, str]:
        return labels(self.project, self.version, "files", "files", self.configmap_name)

    @property
    def configmap_items(self) -> list[dict[str, str]]:
        """Each shipped file's ConfigMap key and its path in the version mount."""
        return [{"key": configmap_key(path), "path": path} for path in sorted(self.files)]

    @property
    def config(self) -> Config:
        """The config the version declares."""
        return Config(self.config_variables, self.config_files)

    @property
    def external_secret(self) -> ExternalSecret | None:
        """The ExternalSecret to render, when declared config comes from one."""
        source = self.config_source
        if not self.config.declared or source is None or source.kind != EXTERNAL_SECRET:
            return None
        return ExternalSecret(
            name=source.secret,
            labels=labels(self.project, self.version, "config", "config", source.secret),
            store=source.store,
            store_kind=source.store_kind or "ClusterSecretStore",
            remote_key=source.remote_key or source.secret,
            keys=tuple(sorted({*self.config_variables, *self.config_files})),
        )

    @property
    def config_problem(self) -> str | None:
        """Why the version's declared config cannot be supplied as planned, or None."""
        declared = self.config
        if not declared.declared:
            return None
        source = self.config_source
        if lacks_config_source(declared, source):
            return no_config_source(self.version, declared)
        clash = sorted({n for n in (*self.config_variables, *self.config_files)
                        if contract.is_reserved_env(n)})
        if clash:
            return (f"config {', '.join(clash)} clash with the runner's own environment "
                    f"variables ({contract.reserved_env_rule()})")
        assert source is not None
        if source.kind not in CONFIG_KINDS:
            return (f"unknown config source kind {source.kind!r} "
                    f"(allowed: {', '.join(CONFIG_KINDS)})")
        if source.kind == EXTERNAL_SECRET and not source.store:
            return (f"config source {EXTERNAL_SECRET} needs `store` "
                    "(the SecretStore or ClusterSecretStore to read from)")
        return None


class PlanError(Exception):
    """The version cannot be planned as asked (too large for a ConfigMap, ...)."""


# --- derived names -------------------------------------------------------------


def entrypoint_name(version: str) -> str:
    return f"{version}-{ENTRYPOINT}"


def node_process_name(version: str, node: str) -> str:
    return f"{version}-{node}"


def configmap_name(version: str, files: dict[str, bytes]) -> str:
    return _files_name(version, content_hash(files))


def _files_name(version: str, digest: str) -> str:
    return f"{version}-files-{digest}"


def configmap_key(path: str) -> str:
    """A ConfigMap key for a version-relative path (keys cannot hold `/`).

    Every character outside `[-.A-Za-z0-9]` (including `_` itself) becomes `_XX` (hex),
    so the mapping is one-to-one: `src/main.py` -> `src_2Fmain.py`. A key that would be
    too long becomes `_H` + a hash of the path. Pods get the tree back through `items`.
    """
    key = _KEY_SAFE.sub(lambda m: "".join(f"_{b:02X}" for b in m[0].encode()), path)
    if len(key) > CONFIGMAP_KEY_MAX or key.startswith(".."):
        key = "_H" + hashlib.sha256(path.encode()).hexdigest()
    return key


def content_hash(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode())
        h.update(b"\0")
        h.update(hashlib.sha256(files[path]).digest())
    return h.hexdigest()[:HASH_LEN]


def derived_names(version: Version) -> list[tuple[str, str]]:
    """Every Kubernetes name (or label value) a manifest value ends up in.

    Returns (name, field path that caused it); validation checks each fits MAX_NAME.
    """
    v = version.name
    out = [
        (v, "version"),
        (entrypoint_name(v), "version"),
        (_files_name(v, "0" * HASH_LEN), "version"),
    ]
    for i, node in enumerate(version.nodes):
        out.append((node_process_name(v, node.name), f"nodes[{i}].name"))
    return out


# --- building the plan ------------------------------------------------------------


def selected_files(version: Version) -> Selected:
    """The files that ship to the version's pods (renderer.versionfiles), not read yet.

    Raises PlanError when they cannot be selected (a bad ignore file).
    """
    try:
        return shipped_files(version.directory)
    except VersionFilesError as exc:
        raise PlanError(f"version {version.name}: {exc}") from None


class FilesTooLarge(PlanError):
    """The files to ship take more than a ConfigMap holds; `size` in bytes. A version
    like this needs an image of its own (renderer.build)."""

    def __init__(self, size: int) -> None:
        self.size = size
        super().__init__(f"its files take {amount(size)} in a ConfigMap, more than the "
                         f"{amount(CONFIGMAP_LIMIT)} one holds")


def read_files(selected: Iterable[tuple[str, Path]],
               limit: int | None = CONFIGMAP_LIMIT) -> dict[str, bytes]:
    """Read the selected files; raises FilesTooLarge when they do not fit in a ConfigMap
    (before reading anything when their sizes on disk already say so). `limit` None:
    read them whatever their size."""
    selected = list(selected)
    if limit is not None:
        on_disk = sum(path.stat().st_size for _, path in selected)
        if on_disk > limit:
            raise FilesTooLarge(on_disk)
    files = {rel: path.read_bytes() for rel, path in selected}
    if limit is not None:
        size = configmap_size(files)
        if size > limit:
            raise FilesTooLarge(size)
    return dict(sorted(files.items()))


def configmap_size(files: Mapping[str, bytes]) -> int:
    """The bytes the files take in a ConfigMap: UTF-8 text as it is, anything else in
    base64 (`binaryData`), plus each file's path (its key)."""
    total = 0
    for rel, content in files.items():
        total += len(rel.encode("utf-8", "surrogateescape"))
        try:
            content.decode("utf-8")
            total += len(content)
        except UnicodeDecodeError:
            total += 4 * ((len(content) + 2) // 3)
    return total


def amount(size: int) -> str:
    """`1.5 MiB (1572864 bytes)`."""
    if size >= 1024**3:
        return f"{size / 1024**3:.1f} GiB ({size} bytes)"
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MiB ({size} bytes)"
    return f"{size / 1024:.0f} KiB ({size} bytes)"


def labels(project: str, version: str, component: str, name: str, instance: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/part-of": project,
        "app.kubernetes.io/version": version,
    }


def build_plan(project: Project, version: Version, state: str | None = None, *,
               local: bool = False) -> VersionPlan:
    """The plan of one version in a project. `state` defaults to the desired state in kai.yaml.

    A version that needs an image of its own (renderer.build) runs it in every process,
    and its plan has no files for a ConfigMap. `local`: the plan `kai dev` runs on this
    machine, whose files always come as a ConfigMap, whatever image the cluster would run.

    Raises PlanError when the version cannot run as asked (renderer.build.image_need).
    """
    from .build import size_problem, version_image
    from .dashboards import own_dashboards

    state = state or project.state_of(version.name)
    vs = project.versions.get(version.name)
    v = version.name
    defined = [n.name for n in version.nodes]
    unknown = sorted(set(vs.nodes) - set(defined)) if vs else []
    if unknown:  # kai validate says so first, at its position in kai.yaml
        raise PlanError(f"kai.yaml: versions.{v}.nodes.{unknown[0]}: "
                        f"{unknown_node(v, unknown[0], defined)}")
    workflows = plan_workflows(version)
    selected = selected_files(version)
    image = None if local else version_image(project, version, selected)
    if image is not None:
        files: dict[str, bytes] = {}
    elif local:
        too_large = size_problem(selected)
        if too_large:
            raise PlanError(f"version {v}: {too_large}")
        files = read_files(selected, limit=None)
    else:
        files = read_files(selected)  # they fit: version_image said so
    base = runner_env(project, version, workflows)
    nodes = [node_process(project, version, node, base)
             for node in sorted(version.nodes, key=lambda n: n.name)]
    # the entrypoint keeps a sleeping node's consumers, and is ready without its replicas
    sleeping = tuple(str(p.node) for p in nodes
                     if p.autoscaling is not None and p.autoscaling.scales_to_zero)
    processes = [entrypoint_process(project, version, replace(base, scale_to_zero=sleeping)),
                 *nodes]
    if image is not None:
        processes = [replace(p, image=image.tag) for p in processes]
    return VersionPlan(
        project=project.name,
        namespace=project.namespace,
        version=v,
        description=version.description,
        state=state,
        service_name=ACTIVE_SERVICE if state == PUBLISHED else v,
        processes=tuple(processes),
        files=files,
        configmap_name="" if image else configmap_name(v, files),
        config_variables=version.config.variables,
        config_files=version.config.files,
        config_source=vs.config if vs else None,
        workflows=workflows,
        version_image=image.tag if image else "",
        nats_auth_secret=project.nats.auth_secret,
        nats_ca_secret=project.nats.ca_secret,
        dashboards=(own_dashboards(version.directory, f"{VERSIONS_DIR}/{v}")
                    if project.monitoring.dashboards else {}),
    )


def plan_workflows(version: Version) -> tuple[contract.Workflow, ...]:
    """The version's workflows as the runner reads them."""
    return tuple(
        contract.Workflow(w.name, w.entrypoint, tuple(w.sequential), w.delivery)
        for w in version.workflows
    )


def runner_env(project: Project, version: Version,
               workflows: tuple[contract.Workflow, ...]) -> contract.RunnerEnv:
    """The environment every process of the version shares (cluster paths)."""
    return contract.RunnerEnv(
        project=project.name,
        version=version.name,
        version_dir=contract.VERSION_MOUNT,
        proto=version.proto,
        workflows=workflows,
        nats_url=project.nats.url,
        config_variables=version.config.variables,
        config_files=version.config.files,
        config_dir=contract.CONFIG_MOUNT,
        storage=project.nats.storage,
        nats_auth_dir=contract.NATS_AUTH_MOUNT if project.nats.auth_secret else "",
        nats_ca_file=(f"{contract.NATS_CA_MOUNT}/{contract.NATS_CA_KEY}"
                      if project.nats.ca_secret else ""),
        tracing_endpoint=project.tracing.endpoint,
        tracing_sampler=project.tracing.sampler,
        tracing_sampler_arg=("" if project.tracing.sampler_arg is None
                             else repr(project.tracing.sampler_arg)),
        **asdict(project.runtime_of(version.name).settings()),
    )


def entrypoint_process(project: Project, version: Version, base: contract.RunnerEnv) -> Process:
    """The entrypoint: the gRPC server that starts the version's workflows."""
    v = version.name
    name = entrypoint_name(v)
    ep_labels = labels(project.name, v, ENTRYPOINT, ENTRYPOINT, name)
    ep_labels.update({"type": ENTRYPOINT, "version-name": name})
    settings = project.entrypoint_settings(v)
    resources = process_resources(v, ENTRYPOINT, project.resources, settings.resources)
    scaling = _autoscaling(v, ENTRYPOINT, HPA, resources,
                           [settings.autoscaling] if settings.autoscaling else [])
    return Process(
        name=name,
        component=ENTRYPOINT,
        node=None,
        image=container_image(version.entrypoint_image, False, project.images),
        command=(*contract.RUNNER_COMMAND, contract.ROLE_ENTRYPOINT),
        env=base.to_environ(),
        ports=(Port("grpc", contract.GRPC_PORT), Port("web", contract.WEB_PORT)),
        replicas=scaling.local_replicas if scaling else 1,
        gpu=False,
        labels=ep_labels,
        selector={"type": ENTRYPOINT, "version-name": name},
        resources=resources,
        container=ENTRYPOINT,
        readiness=Probe(contract.GRPC_PORT, failure_threshold=3),
        liveness=Probe("web", "/healthz", period=20, initial_delay=10),
        mounts=_mounts(settings),
        autoscaling=scaling,
        **_placement(project.scheduling_of(v)),
    )


def node_process(project: Project, version: Version, node: Node,
                 base: contract.RunnerEnv) -> Process:
    """One node of the version, with its config and, for a GPU node, a GPU."""
    v = version.name
    name = node_process_name(v, node.name)
    env = replace(base, node=node.name, handler=node.src, web_port=contract.NODE_WEB_PORT)
    node_labels = labels(project.name, v, NODE, node.name, name)
    node_labels.update({"type": NODE, "version-name": v})
    settings = project.node_settings(v, node.name)
    resources = process_resources(v, f"node {node.name}", project.resources, node.resources,
                                  settings.resources)
    placement = _placement(project.scheduling_of(v))
    if node.gpu:
        gpu = project.gpu
        one = {gpu.resource: "1"}  # an extended resource: its request equals its limit
        resources = Resources({**resources.requests, **one}, {**resources.limits, **one})
        tolerations = tuple(dict.fromkeys((*placement["tolerations"], *gpu.pod_tolerations)))
        placement.update(tolerations=tolerations, rollout=GPU_ROLLOUT,
                         node_selector={**placement["node_selector"], **gpu.node_selector})
    scaling = _autoscaling(
        v, f"node {node.name}", project.autoscaling.engine, resources,
        layers(node.autoscaling, settings.autoscaling, settings.replicas),
        node_triggers(project.name, v, base.workflows, node.name), node.name)
    fixed = node.replicas if settings.replicas is None else settings.replicas
    return Process(
        name=name,
        component=NODE,
        node=node.name,
        image=container_image(node.image, node.gpu, project.images),
        command=(*contract.RUNNER_COMMAND, contract.ROLE_NODE),
        env=env.to_environ(),
        ports=(Port("metrics", contract.NODE_WEB_PORT),),
        replicas=scaling.local_replicas if scaling else fixed,
        gpu=node.gpu,
        labels=node_labels,
        selector={"app.kubernetes.io/instance": name},
        resources=resources,
        container=node.name,
        readiness=Probe(contract.NODE_WEB_PORT, "/readyz", failure_threshold=3),
        liveness=Probe(contract.NODE_WEB_PORT, "/healthz", period=20, initial_delay=10),
        secret_env=secret_env(version.config),
        secret_files=version.config.files,
        mounts=_mounts(settings),
        autoscaling=scaling,
        **placement,
    )


def process_resources(version: str, what: str, base: Resources,
                      *overrides: ResourceOverride) -> Resources:
    """The layers merged (renderer.scheduling); raises PlanError when a request ends up
    above its limit (validation says so first, at the field's position)."""
    found = excesses([base, *overrides])
    if found:
        said = "; ".join(f"requests.{e.resource} {e.request} is more than limits.{e.resource} "
                         f"{e.limit}" for e in found)
        raise PlanError(f"version {version}: {what}: {said}; Kubernetes refuses a request "
                        "above its limit")
    return merge(base, *overrides)


def _autoscaling(version: str, what: str, engine: str, resources: Resources,
                 given: list[AutoscalingOverride], triggers: tuple[Any, ...] = (),
                 node: str = "") -> Autoscaling | None:
    """The process's autoscaling (renderer.autoscaling), or None for fixed replicas; raises
    PlanError where validation would have said no (at the field's position)."""
    try:
        scaling = decide(engine, given, triggers)
    except AutoscalingError:
        raise PlanError(f"version {version}: {what}: autoscaling "
                        f"{needs_max_message(node)}") from None
    if scaling is None:
        return None
    if scaling.engine == KEDA and not scaling.triggers:
        raise PlanError(f"version {version}: {no_work_message(node)}")
    if scaling.engine == HPA and scaling.min_replicas == 0:
        raise PlanError(f"version {version}: {what}: autoscaling minReplicas {ZERO_NEEDS_KEDA}")
    if scaling.engine == HPA and "cpu" not in resources.requests:
        raise PlanError(f"version {version}: {cpu_request_message(what)}")
    return scaling


def _mounts(settings: ProcessSettings) -> Mounts:
    return Mounts(tmp_size=settings.tmp_size or TMP_SIZE)


def _placement(scheduling: Scheduling) -> dict[str, Any]:
    """The Process fields that say where its pods run and as whom."""
    return {
        "tolerations": scheduling.tolerations or (),
        "node_selector": dict(scheduling.node_selector or {}),
        "service_account": scheduling.service_account or "",
        "image_pull_secrets": scheduling.image_pull_secrets or (),
        "priority_class": scheduling.priority_class or "",
    }


def secret_env(config: Config) -> tuple[str, ...]:
    """The variables a node gets from the version's Secret: each config variable, and each
    config file's content under the file's name (KRE gave files so; the file is mounted
    too). A name declared both ways is one variable."""
    return tuple(dict.fromkeys((*config.variables, *config.files)))


def is_running(state: str) -> bool:
    """Started and published versions render; stopped ones render nothing."""
    return state in (STARTED, PUBLISHED)
