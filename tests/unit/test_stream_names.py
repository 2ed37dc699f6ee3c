"""The JetStream names of runner.contract read back (contract.stream_owner): every name the
runner builds parses as whose it is, and no other name parses at all."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner import contract
from runner.contract import CLAIM_BUCKET, DATA_STREAM, WORK_STREAM, StreamOwner, stream_owner

# the names kai.yaml (project) and krt.yml (version, workflow) allow
NAME = st.from_regex(r"[a-z0-9](?:[-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
VERSION = st.from_regex(r"[a-z](?:[-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)


@given(NAME, VERSION, NAME)
def test_work_stream_reads_back(project: str, version: str, workflow: str) -> None:
    owner = stream_owner(contract.stream_name(project, version, workflow))
    assert owner == StreamOwner(WORK_STREAM, project, version, workflow)
    assert owner.subjects() == (contract.stream_subjects(project, version, workflow),)


@given(NAME, VERSION)
def test_claim_bucket_stream_reads_back(project: str, version: str) -> None:
    owner = stream_owner(contract.claims_stream(project, version))
    assert owner == StreamOwner(CLAIM_BUCKET, project, version)
    bucket = contract.claims_bucket(project, version)
    assert owner.subjects() == (f"$O.{bucket}.C.>", f"$O.{bucket}.M.>")
    # the bucket's own name is not a stream's
    assert stream_owner(bucket) is None


@given(NAME)
def test_data_stream_reads_back(project: str) -> None:
    owner = stream_owner(contract.data_stream_name(project))
    assert owner == StreamOwner(DATA_STREAM, project)
    assert owner.subjects() == (contract.data_subjects(project),)


def _rebuilt(owner: StreamOwner) -> str:
    if owner.kind == WORK_STREAM:
        return contract.stream_name(owner.project, owner.version, owner.workflow)
    if owner.kind == CLAIM_BUCKET:
        return contract.claims_stream(owner.project, owner.version)
    return contract.data_stream_name(owner.project)


@given(st.text(alphabet="KAIOBJ_DATCLMSabcdv-1x. ", max_size=40))
def test_a_name_that_parses_is_the_one_the_runner_builds(name: str) -> None:
    owner = stream_owner(name)
    if owner is not None:
        assert _rebuilt(owner) == name


@pytest.mark.parametrize("name", [
    "OTHER", "KAI", "KAI_", "KAI_demo", "KAI__v1_wf", "KAI_demo__wf", "KAI_demo_v1_",
    "KAI_demo_v1_wf_extra",  # one part too many
    "KAI_Demo_v1_wf", "KAI_demo_V1_wf", "kai_demo_v1_wf",  # upper or lower case off
    "KAI_demo_-v1_wf", "KAI_demo_v1-_wf",  # not a name
    "KAI_demo_2_wf", "OBJ_KAI_demo_2_CLAIMS",  # a version name starts with a letter
    "KAI_demo_v1_DATA", "KAI_demo_v1_CLAIMS",  # a suffix where a workflow goes
    "KAI_demo_DATA_x", "OBJ_KAI_demo_DATA", "OBJ_KAI_demo_v1_wf", "OBJ_KAI_demo_CLAIMS",
    "KV_KAI_demo_v1", "OBJ_OTHER", "XKAI_demo_v1_wf", "KAI_demo_v1_wf ",
    "KAI_demo.x_v1_wf",
])
def test_names_the_runner_does_not_build_are_nobody_s(name: str) -> None:
    assert stream_owner(name) is None


def test_a_name_kai_yaml_would_refuse_is_never_read_back() -> None:
    # `_` joins the parts: a project "a_b" (kai.yaml allows none) would be ambiguous
    assert stream_owner(contract.stream_name("a_b", "v1", "wf")) is None
    assert stream_owner(contract.data_stream_name("a_b")) is None


def test_a_prefix_of_another_project_is_another_project() -> None:
    assert stream_owner("KAI_demo-2_v1_wf") == StreamOwner(WORK_STREAM, "demo-2", "v1", "wf")
