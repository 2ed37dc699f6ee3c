"""Read and write kai.yaml, the desired state of a GitOps repo.

`load_project` validates the file (safe YAML, `schemas/kai.schema.json`, then the
rules a schema cannot say) and maps it onto the model in renderer.project;
`dump_project` writes a fresh file deterministically, so `load(dump(p)) == p`, and
`edit_project` changes an existing file to say a new model while keeping the user's
comments, key order and style (a round-trip edit with ruamel.yaml).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml

from runner import contract

from . import autoscalingfile, schedulingfile
from .atomic import write_file
from .autoscaling import DEFAULT_ACCOUNT, AutoscalingSettings
from .checks import bundled_kubernetes_versions
from .problems import InputError, Problem
from .project import (
    CANARY_ANNOTATION,
    PROJECT_FILE,
    STOPPED,
    Build,
    BuildOverride,
    ConfigSource,
    DataStream,
    EgressPort,
    EgressRule,
    Gateway,
    ImageMapping,
    Ingress,
    Monitoring,
    Nats,
    Network,
    ParentRef,
    Project,
    Runtime,
    Tracing,
    VersionState,
    canary_conflicts,
    parent_ref_conflicts,
    published_conflict,
    published_conflicts,
)
from .schemacheck import schema_problems
from .units import (
    MAX_DURATION,
    MAX_SIZE,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)
from .yamlsafe import Document, load_yaml, parse_yaml, shown_path

SCHEMA = "kai.schema.json"
SCHEMA_URL = (
    "https://raw.githubusercontent.com/kai-server/kai-server/main/renderer/schemas/kai.schema.json"
)
HEADER = f"""\
# yaml-language-server: $schema={SCHEMA_URL}
#
# kai.yaml: the desired state of this KAI project, kept in git.
# `kai start|stop|publish|unpublish VERSION` edit it and commit; you may edit it by hand too.
# `kai render` turns it, with the sources in versions/<version>/, into rendered/<project>/,
# which Argo CD or Flux syncs to the cluster. Config values never go here: a version's
# `config` names the Secret (or ExternalSecret / SealedSecret) that holds them.

"""


def load_project(root: Path, display_root: Path | None = None) -> Project:
    """Read and validate `root/kai.yaml`; raise InputError with every problem."""
    return read_project(root, display_root)[0]


def read_project_text(root: Path) -> tuple[Project, str]:
    """kai.yaml as the model and as its exact text (line ends kept), for `edit_project`."""
    project = load_project(root)
    return project, (Path(root) / PROJECT_FILE).read_bytes().decode("utf-8", errors="replace")


def read_project(root: Path, display_root: Path | None = None) -> tuple[Project, Document]:
    """Like load_project, but also return the loaded document (for positions)."""
    root = Path(root)
    path = root / PROJECT_FILE
    shown = shown_path(path, display_root)
    if not path.is_file():
        raise InputError([Problem(shown, message="not found; create it with `kai init`")])
    doc = load_yaml(path, shown)
    problems = schema_problems(doc, SCHEMA)
    if problems:
        raise InputError(problems)
    problems = _semantic_problems(doc, root)
    if problems:
        raise InputError(problems)
    return _project(doc.data, root), doc


# --- checks a schema cannot express ---------------------------------------------------------


def _semantic_problems(doc: Document, root: Path) -> list[Problem]:
    data = doc.data
    out: list[Problem] = []
    kube = data.get("kubernetesVersion")
    if isinstance(kube, str):
        bundled = bundled_kubernetes_versions()
        if ".".join(kube.split(".")[:2]) not in bundled:
            out.append(doc.problem(
                ("kubernetesVersion",),
                f'Kubernetes "{kube}" has no bundled schemas; use one of: {", ".join(bundled)}',
            ))
    out += _image_problems(doc)
    versions = data.get("versions", {})
    states = {name: entry.get("state") for name, entry in versions.items()}
    for name, first in published_conflicts(states):
        out.append(doc.problem(("versions", name, "state"), published_conflict(first)))
    out += _traffic_problems(doc)
    for name, entry in versions.items():
        sealed = entry.get("config", {}).get("sealedSecret")
        if sealed:
            message = _repo_file_problem(root, sealed["file"])
            if message:
                out.append(doc.problem(("versions", name, "config", "sealedSecret", "file"),
                                       message))
    url = data.get("nats", {}).get("url", "")
    if contract.nats_url_has_credentials(url):
        out.append(doc.problem(("nats", "url"), (
            f"{contract.NATS_URL_CREDENTIALS}, which would be committed in plain text; put "
            "them in a Secret and name it in nats.auth: {secret: NAME}")))
    out += _runtime_problems(doc)
    out += _build_problems(doc)
    out += _network_problems(doc)
    out += _tracing_problems(doc)
    out += schedulingfile.problems(doc)
    out += autoscalingfile.project_problems(doc)
    return out


def _tracing_problems(doc: Document) -> list[Problem]:
    """`tracing.endpoint` is an OTLP gRPC address; samplerArg goes with a ratio sampler."""
    tracing = doc.data.get("tracing")
    if tracing is None:
        return []
    out: list[Problem] = []
    message = endpoint_problem(tracing["endpoint"])
    if message:
        out.append(doc.problem(("tracing", "endpoint"), message))
    sampler = tracing.get("sampler", "")
    if "samplerArg" in tracing and sampler not in contract.RATIO_SAMPLERS:
        out.append(doc.problem(("tracing", "samplerArg"), (
            f"is the ratio of the {' and '.join(contract.RATIO_SAMPLERS)} samplers, but the "
            f"sampler is {sampler or 'parentbased_always_on (the default)'}; set sampler: "
            "parentbased_traceidratio, or leave samplerArg out"), key=True))
    return out


def endpoint_problem(url: str) -> str:
    """What is wrong with an OTLP gRPC endpoint ("" when nothing is)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f'"{url}" is not a URL with a valid port, like "http://otel-collector:4317"'
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return (f'"{url}" must be http://HOST:PORT (plaintext) or https://HOST:PORT (TLS), '
                'like "http://otel-collector.observability.svc:4317"')
    if "@" in parts.netloc:
        return (f'"{url}" carries credentials, which would be committed in plain text; the '
                "collector's address only")
    if port is None:
        return (f'"{url}" needs its port, like ":4317" (an OpenTelemetry Collector\'s OTLP '
                "gRPC port)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return (f'"{url}" has a path: OTLP over gRPC takes HOST:PORT only (/v1/traces is OTLP '
                "over HTTP, usually on port 4318; the gRPC port is usually 4317)")
    return ""


