"""The environment contract between the renderer and the runner.

Everything a runner process needs to know arrives as environment variables
whose names are defined here, once. The renderer imports this module to build
the plan (and so the Kubernetes manifests and `kai dev`); the runner reads the
same names back with :func:`RunnerEnv.from_environ`. NATS subjects, stream and
consumer names and message headers are derived here too, so both sides agree, and a
stream's name is read back here (:func:`stream_owner`: whose it is, for `kai gc`).

This module must stay free of third-party imports: it is imported by the
renderer and at the very start of every runner process.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# --- environment variable names -------------------------------------------

ENV_NATS_URL = "KAI_NATS_URL"
ENV_PROJECT = "KAI_PROJECT"
ENV_VERSION = "KAI_VERSION"
ENV_NODE = "KAI_NODE"  # set for node processes only
ENV_VERSION_DIR = "KAI_VERSION_DIR"  # where the version's files are (proto, src/...)
ENV_HANDLER = "KAI_HANDLER"  # node: src path relative to the version dir
ENV_PROTO = "KAI_PROTO"  # proto path relative to the version dir
ENV_WORKFLOWS = "KAI_WORKFLOWS"  # JSON: [{"name", "rpc", "chain": [node, ...], "delivery"?}, ...]
ENV_CONFIG_VARIABLES = "KAI_CONFIG_VARIABLES"  # comma-separated declared variable names
ENV_CONFIG_FILES = "KAI_CONFIG_FILES"  # comma-separated declared file names
ENV_CONFIG_DIR = "KAI_CONFIG_DIR"  # directory where config files are mounted
ENV_GRPC_PORT = "KAI_GRPC_PORT"
ENV_WEB_PORT = "KAI_WEB_PORT"  # HTTP: /healthz /readyz /metrics (+ /proto on the entrypoint)
ENV_REQUEST_TIMEOUT = "KAI_REQUEST_TIMEOUT"  # seconds, used when the client sets no deadline
ENV_STORAGE = "KAI_STORAGE"  # "file" or "memory": JetStream storage of the streams
ENV_MAX_DELIVER = "KAI_MAX_DELIVER"
ENV_ACK_WAIT = "KAI_ACK_WAIT"  # seconds
ENV_DATA_MAX_AGE = "KAI_DATA_MAX_AGE"  # seconds the data stream keeps a record; 0: forever
ENV_DATA_MAX_BYTES = "KAI_DATA_MAX_BYTES"  # bytes the data stream keeps at most; 0: unbounded
ENV_LOG_LEVEL = "KAI_LOG_LEVEL"
ENV_BIND_HOST = "KAI_BIND_HOST"  # address the gRPC and web servers listen on
ENV_CONCURRENCY = "KAI_CONCURRENCY"  # messages a node process handles at once
ENV_EVENT_LOOP = "KAI_EVENT_LOOP"  # optional: "asyncio" runs on asyncio's loop, not uvloop
ENV_MAX_MESSAGE = "KAI_MAX_MESSAGE"  # bytes: the largest request, step output or reply
# Optional, for NATS (runner.transport.natsauth): a folder with one kind of credentials, and
# the PEM file of the CAs that the server's certificate is checked against.
ENV_NATS_AUTH_DIR = "KAI_NATS_AUTH_DIR"
ENV_NATS_CA_FILE = "KAI_NATS_CA_FILE"
# Optional: each finished span written as one JSON line to this file (OpenTelemetry's
# ConsoleSpanExporter) instead of OTLP; for tests and for looking at traces without a
# collector. It turns tracing on like an OTLP endpoint does (runner.tracing).
ENV_TRACES_FILE = "KAI_TRACES_FILE"

# --- OpenTelemetry's own names (tracing) ------------------------------------------------

# Tracing is on when an OTLP endpoint is set (kai.yaml `tracing.endpoint`), or
# ENV_TRACES_FILE, and OTEL_SDK_DISABLED is not "true". The SDK reads these variables
# itself, and the other OTEL_* ones too (OTEL_EXPORTER_OTLP_HEADERS, OTEL_BSP_* ...).
OTEL_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"  # gRPC OTLP, e.g. http://collector:4317
OTEL_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"  # for traces only; wins
OTEL_SERVICE_NAME = "OTEL_SERVICE_NAME"  # <project>-<version>-<node|entrypoint>
OTEL_RESOURCE_ATTRIBUTES = "OTEL_RESOURCE_ATTRIBUTES"
OTEL_TRACES_SAMPLER = "OTEL_TRACES_SAMPLER"
OTEL_TRACES_SAMPLER_ARG = "OTEL_TRACES_SAMPLER_ARG"
OTEL_SDK_DISABLED = "OTEL_SDK_DISABLED"
# The samplers OTEL_TRACES_SAMPLER names (the SDK's built-in ones); the *traceidratio ones
# take OTEL_TRACES_SAMPLER_ARG, a ratio from 0 to 1.
TRACE_SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
                  "parentbased_always_off", "parentbased_traceidratio")
RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")


def service_name(project: str, version: str, node: str | None) -> str:
    """The OpenTelemetry service name of one process: <project>-<version>-<node>, or
    <project>-<version>-entrypoint."""
    return f"{project}-{version}-{node or ROLE_ENTRYPOINT}"
# Optional, entrypoint only: comma-separated nodes that may have no replica at all (autoscaled
# to zero). The entrypoint keeps their consumers and is ready without a replica pulling.
ENV_SCALE_TO_ZERO = "KAI_SCALE_TO_ZERO"

# --- KRE 1.x names of the same settings ---------------------------------------------

# Code written for KRE's Python runner (kre-py 1.23) reads its settings from these. Each is
# set with the value of the contract variable it names, wherever that one is set (so the
# node names only on nodes). kre-py's other variables have no meaning here and are not set
# (docs/node-sdk.md says which and why).
KRE_ENV_PREFIX = "KRT_"
KRE_ALIASES: tuple[tuple[str, str], ...] = (
    ("KRT_BASE_PATH", ENV_VERSION_DIR),  # ctx.path's root: where the version's files are
    ("KRT_HANDLER_PATH", ENV_HANDLER),  # the node's src, relative to KRT_BASE_PATH
    ("KRT_NATS_SERVER", ENV_NATS_URL),
    ("KRT_NODE_ID", ENV_NODE),  # a node's name is its id
    ("KRT_NODE_NAME", ENV_NODE),
    ("KRT_VERSION", ENV_VERSION),
    ("KRT_VERSION_ID", ENV_VERSION),  # a version's name is its id in the project
)


def kre_aliases(env: Mapping[str, str]) -> dict[str, str]:
    """The KRE_ALIASES of `env`, each with the value of the contract variable it names.

    Whoever changes a contract variable after the plan (`kai dev` points KAI_NATS_URL and
    the paths at this machine) sets these again from the result, so they cannot differ.
    """
    return {alias: env[ours] for alias, ours in KRE_ALIASES if ours in env}


# --- one environment entry ------------------------------------------------------------

# Linux refuses to start a process (E2BIG) whose environment has one `NAME=value` string,
# with its terminating NUL, longer than MAX_ARG_STRLEN: 32 pages, 128 KiB with 4 KiB pages.
# A config file's content travels in the environment too (KRE delivered it so): a file
# larger than this cannot, and a pod given one does not start. A NUL byte cannot either.
MAX_ENV_ENTRY = 32 * 4096


def env_entry_problem(name: str, value: bytes) -> str | None:
    """Why `name=value` cannot be one entry of a process's environment, or None."""
    if b"\0" in value:
        return "it holds a NUL byte, which an environment variable cannot"
    size = len(name.encode()) + 1 + len(value) + 1
    if size > MAX_ENV_ENTRY:
        return (f"{name}=<value> takes {size} bytes, more than the {MAX_ENV_ENTRY} one "
                "environment entry may (Linux MAX_ARG_STRLEN)")
    return None


