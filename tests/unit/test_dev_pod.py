"""renderer.cli.devpod: a rendered pod's volumes, env paths and image on this machine."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from renderer.cli.devpod import (
    OWN,
    Guard,
    PodError,
    PodUser,
    custom_image_lines,
    local_env,
    materialise,
    pod_uid,
)
from renderer.images import DEFAULT_REGISTRY, default_images
from renderer.project import ImageMapping, Project
from runner import contract

CM = {"kind": "ConfigMap", "metadata": {"name": "v1-files"},
      "data": {"krt.yml": "version: v1\n", "src_2Fa_2Fmain.py": "x = 1\n",
               "left_2Fout.txt": "not mounted"},
      "binaryData": {"data_2Fblob.bin": base64.b64encode(b"\x00\xff").decode()}}


def pod(items: list[dict[str, str]] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    source: dict[str, Any] = {"name": "v1-files", "defaultMode": 292}
    if items is not None:
        source["items"] = items
    spec = {"securityContext": {"runAsUser": 10001, "runAsGroup": 10002, "fsGroup": 10003},
            "volumes": [{"name": "version", "configMap": source},
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "config", "secret": {"secretName": "v1-config",
                                                      "items": [{"key": "CERT",
                                                                 "path": "CERT"}]}}]}
    container = {"volumeMounts": [
        {"name": "version", "mountPath": contract.VERSION_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": contract.TMP_DIR},
        {"name": "config", "mountPath": contract.CONFIG_MOUNT, "readOnly": True}]}
    return spec, container


ITEMS = [{"key": "krt.yml", "path": "krt.yml"},
         {"key": "src_2Fa_2Fmain.py", "path": "src/a/main.py"},
         {"key": "data_2Fblob.bin", "path": "data/blob.bin"}]


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_a_volume_holds_exactly_its_items_read_only(tmp_path: Path) -> None:
    spec, container = pod(ITEMS)
    mounts = materialise("v1-a", spec, container, {"v1-files": CM}, {"CERT": b"pem"},
                         tmp_path, PodUser())
    version = mounts[contract.VERSION_MOUNT]
    assert files_under(version) == {"krt.yml", "src/a/main.py", "data/blob.bin"}  # no out.txt
    assert (version / "data" / "blob.bin").read_bytes() == b"\x00\xff"
    assert stat.S_IMODE((version / "src" / "a" / "main.py").stat().st_mode) == 0o444
    for folder in (version, version / "src", version / "src" / "a"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o555
    assert (mounts[contract.CONFIG_MOUNT] / "CERT").read_bytes() == b"pem"
    tmp = mounts[contract.TMP_DIR]
    (tmp / "scratch").write_text("ok")  # an emptyDir is writable
    for folder in (version / "src" / "a", version / "src", version / "data", version):
        folder.chmod(0o755)


def test_without_items_every_key_is_a_file_of_its_name(tmp_path: Path) -> None:
    spec, container = pod(None)
    mounts = materialise("v1-a", spec, container, {"v1-files": CM}, {"CERT": b"pem"},
                         tmp_path, PodUser())
    assert files_under(mounts[contract.VERSION_MOUNT]) == {
        "krt.yml", "src_2Fa_2Fmain.py", "left_2Fout.txt", "data_2Fblob.bin"}
    mounts[contract.VERSION_MOUNT].chmod(0o755)


@pytest.mark.parametrize(("items", "configmaps", "files", "message"), [
    ([{"key": "nope", "path": "x"}], {"v1-files": CM}, {"CERT": b""},
     "volume item nope: ConfigMap v1-files has no such key"),
    (ITEMS, {}, {"CERT": b""}, "ConfigMap v1-files is not among the rendered objects"),
    (ITEMS, {"v1-files": CM}, {}, "volume item CERT: the config Secret v1-config has no"),
    ([{"key": "krt.yml", "path": "../escape"}], {"v1-files": CM}, {"CERT": b""},
     "volume item path ../escape: not a relative path inside the volume"),
])
def test_what_cannot_be_mounted_gets_one_line(tmp_path: Path, items: list[dict[str, str]],
                                              configmaps: dict[str, Any],
                                              files: dict[str, bytes], message: str) -> None:
    spec, container = pod(items)
    with pytest.raises(PodError, match=message.replace("(", r"\(")):
        materialise("v1-a", spec, container, configmaps, files, tmp_path, PodUser())
    assert not (tmp_path / "escape").exists()


def test_env_paths_on_a_mount_point_at_the_local_folder(tmp_path: Path) -> None:
    mounts = {contract.VERSION_MOUNT: tmp_path / "version", contract.TMP_DIR: tmp_path / "tmp"}
    env = {"KAI_VERSION_DIR": contract.VERSION_MOUNT, "MODEL": "/opt/kai/version/m/a.bin",
           "OTHER": "/opt/kai/versions", "KAI_CONFIG_DIR": contract.CONFIG_MOUNT, "N": "3"}
    out = local_env(env, mounts)
    assert out["KAI_VERSION_DIR"] == str(tmp_path / "version")
    assert out["MODEL"] == str(tmp_path / "version" / "m" / "a.bin")
    assert out["OTHER"] == "/opt/kai/versions"  # a prefix of a name is not the mount
    assert out["KAI_CONFIG_DIR"] == contract.CONFIG_MOUNT  # not mounted: left as it is
    assert out["TMPDIR"] == out["HOME"] == str(tmp_path / "tmp")
    assert out["N"] == "3"


def test_the_pods_user_comes_from_its_security_context() -> None:
    spec, container = pod(ITEMS)
    assert pod_uid(spec, container) == (10001, 10002, 10003)
    assert pod_uid(spec, {"securityContext": {"runAsUser": 7}}) == (7, 10002, 10003)
    assert Guard(OWN).lines == ()


def deployment(name: str, image: str) -> dict[str, Any]:
    return {"kind": "Deployment", "metadata": {"name": name},
            "spec": {"template": {"spec": {"containers": [{"image": image}]}}}}


def test_a_custom_image_gets_one_line_after_the_image_map() -> None:
    objects = [deployment("v1-a", "konstellation/kre-py:1.23.0"),
               deployment("v1-b", "registry.example/own:2"),
               deployment("v1-c", "localhost:5000/konstellation/kre-py:1.23.0"),
               deployment("v1-d", f"{DEFAULT_REGISTRY}/runner-ml:0.1.0")]
    plain = custom_image_lines(Project(name="p", namespace="p"), objects)
    assert plain == [
        "v1-b: image registry.example/own:2 is not the runner image; kai dev runs it with "
        "this machine's Python environment instead",
        "v1-c: image localhost:5000/konstellation/kre-py:1.23.0 is not the runner image; "
        "kai dev runs it with this machine's Python environment instead"]
    mapped = Project(name="p", namespace="p", images=(
        ImageMapping("konstellation/kre-py", "ghcr.io/me/runner", "1"),
        ImageMapping("registry.example/own", "ghcr.io/me/runner", "1")))
    # the map sends both to the runner image (ours): no line; kai's own runner image is
    # not what this project's KRE images become, yet it is the runner all the same
    assert custom_image_lines(mapped, objects) == [plain[1]]


def test_a_gpu_node_on_the_gpu_runner_is_the_runner() -> None:
    """A gpu node's Deployment names the gpu entry's image directly (renderer.images)."""
    project = Project(name="p", namespace="p", images=default_images("ghcr.io/acme"))
    objects = [deployment("v1-gpu", "ghcr.io/acme/runner-gpu:0.1.0"),
               deployment("v1-cpu", "konstellation/kre-py:1.23.0"),
               deployment("v1-own", "ghcr.io/acme/own-gpu:1")]
    assert custom_image_lines(project, objects) == [
        "v1-own: image ghcr.io/acme/own-gpu:1 is not the runner image; kai dev runs it with "
        "this machine's Python environment instead"]


def test_as_root_read_only_files_belong_to_another_user_than_the_process(
        tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("root only: the owner matters when root ignores permission bits")
    spec, container = pod(ITEMS)
    mounts = materialise("v1-a", spec, container, {"v1-files": CM}, {"CERT": b"pem"},
                         tmp_path / "nocaps", PodUser(drop_caps=True))
    assert (mounts[contract.VERSION_MOUNT] / "krt.yml").stat().st_uid not in (0,)
    mounts = materialise("v1-a", spec, container, {"v1-files": CM}, {"CERT": b"pem"},
                         tmp_path / "user", PodUser(10001, 10002))
    assert (mounts[contract.VERSION_MOUNT] / "krt.yml").stat().st_uid == 0
    assert mounts[contract.TMP_DIR].stat().st_uid == 10001  # its /tmp is its own
