"""`kai gc`: find and delete the JetStream streams of versions that no longer run.

A version's processes create on the NATS server one work-queue stream per workflow, each
with a durable consumer per step, and the version's claim bucket (an object store, whose
stream is `OBJ_<bucket>`); they share the project's data stream. runner.contract builds
those names and reads them back (:func:`runner.contract.stream_owner`). Stopping a version
removes its Deployments, and nothing removes its streams: this module does.

Collected: every work stream and claim bucket of this project (kai.yaml `project`) whose
version is neither started nor published in kai.yaml, including versions kai.yaml no
longer lists; a stream's consumers go with it. Never collected:

* the project's data stream (its db documents are kept forever:
  runner.contract.data_kept_forever) and every stream of another project;
* a stream whose name does not parse as one the runner makes, and one whose name does but
  that captures other subjects than the runner's stream of that name would;
* every stream of a version still consumed: a consumer of it has pull requests waiting,
  so a process of the version still runs (its stop is not synced yet, say).

Every request to NATS, the connection included, is bounded in time (:func:`connect`'s
`limit`); a failure is a :class:`GcError` with a one-line message.
"""

from __future__ import annotations

import asyncio
import math
import re
import socket
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import api
from nats.js.manager import JetStreamManager

from runner import contract
from runner.transport import natsauth

from .project import PUBLISHED, STARTED, Project

T = TypeVar("T")
DEFAULT_TIMEOUT = 5.0  # seconds for the connection and for each request
MAX_PAGES = 10_000  # list pages read at most (JetStream answers 256 streams a page)
CLIENT_NAME = "kai gc"


class GcError(Exception):
    """`kai gc` cannot go on; a one-line message."""


class Gone(GcError):
    """The stream asked about is not there (deleted meanwhile)."""


@dataclass(frozen=True)
class ConsumerInfo:
    name: str
    pending: int  # messages not yet delivered, plus those delivered and not acknowledged
    waiting: int  # pull requests outstanding: a process asking for messages


@dataclass(frozen=True)
class StreamInfo:
    name: str
    subjects: tuple[str, ...]
    messages: int
    bytes: int
    consumer_count: int = 0
    consumers: tuple[ConsumerInfo, ...] = ()


@dataclass(frozen=True)
class Garbage:
    """A stream `kai gc` deletes, and whose it is."""

    owner: contract.StreamOwner
    stream: StreamInfo


@dataclass(frozen=True)
class InUse:
    """A version not started in kai.yaml whose streams are still consumed: kept."""

    version: str
    consumers: tuple[str, ...]  # "<stream>/<consumer>" with pull requests waiting


@dataclass(frozen=True)
class Selection:
    garbage: tuple[Garbage, ...] = ()  # sorted by version, then work streams before buckets
    in_use: tuple[InUse, ...] = ()
    foreign_subjects: tuple[StreamInfo, ...] = ()  # named like ours, other subjects: kept

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(sorted({g.owner.version for g in self.garbage}))


def running_versions(project: Project) -> frozenset[str]:
    """The versions kai.yaml starts or publishes: their streams are never collected."""
    return frozenset(name for name, vs in project.versions.items()
                     if vs.state in (STARTED, PUBLISHED))


_KIND_ORDER = {contract.WORK_STREAM: 0, contract.CLAIM_BUCKET: 1}


def select(streams: Iterable[StreamInfo], project: str, running: frozenset[str]) -> Selection:
    """What of `streams` is garbage of `project` (see the module docstring).

    A version counts as consumed only by the consumers its StreamInfo carries: list them
    (:func:`survey` does) for the streams this selects, then select again.
    """
    garbage: list[Garbage] = []
    foreign: list[StreamInfo] = []
    for info in streams:
        owner = contract.stream_owner(info.name)
        if (owner is None or owner.project != project or owner.kind == contract.DATA_STREAM
                or owner.version in running):
            continue
        if tuple(sorted(info.subjects)) != owner.subjects():
            foreign.append(info)
            continue
        garbage.append(Garbage(owner, info))
    busy: dict[str, list[str]] = {}
    for g in garbage:
        busy.setdefault(g.owner.version, []).extend(
            f"{g.stream.name}/{c.name}" for c in g.stream.consumers if c.waiting > 0)
    in_use = tuple(InUse(v, tuple(sorted(names))) for v, names in sorted(busy.items()) if names)
    held = {u.version for u in in_use}
    garbage.sort(key=lambda g: (g.owner.version, _KIND_ORDER[g.owner.kind], g.stream.name))
    return Selection(
        garbage=tuple(g for g in garbage if g.owner.version not in held),
        in_use=in_use,
        foreign_subjects=tuple(sorted(foreign, key=lambda s: s.name)),
    )


