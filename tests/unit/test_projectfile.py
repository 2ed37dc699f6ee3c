"""renderer.projectfile: kai.yaml is validated, mapped onto the model and written back stably."""

from __future__ import annotations

import difflib
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from renderer import yamledit
from renderer.images import default_images
from renderer.lifecycle import ACTIONS, LifecycleError, transition
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
)
from renderer.projectfile import (
    bundled_kubernetes_versions,
    dump_project,
    edit_project,
    load_project,
    project_data,
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
  - {name: konstellation/kre-py, newName: reg.example.com/kai/runner-ml, newTag: 0.1.0}
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
        images=(ImageMapping("konstellation/kre-py", "reg.example.com/kai/runner-ml", "0.1.0"),),
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


GPU_MAP = """\
project: demo
namespace: kai-demo
images:
  - {name: konstellation/kre-py, newName: r.io/kai/runner-ml, newTag: 0.1.0}
  - {name: konstellation/kre-py, newName: r.io/kai/runner-gpu, newTag: 0.1.0, gpu: true}
  - {name: konstellation/kre-go, newName: r.io/kai/go-gpu, gpu: true}
"""


def test_an_image_maps_once_for_cpu_nodes_and_once_for_gpu_nodes(tmp_path: Path) -> None:
    p = load_project(write(tmp_path, GPU_MAP))
    assert p.images == (
        ImageMapping("konstellation/kre-py", "r.io/kai/runner-ml", "0.1.0"),
        ImageMapping("konstellation/kre-py", "r.io/kai/runner-gpu", "0.1.0", gpu=True),
        # a gpu entry whose name no node (nor any cpu entry) uses is fine
        ImageMapping("konstellation/kre-go", "r.io/kai/go-gpu", gpu=True),
    )
    text = dump_project(p)
    assert "  gpu: true\n" in text and "gpu: false" not in text
    assert load_project(write(tmp_path, text)) == p
    false = GPU_MAP.replace("newTag: 0.1.0}", "newTag: 0.1.0, gpu: false}", 1)
    assert load_project(write(tmp_path, false)) == p  # gpu: false is the default


def test_two_entries_for_the_same_image_and_gpu_value_point_at_the_second(
        tmp_path: Path) -> None:
    text = GPU_MAP + (
        "  - {name: konstellation/kre-py, newName: r.io/kai/other, gpu: true}\n"
        "  - {name: konstellation/kre-py, newName: r.io/kai/other, gpu: false}\n"
        "  - {name: konstellation/kre-py, newName: r.io/kai/other}\n"
    )
    assert problems(tmp_path, text) == [
        'kai.yaml:7:64: images[3].gpu: image "konstellation/kre-py" is mapped twice for '
        "gpu: true nodes (first at images[1])",
        'kai.yaml:8:64: images[4].gpu: image "konstellation/kre-py" is mapped twice '
        "(first at images[0])",
        'kai.yaml:9:12: images[5].name: image "konstellation/kre-py" is mapped twice '
        "(first at images[0])",
    ]


def test_gpu_must_be_a_boolean(tmp_path: Path) -> None:
    text = GPU_MAP.replace("gpu: true}", "gpu: yes please}", 1)
    [line] = problems(tmp_path, text)
    assert line.startswith("kai.yaml:5:84: images[1].gpu: expected true or false"), line


DIGEST = "sha256:" + "0123456789abcdef" * 4


def test_an_image_digest_loads_dumps_and_reads_back(tmp_path: Path) -> None:
    text = GPU_MAP.replace("newTag: 0.1.0}", f"newTag: 0.1.0, digest: '{DIGEST}'}}", 1)
    text = text.replace("go-gpu, gpu: true}", f"go-gpu, digest: {DIGEST}, gpu: true}}")
    p = load_project(write(tmp_path, text))
    assert p.images == (
        ImageMapping("konstellation/kre-py", "r.io/kai/runner-ml", "0.1.0", digest=DIGEST),
        ImageMapping("konstellation/kre-py", "r.io/kai/runner-gpu", "0.1.0", gpu=True),
        ImageMapping("konstellation/kre-go", "r.io/kai/go-gpu", gpu=True, digest=DIGEST),
    )
    dumped = dump_project(p)
    assert dumped.count(f"  digest: {DIGEST}\n") == 2
    assert load_project(write(tmp_path, dumped)) == p


@pytest.mark.parametrize("digest", [
    "sha256:" + "0123456789abcdef" * 3,  # too short
    "sha256:" + "0123456789ABCDEF" * 4,  # upper case
    "sha512:" + "0123456789abcdef" * 8,  # another algorithm
    "0123456789abcdef" * 4,  # no algorithm
    "@sha256:" + "0123456789abcdef" * 4,
    "",
])
def test_a_bad_digest_is_refused_at_its_position(tmp_path: Path, digest: str) -> None:
    text = GPU_MAP.replace("go-gpu, gpu: true}", f"go-gpu, gpu: true, digest: '{digest}'}}")
    [line] = problems(tmp_path, text)
    assert line.startswith("kai.yaml:6:79: images[2].digest: "), line
    assert f'"{digest}"' in line and 'a digest: "sha256:" and 64 lower-case hex digits' in line


def test_create_namespace_defaults_to_true_and_false_reads_back(tmp_path: Path) -> None:
    p = load_project(write(tmp_path, "project: demo\nnamespace: kai-demo\n"))
    assert p.create_namespace is True
    assert "createNamespace" not in dump_project(p)  # the default is left out
    off = load_project(write(tmp_path, "project: demo\nnamespace: kai-demo\n"
                                       "createNamespace: false\n"))
    assert off == replace(p, create_namespace=False)
    text = dump_project(off)
    assert "\nnamespace: kai-demo\ncreateNamespace: false\n" in text
    assert load_project(write(tmp_path, text)) == off
    [line] = problems(tmp_path, "project: demo\nnamespace: kai-demo\ncreateNamespace: no way\n")
    assert line.startswith("kai.yaml:3:18: createNamespace: expected true or false"), line
    [line] = problems(tmp_path, "project: demo\nnamespace: {name: kai-demo, create: false}\n")
    assert line.startswith("kai.yaml:2:12: namespace: "), line  # namespace stays a name


def test_dump_writes_notes_above_their_top_level_key(tmp_path: Path) -> None:
    p = Project("demo", "kai-demo", images=default_images(), root=tmp_path)
    note = "# one\n# two\n"
    text = dump_project(p, {"images": note, "versions": "# last\n"})
    assert text == dump_project(p).replace("\nimages:", f"\n{note}images:").replace(
        "\nversions:", "\n# last\nversions:")
    assert load_project(write(tmp_path, text)) == p
    # a lifecycle edit keeps them
    started = replace(p, versions={"a-v1": VersionState("started")})
    out = edited(tmp_path, text, started)
    assert note + "images:" in out and "# last\nversions:" in out


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


# --- editing kai.yaml in place ----------------------------------------------------------------

HAND = """\
# Demo project, edited by hand.
# Every comment here must survive the kai commands.

namespace: kai-demo        # where the versions run
project: demo

# the image map
images:
  - {name: konstellation/kre-py, newName: reg.example.com/kai/runner-ml, newTag: "0.1.0"}  # runner
resources: {requests: {cpu: 100m}}
nats: { url: "nats://nats.kai-system.svc:4222" }   # odd spacing, kept

versions:
  # oldest first
  greeter-v1:
    state: started       # serving soon
  greeter-v2:
    state: 'stopped'     # quoted on purpose

  room-v1: {}            # nothing yet
# end of versions

kubernetesVersion: "1.34"
"""


def edited(tmp_path: Path, text: str, project: Project) -> str:
    """edit_project's output, checked to load back to `project` and to be deterministic."""
    out = edit_project(text, project)
    assert edit_project(text, project) == out
    assert load_project(write(tmp_path, out)) == replace(project, root=tmp_path)
    return out


def changes(old: str, new: str) -> list[str]:
    """The removed (-) and added (+) lines from `old` to `new`."""
    return [line for line in difflib.ndiff(old.splitlines(), new.splitlines())
            if line.startswith(("- ", "+ "))]


def comments(text: str) -> list[str]:
    return [line[line.index("#"):] for line in text.splitlines() if "#" in line]


def with_states(project: Project, **states: str) -> Project:
    versions = dict(project.versions)
    for name, state in states.items():
        versions[name.replace("_", "-")] = replace(versions.get(name.replace("_", "-"),
                                                                VersionState()), state=state)
    return replace(project, versions=versions)


def test_edit_changes_only_the_state_line(tmp_path: Path) -> None:
    hand = load_project(write(tmp_path, HAND))
    out = edited(tmp_path, HAND, with_states(hand, greeter_v1="published"))
    assert changes(HAND, out) == [
        "-     state: started       # serving soon",
        "+     state: published     # serving soon",
    ]
    assert edited(tmp_path, out, hand) == HAND  # and back: the same bytes as before
    out = edited(tmp_path, HAND, with_states(hand, greeter_v2="started"))
    assert changes(HAND, out) == [
        "-     state: 'stopped'     # quoted on purpose",
        "+     state: 'started'     # quoted on purpose",
    ]
    # a state the file left out is written; `{}` gaining a key turns block like its siblings
    out = edited(tmp_path, HAND, with_states(hand, room_v1="started"))
    assert changes(HAND, out) == [
        "-   room-v1: {}            # nothing yet",
        "+   room-v1:               # nothing yet",
        "+     state: started",
    ]
    assert out.index("state: started\n# end of versions\n") > 0


def test_edit_adds_versions_in_sorted_place_else_at_the_end(tmp_path: Path) -> None:
    hand = load_project(write(tmp_path, HAND))
    out = edited(tmp_path, HAND, with_states(hand, greeter_v3="stopped"))
    assert changes(HAND, out) == ["+   greeter-v3:", "+     state: stopped"]
    lines = out.splitlines()
    at = lines.index("  greeter-v3:")
    assert lines[at - 1] == "    state: 'stopped'     # quoted on purpose"
    assert lines[at + 2] == ""  # the blank line before room-v1 stays before room-v1
    out = edited(tmp_path, HAND, with_states(hand, zoo_v1="stopped"))
    assert out.endswith("  room-v1: {}            # nothing yet\n  zoo-v1:\n    state: stopped\n"
                        "# end of versions\n\nkubernetesVersion: \"1.34\"\n")
    out = edited(tmp_path, HAND, with_states(hand, alpha_v1="stopped"))
    assert "  # oldest first\n  alpha-v1:\n    state: stopped\n  greeter-v1:\n" in out
    unsorted = HAND.replace("  greeter-v1:\n    state: started       # serving soon\n", "") \
        .replace("# end of versions", "  greeter-v1: {state: started}\n# end of versions")
    project = load_project(write(tmp_path, unsorted))
    out = edited(tmp_path, unsorted, with_states(project, alpha_v1="stopped"))
    assert changes(unsorted, out) == ["+   alpha-v1:", "+     state: stopped"]
    assert out.index("greeter-v1: {state: started}\n  alpha-v1:") > 0


def test_edit_removes_versions_and_keeps_the_comments_around(tmp_path: Path) -> None:
    hand = load_project(write(tmp_path, HAND))
    for name, gone in [
        ("room-v1", ["-   room-v1: {}            # nothing yet"]),
        ("greeter-v1", ["-   greeter-v1:", "-     state: started       # serving soon"]),
        ("greeter-v2", ["-   greeter-v2:", "-     state: 'stopped'     # quoted on purpose"]),
    ]:
        versions = {k: v for k, v in hand.versions.items() if k != name}
        out = edited(tmp_path, HAND, replace(hand, versions=versions))
        assert changes(HAND, out) == gone, name
        assert "# end of versions" in out and "# oldest first" in out


def test_edit_keeps_left_out_defaults_left_out(tmp_path: Path) -> None:
    text = "# minimal\nproject: demo\nnamespace: kai-demo\nversions:\n  a-v1: {}\n"
    project = load_project(write(tmp_path, text))
    out = edited(tmp_path, text, with_states(project, a_v1="started"))
    assert out == "# minimal\nproject: demo\nnamespace: kai-demo\nversions:\n  a-v1:\n" \
        "    state: started\n"
    out = edited(tmp_path, out, with_states(project, a_v1="stopped"))
    assert out.endswith("  a-v1:\n    state: stopped\n")
    # a new version into a file without `versions:`
    text = "project: demo  # p\nnamespace: kai-demo\n"
    project = load_project(write(tmp_path, text))
    out = edited(tmp_path, text, with_states(project, a_v1="stopped"))
    assert out == text + "versions:\n  a-v1:\n    state: stopped\n"
    # a mapping whose default is replaced as a whole is written out in full
    out = edited(tmp_path, text, replace(project, resources=Resources(
        requests={"cpu": "200m", "memory": "128Mi"})))
    assert changes(text, out) == ["+ resources:", "+   requests:", "+     cpu: 200m",
                                  "+     memory: 128Mi"]
    # a nested setting the file leaves out: only it is added
    out = edited(tmp_path, text, replace(project, nats=Nats(storage="memory")))
    assert changes(text, out) == ["+ nats:", "+   storage: memory"]


def test_edit_follows_the_siblings_style(tmp_path: Path) -> None:
    text = ("project: demo\nnamespace: kai-demo\n"
            "versions:\n  a-v1: {state: started}   # a\n  c-v1: {state: stopped}\n")
    project = load_project(write(tmp_path, text))
    out = edited(tmp_path, text, replace(with_states(project, b_v1="started"), versions={
        **with_states(project, b_v1="started").versions,
        "b-v1": VersionState("started", ConfigSource("secret", "b-config"))}))
    assert changes(text, out) == ["+   b-v1: {state: started, config: {secret: b-config}}"]
    text = "project: demo\nnamespace: kai-demo\nversions: {a-v1: {state: started}}\n"
    project = load_project(write(tmp_path, text))
    out = edited(tmp_path, text, with_states(project, b_v1="stopped"))
    assert out.endswith("versions: {a-v1: {state: started}, b-v1: {state: stopped}}\n")


def test_edit_keeps_indentation_quotes_line_ends_and_bom(tmp_path: Path) -> None:
    text = ("project: demo\nnamespace: kai-demo\ningress:\n    className: nginx\n"
            "images:\n    -   name: a\n        newName: b\n"
            "versions:\n    a-v1:\n        state: \"started\"\n")
    project = load_project(write(tmp_path, text))
    out = edited(tmp_path, text, with_states(project, a_v1="stopped", b_v1="stopped"))
    assert changes(text, out) == [
        '-         state: "started"', '+         state: "stopped"',
        "+     b-v1:", "+         state: stopped",
    ]
    crlf = "\ufeff" + text.replace("\n", "\r\n")
    out = edit_project(crlf, with_states(project, a_v1="stopped"))
    assert out == "\ufeff" + text.replace("\n", "\r\n").replace('"started"', '"stopped"')


def test_edit_quotes_what_pyyaml_would_misread(tmp_path: Path) -> None:
    text = "project: demo\nnamespace: kai-demo\nimages:\n- {name: a, newName: b}\n"
    project = load_project(write(tmp_path, text))
    for tag in ("on", "yes", "1.0", "010", "null", "2026-01-01"):
        new = replace(project, images=(ImageMapping("a", "b", tag),))
        out = edited(tmp_path, text, new)
        assert changes(text, out) == [
            "- - {name: a, newName: b}", f"+ - {{name: a, newName: b, newTag: '{tag}'}}"]


def test_edit_unchanged_model_keeps_the_text(tmp_path: Path) -> None:
    hand = load_project(write(tmp_path, HAND))
    assert edit_project(HAND, hand) == HAND
    assert edit_project(HAND.replace("\n", "\r\n"), hand) == HAND.replace("\n", "\r\n")


def test_edit_falls_back_to_a_fresh_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hand = load_project(write(tmp_path, HAND))
    new = with_states(hand, greeter_v1="published")
    assert edit_project("project: [not valid\n", new) == dump_project(new)
    assert edit_project("project: Bad\n", new) == dump_project(new)

    def broken(text: str, old: object, new: object) -> object:
        raise ValueError("cannot")

    monkeypatch.setattr(yamledit, "edits", broken)
    assert edit_project(HAND, new) == dump_project(new)

    def wrong(text: str, old: object, new: object) -> object:
        yield HAND  # loads, but to the old model
        yield "project: demo\n"  # does not load

    monkeypatch.setattr(yamledit, "edits", wrong)
    assert edit_project(HAND, new) == dump_project(new)


_STATES = st.sampled_from(["stopped", "started", "published"])
_PROJECTS = st.builds(
    lambda versions, host, tag: Project(
        "demo", "kai-demo", ingress=Ingress(host=host), versions=versions,
        images=(*default_images(), ImageMapping("x/y", "runner", tag))),
    st.dictionaries(_NAMES, st.builds(VersionState, st.sampled_from(["stopped", "started"]),
                                      _CONFIG), max_size=4),
    st.sampled_from(["", "a.example.com"]),
    st.sampled_from(["", "1.0", "yes"]),
)


@settings(max_examples=60, deadline=None)
@given(before=_PROJECTS, after=_PROJECTS)
def test_edit_of_a_fresh_file_is_the_fresh_file(before: Project, after: Project) -> None:
    assert edit_project(dump_project(before), after) == dump_project(after)


@settings(max_examples=60, deadline=None)
@given(before=_PROJECTS, versions=st.dictionaries(_NAMES, st.builds(VersionState, _STATES),
                                                  max_size=4))
def test_round_trip_edit_of_a_fresh_file_matches_it(before: Project,
                                                    versions: dict[str, VersionState]) -> None:
    """Also without edit_project's shortcut, ruamel.yaml writes what dump_project writes."""
    after = replace(before, versions=versions)
    first = next(yamledit.edits(dump_project(before), project_data(before), project_data(after)))
    assert first == dump_project(after)


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["greeter-v1", "greeter-v2", "room-v1"]),
                                st.sampled_from(ACTIONS)), max_size=12))
