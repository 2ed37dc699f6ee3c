"""Version images: when a version needs one, its content hash and tag, and its build context.

A version's files normally travel in a ConfigMap. A version that has a `requirements.txt`
at its top (among the files that ship), or whose files are too large for a ConfigMap,
needs an image of its own instead: every process of the version (entrypoint and nodes)
runs `<registry>/<project>-<version>:<hash>`, with the requirements installed and the
files at /opt/kai/version (runner.contract.VERSION_MOUNT), where the ConfigMap would have
been mounted. kai.yaml's `build:` says where those images go (renderer.project.Build);
without it such a version is refused.

The tag is content-addressed: the hash is a sha256 over the Dockerfile template's version,
the base image reference, the flavor, the requirements' bytes and every shipped file's path
and content, truncated as the ConfigMap's hash is. The same sources always give the same
tag, so renders stay deterministic; rendering never needs the image to exist. `kai build`
(renderer.cli.build) writes the build context, a pure function of the same inputs, and
runs a container tool on it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from runner import contract

from .atomic import stage_dir
from .images import KRE_IMAGES, is_kre_image
from .krt import Version
from .plan import (
    CONFIGMAP_LIMIT,
    HASH_LEN,
    RUN_AS,
    FilesTooLarge,
    PlanError,
    amount,
    configmap_size,
    is_running,
    read_files,
    selected_files,
)
from .project import Build, Project
from .requirements import REQUIREMENTS_FILE
from .versionfiles import Selected

REQUIREMENTS = REQUIREMENTS_FILE  # at the top of the version (renderer.requirements)
TEMPLATE_VERSION = "1"  # of `dockerfile`: bump it when its output changes, and every tag does
CONSTRAINTS = "/opt/kai/constraints.txt"  # the lock each runner flavor image ships
MAX_IMAGE_FILES = 1024**3  # bytes of version files an image may carry
DOCKERFILE = "Dockerfile"
CONTEXT_FILES = "version"  # the folder of the context that holds the version's files
FILE_MODE, DIR_MODE = 0o644, 0o755
MTIME = 315532800  # 1980-01-01T00:00:00Z: every file and folder of a context
HEADER = "# Written by `kai build`"
TOOLS = ("docker", "buildah", "podman")  # in the order `kai build` looks for them
_CHUNK = 1024 * 1024


class NeedsBuild(PlanError):
    """A version needs an image of its own, and kai.yaml has no `build:`."""


class BuildError(Exception):
    """A build context cannot be written as asked; a one-line message."""


@dataclass(frozen=True)
class ImageNeed:
    """Why a version runs on an image of its own, and how that image is built."""

    version: str
    reason: str  # "it has a requirements.txt", or its size against a ConfigMap's
    build: Build  # the project's settings with the version's over them
    files: tuple[tuple[str, Path], ...]  # what ships: (version-relative path, file), sorted

    @property
    def requirements(self) -> bool:
        return any(rel == REQUIREMENTS for rel, _ in self.files)


@dataclass(frozen=True)
class VersionImage:
    """A version's image: what it is built from and its content-addressed tag."""

    project: str
    need: ImageNeed
    digest: str  # the content hash, HASH_LEN hex digits

    @property
    def version(self) -> str:
        return self.need.version

    @property
    def repository(self) -> str:
        """`<registry>/<project>-<version>`."""
        return f"{self.need.build.registry}/{self.project}-{self.version}"

    @property
    def tag(self) -> str:
        """`<registry>/<project>-<version>:<hash>`, what every process of the version runs."""
        return f"{self.repository}:{self.digest}"


# --- when a version needs an image ------------------------------------------------------


def image_reason(selected: Selected) -> str | None:
    """Why a version that ships `selected` needs an image, or None when a ConfigMap does."""
    if any(rel == REQUIREMENTS for rel, _ in selected):
        return f"it has a {REQUIREMENTS}"
    try:
        read_files(selected)
    except FilesTooLarge as exc:
        return str(exc)
    return None


def size_problem(selected: Selected) -> str | None:
    """What is wrong when the files take more than any version may ship, or None."""
    size = sum(path.stat().st_size for _, path in selected)
    if size <= MAX_IMAGE_FILES:
        return None
    return (f"its files take {amount(size)}, more than the {amount(MAX_IMAGE_FILES)} a "
            "version may ship; keep large data out of it with a .kaiignore and fetch it at "
            "run time instead")