# --- defaults ----------------------------------------------------------------

GRPC_PORT = 9000
WEB_PORT = 8080
NODE_WEB_PORT = 9090
VERSION_MOUNT = "/opt/kai/version"  # where the version ConfigMap is mounted in a pod
CONFIG_MOUNT = "/opt/kai/config"  # where declared config files are mounted in a pod
TMP_DIR = "/tmp"
NATS_AUTH_MOUNT = "/var/run/kai/nats-auth"  # where kai.yaml's nats.auth Secret is mounted
NATS_CA_MOUNT = "/var/run/kai/nats-ca"  # where kai.yaml's nats.tls.caSecret is mounted
NATS_CA_KEY = "ca.crt"  # the key of that Secret that holds the CA bundle
NATS_PORT = 4222  # when a nats:// or tls:// URL names no port
# The port a server URL without one means, by scheme: a websocket one is a web address.
NATS_SCHEME_PORTS = {"nats": NATS_PORT, "tls": NATS_PORT, "ws": 80, "wss": 443}
DEFAULT_NATS_URL = f"nats://nats.kai-system.svc:{NATS_PORT}"
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_STORAGE = "file"
DEFAULT_MAX_DELIVER = 5
# A short ack wait: a crashed replica's work is delivered again within about this many
# seconds. A node keeps the messages it works on alive (in_progress every ack_wait / 4), so
# a slow handler is not redelivered however long it takes.
DEFAULT_ACK_WAIT = 5.0
# The data stream keeps predictions and measurements 30 days by default, so it does not
# grow forever. db documents are kept however old they are (each is stored with a
# `Nats-TTL: never` header, see DATA_KEPT_KINDS): a node expects them back. A size is no
# default: JetStream reserves a stream's max_bytes of the server's storage when it creates
# the stream, so every project would take that much, and a server with less room (memory
# storage, say) would refuse the stream. kai.yaml sets both (runtime.dataStream).
DEFAULT_DATA_MAX_AGE = 30 * 24 * 3600.0
DEFAULT_DATA_MAX_BYTES = 0
DEFAULT_BIND_HOST = "0.0.0.0"
DEFAULT_CONCURRENCY = 32
# The largest request, step output or reply (bytes). One over the broker's max payload
# travels through the version's claim bucket (runner.transport.base: the claim check).
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
DUPLICATE_WINDOW = 120.0  # seconds JetStream remembers Nats-Msg-Id values

