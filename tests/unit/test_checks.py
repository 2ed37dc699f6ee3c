"""renderer.checks: strict schema validation and the required fields of CRD kinds."""

from __future__ import annotations

import copy
import shutil
from typing import Any

import pytest

from renderer import checks
from renderer.checks import SchemaError, check_files, check_object, schema_dir, validator_for
from renderer.output import dump

K8S = "1.35"
FILE = "rendered/demo/v1/deployment-x.yaml"


def deployment() -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "x"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x", "namespace": "demo", "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": "img:1",
                                         "ports": [{"containerPort": 9000}]}]},
            },
        },
    }


def test_valid_object_passes() -> None:
    assert check_object(FILE, deployment(), K8S) == []


def test_unknown_field_is_a_clear_problem() -> None:
    obj = deployment()
    obj["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    (problem,) = check_object(FILE, obj, K8S)
    assert problem.file == FILE
    assert problem.path == "spec.template.spec.containers[0]"
    assert "'imagePullPolcy' was unexpected" in problem.message
    assert str(problem).startswith(f"{FILE}: spec.template.spec.containers[0]: ")


def test_wrong_type_and_missing_required() -> None:
    obj = deployment()
    obj["spec"]["replicas"] = "two"
    del obj["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    problems = check_object(FILE, obj, K8S)
    assert {p.path for p in problems} == {
        "spec.replicas", "spec.template.spec.containers[0].ports[0]"}
    assert any("'containerPort' is a required property" in p.message for p in problems)


def test_names_and_label_values_are_checked() -> None:
    obj = deployment()
    obj["metadata"]["name"] = "Not_Valid"
    obj["metadata"]["labels"] = {"a": "x" * 64}
    paths = {p.path for p in check_object(FILE, obj, K8S)}
    assert {"metadata.name", "metadata.labels.a"} <= paths


def test_unknown_kind_and_version() -> None:
    obj = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    (problem,) = check_object("f.yaml", obj, K8S)
    assert "no schema for Widget example.com/v1" in problem.message
    (problem,) = check_object("f.yaml", deployment(), "1.99")
    assert "no schemas for Kubernetes 1.99" in problem.message


def test_schema_dir_resolution() -> None:
    assert schema_dir("1.35").name == "v1.35.0-local-strict"
    assert schema_dir("v1.35.2").name == "v1.35.0-local-strict"
    for bad in ("1.0", "latest"):
        with pytest.raises(SchemaError):
            schema_dir(bad)


def test_validators_are_cached() -> None:
    first = validator_for(K8S, "Deployment", "apps/v1")
    assert first is not None and validator_for(K8S, "Deployment", "apps/v1") is first
    assert validator_for(K8S, "Ingress", "networking.k8s.io/v1") is not None
    assert validator_for(K8S, "Nothing", "v1") is None
    assert checks.schema_file_name("NetworkPolicy", "networking.k8s.io/v1") == \
        "networkpolicy-networking-v1.json"
    assert checks.schema_file_name("Service", "v1") == "service-v1.json"


APPLICATION = {
    "apiVersion": "argoproj.io/v1alpha1",
    "kind": "Application",
    "metadata": {"name": "demo", "namespace": "argocd"},
    "spec": {"project": "default",
             "source": {"repoURL": "https://x.example/r.git", "path": "rendered/demo"},
             "destination": {"server": "https://kubernetes.default.svc", "namespace": "demo"}},
}


def test_custom_kinds_required_fields() -> None:
    assert check_object("app.yaml", APPLICATION, K8S) == []
    broken = copy.deepcopy(APPLICATION)
    del broken["spec"]["source"]["repoURL"]
    del broken["spec"]["destination"]["server"]
    problems = check_object("app.yaml", broken, K8S)
    assert {p.path for p in problems} == {"spec.source.repoURL", "spec.destination"}
    kust = {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "demo"},
            "spec": {"interval": "5m", "path": "./x", "prune": "yes",
                     "sourceRef": {"kind": "GitRepository"}}}
    assert {p.path for p in check_object("k.yaml", kust, K8S)} == {
        "spec.prune", "spec.sourceRef.name"}
    es = {"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
          "metadata": {"name": "s"},
          "spec": {"secretStoreRef": {"name": "vault"}, "target": {"name": "s"},
                   "data": [{"secretKey": "A", "remoteRef": {}}]}}
    (problem,) = check_object("es.yaml", es, K8S)
    assert problem.path == "spec.data[0].remoteRef.key"
    sealed = {"apiVersion": "bitnami.com/v1alpha1", "kind": "SealedSecret",
              "metadata": {"name": "s"}, "spec": {}}
    assert [p.path for p in check_object("ss.yaml", sealed, K8S)] == ["spec.encryptedData"]


def test_application_sync_options_are_name_value_strings() -> None:
    app: dict[str, Any] = copy.deepcopy(APPLICATION)
    app["spec"]["syncPolicy"] = {"syncOptions": ["ServerSideApply=true", "CreateNamespace=false"]}
    assert check_object("app.yaml", app, K8S) == []
    app["spec"]["syncPolicy"]["syncOptions"] = ["ServerSideApply", {"a": 1}, "PruneLast=true"]
    assert [str(p) for p in check_object("app.yaml", app, K8S)] == [
        "app.yaml: spec.syncPolicy.syncOptions[0]: 'ServerSideApply' is not a sync option "
        "(Name=value)",
        "app.yaml: spec.syncPolicy.syncOptions[1]: {'a': 1} is not a sync option (Name=value)",
    ]
    app["spec"]["syncPolicy"]["syncOptions"] = "ServerSideApply=true"
    assert [p.path for p in check_object("app.yaml", app, K8S)] == ["spec.syncPolicy.syncOptions"]


def test_check_files_parses_and_names_problems() -> None:
    obj = deployment()
    obj["spec"]["bogus"] = True
    files = {"v1/deployment-x.yaml": dump(obj), "kustomization.yaml": b"resources: []\n",
             "v1/broken.yaml": b"a: [\n"}
    problems = check_files(files, K8S, prefix="rendered/demo/")
    files_with_problems = sorted({p.file for p in problems})
    assert files_with_problems == ["rendered/demo/v1/broken.yaml",
                                   "rendered/demo/v1/deployment-x.yaml"]


@pytest.mark.skipif(shutil.which("kubeconform") is None, reason="kubeconform is not on PATH")
def test_kubeconform_finds_unknown_field() -> None:
    obj = deployment()
    obj["spec"]["bogus"] = True
    assert checks.kubeconform({"a.yaml": dump(deployment())}, K8S) == []
    problems = checks.kubeconform({"a.yaml": dump(obj)}, K8S)
    assert problems and problems[0].file == "a.yaml"
