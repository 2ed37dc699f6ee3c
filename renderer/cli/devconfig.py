"""Config values for `kai dev`: from `--config NAME=VALUE` or the environment.

A declared variable reaches every node as an environment variable of its name,
as the Secret's `secretKeyRef` does in the cluster. A declared file is written
into the pod's config volume under its name (renderer.cli.devpod), as the Secret's
volume is mounted in the cluster, and its content is the environment variable of
its name too, as KRE delivered files (renderer.cli.dev.secret_value).
For a file, `NAME=@path` reads the value from a file; any other value is the
file's content.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path


class ConfigError(Exception):
    """A config value is missing or malformed; the message says what to pass."""


@dataclass(frozen=True)
class DevConfig:
    variables: dict[str, str]
    files: dict[str, bytes]


def parse_pairs(pairs: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--config {pair!r}: expected NAME=VALUE")
        out[name] = value
    return out


def resolve(
    variables: tuple[str, ...],
    files: tuple[str, ...],
    given: Mapping[str, str],
    environ: Mapping[str, str] | None = None,
) -> DevConfig:
    """Every declared value, from `given` first, then the environment."""
    env = os.environ if environ is None else environ
    declared = (*variables, *files)
    for name in given:
        if name not in declared:
            listed = ", ".join(declared) or "none"
            raise ConfigError(f"--config {name}: the version declares no such config "
                              f"(declared: {listed})")
    missing = [n for n in declared if n not in given and n not in env]
    if missing:
        flags = " ".join(f"--config {n}=..." for n in missing)
        raise ConfigError(f"config {', '.join(missing)} not set: pass {flags} "
                          "or set it in the environment")
    values = {n: given[n] if n in given else env[n] for n in declared}
    return DevConfig(
        variables={n: values[n] for n in variables},
        files={n: _file_content(n, values[n]) for n in files},
    )


def _file_content(name: str, value: str) -> bytes:
    if not value.startswith("@"):
        return value.encode()
    path = Path(value[1:]).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config file {name}: cannot read {path}: {exc.strerror}") from None
