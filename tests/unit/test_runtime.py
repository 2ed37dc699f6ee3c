"""kai.yaml `runtime:`: durations and sizes, validation with positions, per-version
overrides, the environment every Deployment gets, and edits that leave the section alone."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_projectfile import changes, edited, problems, with_states, write
from test_render import by_kind, make_project, make_version

from renderer.plan import build_plan
from renderer.project import DataStream, Project, RunnerSettings, Runtime, VersionState
from renderer.projectfile import dump_project, load_project
from renderer.render import render_version
from renderer.schemacheck import load_schema
from renderer.units import (
    DURATION_PATTERN,
    MAX_DURATION,
    SIZE_PATTERN,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)
from runner import contract

ROOT = Path(__file__).resolve().parents[2]
HEAD = "project: demo\nnamespace: kai-demo\n"

# --- durations and sizes ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("5s", 5.0), ("2m", 120.0), ("720h", 2_592_000.0), ("1h30m", 5400.0),
    ("1.5s", 1.5), ("1s500ms", 1.5), ("250us", 0.00025), ("10ns", 1e-08), ("0s", 0.0),
    ("30", 30.0), ("0.25", 0.25), (5, 5.0), (0.5, 0.5), ("2562047h", MAX_DURATION),
])
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5x", "1d", "-5s", "s", "5 s", "1h-30m", "", ".5s", "5S"])
def test_not_a_duration(text: str) -> None:
    assert not re.search(DURATION_PATTERN, text)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_durations_too_large_for_a_float_are_infinite() -> None:
    assert parse_duration("9" * 400 + "h") == math.inf
    assert parse_duration(10**400) == math.inf


@pytest.mark.parametrize(("seconds", "text"), [
    (5.0, "5s"), (0.5, "500ms"), (120.0, "2m"), (2_592_000.0, "720h"), (5400.0, "1h30m"),
    (1.5, "1s500ms"), (0.0, "0s"), (1e-08, "10ns"), (90061.0, "25h1m1s"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(0, 10**12).map(lambda n: n / 1000),
                 st.floats(0, MAX_DURATION, allow_nan=False)))
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(("text", "size"), [
    ("512Mi", 512 * 1024**2), ("1Gi", 1024**3), ("1000000", 10**6), (1000000, 10**6),
    ("1k", 1000), ("1.5Ki", 1536), ("2M", 2 * 10**6), ("1Ei", 1024**6), ("0", 0),
    ("1.5", Fraction(3, 2)),
])
def test_parse_size(text: str | int, size: Fraction) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["100m", "1KB", "1kb", "1K", "-1", "1e3", "Gi", ""])
def test_not_a_size(text: str) -> None:
    assert not re.search(SIZE_PATTERN, text)
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(0, 2**63 - 1), st.integers(0, 2**20).map(lambda n: n * 1024**2)))
def test_format_size_round_trips(size: int) -> None:
    assert parse_size(format_size(size)) == size


def test_format_size_picks_the_largest_exact_suffix() -> None:
    assert [format_size(n) for n in (0, 1, 1000, 1024, 1500, 10**6, 1024**3, 3 * 1024**4)] == [
        "0", "1", "1k", "1Ki", "1500", "1M", "1Gi", "3Ti"]


def test_schema_uses_the_same_patterns() -> None:
    defs = load_schema("kai.schema.json")["$defs"]
    assert defs["duration"]["pattern"] == DURATION_PATTERN
    assert defs["byteSize"]["pattern"] == SIZE_PATTERN


# --- kai.yaml -> model ---------------------------------------------------------------------

FULL = HEAD + """\
runtime:
  ackWait: 5s
  maxDeliver: 3
  requestTimeout: 1m
  dataStream: {maxAge: 720h, maxBytes: 1Gi}
versions:
  a-v1:
    state: started
    runtime: {ackWait: 10s, maxDeliver: 7}
  b-v1: {state: started, runtime: {requestTimeout: 90}}
  c-v1: {state: started}
