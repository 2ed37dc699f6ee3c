"""The kai.yaml model: a GitOps repo's project settings and each version's desired state.

Loading, validation against `schemas/kai.schema.json` and writing live in
renderer.projectfile; this module only holds the typed model the plan reads.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from runner.contract import (
    DEFAULT_ACK_WAIT,
    DEFAULT_DATA_MAX_AGE,
    DEFAULT_DATA_MAX_BYTES,
    DEFAULT_MAX_DELIVER,
    DEFAULT_MAX_MESSAGE,
    DEFAULT_NATS_URL,
    DEFAULT_REQUEST_TIMEOUT,
)

from .autoscaling import DEFAULT_ACCOUNT, AutoscalingSettings
from .krt import Config
from .scheduling import Gpu, ProcessSettings, Resources, Scheduling

STOPPED = "stopped"
STARTED = "started"
PUBLISHED = "published"
STATES = (STOPPED, STARTED, PUBLISHED)

PROJECT_FILE = "kai.yaml"
VERSIONS_DIR = "versions"
RENDERED_DIR = "rendered"
DEPLOY_DIR = "deploy"
KUSTOMIZATION = "kustomization.yaml"  # kustomize's own file in rendered/<project>

DEFAULT_KUBERNETES_VERSION = "1.35"
RUNNER_TAG = "0.1.0"  # the tag of every runner image flavor (renderer.images)
RUNNER = "runner"  # the slim flavor: the runner package and its few dependencies
RUNNER_ML = "runner-ml"  # KRE's ML library set, CPU torch
RUNNER_GPU = "runner-gpu"  # CUDA base, CUDA torch: for gpu nodes
FLAVORS = (RUNNER, RUNNER_ML, RUNNER_GPU)  # the runner images, and what a version image builds on
DEFAULT_FLAVOR = RUNNER_ML
GRPC_BACKEND_ANNOTATION = {"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"}
# ingress-nginx's canary Ingress: a second Ingress of the same host and path, to the
# canary's Service, that takes this share (of 100) of the requests. kai sets them (on the
# canary's Ingress only); kai.yaml ingress.annotations may set no `canary*` annotation.
CANARY_ANNOTATION = "nginx.ingress.kubernetes.io/canary"
CANARY_WEIGHT_ANNOTATION = "nginx.ingress.kubernetes.io/canary-weight"
CANARY_MIN_WEIGHT = 1  # a canary's share of the outside traffic, in percent: 1 to 99
CANARY_MAX_WEIGHT = 99
TRAFFIC = 100  # the whole: the published version keeps TRAFFIC less the canary's weight


@dataclass(frozen=True)
class Ingress:
    """How outside traffic reaches the published version's entrypoint."""

    host: str = ""  # empty: the Ingress matches every host
    class_name: str = "nginx"
    tls_secret: str = ""
    annotations: dict[str, str] = field(default_factory=lambda: dict(GRPC_BACKEND_ANNOTATION))


@dataclass(frozen=True)
class ParentRef:
    """A Gateway (Gateway API) the project's GRPCRoute attaches to: kai.yaml
    `gateway.parentRefs[]`. `namespace` "": the project's; `section_name` "": every
    listener of the Gateway that accepts the route."""

    name: str
    namespace: str = ""
    section_name: str = ""


@dataclass(frozen=True)
class Gateway:
    """kai.yaml `gateway:`: outside traffic comes through Gateway API, as a GRPCRoute on
    these Gateways, instead of the Ingress."""

    parent_refs: tuple[ParentRef, ...]
    hostnames: tuple[str, ...] = ()  # empty: every host name the listeners accept


@dataclass(frozen=True)
class ImageMapping:
    """One kai.yaml `images:` entry: `name` (as in krt.yml) → new_name:new_tag@digest.

    Without `gpu` it is a kustomize `images:` entry; with `gpu` it applies only to
    gpu nodes, written into their Deployments (renderer.images).
    """

    name: str
    new_name: str
    new_tag: str = ""
    gpu: bool = False
    digest: str = ""  # "sha256:<64 hex>": pins the image; "" keeps the tag's image


