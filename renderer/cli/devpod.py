"""A rendered pod's volumes and user on this machine, for `kai dev`.

Each Deployment's volumes are written into its own folder of the run's `kai-dev-<pid>-*`
folder, as the kubelet would mount them: a configMap volume holds exactly the ConfigMap's
`items` (key → path; every key when it names none), a secret volume the config files
`kai dev` was given (devconfig), or the keys of a Secret of kai dev's own that it names
(the `--nats-creds` file), an emptyDir an empty writable folder. A mount that is
`readOnly` gets files 0444 and folders 0555. The container's env values that name a
mountPath (or a path below it) are rewritten to the local folder, and TMPDIR and HOME
point at the volume mounted on /tmp, so a node sees the files the pod sees, no others.

Read-only is enforced as follows. Not root: the permission bits do it. Root (who ignores
them): each process runs as the pod's `securityContext.runAsUser`/`runAsGroup`, owner of
its writable volumes only; when this machine's Python cannot be run by that user (the
check imports the runner as that user), the process runs as root without capabilities
(Linux: the bounding set and every capability set emptied), and the read-only files
belong to another user; when that is not possible either, a warning says writes into
the version's files are not prevented.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from renderer.images import mapped_name, runner_names
from renderer.project import Project
from runner import contract

READ_ONLY_FILE = 0o444
READ_ONLY_DIR = 0o555
CAP_SETPCAP = 8  # may drop capabilities from the bounding set
USER = "user"  # run as the pod's runAsUser
NO_CAPS = "no-caps"  # run as root without capabilities
UNGUARDED = "unguarded"  # root with its capabilities: writes are not prevented
OWN = "own"  # not root: the permission bits stop writes


class PodError(Exception):
    """A pod kai dev cannot lay out on this machine; a one-line message."""


@dataclass(frozen=True)
class Guard:
    """How the processes are kept from writing into read-only volumes (see module doc)."""

    mode: str
    lines: tuple[str, ...] = ()  # what kai dev says about it, once


NOT_ROOT = Guard(OWN)


@dataclass(frozen=True)
class PodUser:
    """The user a pod's processes run as on this machine (None: this process's)."""

    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] = ()
    drop_caps: bool = False


def pod_uid(pod: Mapping[str, Any], container: Mapping[str, Any]) -> tuple[int, int, int | None]:
    """(runAsUser, runAsGroup, fsGroup) of a pod spec, the container's over the pod's."""
    top = pod.get("securityContext") or {}
    own = container.get("securityContext") or {}
    uid = int(own.get("runAsUser", top.get("runAsUser", 65534)))
    gid = int(own.get("runAsGroup", top.get("runAsGroup", uid)))
    fs = top.get("fsGroup")
    return uid, gid, None if fs is None else int(fs)


def choose_guard(uids: Iterable[int], work: Path, python: str = sys.executable,
                 environ: Mapping[str, str] | None = None) -> Guard:
    """The Guard for this run: USER when every uid can run the runner with `python` and
    reach the run's folder `work`."""
    if os.geteuid() != 0:
        return Guard(OWN)
    bad = sorted(uid for uid in set(uids) if not _can_run(uid, work, python, environ))
    if not bad:
        return Guard(USER)
    why = (f"kai dev: the Python that runs the processes ({python}) or the run's folder "
           f"({work}) is out of reach of uid {', '.join(map(str, bad))} (the pods' runAsUser)")
    if _can_drop_caps():
        return Guard(NO_CAPS, (f"{why}: running the processes as root without capabilities "
                               "instead (the version's files stay read-only)",))
    return Guard(UNGUARDED, (f"{why}: running the processes as root instead",
                             "warning: kai dev runs as root: writes into the version's "
                             "files are not prevented"))


def _can_run(uid: int, work: Path, python: str, environ: Mapping[str, str] | None) -> bool:
    code = f"import os, runner.node, runner.entrypoint; os.stat({str(work)!r})"
    try:
        done = subprocess.run([python, "-c", code],
                              user=uid, group=uid, extra_groups=[], cwd="/",
                              env=dict(os.environ if environ is None else environ),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _can_drop_caps() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SETPCAP & 1)
    return False


def pod_user(guard: Guard, pod: Mapping[str, Any], container: Mapping[str, Any]) -> PodUser:
    if guard.mode == USER:
        uid, gid, fs = pod_uid(pod, container)
        return PodUser(uid, gid, () if fs is None else (fs,))
    return PodUser(drop_caps=guard.mode == NO_CAPS)


def _decode_key(key: str, configmap: Mapping[str, Any]) -> bytes | None:
    if key in (configmap.get("data") or {}):
        return str(configmap["data"][key]).encode()
    if key in (configmap.get("binaryData") or {}):
        return base64.b64decode(configmap["binaryData"][key])
    return None