def image_need(project: Project, version: Version,
               selected: Selected | None = None) -> ImageNeed | None:
    """Why and how the version (shipping `selected`, by default its shipped files) runs on
    an image of its own; None when its files travel in a ConfigMap.

    Raises PlanError when it needs one and cannot have it: kai.yaml has no `build:`
    (NeedsBuild), a process names a custom image, or the files are too large for any.
    """
    if selected is None:
        selected = selected_files(version)
    reason = image_reason(selected)
    if reason is None:
        return None
    v = version.name
    build = project.build_of(v)
    if build is None:
        raise NeedsBuild(
            f"version {v} needs an image of its own, since {reason}, but kai.yaml has no "
            "`build:`; add `build: {registry: REGISTRY}` to kai.yaml, with a registry you "
            "push to (see docs/version-images.md)")
    custom = [(f"node {n.name}", n.image) for n in sorted(version.nodes, key=lambda n: n.name)
              if not is_kre_image(n.image)]
    if not is_kre_image(version.entrypoint_image):
        custom.insert(0, ("the entrypoint", version.entrypoint_image))
    if custom:
        who, image = custom[0]
        raise PlanError(
            f"version {v} runs every process on an image kai builds ({reason}), but {who} "
            f"names its own image {image}; give it a KRE image ({', '.join(KRE_IMAGES)}), "
            "or drop what makes the version need an image and bake it into that image")
    too_large = size_problem(selected)
    if too_large:
        raise PlanError(f"version {v}: {too_large}")
    return ImageNeed(v, reason, build, tuple(selected))


def version_image(project: Project, version: Version,
                  selected: Selected | None = None) -> VersionImage | None:
    """The version's image with its tag, or None when it needs none (see image_need)."""
    need = image_need(project, version, selected)
    if need is None:
        return None
    return VersionImage(project.name, need, image_digest(need, file_digests(need.files)))


# --- the content hash -------------------------------------------------------------------


def file_digests(files: Iterable[tuple[str, Path]]) -> dict[str, bytes]:
    """The sha256 of each file's content, by version-relative path (read in chunks)."""
    out: dict[str, bytes] = {}
    for rel, path in files:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        out[rel] = h.digest()
    return out


def image_digest(need: ImageNeed, digests: Mapping[str, bytes]) -> str:
    """The content hash of a version image: the Dockerfile template's version, the base
    image, the flavor, the requirements and each shipped file's path and content (given
    as `digests`, from file_digests), each field length-prefixed so none can run into
    the next."""
    h = hashlib.sha256()

    def field(name: str, value: bytes) -> None:
        h.update(name.encode() + b"\0" + len(value).to_bytes(8, "big") + value)

    field("template", TEMPLATE_VERSION.encode())
    field("base", need.build.base_image.encode())
    field("flavor", need.build.flavor.encode())
    field("requirements", digests.get(REQUIREMENTS, b""))
    for rel in sorted(digests):
        field("file", rel.encode("utf-8", "surrogateescape") + b"\0" + digests[rel])
    return h.hexdigest()[:HASH_LEN]


# --- the build context ------------------------------------------------------------------


def dockerfile(image: VersionImage) -> str:
    """The Dockerfile of the version image (template TEMPLATE_VERSION).

    FROM the base; the version's files copied to /opt/kai/version (owned by root, files
    0644 and folders 0755 from the context, so uid 10001 reads them and cannot change
    them); the requirements installed with the base's lock as constraints, so they can
    never move the runner's own pins; the runner's user at the end.
    """
    need = image.need
    lines = [
        f"{HEADER} for version {image.version} of project {image.project} "
        f"(Dockerfile template {TEMPLATE_VERSION}).",
        f"# The image is {image.repository}, tagged with a hash of this context.",
        f"FROM {need.build.base_image}",
    ]
    if need.requirements:
        lines.append("USER 0")
    lines.append(f"COPY {CONTEXT_FILES}/ {contract.VERSION_MOUNT}/")
    if need.requirements:
        lines.append(f"RUN cd {contract.VERSION_MOUNT} && pip install --no-cache-dir "
                     f"-c {CONSTRAINTS} -r {REQUIREMENTS}")
    lines.append(f"USER {RUN_AS}")
    return "\n".join(lines) + "\n"


