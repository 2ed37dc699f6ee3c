"""The image map: which image each process runs, and the map `kai init` writes.

kai.yaml's `images:` is a list of kustomize-style entries `{name, newName, newTag, digest}`;
`name` is an image as krt.yml writes it, without tag. An entry with `gpu: true`
applies only to `gpu: true` nodes. Kustomize cannot tell two containers that name the
same image apart, so:

* an entry without `gpu` is emitted as a kustomize `images:` entry
  (`kustomize_images`), and the Deployments keep the image krt.yml names;
* a gpu node whose image has a `gpu: true` entry gets that entry's `newName:newTag`
  (`@digest` when the entry pins one) written directly into its Deployment
  (`container_image`), as kustomize would have rewritten it.

The default map sends the KRE images to the runner image flavors in one registry,
which the user owns and pushes the flavors to (docs/runner-image.md):
`konstellation/kre-entrypoint` -> REGISTRY/runner, `konstellation/kre-py` ->
REGISTRY/runner-ml, and on a gpu node REGISTRY/runner-gpu, all tagged RUNNER_TAG.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .project import FLAVORS, RUNNER, RUNNER_GPU, RUNNER_ML, RUNNER_TAG, ImageMapping

KRE_ENTRYPOINT = "konstellation/kre-entrypoint"
KRE_PY = "konstellation/kre-py"
KRE_IMAGES = (KRE_ENTRYPOINT, KRE_PY)

# A placeholder nobody can push to: `kai init --registry REGISTRY` names the real one.
DEFAULT_REGISTRY = "registry.example.com/kai"

# The reference grammar of the distribution project (docker/distribution reference.go):
# a host (dot-separated components, an optional port) and lower-case path components.
_HOST_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = re.compile(rf"{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]+)?")
_PATH_PART = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
NAME_MAX = 255  # the longest image name (without tag) a registry accepts


def flavor_image(registry: str, flavor: str) -> str:
    """The image name (no tag) of a runner flavor in `registry`."""
    return f"{registry}/{flavor}"


def default_images(registry: str = DEFAULT_REGISTRY) -> tuple[ImageMapping, ...]:
    """The image map `kai init` writes: KRE images run on the runner flavors in
    `registry`, a gpu node's kre-py on runner-gpu."""
    return (
        ImageMapping(KRE_ENTRYPOINT, flavor_image(registry, RUNNER), RUNNER_TAG),
        ImageMapping(KRE_PY, flavor_image(registry, RUNNER_ML), RUNNER_TAG),
        ImageMapping(KRE_PY, flavor_image(registry, RUNNER_GPU), RUNNER_TAG, gpu=True),
    )


def map_comment(registry: str = DEFAULT_REGISTRY) -> str:
    """The comment `kai init` writes above kai.yaml's `images:` (lines of `# ...`)."""
    lines = [
        "The runner images the KRE images run as (a gpu: true entry: on gpu nodes only).",
        "They live in a registry you own and must push them to: see docs/runner-image.md;",
        "`kai init --registry REGISTRY` writes this map for REGISTRY.",
    ]
    if registry == DEFAULT_REGISTRY:
        lines.append(f"{DEFAULT_REGISTRY} is a placeholder: replace it with your registry.")
    return "".join(f"# {line}\n" for line in lines)


BUILD_COMMENT = (
    "# Version images: a version with a requirements.txt, or too large for a ConfigMap,\n"
    "# runs on REGISTRY/<project>-<version>:<content hash>, built FROM the flavor's image\n"
    "# by `kai build` (docs/version-images.md); the CI workflow builds and pushes them.\n")


def registry_problem(registry: str) -> str | None:
    """What is wrong with a registry reference (`host[:port]/path`), or None."""
    expected = "expected host[:port]/path, e.g. registry.example.com/kai or ghcr.io/acme"
    if not registry:
        return f"is empty; {expected}"
    if "@" in registry:
        return f"must not carry a digest (@...); {expected}"
    host, _, path = registry.partition("/")
    if not path or not _is_host(host):
        return (f"must start with the registry's host (a name with a dot or a port, or "
                f"localhost) followed by a path; {expected}")
    parts = path.split("/")
    if "" in parts:
        return f"has an empty path component (a stray '/'); {expected}"
    if ":" in parts[-1]:
        return f"must not carry a tag (:...); {expected}"
    bad = next((p for p in parts if not _PATH_PART.fullmatch(p)), None)
    if bad is not None:
        return (f"path component {bad!r} must be lower-case letters and digits, separated "
                f"by '.', '_', '__' or '-'; {expected}")
    longest = flavor_image(registry, max(FLAVORS, key=len))
    if len(longest) > NAME_MAX:
        return f"is too long: {longest} has more than {NAME_MAX} characters"
    return None


def _is_host(part: str) -> bool:
    """Is the first component of a reference a registry host (as docker reads it)?"""
    return (("." in part or ":" in part or part == "localhost")
            and _HOST.fullmatch(part) is not None)


def image_name(image: str) -> str:
    """An image reference without its tag and digest: what a map entry's `name` matches."""
    name = image.split("@", 1)[0]
    head, slash, last = name.rpartition("/")
    return f"{head}{slash}{last.split(':', 1)[0]}"


def _replaced(image: str, entry: ImageMapping) -> str:
    """`image` as kustomize rewrites it by `entry`: its name, and its tag and digest
    when the entry has either (`newName:newTag`, `newName@digest`,
    `newName:newTag@digest`); else the image keeps its own tag or digest."""
    if entry.new_tag or entry.digest:
        tag = f":{entry.new_tag}" if entry.new_tag else ""
        digest = f"@{entry.digest}" if entry.digest else ""
        return f"{entry.new_name}{tag}{digest}"
    return entry.new_name + image[len(image_name(image)):]


def container_image(image: str, gpu: bool, images: Iterable[ImageMapping]) -> str:
    """The image a process's Deployment names: for a gpu node whose image has a
    `gpu: true` entry, that entry's image; else `image` as krt.yml names it (kustomize
    rewrites it by `kustomize_images`)."""
    if gpu:
        name = image_name(image)
        for entry in images:
            if entry.gpu and entry.name == name:
                return _replaced(image, entry)
    return image


def kustomize_images(images: Iterable[ImageMapping]) -> list[ImageMapping]:
    """The entries emitted as kustomization.yaml's `images:`: those without `gpu`, by name."""
    return sorted((entry for entry in images if not entry.gpu), key=lambda e: e.name)


def mapped_name(images: Iterable[ImageMapping], image: str) -> str:
    """The image name (no tag or digest) a Deployment's image becomes after kustomize."""
    name = image_name(image)
    return next((e.new_name for e in kustomize_images(images) if e.name == name), name)


def runner_names(images: Iterable[ImageMapping]) -> frozenset[str]:
    """Image names (no tag) that are a runner flavor: where the map sends a KRE image
    (gpu entries too; a KRE image itself when the map names it not), and the flavors
    in the default registry."""
    images = tuple(images)
    gpu = {e.new_name for e in images if e.gpu and e.name in KRE_IMAGES}
    return frozenset({
        *(flavor_image(DEFAULT_REGISTRY, flavor) for flavor in FLAVORS),
        *(mapped_name(images, kre) for kre in KRE_IMAGES),
        *gpu,
    })


def is_kre_image(ref: str) -> bool:
    """Does `ref` name one of the KRE images the image map sends to the runner?"""
    return image_name(ref) in KRE_IMAGES