# The runner image's command; the subcommand selects the process role.
RUNNER_COMMAND: tuple[str, ...] = ("python", "-m", "runner")
ROLE_NODE = "node"
ROLE_ENTRYPOINT = "entrypoint"

# --- message headers ---------------------------------------------------------

# A step message carries three: HDR_MSG_ID, HDR_DEADLINE, HDR_REPLY (runner.transport.nats);
# HDR_REQUEST_ID when the client chose the request id, HDR_PUBLISHED on a call over core NATS
# (at most once), and the trace context (HDR_TRACEPARENT, HDR_TRACESTATE) while tracing is on.
HDR_MSG_ID = "Nats-Msg-Id"  # JetStream de-duplication id: "<call id>:<step>"
HDR_DEADLINE = "Kai-Deadline"  # absolute unix time in seconds, as a decimal string
HDR_REPLY = "Kai-Reply"  # subject of the final answer: "<entrypoint inbox>.<call id>"
HDR_STATUS = "Kai-Status"  # on error replies: a grpc.StatusCode name (absent: OK)
HDR_ERROR = "Kai-Error"  # on error replies: the message for the client
HDR_REQUEST_ID = "Kai-Request-Id"  # the client's x-request-id, when it sent one
HDR_WORKFLOW = "Kai-Workflow"  # no longer sent: the subject names the workflow
HDR_CLAIM = "Kai-Claim"  # a payload too large for one message: its object in claims_bucket
# When a call over core NATS (at most once) was sent (unix seconds, a decimal string): the
# node's queue wait is from this to its handler's start. A JetStream message goes without it:
# its ack subject has the time the stream stored it (runner.transport.nats).
HDR_PUBLISHED = "Kai-Published"
# W3C trace context (https://www.w3.org/TR/trace-context/), only while tracing is on: the
# span of the process that published the step (the entrypoint's, or the previous node's).
# The entrypoint reads the same keys from the client's gRPC metadata.
HDR_TRACEPARENT = "traceparent"
HDR_TRACESTATE = "tracestate"
# At most once (runner.transport.core): a sign of life of a call still being worked on, sent
# to its reply subject by the replica that holds it (no payload; the value is "1").
HDR_ALIVE = "Kai-Alive"

