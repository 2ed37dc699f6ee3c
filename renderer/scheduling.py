"""What a version's pods may use and where they run: resources, GPUs, scheduling.

**Resources** come in layers; each later layer overrides the earlier ones key by key
(`requests.cpu`, `limits.memory`, ...), so an override names only what it changes:

1. the project default, kai.yaml `resources` (each of its blocks, `requests` and
   `limits`, replaces the built-in default block as a whole, as it always has);
2. a node's own `resources` in krt.yml;
3. kai.yaml `versions.<v>.nodes.<node>.resources`; the entrypoint takes
   `versions.<v>.entrypoint.resources` over the project default.

A request above its limit (after merging) is refused: the API server would refuse the
Deployment. :func:`excesses` finds them, naming the layer each side comes from, so the
problem points at the field that made it so (renderer.projectfile, renderer.validate).

**GPU nodes** (krt.yml `gpu: true`) get kai.yaml `gpu:` on top: one `resource` (default
nvidia.com/gpu) in requests and limits, its `nodeSelector` and `tolerations` (default:
tolerate the taint named after the resource), and a rollout that needs no spare GPU.

**Scheduling** (`serviceAccountName`, `imagePullSecrets`, `nodeSelector`, `tolerations`,
`priorityClassName`) is set per project, and a version's own value replaces the
project's, field by field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .autoscaling import AutoscalingOverride
from .units import is_quantity, parse_quantity

GPU_RESOURCE = "nvidia.com/gpu"  # the extended resource (and taint) of a GPU node
REQUESTS = "requests"
LIMITS = "limits"
EXISTS = "Exists"
NO_EXECUTE = "NoExecute"

_T = TypeVar("_T")


@dataclass(frozen=True)
class Resources:
    """Requests and limits: the project default (kai.yaml `resources`), or what a
    container gets once every layer is merged."""

    requests: dict[str, str] = field(default_factory=lambda: {"cpu": "100m", "memory": "128Mi"})
    limits: dict[str, str] = field(default_factory=lambda: {"cpu": "1", "memory": "512Mi"})


@dataclass(frozen=True)
class ResourceOverride:
    """Requests and limits that override those below them key by key: a krt.yml node's
    `resources`, or kai.yaml's for a node or the entrypoint. Empty: nothing changes."""

    requests: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)

    def over(self, base: Resources) -> Resources:
        return Resources({**base.requests, **self.requests}, {**base.limits, **self.limits})


def merge(base: Resources, *overrides: ResourceOverride) -> Resources:
    """`base` with each override applied in turn, key by key."""
    for override in overrides:
        base = override.over(base)
    return base


@dataclass(frozen=True)
class Excess:
    """A resource whose request is greater than its limit once the layers are merged;
    `*_layer`: the index of the layer each value comes from."""

    resource: str  # cpu, memory, ephemeral-storage
    request: str
    limit: str
    request_layer: int
    limit_layer: int

    @property
    def culprit(self) -> tuple[str, int]:
        """The field that made it so, as (section, layer): the one of the later layer,
        or the request when both come from one layer."""
        if self.limit_layer > self.request_layer:
            return LIMITS, self.limit_layer
        return REQUESTS, self.request_layer

    @property
    def other(self) -> tuple[str, int]:
        """The other side, as (section, layer)."""
        section, _ = self.culprit
        if section == LIMITS:
            return REQUESTS, self.request_layer
        return LIMITS, self.limit_layer

    def message(self, other_from: str = "", at: str | None = None) -> str:
        """What is wrong, said at the culprit's field (or the `at` section's); `other_from`
        says where the other value comes from (`kai.yaml resources.limits.memory`), "" when
        from the same block."""
        section = at or self.culprit[0]
        source = f", from {other_from}" if other_from else ""
        if section == REQUESTS:
            said = f"{self.request} is more than limits.{self.resource} ({self.limit}{source})"
        else:
            said = f"{self.limit} is less than requests.{self.resource} ({self.request}{source})"
        return (f"{said}; Kubernetes refuses a request above its limit: lower the request or "
                "raise the limit")


def excesses(layers: Sequence[Resources | ResourceOverride]) -> list[Excess]:
    """Each resource whose request is greater than its limit once `layers` are merged
    (later ones win, key by key), in resource-name order. A value that is no quantity is
    no excess (the schemas refuse it, the output checks too)."""
    found: dict[str, dict[str, tuple[str, int]]] = {REQUESTS: {}, LIMITS: {}}
    for i, layer in enumerate(layers):
        for key, value in layer.requests.items():
            found[REQUESTS][key] = (value, i)
        for key, value in layer.limits.items():
            found[LIMITS][key] = (value, i)
    out = []
    for key in sorted(found[REQUESTS].keys() & found[LIMITS].keys()):
        (request, r_layer), (limit, l_layer) = found[REQUESTS][key], found[LIMITS][key]
        if is_quantity(request) and is_quantity(limit) \
                and parse_quantity(request) > parse_quantity(limit):
            out.append(Excess(key, request, limit, r_layer, l_layer))
    return out


