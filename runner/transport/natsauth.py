"""How a runner process proves who it is to NATS, and which CA it trusts: nats.connect options.

The credentials come from a folder, ``KAI_NATS_AUTH_DIR`` (in the cluster, the Secret that
kai.yaml's ``nats.auth`` names, mounted read-only at ``contract.NATS_AUTH_MOUNT``; in
``kai dev``, a folder it writes the ``--nats-creds`` file into). Each key of the Secret is a
file, and the folder holds exactly one kind of credentials:

* ``creds``: a ``.creds`` file, the user JWT and its nkey seed (decentralized auth, what
  ``nsc`` writes);
* ``nkey``: a user nkey seed (``SU...``);
* ``token``;
* ``user`` and ``password``.

Other files are left alone (the kubelet's ``..data`` links start with dots). Every file is
read again on each (re)connect, so a rotated Secret is taken without a restart (the last
good value is kept while a file cannot be read). ``KAI_NATS_CA_FILE`` names a PEM file of
CAs (``contract.NATS_CA_KEY`` of the ``nats.tls.caSecret`` Secret): the server's
certificate is checked against them rather than the system's, for tls:// and wss://.

Everything wrong raises :class:`NatsSetupError` with one line, before any connection is
tried. This module does not import nats-py (only runner.transport.nats does).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from .. import contract

CREDS = "creds"
NKEY = "nkey"
TOKEN = "token"
USER = "user"
PASSWORD = "password"
KINDS = f"{CREDS}, {NKEY}, {TOKEN}, or {USER} and {PASSWORD}"  # as the messages name them
# What the messages call each kind (auth_kind's answers).
LABELS = {CREDS: ".creds file", NKEY: "nkey seed", TOKEN: "token", USER: "user and password"}
_JWT_BEGIN = "BEGIN NATS USER JWT"
_SEED_BEGIN = "BEGIN USER NKEY SEED"
EXIT_ENV = 2  # runner.__main__'s exit code for a bad environment


class NatsSetupError(ValueError):
    """The NATS credentials, CA or URL cannot be used as configured; a one-line message."""

    code = EXIT_ENV


class FileValue:
    """A credential file's text (trailing line ends dropped), read again on every call;
    the last value read is kept while the file cannot be read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last = _read_text(path)

    def __call__(self) -> str:
        try:
            self.last = self.path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError):
            pass
        return self.last


def connect_options(auth_dir: str, ca_file: str) -> dict[str, Any]:
    """The nats.connect keyword arguments of the auth folder and CA file (either may be
    empty: none)."""
    options: dict[str, Any] = {}
    if auth_dir:
        options.update(auth_options(Path(auth_dir)))
    if ca_file:
        options["tls"] = tls_context(Path(ca_file))
    return options


def auth_kind(auth_dir: str) -> str:
    """The kind of credentials in `auth_dir` (`creds`, `nkey`, `token` or `user`), checked;
    "" when there is no folder."""
    return _kind(Path(auth_dir)) if auth_dir else ""


def auth_options(folder: Path) -> dict[str, Any]:
    """nats.connect's arguments for the one kind of credentials in `folder`."""
    kind = _kind(folder)
    path = folder / kind
    if kind == CREDS:
        check_creds_file(path)
        return {"user_credentials": str(path)}
    if kind == NKEY:
        _check_seed(path, _read_text(path).strip())
        return {"nkeys_seed": str(path)}
    if kind == TOKEN:
        return {"token": _value(path)}
    return {"user": _value(path), "password": _value(folder / PASSWORD)}


