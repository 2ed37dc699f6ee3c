"""renderer.projectfile: kai.yaml is validated, mapped onto the model and written back stably."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from renderer.problems import InputError
from renderer.project import (
    DEFAULT_KUBERNETES_VERSION,
    ConfigSource,
    ImageMapping,
    Ingress,
    Nats,
    Project,
    Resources,
    VersionState,
    default_images,
)
from renderer.projectfile import (
    bundled_kubernetes_versions,
    dump_project,
    load_project,
    save_project,
)

FULL = """\
project: demo            # DNS-1123 label
namespace: kai-demo
kubernetesVersion: "1.34"
nats: {url: "nats://nats.kai-system.svc:4222", namespace: kai-system, storage: memory}
ingress:
  host: greeter.example.com
  className: nginx
  tlsSecret: greeter-tls
  annotations: {nginx.ingress.kubernetes.io/backend-protocol: GRPC}
images:
  - {name: konstellation/kre-py, newName: ghcr.io/kai-server/runner, newTag: 0.1.0}
resources: {requests: {cpu: 100m, memory: 128Mi}, limits: {cpu: "1", memory: 512Mi}}
versions:
  greeter-v1:
    state: published
    config:
      secret: greeter-v1-config
  room-v1:
    state: started
    config:
      externalSecret: {secret: room-config, store: vault, remoteKey: kai/room-v1}
  old-v1:
    config:
      sealedSecret: {secret: old-config, file: secrets/old.yaml}
