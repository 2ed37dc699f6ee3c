"""kai.yaml's resource and scheduling sections: read, checked, written.

renderer.projectfile reads and writes kai.yaml as a whole and calls these for the
sections the model of renderer.scheduling holds: `gpu`, `serviceAccountName`,
`imagePullSecrets`, `nodeSelector`, `tolerations`, `priorityClassName` (project-wide and
per version), and a version's `entrypoint` and `nodes` settings. The schema checked
their shape; :func:`problems` checks what it cannot say. How kai.yaml's node settings
fit the version's krt.yml is checked where both are loaded (renderer.validate).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .autoscaling import AutoscalingOverride
from .krt import resource_override
from .problems import Problem
from .project import Project, VersionState
from .scheduling import (
    GPU_RESOURCE,
    LIMITS,
    REQUESTS,
    Excess,
    Gpu,
    ProcessSettings,
    ResourceOverride,
    Resources,
    Scheduling,
    Toleration,
    excesses,
    qualified_name_problem,
    toleration_problems,
)
from .units import parse_quantity
from .yamlsafe import Document, FieldPath, format_path

BUILT_IN = "the built-in default"


# --- reading -----------------------------------------------------------------------------------


def project_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Project keyword arguments from kai.yaml's data (schema-checked)."""
    raw = data.get("gpu", {})
    gpu = Gpu(
        resource=raw.get("resource", GPU_RESOURCE),
        node_selector=dict(raw.get("nodeSelector", {})),
        tolerations=_tolerations(raw["tolerations"]) if "tolerations" in raw else None,
    )
    return {"gpu": gpu, "scheduling": _scheduling(data)}


def version_fields(entry: dict[str, Any]) -> dict[str, Any]:
    """VersionState keyword arguments from one `versions.<v>` entry (schema-checked)."""
    return {
        "scheduling": _scheduling(entry),
        "entrypoint": _settings(entry.get("entrypoint", {})),
        "nodes": {name: _settings(raw) for name, raw in entry.get("nodes", {}).items()},
    }


def _scheduling(raw: dict[str, Any]) -> Scheduling:
    return Scheduling(
        service_account=raw.get("serviceAccountName"),
        image_pull_secrets=tuple(raw["imagePullSecrets"]) if "imagePullSecrets" in raw else None,
        node_selector=dict(raw["nodeSelector"]) if "nodeSelector" in raw else None,
        tolerations=_tolerations(raw["tolerations"]) if "tolerations" in raw else None,
        priority_class=raw.get("priorityClassName"),
    )


def _tolerations(raw: list[dict[str, Any]]) -> tuple[Toleration, ...]:
    return tuple(Toleration.from_dict(t) for t in raw)


def _settings(raw: dict[str, Any]) -> ProcessSettings:
    tmp_size = raw.get("tmpSize")
    return ProcessSettings(resources=resource_override(raw.get("resources")),
                           tmp_size=tmp_size.strip() if tmp_size is not None else None,
                           replicas=raw.get("replicas"),
                           autoscaling=AutoscalingOverride.from_dict(raw["autoscaling"])
                           if "autoscaling" in raw else None)


# --- checks a schema cannot express ---------------------------------------------------------


def problems(doc: Document) -> list[Problem]:
    """Requests above limits (the project's, each override's on its own, the entrypoint's
    over the project's), toleration rules, key prefixes and /tmp sizes."""
    data = doc.data
    out: list[Problem] = []
    base = project_resources(data)
    for e in excesses([base]):
        # said at the field kai.yaml writes (the request, when it writes both)
        section, other = e.culprit[0], e.other[0]
        if section not in data.get("resources", {}):
            section, other = other, section
        out.append(doc.problem(("resources", section, e.resource),
                               e.message(project_source(doc, other, e.resource), at=section)))
    out += _placement_problems(doc, ())
    out += _placement_problems(doc, ("gpu",))
    for name, entry in data.get("versions", {}).items():
        at: FieldPath = ("versions", name)
        out += _placement_problems(doc, at)
        if "entrypoint" in entry:
            ep = (*at, "entrypoint")
            override = resource_override(entry["entrypoint"].get("resources"))
            for e in excesses([base, override]):
                out += _layered_problem(doc, e, [(), (*ep, "resources")], newest=1)
            out += _tmp_size_problems(doc, ep)
        for node, raw in entry.get("nodes", {}).items():
            path = (*at, "nodes", node)
            for e in excesses([resource_override(raw.get("resources"))]):
                out += _layered_problem(doc, e, [(*path, "resources")], newest=0)
            out += _tmp_size_problems(doc, path)
    return out


def project_resources(data: dict[str, Any]) -> Resources:
    """kai.yaml `resources`: each block given replaces the built-in default's."""
    given = resource_override(data.get("resources"))
    default = Resources()
    raw = data.get("resources", {})
    return Resources(requests=given.requests if REQUESTS in raw else default.requests,
                     limits=given.limits if LIMITS in raw else default.limits)


