"""Child processes for the benchmarks: started in their own session, always stopped.

Every process a benchmark starts goes through :class:`ProcessGroup`, which
stops them all (SIGTERM, then SIGKILL after a grace period) when the `with`
block ends, on error and on Ctrl-C alike. Children run in a new session, so a
Ctrl-C in the terminal reaches only the benchmark, which then stops them in
order; and on Linux each child asks for SIGTERM if the benchmark itself dies
(PR_SET_PDEATHSIG), so none is left behind even on SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class Child:
    name: str
    role: str
    proc: subprocess.Popen[bytes]
    log: Path
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ProcessGroup:
    """Start children with logs in `log_dir`; stop every one of them on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        role: str = "",
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdout_pipe: bool = False,
    ) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env) if env is not None else None,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else out,
                stderr=out,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        child = Child(name, role, proc, log)
        self.children.append(child)
        return child

    def stop(self, child: Child, grace: float = 5.0) -> int | None:
        _stop([child.proc], grace)
        if child in self.children:
            self.children.remove(child)
        return child.proc.returncode

    def stop_all(self, grace: float = 5.0) -> None:
        procs = [c.proc for c in self.children]
        self.children.clear()
        _stop(procs, grace)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


def _stop(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()
        if p.stdout is not None:
            p.stdout.close()


def wait_for_line(child: Child, marker: bytes, timeout: float) -> bytes:
    """Read the child's stdout pipe until a line containing `marker`; return that line."""
    assert child.proc.stdout is not None
    fd = child.proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
            for line in buf.split(b"\n")[:-1]:  # complete lines only
                if marker in line:
                    return line
        elif child.proc.poll() is not None:
            break
    raise RuntimeError(
        f"{child.name} did not report {marker.decode()!r} within {timeout:.0f}s "
        f"(exit code {child.proc.poll()}); its log:\n{child.log_tail()}\n"
        + buf.decode(errors="replace")
    )


# --- memory -------------------------------------------------------------------------


def proc_status_kb(pid: int, key: str) -> int | None:
    """A `/proc/<pid>/status` field in kB (VmRSS, VmHWM), or None when unreadable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


# --- signals --------------------------------------------------------------------------


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into KeyboardInterrupt so `with` blocks stop the children."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a shell starts background jobs with SIGINT ignored, and the benchmark's
    # children must still be stopped when someone interrupts it.
    signals = (signal.SIGTERM, signal.SIGINT)
    previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {
        sig: signal.getsignal(sig) for sig in signals
    }
    for sig in signals:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
