"""renderer.images: which image a process runs, what kustomize gets, the default map."""

from __future__ import annotations

import pytest

from renderer.images import (
    DEFAULT_REGISTRY,
    FLAVORS,
    KRE_ENTRYPOINT,
    KRE_PY,
    container_image,
    default_images,
    flavor_image,
    image_name,
    kustomize_images,
    map_comment,
    mapped_name,
    registry_problem,
    runner_names,
)
from renderer.project import RUNNER_TAG, ImageMapping

MAP = default_images("ghcr.io/acme")
KRE_PY_TAGGED = "konstellation/kre-py:1.23.0"


def test_the_default_map_sends_each_kre_image_to_its_flavor() -> None:
    assert FLAVORS == ("runner", "runner-ml", "runner-gpu")
    assert default_images() == (
        ImageMapping(KRE_ENTRYPOINT, "registry.example.com/kai/runner", RUNNER_TAG),
        ImageMapping(KRE_PY, "registry.example.com/kai/runner-ml", RUNNER_TAG),
        ImageMapping(KRE_PY, "registry.example.com/kai/runner-gpu", RUNNER_TAG, gpu=True),
    )
    assert DEFAULT_REGISTRY == "registry.example.com/kai"
    assert [m.new_name for m in MAP] == [flavor_image("ghcr.io/acme", f) for f in FLAVORS]


def test_a_cpu_node_keeps_the_krt_image_for_kustomize_to_rewrite() -> None:
    assert container_image(KRE_PY_TAGGED, False, MAP) == KRE_PY_TAGGED


def test_a_gpu_node_names_the_gpu_entry_directly() -> None:
    assert container_image(KRE_PY_TAGGED, True, MAP) == f"ghcr.io/acme/runner-gpu:{RUNNER_TAG}"
    assert container_image("konstellation/kre-py", True, MAP) == (
        f"ghcr.io/acme/runner-gpu:{RUNNER_TAG}")  # no tag in krt.yml: the same entry
    digest = "konstellation/kre-py@sha256:" + "a" * 64
    assert container_image(digest, True, MAP) == f"ghcr.io/acme/runner-gpu:{RUNNER_TAG}"


def test_a_gpu_entry_without_a_tag_keeps_the_images_own_tag_or_digest() -> None:
    images = (ImageMapping(KRE_PY, "ghcr.io/acme/runner-gpu", gpu=True),)
    assert container_image(KRE_PY_TAGGED, True, images) == "ghcr.io/acme/runner-gpu:1.23.0"
    digest = "@sha256:" + "b" * 64
    assert container_image(KRE_PY + digest, True, images) == "ghcr.io/acme/runner-gpu" + digest
    assert container_image(KRE_PY, True, images) == "ghcr.io/acme/runner-gpu"


def test_a_gpu_entry_with_a_digest_pins_the_image_as_kustomize_would() -> None:
    """`newName@digest` (the image's own tag goes, as kustomize drops it), or
    `newName:newTag@digest` with a tag; tests/integration/test_rendered_valid.py checks
    these against kustomize itself."""
    pin = "sha256:" + "c" * 64
    digest_only = (ImageMapping(KRE_PY, "ghcr.io/acme/runner-gpu", gpu=True, digest=pin),)
    both = (ImageMapping(KRE_PY, "ghcr.io/acme/runner-gpu", "0.2.0", gpu=True, digest=pin),)
    own = "@sha256:" + "d" * 64
    for image in (KRE_PY, KRE_PY_TAGGED, KRE_PY + own, f"{KRE_PY_TAGGED}{own}"):
        assert container_image(image, True, digest_only) == f"ghcr.io/acme/runner-gpu@{pin}"
        assert container_image(image, True, both) == f"ghcr.io/acme/runner-gpu:0.2.0@{pin}"
        assert container_image(image, False, both) == image  # cpu nodes: kustomize's job


def test_a_gpu_node_without_a_gpu_entry_keeps_the_krt_image() -> None:
    cpu_only = tuple(m for m in MAP if not m.gpu)
    assert container_image(KRE_PY_TAGGED, True, cpu_only) == KRE_PY_TAGGED
    # kustomize then sends it where the cpu entry says
    assert mapped_name(cpu_only, KRE_PY_TAGGED) == "ghcr.io/acme/runner-ml"
    assert container_image(KRE_PY_TAGGED, True, ()) == KRE_PY_TAGGED


def test_the_entrypoint_is_never_a_gpu_process() -> None:
    image = "konstellation/kre-entrypoint:1.6.0"
    assert container_image(image, False, MAP) == image
    gpu_entry = (*MAP, ImageMapping(KRE_ENTRYPOINT, "ghcr.io/acme/elsewhere", "1", gpu=True))
    assert container_image(image, False, gpu_entry) == image


