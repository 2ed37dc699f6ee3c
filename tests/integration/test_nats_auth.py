"""NATS authentication against a real nats-server started with each kind of it.

For each kind (user and password, token, nkey, a .creds file with decentralized JWT auth),
the runner's connect helper (runner.transport.nats.connect) connects with an auth folder
laid out as the mounted Secret is, uses JetStream, and is refused with one clear line when
the secret is wrong or missing. A private CA is tested with a real TLS server and
certificates made with openssl. End to end: an entrypoint and a node authenticate with
user and password; `kai dev --nats URL --nats-creds FILE` runs a version on a JWT server.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nkeys
import pytest
from local_run import kai
from local_run import write_version as write_krt_version
from runner_procs import wait_ready
from test_runner_failures import _call, _version

from runner.natsserver import NatsServer
from runner.supervisor import free_port
from runner.transport import natsauth
from runner.transport.nats import connect

pytestmark = pytest.mark.integration

PASSWORD = "hunter2-pw"
TOKEN = "s3cret-token-value"


# --- decentralized auth: operator, accounts and a user, as NATS JWT v2 ---------------------


def _keypair(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(issuer: nkeys.KeyPair, subject: str, nats: dict[str, object]) -> str:
    """A NATS JWT v2: base64url JSON header and claims, signed with the issuer's nkey."""
    claims: dict[str, object] = {"iat": int(time.time()), "iss": issuer.public_key.decode(),
                                 "name": "kai-test", "sub": subject,
                                 "nats": {**nats, "version": 2}}
    digest = hashlib.new("sha512_256", json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    signed = f"{_b64(json.dumps({'typ': 'JWT', 'alg': 'ed25519-nkey'}).encode())}." \
             f"{_b64(json.dumps(claims).encode())}"
    return f"{signed}.{_b64(issuer.sign(signed.encode()))}"


UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
             "wildcards": True, "conn": -1, "leaf": -1}
JETSTREAM = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


def _creds(account: nkeys.KeyPair) -> str:
    """A .creds file of a new user of `account`."""
    user = _keypair(nkeys.PREFIX_BYTE_USER)
    token = _jwt(account, user.public_key.decode(),
                 {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1})
    return (f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n"
            "------END USER NKEY SEED------\n")


def operator_setup() -> tuple[str, str, str]:
    """(server config, the .creds of a user it accepts, the .creds of one it does not: a
    user of an account the operator never signed)."""
    operator = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    system, account = _keypair(nkeys.PREFIX_BYTE_ACCOUNT), _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    stranger = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    op_pub = operator.public_key.decode()
    sys_pub, acc_pub = system.public_key.decode(), account.public_key.decode()
    preload = {
        sys_pub: _jwt(operator, sys_pub, {"type": "account", "limits": UNLIMITED}),
        acc_pub: _jwt(operator, acc_pub, {"type": "account",
                                          "limits": {**UNLIMITED, **JETSTREAM}}),
    }
    config = "\n".join([
        f'operator: "{_jwt(operator, op_pub, {"type": "operator"})}"',
        f"system_account: {sys_pub}",
        "resolver: MEMORY",
        "resolver_preload: {",
        *(f'  {pub}: "{token}"' for pub, token in preload.items()),
        "}",
    ])
    return config, _creds(account), _creds(stranger)


