import asyncio
import subprocess
import sys
import time
from pathlib import Path

import nats
import pytest

from runner.natsserver import NatsServer


def test_embedded_server_serves_jetstream_and_restarts(tmp_path):
    async def roundtrip(url: str) -> int:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        ack = await js.publish("t.x", b"hi")
        await nc.close()
        return ack.seq

    with NatsServer(store_dir=tmp_path / "n") as server:
        assert asyncio.run(roundtrip(server.url)) == 1
        server.restart()
        # file storage survives a restart: the next message is the second in the stream
        assert asyncio.run(roundtrip(server.url)) == 2


OWNER = """\
import sys, time
from pathlib import Path
from runner.natsserver import NatsServer
server = NatsServer(store_dir=Path(sys.argv[1])).start()
print(server.proc.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_the_server_dies_with_its_owner_even_on_sigkill(tmp_path: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path / "n")],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline())
        assert _alive(pid)
        owner.kill()
        owner.wait(10)
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "nats-server outlived the process that started it"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
