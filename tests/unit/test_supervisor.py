"""runner.supervisor with stand-in runner processes (real child processes, no runner core)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner.supervisor import (
    BACKOFF_CAP,
    BACKOFF_FIRST,
    BACKOFF_RESET,
    HTTP,
    Child,
    Probe,
    ProcessSpec,
    StartupError,
    Supervisor,
    exit_reason,
    next_backoff,
)

# Plays `python -m runner ROLE`: behaves as FAKE_MODE says.
FAKE = """\
import os, signal, sys, threading, time
mode = os.environ["FAKE_MODE"]
folder = os.environ.get("FAKE_DIR", "")
print("loading " + os.environ["KAI_NODE"] + " port " + os.environ.get("KAI_WEB_PORT", "-"))
if mode == "fail":
    print("RuntimeError: init failed: no model", file=sys.stderr)
    sys.exit(3)
if mode == "silent":
    time.sleep(30)
if mode == "write":  # reports who it runs as and whether it can write FAKE_WRITE
    try:
        with open(os.environ["FAKE_WRITE"], "a") as f:
            f.write("x")
        outcome = "ok"
    except OSError as exc:
        outcome = __import__("errno").errorcode[exc.errno]
    print("uid " + str(os.getuid()) + " write " + outcome, flush=True)
if mode == "http":  # /readyz and /healthz fail while FAKE_DIR/readyz or FAKE_DIR/healthz exist
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Probes(BaseHTTPRequestHandler):
        def do_GET(self):
            failing = os.path.exists(os.path.join(folder, self.path.strip("/")))
            self.send_response(503 if failing else 200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", int(os.environ["KAI_WEB_PORT"])), Probes)
    threading.Thread(target=server.serve_forever, daemon=True).start()

def drain(*_):
    if folder:
        with open(os.path.join(folder, "stopped.log"), "a") as f:
            f.write(os.environ["KAI_NODE"] + "\\n")
    time.sleep(float(os.environ.get("FAKE_DRAIN", "0")))
    print("drained")
    sys.exit(0)

if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, drain)
print("2024-01-01 INFO runner.node node " + os.environ["KAI_NODE"] + " ready (web :1)")
while True:
    time.sleep(1)
"""


@pytest.fixture
def fake_python(tmp_path: Path) -> str:
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\n" + FAKE)
    script.chmod(0o755)
    return str(script)


def spec(name: str, mode: str, replicas: int = 1, role: str = "node",
         env: dict[str, str] | None = None, **kw: object) -> ProcessSpec:
    return ProcessSpec(name, role, {"KAI_NODE": name, "FAKE_MODE": mode, **(env or {})},
                       replicas, free_ports=("KAI_WEB_PORT",), **kw)  # type: ignore[arg-type]


async def until(check: Callable[[], bool], what: str, limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(0.02)


def alive(pid: int) -> bool:
    """Running, and not a zombie nobody reaped yet."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def test_starts_replicas_prefixes_lines_and_stops_cleanly(fake_python: str) -> None:
    lines: list[str] = []

    async def scenario() -> list[int]:
        sup = Supervisor([spec("v1-etl", "ok", replicas=2), spec("v1-out", "ok")],
                         python=fake_python, echo=lines.append, color=False, ready_timeout=20)
        async with sup:
            assert len(sup.live()) == 3 and all(c.ready for c in sup.children)
            ports = {c.env["KAI_WEB_PORT"] for c in sup.children}
            assert len(ports) == 3  # a free web port per replica
            pids = [c.pid for c in sup.children]
        assert [c.returncode for c in sup.children] == [0, 0, 0]
        return pids

    pids = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert not any(alive(p) for p in pids)
    assert any(line.startswith("v1-etl#0 | loading v1-etl") for line in lines)
    assert any(line.startswith("v1-etl#1 | loading v1-etl") for line in lines)
    assert any(line.startswith("v1-out   | drained") for line in lines)


def test_a_child_that_exits_before_ready_stops_everything(fake_python: str) -> None:
    async def scenario() -> Supervisor:
        sup = Supervisor([spec("v1-good", "ok"), spec("v1-bad", "fail")],
                         python=fake_python, echo=lambda _: None, ready_timeout=20)
        with pytest.raises(StartupError) as failed:
            await sup.start()
        assert failed.value.label == "v1-bad"
        assert failed.value.returncode == 3
        assert "RuntimeError: init failed: no model" in failed.value.output
        return sup

    sup = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert sup.live() == []


def test_a_child_the_system_refuses_to_start_is_one_startup_error(fake_python: str) -> None:
    """An environment entry over Linux's limit (E2BIG): a StartupError, not a traceback."""
    async def scenario() -> Supervisor:
        big = {"BIG": "x" * (32 * 4096)}
        sup = Supervisor([spec("v1-good", "ok"), spec("v1-big", "ok", env=big)],
                         python=fake_python, echo=lambda _: None, ready_timeout=20)
        with pytest.raises(StartupError) as failed:
            await sup.start()
        assert (failed.value.label, failed.value.returncode) == ("v1-big", None)
        assert str(failed.value) == "v1-big cannot start: Argument list too long"
        return sup

    sup = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert sup.live() == []