def _traffic_problems(doc: Document) -> list[Problem]:
    """The canary rules (renderer.project.canary_conflicts), Gateway API's rule for
    `gateway.parentRefs`, and `ingress.annotations` leaving the canary ones to kai."""
    data = doc.data
    out: list[Problem] = []
    versions = data.get("versions", {})
    states = {name: entry.get("state", STOPPED) for name, entry in versions.items()}
    canaries = {name: entry.get("canary", {}).get("weight", 0)
                for name, entry in versions.items()}
    for name, message in canary_conflicts(states, canaries):
        out.append(doc.problem(("versions", name, "canary"), f"{name} {message}", key=True))
    refs = data.get("gateway", {}).get("parentRefs", [])
    keys = [((ref.get("namespace", ""), ref["name"]), ref.get("sectionName", "")) for ref in refs]
    for i, message in parent_ref_conflicts(keys):
        out.append(doc.problem(("gateway", "parentRefs", i), message))
    for key in data.get("ingress", {}).get("annotations", {}):
        if key.startswith(CANARY_ANNOTATION):
            out.append(doc.problem(("ingress", "annotations", key), (
                "ingress-nginx's canary annotations are kai's: it sets them on the canary's "
                "own Ingress (`kai canary VERSION --weight N`); remove this one"), key=True))
    return out


def _build_problems(doc: Document) -> list[Problem]:
    """A version's `build:` overrides the project's, so that one must be there; the
    registry is the project's alone."""
    out: list[Problem] = []
    top = "build" in doc.data
    for name, entry in doc.data.get("versions", {}).items():
        section = entry.get("build")
        if section is None:
            continue
        path = ("versions", name, "build")
        if not top:
            out.append(doc.problem(path, (
                "overrides the project's build settings, but kai.yaml has no top-level "
                "`build:`; add `build: {registry: REGISTRY}` (the registry version images "
                "are pushed to, see docs/version-images.md)"), key=True))
        if "registry" in section:
            out.append(doc.problem((*path, "registry"), (
                "the registry is project-wide (one per project), so a version cannot set it; "
                "set build.registry at the top level"), key=True))
    return out


