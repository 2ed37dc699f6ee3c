"""The auth folder's rules (runner.transport.natsauth): one kind of credentials, each checked
before any connection; and the NATS URL rules of runner.contract (credentials, ports)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import nkeys
import pytest

from runner import contract
from runner.transport import natsauth
from runner.transport.natsauth import NatsSetupError, auth_options, connect_options


def _seed() -> str:
    return str(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode())


def _folder(root: Path, **keys: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for key, value in keys.items():
        (root / key).write_text(value)
    return root


def _creds(seed: str) -> str:
    return ("-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QifQ.e30.c2ln\n"
            "------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n"
            f"{seed}\n------END USER NKEY SEED------\n")


def _error(folder: Path) -> str:
    with pytest.raises(NatsSetupError) as caught:
        auth_options(folder)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_each_kind_becomes_its_connect_options(tmp_path: Path) -> None:
    creds = _folder(tmp_path / "c", creds=_creds(_seed()))
    assert auth_options(creds) == {"user_credentials": str(creds / "creds")}
    nkey = _folder(tmp_path / "n", nkey=_seed() + "\n")
    assert auth_options(nkey) == {"nkeys_seed": str(nkey / "nkey")}
    token = auth_options(_folder(tmp_path / "t", token="tok\n"))
    assert token["token"]() == "tok"  # read on every (re)connect, line end dropped
    both = auth_options(_folder(tmp_path / "u", user="kai\n", password="pw\r\n"))
    assert (both["user"](), both["password"]()) == ("kai", "pw")
    assert natsauth.auth_kind(str(tmp_path / "u")) == "user"
    assert natsauth.auth_kind("") == "" and connect_options("", "") == {}


def test_more_than_one_kind_is_refused(tmp_path: Path) -> None:
    message = _error(_folder(tmp_path / "a", token="t", user="u", password="p"))
    assert message == (f"{tmp_path / 'a'} holds more than one kind of NATS credentials "
                       "(token, user and password); keep one: creds, nkey, token, or user "
                       "and password")
    assert "(creds, nkey)" in _error(_folder(tmp_path / "b", creds=_creds(_seed()),
                                             nkey=_seed()))


def test_none_readable_is_refused_naming_what_is_there(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "a", cred="x", **{"..data": "kubelet's"})
    assert _error(folder) == (f"{folder} holds no NATS credentials: expected a file creds, "
                              "nkey, token, or user and password (found: cred)")
    assert _error(_folder(tmp_path / "empty")).endswith("(found: nothing)")
    assert _error(tmp_path / "absent") == f"KAI_NATS_AUTH_DIR={tmp_path / 'absent'}: no such folder"


def test_half_a_user_and_empty_values_are_refused(tmp_path: Path) -> None:
    assert _error(_folder(tmp_path / "a", user="kai")) == (
        f"{tmp_path / 'a'} has a user but no password")
    assert _error(_folder(tmp_path / "b", password="pw")) == (
        f"{tmp_path / 'b'} has a password but no user")
    assert _error(_folder(tmp_path / "c", token="\n")) == f"{tmp_path / 'c' / 'token'} is empty"


def test_a_creds_file_and_a_seed_are_checked(tmp_path: Path) -> None:
    not_creds = _folder(tmp_path / "a", creds="just a token\n")
    assert "is not a NATS .creds file (it needs the lines -----BEGIN NATS USER JWT-----" in (
        _error(not_creds))
    bad_seed = _folder(tmp_path / "b", creds=_creds("SUNOTASEED"))
    assert _error(bad_seed) == f"{bad_seed / 'creds'} holds no valid nkey seed"
    account = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT).decode()
    assert _error(_folder(tmp_path / "c", nkey=account)).endswith(
        "holds no user nkey seed (one starts with SU)")
    binary = tmp_path / "d"
    binary.mkdir()
    (binary / "token").write_bytes(b"\xff\xfe")
    assert _error(binary) == f"{binary / 'token'} is not UTF-8 text"


def test_a_value_that_cannot_be_read_again_keeps_the_last_one(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "a", token="first")
    value = auth_options(folder)["token"]
    (folder / "token").write_text("second")
    assert value() == "second"
    (folder / "token").unlink()
    assert value() == "second"


def test_the_ca_file_becomes_a_tls_context(tmp_path: Path) -> None:
    with pytest.raises(NatsSetupError, match=r"KAI_NATS_CA_FILE=.*: no such file \(the Secret "
                                             r"of nats.tls.caSecret needs the key ca.crt\)"):
        connect_options("", str(tmp_path / "ca.crt"))
    (tmp_path / "bad.crt").write_text("not a certificate\n")
    with pytest.raises(NatsSetupError, match=r"bad\.crt: not a PEM CA certificate"):
        connect_options("", str(tmp_path / "bad.crt"))
    default = ssl.get_default_verify_paths().cafile
    if default and Path(default).is_file():
        assert isinstance(connect_options("", default)["tls"], ssl.SSLContext)


def test_refusals_are_told_apart_from_outages() -> None:
    assert natsauth.refused(Exception("nats: 'Authorization Violation'"))
    assert natsauth.refused(Exception("nats: 'User Authentication Expired'"))
    assert not natsauth.refused(ConnectionRefusedError("Connect call failed"))
    assert not natsauth.refused(Exception("nats: 'Authentication Timeout'"))  # a slow client


# --- the URL rules, in runner.contract -----------------------------------------------------


@pytest.mark.parametrize("url", [
    "nats://kai:hunter2@nats.svc:4222", "nats://s3cr3t-token@nats.svc", "tls://u:p@n:4222",
    "wss://tok@nats.example.com", "nats://a:4222,nats://u:p@b:4222", "u:p@host:4222",
])
def test_a_url_with_credentials_is_found(url: str) -> None:
    assert contract.nats_url_has_credentials(url)


@pytest.mark.parametrize("url", [
    "nats://nats.svc:4222", "tls://nats.svc", "wss://nats.example.com/path?x=a@b",
    "nats://a:4222,nats://b:4223", "host:4222", "",
])
def test_a_url_without_credentials_passes(url: str) -> None:
    assert not contract.nats_url_has_credentials(url)


@pytest.mark.parametrize(("server", "port"), [
    ("nats://n", 4222), ("tls://n", 4222), ("wss://n", 443), ("ws://n", 80),
    ("WSS://n", 443), ("wss://n:8443", 8443), ("ws://n:8080/ws", 8080), ("n", 4222),
    ("n:5222", 5222),
])
def test_a_server_without_a_port_gets_its_schemes(server: str, port: int) -> None:
    assert contract.nats_address(server) == ("n", port)


def test_the_contract_carries_the_auth_folder_and_ca_file_only_when_set() -> None:
    base = contract.RunnerEnv(project="p", version="v1", version_dir="/v", proto="a.proto",
                              workflows=(contract.Workflow("w", "Do", ("n",)),))
    assert contract.ENV_NATS_AUTH_DIR not in base.to_environ()
    assert contract.ENV_NATS_CA_FILE not in base.to_environ()
    env = contract.RunnerEnv(**{**base.__dict__, "nats_auth_dir": contract.NATS_AUTH_MOUNT,
                                "nats_ca_file": "/ca/ca.crt"})
    environ = env.to_environ()
    assert environ[contract.ENV_NATS_AUTH_DIR] == "/var/run/kai/nats-auth"
    assert environ[contract.ENV_NATS_CA_FILE] == "/ca/ca.crt"
    assert contract.RunnerEnv.from_environ(environ) == env