def _kind(folder: Path) -> str:
    if not folder.is_dir():
        raise NatsSetupError(f"{contract.ENV_NATS_AUTH_DIR}={folder}: no such folder")
    present = {name for name in (CREDS, NKEY, TOKEN, USER, PASSWORD) if (folder / name).is_file()}
    kinds = [k for k in (CREDS, NKEY, TOKEN) if k in present]
    if present & {USER, PASSWORD}:
        kinds.append(f"{USER} and {PASSWORD}")
    if len(kinds) > 1:
        raise NatsSetupError(f"{folder} holds more than one kind of NATS credentials "
                             f"({', '.join(kinds)}); keep one: {KINDS}")
    if not kinds:
        others = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        raise NatsSetupError(f"{folder} holds no NATS credentials: expected a file {KINDS} "
                             f"(found: {', '.join(others) or 'nothing'})")
    for have, lacks in ((USER, PASSWORD), (PASSWORD, USER)):
        if have in present and lacks not in present:
            raise NatsSetupError(f"{folder} has a {have} but no {lacks}")
    return USER if USER in present else kinds[0]


def _value(path: Path) -> FileValue:
    value = FileValue(path)
    if not value.last:
        raise NatsSetupError(f"{path} is empty")
    return value


def check_creds_file(path: Path) -> None:
    """A .creds file holds a user JWT and a user nkey seed; raise NatsSetupError if not.

    (nats-py reads the JWT until it finds its first line, and would never stop on a file
    without one.)"""
    text = _read_text(path)
    if _JWT_BEGIN not in text or _SEED_BEGIN not in text:
        raise NatsSetupError(f"{path} is not a NATS .creds file (it needs the lines "
                             f"-----{_JWT_BEGIN}----- and -----{_SEED_BEGIN}-----)")
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if _SEED_BEGIN in line)
    _check_seed(path, lines[at + 1].strip() if at + 1 < len(lines) else "")


def _check_seed(path: Path, seed: str) -> None:
    try:
        import nkeys
    except ImportError:
        raise NatsSetupError(f"{path}: NATS nkey credentials need the nkeys package "
                             "(pip install nkeys)") from None
    if not seed.startswith("SU"):
        raise NatsSetupError(f"{path} holds no user nkey seed (one starts with SU)")
    try:
        nkeys.from_seed(bytearray(seed.encode())).wipe()
    except Exception:  # nkeys raises its own errors, binascii's and IndexError
        raise NatsSetupError(f"{path} holds no valid nkey seed") from None


def tls_context(ca_file: Path) -> ssl.SSLContext:
    """A client TLS context that trusts the CAs of the PEM file `ca_file`."""
    if not ca_file.is_file():
        raise NatsSetupError(f"{contract.ENV_NATS_CA_FILE}={ca_file}: no such file (the Secret "
                             f"of nats.tls.caSecret needs the key {contract.NATS_CA_KEY})")
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise NatsSetupError(f"{ca_file}: not a PEM CA certificate ({exc})") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise NatsSetupError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise NatsSetupError(f"{path} is not UTF-8 text") from None


# What nats-server and nats-py say when the server refuses the credentials (or their lack).
_REFUSALS = ("authorization violation", "authorization failed", "authentication expired",
             "authentication revoked")


def refused(exc: BaseException) -> bool:
    """Whether a connection error is the server refusing the credentials: trying again with
    the same ones cannot help."""
    text = str(exc).lower()
    return any(refusal in text for refusal in _REFUSALS)


def first_connection_problem(url: str, exc: BaseException, auth_dir: str, kind: str,
                             ca_file: str) -> str | None:
    """The one line a process stops with when its first connection to NATS fails with `exc`
    (the credentials refused, the certificate not trusted), or None: try again."""
    if refused(exc):
        if auth_dir:
            return f"NATS at {url} refused the {LABELS[kind]} in {auth_dir} ({exc})"
        return (f"NATS at {url} requires credentials ({exc}) and {contract.ENV_NATS_AUTH_DIR} "
                "is not set: name a Secret with them in kai.yaml's nats.auth (kai dev: "
                "--nats-creds FILE)")
    if isinstance(exc, ssl.SSLCertVerificationError):
        if ca_file:
            return (f"NATS at {url} presented a certificate the CAs in {ca_file} do not "
                    f"trust ({exc.verify_message})")
        return (f"NATS at {url} presented a certificate the system's CAs do not trust "
                f"({exc.verify_message}): name a Secret with its CA in kai.yaml's "
                "nats.tls.caSecret")
    return None