# --- request ids -------------------------------------------------------------

# The gRPC metadata key of the request id, in (the client's, optional) and out (initial
# metadata of every answer, errors included).
REQUEST_ID_METADATA = "x-request-id"
MAX_REQUEST_ID = 128
# Printable ASCII without whitespace and without the characters NATS gives a meaning in
# subjects ("." "*" ">"): the id travels in headers and may become part of subjects.
_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID}}}")
_SUBJECT_CHARS = frozenset(".*>")


def valid_request_id(value: str) -> bool:
    """Whether a client's x-request-id is taken as the request id (else one is generated)."""
    return bool(_REQUEST_ID.fullmatch(value)) and not _SUBJECT_CHARS.intersection(value)


_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def _token(value: str) -> str:
    """Make a value safe as one NATS subject token or stream-name part."""
    return _TOKEN.sub("_", value)


# --- JetStream names: built here, and read back here (stream_owner) -------------------

# Every stream a version's processes create is named `KAI_<project>_<version>_<workflow>`
# (its work queue), `KAI_<project>_DATA` (the project's data stream), or is the stream
# `OBJ_KAI_<project>_<version>_CLAIMS` of its claim bucket (an object store bucket B lives
# in stream OBJ_B). Project, version and workflow names are lowercase letters, digits and
# '-', a version's starting with a letter (kai.yaml and krt.yml allow no other), so '_'
# separates the parts unambiguously and the upper-case suffixes cannot be a name.
STREAM_PREFIX = "KAI"
DATA_SUFFIX = "DATA"
CLAIMS_SUFFIX = "CLAIMS"
OBJECT_STREAM_PREFIX = "OBJ_"  # JetStream's object store: bucket B is stream OBJ_B
_SEP = "_"


def _kai_name(*parts: str) -> str:
    return _SEP.join((STREAM_PREFIX, *parts))


def stream_name(project: str, version: str, workflow: str) -> str:
    """The JetStream stream of one workflow of one version."""
    return _kai_name(_token(project), _token(version), _token(workflow))


def stream_subjects(project: str, version: str, workflow: str) -> str:
    """The subject filter a workflow's stream captures."""
    return f"kai.{_token(project)}.{_token(version)}.{_token(workflow)}.>"


def step_subject(project: str, version: str, workflow: str, step: int) -> str:
    """The subject that carries the input of step `step` (0-based) of a chain."""
    return f"kai.{_token(project)}.{_token(version)}.{_token(workflow)}.s{step}"


def consumer_name(step: int, node: str) -> str:
    """The durable consumer of one step, shared by all replicas of its node."""
    return f"s{step}-{_token(node)}"


def claims_bucket(project: str, version: str) -> str:
    """The version's object store bucket of payloads too large for one message."""
    return _kai_name(_token(project), _token(version), CLAIMS_SUFFIX)


def claims_stream(project: str, version: str) -> str:
    """The JetStream stream that holds the version's claim bucket."""
    return OBJECT_STREAM_PREFIX + claims_bucket(project, version)


def claims_subjects(project: str, version: str) -> tuple[str, str]:
    """The subjects of the claim bucket's stream: its chunks and its objects' metadata."""
    bucket = claims_bucket(project, version)
    return f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"


# --- at-most-once workflows: core NATS request/reply, no stream ------------------------

# How a workflow's hops travel (krt.yml `delivery`). At least once: each step's input is
# stored in the workflow's JetStream work queue and acked once passed on (a crashed
# replica's work is delivered again). At most once: each hop is a core NATS message to the
# step's subject, taken by one replica of its queue group; nothing is stored, acked or
# delivered again (runner.transport.core).
AT_LEAST_ONCE = "at-least-once"
AT_MOST_ONCE = "at-most-once"
DELIVERY_MODES = (AT_LEAST_ONCE, AT_MOST_ONCE)
DEFAULT_DELIVERY = AT_LEAST_ONCE
PROBE_SUFFIX = ".ready"