def _image_problems(doc: Document) -> list[Problem]:
    """Each image maps once for cpu nodes and once for gpu nodes (`gpu: true`)."""
    out: list[Problem] = []
    seen: dict[tuple[str, bool], int] = {}
    for i, image in enumerate(doc.data.get("images", [])):
        name, gpu = image["name"], image.get("gpu") is True
        first = seen.setdefault((name, gpu), i)
        if first == i:
            continue
        at = ("images", i, "gpu" if "gpu" in image else "name")
        nodes = " for gpu: true nodes" if gpu else ""
        out.append(doc.problem(
            at, f'image "{name}" is mapped twice{nodes} (first at images[{first}])'))
    return out


# The smallest ackWait: a node renews its hold on a message every ackWait/3 while its
# handler runs (runner.node), so a shorter wait redelivers work that is still running.
MIN_ACK_WAIT = 1.0
# maxMessage: a payload over NATS's max payload travels as a claim (runner.transport), so
# the bound is gRPC's (a signed 32-bit message length, with room for the envelope).
MIN_MAX_MESSAGE = 1024
MAX_MAX_MESSAGE = 1024**3
_LONGEST = f"{format_duration(MAX_DURATION)} (the longest duration NATS holds)"


def _runtime_problems(doc: Document) -> list[Problem]:
    """The bounds of the `runtime:` settings, project-wide and per version."""
    data = doc.data
    out: list[Problem] = []
    top = data.get("runtime", {})
    out += _runtime_section(doc, ("runtime",), top, {})
    stream = top.get("dataStream", {})
    at = ("runtime", "dataStream")
    if "maxAge" in stream:
        age = parse_duration(stream["maxAge"])
        window = contract.DUPLICATE_WINDOW
        if age != 0 and not window <= age <= MAX_DURATION:
            out.append(doc.problem((*at, "maxAge"), (
                f"must be 0 (keep forever) or from {format_duration(window)} (the stream's "
                f"de-duplication window) to {_LONGEST}, "
                f"got {_show(stream['maxAge'])}")))
    if "maxBytes" in stream:
        size = parse_size(stream["maxBytes"])
        if size.denominator != 1:
            out.append(doc.problem((*at, "maxBytes"), (
                f"must be a whole number of bytes, got {_show(stream['maxBytes'])}")))
        elif size > MAX_SIZE:
            out.append(doc.problem((*at, "maxBytes"), (
                f"must be at most {MAX_SIZE} bytes (8Ei less one byte), "
                f"got {_show(stream['maxBytes'])}")))
    for name, entry in data.get("versions", {}).items():
        section = entry.get("runtime", {})
        path = ("versions", name, "runtime")
        out += _runtime_section(doc, path, section, top)
        if "dataStream" in section:
            out.append(doc.problem((*path, "dataStream"), (
                "the data stream is project-wide (one per project), so a version cannot set "
                "it; set runtime.dataStream at the top level"), key=True))
    return out


def _runtime_section(doc: Document, path: tuple[str, ...], section: dict[str, Any],
                     base: dict[str, Any]) -> list[Problem]:
    """The bounds of one runtime section's settings (`base`: the section it overrides)."""
    return _timing_problems(doc, path, section, base) + _max_message_problems(doc, path,
                                                                             section)


def _max_message_problems(doc: Document, path: tuple[str, ...],
                          section: dict[str, Any]) -> list[Problem]:
    if "maxMessage" not in section:
        return []
    size = parse_size(section["maxMessage"])
    if size.denominator == 1 and MIN_MAX_MESSAGE <= size <= MAX_MAX_MESSAGE:
        return []
    return [doc.problem((*path, "maxMessage"), (
        f"must be a whole number of bytes from {format_size(MIN_MAX_MESSAGE)} to "
        f"{format_size(MAX_MAX_MESSAGE)}, got {_show(section['maxMessage'])}"))]


