"""runner.supervisor with stand-in runner processes (real child processes, no runner core)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from runner.supervisor import ProcessSpec, StartupError, Supervisor

# Plays `python -m runner ROLE`: behaves as FAKE_MODE says.
FAKE = """\
import os, signal, sys, time
mode = os.environ["FAKE_MODE"]
print("loading " + os.environ["KAI_NODE"] + " port " + os.environ.get("KAI_WEB_PORT", "-"))
if mode == "fail":
    print("RuntimeError: init failed: no model", file=sys.stderr)
    sys.exit(3)
if mode == "silent":
    time.sleep(30)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: (print("drained"), sys.exit(0)))
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


def spec(name: str, mode: str, replicas: int = 1) -> ProcessSpec:
    return ProcessSpec(name, "node", {"KAI_NODE": name, "FAKE_MODE": mode}, replicas,
                       free_ports=("KAI_WEB_PORT",))


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
                              echo=lambda _: None, ready_timeout=20) as sup:
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
