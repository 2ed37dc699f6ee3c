"""Autoscaling: a node on the work waiting in its JetStream consumers, the entrypoint on CPU.

A node's `autoscaling: {minReplicas, maxReplicas, pendingPerReplica}` comes in layers,
like its resources: krt.yml's (the author's), then kai.yaml
`versions.<v>.nodes.<node>.autoscaling` (the operator's, which may also set
`cpuUtilization`), key by key. Fixed `replicas` and `autoscaling` exclude each other
within one file; across the two files kai.yaml decides, as it does for everything it
sets: its `replicas` fixes the count (krt.yml's autoscaling is then off), its
`autoscaling` turns autoscaling on (krt.yml's `replicas` is then not used).

kai.yaml `autoscaling.engine` says what scales the nodes:

* `keda` (the default): a KEDA ScaledObject with one `nats-jetstream` trigger per (stream,
  durable consumer) the node consumes from. KEDA reads each consumer on the NATS
  monitoring endpoint (`/jsz`), takes its lag as num_pending + num_ack_pending, and aims
  at `pendingPerReplica` of it per replica (the busiest consumer wins). `minReplicas: 0`
  lets the node sleep while nothing waits; the first message wakes it.
* `hpa`: an autoscaling/v2 HorizontalPodAutoscaler on CPU (`cpuUtilization`, percent of
  the CPU request, default 80), which keeps at least one replica.

The entrypoint scales on CPU with an HPA whatever the engine
(`versions.<v>.entrypoint.autoscaling: {minReplicas, maxReplicas, cpuUtilization}`).

An autoscaled Deployment names no `replicas`, so Argo CD (or Flux) and the autoscaler do
not fight over it. `kai dev` starts `max(1, minReplicas)` processes of it
(:attr:`Autoscaling.local_replicas`): what the cluster keeps while idle, never none.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from runner import contract

KEDA = "keda"
HPA = "hpa"
ENGINES = (KEDA, HPA)
DEFAULT_ENGINE = KEDA
DEFAULT_MIN_REPLICAS = 1
DEFAULT_PENDING_PER_REPLICA = 10  # KEDA's own default lagThreshold
DEFAULT_CPU_UTILIZATION = 80  # percent of the CPU request
MONITORING_PORT = 8222  # nats-server's monitoring port, by convention (the Helm chart's)
DEFAULT_ACCOUNT = "$G"  # the account of a NATS server without accounts
NATS_JETSTREAM = "nats-jetstream"  # KEDA's scaler

# the keys of an `autoscaling:` section
MIN_REPLICAS = "minReplicas"
MAX_REPLICAS = "maxReplicas"
PENDING_PER_REPLICA = "pendingPerReplica"
CPU_UTILIZATION = "cpuUtilization"
KEYS = {MIN_REPLICAS: "min_replicas", MAX_REPLICAS: "max_replicas",
        PENDING_PER_REPLICA: "pending_per_replica", CPU_UTILIZATION: "cpu_utilization"}


@dataclass(frozen=True)
class AutoscalingSettings:
    """kai.yaml `autoscaling:`, the project's: what scales the nodes."""

    engine: str = DEFAULT_ENGINE  # KEDA or HPA


@dataclass(frozen=True)
class AutoscalingOverride:
    """One layer's `autoscaling:` (krt.yml's for a node, kai.yaml's for a node or the
    entrypoint): the keys it sets, None for the others."""

    min_replicas: int | None = None
    max_replicas: int | None = None
    pending_per_replica: int | None = None
    cpu_utilization: int | None = None

    def over(self, base: AutoscalingOverride) -> AutoscalingOverride:
        """These keys where they are set, `base`'s elsewhere."""
        return AutoscalingOverride(*(
            getattr(base, attr) if getattr(self, attr) is None else getattr(self, attr)
            for attr in KEYS.values()))

    def get(self, key: str) -> int | None:
        """The value of kai.yaml / krt.yml key `key` (minReplicas, ...)."""
        value: int | None = getattr(self, KEYS[key])
        return value

    @classmethod
    def from_dict(cls, raw: object) -> AutoscalingOverride:
        """From an `autoscaling:` mapping; what is not a whole number is left out (the
        schema says what is wrong)."""
        values = raw if isinstance(raw, dict) else {}
        return cls(**{attr: values[key] for key, attr in KEYS.items()
                      if isinstance(values.get(key), int)
                      and not isinstance(values.get(key), bool)})

    def to_dict(self) -> dict[str, int]:
        """The keys it sets, in their documented order."""
        return {key: value for key in KEYS if (value := self.get(key)) is not None}


