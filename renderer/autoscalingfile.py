"""The `autoscaling` sections of krt.yml and kai.yaml, checked where a schema cannot.

The schemas say each key's type and lower bound. Here: `maxReplicas` at least
`minReplicas` (within one section, and once a kai.yaml section is merged over krt.yml's),
fixed `replicas` and `autoscaling` not both in one file, what the engine allows
(`minReplicas: 0` and `pendingPerReplica` for keda, `cpuUtilization` for hpa), a kai.yaml
section for a node krt.yml does not autoscale naming `maxReplicas`, and a usable
`nats.monitoring`. The rules and their words are renderer.autoscaling's.

* :func:`krt_problems`: krt.yml alone (renderer.validate);
* :func:`project_problems`: kai.yaml alone (renderer.projectfile);
* :func:`version_problems`: kai.yaml's settings of a version over its krt.yml, where
  both are loaded (renderer.validate.version_settings_problems).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .autoscaling import (
    BOTH,
    CPU_NEEDS_HPA,
    CPU_UTILIZATION,
    DEFAULT_ENGINE,
    DEFAULT_MIN_REPLICAS,
    HPA,
    MAX_REPLICAS,
    MIN_REPLICAS,
    PENDING_NEEDS_KEDA,
    PENDING_PER_REPLICA,
    ZERO_NEEDS_KEDA,
    bounds_message,
    cpu_request_message,
    layers,
    min_above_max_message,
    monitoring_port_problem,
    needs_max_message,
)
from .krt import Version, dict_or_empty, list_or_empty, resource_override
from .problems import Problem
from .project import Project
from .scheduling import ProcessSettings, merge
from .schedulingfile import project_resources
from .yamlsafe import Document, FieldPath, format_path

AUTOSCALING = "autoscaling"
REPLICAS = "replicas"


def krt_problems(doc: Document) -> list[Problem]:
    """Each krt.yml node's autoscaling on its own."""
    out: list[Problem] = []
    for i, raw in enumerate(list_or_empty(doc.data.get("nodes"))):
        node = dict_or_empty(raw)
        section = node.get(AUTOSCALING)
        if not isinstance(section, dict):
            continue
        if REPLICAS in node:
            out.append(doc.problem(("nodes", i, REPLICAS), BOTH, key=True))
        out += _bounds(doc, ("nodes", i, AUTOSCALING), section)
    return out


def engine_of(data: Mapping[str, Any]) -> str:
    """kai.yaml's `autoscaling.engine` (schema-checked)."""
    engine: str = dict_or_empty(data.get(AUTOSCALING)).get("engine", DEFAULT_ENGINE)
    return engine


def project_problems(doc: Document) -> list[Problem]:
    """kai.yaml's autoscaling sections on their own, and `nats.monitoring`."""
    data = doc.data
    out: list[Problem] = []
    monitoring = data.get("nats", {}).get("monitoring")
    if monitoring is not None:
        message = monitoring_port_problem(monitoring)
        if message:
            out.append(doc.problem(("nats", "monitoring"), message))
    engine = engine_of(data)
    for name, entry in data.get("versions", {}).items():
        at: FieldPath = ("versions", name)
        section = entry.get("entrypoint", {}).get(AUTOSCALING)
        if section is not None:
            out += _bounds(doc, (*at, "entrypoint", AUTOSCALING), section)
            own = resource_override(entry["entrypoint"].get("resources"))
            if "cpu" not in merge(project_resources(data), own).requests:
                out.append(doc.problem((*at, "entrypoint", AUTOSCALING),
                                       cpu_request_message("the entrypoint"), key=True))
        for node, raw in entry.get("nodes", {}).items():
            section = raw.get(AUTOSCALING)
            if section is None:
                continue
            path = (*at, "nodes", node, AUTOSCALING)
            if REPLICAS in raw:
                out.append(doc.problem((*at, "nodes", node, REPLICAS), BOTH, key=True))
            out += _bounds(doc, path, section)
            if engine == HPA:
                if section.get(MIN_REPLICAS) == 0:
                    out.append(doc.problem((*path, MIN_REPLICAS), ZERO_NEEDS_KEDA))
                if PENDING_PER_REPLICA in section:
                    out.append(doc.problem((*path, PENDING_PER_REPLICA), PENDING_NEEDS_KEDA,
                                           key=True))
            elif CPU_UTILIZATION in section:
                out.append(doc.problem((*path, CPU_UTILIZATION), CPU_NEEDS_HPA, key=True))
    return out


