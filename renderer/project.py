"""The kai.yaml model: a GitOps repo's project settings and each version's desired state.

Loading, validation against `schemas/kai.schema.json` and writing live in
renderer.projectfile; this module only holds the typed model the plan reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from runner.contract import (
    DEFAULT_ACK_WAIT,
    DEFAULT_DATA_MAX_AGE,
    DEFAULT_DATA_MAX_BYTES,
    DEFAULT_MAX_DELIVER,
    DEFAULT_MAX_MESSAGE,
    DEFAULT_NATS_URL,
    DEFAULT_REQUEST_TIMEOUT,
)

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
GRPC_BACKEND_ANNOTATION = {"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"}


@dataclass(frozen=True)
class Ingress:
    """How outside traffic reaches the published version's entrypoint."""

    host: str = ""  # empty: the Ingress matches every host
    class_name: str = "nginx"
    tls_secret: str = ""
    annotations: dict[str, str] = field(default_factory=lambda: dict(GRPC_BACKEND_ANNOTATION))


@dataclass(frozen=True)
class ImageMapping:
    """One kai.yaml `images:` entry: `name` (as in krt.yml) → new_name:new_tag.

    Without `gpu` it is a kustomize `images:` entry; with `gpu` it applies only to
    gpu nodes, written into their Deployments (renderer.images).
    """

    name: str
    new_name: str
    new_tag: str = ""
    gpu: bool = False


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
class VersionState:
    state: str = STOPPED
    config: ConfigSource | None = None
    runtime: Runtime = field(default_factory=Runtime)  # overrides the project's, field by field
    scheduling: Scheduling = field(default_factory=Scheduling)  # the same
    nodes: dict[str, ProcessSettings] = field(default_factory=dict)  # by krt.yml node name
    entrypoint: ProcessSettings = field(default_factory=ProcessSettings)


@dataclass(frozen=True)
class Nats:
    url: str = DEFAULT_NATS_URL
    namespace: str = ""  # where NATS runs; the NetworkPolicy allows egress there
    storage: str = "file"


@dataclass(frozen=True)
class Project:
    name: str
    namespace: str
    kubernetes_version: str = DEFAULT_KUBERNETES_VERSION
    nats: Nats = field(default_factory=Nats)
    ingress: Ingress = field(default_factory=Ingress)
    images: tuple[ImageMapping, ...] = ()
    resources: Resources = field(default_factory=Resources)
    runtime: Runtime = field(default_factory=Runtime)
    gpu: Gpu = field(default_factory=Gpu)
    scheduling: Scheduling = field(default_factory=Scheduling)
    versions: dict[str, VersionState] = field(default_factory=dict)
    root: Path = Path(".")

    def state_of(self, version: str) -> str:
        vs = self.versions.get(version)
        return vs.state if vs else STOPPED

    def runtime_of(self, version: str) -> Runtime:
        """The version's runtime settings over the project's."""
        vs = self.versions.get(version)
        return vs.runtime.over(self.runtime) if vs else self.runtime

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
