"""renderer.giturl: which URLs are scp-like, and the form Flux's GitRepository accepts."""

from __future__ import annotations

from typing import Any

import pytest

from renderer import checks
from renderer.giturl import flux_url, is_scp_like


@pytest.mark.parametrize(("url", "expected"), [
    # scp-like: [user@]host:path
    ("git@github.com:acme/platform.git", "ssh://git@github.com/acme/platform.git"),
    ("git@github.com:/acme/platform.git", "ssh://git@github.com/acme/platform.git"),
    ("github.com:acme/platform.git", "ssh://github.com/acme/platform.git"),
    ("deploy@git.internal:repos/ops", "ssh://deploy@git.internal/repos/ops"),
    ("git@[::1]:acme/ops.git", "ssh://git@[::1]/acme/ops.git"),
    ("[fe80::1]:ops.git", "ssh://[fe80::1]/ops.git"),
    # URLs with a scheme: as given
    ("https://github.com/acme/platform.git", "https://github.com/acme/platform.git"),
    ("http://git.local:3000/acme/ops.git", "http://git.local:3000/acme/ops.git"),
    ("ssh://git@github.com/acme/platform.git", "ssh://git@github.com/acme/platform.git"),
    ("ssh://git@host:2222/ops.git", "ssh://git@host:2222/ops.git"),
    ("file:///srv/git/ops.git", "file:///srv/git/ops.git"),
    # local paths: as given
    ("/srv/git/ops.git", "/srv/git/ops.git"),
    ("./ops.git", "./ops.git"),
    ("../repos/a:b.git", "../repos/a:b.git"),  # a slash before the colon: a path
    ("ops", "ops"),
    # Windows drive paths are not scp-like
    ("C:\\repos\\ops", "C:\\repos\\ops"),
    ("C:/repos/ops", "C:/repos/ops"),
    ("d:", "d:"),
    # odd inputs stay as they are
    ("", ""),
    (":ops.git", ":ops.git"),
    ("git@:ops.git", "git@:ops.git"),
    ("[::1", "[::1"),
])
def test_flux_url(url: str, expected: str) -> None:
    assert flux_url(url) == expected
    assert is_scp_like(url) == (expected != url)
    assert flux_url(expected) == expected  # idempotent


def test_checks_refuse_an_scp_like_gitrepository_url() -> None:
    obj: dict[str, Any] = {"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
           "metadata": {"name": "demo", "namespace": "flux-system"},
           "spec": {"interval": "1m0s", "url": "git@github.com:acme/ops.git",
                    "ref": {"branch": "main"}, "secretRef": {"name": "Not_Valid"}}}
    problems = {p.path: p.message for p in checks.check_object("g.yaml", obj, "1.35")}
    assert "ssh://git@github.com/acme/ops.git" in problems["spec.url"]
    assert "is not a valid Kubernetes name" in problems["spec.secretRef.name"]
    obj["spec"] = {**obj["spec"], "url": "ssh://git@github.com/acme/ops.git",
                   "secretRef": {"name": "flux-git"}}
    assert checks.check_object("g.yaml", obj, "1.35") == []