def version_problems(project: Project, pdoc: Document, version: Version,
                     vdoc: Document) -> list[Problem]:
    """kai.yaml's autoscaling of `version`'s nodes over krt.yml's (`vdoc`): a complete
    result, maxReplicas at least minReplicas across the two, and no scale to zero from
    krt.yml under the hpa engine. (What one section says alone is checked where read.)"""
    vs = project.versions.get(version.name)
    if vs is None:
        return []
    out: list[Problem] = []
    for i, node in enumerate(version.nodes):
        settings = vs.nodes.get(node.name, ProcessSettings())
        kai, krt = settings.autoscaling, node.autoscaling
        if not layers(krt, kai, settings.replicas):
            continue  # fixed replicas
        kai_at: FieldPath = ("versions", version.name, "nodes", node.name, AUTOSCALING)
        krt_at: FieldPath = ("nodes", i, AUTOSCALING)
        if kai is not None and krt is None:
            if kai.max_replicas is None:
                out.append(pdoc.problem(kai_at, needs_max_message(node.name), key=True))
            continue  # the rest is kai.yaml's alone
        if krt is None:
            continue
        low = kai.min_replicas if kai and kai.min_replicas is not None else krt.min_replicas
        high = kai.max_replicas if kai and kai.max_replicas is not None else krt.max_replicas
        if kai is not None and high is not None:
            minimum = DEFAULT_MIN_REPLICAS if low is None else low
            if minimum > high and kai.min_replicas is not None and kai.max_replicas is None:
                source = f"{vdoc.file} {format_path((*krt_at, MAX_REPLICAS))}"
                out.append(pdoc.problem((*kai_at, MIN_REPLICAS),
                                        min_above_max_message(minimum, high, source)))
            elif minimum > high and kai.max_replicas is not None and kai.min_replicas is None:
                source = f"{vdoc.file} {format_path((*krt_at, MIN_REPLICAS))}"
                out.append(pdoc.problem((*kai_at, MAX_REPLICAS),
                                        bounds_message(minimum, high, source)))
        if low == 0 and engine_of(pdoc.data) == HPA and (kai is None
                                                         or kai.min_replicas is None):
            out.append(vdoc.problem((*krt_at, MIN_REPLICAS), ZERO_NEEDS_KEDA))
    return out + _cpu_request_problems(project, pdoc, version, vdoc)


def _cpu_request_problems(project: Project, pdoc: Document, version: Version,
                          vdoc: Document) -> list[Problem]:
    """Under the hpa engine, each autoscaled node needs a CPU request once the layers of
    its resources are merged; said at the autoscaling section that turns it on."""
    vs = project.versions.get(version.name)
    if vs is None or engine_of(pdoc.data) != HPA:
        return []
    out = []
    for i, node in enumerate(version.nodes):
        settings = vs.nodes.get(node.name, ProcessSettings())
        if not layers(node.autoscaling, settings.autoscaling, settings.replicas):
            continue
        requests = merge(project.resources, node.resources, settings.resources).requests
        if "cpu" in requests:
            continue
        message = cpu_request_message(f"node {node.name}")
        if settings.autoscaling is not None:
            out.append(pdoc.problem(("versions", version.name, "nodes", node.name,
                                     AUTOSCALING), message, key=True))
        else:
            out.append(vdoc.problem(("nodes", i, AUTOSCALING), message, key=True))
    return out


def _bounds(doc: Document, at: FieldPath, section: Mapping[str, Any]) -> list[Problem]:
    """maxReplicas below minReplicas within one section."""
    low, high = _whole(section.get(MIN_REPLICAS)), _whole(section.get(MAX_REPLICAS))
    if low is None or high is None or high >= low:
        return []
    return [doc.problem((*at, MAX_REPLICAS), bounds_message(low, high))]


def _whole(value: object) -> int | None:
    """An integer (not a bool) as it is, else None (the schema says what is wrong)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