def call_subject(project: str, version: str, workflow: str, step: int) -> str:
    """The core NATS subject of the calls of step `step` of an at-most-once workflow.

    Outside every stream's subjects (a work stream captures ``kai.<p>.<v>.<wf>.>``), so a
    call is never stored, whatever streams exist."""
    return f"kai-call.{_token(project)}.{_token(version)}.{_token(workflow)}.s{step}"


def probe_subject(call: str) -> str:
    """Where the replicas of the step whose calls arrive on `call` answer readiness probes."""
    return call + PROBE_SUFFIX


def queue_group(project: str, version: str, workflow: str, step: int, node: str) -> str:
    """The queue group of one step of an at-most-once workflow, joined by every replica of
    its node: each call goes to one of them."""
    return _kai_name(_token(project), _token(version), _token(workflow),
                     consumer_name(step, node))


def reply_prefix(project: str, version: str) -> str:
    """Entrypoint inbox subjects start with this (core NATS, not stored)."""
    return f"_KAI_REPLY.{_token(project)}.{_token(version)}"


def data_stream_name(project: str) -> str:
    """The project's stream for predictions, measurements and db documents."""
    return _kai_name(_token(project), DATA_SUFFIX)


def data_subjects(project: str) -> str:
    return f"kai-data.{_token(project)}.>"


def data_subject(project: str, kind: str, *parts: str) -> str:
    """A subject in the project's data stream, e.g. (p, "db", version, collection)."""
    tail = ".".join(_token(p) for p in parts)
    return f"kai-data.{_token(project)}.{_token(kind)}" + (f".{tail}" if tail else "")


WORK_STREAM = "work stream"
DATA_STREAM = "data stream"
CLAIM_BUCKET = "claim bucket"
_NAME_PART = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")  # a project's or workflow's
_VERSION_PART = re.compile(r"[a-z](?:[-a-z0-9]*[a-z0-9])?")  # a version's: a DNS-1035 label


@dataclass(frozen=True)
class StreamOwner:
    """Whose a JetStream stream is, read back from its name by :func:`stream_owner`."""

    kind: str  # WORK_STREAM, DATA_STREAM or CLAIM_BUCKET
    project: str
    version: str = ""  # "" for the data stream: it is the project's
    workflow: str = ""  # a work stream's

    def subjects(self) -> tuple[str, ...]:
        """The subjects the runner's stream of this name captures, sorted."""
        if self.kind == WORK_STREAM:
            return (stream_subjects(self.project, self.version, self.workflow),)
        if self.kind == CLAIM_BUCKET:
            return tuple(sorted(claims_subjects(self.project, self.version)))
        return (data_subjects(self.project),)


def stream_owner(stream: str) -> StreamOwner | None:
    """Whose stream `stream` is: the inverse of stream_name, data_stream_name and
    claims_stream for the names kai.yaml and krt.yml allow. None for every other name,
    so a stream no KAI version made (or one of a name the runner would not build) is
    never taken for one."""
    claims = stream.startswith(OBJECT_STREAM_PREFIX)
    parts = stream.removeprefix(OBJECT_STREAM_PREFIX).split(_SEP)
    if parts[0] != STREAM_PREFIX or len(parts) < 3 or not _NAME_PART.fullmatch(parts[1]):
        return None
    project, last = parts[1], parts[-1]
    if len(parts) == 3:
        return StreamOwner(DATA_STREAM, project) if last == DATA_SUFFIX and not claims else None
    if len(parts) != 4 or not _VERSION_PART.fullmatch(parts[2]):
        return None
    if claims:
        return StreamOwner(CLAIM_BUCKET, project, parts[2]) if last == CLAIMS_SUFFIX else None
    return StreamOwner(WORK_STREAM, project, parts[2], last) if _NAME_PART.fullmatch(last) else None


RESERVED_ENV_PREFIX = "KAI_"  # the runner's own environment
# No config name may start with one of these: KAI_ is the runner's own environment, KRT_
# the names KRE gave it (KRE_ALIASES sets some; the prefix is kept whole for the others).
RESERVED_ENV_PREFIXES: tuple[str, ...] = (RESERVED_ENV_PREFIX, KRE_ENV_PREFIX)