"""


def write(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "kai.yaml").write_text(text)
    return root


def problems(tmp_path: Path, text: str) -> list[str]:
    write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_project(tmp_path, tmp_path)
    return [str(p) for p in info.value.problems]


def test_full_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "old.yaml").write_text("kind: SealedSecret\n")
    p = load_project(write(tmp_path, FULL))
    assert p == Project(
        name="demo",
        namespace="kai-demo",
        kubernetes_version="1.34",
        nats=Nats("nats://nats.kai-system.svc:4222", "kai-system", "memory"),
        ingress=Ingress("greeter.example.com", "nginx", "greeter-tls",
                        {"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"}),
        images=(ImageMapping("konstellation/kre-py", "ghcr.io/kai-server/runner", "0.1.0"),),
        resources=Resources({"cpu": "100m", "memory": "128Mi"}, {"cpu": "1", "memory": "512Mi"}),
        versions={
            "greeter-v1": VersionState("published", ConfigSource("secret", "greeter-v1-config")),
            "room-v1": VersionState("started", ConfigSource(
                "externalSecret", "room-config", store="vault", remote_key="kai/room-v1")),
            "old-v1": VersionState("stopped", ConfigSource(
                "sealedSecret", "old-config", file="secrets/old.yaml")),
        },
        root=tmp_path,
    )
    assert p.published == "greeter-v1"


def test_defaults(tmp_path: Path) -> None:
    p = load_project(write(tmp_path, "project: demo\nnamespace: kai-demo\n"))
    assert p == Project("demo", "kai-demo", root=tmp_path)
    assert p.kubernetes_version == DEFAULT_KUBERNETES_VERSION
    assert p.ingress.annotations == {"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"}
    p = load_project(write(tmp_path, "project: demo\nnamespace: kai-demo\n"
                                     "resources: {limits: {cpu: '2'}}\nversions: {a-v1: {}}\n"))
    assert p.resources == Resources(limits={"cpu": "2"})
    assert p.versions == {"a-v1": VersionState()}


def test_default_kubernetes_version_is_bundled() -> None:
    assert DEFAULT_KUBERNETES_VERSION in bundled_kubernetes_versions()


def test_dump_round_trips_and_is_stable(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "old.yaml").write_text("kind: SealedSecret\n")
    p = load_project(write(tmp_path, FULL))
    text = dump_project(p)
    assert text.startswith("# yaml-language-server: $schema=")
    assert "desired state" in text
    assert load_project(write(tmp_path, text)) == p
    assert dump_project(load_project(tmp_path)) == text
    body = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert [line.split(":")[0] for line in body if not line.startswith((" ", "-"))] == [
        "project", "namespace", "kubernetesVersion", "nats", "ingress", "images", "resources",
        "versions",
    ]
    # versions are written sorted by name
    assert text.index("greeter-v1:") < text.index("old-v1:") < text.index("room-v1:")


def test_save_project_writes_atomically(tmp_path: Path) -> None:
    p = Project("demo", "kai-demo", images=default_images(), root=tmp_path,
                versions={"a-v1": VersionState("started")})
    path = save_project(p)
    assert path == tmp_path / "kai.yaml"
    assert load_project(tmp_path) == p
    assert sorted(x.name for x in tmp_path.iterdir()) == ["kai.yaml"]


_NAMES = st.from_regex(r"\A[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4})?\Z")
_CONFIG = st.one_of(
    st.none(),
    st.builds(ConfigSource, st.just("secret"), _NAMES),
    st.builds(lambda s, st_, k, key: ConfigSource("externalSecret", s, store=st_, store_kind=k,
                                                  remote_key=key),
              _NAMES, _NAMES, st.sampled_from(["SecretStore", "ClusterSecretStore"]), _NAMES),
)


@settings(max_examples=60, deadline=None)
@given(
    versions=st.dictionaries(
        _NAMES, st.builds(VersionState, st.sampled_from(["stopped", "started"]), _CONFIG),
        max_size=4,
    ),
    host=st.sampled_from(["", "a.example.com"]),
    tag=st.sampled_from(["", "1.0", "0.1.0", "yes", "010"]),
)
def test_round_trip_property(tmp_path_factory: pytest.TempPathFactory,
                             versions: dict[str, VersionState], host: str, tag: str) -> None:
    root = tmp_path_factory.mktemp("rt")
    p = Project("demo", "kai-demo", ingress=Ingress(host=host), root=root, versions=versions,
                images=(ImageMapping("konstellation/kre-py", "runner", tag),))
    (root / "kai.yaml").write_text(dump_project(p))
    assert load_project(root) == p


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        load_project(tmp_path, tmp_path)
    assert str(info.value) == "kai.yaml: not found; create it with `kai init`"


def test_schema_errors(tmp_path: Path) -> None:
    text = (
        "project: Demo\n"
        "kubernetesVersion: 1.35\n"
        "nats: {storage: disk}\n"
        "ingress: {hots: x}\n"
        "versions:\n"
        "  greeter-v1: {state: publishd}\n"
        "  Bad_Name: {}\n"
        "  two-v1:\n"
        "    config: {secret: a, sealedSecret: {secret: b, file: c}}\n"
    )
    assert problems(tmp_path, text) == [
        "kai.yaml:1:1: namespace: required field is missing (e.g. namespace: kai-demo)",
        'kai.yaml:1:10: project: "Demo" does not match the pattern '
        "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$: a DNS-1123 label: lowercase letters, digits and '-', "
        "not starting or ending with '-' (e.g. kai-demo)",
        "kai.yaml:2:20: kubernetesVersion: expected a string, got a number (1.35); "
        'put it in quotes if it is meant as text: "1.35"',
        'kai.yaml:3:17: nats.storage: must be one of: file, memory; got "disk"',
        'kai.yaml:4:11: ingress.hots: unknown field "hots" (did you mean "host"?); '
        "allowed: host, className, tlsSecret, annotations",
        'kai.yaml:6:23: versions.greeter-v1.state: must be one of: stopped, started, published; '
        'got "publishd" (did you mean "published"?)',
        'kai.yaml:7:3: versions.Bad_Name: "Bad_Name" does not match the pattern '
        "^[a-z]([-a-z0-9]*[a-z0-9])?$: a DNS-1035 label: lowercase letters, digits and '-', "
        "starting with a letter (e.g. greeter-v1)",
        "kai.yaml:9:13: versions.two-v1.config: set exactly one of: secret, externalSecret, "
        "sealedSecret",
    ]


def test_semantic_errors(tmp_path: Path) -> None:
    text = (
        "project: demo\n"
        "namespace: kai-demo\n"
        'kubernetesVersion: "1.12"\n'
        "images:\n"
        "  - {name: a, newName: b}\n"
        "  - {name: a, newName: c}\n"
        "versions:\n"
        "  one-v1: {state: published}\n"
        "  two-v1: {state: published, config: {sealedSecret: {secret: s, file: ../s.yaml}}}\n"
        "  three-v1: {config: {sealedSecret: {secret: s, file: missing.yaml}}}\n"
    )
    bundled = ", ".join(bundled_kubernetes_versions())
    assert problems(tmp_path, text) == [
        f'kai.yaml:3:20: kubernetesVersion: Kubernetes "1.12" has no bundled schemas; use one '
        f"of: {bundled}",
        'kai.yaml:6:12: images[1].name: image "a" is mapped twice (first at images[0])',
        "kai.yaml:9:19: versions.two-v1.state: only one version can be published and one-v1 is "
        "published too; set one of them to started",
        'kai.yaml:9:71: versions.two-v1.config.sealedSecret.file: "../s.yaml" must stay inside '
        'the repo (no "..")',
        'kai.yaml:10:55: versions.three-v1.config.sealedSecret.file: file "missing.yaml" does '
        "not exist in the repo",
    ]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (b"project: demo\nproject: x\n", 'kai.yaml:2:1: project: duplicate key "project"'),
        (b"project: demo\n\tnamespace: x\n", "kai.yaml:2:1: tab character used for indentation"),
        (b"project: d\xffmo\n", "kai.yaml:1:11: not valid UTF-8 (byte 0xff)"),
        (b"", "kai.yaml:1:1: file is empty"),
        (b"project: &p demo\nnamespace: *p\n", "kai.yaml:1:10: YAML anchors and aliases"),
    ],
)
def test_malformed_files(tmp_path: Path, text: bytes, line: str) -> None:
    (tmp_path / "kai.yaml").write_bytes(text)
    with pytest.raises(InputError) as info:
        load_project(tmp_path, tmp_path)
    assert len(info.value.problems) == 1
    assert str(info.value.problems[0]).startswith(line)
