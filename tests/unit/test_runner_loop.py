"""Process set-up of `python -m runner`: the event loop (uvloop when importable, asyncio's when
asked or when it is not), the malloc arena cap, and the settings read from the environment."""

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


def _environ(**extra: str) -> dict[str, str]:
    base = contract.RunnerEnv(project="p", version="v", version_dir="/v", proto="x.proto",
                              workflows=(contract.Workflow("wf", "Rpc", ("n",)),))
    return {**base.to_environ(), **extra}


def test_bind_host_and_concurrency_come_from_the_environment() -> None:
    env = contract.RunnerEnv.from_environ(_environ())
    assert (env.bind_host, env.concurrency) == (contract.DEFAULT_BIND_HOST,
                                                contract.DEFAULT_CONCURRENCY)
    env = contract.RunnerEnv.from_environ(_environ(**{contract.ENV_BIND_HOST: "127.0.0.1",
                                                      contract.ENV_CONCURRENCY: "4"}))
    assert (env.bind_host, env.concurrency) == ("127.0.0.1", 4)
    assert contract.RunnerEnv.from_environ(env.to_environ()) == env
    unset = {k: v for k, v in _environ().items()
             if k not in (contract.ENV_BIND_HOST, contract.ENV_CONCURRENCY)}
    assert contract.RunnerEnv.from_environ(unset).concurrency == contract.DEFAULT_CONCURRENCY
    assert contract.RunnerEnv.from_environ(
        _environ(**{contract.ENV_CONCURRENCY: "0"})).concurrency == 1
    with pytest.raises(contract.ContractError, match="KAI_CONCURRENCY='many' is not a whole"):
        contract.RunnerEnv.from_environ(_environ(**{contract.ENV_CONCURRENCY: "many"}))
