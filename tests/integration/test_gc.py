"""`kai gc` against a real nats-server.

The streams are made with the runner's own transport code (NatsTransport's ensure_*, what a
version's processes do as they start), for a GitOps repo whose greeter-v1 is stopped after
it ran, greeter-v2 is published and old-v0 is no longer in kai.yaml at all. Beside them:
the project's data stream with a db document, the streams of project demo-2, a stream
OTHER, and streams named almost, or exactly, like ours that no runner made.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js import api

from renderer.cli import COMMANDS
from runner import contract
from runner.natsserver import NatsServer, find_binary, free_port
from runner.transport.nats import NatsTransport
from tests.integration.gitops_helpers import kai, kai_process, make_version
from tests.integration.runner_procs import consumer_waiting

pytestmark = pytest.mark.integration

PROJECT = "demo"
CHAIN = ("etl", "inference", "output")
WORKFLOW = contract.Workflow("py-greeting", "PyGreet", CHAIN)
LIMIT = 30.0  # seconds any one step of these tests may take
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "KAI Test", "GIT_AUTHOR_EMAIL": "kai-test@example.invalid",
                "GIT_COMMITTER_NAME": "KAI Test",
                "GIT_COMMITTER_EMAIL": "kai-test@example.invalid"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """greeter-v1 started and stopped again, greeter-v2 published."""
    base = tmp_path_factory.mktemp("gc")
    root = base / "gitops"
    with pytest.MonkeyPatch.context() as mp:  # tests/conftest.py's identity is per test
        for key, value in GIT_IDENTITY.items():
            mp.setenv(key, os.environ.get(key, value))
        kai("init", str(root), "--project", PROJECT, "--namespace", "kai-demo")
        for name in ("greeter-v1", "greeter-v2"):
            kai("add", str(make_version(base / "src" / name, name)), "--repo", str(root))
            kai("start", name, "--repo", str(root))
        kai("publish", "greeter-v2", "--repo", str(root))
        kai("stop", "greeter-v1", "--repo", str(root))
    return root


def _env(url: str, project: str, version: str, auth_dir: str = "") -> contract.RunnerEnv:
    return contract.RunnerEnv(project=project, version=version, version_dir="/nonexistent",
                              proto="public_input.proto", workflows=(WORKFLOW,), nats_url=url,
                              nats_auth_dir=auth_dir)


async def _start_version(url: str, project: str, version: str, auth_dir: str = "") -> None:
    """What a version's entrypoint and nodes create on the server as they start (with the
    credentials in `auth_dir`, laid out as the runner's Secret mount)."""
    transport = NatsTransport(_env(url, project, version, auth_dir))
    async with asyncio.timeout(LIMIT):
        await transport.connect(f"test {version}")
        try:
            await transport.ensure_data_stream()
            await transport.ensure_work_stream(WORKFLOW.name)
            for step, node in enumerate(CHAIN):
                await transport.ensure_consumer(WORKFLOW.name, step, node)
            if version == "greeter-v1":  # a request waiting for etl, and a db document
                await transport.publish_message(
                    contract.step_subject(project, version, WORKFLOW.name, 0), b"hello",
                    {contract.HDR_MSG_ID: "call-1:0"}, 5.0)
                await transport.save_record(
                    contract.data_subject(project, "db", version, "people"), b"{}")
        finally:
            await transport.close()


async def _populate(url: str) -> None:
    for project, version in ((PROJECT, "greeter-v1"), (PROJECT, "greeter-v2"),
                             (PROJECT, "old-v0"), ("demo-2", "greeter-v1")):
        await _start_version(url, project, version)
    nc = await nats.connect(url, connect_timeout=5)
    try:
        jsm = nc.jsm(timeout=5)
        for name, subjects in (("OTHER", ["other.>"]),
                               ("KAI_demo_Greeter-v1_py-greeting", ["upper.>"]),
                               ("KAI_demo_greeter-v1", ["short.>"]),
                               (contract.stream_name(PROJECT, "old-v9", "wf"), ["orders.>"])):
            await jsm.add_stream(api.StreamConfig(name=name, subjects=subjects,
                                                  storage=api.StorageType.MEMORY))
    finally:
        await nc.close()