def is_reserved_env(name: str) -> bool:
    """Whether `name` is (or may become) one of the runner's own environment variables."""
    return name.startswith(RESERVED_ENV_PREFIXES)


def reserved_env_rule() -> str:
    """The reserved-name rule in words, for messages: `names starting with KAI_ or KRT_`."""
    return f"names starting with {' or '.join(RESERVED_ENV_PREFIXES)}"


DATA_KEPT_KINDS = frozenset({"db"})  # records never aged out of the data stream


def data_kept_forever(subject: str) -> bool:
    """Whether a record on `subject` (of the data stream) outlives the stream's max age."""
    parts = subject.split(".", 3)
    return len(parts) > 2 and parts[0] == "kai-data" and parts[2] in DATA_KEPT_KINDS


# --- typed view of the environment ---------------------------------------------


@dataclass(frozen=True)
class Workflow:
    """One workflow as the runner sees it: an rpc bound to a chain of nodes, and how its
    hops travel (`delivery`, one of DELIVERY_MODES)."""

    name: str
    rpc: str
    chain: tuple[str, ...]
    delivery: str = DEFAULT_DELIVERY

    @property
    def at_most_once(self) -> bool:
        return self.delivery == AT_MOST_ONCE

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "rpc": self.rpc, "chain": list(self.chain)}
        if self.delivery != DEFAULT_DELIVERY:  # the default is left out: an unchanged env
            out["delivery"] = self.delivery
        return out


def input_subject(project: str, version: str, workflow: Workflow, step: int) -> str:
    """The subject step `step` of `workflow` takes its input from: its call subject at most
    once, else the subject of its stream."""
    subject = call_subject if workflow.at_most_once else step_subject
    return subject(project, version, workflow.name, step)


def encode_workflows(workflows: list[Workflow] | tuple[Workflow, ...]) -> str:
    return json.dumps([w.to_json() for w in workflows], separators=(",", ":"), sort_keys=True)


def decode_workflows(raw: str) -> tuple[Workflow, ...]:
    items = json.loads(raw)
    out = []
    for i in items:
        delivery = i.get("delivery", DEFAULT_DELIVERY)
        if delivery not in DELIVERY_MODES:
            raise ValueError(f"workflow {i['name']}: delivery {delivery!r} is not one of "
                             f"{', '.join(DELIVERY_MODES)}")
        out.append(Workflow(i["name"], i["rpc"], tuple(i["chain"]), delivery))
    return tuple(out)


def _split(raw: str) -> tuple[str, ...]:
    return tuple(x for x in (p.strip() for p in raw.split(",")) if x)


class ContractError(ValueError):
    """The environment does not satisfy the contract (a missing or bad variable)."""