def project_source(doc: Document, section: str, key: str) -> str:
    """Where the project default of `section.key` comes from, for a message."""
    if section in doc.data.get("resources", {}):
        return f"{doc.file} resources.{section}.{key}"
    return f"{BUILT_IN} {section}.{key}"


def _layered_problem(doc: Document, e: Excess, paths: list[FieldPath],
                     newest: int) -> list[Problem]:
    """The problem of excess `e` over layers [project default, *paths' overrides] (`paths`
    are each override's `resources` in `doc`; () for the project default), when its culprit
    is the `newest` layer (older layers are checked on their own)."""
    section, layer = e.culprit
    if layer != newest:
        return []
    other, other_layer = e.other
    if other_layer == layer:
        source = ""
    elif paths[other_layer] == ():
        source = project_source(doc, other, e.resource)
    else:
        source = f"{format_path((*paths[other_layer], other, e.resource))}"
    return [doc.problem((*paths[layer], section, e.resource), e.message(source))]


def _placement_problems(doc: Document, at: FieldPath) -> list[Problem]:
    """The tolerations and node selector keys at `at` (the top, `gpu` or a version)."""
    section = _get(doc.data, at)
    out = []
    for i, raw in enumerate(section.get("tolerations", [])):
        for key, message in toleration_problems(raw):
            path = (*at, "tolerations", i, *((key,) if key else ()))
            out.append(doc.problem(path, message, key=bool(key)))
        if "key" in raw:
            out += _name_problems(doc, (*at, "tolerations", i, "key"), raw["key"])
    for label in section.get("nodeSelector", {}):
        out += _name_problems(doc, (*at, "nodeSelector", label), label, key=True)
    return out


def _name_problems(doc: Document, path: FieldPath, name: str, key: bool = False) -> list[Problem]:
    message = qualified_name_problem(name)
    return [doc.problem(path, message, key=key)] if message else []


def _tmp_size_problems(doc: Document, at: FieldPath) -> list[Problem]:
    raw = _get(doc.data, at).get("tmpSize")
    if raw is None or parse_quantity(raw) > 0:
        return []
    return [doc.problem((*at, "tmpSize"), f'must be more than 0, got "{raw}"')]


def _get(data: dict[str, Any], path: FieldPath) -> dict[str, Any]:
    for part in path:
        data = data.get(part, {}) if isinstance(part, str) else {}
    return data


# --- writing ---------------------------------------------------------------------------------


def project_data(project: Project) -> dict[str, Any]:
    """The project's sections, in their documented order; what is left at its default is
    left out."""
    out: dict[str, Any] = {}
    gpu = project.gpu
    if gpu != Gpu():
        raw: dict[str, Any] = {}
        if gpu.resource != GPU_RESOURCE:
            raw["resource"] = gpu.resource
        if gpu.node_selector:
            raw["nodeSelector"] = dict(sorted(gpu.node_selector.items()))
        if gpu.tolerations is not None:
            raw["tolerations"] = [t.manifest for t in gpu.tolerations]
        out["gpu"] = raw
    out.update(_scheduling_data(project.scheduling))
    return out


def version_data(vs: VersionState) -> dict[str, Any]:
    """A version entry's sections, in their documented order."""
    out = _scheduling_data(vs.scheduling)
    if vs.entrypoint != ProcessSettings():
        out["entrypoint"] = _settings_data(vs.entrypoint)
    if vs.nodes:
        out["nodes"] = {name: _settings_data(vs.nodes[name]) for name in sorted(vs.nodes)}
    return out


def _scheduling_data(s: Scheduling) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if s.service_account is not None:
        out["serviceAccountName"] = s.service_account
    if s.image_pull_secrets is not None:
        out["imagePullSecrets"] = list(s.image_pull_secrets)
    if s.node_selector is not None:
        out["nodeSelector"] = dict(sorted(s.node_selector.items()))
    if s.tolerations is not None:
        out["tolerations"] = [t.manifest for t in s.tolerations]
    if s.priority_class is not None:
        out["priorityClassName"] = s.priority_class
    return out


def _settings_data(settings: ProcessSettings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if settings.resources != ResourceOverride():
        out["resources"] = dict(_resources_data(settings.resources))
    if settings.tmp_size is not None:
        out["tmpSize"] = settings.tmp_size
    if settings.replicas is not None:
        out["replicas"] = settings.replicas
    if settings.autoscaling is not None:
        out["autoscaling"] = settings.autoscaling.to_dict()
    return out


def _resources_data(resources: ResourceOverride) -> Iterator[tuple[str, dict[str, str]]]:
    for section, values in ((REQUESTS, resources.requests), (LIMITS, resources.limits)):
        if values:
            yield section, dict(sorted(values.items()))