def _timing_problems(doc: Document, path: tuple[str, ...], section: dict[str, Any],
                     base: dict[str, Any]) -> list[Problem]:
    """ackWait, requestTimeout (and that the second is longer) of one runtime section;
    `base` is the section it overrides (the project's, for a version)."""
    out: list[Problem] = []
    valid: dict[str, float] = {}
    for key in ("ackWait", "requestTimeout"):
        if key not in section:
            continue
        seconds = parse_duration(section[key])
        if key == "ackWait" and not MIN_ACK_WAIT <= seconds <= MAX_DURATION:
            allowed = f"from {format_duration(MIN_ACK_WAIT)} to {_LONGEST}"
        elif key == "requestTimeout" and not 0 < seconds <= MAX_DURATION:
            allowed = f"more than 0s and at most {_LONGEST}"
        else:
            valid[key] = seconds
            continue
        out.append(doc.problem((*path, key), f"must be {allowed}, got {_show(section[key])}"))
    if out or not valid:
        return out  # nothing set here, or already wrong: no comparison to make

    def value(key: str) -> tuple[float, str]:
        """A setting's seconds in effect here, and where it comes from."""
        if key in section:
            return valid[key], ""
        if key in base:
            return parse_duration(base[key]), f", from runtime.{key}"
        default = Runtime().settings()
        return (default.ack_wait if key == "ackWait" else default.request_timeout), ", the default"

    (ack, ack_from), (timeout, timeout_from) = value("ackWait"), value("requestTimeout")
    if timeout <= ack:
        key = "requestTimeout" if "requestTimeout" in section else "ackWait"
        out.append(doc.problem((*path, key), (
            f"requestTimeout ({format_duration(timeout)}{timeout_from}) must be greater than "
            f"ackWait ({format_duration(ack)}{ack_from}): a message whose node dies is "
            "redelivered only after ackWait, so a shorter deadline ends the request before "
            "any retry can answer")))
    return out


# The labels kai gives every object it renders; kai.yaml labels may not set them.
KAI_LABEL_PREFIX = "app.kubernetes.io/"


def _network_problems(doc: Document) -> list[Problem]:
    """What the schema cannot say of `network.egress` (project-wide and per version) and
    of `monitoring.labels`."""
    data = doc.data
    out: list[Problem] = []
    places: list[tuple[tuple[str | int, ...], list[Any]]] = [
        (("network", "egress"), data.get("network", {}).get("egress", []))]
    for name, entry in data.get("versions", {}).items():
        places.append((("versions", name, "network", "egress"),
                       entry.get("network", {}).get("egress", [])))
    for path, rules in places:
        for i, rule in enumerate(rules):
            out += _egress_rule_problems(doc, (*path, i), rule)
    for key in data.get("monitoring", {}).get("labels", {}):
        if key.startswith(KAI_LABEL_PREFIX):
            out.append(doc.problem(("monitoring", "labels", key), (
                f"{KAI_LABEL_PREFIX}* labels are the ones kai sets on every object; "
                "use another key"), key=True))
    return out


def _egress_rule_problems(doc: Document, at: tuple[str | int, ...],
                          rule: dict[str, Any]) -> list[Problem]:
    """One egress rule: a destination (a CIDR, or pods), valid CIDRs, numbers for a CIDR."""
    out: list[Problem] = []
    pods = [key for key in ("namespace", "podSelector") if key in rule]
    if "cidr" in rule and pods:
        out.append(doc.problem((*at, pods[0]), (
            f"a rule reaches either an IP range (cidr) or pods ({' and '.join(pods)}), not "
            "both; make them two rules"), key=True))
    elif "cidr" not in rule and not pods:
        out.append(doc.problem(at, (
            "needs a destination: cidr (an IP range), or namespace and/or podSelector "
            "(pods)")))
    if "podSelector" in rule and not rule["podSelector"]["matchLabels"]:
        out.append(doc.problem((*at, "podSelector", "matchLabels"), (
            "names no label, so it selects every pod; name one, or use namespace alone for "
            "every pod of a namespace")))
    cidr = None
    if "cidr" in rule:
        cidr, message = parse_cidr(rule["cidr"])
        if message:
            out.append(doc.problem((*at, "cidr"), message))
    if "except" in rule and "cidr" not in rule:
        out.append(doc.problem((*at, "except"), (
            "needs cidr: except names ranges left out of a cidr rule's range"), key=True))
    for j, text in enumerate(rule.get("except", [])):
        excluded, message = parse_cidr(text)
        if excluded is not None and cidr is not None:
            message = _except_problem(excluded, cidr)
        if message:
            out.append(doc.problem((*at, "except", j), message))
    if "cidr" in rule:
        for j, port in enumerate(rule["ports"]):
            if isinstance(port["port"], str):
                out.append(doc.problem((*at, "ports", j, "port"), (
                    f'"{port["port"]}" is a port name, which only pods define; a cidr rule '
                    "needs the port's number")))
    return out


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_cidr(text: str) -> tuple[IPNetwork | None, str]:
    """An IP range in CIDR notation, written canonically; else None and what is wrong."""
    wrong = (f'"{text}" is not an IPv4 or IPv6 range in CIDR notation (like "10.0.0.0/8" or '
             '"2001:db8::/32")')
    if "%" in text:  # an IPv6 zone names an interface of one machine
        return None, wrong
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None, wrong
    if "/" not in text:
        return None, (f'"{text}" needs a prefix length: "{network}" is that one address')
    if network.network_address != ipaddress.ip_interface(text).ip:
        return None, (f'"{text}" is not the start of a /{network.prefixlen} range: write '
                      f'"{network}" (the range it falls in), or a longer prefix')
    if str(network) != text:
        return None, f'"{text}" is written "{network}" in CIDR notation'
    return network, ""


