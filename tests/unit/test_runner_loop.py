"""Process set-up of `python -m runner`: the event loop (uvloop when importable, asyncio's when
asked or when it is not) and the malloc arena cap."""

from __future__ import annotations

import asyncio
import builtins
import platform
import sys
from typing import Any

import pytest

from runner import contract
from runner.__main__ import limit_malloc_arenas, loop_factory


def test_uvloop_by_default_when_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    name, factory = loop_factory({})
    assert name == "uvloop"
    assert factory is uvloop.new_event_loop


def test_asyncio_when_asked() -> None:
    assert loop_factory({contract.ENV_EVENT_LOOP: "asyncio"}) == ("asyncio", None)
    assert loop_factory({contract.ENV_EVENT_LOOP: " AsyncIO "}) == ("asyncio", None)


def test_asyncio_when_uvloop_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_uvloop(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError("no uvloop here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    name, factory = loop_factory({})
    assert (name, factory) == ("asyncio", None)
    with asyncio.Runner(loop_factory=factory) as runner:
        assert runner.run(asyncio.sleep(0, "ran")) == "ran"


def test_malloc_arena_cap_leaves_an_explicit_setting_alone() -> None:
    assert limit_malloc_arenas({"MALLOC_ARENA_MAX": "4"}) is False


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt(M_ARENA_MAX) is glibc's")
def test_malloc_arena_cap_applies_on_glibc() -> None:
    assert limit_malloc_arenas({}) is True