@dataclass(frozen=True)
class Trigger:
    """What one KEDA nats-jetstream trigger watches: a stream and its durable consumer."""

    stream: str
    consumer: str


@dataclass(frozen=True)
class Autoscaling:
    """How one process scales, every layer merged and every default decided."""

    engine: str  # KEDA or HPA (always HPA for the entrypoint)
    min_replicas: int
    max_replicas: int
    pending_per_replica: int = DEFAULT_PENDING_PER_REPLICA  # KEDA's lagThreshold
    cpu_utilization: int = DEFAULT_CPU_UTILIZATION  # the HPA's averageUtilization
    triggers: tuple[Trigger, ...] = ()  # KEDA: every (stream, consumer) the node pulls from

    @property
    def scales_to_zero(self) -> bool:
        return self.min_replicas == 0

    @property
    def local_replicas(self) -> int:
        """The processes `kai dev` starts: what the cluster keeps while idle, at least 1."""
        return max(1, self.min_replicas)


class AutoscalingError(ValueError):
    """The layers do not make a complete autoscaling (no maxReplicas anywhere)."""


def layers(krt: AutoscalingOverride | None, kai: AutoscalingOverride | None,
           kai_replicas: int | None) -> list[AutoscalingOverride]:
    """The layers that decide a node's autoscaling, krt.yml's first; [] when it has fixed
    replicas. kai.yaml decides: its `autoscaling` turns it on, its `replicas` (without
    `autoscaling`, which validation requires) turns krt.yml's off."""
    if kai is not None:
        return [krt, kai] if krt is not None else [kai]
    if krt is None or kai_replicas is not None:
        return []
    return [krt]


def decide(engine: str, given: Sequence[AutoscalingOverride],
           triggers: Sequence[Trigger] = ()) -> Autoscaling | None:
    """The layers `given` (oldest first) merged, with the defaults; None without any.
    Raises AutoscalingError when no layer sets maxReplicas (validation says so first)."""
    if not given:
        return None
    merged = functools.reduce(lambda base, layer: layer.over(base), given)
    if merged.max_replicas is None:
        raise AutoscalingError(f"autoscaling needs {MAX_REPLICAS}")
    return Autoscaling(
        engine=engine,
        min_replicas=_first(merged.min_replicas, DEFAULT_MIN_REPLICAS),
        max_replicas=merged.max_replicas,
        pending_per_replica=_first(merged.pending_per_replica, DEFAULT_PENDING_PER_REPLICA),
        cpu_utilization=_first(merged.cpu_utilization, DEFAULT_CPU_UTILIZATION),
        triggers=tuple(triggers) if engine == KEDA else (),
    )


def node_triggers(project: str, version: str, workflows: Sequence[contract.Workflow],
                  node: str) -> tuple[Trigger, ...]:
    """Every (stream, durable consumer) `node` pulls from, named as the runner names them
    (runner.contract): one per step of a workflow's chain it runs, sorted. An at-most-once
    workflow has neither: nothing waits for a node there."""
    found = {Trigger(contract.stream_name(project, version, wf.name),
                     contract.consumer_name(step, name))
             for wf in workflows if not wf.at_most_once
             for step, name in enumerate(wf.chain) if name == node}
    return tuple(sorted(found, key=lambda t: (t.stream, t.consumer)))


# --- the NATS monitoring endpoint KEDA reads ---------------------------------------------


@dataclass(frozen=True)
class MonitoringEndpoint:
    """Where KEDA reads NATS's /jsz: `host:port` (natsServerMonitoringEndpoint), and
    whether over HTTPS (useHttps)."""

    address: str
    https: bool = False


