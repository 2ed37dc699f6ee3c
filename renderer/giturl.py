"""Git repository URLs as the GitOps controllers want them.

git and Argo CD accept the scp-like form `user@host:path` (`git@github.com:acme/ops.git`);
Flux's GitRepository accepts only `http://`, `https://` and `ssh://` URLs. `flux_url`
turns the scp-like form into `ssh://user@host/path` and leaves every other URL as given.

As in git, a URL is scp-like when it has a `:` before any `/`, no `://`, and the part
before the colon is not a Windows drive letter (`C:\\repos\\ops`, `C:/repos/ops`).
A path after the colon is taken from the top of the host (`host:ops.git` becomes
`ssh://host/ops.git`), which is what hosted git services serve; a plain ssh server that
keeps the repository in a home directory needs `ssh://host/~/ops.git`, given as such.
"""

from __future__ import annotations

import re

_DRIVE = re.compile(r"[A-Za-z]:([\\/]|$)")


def is_scp_like(url: str) -> bool:
    """`[user@]host:path` (git's scp-like syntax), not a URL with a scheme or a local path."""
    if "://" in url or _DRIVE.match(url):
        return False
    host = _host_part(url)
    return host is not None and host not in ("", "[]") and not host.endswith("@")


def _host_part(url: str) -> str | None:
    """The `[user@]host` before the scp-like colon, or None when there is no such colon."""
    start = url.find("@[") + 1 if "@[" in url else 0
    if url.startswith("[") or start:
        close = url.find("]", start)  # an IPv6 host: `[::1]:path`, `git@[::1]:path`
        if close == -1 or url[close + 1:close + 2] != ":":
            return None
        return url[:close + 1]
    colon, slash = url.find(":"), url.find("/")
    if colon == -1 or (slash != -1 and slash < colon):
        return None
    return url[:colon]


def flux_url(url: str) -> str:
    """The URL for a Flux GitRepository: scp-like becomes `ssh://`; anything else as given."""
    if not is_scp_like(url):
        return url
    host = _host_part(url)
    assert host is not None
    path = url[len(host) + 1:]
    return f"ssh://{host}/{path.lstrip('/')}"