def test_ready_timeout_and_sigkill_after_the_grace_period(fake_python: str) -> None:
    async def scenario() -> None:
        silent = Supervisor([spec("v1-silent", "silent")], python=fake_python,
                            echo=lambda _: None, ready_timeout=1, grace=0.5)
        with pytest.raises(StartupError, match="not ready within 1s"):
            await silent.start()
        assert silent.live() == []

        stubborn = Supervisor([spec("v1-stubborn", "stubborn")], python=fake_python,
                              echo=lambda _: None, ready_timeout=20, grace=0.5)
        await stubborn.start()
        await stubborn.stop()
        assert stubborn.children[0].returncode == -9

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_wait_exit_reports_a_child_that_dies_after_ready(fake_python: str) -> None:
    async def scenario() -> None:
        async with Supervisor([spec("v1-a", "ok"), spec("v1-b", "ok")], python=fake_python,
                              echo=lambda _: None, ready_timeout=20, restart=False) as sup:
            sup.children[1].signal(9)
            exited = await asyncio.wait_for(sup.wait_exit(), 10)
            assert (exited.label, exited.returncode) == ("v1-b", -9)
            assert [c.label for c in sup.live()] == ["v1-a"]

    asyncio.run(asyncio.wait_for(scenario(), 30))


ORPHAN_CHECK = """\
import asyncio, sys
from runner.supervisor import ProcessSpec, Supervisor

async def main():
    spec = ProcessSpec("v1-etl", "node", {"KAI_NODE": "v1-etl", "FAKE_MODE": "ok"}, 2)
    sup = Supervisor([spec], python=sys.argv[1], echo=lambda _: None, ready_timeout=20)
    await sup.start()
    print(" ".join(str(c.pid) for c in sup.children), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_children_do_not_outlive_a_killed_supervisor(fake_python: str) -> None:
    import subprocess
    import time

    proc = subprocess.Popen([sys.executable, "-c", ORPHAN_CHECK, fake_python],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        proc.kill()
        proc.wait(5)
        deadline = time.monotonic() + 5
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in pids)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_backoff_doubles_up_to_the_cap_and_resets_after_a_long_run() -> None:
    delays = [0.0]
    for _ in range(8):
        delays.append(next_backoff(delays[-1], ran=0.1))
    assert delays[1:] == [BACKOFF_FIRST * 2**i if BACKOFF_FIRST * 2**i < BACKOFF_CAP
                          else BACKOFF_CAP for i in range(8)]
    assert next_backoff(BACKOFF_CAP, ran=BACKOFF_RESET) == BACKOFF_FIRST
    assert exit_reason(-9) == "code -9 (killed)"
    assert exit_reason(3) == "code 3"


def test_a_killed_replica_is_restarted_with_backoff_while_the_other_keeps_serving(
    fake_python: str,
) -> None:
    lines: list[str] = []

    async def scenario() -> None:
        async with Supervisor([spec("v1-a", "ok", replicas=2)], python=fake_python,
                              echo=lines.append, color=False, ready_timeout=20) as sup:
            first, other = sup.children
            for restart, delay in ((1, "0.5"), (2, "1")):
                victim = sup.children[0]
                victim.signal(signal.SIGKILL)
                await until(lambda v=victim: sup.children[0] is not v, "the restart")  # type: ignore[misc]
                assert (f"v1-a#0 exited with code -9 (killed); restarting in {delay} s "
                        f"(restart {restart})") in lines
                await sup.wait_ready(20)
                assert sup.children[0].restarts == restart
                assert f"v1-a#0 is ready again (restart {restart})" in lines
            assert sup.children[1] is other and other.running, "the other replica restarted"
            assert not first.running and sup.all_ready()

    asyncio.run(asyncio.wait_for(scenario(), 40))


def test_a_restarted_replica_counts_as_ready_only_once_its_readiness_passes(
    fake_python: str, tmp_path: Path,
) -> None:
    lines: list[str] = []
    readyz = tmp_path / "readyz"
    probe = Probe(HTTP, "KAI_WEB_PORT", "/readyz", period=0.2, failure_threshold=2)
    node = spec("v1-a", "http", env={"FAKE_DIR": str(tmp_path)}, readiness=probe)

    async def scenario() -> None:
        readyz.write_text("")  # failing from the start
        sup = Supervisor([node], python=fake_python, echo=lines.append, color=False,
                         ready_timeout=20)
        starting = asyncio.ensure_future(sup.start())
        try:
            await until(lambda: any("ready (web :1)" in line for line in lines), "the ready line")
            await asyncio.sleep(0.5)
            assert not starting.done() and not sup.all_ready()
            readyz.unlink()
            await asyncio.wait_for(starting, 20)
            victim = sup.children[0]
            readyz.write_text("")
            await until(lambda: not victim.ready, "the readiness probe to fail")
            assert any(line.startswith("v1-a is not ready: readiness probe failed 2 times")
                       for line in lines)
            victim.signal(signal.SIGKILL)
            await until(lambda: sup.children[0] is not victim
                        and sup.children[0].line_seen.is_set(), "the restarted replica")
            await asyncio.sleep(0.5)
            assert not sup.children[0].ready and not sup.all_ready()
            readyz.unlink()
            await sup.wait_ready(20)
            assert "v1-a is ready again (restart 1)" in lines
        finally:
            await sup.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_failing_liveness_probe_restarts_the_process(fake_python: str, tmp_path: Path) -> None:
    lines: list[str] = []
    healthz = tmp_path / "healthz"
    probe = Probe(HTTP, "KAI_WEB_PORT", "/healthz", period=0.1, failure_threshold=3)
    node = spec("v1-a", "http", env={"FAKE_DIR": str(tmp_path)}, liveness=probe)

    async def scenario() -> None:
        async with Supervisor([node], python=fake_python, echo=lines.append, color=False,
                              ready_timeout=20) as sup:
            sick = sup.children[0]
            healthz.write_text("")
            await until(lambda: not sick.running, "the liveness restart")
            healthz.unlink()
            assert any(line.startswith("v1-a failed its liveness probe 3 times (GET /healthz "
                                       "answered 503)") for line in lines), lines
            await until(lambda: sup.children[0] is not sick, "the new run")
            assert "v1-a exited with code 0; restarting in 0.5 s (restart 1)" in lines
            await sup.wait_ready(20)

    asyncio.run(asyncio.wait_for(scenario(), 40))


def test_stop_is_ordered_entrypoint_first_and_kills_after_each_grace(
    fake_python: str, tmp_path: Path,
) -> None:
    drain = {"FAKE_DIR": str(tmp_path), "FAKE_DRAIN": "0.3"}
    specs = [spec("v1-a", "ok", replicas=2, env=drain),
             spec("v1-entrypoint", "ok", role="entrypoint", env=drain),
             spec("v1-stubborn", "stubborn", grace=0.5)]
    lines: list[str] = []

    async def scenario() -> list[Child]:
        sup = Supervisor(specs, python=fake_python, echo=lines.append, color=False,
                         ready_timeout=20, grace=60)
        async with sup:
            pass
        return sup.children

    children = asyncio.run(asyncio.wait_for(scenario(), 40))
    stopped = (tmp_path / "stopped.log").read_text().split()
    assert stopped == ["v1-entrypoint", "v1-a", "v1-a"]
    assert [c.returncode for c in children] == [0, 0, 0, -9]
    assert "v1-stubborn did not stop within 0.5s: killing it" in lines
    assert lines.index("stopping v1-entrypoint") < lines.index("stopping v1-a, v1-stubborn")
    assert not any(alive(c.pid) for c in children)


def _write_check(fake_python: str, tmp_path: Path, **kw: Any) -> list[str]:
    """Run one "write" child with the spec fields `kw`; its `uid N write OUTCOME` line."""
    folder = tmp_path / "ro"
    folder.mkdir(parents=True)
    (folder / "file").write_text("mine")
    for path in (folder / "file", folder):
        os.chown(path, 65534, 65534)  # neither root's nor the child's
    (folder / "file").chmod(0o444)
    folder.chmod(0o555)
    lines: list[str] = []

    async def scenario() -> None:
        env = {"FAKE_WRITE": str(folder / "file")}
        async with Supervisor([spec("v1-w", "write", env=env, **kw)], python=fake_python,
                              echo=lines.append, color=False, ready_timeout=20):
            pass

    asyncio.run(asyncio.wait_for(scenario(), 30))
    folder.chmod(0o755)
    return [line.split("| ", 1)[1] for line in lines if "| uid " in line]


root_on_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0,
    reason="root on Linux only: that is where root would ignore the permission bits")


@root_on_linux
def test_without_capabilities_root_cannot_write_a_read_only_file(
        fake_python: str, tmp_path: Path) -> None:
    assert _write_check(fake_python, tmp_path / "a") == ["uid 0 write ok"]  # what it guards
    assert _write_check(fake_python, tmp_path / "b", drop_caps=True) == ["uid 0 write EACCES"]


@root_on_linux
def test_a_child_runs_as_the_user_it_is_given(fake_python: str, tmp_path: Path) -> None:
    import subprocess

    try:
        runs = subprocess.run([sys.executable, "-c", "pass"], user=10001, group=10001,
                              extra_groups=[], cwd="/", capture_output=True,
                              check=False).returncode == 0
    except OSError:
        runs = False
    if not runs:
        pytest.skip(f"{sys.executable} cannot be run by uid 10001 here")
    tmp_path.chmod(0o755)
    Path(fake_python).chmod(0o755)
    assert _write_check(fake_python, tmp_path, user=10001, group=10001) == [
        "uid 10001 write EACCES"]