@dataclass(frozen=True)
class Build:
    """kai.yaml `build:`: where version images are pushed and what they are built on.

    A version with a requirements.txt, or files too large for a ConfigMap, runs on an
    image of its own, `<registry>/<project>-<version>:<content hash>` (renderer.build),
    built FROM `base`: when empty, the runner image of `flavor` in the same registry.
    """

    registry: str
    flavor: str = DEFAULT_FLAVOR
    base: str = ""

    @property
    def base_image(self) -> str:
        """The image the version image is built FROM."""
        return self.base or f"{self.registry}/{self.flavor}:{RUNNER_TAG}"

    def over(self, override: BuildOverride) -> Build:
        """These settings with a version's override: its base when it sets one, else
        (when it sets a flavor) the runner image of its flavor, else this base."""
        if not override.flavor and not override.base:
            return self
        base = override.base or (self.base if not override.flavor else "")
        return Build(self.registry, override.flavor or self.flavor, base)


@dataclass(frozen=True)
class BuildOverride:
    """kai.yaml `versions.<v>.build:`: one version's flavor or base ("": the project's)."""

    flavor: str = ""
    base: str = ""


@dataclass(frozen=True)
class ConfigSource:
    """Where a version's declared config comes from. Values never enter git.

    kind "secret": a Secret the user creates, named `secret`.
    kind "externalSecret": an ExternalSecret (external-secrets.io) is rendered that
      fills Secret `secret` from `store` (a SecretStore or ClusterSecretStore) at `remote_key`.
    kind "sealedSecret": the SealedSecret manifest at `file` (relative to the repo)
      is copied into the rendered tree; it unseals into Secret `secret`.
    """

    kind: str
    secret: str
    store: str = ""
    store_kind: str = "ClusterSecretStore"
    remote_key: str = ""
    file: str = ""


@dataclass(frozen=True)
class DataStream:
    """The project's data stream (predictions, measurements, db records): its limits."""

    max_age: float | None = None  # seconds a record is kept; 0: forever
    max_bytes: int | None = None  # bytes kept at most, oldest dropped first; 0: unbounded


@dataclass(frozen=True)
class Runtime:
    """Runner settings: kai.yaml `runtime:`, project-wide or per version.

    A setting left out is None: a version then takes the project's value, and the
    project the runner's default (runner.contract), see :meth:`settings`.
    """

    ack_wait: float | None = None  # seconds a node holds a message before redelivery
    max_deliver: int | None = None  # deliveries of one step before the request fails
    request_timeout: float | None = None  # seconds, when the client sets no deadline
    data_stream: DataStream = field(default_factory=DataStream)  # project-wide only
    max_message: int | None = None  # bytes: the largest request, step output or reply

    def over(self, base: Runtime) -> Runtime:
        """These settings where they are set, `base`'s elsewhere; the data stream is
        `base`'s (there is one per project)."""
        return Runtime(
            ack_wait=_first(self.ack_wait, base.ack_wait),
            max_deliver=_first(self.max_deliver, base.max_deliver),
            request_timeout=_first(self.request_timeout, base.request_timeout),
            data_stream=base.data_stream,
            max_message=_first(self.max_message, base.max_message),
        )

    def settings(self) -> RunnerSettings:
        """Every setting decided: the runner's defaults where none is set."""
        return RunnerSettings(
            ack_wait=_first(self.ack_wait, DEFAULT_ACK_WAIT),
            max_deliver=_first(self.max_deliver, DEFAULT_MAX_DELIVER),
            request_timeout=_first(self.request_timeout, DEFAULT_REQUEST_TIMEOUT),
            max_message=_first(self.max_message, DEFAULT_MAX_MESSAGE),
            data_max_age=_first(self.data_stream.max_age, DEFAULT_DATA_MAX_AGE),
            data_max_bytes=_first(self.data_stream.max_bytes, DEFAULT_DATA_MAX_BYTES),
        )


@dataclass(frozen=True)
class RunnerSettings:
    """The runtime settings a runner process gets; the names of runner.contract.RunnerEnv."""

    ack_wait: float
    max_deliver: int
    request_timeout: float
    max_message: int
    data_max_age: float
    data_max_bytes: int