async def _streams(url: str) -> dict[str, tuple[int, int]]:
    nc = await nats.connect(url, connect_timeout=5)
    try:
        infos = await nc.jsm(timeout=5).streams_info()
        return {i.config.name or "": (i.state.messages, i.state.bytes) for i in infos}
    finally:
        await nc.close()


def streams(url: str) -> dict[str, tuple[int, int]]:
    """Every stream on the server: (messages, bytes)."""
    return asyncio.run(asyncio.wait_for(_streams(url), LIMIT))


@pytest.fixture
def server(nats_server: NatsServer) -> Iterator[str]:
    asyncio.run(asyncio.wait_for(_populate(nats_server.url), LIMIT))
    yield nats_server.url


def gc(repo: Path, *args: str) -> tuple[int, str, str]:
    """`kai gc --repo REPO ARGS` as its own process: (exit code, stdout, stderr)."""
    proc = kai_process("gc", "--repo", str(repo), *args)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"kai gc did not finish within 60s:\n{out}\n{err}") from None
    return proc.returncode, out, err


STOPPED_STREAMS = {
    "KAI_demo_greeter-v1_py-greeting", "OBJ_KAI_demo_greeter-v1_CLAIMS",
    "KAI_demo_old-v0_py-greeting", "OBJ_KAI_demo_old-v0_CLAIMS",
}
KEPT_STREAMS = {
    "KAI_demo_DATA", "KAI_demo_greeter-v2_py-greeting", "OBJ_KAI_demo_greeter-v2_CLAIMS",
    "KAI_demo-2_DATA", "KAI_demo-2_greeter-v1_py-greeting", "OBJ_KAI_demo-2_greeter-v1_CLAIMS",
    "OTHER", "KAI_demo_Greeter-v1_py-greeting", "KAI_demo_greeter-v1", "KAI_demo_old-v9_wf",
}
ODD_NOTE = ("kept: KAI_demo_old-v9_wf: named like a stream of this project, but it captures "
            "orders.>, not what the runner's would")


def expected_listing(sizes: dict[str, tuple[int, int]]) -> list[str]:
    work1, work0 = "KAI_demo_greeter-v1_py-greeting", "KAI_demo_old-v0_py-greeting"
    assert sizes[work1][0] == 1
    lines = [f"greeter-v1  work stream   {work1}: 1 message, {sizes[work1][1]} bytes"]
    lines += [f"greeter-v1  consumer      {work1}/s{i}-{node}: "
              f"{1 if i == 0 else 0} message{'' if i == 0 else 's'} pending"
              for i, node in enumerate(CHAIN)]
    lines.append("greeter-v1  claim bucket  KAI_demo_greeter-v1_CLAIMS "
                 "(stream OBJ_KAI_demo_greeter-v1_CLAIMS): 0 messages, 0 bytes")
    lines.append(f"old-v0      work stream   {work0}: 0 messages, 0 bytes")
    lines += [f"old-v0      consumer      {work0}/s{i}-{node}: 0 messages pending"
              for i, node in enumerate(CHAIN)]
    lines.append("old-v0      claim bucket  KAI_demo_old-v0_CLAIMS "
                 "(stream OBJ_KAI_demo_old-v0_CLAIMS): 0 messages, 0 bytes")
    return lines


