"""KAI renderer: krt.yml validation, desired state in git, Kubernetes YAML for Argo CD and Flux."""

__version__ = "0.1.0"