@dataclass(frozen=True)
class RunnerEnv:
    """All settings a runner process takes from its environment."""

    project: str
    version: str
    version_dir: str
    proto: str
    workflows: tuple[Workflow, ...]
    nats_url: str = DEFAULT_NATS_URL
    node: str | None = None
    handler: str | None = None
    config_variables: tuple[str, ...] = ()
    config_files: tuple[str, ...] = ()
    config_dir: str = CONFIG_MOUNT
    grpc_port: int = GRPC_PORT
    web_port: int = WEB_PORT
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    storage: str = DEFAULT_STORAGE
    max_deliver: int = DEFAULT_MAX_DELIVER
    ack_wait: float = DEFAULT_ACK_WAIT
    data_max_age: float = DEFAULT_DATA_MAX_AGE
    data_max_bytes: int = DEFAULT_DATA_MAX_BYTES
    log_level: str = "INFO"
    bind_host: str = DEFAULT_BIND_HOST
    concurrency: int = DEFAULT_CONCURRENCY
    max_message: int = DEFAULT_MAX_MESSAGE
    nats_auth_dir: str = ""  # empty: no credentials
    nats_ca_file: str = ""  # empty: the system's CAs
    # tracing (OpenTelemetry's variables): the OTLP endpoint ("": none), the sampler and its
    # argument ("": the SDK's default, parentbased_always_on), and ENV_TRACES_FILE
    tracing_endpoint: str = ""
    tracing_sampler: str = ""
    tracing_sampler_arg: str = ""
    traces_file: str = ""
    tracing_disabled: bool = False  # OTEL_SDK_DISABLED=true
    scale_to_zero: tuple[str, ...] = ()  # entrypoint: nodes that may have no replica
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def tracing(self) -> bool:
        """Whether the process traces: an endpoint or a traces file, and not disabled."""
        return bool(self.tracing_endpoint or self.traces_file) and not self.tracing_disabled

    def tracing_environ(self) -> dict[str, str]:
        """OpenTelemetry's variables for these settings (none without an endpoint)."""
        if not self.tracing_endpoint:
            return {}
        env = {
            OTEL_ENDPOINT: self.tracing_endpoint,
            OTEL_SERVICE_NAME: service_name(self.project, self.version, self.node),
            OTEL_RESOURCE_ATTRIBUTES: (f"service.namespace={self.project},"
                                       f"service.version={self.version}"),
        }
        if self.tracing_sampler:
            env[OTEL_TRACES_SAMPLER] = self.tracing_sampler
        if self.tracing_sampler_arg:
            env[OTEL_TRACES_SAMPLER_ARG] = self.tracing_sampler_arg
        return env

    def to_environ(self) -> dict[str, str]:
        """The variables, as strings, in a stable order, with their KRE_ALIASES."""
        env = {
            ENV_NATS_URL: self.nats_url,
            ENV_PROJECT: self.project,
            ENV_VERSION: self.version,
            ENV_VERSION_DIR: self.version_dir,
            ENV_PROTO: self.proto,
            ENV_WORKFLOWS: encode_workflows(self.workflows),
            ENV_CONFIG_VARIABLES: ",".join(self.config_variables),
            ENV_CONFIG_FILES: ",".join(self.config_files),
            ENV_CONFIG_DIR: self.config_dir,
            ENV_GRPC_PORT: str(self.grpc_port),
            ENV_WEB_PORT: str(self.web_port),
            ENV_REQUEST_TIMEOUT: _num(self.request_timeout),
            ENV_STORAGE: self.storage,
            ENV_MAX_DELIVER: str(self.max_deliver),
            ENV_ACK_WAIT: _num(self.ack_wait),
            ENV_DATA_MAX_AGE: _num(self.data_max_age),
            ENV_DATA_MAX_BYTES: str(self.data_max_bytes),
            ENV_LOG_LEVEL: self.log_level,
            ENV_BIND_HOST: self.bind_host,
            ENV_CONCURRENCY: str(self.concurrency),
            ENV_MAX_MESSAGE: str(self.max_message),
        }
        if self.node is not None:
            env[ENV_NODE] = self.node
        if self.handler is not None:
            env[ENV_HANDLER] = self.handler
        if self.nats_auth_dir:
            env[ENV_NATS_AUTH_DIR] = self.nats_auth_dir
        if self.nats_ca_file:
            env[ENV_NATS_CA_FILE] = self.nats_ca_file
        if self.traces_file:
            env[ENV_TRACES_FILE] = self.traces_file
        env.update(self.tracing_environ())
        if self.scale_to_zero:
            env[ENV_SCALE_TO_ZERO] = ",".join(self.scale_to_zero)
        env.update(self.extra)
        env.update(kre_aliases(env))
        return dict(sorted(env.items()))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> RunnerEnv:
        e = os.environ if environ is None else environ

        def need(name: str) -> str:
            value = e.get(name, "")
            if not value:
                raise ContractError(f"environment variable {name} is not set")
            return value

        try:
            workflows = decode_workflows(need(ENV_WORKFLOWS))
        except (ValueError, KeyError, TypeError) as exc:
            raise ContractError(f"{ENV_WORKFLOWS} is not valid: {exc}") from None
        try:
            return cls(
                project=need(ENV_PROJECT),
                version=need(ENV_VERSION),
                version_dir=need(ENV_VERSION_DIR),
                proto=need(ENV_PROTO),
                workflows=workflows,
                nats_url=e.get(ENV_NATS_URL) or DEFAULT_NATS_URL,
                node=e.get(ENV_NODE) or None,
                handler=e.get(ENV_HANDLER) or None,
                config_variables=_split(e.get(ENV_CONFIG_VARIABLES, "")),
                config_files=_split(e.get(ENV_CONFIG_FILES, "")),
                config_dir=e.get(ENV_CONFIG_DIR) or CONFIG_MOUNT,
                grpc_port=int(e.get(ENV_GRPC_PORT) or GRPC_PORT),
                web_port=int(e.get(ENV_WEB_PORT) or WEB_PORT),
                request_timeout=float(e.get(ENV_REQUEST_TIMEOUT) or DEFAULT_REQUEST_TIMEOUT),
                storage=e.get(ENV_STORAGE) or DEFAULT_STORAGE,
                max_deliver=int(e.get(ENV_MAX_DELIVER) or DEFAULT_MAX_DELIVER),
                ack_wait=float(e.get(ENV_ACK_WAIT) or DEFAULT_ACK_WAIT),
                data_max_age=float(e.get(ENV_DATA_MAX_AGE) or DEFAULT_DATA_MAX_AGE),
                data_max_bytes=int(e.get(ENV_DATA_MAX_BYTES) or DEFAULT_DATA_MAX_BYTES),
                log_level=e.get(ENV_LOG_LEVEL) or "INFO",
                bind_host=e.get(ENV_BIND_HOST) or DEFAULT_BIND_HOST,
                concurrency=_at_least_one(e, ENV_CONCURRENCY, DEFAULT_CONCURRENCY),
                max_message=_at_least_one(e, ENV_MAX_MESSAGE, DEFAULT_MAX_MESSAGE),
                nats_auth_dir=e.get(ENV_NATS_AUTH_DIR, ""),
                nats_ca_file=e.get(ENV_NATS_CA_FILE, ""),
                tracing_endpoint=e.get(OTEL_TRACES_ENDPOINT) or e.get(OTEL_ENDPOINT) or "",
                tracing_sampler=e.get(OTEL_TRACES_SAMPLER, ""),
                tracing_sampler_arg=e.get(OTEL_TRACES_SAMPLER_ARG, ""),
                traces_file=e.get(ENV_TRACES_FILE, ""),
                tracing_disabled=e.get(OTEL_SDK_DISABLED, "").strip().lower() == "true",
                scale_to_zero=_split(e.get(ENV_SCALE_TO_ZERO, "")),
            )
        except ValueError as exc:
            raise ContractError(f"bad number in the environment: {exc}") from None