def _except_problem(excluded: IPNetwork, cidr: IPNetwork) -> str:
    if excluded.version != cidr.version:
        return f'"{excluded}" is IPv{excluded.version}, but cidr "{cidr}" is IPv{cidr.version}'
    if excluded.network_address not in cidr or excluded.prefixlen <= cidr.prefixlen:
        return f'"{excluded}" must be a range inside cidr "{cidr}", and smaller'
    return ""


def _show(value: object) -> str:
    """A value as a message quotes it: text in quotes, numbers as they are."""
    return f'"{value}"' if isinstance(value, str) else str(value)


def _repo_file_problem(root: Path, rel: str) -> str | None:
    pure = PurePosixPath(rel)
    if pure.is_absolute() or "\\" in rel:
        return f'"{rel}" must be a path relative to the repo, with "/" separators'
    if ".." in pure.parts:
        return f'"{rel}" must stay inside the repo (no "..")'
    full = root / rel
    try:
        inside = full.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):
        inside = False
    if not inside:
        return f'"{rel}" leads outside the repo'
    if not full.is_file():
        return f'file "{rel}" does not exist in the repo'
    return None


# --- mapping onto the model -----------------------------------------------------------------


def _project(data: dict[str, Any], root: Path) -> Project:
    nats = data.get("nats", {})
    ingress = data.get("ingress", {})
    return Project(
        name=data["project"],
        namespace=data["namespace"],
        **_pick(data, {"createNamespace": "create_namespace",
                       "kubernetesVersion": "kubernetes_version"}),
        nats=Nats(**_pick(nats, {"url": "url", "namespace": "namespace", "storage": "storage",
                                 "monitoring": "monitoring", "account": "account"}),
                  auth_secret=nats.get("auth", {}).get("secret", ""),
                  ca_secret=nats.get("tls", {}).get("caSecret", "")),
        ingress=Ingress(**_pick(ingress, {
            "host": "host", "className": "class_name", "tlsSecret": "tls_secret",
            "annotations": "annotations",
        })),
        images=tuple(
            ImageMapping(i["name"], i["newName"], i.get("newTag", ""), i.get("gpu") is True,
                         i.get("digest", ""))
            for i in data.get("images", [])
        ),
        resources=schedulingfile.project_resources(data),
        runtime=_runtime(data.get("runtime", {})),
        build=Build(**_pick(data["build"], {
            "registry": "registry", "flavor": "flavor", "base": "base",
        })) if "build" in data else None,
        versions={
            name: VersionState(entry.get("state", STOPPED), _config(entry.get("config")),
                               _runtime(entry.get("runtime", {}), project_wide=False),
                               BuildOverride(**_pick(entry.get("build", {}), {
                                   "flavor": "flavor", "base": "base"})),
                               egress=_egress(entry.get("network", {})),
                               canary=entry.get("canary", {}).get("weight", 0),
                               **schedulingfile.version_fields(entry))
            for name, entry in data.get("versions", {}).items()
        },
        root=root,
        network=_network(data.get("network", {})),
        monitoring=Monitoring(
            pod_monitor=data.get("monitoring", {}).get("podMonitor") is True,
            labels=dict(data.get("monitoring", {}).get("labels", {})),
            dashboards=data.get("monitoring", {}).get("dashboards") is True,
        ),
        tracing=_tracing(data.get("tracing", {})),
        autoscaling=AutoscalingSettings(**_pick(data.get("autoscaling", {}),
                                                {"engine": "engine"})),
        gateway=_gateway(data["gateway"]) if "gateway" in data else None,
        **schedulingfile.project_fields(data),
    )