"""


def test_parsing(tmp_path: Path) -> None:
    p = load_project(write(tmp_path, FULL))
    assert p.runtime == Runtime(5.0, 3, 60.0, DataStream(2_592_000.0, 1024**3))
    assert p.versions["a-v1"].runtime == Runtime(ack_wait=10.0, max_deliver=7)
    assert p.versions["b-v1"].runtime == Runtime(request_timeout=90.0)
    assert p.versions["c-v1"].runtime == Runtime()
    # a version overrides the project setting by setting; the data stream is the project's
    assert p.runtime_of("a-v1") == Runtime(10.0, 7, 60.0, p.runtime.data_stream)
    assert p.runtime_of("b-v1") == Runtime(5.0, 3, 90.0, p.runtime.data_stream)
    assert p.runtime_of("c-v1") == p.runtime_of("not-in-kai-yaml") == p.runtime


def test_left_out_is_the_runners_defaults(tmp_path: Path) -> None:
    p = load_project(write(tmp_path, HEAD + "versions: {a-v1: {state: started}}\n"))
    assert p.runtime == Runtime() and p.versions["a-v1"].runtime == Runtime()
    assert p.runtime_of("a-v1").settings() == RunnerSettings(
        ack_wait=contract.DEFAULT_ACK_WAIT, max_deliver=contract.DEFAULT_MAX_DELIVER,
        request_timeout=contract.DEFAULT_REQUEST_TIMEOUT,
        max_message=contract.DEFAULT_MAX_MESSAGE,
        data_max_age=contract.DEFAULT_DATA_MAX_AGE, data_max_bytes=contract.DEFAULT_DATA_MAX_BYTES)
    assert contract.DEFAULT_DATA_MAX_AGE == 30 * 24 * 3600 and contract.DEFAULT_DATA_MAX_BYTES == 0
    # and a project-wide setting reaches the versions that set nothing
    p = load_project(write(tmp_path, HEAD + "runtime: {maxDeliver: 2}\n"
                                            "versions: {a-v1: {runtime: {}}}\n"))
    assert p.runtime_of("a-v1").settings().max_deliver == 2


def test_schema_errors(tmp_path: Path) -> None:
    text = HEAD + (
        "runtime:\n"
        "  ackWait: 5 seconds\n"
        "  maxDeliver: 0\n"
        "  requestTimeout: true\n"
        "  ackwait: 5s\n"
        "  dataStream: {maxAge: -1, maxBytes: 100m, keep: 3}\n"
        "versions:\n"
        "  a-v1: {runtime: {maxDeliver: 1.5, retries: 2}}\n"
    )
    duration = "does not match the pattern " + DURATION_PATTERN
    assert problems(tmp_path, text) == [
        f'kai.yaml:4:12: runtime.ackWait: "5 seconds" {duration}: a duration like "500ms", '
        '"5s", "2m", "1h30m" or "720h", or a number of seconds (e.g. 5s)',
        "kai.yaml:5:15: runtime.maxDeliver: must be at least 1, got 0",
        "kai.yaml:6:19: runtime.requestTimeout: expected a string or a number, got a boolean "
        "(true); put it in quotes if it is meant as text",
        'kai.yaml:7:3: runtime.ackwait: unknown field "ackwait" (did you mean "ackWait"?); '
        "allowed: ackWait, maxDeliver, requestTimeout, maxMessage, dataStream",
        "kai.yaml:8:24: runtime.dataStream.maxAge: must be at least 0, got -1",
        f'kai.yaml:8:38: runtime.dataStream.maxBytes: "100m" does not match the pattern '
        f'{SIZE_PATTERN}: a size in bytes like "512Mi", "1Gi" or "1000000" (e.g. 1Gi)',
        'kai.yaml:8:44: runtime.dataStream.keep: unknown field "keep"; allowed: maxAge, '
        "maxBytes",
        "kai.yaml:10:32: versions.a-v1.runtime.maxDeliver: expected an integer, got a number "
        "(1.5)",
        'kai.yaml:10:37: versions.a-v1.runtime.retries: unknown field "retries"; allowed: '
        "ackWait, maxDeliver, requestTimeout, maxMessage, dataStream",
    ]


def test_semantic_errors(tmp_path: Path) -> None:
    text = HEAD + (
        "runtime:\n"
        "  ackWait: 500ms\n"
        "  requestTimeout: 0s\n"
        "  dataStream:\n"
        "    maxAge: 1m\n"
        "    maxBytes: '1.5'\n"
        "versions:\n"
        "  a-v1:\n"
        "    runtime: {ackWait: 99999999h, requestTimeout: .inf}\n"
        "  b-v1:\n"
        "    runtime: {requestTimeout: .nan, dataStream: {maxAge: 1h}}\n"
    )
    longest = "2562047h (the longest duration NATS holds)"
    assert problems(tmp_path, text) == [
        f'kai.yaml:4:12: runtime.ackWait: must be from 1s to {longest}, got "500ms"',
        f'kai.yaml:5:19: runtime.requestTimeout: must be more than 0s and at most {longest}, '
        'got "0s"',
        "kai.yaml:7:13: runtime.dataStream.maxAge: must be 0 (keep forever) or from 2m (the "
        f'stream\'s de-duplication window) to {longest}, got "1m"',
        'kai.yaml:8:15: runtime.dataStream.maxBytes: must be a whole number of bytes, got "1.5"',
        f'kai.yaml:11:24: versions.a-v1.runtime.ackWait: must be from 1s to {longest}, '
        'got "99999999h"',
        "kai.yaml:11:51: versions.a-v1.runtime.requestTimeout: must be more than 0s and at most "
        f"{longest}, got inf",
        "kai.yaml:13:31: versions.b-v1.runtime.requestTimeout: must be more than 0s and at most "
        f"{longest}, got nan",
        "kai.yaml:13:37: versions.b-v1.runtime.dataStream: the data stream is project-wide (one "
        "per project), so a version cannot set it; set runtime.dataStream at the top level",
    ]


def test_size_bounds(tmp_path: Path) -> None:
    text = HEAD + "runtime: {dataStream: {maxBytes: 8Ei, maxAge: 0}}\n"
    assert problems(tmp_path, text) == [
        "kai.yaml:3:34: runtime.dataStream.maxBytes: must be at most 9223372036854775807 bytes "
        '(8Ei less one byte), got "8Ei"',
    ]
    p = load_project(write(tmp_path, text.replace("8Ei", "9223372036854775807")))
    assert p.runtime.data_stream == DataStream(0.0, 2**63 - 1)
    assert load_project(write(tmp_path, text.replace("8Ei", "0"))).runtime.data_stream == \
        DataStream(0.0, 0)


def _why(timeout: object, ack: object) -> str:
    return (f"requestTimeout ({timeout}) must be greater than ackWait ({ack}): a message whose "
            "node dies is redelivered only after ackWait, so a shorter deadline ends the "
            "request before any retry can answer")


def test_request_timeout_must_be_longer_than_ack_wait(tmp_path: Path) -> None:
    default_ack = format_duration(contract.DEFAULT_ACK_WAIT)
    text = HEAD + (
        "runtime: {ackWait: 10s, requestTimeout: 10s}\n"
        "versions:\n"
        "  a-v1: {runtime: {requestTimeout: 5s}}\n"      # against the project's ackWait
        "  b-v1: {runtime: {ackWait: 1m}}\n"              # against the project's timeout
        "  c-v1: {runtime: {ackWait: 1m, requestTimeout: 2m}}\n"  # fine
        "  d-v1: {runtime: {maxDeliver: 2}}\n"            # sets neither: reported once, above
    )
    assert problems(tmp_path, text) == [
        "kai.yaml:3:41: runtime.requestTimeout: " + _why("10s", "10s"),
        "kai.yaml:5:36: versions.a-v1.runtime.requestTimeout: "
        + _why("5s", "10s, from runtime.ackWait"),
        "kai.yaml:6:29: versions.b-v1.runtime.ackWait: "
        + _why("10s, from runtime.requestTimeout", "1m"),
    ]
    # against the runner's defaults when neither level sets the other one
    timeout = contract.DEFAULT_ACK_WAIT / 2
    text = HEAD + f"runtime: {{requestTimeout: {format_duration(timeout)}}}\n"
    assert problems(tmp_path, text) == [
        "kai.yaml:3:27: runtime.requestTimeout: "
        + _why(format_duration(timeout), f"{default_ack}, the default"),
    ]


# --- the plan and the Deployments ------------------------------------------------------------

RUNTIME_ENV = (contract.ENV_ACK_WAIT, contract.ENV_MAX_DELIVER, contract.ENV_REQUEST_TIMEOUT,
               contract.ENV_DATA_MAX_AGE, contract.ENV_DATA_MAX_BYTES)


def _container_envs(project: Project, root: Path, name: str) -> dict[str, dict[str, Any]]:
    """Deployment name -> the runtime variables of its container."""
    version = make_version(root, name)
    deployments = by_kind(render_version(project, build_plan(project, version)), "Deployment")
    out = {}
    for d in deployments:
        (container,) = d["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        out[d["metadata"]["name"]] = {k: env[k] for k in RUNTIME_ENV}
    return out


def test_rendered_env_of_every_deployment(tmp_path: Path) -> None:
    p = load_project(write(tmp_path, FULL))
    envs = _container_envs(p, tmp_path, "a-v1")
    assert sorted(envs) == ["a-v1-entrypoint", "a-v1-etl", "a-v1-output"]
    for values in envs.values():
        assert values == {"KAI_ACK_WAIT": "10", "KAI_MAX_DELIVER": "7", "KAI_REQUEST_TIMEOUT": "60",
                       "KAI_DATA_MAX_AGE": "2592000", "KAI_DATA_MAX_BYTES": "1073741824"}
    for values in _container_envs(p, tmp_path, "b-v1").values():
        assert values == {"KAI_ACK_WAIT": "5", "KAI_MAX_DELIVER": "3", "KAI_REQUEST_TIMEOUT": "90",
                       "KAI_DATA_MAX_AGE": "2592000", "KAI_DATA_MAX_BYTES": "1073741824"}
    # what the runner reads back is what kai.yaml says
    plan = build_plan(p, make_version(tmp_path, "a-v1"))
    for process in plan.processes:
        env = contract.RunnerEnv.from_environ(process.env)
        assert (env.ack_wait, env.max_deliver, env.request_timeout) == (10.0, 7, 60.0)
        assert (env.data_max_age, env.data_max_bytes) == (2_592_000.0, 1024**3)
    sub_second = replace(p, runtime=Runtime(ack_wait=1.5, request_timeout=2.25))
    env = contract.RunnerEnv.from_environ(build_plan(sub_second, make_version(tmp_path, "c-v1"))
                                          .entrypoint.env)
    assert (env.ack_wait, env.request_timeout) == (1.5, 2.25)


def test_left_out_renders_the_runners_defaults(tmp_path: Path) -> None:
    p = make_project(tmp_path, {"greeter-v1": "started"})
    defaults = contract.RunnerEnv("x", "y", "z", "p", ()).to_environ()
    for env in _container_envs(p, tmp_path, "greeter-v1").values():
        assert env == {k: defaults[k] for k in RUNTIME_ENV}
    # an empty section and an empty version section are the same as none at all
    with_empty = replace(p, runtime=Runtime(),
                         versions={"greeter-v1": VersionState("started", None, Runtime())})
    assert _container_envs(with_empty, tmp_path, "greeter-v1") == \
        _container_envs(p, tmp_path, "greeter-v1")


# --- writing, and edits that leave the section alone -------------------------------------------


def test_dump_writes_only_what_is_set_and_round_trips(tmp_path: Path) -> None:
    p = load_project(write(tmp_path, FULL))
    text = dump_project(p)
    assert load_project(write(tmp_path, text)) == p
    assert dump_project(load_project(tmp_path)) == text
    assert "runtime:\n  ackWait: 5s\n  maxDeliver: 3\n  requestTimeout: 1m\n  dataStream:\n" \
           "    maxAge: 720h\n    maxBytes: 1Gi\nversions:\n" in text
    assert "  a-v1:\n    state: started\n    runtime:\n      ackWait: 10s\n      maxDeliver: 7\n" \
        in text
    assert text.endswith("  c-v1:\n    state: started\n")
    bare = dump_project(Project("demo", "kai-demo", versions={"a-v1": VersionState()}))
    assert "runtime" not in bare


_DURATIONS = st.one_of(st.none(), st.integers(100, 10**7).map(lambda n: n / 100))  # >= 1s
_RUNTIMES = st.builds(Runtime, _DURATIONS, st.one_of(st.none(), st.integers(1, 100)), _DURATIONS)


@settings(max_examples=60, deadline=None)
@given(top=_RUNTIMES, own=_RUNTIMES,
       age=st.one_of(st.none(), st.just(0.0), st.integers(120, 10**8).map(float)),
       size=st.one_of(st.none(), st.integers(0, 2**63 - 1)))
def test_round_trip_property(tmp_path_factory: pytest.TempPathFactory, top: Runtime,
                             own: Runtime, age: float | None, size: int | None) -> None:
    root = tmp_path_factory.mktemp("rt")
    p = Project("demo", "kai-demo", root=root,
                runtime=replace(top, data_stream=DataStream(age, size)),
                versions={"a-v1": VersionState("started", None, own)})
    (root / "kai.yaml").write_text(dump_project(p))
    try:
        assert load_project(root) == p
    except Exception as exc:  # only the ackWait < requestTimeout rule may refuse it
        assert "must be greater than ackWait" in str(exc), exc


HAND = """\
project: demo
namespace: kai-demo
runtime:            # tuned for the slow model
  ackWait: 5000ms   # kept as written
  maxDeliver: 5
  requestTimeout: 45   # seconds
  dataStream: { maxAge: 1h30m, maxBytes: 1000000 }