def _at_least_one(e: Mapping[str, str], name: str, default: int) -> int:
    raw = e.get(name, "")
    try:
        return max(1, int(raw)) if raw else default
    except ValueError:
        raise ContractError(f"{name}={raw!r} is not a whole number") from None


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# --- NATS URLs ----------------------------------------------------------------


def nats_servers(url: str) -> list[str]:
    """The servers of a NATS URL, which may list several separated by commas."""
    return [part.strip() for part in url.split(",") if part.strip()]


def nats_address(server: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """(host, port) of one NATS server: `SCHEME://HOST:PORT`, `HOST:PORT` or `HOST`.

    Without a port: 4222 for nats:// and tls://, 443 for wss://, 80 for ws://
    (NATS_SCHEME_PORTS). Raises ValueError when the port is not a port.
    """
    parsed = urlsplit(server if "://" in server else f"nats://{server}")
    return (parsed.hostname or default_host,
            parsed.port or NATS_SCHEME_PORTS.get(parsed.scheme.lower(), NATS_PORT))


# What a NATS URL with credentials in it is told; the caller adds where they go instead.
NATS_URL_CREDENTIALS = "carries credentials (user:password@ or token@)"


def nats_url_has_credentials(url: str) -> bool:
    """Whether any server of a NATS URL carries credentials (`user:password@`, `token@`)."""
    return any("@" in urlsplit(s if "://" in s else f"nats://{s}").netloc
               for s in nats_servers(url))