# --- tolerations, GPU and scheduling ---------------------------------------------------------


@dataclass(frozen=True)
class Toleration:
    """A Kubernetes toleration; empty fields are left out of the manifest (an operator
    left out is Kubernetes' `Equal`, an effect left out matches every effect)."""

    key: str = ""
    operator: str = ""
    value: str = ""
    effect: str = ""
    seconds: int | None = None  # tolerationSeconds, with effect NoExecute only

    @property
    def manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: value for name, value in (
            ("key", self.key), ("operator", self.operator), ("value", self.value),
            ("effect", self.effect)) if value}
        if self.seconds is not None:
            out["tolerationSeconds"] = self.seconds
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Toleration:
        return cls(key=raw.get("key", ""), operator=raw.get("operator", ""),
                   value=raw.get("value", ""), effect=raw.get("effect", ""),
                   seconds=raw.get("tolerationSeconds"))


def default_gpu_tolerations(resource: str) -> tuple[Toleration, ...]:
    """Tolerate the taint named after the GPU resource (`nvidia.com/gpu`), whatever its
    value, as GPU node pools are commonly tainted."""
    return (Toleration(resource, EXISTS, effect="NoSchedule"),)


def toleration_problems(raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Kubernetes' rules for one toleration that its schema cannot say, as (field, message);
    the field is "" when the toleration as a whole is wrong."""
    out = []
    operator = raw.get("operator", "Equal")
    if not raw.get("key") and operator != EXISTS:
        out.append(("", "a toleration without `key` must have `operator: Exists` "
                        "(it then tolerates every taint)"))
    if operator == EXISTS and raw.get("value"):
        out.append(("value", "must be left out with `operator: Exists`, which matches any "
                             "value"))
    if "tolerationSeconds" in raw and raw.get("effect") != NO_EXECUTE:
        out.append(("tolerationSeconds", "is only for `effect: NoExecute` (how long the pod "
                                         "stays on a node tainted so)"))
    return out


_DNS_SUBDOMAIN_MAX = 253


def qualified_name_problem(name: str) -> str | None:
    """Why `name` (a label key, a taint key, a resource name: `[prefix/]name`) is not a
    Kubernetes qualified name, beyond its schema pattern: the prefix's length."""
    prefix, _, _ = name.rpartition("/")
    if len(prefix) > _DNS_SUBDOMAIN_MAX:
        return f"its prefix is {len(prefix)} characters long; at most 253 are allowed"
    return None


@dataclass(frozen=True)
class Gpu:
    """kai.yaml `gpu:`: what a `gpu: true` node gets."""

    resource: str = GPU_RESOURCE
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] | None = None  # None: default_gpu_tolerations

    @property
    def pod_tolerations(self) -> tuple[Toleration, ...]:
        if self.tolerations is None:
            return default_gpu_tolerations(self.resource)
        return self.tolerations


@dataclass(frozen=True)
class Scheduling:
    """kai.yaml's scheduling settings of a project, or a version's overrides of them.
    A setting left out is None: a version then takes the project's, the project none."""

    service_account: str | None = None
    image_pull_secrets: tuple[str, ...] | None = None
    node_selector: dict[str, str] | None = None
    tolerations: tuple[Toleration, ...] | None = None
    priority_class: str | None = None

    def over(self, base: Scheduling) -> Scheduling:
        """These settings where they are set, `base`'s elsewhere."""
        return Scheduling(
            service_account=_first(self.service_account, base.service_account),
            image_pull_secrets=_first(self.image_pull_secrets, base.image_pull_secrets),
            node_selector=_first(self.node_selector, base.node_selector),
            tolerations=_first(self.tolerations, base.tolerations),
            priority_class=_first(self.priority_class, base.priority_class),
        )


@dataclass(frozen=True)
class ProcessSettings:
    """kai.yaml `versions.<v>.nodes.<node>` (or `versions.<v>.entrypoint`): what the
    operator sets for one process of a version."""

    resources: ResourceOverride = field(default_factory=ResourceOverride)
    tmp_size: str | None = None  # the /tmp emptyDir's sizeLimit; None: the default
    replicas: int | None = None  # nodes only; None: krt.yml's
    autoscaling: AutoscalingOverride | None = None  # over krt.yml's (renderer.autoscaling)


def unknown_node(version: str, node: str, defined: Sequence[str]) -> str:
    """What is wrong with kai.yaml settings for a node the version does not have."""
    listed = ", ".join(defined) if defined else "none"
    return (f'{version} has no node "{node}" (its nodes: {listed}); '
            "fix the name or remove the entry")


def _first(value: _T | None, fallback: _T | None) -> _T | None:
    return fallback if value is None else value

