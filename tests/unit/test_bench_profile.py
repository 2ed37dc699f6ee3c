"""bench.profile: samples put in parts by their innermost frame, shares in µs per request."""

from __future__ import annotations

import pytest

from bench import profile

RAW = """\
t (libc.so.6);main (runner/__main__.py:197);Loop (loop.c:1);epoll_pwait (libc.so.6) 50
t (libc.so.6);main (runner/__main__.py:197);Puller._on_msg (runner/transport/nats.py:460) 20
t (libc.so.6);main (runner/__main__.py:197);_step (runner/node.py:575);parse (nats/protocol/parser.py:9) 10
t (libc.so.6);Client._flusher (nats/aio/client.py:2363);writelines (asyncio/streams.py:346);writev (libc.so.6) 30
t (libc.so.6);Queue.get (asyncio/queues.py:155);getpid (libc.so.6) 5
t (libc.so.6);obs (prometheus_client/metrics.py:1);malloc (libc.so.6) 5
grpc (libgrpc.so);poll (cygrpc.cpython-311-x86_64-linux-gnu.so) 30
"""  # noqa: E501


def test_samples_go_to_the_part_of_their_innermost_frame() -> None:
    parts = profile.parse_raw(RAW)
    assert parts == {
        profile.WAIT: 50, "runner (ours)": 20, "nats-py": 10, "socket writes": 30,
        "getpid (get_running_loop, Python 3.11)": 5, "metrics (prometheus-client)": 5,
        "grpc core (native)": 30,
    }  # fmt: skip


def test_shares_leave_the_waiting_out_and_add_up_to_the_cpu() -> None:
    parts = profile.parse_raw(RAW)
    shares = profile.shares(parts, 100.0)
    assert profile.WAIT not in shares
    assert shares["runner (ours)"] == 20.0 and shares["socket writes"] == 30.0
    assert sum(v for v in shares.values() if v is not None) == pytest.approx(100.0)
    assert set(profile.shares(parts, None).values()) == {None}


def test_our_lines_are_counted_where_our_code_runs() -> None:
    assert profile.own_frames(RAW, "/runner/") == [
        ("Puller._on_msg (runner/transport/nats.py:460)", 20)]


def test_without_py_spy_it_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(profile, "py_spy", lambda: None)
    assert profile.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install py-spy" in err