def test_lists_then_deletes_only_the_stopped_versions_streams(repo: Path, server: str) -> None:
    before = streams(server)
    assert set(before) == STOPPED_STREAMS | KEPT_STREAMS
    listing = expected_listing(before)
    what = "4 streams (6 consumers) of versions greeter-v1, old-v0"

    code, out, err = gc(repo, "--nats", server, "--dry-run")
    assert (code, err) == (0, "")
    assert out.splitlines() == [*listing, ODD_NOTE,
                                f"dry run: would delete {what}; nothing deleted"]
    assert gc(repo, "--nats", server, "--dry-run") == (code, out, err)  # deterministic

    code, out, err = gc(repo, "--nats", server)
    assert (code, err) == (0, "")
    assert out.splitlines() == [*listing, ODD_NOTE, f"nothing deleted: pass --yes to delete {what}"]
    assert streams(server) == before

    code, out, err = gc(repo, "--nats", server, "--yes")
    assert (code, err) == (0, "")
    assert out.splitlines() == [*listing, ODD_NOTE, f"deleted {what}"]
    after = streams(server)
    assert after == {name: n for name, n in before.items() if name in KEPT_STREAMS}
    assert after["KAI_demo_DATA"][0] == 1  # the db document is still there

    code, out, err = gc(repo, "--nats", server, "--yes")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        ODD_NOTE, f"nothing to collect: project demo has no streams of stopped or removed "
        f"versions on {server}"]
    assert streams(server) == after


async def _hold_pull(url: str, stream: str, consumer: str, release: asyncio.Event) -> None:
    """Ask `consumer` for a message, as a node replica does, until `release` is set."""
    nc = await nats.connect(url, connect_timeout=5)
    try:
        inbox = nc.new_inbox()
        await nc.subscribe(inbox)
        request = {"batch": 1, "expires": int(LIMIT * 4 * 1e9)}
        await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
                         json.dumps(request).encode(), reply=inbox)
        await nc.flush(timeout=5)
        async with asyncio.timeout(LIMIT * 4):
            await release.wait()
    finally:
        await nc.close()




def test_a_stopped_version_still_consumed_is_kept(repo: Path, server: str) -> None:
    stream = "KAI_demo_greeter-v1_py-greeting"

    async def scenario() -> tuple[tuple[int, str, str], set[str], tuple[int, str, str]]:
        release = asyncio.Event()
        holder = asyncio.create_task(_hold_pull(server, stream, "s1-inference", release))
        try:
            end = time.monotonic() + LIMIT
            while await consumer_waiting(server, stream, "s1-inference") == 0:
                assert time.monotonic() < end, "the pull request never showed"
                assert not holder.done(), holder
                await asyncio.sleep(0.05)
            busy = await asyncio.to_thread(gc, repo, "--nats", server, "--yes")
            between = set(await _streams(server))
        finally:
            release.set()
            await holder
        end = time.monotonic() + LIMIT
        while await consumer_waiting(server, stream, "s1-inference") != 0:
            assert time.monotonic() < end, "the closed connection's pull request stayed"
            await asyncio.sleep(0.05)
        idle = await asyncio.to_thread(gc, repo, "--nats", server, "--yes")
        return busy, between, idle

    (code, out, err), between, (code2, out2, err2) = asyncio.run(
        asyncio.wait_for(scenario(), LIMIT * 6))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert not any(line.startswith("greeter-v1 ") for line in lines)
    assert (f"kept: version greeter-v1 is not started in kai.yaml, but its streams are still "
            f"consumed ({stream}/s1-inference asking for messages): a process of it still "
            "runs; run kai gc again once its pods are gone") in lines
    assert lines[-1] == "deleted 2 streams (3 consumers) of version old-v0"
    assert STOPPED_STREAMS - between == {"KAI_demo_old-v0_py-greeting",
                                                      "OBJ_KAI_demo_old-v0_CLAIMS"}
    # once nothing consumes it any more, the next run takes it
    assert (code2, err2) == (0, "")
    assert out2.splitlines()[-1] == "deleted 2 streams (3 consumers) of version greeter-v1"
    assert set(streams(server)) == KEPT_STREAMS


# --- failures: one line, exit 1, no traceback ---------------------------------------------