def monitoring_endpoint(nats_url: str, monitoring: str = "") -> MonitoringEndpoint:
    """kai.yaml `nats.monitoring` (`host:port`, `host` for port 8222, or either after
    `http://` or `https://`); "" derives it from the first server of `nats_url`: its host,
    port 8222."""
    if monitoring:
        https = monitoring.startswith("https://")
        rest = monitoring.split("://", 1)[1] if "://" in monitoring else monitoring
        parsed = urlsplit(f"http://{rest}")
        host, port = parsed.hostname or "", parsed.port or MONITORING_PORT
        return MonitoringEndpoint(_join(host, port), https)
    servers = contract.nats_servers(nats_url) or [contract.DEFAULT_NATS_URL]
    host, _ = contract.nats_address(servers[0])
    return MonitoringEndpoint(_join(host, MONITORING_PORT))


def monitoring_port_problem(monitoring: str) -> str | None:
    """Why kai.yaml `nats.monitoring` names no usable address, or None."""
    rest = monitoring.split("://", 1)[1] if "://" in monitoring else monitoring
    try:
        parsed = urlsplit(f"http://{rest}")
        port = parsed.port
    except ValueError:
        return (f'"{monitoring}" has no valid port: give host:port, the port from 1 to '
                "65535 (8222 when left out)")
    if not parsed.hostname:
        return f'"{monitoring}" names no host: give host:port'
    if port == 0:
        return f'"{monitoring}": port 0 is no port; give one from 1 to 65535'
    return None


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- what is wrong, said once ---------------------------------------------------------------


BOTH = ("fixed replicas and autoscaling exclude each other, and this node autoscales too; "
        f"keep one (autoscaling's {MIN_REPLICAS} and {MAX_REPLICAS} bound the count)")


def bounds_message(min_replicas: int, max_replicas: int, source: str = "") -> str:
    """maxReplicas below minReplicas, said at maxReplicas; `source` says where
    minReplicas comes from ("" when from the same section)."""
    said = f", from {source}" if source else ""
    return f"must be at least {MIN_REPLICAS} ({min_replicas}{said}), got {max_replicas}"


def min_above_max_message(min_replicas: int, max_replicas: int, source: str) -> str:
    """minReplicas above a maxReplicas from another layer, said at minReplicas."""
    return (f"{min_replicas} is more than {MAX_REPLICAS} ({max_replicas}, from {source}); "
            f"lower it or raise {MAX_REPLICAS}")


ZERO_NEEDS_KEDA = (
    "0 (scale to zero) needs KEDA, but kai.yaml autoscaling.engine is hpa, which keeps at "
    "least 1 replica; set it to 1 or more, or use engine keda")
CPU_NEEDS_HPA = (
    "is for autoscaling.engine hpa (an HPA on CPU); with keda, the default engine, a node "
    f"scales on the work waiting: set {PENDING_PER_REPLICA}")
PENDING_NEEDS_KEDA = (
    f"is for autoscaling.engine keda (the work waiting); with hpa a node scales on CPU: "
    f"set {CPU_UTILIZATION}")


def needs_max_message(node: str) -> str:
    """kai.yaml autoscaling for a node krt.yml does not autoscale, without maxReplicas."""
    return (f"needs {MAX_REPLICAS}: node {node} does not autoscale in krt.yml, so kai.yaml "
            "says how far it may scale")


def no_work_message(node: str) -> str:
    """A node KEDA would scale that no at-least-once workflow runs: no consumer to watch."""
    return (f"node {node} autoscales on the work waiting for it, but no workflow runs it "
            "with at-least-once delivery (an at-most-once one keeps no backlog), so nothing "
            "waits: add it to a workflow's sequential, or scale it on CPU "
            "(autoscaling.engine: hpa), or give it fixed replicas")


def cpu_request_message(what: str) -> str:
    """An HPA on CPU for a container without a CPU request."""
    return (f"{what} scales on CPU use (an HPA), which Kubernetes measures against the CPU "
            "request, but its container requests no cpu; add requests.cpu")


def _first(value: int | None, fallback: int) -> int:
    return fallback if value is None else value