_T = TypeVar("_T")


def _first(value: _T | None, fallback: _T) -> _T:
    return fallback if value is None else value


@dataclass(frozen=True)
class EgressPort:
    """A port a kai.yaml egress rule opens: a number, or (for pods) a port name."""

    port: int | str
    protocol: str = "TCP"  # TCP, UDP or SCTP


@dataclass(frozen=True)
class EgressRule:
    """One kai.yaml `network.egress` entry: where the nodes may connect, on which ports.

    Either `cidr` (an IP range, less its `excluded` ranges: kai.yaml's `except`) or pods:
    every pod of `namespace`, those of its pods `pod_labels` selects, or, with no
    namespace, the pods `pod_labels` selects in the project's own namespace.
    """

    ports: tuple[EgressPort, ...]
    cidr: str = ""
    excluded: tuple[str, ...] = ()
    namespace: str = ""
    pod_labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Network:
    """kai.yaml `network:`: what the NetworkPolicies open beyond the defaults (egress to DNS
    and NATS; ingress to the entrypoints' gRPC and web ports from anywhere)."""

    egress: tuple[EgressRule, ...] = ()  # every node of every version
    metrics_namespace: str = ""  # may scrape the web and metrics ports; "": nobody
    ingress_from: str = ""  # the only namespace that reaches the entrypoints; "": any


@dataclass(frozen=True)
class Monitoring:
    """kai.yaml `monitoring:`: how Prometheus finds the pods' /metrics, and dashboards."""

    pod_monitor: bool = False  # a PodMonitor per version; else prometheus.io/* annotations
    labels: dict[str, str] = field(default_factory=dict)  # the PodMonitors' extra labels
    # Grafana dashboards per version (renderer.dashboards), as ConfigMaps for its sidecar
    dashboards: bool = False


@dataclass(frozen=True)
class Tracing:
    """kai.yaml `tracing:`: where the runner's processes send their spans (OTLP over gRPC).

    No endpoint: no tracing at all. The runner gets these as OpenTelemetry's own variables
    (runner.contract: OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER, ...).
    """

    endpoint: str = ""  # http(s)://host:port of an OTLP gRPC receiver; "": tracing is off
    sampler: str = ""  # one of contract.TRACE_SAMPLERS; "": the SDK's parentbased_always_on
    sampler_arg: float | None = None  # the ratio of the *traceidratio samplers
    namespace: str = ""  # where the collector runs; the NetworkPolicy allows egress there

    @property
    def port(self) -> int:
        """The endpoint's port (kai.yaml validation requires one); 0 without an endpoint."""
        return (urlsplit(self.endpoint).port or 0) if self.endpoint else 0


@dataclass(frozen=True)
class VersionState:
    state: str = STOPPED
    config: ConfigSource | None = None
    runtime: Runtime = field(default_factory=Runtime)  # overrides the project's, field by field
    build: BuildOverride = field(default_factory=BuildOverride)  # over the project's `build:`
    egress: tuple[EgressRule, ...] = ()  # opened for this version's nodes, besides the project's
    scheduling: Scheduling = field(default_factory=Scheduling)  # the same
    nodes: dict[str, ProcessSettings] = field(default_factory=dict)  # by krt.yml node name
    entrypoint: ProcessSettings = field(default_factory=ProcessSettings)
    canary: int = 0  # kai.yaml `canary: {weight: N}`: N% of the outside traffic; 0: no canary


@dataclass(frozen=True)
class Nats:
    url: str = DEFAULT_NATS_URL
    namespace: str = ""  # where NATS runs; the NetworkPolicy allows egress there
    storage: str = "file"
    auth_secret: str = ""  # nats.auth.secret: the Secret with the runner's NATS credentials
    ca_secret: str = ""  # nats.tls.caSecret: the Secret with the CA of NATS's certificate
    # where KEDA reads /jsz (renderer.autoscaling.monitoring_endpoint); "": url's host, 8222
    monitoring: str = ""
    account: str = DEFAULT_ACCOUNT  # the NATS account of the runner's streams, for KEDA