# --- one server per kind of auth ------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """A kind of auth: the server's configuration, and the Secret's keys that pass it, that
    it refuses."""

    name: str
    config: str
    good: dict[str, str]
    wrong: dict[str, str]


def _kinds() -> list[Kind]:
    user_seed = _keypair(nkeys.PREFIX_BYTE_USER)
    other_seed = _keypair(nkeys.PREFIX_BYTE_USER)
    jwt_config, good_creds, stranger_creds = operator_setup()
    return [
        Kind("user", f'authorization {{ user: kai, password: "{PASSWORD}" }}',
             {"user": "kai", "password": PASSWORD + "\n"},
             {"user": "kai", "password": "not-" + PASSWORD}),
        Kind("token", f'authorization {{ token: "{TOKEN}" }}',
             {"token": TOKEN + "\n"}, {"token": "not-" + TOKEN}),
        Kind("nkey",
             f'authorization {{ users: [ {{ nkey: {user_seed.public_key.decode()} }} ] }}',
             {"nkey": user_seed.seed.decode() + "\n"}, {"nkey": other_seed.seed.decode()}),
        Kind("creds", jwt_config, {"creds": good_creds}, {"creds": stranger_creds}),
    ]


KINDS = {kind.name: kind for kind in _kinds()}


def secret_dir(root: Path, keys: dict[str, str]) -> Path:
    """A folder laid out as the kubelet mounts a Secret: each key a symlink into `..data`,
    itself a link to a timestamped folder."""
    stamp = root / "..2024_01_01_00_00_00.000000001"
    stamp.mkdir(parents=True)
    for key, value in keys.items():
        (stamp / key).write_text(value)
        (root / key).symlink_to(f"..data/{key}")
    (root / "..data").symlink_to(stamp.name)
    return root


@pytest.fixture(params=sorted(KINDS))
def kind_server(request: pytest.FixtureRequest,
                tmp_path: Path) -> Iterator[tuple[Kind, NatsServer]]:
    kind = KINDS[request.param]
    with NatsServer(store_dir=tmp_path / "nats", extra_config=kind.config) as server:
        yield kind, server


async def _jetstream_roundtrip(url: str, auth_dir: str = "", ca_file: str = "") -> int:
    nc = await connect(url, "kai-test", auth_dir=auth_dir, ca_file=ca_file)
    try:
        js = nc.jetstream()
        await js.add_stream(name="AUTH", subjects=["auth.>"])
        return (await js.publish("auth.x", b"hi")).seq
    finally:
        await nc.close()


def _refusal(url: str, auth_dir: str = "", ca_file: str = "") -> str:
    with pytest.raises(natsauth.NatsSetupError) as caught:
        asyncio.run(asyncio.wait_for(_jetstream_roundtrip(url, auth_dir, ca_file), 30))
    return str(caught.value)


def test_the_right_secret_connects_and_uses_jetstream(kind_server: tuple[Kind, NatsServer],
                                                     tmp_path: Path) -> None:
    kind, server = kind_server
    auth = secret_dir(tmp_path / "auth", kind.good)
    assert asyncio.run(asyncio.wait_for(_jetstream_roundtrip(server.url, str(auth)), 30)) == 1


def test_a_wrong_secret_is_refused_with_one_line(kind_server: tuple[Kind, NatsServer],
                                                 tmp_path: Path) -> None:
    kind, server = kind_server
    auth = secret_dir(tmp_path / "auth", kind.wrong)
    message = _refusal(server.url, str(auth))
    label = natsauth.LABELS[kind.name]
    assert message.startswith(f"NATS at {server.url} refused the {label} in {auth} ("), message
    assert "\n" not in message
    for value in kind.wrong.values():
        assert value not in message  # the secret itself is never repeated


def test_no_secret_is_refused_and_says_what_to_set(kind_server: tuple[Kind, NatsServer]) -> None:
    _, server = kind_server
    message = _refusal(server.url)
    assert message.startswith(f"NATS at {server.url} requires credentials ("), message
    assert "KAI_NATS_AUTH_DIR is not set: name a Secret with them in kai.yaml's nats.auth" in (
        message)


def test_a_rotated_password_is_read_again_on_reconnect(tmp_path: Path) -> None:
    """The Secret changes under a running process (the kubelet swaps `..data`), the server
    restarts with the new password: the process reconnects without a restart of its own."""
    config = 'authorization {{ user: kai, password: "{}" }}'
    auth = secret_dir(tmp_path / "auth", {"user": "kai", "password": "first-pw"})
    with NatsServer(store_dir=tmp_path / "nats", extra_config=config.format("first-pw")) as server:
        async def scenario() -> None:
            back = asyncio.Event()

            async def reconnected() -> None:
                back.set()

            from runner.transport import ConnectionEvents

            nc = await connect(server.url, "kai-test", ConnectionEvents(None, reconnected),
                               auth_dir=str(auth))
            try:
                stamp = auth / "..2024_01_02_00_00_00.000000001"
                stamp.mkdir()
                (stamp / "user").write_text("kai")
                (stamp / "password").write_text("second-pw")
                (auth / "..data_tmp").symlink_to(stamp.name)
                os.replace(auth / "..data_tmp", auth / "..data")
                server.extra_config = config.format("second-pw")
                await asyncio.to_thread(server.restart)
                await asyncio.wait_for(back.wait(), 30)
                await nc.flush(timeout=5)
            finally:
                await nc.close()

        asyncio.run(asyncio.wait_for(scenario(), 60))


# --- TLS with a private CA ---------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
             "-subj", f"/CN={name}", cwd=folder)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[NatsServer, Path, Path]]:
    """A nats-server that requires TLS, its certificate signed by a CA of the test's own;
    yields it, that CA's file and another CA's."""
    certs = tmp_path / "certs"
    _ca(certs, "ca")
    _ca(certs, "other-ca")
    (certs / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=certs)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext",
             cwd=certs)
    config = (f'tls {{ cert_file: "{certs / "server.crt"}", key_file: "{certs / "server.key"}" }}'
              f'\nauthorization {{ token: "{TOKEN}" }}')
    with NatsServer(store_dir=tmp_path / "nats", extra_config=config) as server:
        yield server, certs / "ca.crt", certs / "other-ca.crt"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the certificates")
def test_a_private_ca_is_trusted_and_only_it(tls_server: tuple[NatsServer, Path, Path],
                                            tmp_path: Path) -> None:
    server, ca, other = tls_server
    url = f"tls://127.0.0.1:{server.port}"
    auth = str(secret_dir(tmp_path / "auth", {"token": TOKEN}))
    assert asyncio.run(asyncio.wait_for(_jetstream_roundtrip(url, auth, str(ca)), 30)) == 1
    message = _refusal(url, auth, str(other))
    assert message.startswith(f"NATS at {url} presented a certificate the CAs in {other} do "
                              "not trust ("), message
    message = _refusal(url, auth)
    assert message.startswith(f"NATS at {url} presented a certificate the system's CAs do not "
                              "trust ("), message
    assert message.endswith("name a Secret with its CA in kai.yaml's nats.tls.caSecret")


# --- end to end ---------------------------------------------------------------------------------


def test_entrypoint_and_node_authenticate_with_user_and_password(tmp_path: Path) -> None:
    kind = KINDS["user"]
    auth = secret_dir(tmp_path / "auth", kind.good)
    with NatsServer(store_dir=tmp_path / "nats", extra_config=kind.config) as server:
        version = _version(tmp_path / "ok", server.url, project="auth",
                           nats_auth_dir=str(auth))
        try:
            wait_ready(version.entrypoint(), version.node("echo"))
            assert getattr(_call(version, text="through auth"), "text") == "through auth"  # noqa: B009
        finally:
            version.close()
        wrong = _version(tmp_path / "wrong", server.url, project="auth",
                         nats_auth_dir=str(secret_dir(tmp_path / "bad", kind.wrong)))
        try:
            node = wrong.node("echo")
            assert node.wait_exit(30) == natsauth.EXIT_ENV
            lines = [ln for ln in node.text().splitlines() if "cannot start" in ln]
            assert len(lines) == 1, node.text()
            assert lines[0].startswith("node echo: cannot start: NATS at ")
            assert "refused the user and password in" in lines[0]
        finally:
            wrong.close()


PROTO = """\
    syntax = "proto3";
    package authdev;
    message Request { string id = 1; }
    service Entrypoint { rpc Do (Request) returns (Request) {}; }
"""

ECHO = """\
    from public_input_pb2 import Request

    def handler(ctx, data):
        req = Request()
        data.Unpack(req)
        return req
"""


def test_kai_dev_takes_a_creds_file_to_every_process(tmp_path: Path) -> None:
    config, good, stranger = operator_setup()
    (tmp_path / "good.creds").write_text(good)
    (tmp_path / "stranger.creds").write_text(stranger)
    version = write_krt_version(tmp_path / "v", "authdev-v1", PROTO, {"echo": ECHO},
                                {"work": ("Do", ["echo"])})
    with NatsServer(store_dir=tmp_path / "nats", extra_config=config) as server:
        def dev(creds: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                kai("dev", str(version), "--port", str(free_port()), "--web-port",
                    str(free_port()), "--nats", server.url, "--nats-creds",
                    str(tmp_path / creds), "--call", "Do", '{"id": "x"}'),
                capture_output=True, text=True, timeout=120, check=False)

        done = dev("good.creds")
        assert done.returncode == 0, done.stderr
        assert '"x"' in done.stdout
        refused = dev("stranger.creds")
        assert refused.returncode != 0
        assert "cannot start: NATS at" in refused.stderr, refused.stderr
        assert "refused the .creds file in" in refused.stderr, refused.stderr