def _tracing(raw: dict[str, Any]) -> Tracing:
    arg = raw.get("samplerArg")
    return Tracing(endpoint=raw.get("endpoint", ""), sampler=raw.get("sampler", ""),
                   sampler_arg=None if arg is None else float(arg),
                   namespace=raw.get("namespace", ""))


def _gateway(raw: dict[str, Any]) -> Gateway:
    return Gateway(
        parent_refs=tuple(ParentRef(ref["name"], ref.get("namespace", ""),
                                    ref.get("sectionName", "")) for ref in raw["parentRefs"]),
        hostnames=tuple(raw.get("hostnames", ())),
    )


def _gateway_data(gateway: Gateway) -> dict[str, Any]:
    refs = []
    for ref in gateway.parent_refs:
        entry = {"name": ref.name}
        if ref.namespace:
            entry["namespace"] = ref.namespace
        if ref.section_name:
            entry["sectionName"] = ref.section_name
        refs.append(entry)
    data: dict[str, Any] = {"parentRefs": refs}
    if gateway.hostnames:
        data["hostnames"] = list(gateway.hostnames)
    return data


def _network(raw: dict[str, Any]) -> Network:
    return Network(
        egress=_egress(raw),
        metrics_namespace=raw.get("metrics", {}).get("namespace", ""),
        ingress_from=raw.get("ingressFrom", {}).get("namespace", ""),
    )


def _egress(network: dict[str, Any]) -> tuple[EgressRule, ...]:
    """The `egress` rules of a `network:` section (the project's or a version's)."""
    return tuple(
        EgressRule(
            ports=tuple(EgressPort(p["port"] if isinstance(p["port"], str) else int(p["port"]),
                                   p.get("protocol", "TCP")) for p in rule["ports"]),
            cidr=rule.get("cidr", ""),
            excluded=tuple(rule.get("except", ())),
            namespace=rule.get("namespace", ""),
            pod_labels=dict(rule.get("podSelector", {}).get("matchLabels", {})),
        )
        for rule in network.get("egress", [])
    )


def _runtime(raw: dict[str, Any], project_wide: bool = True) -> Runtime:
    """A `runtime:` section; a version's never sets the data stream (a semantic check)."""
    stream = raw.get("dataStream", {}) if project_wide else {}

    def duration(mapping: dict[str, Any], key: str) -> float | None:
        return parse_duration(mapping[key]) if key in mapping else None

    return Runtime(
        ack_wait=duration(raw, "ackWait"),
        max_deliver=int(raw["maxDeliver"]) if "maxDeliver" in raw else None,
        request_timeout=duration(raw, "requestTimeout"),
        max_message=int(parse_size(raw["maxMessage"])) if "maxMessage" in raw else None,
        data_stream=DataStream(
            max_age=duration(stream, "maxAge"),
            max_bytes=int(parse_size(stream["maxBytes"])) if "maxBytes" in stream else None,
        ),
    )


