"""renderer.atomic: all-or-nothing writes (stage, swap/commit, undo, discard) and `recover`.

Faults are injected by making an os call raise at its Nth call; crashes are real
SIGKILLs of a writer subprocess.
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import renderer
from renderer import atomic
from renderer.atomic import (
    read_tree,
    recover,
    stage_file,
    stage_tree,
    tree_names,
    write_file,
    write_tree,
)

OLD_TREE = {f"v1/deployment-{i}.yaml": f"kind: Deployment\nn: {i}\n".encode() for i in range(8)}
OLD_TREE["kustomization.yaml"] = b"resources: [old]\n"
NEW_TREE = {f"v2/service-{i}.yaml": f"kind: Service\nn: {i}\n".encode() for i in range(8)}
NEW_TREE["kustomization.yaml"] = b"resources: [new]\n"
ROOT = Path(renderer.__file__).resolve().parent.parent


def fail_at(monkeypatch: pytest.MonkeyPatch, name: str, nth: int, err: int,
            when: Callable[..., bool] = lambda *a, **k: True) -> list[int]:
    """Make `os.<name>` raise OSError(err) at its `nth` matching call; the calls counted."""
    real = getattr(os, name)
    calls = [0]

    def fake(*args: Any, **kwargs: Any) -> Any:
        if when(*args, **kwargs):
            calls[0] += 1
            if calls[0] == nth:
                raise OSError(err, os.strerror(err))
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, fake)
    return calls


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def snapshot(target: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mode of every file: byte-identical means this is equal."""
    return {rel: (data, (target / rel).stat().st_mode) for rel, data in read_tree(target).items()}