# --- what is printed ---------------------------------------------------------------------


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def listing(selection: Selection) -> list[str]:
    """One line per stream and per consumer to delete, in the selection's order."""
    width = max((len(g.owner.version) for g in selection.garbage), default=0)
    kind_width = max(len(contract.WORK_STREAM), len(contract.CLAIM_BUCKET), len("consumer"))
    lines: list[str] = []
    for g in selection.garbage:
        s = g.stream
        name = s.name
        if g.owner.kind == contract.CLAIM_BUCKET:
            name = f"{contract.claims_bucket(g.owner.project, g.owner.version)} (stream {name})"
        size = f"{_count(s.messages, 'message')}, {_count(s.bytes, 'byte')}"
        lines.append(f"{g.owner.version:<{width}}  {g.owner.kind:<{kind_width}}  {name}: {size}")
        for c in sorted(s.consumers, key=lambda c: c.name):
            lines.append(f"{g.owner.version:<{width}}  {'consumer':<{kind_width}}  "
                         f"{s.name}/{c.name}: {_count(c.pending, 'message')} pending")
    return lines


def notes(selection: Selection) -> list[str]:
    """Why streams that look collectable are kept."""
    lines = [f"kept: version {u.version} is not started in kai.yaml, but its streams are "
             f"still consumed ({', '.join(u.consumers)} asking for messages): a process of "
             "it still runs; run kai gc again once its pods are gone"
             for u in selection.in_use]
    lines.extend(f"kept: {s.name}: named like a stream of this project, but it captures "
                 f"{', '.join(s.subjects) or 'no subjects'}, not what the runner's would"
                 for s in selection.foreign_subjects)
    return lines


def summary(selection: Selection) -> str:
    """`3 streams (4 consumers) of versions a, b`."""
    consumers = sum(len(g.stream.consumers) for g in selection.garbage)
    versions = selection.versions
    return (f"{_count(len(selection.garbage), 'stream')} "
            f"({_count(consumers, 'consumer')}) of "
            f"{'version' if len(versions) == 1 else 'versions'} {', '.join(versions)}")


# --- NATS ---------------------------------------------------------------------------------


def shown_url(url: str) -> str:
    """`url` without the password or token it may carry (nats://user:secret@host)."""
    return re.sub(r"(://)[^/@,]*@", r"\1***@", url)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve its host ({exc.strerror})"
    if isinstance(exc, (TimeoutError, nats.errors.TimeoutError)):
        return "no answer in time"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass
