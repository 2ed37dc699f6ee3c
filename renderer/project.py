"""The kai.yaml model: a GitOps repo's project settings and each version's desired state.

Loading, validation against `schemas/kai.schema.json` and writing live in
renderer.projectfile; this module only holds the typed model the plan reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runner.contract import DEFAULT_NATS_URL

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
RUNNER_IMAGE = "ghcr.io/kai-server/runner"
RUNNER_TAG = "0.1.0"
KRE_IMAGES = ("konstellation/kre-entrypoint", "konstellation/kre-py")
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
    """One kustomize `images:` entry: `name` (as in krt.yml) → new_name:new_tag."""

    name: str
    new_name: str
    new_tag: str = ""


@dataclass(frozen=True)
class Resources:
    requests: dict[str, str] = field(default_factory=lambda: {"cpu": "100m", "memory": "128Mi"})
    limits: dict[str, str] = field(default_factory=lambda: {"cpu": "1", "memory": "512Mi"})


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
class VersionState:
    state: str = STOPPED
    config: ConfigSource | None = None


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
    versions: dict[str, VersionState] = field(default_factory=dict)
    root: Path = Path(".")

    def state_of(self, version: str) -> str:
        vs = self.versions.get(version)
        return vs.state if vs else STOPPED

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


def default_images() -> tuple[ImageMapping, ...]:
    """The image map `kai init` writes: KRE images run on our runner image."""
    return tuple(ImageMapping(name, RUNNER_IMAGE, RUNNER_TAG) for name in KRE_IMAGES)