@pytest.fixture(params=["exchange", "renames"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every guarantee holds with the exchange and with the two-rename fallback."""
    if request.param == "renames":
        monkeypatch.setattr(atomic, "_renameat2", lambda: None)
    return str(request.param)


@pytest.fixture
def live(tmp_path: Path) -> Path:
    target = tmp_path / "rendered" / "demo"
    write_tree(target, OLD_TREE)
    return target


# --- the exchange --------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_the_exchange_is_found_and_used_here(live: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert atomic._renameat2() is not None
    staged = stage_tree(live, NEW_TREE)
    new_inode, old_inode = staged.staging.stat().st_ino, live.stat().st_ino

    def no_rename(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("swapped with renames, not the exchange")

    monkeypatch.setattr(os, "rename", no_rename)
    monkeypatch.setattr(os, "replace", no_rename)
    staged.swap()
    assert live.stat().st_ino == new_inode  # the staged directory itself is live
    assert staged.aside is not None and staged.aside.stat().st_ino == old_inode
    staged.undo()
    assert live.stat().st_ino == old_inode and read_tree(live) == OLD_TREE
    monkeypatch.undo()
    staged.discard()
    assert entries(live.parent) == ["demo"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_the_syscall_route_exchanges_too(tmp_path: Path) -> None:
    libc = atomic._libc()
    assert libc is not None
    call = atomic._syscall_renameat2(libc)
    assert call is not None
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").mkdir()
    assert call(bytes(tmp_path / "a"), bytes(tmp_path / "b"), atomic.RENAME_EXCHANGE) == 0
    assert (tmp_path / "a").is_dir() and (tmp_path / "b").read_bytes() == b"a"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_the_target_never_goes_missing_during_swaps(live: Path) -> None:
    """A reader polling the target in parallel (os.lstat releases the GIL) never misses it."""
    staged = stage_tree(live, NEW_TREE)
    missing: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        for _ in range(2_000_000):
            if stop.is_set():
                return
            try:
                os.lstat(live)
            except FileNotFoundError:
                missing.append(1)

    reader = threading.Thread(target=watch)
    reader.start()
    try:
        for _ in range(300):
            staged.swap()
            staged.undo()
    finally:
        stop.set()
        reader.join()
    staged.discard()
    assert missing == []
    assert read_tree(live) == OLD_TREE and entries(live.parent) == ["demo"]


@pytest.mark.parametrize("err", [errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP])
def test_a_file_system_without_the_exchange_falls_back(live: Path, err: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(a: bytes, b: bytes, flags: int) -> int:
        ctypes.set_errno(err)
        return -1

    monkeypatch.setattr(atomic, "_renameat2", lambda: refuse)
    write_tree(live, NEW_TREE)
    assert read_tree(live) == NEW_TREE and entries(live.parent) == ["demo"]


def test_a_failed_exchange_leaves_the_old_tree(live: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(live)

    def broken(a: bytes, b: bytes, flags: int) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(atomic, "_renameat2", lambda: broken)
    with pytest.raises(OSError) as caught:
        write_tree(live, NEW_TREE)
    assert caught.value.errno == errno.EIO
    assert snapshot(live) == before and entries(live.parent) == ["demo"]


# --- trees ---------------------------------------------------------------------------


@pytest.mark.parametrize("nth", [1, 4, 9])
def test_enospc_on_the_nth_file_leaves_the_old_tree(live: Path, mode: str, nth: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(live)
    calls = fail_at(monkeypatch, "write", nth, errno.ENOSPC)
    with pytest.raises(OSError) as caught:
        write_tree(live, NEW_TREE)
    assert caught.value.errno == errno.ENOSPC and calls[0] == nth
    monkeypatch.undo()
    assert snapshot(live) == before and entries(live.parent) == ["demo"]


@pytest.mark.parametrize("nth", [1, 2])
def test_a_failed_rename_leaves_the_old_tree(live: Path, nth: int,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback's two renames: either failing puts the old tree back."""
    monkeypatch.setattr(atomic, "_renameat2", lambda: None)
    before = snapshot(live)
    fail_at(monkeypatch, "rename", nth, errno.EIO)
    with pytest.raises(OSError):
        write_tree(live, NEW_TREE)
    monkeypatch.undo()
    assert snapshot(live) == before and entries(live.parent) == ["demo"]


def test_swap_then_undo_restores_the_old_tree(live: Path, mode: str) -> None:
    before = snapshot(live)
    staged = stage_tree(live, NEW_TREE)
    assert read_tree(live) == OLD_TREE  # staged is not visible
    staged.swap()
    assert read_tree(live) == NEW_TREE
    staged.undo()
    assert snapshot(live) == before
    staged.discard()
    assert entries(live.parent) == ["demo"]


def test_swap_then_discard_keeps_the_new_tree(live: Path, mode: str) -> None:
    staged = stage_tree(live, NEW_TREE, reuse=["v1/deployment-0.yaml"])
    staged.swap()
    staged.discard()
    assert read_tree(live) == {**NEW_TREE, "v1/deployment-0.yaml": OLD_TREE["v1/deployment-0.yaml"]}
    assert entries(live.parent) == ["demo"]


def test_swap_and_undo_of_a_tree_that_did_not_exist(tmp_path: Path, mode: str) -> None:
    target = tmp_path / "fresh"
    staged = stage_tree(target, NEW_TREE)
    staged.swap()
    assert read_tree(target) == NEW_TREE
    staged.undo()
    assert not target.exists()
    staged.discard()
    assert entries(tmp_path) == []


def test_the_context_manager_undoes_on_error(tmp_path: Path, mode: str) -> None:
    """Two trees and a file made visible together, then a failure: all three are undone."""
    a, b, kai = tmp_path / "a", tmp_path / "b", tmp_path / "kai.yaml"
    write_tree(a, OLD_TREE)
    write_tree(b, OLD_TREE)
    kai.write_bytes(b"old: 1\n")
    with pytest.raises(RuntimeError, match="late failure"):
        with stage_tree(a, NEW_TREE) as ta, stage_tree(b, NEW_TREE) as tb, \
                stage_file(kai, b"new: 1\n") as fk:
            ta.swap()
            tb.swap()
            fk.commit()
            assert read_tree(a) == read_tree(b) == NEW_TREE and kai.read_bytes() == b"new: 1\n"
            raise RuntimeError("late failure")
    assert read_tree(a) == read_tree(b) == OLD_TREE and kai.read_bytes() == b"old: 1\n"
    assert entries(tmp_path) == ["a", "b", "kai.yaml"]


def test_the_context_manager_discards_an_unused_stage(live: Path) -> None:
    with stage_tree(live, NEW_TREE), stage_file(live.parent / "kai.yaml", b"x"):
        pass
    assert read_tree(live) == OLD_TREE and entries(live.parent) == ["demo"]


def test_misuse_is_refused(live: Path) -> None:
    staged = stage_tree(live, NEW_TREE)
    with pytest.raises(RuntimeError, match="staged"):
        staged.undo()
    staged.swap()
    with pytest.raises(RuntimeError, match="live"):
        staged.swap()
    staged.discard()
    with pytest.raises(RuntimeError):
        staged.undo()
    assert read_tree(live) == NEW_TREE


# --- files ---------------------------------------------------------------------------


def test_a_read_only_file_is_refused(tmp_path: Path) -> None:
    kai = tmp_path / "kai.yaml"
    kai.write_bytes(b"name: demo\n")
    kai.chmod(0o444)
    calls = [0]
    real_open = os.open

    def counting_open(*args: Any, **kwargs: Any) -> int:
        calls[0] += 1
        return real_open(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "open", counting_open)
        for attempt in (lambda: stage_file(kai, "name: other\n"),
                        lambda: write_file(kai, "name: other\n")):
            with pytest.raises(OSError) as caught:
                attempt()
            assert caught.value.errno == errno.EACCES and caught.value.filename == str(kai)
            assert isinstance(caught.value, PermissionError)
    assert calls[0] == 0  # nothing was written, not even a temporary file
    assert kai.read_bytes() == b"name: demo\n" and entries(tmp_path) == ["kai.yaml"]
    kai.chmod(0o644)
    write_file(kai, "name: other\n")
    assert kai.read_bytes() == b"name: other\n"


def test_a_tree_is_not_refused_for_its_modes(live: Path) -> None:
    (live / "kustomization.yaml").chmod(0o444)
    live.chmod(0o555)
    write_tree(live, NEW_TREE)
    assert read_tree(live) == NEW_TREE


@pytest.mark.parametrize("call", ["write", "fsync", "fchmod"])
def test_a_failed_file_write_leaves_the_old_file(tmp_path: Path, call: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    kai = tmp_path / "kai.yaml"
    kai.write_bytes(b"name: demo\n")
    fail_at(monkeypatch, call, 1, errno.ENOSPC)
    with pytest.raises(OSError) as caught:
        write_file(kai, b"name: other\n" * 1000)
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert kai.read_bytes() == b"name: demo\n" and entries(tmp_path) == ["kai.yaml"]


def test_commit_then_undo_restores_the_previous_file(tmp_path: Path) -> None:
    kai = tmp_path / "kai.yaml"
    kai.write_bytes(b"name: demo\n")
    kai.chmod(0o600)
    inode = kai.stat().st_ino
    staged = stage_file(kai, "name: other\n")
    assert kai.read_bytes() == b"name: demo\n"
    staged.commit()
    assert kai.read_bytes() == b"name: other\n" and kai.stat().st_mode & 0o777 == 0o644
    staged.undo()
    assert kai.read_bytes() == b"name: demo\n" and kai.stat().st_ino == inode
    assert kai.stat().st_mode & 0o777 == 0o600
    staged.discard()
    assert entries(tmp_path) == ["kai.yaml"]


def test_commit_then_undo_of_a_new_file_removes_it(tmp_path: Path) -> None:
    staged = stage_file(tmp_path / "kai.yaml", b"x")
    staged.commit()
    staged.undo()
    assert entries(tmp_path) == []


def test_commit_keeps_a_copy_where_links_fail(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    kai = tmp_path / "kai.yaml"
    kai.write_bytes(b"old\n")
    fail_at(monkeypatch, "link", 1, errno.EPERM)
    staged = stage_file(kai, b"new\n")
    staged.commit()
    monkeypatch.undo()
    staged.undo()
    assert kai.read_bytes() == b"old\n" and entries(tmp_path) == ["kai.yaml"]


def test_a_failed_commit_leaves_the_old_file(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    kai = tmp_path / "kai.yaml"
    kai.write_bytes(b"old\n")
    fail_at(monkeypatch, "replace", 1, errno.EIO)
    with pytest.raises(OSError):
        write_file(kai, b"new\n")
    monkeypatch.undo()
    assert kai.read_bytes() == b"old\n" and entries(tmp_path) == ["kai.yaml"]


# --- recover -------------------------------------------------------------------------


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True, timeout=60)
    return int(proc.stdout)


def test_recover_removes_only_the_leftovers_of_gone_writers(tmp_path: Path) -> None:
    rendered = tmp_path / "rendered"
    write_tree(rendered / "demo", OLD_TREE)
    (tmp_path / "kai.yaml").write_bytes(b"k\n")
    gone = dead_pid()
    crashed, older = "left by a crashed kai", "left by an older kai"
    leftovers = [
        (f"rendered/.demo.new-{gone}-0a1b2c3d", crashed),
        (f"rendered/.demo.old-{gone}-deadbeef", crashed),
        (f".kai.yaml.tmp-{gone}-01234567", crashed),
        (f".kai.yaml.old-{gone}-89abcdef", crashed),
        (f"rendered/.demo.new-{os.getpid()}-feedf00d", crashed),  # this pid, not in use: reused
        ("rendered/.demo.new-ab12_xyz", older),  # kai before names carried a pid
        ("rendered/.demo.old-abcdefgh", older),
        (".kai.yaml.k2x_9qzp", older),
    ]
    kept = [
        f"rendered/.demo.new-{os.getppid()}-0a1b2c3d",  # a live writer
        "rendered/.other.new-1-00000000",  # not a name asked about
        ".kai.yaml.original",  # a person's file, not mkstemp's
        ".kai.yaml.bak",
    ]
    for rel in (*(rel for rel, _ in leftovers), *kept):
        if ".kai.yaml" in rel:
            (tmp_path / rel).write_bytes(b"x")
        else:
            write_tree(tmp_path / rel, {"x.yaml": b"x"})
    in_use = stage_tree(rendered / "demo", NEW_TREE)  # this process's own, in use
    lines = recover(rendered, ["demo"], label="rendered") + recover(tmp_path, ["kai.yaml"], "")
    assert sorted(lines) == sorted(f"removed {rel} ({why})" for rel, why in leftovers)
    for rel in kept:
        assert (tmp_path / rel).exists()
    assert in_use.staging.exists()
    in_use.discard()
    assert recover(rendered, ["demo"]) == [] and recover(tmp_path, ["kai.yaml"]) == []
    assert read_tree(rendered / "demo") == OLD_TREE


def test_recover_puts_back_a_missing_target(tmp_path: Path) -> None:
    gone = dead_pid()
    write_tree(tmp_path / f".demo.old-{gone}-00aa00aa", OLD_TREE)
    write_tree(tmp_path / f".demo.new-{gone}-11bb11bb", NEW_TREE)
    lines = recover(tmp_path, ["demo"], label="rendered")
    assert lines == [
        f"restored rendered/demo from .demo.old-{gone}-00aa00aa (left by a crashed kai)",
        f"removed rendered/.demo.new-{gone}-11bb11bb (left by a crashed kai)",
    ]
    assert read_tree(tmp_path / "demo") == OLD_TREE and entries(tmp_path) == ["demo"]


def test_recover_refuses_paths(tmp_path: Path) -> None:
    for bad in ("rendered/demo", "..", ""):
        with pytest.raises(ValueError):
            recover(tmp_path, [bad])
    assert recover(tmp_path / "missing", ["demo"]) == []


# --- real crashes --------------------------------------------------------------------

WRITER = """
import os, sys
from pathlib import Path
from renderer import atomic
if sys.argv[3] == "renames":
    atomic._renameat2 = lambda: None
folder = Path(sys.argv[1])
trees = [{f"d{i % 7}/f{i}.yaml": (f"{n}:{i}\\n" * 50).encode() for i in range(int(sys.argv[2]))}
         for n in ("a", "b")]
print("ready", flush=True)
for turn in range(100_000):
    n = turn % 2
    with atomic.stage_tree(folder / "demo", trees[n]) as tree, \\
            atomic.stage_file(folder / "kai.yaml", f"tree: {n}\\n") as kai:
        tree.swap()
        kai.commit()
"""


def make_tree(n: int, files: int) -> dict[str, bytes]:
    letter = "ab"[n]
    return {f"d{i % 7}/f{i}.yaml": (f"{letter}:{i}\n" * 50).encode() for i in range(files)}


def run_writer(folder: Path, files: int, mode: str, delay: float) -> None:
    """Start the writer, SIGKILL it `delay` seconds after it is ready, and reap it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(files), mode],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        threading.Event().wait(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize("mode", ["exchange", "renames"])
def test_sigkill_at_random_points_leaves_old_or_new(tmp_path: Path, mode: str) -> None:
    files = 60
    trees = [make_tree(0, files), make_tree(1, files)]
    files_by_tree = [b"tree: 0\n", b"tree: 1\n"]
    write_tree(tmp_path / "demo", trees[0])
    write_file(tmp_path / "kai.yaml", files_by_tree[0])
    rng = random.Random(7)
    for _ in range(20):
        run_writer(tmp_path, files, mode, rng.uniform(0.0, 0.25))
        present = (tmp_path / "demo").is_dir()
        if mode == "exchange":
            assert present  # no moment without it
        if present:
            assert read_tree(tmp_path / "demo") in trees
        assert (tmp_path / "kai.yaml").read_bytes() in files_by_tree
        left = [e for e in entries(tmp_path) if e not in ("demo", "kai.yaml")]
        lines = recover(tmp_path, ["demo", "kai.yaml"])
        assert len(lines) == len(left)
        for entry in left:
            assert sum(f"{tmp_path.as_posix()}/{entry} " in line or f"from {entry} " in line
                       for line in lines) == 1
        assert entries(tmp_path) == ["demo", "kai.yaml"]
        assert read_tree(tmp_path / "demo") in trees
        if not present:
            assert any(line.startswith(f"restored {tmp_path.as_posix()}/demo from .demo.old-")
                       for line in lines)


CRASH_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
from renderer import atomic
atomic._renameat2 = lambda: None
target = Path(sys.argv[1])
real = os.rename
def rename(src, dst):
    real(src, dst)
    if Path(src) == target:  # the old tree is aside, the new one not in yet
        os.kill(os.getpid(), signal.SIGKILL)
os.rename = rename
atomic.write_tree(target, {"new.yaml": b"new"})
"""


def test_a_crash_between_the_fallback_renames_is_recovered(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    write_tree(target, OLD_TREE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", CRASH_BETWEEN_RENAMES, str(target)],
                          env=env, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not target.exists()  # the moment the exchange does away with
    lines = recover(tmp_path, ["demo"], label="rendered")
    assert [line.split(" ")[0] for line in lines] == ["restored", "removed"]
    assert read_tree(target) == OLD_TREE
    assert entries(tmp_path) == ["demo"]


CRASH_AT_CALL = """
import os, signal, sys
from pathlib import Path
from renderer import atomic
if sys.argv[3] == "renames":
    atomic._renameat2 = lambda: None
folder, nth, calls = Path(sys.argv[1]), int(sys.argv[2]), [0]
def hook(real):
    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call
for name in ("mkdir", "open", "write", "close", "fsync", "fchmod", "chmod", "rename", "replace",
             "link", "unlink", "rmdir"):
    setattr(os, name, hook(getattr(os, name)))
atomic.exchange = hook(atomic.exchange)
with atomic.stage_tree(folder / "demo", {"v2/a.yaml": b"new a", "v2/b.yaml": b"new b"}) as tree, \\
        atomic.stage_file(folder / "kai.yaml", b"new\\n") as kai:
    tree.swap()
    kai.commit()
print(calls[0])
"""


@pytest.mark.parametrize("mode", ["exchange", "renames"])
def test_sigkill_before_every_call_leaves_old_or_new(tmp_path: Path, mode: str) -> None:
    """The writer kills itself before its Nth file-system call, for every N of one
    transaction (a tree and a file): each crash point leaves old or new, and `recover`
    leaves nothing else."""
    old, new = {"v1/a.yaml": b"old a"}, {"v2/a.yaml": b"new a", "v2/b.yaml": b"new b"}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def crash_at(nth: int) -> tuple[Path, subprocess.CompletedProcess[str]]:
        folder = tmp_path / str(nth)
        write_tree(folder / "demo", old)
        write_file(folder / "kai.yaml", b"old\n")
        proc = subprocess.run([sys.executable, "-c", CRASH_AT_CALL, str(folder), str(nth), mode],
                              env=env, capture_output=True, text=True, timeout=60)
        return folder, proc

    folder, proc = crash_at(0)
    assert proc.returncode == 0, proc.stderr
    total = int(proc.stdout)
    assert 10 < total < 200
    assert read_tree(folder / "demo") == new and entries(folder) == ["demo", "kai.yaml"]
    restored = 0
    for nth in range(1, total + 1):
        folder, proc = crash_at(nth)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        if mode == "exchange":
            assert (folder / "demo").is_dir()
        assert (folder / "kai.yaml").read_bytes() in (b"old\n", b"new\n")
        left = [e for e in entries(folder) if e not in ("demo", "kai.yaml")]
        lines = recover(folder, ["demo", "kai.yaml"])
        assert len(lines) == len(left), (nth, left, lines)
        restored += sum(line.startswith("restored") for line in lines)
        assert entries(folder) == ["demo", "kai.yaml"], nth
        assert read_tree(folder / "demo") in (old, new), nth
    assert restored == (1 if mode == "renames" else 0)  # the one moment between two renames


def test_tree_names_are_the_folders_and_what_tree_leftovers_are_of(tmp_path: Path) -> None:
    rendered = tmp_path / "rendered"
    (rendered / "demo").mkdir(parents=True)
    (rendered / ".shop.old-999999999-0a1b2c3d").mkdir()  # a crash left rendered/shop missing
    (rendered / ".demo.new-17-ffee0011").mkdir()
    (rendered / ".old.new-0a1b2c3d").mkdir()  # an older kai's name, without a pid
    (rendered / ".hidden").mkdir()
    (rendered / "notes.txt").write_text("x")
    (rendered / "link").symlink_to(rendered / "demo")
    assert tree_names(rendered) == ["demo", "old", "shop"]
    assert tree_names(tmp_path / "missing") == []
    # and recover puts the missing tree back under the name found
    lines = recover(rendered, tree_names(rendered), label="rendered")
    assert (rendered / "shop").is_dir()
    restored = "restored rendered/shop from .shop.old-999999999-"
    assert any(line.startswith(restored) for line in lines)