def _pick(mapping: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """Keyword arguments for the keys present in `mapping` (so absent ones get defaults)."""
    return {attr: mapping[key] for key, attr in names.items() if key in mapping}


def _config(raw: dict[str, Any] | None) -> ConfigSource | None:
    if not raw:
        return None
    if "secret" in raw:
        return ConfigSource("secret", raw["secret"])
    if "externalSecret" in raw:
        e = raw["externalSecret"]
        return ConfigSource(
            "externalSecret", e["secret"], store=e["store"],
            store_kind=e.get("storeKind", "ClusterSecretStore"), remote_key=e["remoteKey"],
        )
    s = raw["sealedSecret"]
    return ConfigSource("sealedSecret", s["secret"], file=s["file"])


# --- writing ---------------------------------------------------------------------------------


def project_data(project: Project) -> dict[str, Any]:
    """kai.yaml's content for `project`, keys in their documented order."""
    nats: dict[str, Any] = {"url": project.nats.url}
    if project.nats.namespace:
        nats["namespace"] = project.nats.namespace
    nats["storage"] = project.nats.storage
    if project.nats.auth_secret:
        nats["auth"] = {"secret": project.nats.auth_secret}
    if project.nats.ca_secret:
        nats["tls"] = {"caSecret": project.nats.ca_secret}
    if project.nats.monitoring:
        nats["monitoring"] = project.nats.monitoring
    if project.nats.account != DEFAULT_ACCOUNT:
        nats["account"] = project.nats.account
    ing = project.ingress
    ingress: dict[str, Any] = {}
    if ing.host:
        ingress["host"] = ing.host
    ingress["className"] = ing.class_name
    if ing.tls_secret:
        ingress["tlsSecret"] = ing.tls_secret
    ingress["annotations"] = dict(sorted(ing.annotations.items()))
    images = []
    for m in project.images:
        image: dict[str, Any] = {"name": m.name, "newName": m.new_name}
        if m.new_tag:
            image["newTag"] = m.new_tag
        if m.digest:
            image["digest"] = m.digest
        if m.gpu:
            image["gpu"] = True
        images.append(image)
    versions: dict[str, Any] = {}
    for name in sorted(project.versions):
        vs = project.versions[name]
        entry: dict[str, Any] = {"state": vs.state}
        if vs.canary:
            entry["canary"] = {"weight": vs.canary}
        if vs.config is not None:
            entry["config"] = _config_data(vs.config)
        if vs.runtime != Runtime():
            entry["runtime"] = _runtime_data(vs.runtime)
        if vs.build != BuildOverride():
            entry["build"] = {key: value for key, value in
                              (("flavor", vs.build.flavor), ("base", vs.build.base)) if value}
        if vs.egress:
            entry["network"] = {"egress": _egress_data(vs.egress)}
        entry.update(schedulingfile.version_data(vs))
        versions[name] = entry
    data: dict[str, Any] = {
        "project": project.name,
        "namespace": project.namespace,
        **({} if project.create_namespace else {"createNamespace": False}),
        "kubernetesVersion": project.kubernetes_version,
        "nats": nats,
        "ingress": ingress,
        **({"gateway": _gateway_data(project.gateway)} if project.gateway else {}),
        "images": images,
        "resources": {
            "requests": dict(sorted(project.resources.requests.items())),
            "limits": dict(sorted(project.resources.limits.items())),
        },
        **schedulingfile.project_data(project),
        **({} if project.autoscaling == AutoscalingSettings()
           else {"autoscaling": {"engine": project.autoscaling.engine}}),
    }
    if project.runtime != Runtime():  # left out, the runner's defaults apply
        data["runtime"] = _runtime_data(project.runtime)
    if project.build is not None:
        build = project.build
        data["build"] = {"registry": build.registry, "flavor": build.flavor,
                         **({"base": build.base} if build.base else {})}
    network = _network_data(project.network)
    if network:
        data["network"] = network
    if project.monitoring != Monitoring():
        monitoring: dict[str, Any] = {"podMonitor": project.monitoring.pod_monitor}
        if project.monitoring.labels:
            monitoring["labels"] = dict(sorted(project.monitoring.labels.items()))
        if project.monitoring.dashboards:
            monitoring["dashboards"] = True
        data["monitoring"] = monitoring
    if project.tracing != Tracing():
        data["tracing"] = _tracing_data(project.tracing)
    data["versions"] = versions
    return data


def _tracing_data(tracing: Tracing) -> dict[str, Any]:
    out: dict[str, Any] = {"endpoint": tracing.endpoint}
    if tracing.sampler:
        out["sampler"] = tracing.sampler
    if tracing.sampler_arg is not None:
        out["samplerArg"] = tracing.sampler_arg
    if tracing.namespace:
        out["namespace"] = tracing.namespace
    return out


def _network_data(network: Network) -> dict[str, Any]:
    """A `network:` section with what `network` sets; empty when it sets nothing."""
    out: dict[str, Any] = {}
    if network.egress:
        out["egress"] = _egress_data(network.egress)
    if network.metrics_namespace:
        out["metrics"] = {"namespace": network.metrics_namespace}
    if network.ingress_from:
        out["ingressFrom"] = {"namespace": network.ingress_from}
    return out


def _egress_data(rules: tuple[EgressRule, ...]) -> list[dict[str, Any]]:
    out = []
    for rule in rules:
        entry: dict[str, Any] = {}
        if rule.cidr:
            entry["cidr"] = rule.cidr
        if rule.excluded:
            entry["except"] = list(rule.excluded)
        if rule.namespace:
            entry["namespace"] = rule.namespace
        if rule.pod_labels:
            entry["podSelector"] = {"matchLabels": dict(sorted(rule.pod_labels.items()))}
        entry["ports"] = [{"port": p.port, "protocol": p.protocol} for p in rule.ports]
        out.append(entry)
    return out


def _runtime_data(runtime: Runtime) -> dict[str, Any]:
    """A `runtime:` section with the settings `runtime` sets, in their documented order."""
    out: dict[str, Any] = {}
    if runtime.ack_wait is not None:
        out["ackWait"] = format_duration(runtime.ack_wait)
    if runtime.max_deliver is not None:
        out["maxDeliver"] = runtime.max_deliver
    if runtime.request_timeout is not None:
        out["requestTimeout"] = format_duration(runtime.request_timeout)
    if runtime.max_message is not None:
        out["maxMessage"] = format_size(runtime.max_message)
    stream: dict[str, Any] = {}
    if runtime.data_stream.max_age is not None:
        stream["maxAge"] = format_duration(runtime.data_stream.max_age)
    if runtime.data_stream.max_bytes is not None:
        stream["maxBytes"] = format_size(runtime.data_stream.max_bytes)
    if stream:
        out["dataStream"] = stream
    return out


def _config_data(config: ConfigSource) -> dict[str, Any]:
    if config.kind == "externalSecret":
        return {"externalSecret": {
            "secret": config.secret, "store": config.store,
            "storeKind": config.store_kind, "remoteKey": config.remote_key,
        }}
    if config.kind == "sealedSecret":
        return {"sealedSecret": {"secret": config.secret, "file": config.file}}
    return {"secret": config.secret}


def dump_project(project: Project, notes: Mapping[str, str] | None = None) -> str:
    """kai.yaml for `project`: a comment header, then stable keys; deterministic.

    `notes`: comment lines (`# ...` each, ending in a newline) to write above a
    top-level key, by key (`kai init` explains the image map so).
    """
    body = yaml.safe_dump(
        project_data(project), sort_keys=False, default_flow_style=False,
        allow_unicode=True, width=100,
    )
    if notes:
        body = "".join(notes.get(line.split(":", 1)[0], "") + line
                       if line[:1].isalpha() else line
                       for line in body.splitlines(keepends=True))
    return HEADER + body


def save_project(project: Project, root: Path | None = None) -> Path:
    """Write kai.yaml atomically into `root` (default: project.root); return its path."""
    folder = Path(root if root is not None else project.root)
    return write_file(folder / PROJECT_FILE, dump_project(project))


def edit_project(text: str, project: Project) -> str:
    """kai.yaml `text` changed to say `project`, as a minimal edit.

    Only the values that differ from what `text` says change; version entries are
    added in sorted position when the file keeps them sorted (else at the end) and
    removed ones deleted; a key the file leaves out stays out while its value is the
    default. Every comment, blank line, key order, flow or block style and quoting of
    the lines the edit does not touch is kept byte for byte (renderer.yamledit).
    The result always loads back to `project` (its root aside): should no edit do
    that, or should `text` not be a valid kai.yaml, it is `dump_project(project)`.
    A file exactly as `dump_project` writes it becomes `dump_project(project)`.
    Deterministic: the same text and model give the same bytes.

    The file's line ends (`\n` or `\r\n`) and byte order mark are kept.

    Call it with text `load_project` accepted: renderer.yamlsafe has refused aliases,
    tags, duplicate keys, tabs and files over 1 MiB before ruamel.yaml reads it.
    """
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    body = text.removeprefix(bom)
    newline = "\r\n" if "\r\n" in body else "\n"
    edited = _edit(body.replace("\r\n", "\n"), project)
    return text if edited is None else bom + edited.replace("\n", newline)


def _edit(text: str, project: Project) -> str | None:
    """edit_project on text with `\n` line ends; None when `text` already says `project`."""
    old = _text_project(text, project.root)
    if old is None:
        return dump_project(project)
    if old == project:
        return None
    if text == dump_project(old):
        return dump_project(project)
    from .yamledit import edits

    try:
        for candidate in edits(text, project_data(old), project_data(project)):
            if _text_project(candidate, project.root) == project:
                return candidate
    except Exception:  # ruamel.yaml cannot make this edit: write the file afresh
        pass
    return dump_project(project)


def _text_project(text: str, root: Path) -> Project | None:
    """The model kai.yaml `text` loads to (checked like load_project bar the files it
    names), or None when it is not a valid kai.yaml."""
    try:
        doc = parse_yaml(text.encode("utf-8"), PROJECT_FILE)
    except InputError:
        return None
    if schema_problems(doc, SCHEMA):
        return None
    return _project(doc.data, root)