versions:
  a-v1:
    state: started
    runtime: {requestTimeout: "60"}   # own deadline
  b-v1:
    state: stopped
"""


def test_state_commands_leave_the_runtime_section_untouched(tmp_path: Path) -> None:
    hand = load_project(write(tmp_path, HAND))
    assert hand.runtime == Runtime(5.0, 5, 45.0, DataStream(5400.0, 10**6))
    out = edited(tmp_path, HAND, with_states(hand, b_v1="started"))
    assert changes(HAND, out) == ["-     state: stopped", "+     state: started"]
    out = edited(tmp_path, HAND, with_states(hand, a_v1="published"))
    assert changes(HAND, out) == ["-     state: started", "+     state: published"]
    assert edited(tmp_path, out, hand) == HAND


def test_edit_adding_a_version_keeps_the_runtime_section(tmp_path: Path) -> None:
    hand = load_project(write(tmp_path, HAND))
    new = replace(hand, versions={**hand.versions, "c-v1": VersionState("started")})
    out = edited(tmp_path, HAND, new)
    assert changes(HAND, out) == ["+   c-v1:", "+     state: started"]


def test_readme_reference_is_a_valid_kai_yaml(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## kai.yaml reference"):]
    block = section[section.index("```yaml\n") + 8:section.index("```\n", 1)]
    p = load_project(write(tmp_path, block))
    assert p.runtime == Runtime(30.0, 5, 60.0, DataStream(2_592_000.0, 1024**3), 64 * 1024**2)
    assert p.runtime_of("fraud-v3") == replace(p.runtime, max_deliver=3)


def test_max_message_from_kai_yaml_to_the_runner(tmp_path: Path) -> None:
    text = HEAD + ("runtime: {maxMessage: 16Mi}\n"
                   "versions:\n"
                   "  a-v1: {state: started, runtime: {maxMessage: 128Mi}}\n"
                   "  c-v1: {state: started}\n")
    p = load_project(write(tmp_path, text))
    assert p.runtime == Runtime(max_message=16 * 1024**2)
    assert p.runtime_of("a-v1").settings().max_message == 128 * 1024**2
    assert p.runtime_of("c-v1").settings().max_message == 16 * 1024**2
    for name, size in (("a-v1", 128 * 1024**2), ("c-v1", 16 * 1024**2)):
        for process in build_plan(p, make_version(tmp_path, name)).processes:
            assert process.env[contract.ENV_MAX_MESSAGE] == str(size)
            assert contract.RunnerEnv.from_environ(process.env).max_message == size
    dumped = dump_project(p)
    assert "runtime:\n  maxMessage: 16Mi\n" in dumped
    assert load_project(write(tmp_path, dumped)) == p
    left_out = load_project(write(tmp_path, HEAD + "versions: {a-v1: {state: started}}\n"))
    assert left_out.runtime_of("a-v1").settings().max_message == contract.DEFAULT_MAX_MESSAGE


def test_max_message_bounds(tmp_path: Path) -> None:
    text = HEAD + ("runtime: {maxMessage: 1000}\n"
                   "versions:\n"
                   "  a-v1: {runtime: {maxMessage: 2Gi}}\n"
                   "  b-v1: {runtime: {maxMessage: '1.5'}}\n"
                   "  c-v1: {runtime: {maxMessage: 1Gi}}\n")
    assert problems(tmp_path, text) == [
        "kai.yaml:3:23: runtime.maxMessage: must be a whole number of bytes from 1Ki to 1Gi, "
        "got 1000",
        "kai.yaml:5:32: versions.a-v1.runtime.maxMessage: must be a whole number of bytes "
        'from 1Ki to 1Gi, got "2Gi"',
        "kai.yaml:6:32: versions.b-v1.runtime.maxMessage: must be a whole number of bytes "
        'from 1Ki to 1Gi, got "1.5"',
    ]
    bad = problems(tmp_path, HEAD + "runtime: {maxMessage: 64MB}\n")
    assert len(bad) == 1 and bad[0].startswith("kai.yaml:3:23: runtime.maxMessage: "), bad
