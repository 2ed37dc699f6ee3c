"""Output checks, run on every render: is each rendered object valid Kubernetes?

* kubernetes-validate's bundled JSON schemas, in strict mode, at the project's
  Kubernetes version. One Draft 2020-12 validator is built per (version, kind,
  apiVersion) and cached, instead of re-reading the 1.5 MB `_definitions.json`
  on every object as `kubernetes_validate.utils.validate` does. The yes/no verdict
  comes from a compiled form of the same schema (renderer.fastschema); jsonschema
  itself names the errors of an invalid object;
* kubeconform, strict and offline against the same schemas, when it is on PATH;
* kinds with no bundled schema (Argo CD, Flux, External Secrets, Sealed Secrets)
  have their required fields checked in code;
* the Prometheus Operator's PodMonitor and Gateway API's GRPCRoute are checked against
  their CRDs' schemas, bundled in `renderer/schemas/` (where each came from is in its
  `$comment`), read strictly (no unknown fields), and for what the CRD leaves optional
  but a scrape or a route needs. JSON Schema ignores a CRD's x-kubernetes-validations
  (CEL rules the API server runs): the GRPCRoute's that a rendered route could break are
  checked in code.
* so is KEDA's ScaledObject, and for the CRD's own CEL rule (minReplicaCount at most
  maxReplicaCount) and what KEDA's nats-jetstream scaler needs of a trigger's metadata.

Every finding is a :class:`~renderer.problems.Problem` named after the file it
is in: `rendered/<project>/<file>: <field path>: <message>`.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource

from .fastschema import Check, compile_schema
from .giturl import flux_url, is_scp_like
from .problems import Problem
from .project import KUSTOMIZATION, parent_ref_conflicts

SCHEMA_ROOT = "kubernetes-json-schema"
DEFINITIONS = "_definitions.json"
_VERSION_DIR = re.compile(r"^v(\d+)\.(\d+)\.(\d+)-local-strict$")
_API_GROUP = re.compile(r"^([^./]*)(?:\.[^/]*)?/")
_GROUP_PREFIX = r"\1-"
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SYNC_OPTION = re.compile(r"^[A-Za-z]+=[^=\s]+$")  # an Argo CD sync option: Name=value
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

_DEFS_REF = "#/$defs/"
_DEFS_ID = "https://kubernetes.io/api/_definitions.json"
_ANNOTATIONS = frozenset({"description", "x-kubernetes-patch-strategy",
                          "x-kubernetes-patch-merge-key", "x-kubernetes-list-map-keys",
                          "x-kubernetes-list-type", "x-kubernetes-map-type",
                          "x-kubernetes-group-version-kind", "x-kubernetes-unions"})

_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "dependentSchemas"})
_LITERALS = frozenset({"enum", "const", "required", "default", "examples"})

Obj = Mapping[str, Any]


class SchemaError(Exception):
    """The configured Kubernetes version has no bundled schemas."""


# --- kubernetes-validate's bundled schemas ----------------------------------------------


def _schema_root() -> Path:
    return Path(str(resources.files("kubernetes_validate").joinpath(SCHEMA_ROOT)))


@functools.cache
def bundled_versions() -> tuple[tuple[int, int, int], ...]:
    """The Kubernetes versions kubernetes-validate has strict schemas for, oldest first."""
    found = []
    for entry in _schema_root().iterdir():
        m = _VERSION_DIR.match(entry.name)
        if m:
            found.append((int(m[1]), int(m[2]), int(m[3])))
    return tuple(sorted(found))


def bundled_kubernetes_versions() -> tuple[str, ...]:
    """The Kubernetes minor versions (like "1.35") there are bundled schemas for, oldest first."""
    return tuple(dict.fromkeys(f"{major}.{minor}" for major, minor, _ in bundled_versions()))


def _parse_minor(version: str) -> tuple[int, int]:
    m = re.match(r"^v?(\d+)\.(\d+)", version.strip())
    if not m:
        raise SchemaError(f"Kubernetes version {version!r} is not of the form MAJOR.MINOR")
    return int(m[1]), int(m[2])


@functools.cache
def schema_dir(kubernetes_version: str) -> Path:
    """The strict schema folder for a version: the newest bundled one not newer than it."""
    wanted = _parse_minor(kubernetes_version)
    versions = bundled_versions()
    usable = [v for v in versions if v[:2] <= wanted]
    if not versions or wanted > versions[-1][:2] or not usable:
        have = ", ".join(f"{v[0]}.{v[1]}" for v in versions)
        raise SchemaError(
            f"kubernetes-validate has no schemas for Kubernetes {kubernetes_version} "
            f"(bundled: {have})"
        )
    major, minor, patch = usable[-1]
    return _schema_root() / f"v{major}.{minor}.{patch}-local-strict"


def schema_file_name(kind: str, api_version: str) -> str:
    """`Deployment`, `apps/v1` -> `deployment-apps-v1.json` (kubernetes-validate's naming)."""
    return f"{kind.lower()}-{_API_GROUP.sub(_GROUP_PREFIX, api_version)}.json"


@functools.cache
def _definitions(kubernetes_version: str) -> dict[str, Any]:
    definitions: dict[str, Any] = json.loads(
        (schema_dir(kubernetes_version) / DEFINITIONS).read_text())
    return definitions


@functools.cache
def _registry(kubernetes_version: str) -> Registry:
    return Resource.from_contents(_definitions(kubernetes_version)) @ Registry()


def _inline(node: Any, defs: Mapping[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """Resolve `$ref`s into the schema itself and drop descriptions: same verdicts, and
    validation no longer looks references up in the registry on every object.

    A recursive reference (only CRD schemas have them) stays a `$ref`, made absolute so
    the registry still resolves it.
    """
    if isinstance(node, list):
        return [_inline(item, defs, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and _DEFS_REF in ref:
        name = ref.split(_DEFS_REF, 1)[1]
        rest = {k: v for k, v in node.items() if k != "$ref" and k not in _ANNOTATIONS}
        if name in seen or name not in defs:
            return {**rest, "$ref": _DEFS_ID + _DEFS_REF + name}
        target = _inline(defs[name], defs, (*seen, name))
        return {"allOf": [target], **_inline(rest, defs, seen)} if rest else target
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _ANNOTATIONS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _inline(sub, defs, seen) for name, sub in value.items()}
        elif key in _LITERALS:
            out[key] = value
        else:
            out[key] = _inline(value, defs, seen)
    return out


@functools.cache
def validator_for(
    kubernetes_version: str, kind: str, api_version: str
) -> jsonschema.Draft202012Validator | None:
    """The cached strict validator of one kind, or None when no schema is bundled for it."""
    path = schema_dir(kubernetes_version) / schema_file_name(kind, api_version)
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    defs = _definitions(kubernetes_version)["$defs"]
    schema = {k: v for k, v in _inline(raw, defs).items() if k != "$id"}
    return jsonschema.Draft202012Validator(schema, registry=_registry(kubernetes_version))


# --- checks -------------------------------------------------------------------------------


def _field_path(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@functools.cache
def fast_check_for(kubernetes_version: str, kind: str, api_version: str) -> Check | None:
    """The compiled yes/no check of one kind (renderer.fastschema), or None when its schema
    needs jsonschema itself."""
    validator = validator_for(kubernetes_version, kind, api_version)
    if validator is None or validator.format_checker is not None:
        return None
    return compile_schema(validator.schema)


def _schema_problems(file: str, obj: Obj, validator: jsonschema.Draft202012Validator,
                     kubernetes_version: str, fast: Check | None = None) -> list[Problem]:
    if fast(obj) if fast is not None else validator.is_valid(obj):
        return []
    problems = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path))):
        problems.append(Problem(
            file, path=_field_path(error.absolute_path) or "(object)",
            message=f"{error.message} (Kubernetes {kubernetes_version} schema, strict)",
        ))
    return problems


def _get(obj: Any, path: str) -> Any:
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


def _require(file: str, obj: Obj, fields: Mapping[str, type | tuple[type, ...]]) -> list[Problem]:
    problems = []
    for path, kinds in fields.items():
        value = _get(obj, path)
        if value is None or value == "" or not isinstance(value, kinds):
            names = kinds if isinstance(kinds, tuple) else (kinds,)
            what = " or ".join(
                {str: "string", dict: "mapping", list: "list", bool: "boolean", int: "integer"}
                .get(k, k.__name__) for k in names
            )
            why = "is required" if value is None or value == "" else "has the wrong type"
            problems.append(Problem(file, path=path, message=f"{why} (a non-empty {what})"))
    return problems


def _check_application(file: str, obj: Obj) -> list[Problem]:
    problems = _require(file, obj, {
        "metadata.name": str, "spec.project": str, "spec.source.repoURL": str,
        "spec.source.path": str, "spec.destination.namespace": str,
    })
    dest = _get(obj, "spec.destination") or {}
    if not (isinstance(dest, Mapping) and (dest.get("server") or dest.get("name"))):
        problems.append(Problem(file, path="spec.destination",
                                message="needs `server` or `name` (the target cluster)"))
    options = _get(obj, "spec.syncPolicy.syncOptions")
    if options is not None and not isinstance(options, list):
        problems.append(Problem(file, path="spec.syncPolicy.syncOptions",
                                message="must be a list of sync options (Name=value)"))
    for i, option in enumerate(options if isinstance(options, list) else []):
        if not (isinstance(option, str) and _SYNC_OPTION.match(option)):
            problems.append(Problem(file, path=f"spec.syncPolicy.syncOptions[{i}]",
                                    message=f"{option!r} is not a sync option (Name=value)"))
    return problems


def _check_gitrepository(file: str, obj: Obj) -> list[Problem]:
    problems = _require(file, obj, {"metadata.name": str, "spec.url": str, "spec.interval": str})
    url = _get(obj, "spec.url")
    if isinstance(url, str) and is_scp_like(url):
        problems.append(Problem(file, path="spec.url", message=(
            f"{url!r} is scp-like (user@host:path), which Flux does not accept; "
            f"use {flux_url(url)!r}")))
    secret = _get(obj, "spec.secretRef")
    if secret is not None:
        name = secret.get("name") if isinstance(secret, Mapping) else None
        if not is_dns_subdomain(name):
            problems.append(Problem(file, path="spec.secretRef.name",
                                    message=f"{name!r} is not a valid Kubernetes name"))
    return problems


def _check_flux_kustomization(file: str, obj: Obj) -> list[Problem]:
    problems = _require(file, obj, {
        "metadata.name": str, "spec.interval": str, "spec.path": str,
        "spec.sourceRef.kind": str, "spec.sourceRef.name": str,
    })
    if not isinstance(_get(obj, "spec.prune"), bool):
        problems.append(Problem(file, path="spec.prune", message="is required (a boolean)"))
    return problems


def _check_externalsecret(file: str, obj: Obj) -> list[Problem]:
    problems = _require(file, obj, {
        "metadata.name": str, "spec.secretStoreRef.name": str, "spec.target.name": str,
        "spec.data": list,
    })
    for i, item in enumerate(_get(obj, "spec.data") or []):
        problems += [
            Problem(file, path=f"spec.data[{i}].{p.path}", message=p.message)
            for p in _require(file, item, {"secretKey": str, "remoteRef.key": str})
        ]
    return problems


def _check_sealedsecret(file: str, obj: Obj) -> list[Problem]:
    return _require(file, obj, {"metadata.name": str, "spec.encryptedData": dict})


PODMONITOR_SCHEMA = "podmonitor-monitoring-v1.crd.json"
PODMONITOR_API_VERSION = "monitoring.coreos.com/v1"


def _strict(node: Any) -> Any:
    """A CRD schema read as strict field validation reads an object: an object schema with
    `properties` allows no other field (unless it preserves unknown fields)."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        elif key in _LITERALS:
            out[key] = value
        else:
            out[key] = _strict(value)
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(name: str) -> jsonschema.Draft202012Validator:
    """The strict validator of a CRD schema bundled in renderer/schemas."""
    text = resources.files("renderer.schemas").joinpath(name).read_text(encoding="utf-8")
    schema = _strict(json.loads(text))
    return jsonschema.Draft202012Validator(schema)


def _crd_problems(file: str, obj: Obj, schema: str, kind: str,
                  api_version: str) -> list[Problem]:
    """What the bundled CRD schema `schema` of `kind` says of `obj`, strictly, and whether
    `obj` has the schema's `api_version` (the only version it can check)."""
    problems = [
        Problem(file, path=_field_path(error.absolute_path) or "(object)",
                message=f"{error.message} (the {kind} CRD schema, strict)")
        for error in sorted(crd_validator(schema).iter_errors(obj),
                            key=lambda e: list(map(str, e.path)))
    ]
    if obj.get("apiVersion") != api_version:
        problems.append(Problem(file, path="apiVersion", message=(
            f"must be {api_version} (the version of the bundled CRD schema)")))
    return problems


def _check_podmonitor(file: str, obj: Obj) -> list[Problem]:
    problems = _crd_problems(file, obj, PODMONITOR_SCHEMA, "PodMonitor",
                             PODMONITOR_API_VERSION)
    problems += _require(file, obj, {"metadata.name": str, "spec.podMetricsEndpoints": list})
    if _get(obj, "spec.podMetricsEndpoints") == []:
        problems.append(Problem(file, path="spec.podMetricsEndpoints",
                                message="is required (a non-empty list): nothing is scraped"))
    selector = _get(obj, "spec.selector")
    if isinstance(selector, Mapping) and not (selector.get("matchLabels")
                                              or selector.get("matchExpressions")):
        problems.append(Problem(file, path="spec.selector", message=(
            "selects every pod of the namespace; give matchLabels")))
    for i, endpoint in enumerate(_get(obj, "spec.podMetricsEndpoints") or []):
        if isinstance(endpoint, Mapping) and not any(
                endpoint.get(key) for key in ("port", "portNumber", "targetPort")):
            problems.append(Problem(file, path=f"spec.podMetricsEndpoints[{i}]", message=(
                "names no port to scrape (port, portNumber or targetPort)")))
    return problems


SCALEDOBJECT_SCHEMA = "scaledobject-keda-v1alpha1.crd.json"
SCALEDOBJECT_API_VERSION = "keda.sh/v1alpha1"
KEDA_MAX_REPLICAS = 100  # KEDA's maxReplicaCount when none is given
_NATS_JETSTREAM_NEEDS = ("natsServerMonitoringEndpoint", "stream", "consumer")
_DIGITS = re.compile(r"^[0-9]+$")


def _check_scaledobject(file: str, obj: Obj) -> list[Problem]:
    problems = _crd_problems(file, obj, SCALEDOBJECT_SCHEMA, "KEDA ScaledObject",
                             SCALEDOBJECT_API_VERSION)
    problems += _require(file, obj, {"metadata.name": str, "spec.scaleTargetRef.name": str})
    low, high = _get(obj, "spec.minReplicaCount"), _get(obj, "spec.maxReplicaCount")
    if isinstance(low, int) and low > (high if isinstance(high, int) else KEDA_MAX_REPLICAS):
        problems.append(Problem(file, path="spec.minReplicaCount", message=(
            "must be at most maxReplicaCount (the CRD's rule; the API server refuses it)")))
    triggers = _get(obj, "spec.triggers")
    for i, trigger in enumerate(triggers if isinstance(triggers, list) else []):
        if not isinstance(trigger, Mapping) or trigger.get("type") != "nats-jetstream":
            continue
        meta = trigger.get("metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        at = f"spec.triggers[{i}].metadata"
        for key in _NATS_JETSTREAM_NEEDS:
            if not meta.get(key):
                problems.append(Problem(file, path=f"{at}.{key}", message=(
                    "is required by KEDA's nats-jetstream scaler")))
        if not (meta.get("account") or meta.get("accountID")):
            problems.append(Problem(file, path=f"{at}.account", message=(
                "is required by KEDA's nats-jetstream scaler (or accountID)")))
        for key in ("lagThreshold", "activationLagThreshold"):
            value = meta.get(key)
            if value is not None and not (isinstance(value, str) and _DIGITS.match(value)):
                problems.append(Problem(file, path=f"{at}.{key}", message=(
                    f"{value!r} is not a whole number (KEDA reads it as one)")))
        if meta.get("useHttps") not in (None, "true", "false"):
            problems.append(Problem(file, path=f"{at}.useHttps",
                                    message='must be "true" or "false"'))
    return problems


GRPCROUTE_SCHEMA = "grpcroute-gateway-v1.crd.json"
GRPCROUTE_API_VERSION = "gateway.networking.k8s.io/v1"
_GATEWAY_GROUP = "gateway.networking.k8s.io"


def _check_grpcroute(file: str, obj: Obj) -> list[Problem]:
    """The bundled CRD schema, strictly; its CEL rules a route of Services can break (a
    Service backend needs a port; refs to one Gateway name distinct listeners); and what
    the CRD leaves optional but a route that carries traffic needs: a parent, a rule, a
    backend, and weights that do not add up to 0."""
    problems = _crd_problems(file, obj, GRPCROUTE_SCHEMA, "GRPCRoute", GRPCROUTE_API_VERSION)
    problems += _require(file, obj, {"metadata.name": str, "spec.parentRefs": list,
                                     "spec.rules": list})
    refs = _get(obj, "spec.parentRefs")
    if refs == []:
        problems.append(Problem(file, path="spec.parentRefs", message=(
            "is required (a non-empty list): a route with no Gateway takes no traffic")))
    keys = [((ref.get("group", _GATEWAY_GROUP), ref.get("kind", "Gateway"),
              ref.get("namespace", ""), ref.get("name")), ref.get("sectionName", ""))
            for ref in (refs if isinstance(refs, list) else []) if isinstance(ref, Mapping)]
    problems += [Problem(file, path=f"spec.parentRefs[{i}]", message=message)
                 for i, message in parent_ref_conflicts(keys)]
    rules = _get(obj, "spec.rules")
    if rules == []:
        problems.append(Problem(file, path="spec.rules", message=(
            "is required (a non-empty list): a route with no rule sends nothing anywhere")))
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        backends = rule.get("backendRefs") if isinstance(rule, Mapping) else None
        at = f"spec.rules[{i}].backendRefs"
        if not isinstance(backends, list) or not backends:
            problems.append(Problem(file, path=at, message=(
                "is required (a non-empty list): the route's Services")))
            continue
        weights = 0
        for j, ref in enumerate(backends):
            if not isinstance(ref, Mapping):
                continue
            weight = ref.get("weight", 1)
            weights += weight if isinstance(weight, int) else 0
            if ref.get("group", "") == "" and ref.get("kind", "Service") == "Service" \
                    and "port" not in ref:
                problems.append(Problem(file, path=f"{at}[{j}].port", message=(
                    "is required for a Service (Gateway API's CEL rule: Must have port for "
                    "Service reference)")))
        if weights == 0:
            problems.append(Problem(file, path=at, message=(
                "weights add up to 0: every request would fail UNAVAILABLE")))
    return problems


CUSTOM_CHECKS: dict[tuple[str, str], Callable[[str, Obj], list[Problem]]] = {
    ("argoproj.io", "Application"): _check_application,
    ("source.toolkit.fluxcd.io", "GitRepository"): _check_gitrepository,
    ("kustomize.toolkit.fluxcd.io", "Kustomization"): _check_flux_kustomization,
    ("external-secrets.io", "ExternalSecret"): _check_externalsecret,
    ("bitnami.com", "SealedSecret"): _check_sealedsecret,
    ("monitoring.coreos.com", "PodMonitor"): _check_podmonitor,
    ("keda.sh", "ScaledObject"): _check_scaledobject,
    (_GATEWAY_GROUP, "GRPCRoute"): _check_grpcroute,
}


def is_dns_subdomain(name: object) -> bool:
    """Is `name` a valid name for most Kubernetes objects (a DNS-1123 subdomain)?"""
    return isinstance(name, str) and len(name) <= 253 and bool(_DNS_SUBDOMAIN.match(name))


def _check_names(file: str, obj: Obj) -> list[Problem]:
    """What the schemas leave out: name syntax and label value length."""
    problems = []
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return [Problem(file, path="metadata", message="is required")]
    name = meta.get("name")
    if not is_dns_subdomain(name):
        problems.append(Problem(file, path="metadata.name",
                                message=f"{name!r} is not a valid Kubernetes name"))
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            problems.append(Problem(file, path=f"metadata.labels.{key}",
                                    message=f"{value!r} is not a valid label value"))
    return problems


def check_object(file: str, obj: Obj, kubernetes_version: str) -> list[Problem]:
    """Every problem of one object; `file` is the name the problems carry."""
    if not isinstance(obj, Mapping):
        return [Problem(file, message="is not a Kubernetes object (a mapping)")]
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if not isinstance(kind, str) or not isinstance(api_version, str):
        return [Problem(file, message="has no `kind` and `apiVersion`")]
    problems = _check_names(file, obj)
    group = api_version.rpartition("/")[0]
    custom = CUSTOM_CHECKS.get((group, kind))
    if custom is not None:
        return problems + custom(file, obj)
    try:
        validator = validator_for(kubernetes_version, kind, api_version)
    except SchemaError as exc:
        return [*problems, Problem(file, message=str(exc))]
    if validator is None:
        return [*problems, Problem(
            file, path="kind",
            message=f"no schema for {kind} {api_version} at Kubernetes {kubernetes_version}",
        )]
    fast = fast_check_for(kubernetes_version, kind, api_version)
    return problems + _schema_problems(file, obj, validator, kubernetes_version, fast)


def check_objects(objects: Mapping[str, Obj], kubernetes_version: str) -> list[Problem]:
    """Check objects keyed by the file name their problems should carry."""
    problems: list[Problem] = []
    for file in sorted(objects):
        problems += check_object(file, objects[file], kubernetes_version)
    return problems


# --- kubeconform --------------------------------------------------------------------------


def kubeconform_path() -> str | None:
    return shutil.which("kubeconform")


@functools.cache
def _kubeconform_schemas(kubernetes_version: str) -> Path:
    """kubernetes-validate's strict schemas, with their `$ref`s made file-relative.

    The bundled files refer to `/api/_definitions.json` under a kubernetes.io `$id`,
    which kubeconform would try to download; offline it needs plain relative refs.
    """
    source = schema_dir(kubernetes_version)
    target = Path(tempfile.mkdtemp(prefix="kai-kubeconform-")) / source.name
    target.mkdir()
    for path in source.glob("*.json"):
        text = path.read_text().replace('"/api/_definitions.json#', '"_definitions.json#')
        data = json.loads(text)
        data.pop("$id", None)
        (target / path.name).write_text(json.dumps(data))
    return target


def kubeconform(files: Mapping[str, bytes], kubernetes_version: str) -> list[Problem]:
    """Run kubeconform (strict, offline) over rendered files when it is on PATH."""
    exe = kubeconform_path()
    docs = {f: b for f, b in files.items() if not f.endswith(KUSTOMIZATION)}
    if exe is None or not docs:
        return []
    schemas = _kubeconform_schemas(kubernetes_version)
    location = str(schemas / "{{ .ResourceKind }}{{ .KindSuffix }}.json")
    problems: list[Problem] = []
    with tempfile.TemporaryDirectory(prefix="kai-check-") as tmp:
        for rel, data in docs.items():
            path = Path(tmp, rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        proc = subprocess.run(
            [exe, "-strict", "-summary=false", "-output", "json", "-ignore-missing-schemas",
             "-schema-location", location, "-kubernetes-version",
             ".".join(map(str, _parse_minor(kubernetes_version))) + ".0", tmp],
            capture_output=True, text=True, check=False,
        )
        try:
            report = json.loads(proc.stdout or "{}")
        except json.JSONDecodeError:
            report = {}
        for res in report.get("resources") or []:
            if res.get("status") in ("statusInvalid", "statusError"):
                rel = Path(res.get("filename", "")).relative_to(tmp).as_posix()
                for err in res.get("validationErrors") or [{"path": "", "msg": res.get("msg")}]:
                    problems.append(Problem(rel, path=str(err.get("path", "")).strip("/")
                                            .replace("/", "."),
                                            message=f"kubeconform: {err.get('msg', '')}"))
        if proc.returncode not in (0, 1) and not problems:
            problems.append(Problem("kubeconform", message=(proc.stderr or proc.stdout).strip()))
    return problems


def check_files(files: Mapping[str, bytes], kubernetes_version: str,
                prefix: str = "") -> list[Problem]:
    """Parse rendered YAML files back and check every object in them (and kubeconform)."""
    objects: dict[str, Obj] = {}
    problems: list[Problem] = []
    for rel in sorted(files):
        if rel.rsplit("/", 1)[-1] == KUSTOMIZATION:
            continue
        try:
            docs = [d for d in yaml.safe_load_all(files[rel]) if d is not None]
        except yaml.YAMLError as exc:
            problems.append(Problem(prefix + rel, message=f"not valid YAML: {exc}"))
            continue
        for i, doc in enumerate(docs):
            objects[prefix + rel + (f"#{i}" if len(docs) > 1 else "")] = doc
    problems += check_objects(objects, kubernetes_version)
    problems += [
        Problem(prefix + p.file, p.line, p.col, p.path, p.message)
        for p in kubeconform(files, kubernetes_version)
    ]
    return problems