def _items(name: str, source: Mapping[str, Any], content: Mapping[str, bytes],
           what: str) -> dict[str, tuple[bytes, int | None]]:
    """path → (bytes, mode) of a configMap/secret volume: its `items`, or every key."""
    items = source.get("items")
    if not items:
        return {key: (value, None) for key, value in sorted(content.items())}
    out: dict[str, tuple[bytes, int | None]] = {}
    for item in items:
        key, path = str(item["key"]), str(item["path"])
        if key not in content:
            raise PodError(f"Deployment {name}: volume item {key}: {what} has no such key")
        out[path] = (content[key], item.get("mode"))
    return out


def materialise(name: str, pod: Mapping[str, Any], container: Mapping[str, Any],
                configmaps: Mapping[str, Mapping[str, Any]], secret_files: Mapping[str, bytes],
                pod_dir: Path, user: PodUser,
                secrets: Mapping[str, Mapping[str, bytes]] | None = None) -> dict[str, Path]:
    """Write the container's mounted volumes under `pod_dir`; mountPath → local folder.

    A secret volume gets `secrets[its secretName]` when there is one, else the config
    files `secret_files`."""
    volumes = {str(v["name"]): v for v in pod.get("volumes") or ()}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or ():
        vol = volumes.get(str(mount["name"]))
        if vol is None:
            raise PodError(f"Deployment {name}: volumeMount {mount['name']} names no volume")
        local = pod_dir / str(mount["name"])
        if mount.get("subPath"):
            raise PodError(f"Deployment {name}: volumeMount {mount['name']}: kai dev "
                           "cannot mount a subPath")
        read_only = bool(mount.get("readOnly"))
        if "configMap" in vol:
            source = vol["configMap"]
            cm = configmaps.get(str(source["name"]))
            if cm is None:
                raise PodError(f"Deployment {name}: volume {vol['name']}: ConfigMap "
                               f"{source['name']} is not among the rendered objects")
            keys = {k: v for k in [*(cm.get("data") or {}), *(cm.get("binaryData") or {})]
                    if (v := _decode_key(k, cm)) is not None}
            files = _items(name, source, keys, f"ConfigMap {source['name']}")
        elif "secret" in vol:
            secret = str(vol["secret"].get("secretName", ""))
            own = (secrets or {}).get(secret)
            files = _items(name, vol["secret"], secret_files if own is None else own,
                           f"the {'config ' if own is None else ''}Secret {secret}")
        elif "emptyDir" in vol:
            files = {}
        else:
            raise PodError(f"Deployment {name}: volume {vol['name']}: kai dev mounts only "
                           "configMap, secret and emptyDir volumes")
        _write_volume(local, files, read_only, user)
        mounts[str(mount["mountPath"])] = local
    return mounts


def _write_volume(root: Path, files: Mapping[str, tuple[bytes, int | None]], read_only: bool,
                  user: PodUser) -> None:
    root.mkdir(parents=True)
    folders = {root}
    for rel, (content, mode) in files.items():
        path = PurePosixPath(rel)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise PodError(f"volume item path {rel}: not a relative path inside the volume")
        target = root.joinpath(*path.parts)
        for parent in reversed(target.relative_to(root).parents):
            folders.add(root / parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(READ_ONLY_FILE if read_only else (mode or 0o644) | 0o600)
    root.chmod(0o755)
    # root without capabilities is kept out of files it does not own (not their owner,
    # it cannot chmod them back either); a runAsUser process is kept out of root's.
    owner = None
    if os.geteuid() == 0:
        if read_only and user.drop_caps:
            owner = (65534, 65534)
        elif not read_only and user.uid is not None:
            owner = (user.uid, user.gid if user.gid is not None else user.uid)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if owner is not None:
            for entry in folder.iterdir():
                if entry.is_file():
                    os.chown(entry, *owner)
            os.chown(folder, *owner)
        if read_only:
            folder.chmod(READ_ONLY_DIR)


def local_env(env: Mapping[str, str], mounts: Mapping[str, Path]) -> dict[str, str]:
    """`env` with each value that names a mountPath (or a path below it) on its local
    folder; TMPDIR and HOME on the volume mounted at /tmp, when there is one."""
    out = dict(env)
    ordered = sorted(mounts, key=len, reverse=True)
    for key, value in env.items():
        for mount in ordered:
            if value == mount or value.startswith(mount.rstrip("/") + "/"):
                out[key] = str(mounts[mount]) + value[len(mount.rstrip("/")):]
                break
    tmp = mounts.get(contract.TMP_DIR)
    if tmp is not None:
        out.setdefault("TMPDIR", str(tmp))
        out.setdefault("HOME", str(tmp))
    return out


def custom_image_lines(project: Project, objects: Iterable[Mapping[str, Any]]) -> list[str]:
    """One line per Deployment whose image is not the runner image, after the image map."""
    known = runner_names(project.images)
    lines = []
    for obj in objects:
        if obj.get("kind") != "Deployment":
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            image = str(container.get("image", ""))
            if mapped_name(project.images, image) not in known:
                lines.append(f"{obj['metadata']['name']}: image {image} is not the runner "
                             "image; kai dev runs it with this machine's Python environment "
                             "instead")
    return sorted(lines)