def _one_error_line(code: int, out: str, err: str) -> str:
    assert code == 1 and out == "", (code, out, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err.strip()


def test_connection_refused(repo: Path) -> None:
    port = free_port()
    line = _one_error_line(*gc(repo, "--nats", f"nats://u:secret@127.0.0.1:{port}", "--yes"))
    assert line == (f"error: cannot connect to NATS at nats://***@127.0.0.1:{port}: "
                    "connection refused")


def test_connection_refused_at_kai_yaml_s_url_says_how_to_reach_another(
        repo: Path, tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    port = free_port()
    copy.mkdir()
    text = (repo / "kai.yaml").read_text()
    assert "nats://nats.kai-system.svc:4222" in text
    (copy / "kai.yaml").write_text(text.replace("nats://nats.kai-system.svc:4222",
                                                f"nats://127.0.0.1:{port}"))
    line = _one_error_line(*gc(copy, "--dry-run"))
    assert line == (f"error: cannot connect to NATS at nats://127.0.0.1:{port}: connection "
                    "refused (kai.yaml nats.url; from outside the cluster pass --nats URL)")


def _silent_listener() -> tuple[socket.socket, str]:
    """A loopback port that takes connections and never says a word: no NATS INFO."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(LIMIT)
    return listener, f"nats://127.0.0.1:{listener.getsockname()[1]}"


def test_a_server_that_never_answers(repo: Path) -> None:
    listener, url = _silent_listener()
    with listener:
        line = _one_error_line(*gc(repo, "--nats", url, "--timeout", "1"))
    assert line == f"error: cannot connect to NATS at {url}: no answer in time"


def test_ctrl_c_is_one_line(repo: Path) -> None:
    listener, url = _silent_listener()
    with listener:
        proc = kai_process("gc", "--repo", str(repo), "--nats", url, "--timeout", "600")
        try:
            conn, _ = listener.accept()  # it is inside its connect now, waiting for INFO
            with conn:
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=LIMIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130 and out == ""
    assert err == "error: interrupted; run kai gc again to see what is left\n"


class _Plain:
    """A nats-server without JetStream, or one that requires a token."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([find_binary(), "-a", "127.0.0.1", "-p", str(self.port),
                                      *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def __enter__(self) -> str:
        end = time.monotonic() + LIMIT
        while time.monotonic() < end:
            assert self.proc.poll() is None, "nats-server exited"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return f"nats://127.0.0.1:{self.port}"
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nats-server did not come up")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def test_a_deletion_the_server_refuses_fails_with_one_line_per_stream(
        repo: Path, tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text(f"""
jetstream {{ store_dir: "{tmp_path / 'js'}" }}
authorization {{ users = [
  {{ user: admin, password: adminpw }}
  {{ user: keeper, password: keeperpw,
     permissions: {{ publish: {{ deny: ["$JS.API.STREAM.DELETE.>"] }} }} }}
] }}
""")
    with _Plain("-c", str(conf)) as url:
        admin, keeper = (url.replace("//", f"//{who}@") for who in
                         ("admin:adminpw", "keeper:keeperpw"))
        asyncio.run(asyncio.wait_for(_populate(admin), LIMIT))
        before = streams(admin)
        code, out, err = gc(repo, "--nats", keeper, "--yes", "--timeout", "1")
        assert code == 1 and "Traceback" not in err
        assert out.splitlines() == [*expected_listing(before), ODD_NOTE]
        assert err.splitlines() == [
            f"error: NATS did not answer deleting {name} within 1s (the server said: nats: "
            f"permissions violation for publish to \"$js.api.stream.delete.{name.lower()}\")"
            for name in ("KAI_demo_greeter-v1_py-greeting", "OBJ_KAI_demo_greeter-v1_CLAIMS",
                         "KAI_demo_old-v0_py-greeting", "OBJ_KAI_demo_old-v0_CLAIMS")]
        assert streams(admin) == before
        code, out, err = gc(repo, "--nats", admin, "--yes")
        assert (code, err) == (0, "") and out.splitlines()[-1].startswith("deleted 4 streams")
        assert set(streams(admin)) == KEPT_STREAMS


def test_no_jetstream(repo: Path) -> None:
    with _Plain() as url:
        line = _one_error_line(*gc(repo, "--nats", url, "--dry-run"))
    assert line == ("error: JetStream does not answer on this NATS server (the stream list): "
                    "enable it, or connect as a user of the account the versions run in")


CREDS = """-----BEGIN NATS USER JWT-----
eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln
------END NATS USER JWT------

-----BEGIN USER NKEY SEED-----
SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU
------END USER NKEY SEED------
"""


def test_credentials_refused_or_needed(repo: Path, tmp_path: Path) -> None:
    creds = tmp_path / "user.creds"
    creds.write_text(CREDS)
    with _Plain("--auth", "s3cret") as url:
        needed = _one_error_line(*gc(repo, "--nats", url))
        refused = _one_error_line(*gc(repo, "--nats", url, "--nats-creds", str(creds)))
    assert needed == (f"error: cannot connect to NATS at {url}: the server requires "
                      "credentials; pass --nats-creds FILE")
    if importlib.util.find_spec("nkeys") is None:  # nats-py reads .creds files with it
        assert refused == ("error: --nats-creds needs the Python package nkeys "
                           "(pip install nkeys)")
    else:
        assert refused == (f"error: cannot connect to NATS at {url}: the server refused the "
                           "credentials of --nats-creds")


def test_a_creds_file_the_server_accepts_lists_and_deletes(repo: Path, tmp_path: Path) -> None:
    """Decentralized JWT auth, as on NGS or a Synadia server: the user's .creds file logs in
    and gc does its work through it."""
    from tests.integration.test_nats_auth import operator_setup, secret_dir

    config, good, _ = operator_setup()
    creds = tmp_path / "user.creds"
    creds.write_text(good)
    mount = secret_dir(tmp_path / "mount", {"creds": good})
    stopped = "KAI_demo_greeter-v1_py-greeting"
    with NatsServer(store_dir=tmp_path / "nats", extra_config=config) as jwt_server:
        for version in ("greeter-v1", "greeter-v2"):
            asyncio.run(asyncio.wait_for(
                _start_version(jwt_server.url, PROJECT, version, str(mount)), LIMIT))
        code, out, err = gc(repo, "--nats", jwt_server.url, "--nats-creds", str(creds),
                            "--yes")
        assert (code, err) == (0, ""), (out, err)
        assert out.splitlines()[-1] == ("deleted 2 streams (3 consumers) of version "
                                        "greeter-v1"), out
        assert any(stopped in line for line in out.splitlines()), out
        code, out, err = gc(repo, "--nats", jwt_server.url, "--nats-creds", str(creds),
                            "--dry-run")
        assert (code, err) == (0, ""), (out, err)
        assert out.splitlines()[-1].startswith("nothing to collect: project demo"), out


def test_usage_errors(repo: Path, tmp_path: Path) -> None:
    code, _, err = gc(repo, "--dry-run", "--yes")
    assert code == 2 and "--dry-run and --yes contradict each other" in err
    code, _, err = gc(repo, "--nats-creds", str(tmp_path / "missing.creds"))
    assert code == 2 and "does not exist" in err


def test_help_names_every_option_and_exit_code() -> None:
    assert "gc" in COMMANDS
    text = kai("gc", "--help").output
    for option in ("--repo", "--nats URL", "--nats-creds FILE", "--dry-run", "--yes",
                   "--timeout SECONDS"):
        assert option in text
    codes = text[text.index("Exit codes:"):]
    assert all(f"  {code}  " in codes for code in (0, 1, 2, 130))
    assert "gc" in kai("--help").output
