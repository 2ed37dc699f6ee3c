"""kai dev's config values: --config NAME=VALUE, the environment, files as NAME=@path."""

from __future__ import annotations

from pathlib import Path

import pytest

from renderer.cli.devconfig import ConfigError, parse_pairs, resolve


def test_values_come_from_the_command_line_first_then_the_environment(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_bytes(b"-----BEGIN-----\n")
    given = parse_pairs(["API_KEY=from-flag", f"CERT=@{cert}", "EMPTY="])
    config = resolve(("API_KEY", "REGION", "EMPTY"), ("CERT", "INLINE"), given,
                     {"API_KEY": "from-env", "REGION": "eu", "INLINE": "text"})
    assert config.variables == {"API_KEY": "from-flag", "REGION": "eu", "EMPTY": ""}
    assert config.files == {"CERT": b"-----BEGIN-----\n", "INLINE": b"text"}


@pytest.mark.parametrize(
    ("pairs", "environ", "message"),
    [
        (["NOPE"], {}, "--config 'NOPE': expected NAME=VALUE"),
        (["OTHER=1"], {"API_KEY": "x"}, "--config OTHER: the version declares no such config "
                                        "(declared: API_KEY, CERT)"),
        ([], {}, "config API_KEY, CERT not set: pass --config API_KEY=... --config CERT=..."),
        (["CERT=@/does/not/exist"], {"API_KEY": "x"}, "config file CERT: cannot read"),
    ],
)
def test_mistakes_get_one_clear_line(pairs: list[str], environ: dict[str, str],
                                     message: str) -> None:
    with pytest.raises(ConfigError) as failed:
        resolve(("API_KEY",), ("CERT",), parse_pairs(pairs), environ)
    assert message in str(failed.value)
    assert "\n" not in str(failed.value)
