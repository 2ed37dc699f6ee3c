"""One version that uses every cluster setting at once, through the real CLI.

kai.yaml sets per-node resources, GPU settings, scheduling fields, a node with 3
replicas, NATS credentials and a private CA from Secrets, egress rules, the metrics and
ingress namespaces, a PodMonitor and a pinned digest; `kai render` writes the tree, and
every object passes `kubernetes-validate --strict`, `kubectl kustomize` builds it, and the
PodMonitor's required fields are checked.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from gitops_helpers import kai, rendered_files, validate_strict

from renderer import checks
from renderer.atomic import read_tree
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.integration

DIGEST = "sha256:" + "ab" * 32
SETTINGS = """\
gpu:
  resource: nvidia.com/gpu
  nodeSelector: {konstellation.io/gpu: "true"}
serviceAccountName: kai-runner
imagePullSecrets: [registry-credentials]
priorityClassName: kai-normal
network:
  egress:
    - {cidr: 0.0.0.0/0, except: [10.0.0.0/8], ports: [{port: 443}]}
    - namespace: feast
      podSelector: {matchLabels: {app: feast-online}}
      ports: [{port: 6566}]
  metrics: {namespace: monitoring}
  ingressFrom: {namespace: ingress-nginx}
monitoring:
  podMonitor: true
  labels: {release: kube-prometheus-stack}
"""
GPU_NODE = """\
  - name: inference
    image: konstellation/kre-py:1.23.0
    src: src/inference/main.py
    gpu: true
    resources: {requests: {cpu: "1", memory: 2Gi}, limits: {cpu: "2", memory: 4Gi}}
"""


def _repo(tmp_path: Path) -> Path:
    version = tmp_path / "greeter"
    shutil.copytree(EXAMPLES / "greeter", version)
    krt = version / "krt.yml"
    text = krt.read_text()
    old = ("  - name: inference\n    image: konstellation/kre-py:1.23.0\n"
           "    src: src/inference/main.py\n")
    assert old in text
    krt.write_text(text.replace(old, GPU_NODE))
    repo = tmp_path / "repo"
    kai("init", str(repo), "--project", "demo", "--namespace", "kai-demo",
        "--registry", "registry.example.com/acme")
    kai("add", str(version), "--repo", str(repo))
    kai("start", "greeter-v1", "--repo", str(repo))
    kai("publish", "greeter-v1", "--repo", str(repo))
    project = repo / "kai.yaml"
    text = project.read_text()
    text = text.replace("  url: nats://nats.kai-system.svc:4222\n",
                        "  url: tls://nats.kai-system.svc:4222\n  namespace: kai-system\n"
                        "  auth: {secret: nats-auth}\n  tls: {caSecret: nats-ca}\n")
    text = text.replace("  newName: registry.example.com/acme/runner-ml\n  newTag: 0.1.0\n",
                        "  newName: registry.example.com/acme/runner-ml\n  newTag: 0.1.0\n"
                        f"  digest: {DIGEST}\n", 1)
    text = text.replace("versions:\n", SETTINGS + "versions:\n")
    text = text.replace("    state: published\n", (
        "    state: published\n"
        "    nodes:\n"
        "      etl: {replicas: 3, tmpSize: 1Gi, resources: {limits: {memory: 1Gi}}}\n"
        "    entrypoint: {resources: {requests: {cpu: 200m}}}\n"
        "    network:\n"
        "      egress: [{podSelector: {matchLabels: {app: redis}}, ports: [{port: 6379}]}]\n"))
    project.write_text(text)
    kai("render", "--repo", str(repo))
    return repo


def test_every_cluster_setting_renders_valid(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    target = repo / "rendered" / "demo"
    files = rendered_files(target)
    names = {Path(f).name for f in files}
    assert {"poddisruptionbudget-greeter-v1-etl.yaml", "podmonitor-greeter-v1.yaml",
            "networkpolicy-demo-egress.yaml", "networkpolicy-greeter-v1-egress.yaml",
            "networkpolicy-demo-metrics-ingress.yaml"} <= names

    validate_strict(files, "1.35", may_warn=("podmonitor-",))
    tree = read_tree(target)
    assert checks.check_files(tree, "1.35") == []  # the PodMonitor against its CRD, too

    monitor = yaml.safe_load(tree["greeter-v1/podmonitor-greeter-v1.yaml"])
    broken = {**monitor, "spec": {k: v for k, v in monitor["spec"].items() if k != "selector"}}
    assert checks.check_object("podmonitor.yaml", broken, "1.35")  # required fields checked

    if shutil.which("kubectl"):
        built = subprocess.run(["kubectl", "kustomize", str(target)], capture_output=True,
                               text=True, check=True, timeout=60).stdout
        objects = [o for o in yaml.safe_load_all(built) if o]
        by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
        etl = by_name[("Deployment", "greeter-v1-etl")]["spec"]
        assert etl["replicas"] == 3
        pod = etl["template"]["spec"]
        assert pod["containers"][0]["image"] == \
            f"registry.example.com/acme/runner-ml:0.1.0@{DIGEST}"
        assert pod["serviceAccountName"] == "kai-runner"
        assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["nats-auth"]["secret"]["secretName"] == "nats-auth"
        assert volumes["nats-ca"]["secret"]["secretName"] == "nats-ca"
        gpu = by_name[("Deployment", "greeter-v1-inference")]["spec"]
        assert gpu["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
        limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}
        assert gpu["template"]["spec"]["nodeSelector"] == {"konstellation.io/gpu": "true"}
        assert ("PodMonitor", "greeter-v1") in by_name
    # the credentials stay in the cluster: the tree names the Secrets, it holds none
    kinds = {yaml.safe_load(data)["kind"] for path, data in tree.items()
             if path != "kustomization.yaml"}
    assert "Secret" not in kinds
