# The runner image flavors, built from runner/Dockerfile (one target each).
# From the repository root, into a registry you own:
#
#   REGISTRY=registry.example.com/kai docker buildx bake --push
#
# builds and pushes REGISTRY/runner, REGISTRY/runner-ml and REGISTRY/runner-gpu, tagged
# TAG. One flavor: `docker buildx bake runner-ml`; docs/runner-image.md has the rest.

# The registry the images are pushed to: one you own (kai init --registry names the same).
variable "REGISTRY" {
  default = "registry.example.com/kai"
}

# RUNNER_TAG in renderer/project.py, the package version; bump them together.
variable "TAG" {
  default = "0.1.0"
}

group "default" {
  targets = ["runner", "runner-ml", "runner-gpu"]
}

target "_flavor" {
  context    = "."
  dockerfile = "runner/Dockerfile"
}

target "runner" {
  inherits  = ["_flavor"]
  target    = "runner"
  tags      = ["${REGISTRY}/runner:${TAG}"]
  platforms = ["linux/amd64", "linux/arm64"]
}

# x86_64 only: the lock is resolved for it (runner/locks/lock.py)
target "runner-ml" {
  inherits  = ["_flavor"]
  target    = "runner-ml"
  tags      = ["${REGISTRY}/runner-ml:${TAG}"]
  platforms = ["linux/amd64"]
}

# x86_64 only: PyPI's CUDA build of torch, on a CUDA base
target "runner-gpu" {
  inherits  = ["_flavor"]
  target    = "runner-gpu"
  tags      = ["${REGISTRY}/runner-gpu:${TAG}"]
  platforms = ["linux/amd64"]
}