@dataclass(frozen=True)
class Project:
    name: str
    namespace: str
    create_namespace: bool = True  # False: the namespace exists already; no Namespace rendered
    kubernetes_version: str = DEFAULT_KUBERNETES_VERSION
    nats: Nats = field(default_factory=Nats)
    ingress: Ingress = field(default_factory=Ingress)
    images: tuple[ImageMapping, ...] = ()
    resources: Resources = field(default_factory=Resources)
    runtime: Runtime = field(default_factory=Runtime)
    build: Build | None = None  # None: no version images (kai.yaml has no `build:`)
    gpu: Gpu = field(default_factory=Gpu)
    scheduling: Scheduling = field(default_factory=Scheduling)
    versions: dict[str, VersionState] = field(default_factory=dict)
    root: Path = Path(".")
    network: Network = field(default_factory=Network)
    monitoring: Monitoring = field(default_factory=Monitoring)
    tracing: Tracing = field(default_factory=Tracing)
    autoscaling: AutoscalingSettings = field(default_factory=AutoscalingSettings)
    gateway: Gateway | None = None  # None: the Ingress (ingress-nginx) takes outside traffic

    def state_of(self, version: str) -> str:
        vs = self.versions.get(version)
        return vs.state if vs else STOPPED

    def egress_of(self, version: str) -> tuple[EgressRule, ...]:
        """The egress rules kai.yaml adds for one version's nodes (the project's aside)."""
        vs = self.versions.get(version)
        return vs.egress if vs else ()

    def runtime_of(self, version: str) -> Runtime:
        """The version's runtime settings over the project's."""
        vs = self.versions.get(version)
        return vs.runtime.over(self.runtime) if vs else self.runtime

    def build_of(self, version: str) -> Build | None:
        """The version's build settings over the project's; None without `build:`."""
        if self.build is None:
            return None
        vs = self.versions.get(version)
        return self.build.over(vs.build) if vs else self.build
    def scheduling_of(self, version: str) -> Scheduling:
        """The version's scheduling settings over the project's."""
        vs = self.versions.get(version)
        return vs.scheduling.over(self.scheduling) if vs else self.scheduling

    def node_settings(self, version: str, node: str) -> ProcessSettings:
        """What kai.yaml sets for one node of a version (nothing when it sets nothing)."""
        vs = self.versions.get(version)
        return vs.nodes.get(node, ProcessSettings()) if vs else ProcessSettings()

    def entrypoint_settings(self, version: str) -> ProcessSettings:
        vs = self.versions.get(version)
        return vs.entrypoint if vs else ProcessSettings()

    @property
    def published(self) -> str | None:
        for name in sorted(self.versions):
            if self.versions[name].state == PUBLISHED:
                return name
        return None

    @property
    def canary(self) -> tuple[str, int] | None:
        """The canary and its weight (the first by name, should kai.yaml name two)."""
        for name in sorted(self.versions):
            if self.versions[name].canary:
                return name, self.versions[name].canary
        return None

    @property
    def traffic(self) -> list[tuple[str, int]]:
        """How outside traffic splits: (version, percent) of the published version, then
        of the canary; empty when no version is published."""
        published = self.published
        if published is None:
            return []
        canary = self.canary
        if canary is None:
            return [(published, TRAFFIC)]
        return [(published, TRAFFIC - canary[1]), canary]

    @property
    def rendered_rel(self) -> str:
        """`rendered/<project>`, relative to the repo root: what Argo CD and Flux sync."""
        return f"{RENDERED_DIR}/{self.name}"

    @property
    def rendered_dir(self) -> Path:
        return self.root / RENDERED_DIR / self.name

    @property
    def versions_dir(self) -> Path:
        return self.root / VERSIONS_DIR


# --- rules over the desired states ----------------------------------------------------------


def published_conflicts(states: Mapping[str, str]) -> list[tuple[str, str]]:
    """The rule that at most one version is published (there is one active-entrypoint
    Service per project): (version, the first published) for each published version
    after the first, in the order of `states` (version name -> state)."""
    published = [name for name, state in states.items() if state == PUBLISHED]
    return [(name, published[0]) for name in published[1:]]