class Connection:
    """A connection to NATS for `kai gc`, and what the server said on the side."""

    nc: Client
    timeout: float  # seconds each request may take
    said: list[BaseException]  # asynchronous errors (a permissions violation, say)

    async def ask(self, request: Awaitable[T], what: str) -> T:
        """One JetStream request, bounded by the timeout, its failure a GcError."""
        self.said.clear()
        try:
            async with asyncio.timeout(self.timeout):
                return await request
        except (TimeoutError, nats.errors.TimeoutError):
            said = f" (the server said: {_reason(self.said[-1])})" if self.said else ""
            raise GcError(f"NATS did not answer {what} within {self.timeout:g}s{said}") from None
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
            raise GcError(f"JetStream does not answer on this NATS server ({what}): enable "
                          "it, or connect as a user of the account the versions run in"
                          ) from None
        except nats.js.errors.NotFoundError as exc:
            raise Gone(f"{what}: {exc.description or 'not found'}") from None
        except nats.js.errors.APIError as exc:
            raise GcError(f"{what}: {exc.description or exc}") from None
        except nats.errors.Error as exc:
            raise GcError(f"{what}: {_reason(exc)}") from None

    async def close(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.nc.close()
        except (TimeoutError, nats.errors.Error):
            pass


async def connect(url: str, creds: Path | None, limit: float) -> Connection:
    """A connection to NATS that fails, once, within `limit` seconds: no reconnecting;
    each of its requests is bounded by `limit` too."""
    said: list[BaseException] = []

    async def remember(exc: Exception) -> None:  # nats-py would log a traceback instead
        said.append(exc)

    servers = contract.nats_servers(url)
    if not servers:
        raise GcError("the NATS URL is empty; pass --nats URL")
    if creds is not None:
        try:  # nats-py would read a file that is no .creds file forever
            natsauth.check_creds_file(creds)
        except natsauth.NatsSetupError as exc:
            raise GcError(f"--nats-creds: {exc}") from None
    try:
        async with asyncio.timeout(limit):
            nc = await nats.connect(
                servers=servers, name=CLIENT_NAME, allow_reconnect=False,
                max_reconnect_attempts=1, reconnect_time_wait=0.05,
                connect_timeout=max(1, math.ceil(limit)), error_cb=remember,
                user_credentials=str(creds) if creds is not None else None)
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        cause = said[-1] if said and isinstance(exc, (nats.errors.NoServersError,
                                                      TimeoutError)) else exc
        reason = _reason(cause)
        if (isinstance(cause, nats.errors.AuthorizationError)
                or "authorization violation" in reason.lower()):
            reason = ("the server refused the credentials of --nats-creds" if creds else
                      "the server requires credentials; pass --nats-creds FILE")
        raise GcError(f"cannot connect to NATS at {shown_url(url)}: {reason}") from None
    return Connection(nc, limit, said)


async def list_streams(conn: Connection, jsm: JetStreamManager) -> list[StreamInfo]:
    """Every stream of the account, page by page."""
    out: list[StreamInfo] = []
    for _ in range(MAX_PAGES):
        page = await conn.ask(jsm.streams_info_iterator(offset=len(out)), "the stream list")
        if not isinstance(page, api.StreamsListIterator):  # what nats-py returns
            raise GcError(f"the stream list: unexpected answer {type(page).__name__}")
        infos = list(page)
        for info in infos:
            state = info.state
            out.append(StreamInfo(
                name=info.config.name or "",
                subjects=tuple(info.config.subjects or ()),
                messages=state.messages if state else 0,
                bytes=state.bytes if state else 0,
                consumer_count=state.consumer_count if state else 0))
        if not infos or len(out) >= (page.total or 0):
            break
    return out


async def list_consumers(conn: Connection, jsm: JetStreamManager,
                         stream: StreamInfo) -> tuple[ConsumerInfo, ...]:
    """The consumers of `stream`, page by page; none when the stream is gone meanwhile."""
    out: list[ConsumerInfo] = []
    for _ in range(MAX_PAGES):
        if len(out) >= stream.consumer_count:
            break
        try:
            page = await conn.ask(jsm.consumers_info(stream.name, offset=len(out)),
                                  f"the consumers of {stream.name}")
        except Gone:
            return ()
        if not page:
            break
        out.extend(ConsumerInfo(name=c.name or c.config.durable_name or "",
                                pending=(c.num_pending or 0) + (c.num_ack_pending or 0),
                                waiting=c.num_waiting or 0) for c in page)
    return tuple(out)


async def survey(conn: Connection, project: str, running: frozenset[str]) -> Selection:
    """What of the server's streams is `project`'s garbage, each with its consumers."""
    jsm = conn.nc.jsm(timeout=conn.timeout)
    streams = await list_streams(conn, jsm)
    consumers: Mapping[str, tuple[ConsumerInfo, ...]] = {
        g.stream.name: await list_consumers(conn, jsm, g.stream)
        for g in select(streams, project, running).garbage}
    detailed = [StreamInfo(s.name, s.subjects, s.messages, s.bytes, s.consumer_count,
                           consumers.get(s.name, ())) for s in streams]
    return select(detailed, project, running)


async def delete(conn: Connection, garbage: Iterable[Garbage]) -> list[str]:
    """Delete each stream (its consumers go with it); one error line per failure.

    A stream already gone counts as deleted, so a second `kai gc` racing this one is fine.
    """
    jsm = conn.nc.jsm(timeout=conn.timeout)
    errors: list[str] = []
    todo = list(garbage)
    for done, g in enumerate(todo):
        try:
            await conn.ask(jsm.delete_stream(g.stream.name), f"deleting {g.stream.name}")
        except Gone:
            pass
        except GcError as exc:
            errors.append(f"error: {exc}")
            left = len(todo) - done - 1
            if not conn.nc.is_connected and left:
                errors.append(f"error: the connection to NATS is lost; "
                              f"{_count(left, 'more stream')} not deleted")
                break
    return errors