def test_state_changes_keep_every_comment(tmp_path_factory: pytest.TempPathFactory,
                                          steps: list[tuple[str, str]]) -> None:
    root = tmp_path_factory.mktemp("edit")
    text = HAND
    project = load_project(write(root, text))
    for version, action in steps:
        try:
            new = transition(project, version, action).apply(project)
        except LifecycleError:
            continue
        out = edit_project(text, new)
        assert load_project(write(root, out)) == new
        assert comments(out) == comments(HAND)
        for line in changes(text, out):
            assert "state:" in line or line.strip("-+ ").startswith("room-v1:"), line
        text, project = out, new


def test_edit_reads_no_further_than_the_safe_loader(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Text the safe loader refuses never reaches ruamel.yaml: the result is a fresh file."""
    hand = load_project(write(tmp_path, HAND))
    new = with_states(hand, greeter_v1="published")

    seen: list[str] = []

    def spy(text: str, old: object, new: object) -> object:
        seen.append(text)
        return iter(())

    monkeypatch.setattr(yamledit, "edits", spy)
    assert edit_project(HAND, new) == dump_project(new) and seen == [HAND]  # the spy works
    for bad in (HAND + "extra: &a [x]\nmore: *a\n",
                HAND.replace("project: demo", "project: !!python/none x"),
                HAND + "project: twice\n",
                HAND + "\tbad: tab\n",
                HAND + "# padding\n" * 110_000):
        assert edit_project(bad, new) == dump_project(new)
    assert seen == [HAND]


@st.composite
def _hand_files(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    """A hand-written kai.yaml with a random key order, indentation, styles and comments,
    and each version entry's text (its comments are tagged `# v:<name>:`)."""
    names = draw(st.lists(_NAMES, unique=True, max_size=5))
    if draw(st.booleans()):
        names.sort()
    width = draw(st.sampled_from([2, 4]))
    one, two, three = (" " * width * n for n in (1, 2, 3))
    entries: dict[str, str] = {}
    for name in names:
        state = draw(st.sampled_from(["", "stopped", "started", "'started'", '"stopped"']))
        style = draw(st.sampled_from(["block", "flow", "config"]))
        if style == "flow" or (style == "block" and not state):
            body = f" {{state: {state}}}" if state else " {}"
            entries[name] = f"{one}{name}:{body}   # v:{name}:eol\n"
        elif style == "block":
            entries[name] = (f"{one}{name}:     # v:{name}:key\n"
                             f"{two}state: {state}  # v:{name}:eol\n")
        else:
            entries[name] = (f"{one}{name}:\n" + (f"{two}state: {state}\n" if state else "")
                             + f"{two}config:\n{three}secret: {name}-config   # v:{name}:cfg\n")
    versions = "versions:   # c-versions\n"
    for n, text in enumerate(entries.values()):
        between = draw(st.sampled_from(["", "\n", f"{one}# c-between-{n}\n", f"\n# c-col0-{n}\n"]))
        versions += text + between
    if not entries:
        versions = "versions: {}   # c-versions\n"
    dash = draw(st.sampled_from(["- ", one + "- "]))
    sections = {
        "project": "project: demo   # c-project\n",
        "namespace": "namespace: kai-demo\n",
        "nats": draw(st.sampled_from([
            "nats: { url: 'nats://nats:4222' }   # c-nats\n",
            f"nats:\n{one}url: nats://nats:4222   # c-nats\n",
        ])),
        "images": f"images:\n{dash}name: a   # c-image\n{' ' * len(dash)}newName: b\n",
        "resources": "resources: {requests: {cpu: 100m}}\n",
        "versions": versions,
    }
    order = draw(st.permutations(list(sections)))
    text = "# c-head\n\n" + "".join(
        sections[key] + draw(st.sampled_from(["", "\n", f"# c-after-{key}\n"])) for key in order)
    return text, entries


@settings(max_examples=100, deadline=None)
@given(data=st.data(), hand=_hand_files())
def test_random_edits_of_hand_files_keep_comments_and_untouched_entries(
        tmp_path_factory: pytest.TempPathFactory, data: st.DataObject,
        hand: tuple[str, dict[str, str]]) -> None:
    text, entries = hand
    root = tmp_path_factory.mktemp("hand")
    project = load_project(write(root, text))
    versions: dict[str, VersionState] = {}
    for name, vs in project.versions.items():
        change = data.draw(st.sampled_from(["keep", "drop", "flip", "config"]))
        if change == "keep":
            versions[name] = vs
        elif change == "flip":
            versions[name] = replace(vs, state="started" if vs.state == "stopped" else "stopped")
        elif change == "config":
            versions[name] = replace(vs, config=ConfigSource("secret", f"{name}-other"))
    for name in data.draw(st.lists(_NAMES, max_size=2)):
        versions.setdefault(name, VersionState(data.draw(st.sampled_from(["stopped", "started"]))))
    storage = data.draw(st.sampled_from(["file", "memory"]))
    new = replace(project, versions=versions, nats=replace(project.nats, storage=storage))
    out = edit_project(text, new)
    assert load_project(write(root, out)) == new
    changed = {n for n in project.versions if project.versions[n] != versions.get(n)}
    # only the comments on removed lines go: a dropped version's, a dropped config's
    gone = [f"# v:{n}:" for n in changed if n not in versions]
    gone += [f"# v:{n}:cfg" for n in changed if n in versions and versions[n].config is None]
    assert comments(out) == [c for c in comments(text) if not c.startswith(tuple(gone))]
    for name, entry in entries.items():
        if name not in changed:
            assert entry in out, name
    images = text[text.index("images:"):text.index("newName: b\n") + 11]
    assert images in out
    nats = text[text.index("nats:"):text.index("# c-nats\n") + 9]
    assert nats in out or storage == "memory"


def test_edit_writes_new_lines_with_the_indentation_most_of_the_file_uses(
        tmp_path: Path) -> None:
    text = ("project: demo\nnamespace: kai-demo\ningress:\n        className: nginx\n"
            "versions:\n    a-v1:\n        state: started\n    b-v1:\n        state: stopped\n")
    project = load_project(write(tmp_path, text))
    out = edited(tmp_path, text, with_states(project, c_v1="stopped"))
    assert changes(text, out) == ["+     c-v1:", "+         state: stopped"]


# --- nats.auth and nats.tls ------------------------------------------------------------------

NATS_SECRETS = """\
project: demo
namespace: kai-demo
nats:
  url: tls://nats.kai-system.svc
  auth: {secret: nats-auth}      # the runner's credentials
  tls: {caSecret: nats-ca}
"""


def test_nats_auth_and_tls_secrets_load_dump_and_edit(tmp_path: Path) -> None:
    p = load_project(write(tmp_path, NATS_SECRETS))
    assert p.nats == Nats("tls://nats.kai-system.svc", auth_secret="nats-auth",
                          ca_secret="nats-ca")
    text = dump_project(p)
    assert "  auth:\n    secret: nats-auth\n  tls:\n    caSecret: nats-ca\n" in text
    assert load_project(write(tmp_path, text)) == p
    assert "auth" not in dump_project(replace(p, nats=Nats()))
    # an edit elsewhere keeps the block as written, with its comment
    started = replace(p, versions={"a-v1": VersionState("started")})
    assert "  auth: {secret: nats-auth}      # the runner's credentials\n" in (
        edit_project(NATS_SECRETS, started))
    dropped = edit_project(NATS_SECRETS, replace(p, nats=replace(p.nats, auth_secret="")))
    assert load_project(write(tmp_path, dropped)).nats.auth_secret == ""


def test_nats_auth_and_tls_are_checked_by_the_schema(tmp_path: Path) -> None:
    text = ("project: demo\nnamespace: kai-demo\n"
            "nats: {auth: {secret: Bad_Name}, tls: {ca: x}}\n")
    found = problems(tmp_path, text)
    assert found[0].startswith('kai.yaml:3:23: nats.auth.secret: "Bad_Name" does not match')
    assert found[1:] == [
        "kai.yaml:3:39: nats.tls.caSecret: required field is missing (e.g. caSecret: nats-ca)",
        'kai.yaml:3:40: nats.tls.ca: unknown field "ca"; allowed: caSecret',
    ]


@pytest.mark.parametrize("url", [
    "nats://kai:hunter2@nats.kai-system.svc:4222", "nats://s3cr3t@nats.kai-system.svc",
    "nats://a.svc:4222,nats://kai:hunter2@b.svc:4222",
])
def test_a_nats_url_with_credentials_is_refused_with_its_position(tmp_path: Path,
                                                                  url: str) -> None:
    text = f"project: demo\nnamespace: kai-demo\nnats:\n  url: {url}\n"
    [problem] = problems(tmp_path, text)
    assert problem == (
        "kai.yaml:4:8: nats.url: carries credentials (user:password@ or token@), which would "
        "be committed in plain text; put them in a Secret and name it in nats.auth: "
        "{secret: NAME}")
    assert "hunter2" not in problem and "s3cr3t" not in problem