@pytest.mark.parametrize("image", [
    "ghcr.io/acme/custom:2",
    "localhost:5000/konstellation/kre-py:1.23.0",  # another registry's kre-py: not ours
    "konstellation/kre-py-extra:1",
    "konstellation/kre-go:1.0",
])
def test_a_custom_image_is_untouched(image: str) -> None:
    assert container_image(image, True, MAP) == image
    assert container_image(image, False, MAP) == image
    assert mapped_name(MAP, image) == image_name(image)


def test_image_name_drops_tag_and_digest_but_keeps_a_port() -> None:
    assert image_name(KRE_PY_TAGGED) == KRE_PY
    assert image_name("localhost:5000/a/b:1") == "localhost:5000/a/b"
    assert image_name("localhost:5000/a/b") == "localhost:5000/a/b"
    assert image_name("a/b@sha256:" + "c" * 64) == "a/b"
    assert image_name("a/b:1@sha256:" + "c" * 64) == "a/b"


def test_kustomize_gets_only_the_entries_without_gpu_sorted_by_name() -> None:
    images = (
        ImageMapping("z/last", "r/z", "1"),
        ImageMapping(KRE_PY, "r/gpu", "1", gpu=True),
        ImageMapping(KRE_PY, "r/ml", "1"),
        ImageMapping("a/first", "r/a"),
    )
    assert kustomize_images(images) == [images[3], images[2], images[0]]
    assert kustomize_images(reversed(images)) == kustomize_images(images)
    assert [m.new_name for m in kustomize_images(MAP)] == [
        "ghcr.io/acme/runner", "ghcr.io/acme/runner-ml"]


def test_a_gpu_entry_is_not_what_kustomize_makes_of_an_image() -> None:
    gpu_only = (ImageMapping(KRE_PY, "ghcr.io/acme/runner-gpu", "1", gpu=True),)
    assert mapped_name(gpu_only, KRE_PY_TAGGED) == KRE_PY


def test_runner_names_are_the_flavors_the_map_sends_kre_images_to() -> None:
    names = runner_names(MAP)
    assert {"ghcr.io/acme/runner", "ghcr.io/acme/runner-ml", "ghcr.io/acme/runner-gpu"} <= names
    assert {flavor_image(DEFAULT_REGISTRY, f) for f in FLAVORS} <= names
    assert "ghcr.io/acme/custom" not in names
    assert KRE_PY not in names  # mapped: kre-py itself is not what runs
    assert KRE_PY in runner_names(())  # unmapped, it stays as it is


@pytest.mark.parametrize("registry", [
    "registry.example.com/kai", "ghcr.io/acme", "localhost:5000/kai", "localhost/kai",
    "10.0.0.1:5000/team/ml", "Registry.Example.COM/kai", "quay.io/a_b/c-d.e__f",
    "docker.io/acme",
])
def test_a_registry_reference_is_host_port_and_path(registry: str) -> None:
    assert registry_problem(registry) is None


@pytest.mark.parametrize(("registry", "start"), [
    ("", "is empty"),
    ("acme", "must start with the registry's host"),
    ("acme/kai", "must start with the registry's host"),
    ("ghcr.io", "must start with the registry's host"),
    ("ghcr.io/", "must start with the registry's host"),
    ("ghcr.io/acme/", "has an empty path component"),
    ("ghcr.io//acme", "has an empty path component"),
    ("ghcr.io/Acme", "path component 'Acme' must be lower-case"),
    ("ghcr.io/acme/runner:1", "must not carry a tag"),
    ("ghcr.io/acme@sha256:" + "a" * 64, "must not carry a digest"),
    ("https://ghcr.io/acme", "must start with the registry's host"),
    ("ghcr.io/ac me", "path component 'ac me' must be lower-case"),
    ("-bad.io/acme", "must start with the registry's host"),
    ("ghcr.io/-acme", "path component '-acme' must be lower-case"),
    ("ghcr.io/" + "a" * 250, "is too long"),
])
def test_a_bad_registry_gets_one_line(registry: str, start: str) -> None:
    problem = registry_problem(registry)
    assert problem is not None and problem.startswith(start), problem
    assert "\n" not in problem


def test_the_map_comment_names_the_placeholder_only_when_it_is_used() -> None:
    placeholder = map_comment()
    assert "registry.example.com/kai is a placeholder" in placeholder
    assert "docs/runner-image.md" in placeholder and "kai init --registry" in placeholder
    own = map_comment("ghcr.io/acme")
    assert "placeholder" not in own and "you own" in own
    for text in (placeholder, own):
        assert text.endswith("\n")
        assert all(line.startswith("# ") for line in text.splitlines())