def published_conflict(first: str) -> str:
    """What is wrong with a version published while `first` is published too."""
    return (f"only one version can be published and {first} is published too; "
            "set one of them to started")


def too_many_published(states: Mapping[str, str]) -> str | None:
    """The same rule, said once for the whole project; None when it holds."""
    conflicts = published_conflicts(states)
    if not conflicts:
        return None
    names = sorted({conflicts[0][1], *(name for name, _ in conflicts)})
    return (f"{len(names)} versions are published ({', '.join(names)}); at most one may be, "
            "since there is one active-entrypoint Service per project")


def canary_conflicts(states: Mapping[str, str],
                     canaries: Mapping[str, int]) -> list[tuple[str, str]]:
    """The canary rules: at most one canary; its weight from CANARY_MIN_WEIGHT to
    CANARY_MAX_WEIGHT; it is started (never stopped, never the published version); and a
    version is published, whose traffic it shares. (version, what is wrong) for each
    version of `canaries` (version name -> weight; 0: not a canary) that breaks one, in
    the order of `canaries`; `states` maps version names to states. Each message goes
    after the version's name: `greeter-v2 is stopped, and ...`."""
    out: list[tuple[str, str]] = []
    named = [name for name, weight in canaries.items() if weight]
    published = [name for name, state in states.items() if state == PUBLISHED]
    for name in named:
        weight, state = canaries[name], states.get(name, STOPPED)
        if not CANARY_MIN_WEIGHT <= weight <= CANARY_MAX_WEIGHT:
            out.append((name, f"has canary weight {weight}, but a canary's weight is from "
                              f"{CANARY_MIN_WEIGHT} to {CANARY_MAX_WEIGHT} (percent of the "
                              "traffic)"))
        elif state == PUBLISHED:
            out.append((name, "is published, so it cannot be the canary too: a canary is a "
                              "started version that takes a share of the published one's "
                              "traffic"))
        elif state != STARTED:
            out.append((name, f"is {state}, and a canary must run: set its state to started, "
                              "or remove `canary:`"))
        elif not published:
            out.append((name, "is a canary, but no version is published, so there is no "
                              "traffic to split; publish one, or remove `canary:`"))
        elif name != named[0]:
            out.append((name, f"is a canary too, but only one version can be the canary "
                              f"and {named[0]} is; remove one `canary:`"))
    return out


def parent_ref_conflicts(refs: Sequence[tuple[Hashable, str]]) -> list[tuple[int, str]]:
    """Gateway API's rule for a route's parentRefs (CEL rules of its CRD, which a JSON
    schema cannot say): refs to one Gateway each name a listener (sectionName), and
    different ones. `refs`: (the Gateway, as any key, its sectionName) of each parentRef;
    returns (index, what is wrong) for each ref that breaks it."""
    out: list[tuple[int, str]] = []
    for i, (parent, section) in enumerate(refs):
        same = [j for j, (other, _) in enumerate(refs) if other == parent]
        if len(same) < 2:
            continue
        others = ", ".join(f"[{j}]" for j in same if j != i)
        if not section:
            out.append((i, f"refers to the same Gateway as parentRefs{others}, so each needs "
                           "a sectionName (the listener)"))
        else:
            before = [j for j in same if j < i and refs[j][1] == section]
            if before:
                out.append((i, f'refers to the same Gateway and listener "{section}" as '
                               f"parentRefs[{before[0]}]; name each listener once"))
    return out


def lacks_config_source(config: Config, source: ConfigSource | None) -> bool:
    """The rule that config a version declares needs a source (a Secret) in kai.yaml."""
    return config.declared and (source is None or not source.secret)


def no_config_source(version: str, config: Config) -> str:
    """What to do about declared config that kai.yaml gives no source."""
    declared = ", ".join(dict.fromkeys([*config.variables, *config.files]))
    return (
        f"its krt.yml declares config ({declared}) but kai.yaml gives it no source; add one "
        f"in kai.yaml under `versions: {version}:`, e.g. `config: {{secret: {version}-config}}`, "
        "and create that Secret in the namespace (or use `externalSecret:` / `sealedSecret:` "
        "instead of `secret:`)"
    )