def write_context(image: VersionImage, target: Path) -> Path:
    """Write the image's build context into the folder `target`, all or nothing.

    Exactly `Dockerfile` and `version/<every shipped file>`: no .dockerignore is needed,
    and the context is byte for byte the same for the same inputs (files 0644, folders
    0755, every time stamp MTIME). `target` must be missing, empty or a context written
    before (which is replaced). Raises BuildError otherwise, or when the version's files
    change while they are copied.
    """
    target = Path(target).absolute()
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise BuildError(f"{target} is not a folder; name a folder for the build context")
    if target.is_dir() and any(target.iterdir()) and not _is_context(target):
        raise BuildError(f"{target} is not empty and holds no build context kai wrote; "
                         "name an empty or new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-{os.getpid()}-",
                                    dir=target.parent))
    try:
        copied = _fill_context(image, staging)
        if image_digest(image.need, copied) != image.digest:
            raise BuildError(f"the files of version {image.version} changed while kai build "
                             "copied them; run it again")
        _fix_times(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with stage_dir(target, staging) as staged:
        staged.swap()
    return target


def _is_context(folder: Path) -> bool:
    try:
        with open(folder / DOCKERFILE, "rb") as f:
            return f.read(len(HEADER)) == HEADER.encode()
    except OSError:
        return False


def _fill_context(image: VersionImage, root: Path) -> dict[str, bytes]:
    """Write the context into `root`; the sha256 of each version file as copied."""
    _write(root / DOCKERFILE, dockerfile(image).encode())
    files = root / CONTEXT_FILES
    os.mkdir(files, DIR_MODE)
    digests: dict[str, bytes] = {}
    for rel, source in image.need.files:
        out = files / rel
        for parent in reversed(out.relative_to(root).parents[:-1]):
            folder = root / parent
            if not folder.is_dir():
                os.mkdir(folder, DIR_MODE)
        h = hashlib.sha256()
        with open(source, "rb") as src, open(out, "xb") as dst:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                dst.write(chunk)
        digests[rel] = h.digest()
    return digests


def _write(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)


def _fix_times(root: Path) -> None:
    """Modes and time stamps fixed on everything below `root` (children first)."""
    for folder, dirs, names in os.walk(root, topdown=False):
        for name in names:
            path = os.path.join(folder, name)
            os.chmod(path, FILE_MODE)
            os.utime(path, (MTIME, MTIME))
        for name in dirs:
            path = os.path.join(folder, name)
            os.chmod(path, DIR_MODE)
            os.utime(path, (MTIME, MTIME))
    os.chmod(root, DIR_MODE)
    os.utime(root, (MTIME, MTIME))


# --- building it ------------------------------------------------------------------------


def find_tool(path: str | None = None) -> str | None:
    """The first of docker, buildah, podman on `path` (default: $PATH), or None."""
    return next((tool for tool in TOOLS if shutil.which(tool, path=path)), None)


def build_commands(tool: str, image: VersionImage, context: Path,
                   push: bool) -> list[list[str]]:
    """The commands that build (and with `push`, push) the image with `tool`."""
    build = {"docker": ["docker", "build"], "buildah": ["buildah", "bud"],
             "podman": ["podman", "build"]}[tool]
    commands = [[*build, "-t", image.tag, os.fspath(context)]]
    if push:
        commands.append([tool, "push", image.tag])
    return commands


def no_image_note(selected: Selected) -> str:
    """Why a version that ships `selected` needs no image (image_reason said None)."""
    size = configmap_size(read_files(selected))
    return (f"it has no {REQUIREMENTS} and its files fit in a ConfigMap ({amount(size)} of "
            f"{amount(CONFIGMAP_LIMIT)})")


def rendered_images(project: Project, versions: Mapping[str, Version]) -> list[VersionImage]:
    """The version images a render of `project` names: those of its started and published
    versions (loaded in `versions`) that need one, by version name."""
    out = []
    for name in sorted(project.versions):
        version = versions.get(name)
        if version is not None and is_running(project.state_of(name)):
            image = version_image(project, version)
            if image is not None:
                out.append(image)
    return out
