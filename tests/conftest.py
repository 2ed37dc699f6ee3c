"""Shared fixtures: a real nats-server on a free loopback port, temporary git repos."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.natsserver import NatsServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream (file storage under tmp_path), stopped afterwards."""
    with NatsServer(store_dir=tmp_path / "nats") as server:
        yield server


@pytest.fixture(scope="session")
def shared_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server for tests that only need a working server, not a fresh one."""
    with NatsServer(store_dir=tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commits in temporary repos work on machines without a global git identity."""
    for key, value in {
        "GIT_AUTHOR_NAME": "KAI Test",
        "GIT_AUTHOR_EMAIL": "kai-test@example.invalid",
        "GIT_COMMITTER_NAME": "KAI Test",
        "GIT_COMMITTER_EMAIL": "kai-test@example.invalid",
    }.items():
        if key not in os.environ:
            monkeypatch.setenv(key, value)


def git(repo: Path, *args: str) -> str:
    """Run git in `repo` and return its stdout (tests' helper)."""
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout
