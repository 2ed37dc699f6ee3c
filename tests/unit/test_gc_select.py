"""What `kai gc` selects among a server's streams, and how it prints it (renderer.gc)."""

from __future__ import annotations

from renderer.gc import ConsumerInfo, StreamInfo, listing, notes, select, summary
from runner import contract

PROJECT = "demo"
RUNNING = frozenset({"live"})


def work(project: str, version: str, workflow: str = "wf", *consumers: ConsumerInfo,
         messages: int = 0, size: int = 0) -> StreamInfo:
    return StreamInfo(contract.stream_name(project, version, workflow),
                      (contract.stream_subjects(project, version, workflow),), messages, size,
                      len(consumers), consumers)


def bucket(project: str, version: str) -> StreamInfo:
    return StreamInfo(contract.claims_stream(project, version),
                      contract.claims_subjects(project, version), 0, 0)


def names(streams: tuple[StreamInfo, ...] | list[StreamInfo]) -> list[str]:
    return [s.name for s in streams]


def test_only_this_project_s_versions_that_do_not_run() -> None:
    data = StreamInfo(contract.data_stream_name(PROJECT), (contract.data_subjects(PROJECT),),
                      7, 700)
    streams = [
        work(PROJECT, "live"), bucket(PROJECT, "live"), data,
        work(PROJECT, "old"), bucket(PROJECT, "old"), work(PROJECT, "gone", "a"),
        work("demo-2", "old"), bucket("other", "old"),
        StreamInfo(contract.data_stream_name("other"), (contract.data_subjects("other"),), 0, 0),
        StreamInfo("OTHER", ("other.>",), 1, 1), StreamInfo("KAI_demo_Old_wf", ("x.>",), 0, 0),
    ]
    sel = select(streams, PROJECT, RUNNING)
    assert [(g.owner.version, g.owner.kind, g.stream.name) for g in sel.garbage] == [
        ("gone", contract.WORK_STREAM, "KAI_demo_gone_a"),
        ("old", contract.WORK_STREAM, "KAI_demo_old_wf"),
        ("old", contract.CLAIM_BUCKET, "OBJ_KAI_demo_old_CLAIMS"),
    ]
    assert sel.versions == ("gone", "old") and not sel.in_use and not sel.foreign_subjects


def test_the_data_stream_is_never_garbage_even_with_nothing_running() -> None:
    data = StreamInfo(contract.data_stream_name(PROJECT), (contract.data_subjects(PROJECT),),
                      3, 30)
    assert select([data], PROJECT, frozenset()).garbage == ()


def test_a_stream_named_like_ours_with_other_subjects_is_kept() -> None:
    odd = StreamInfo(contract.stream_name(PROJECT, "old", "wf"), ("orders.>",), 5, 50)
    extra = StreamInfo(contract.stream_name(PROJECT, "old", "b"),
                       (contract.stream_subjects(PROJECT, "old", "b"), "more.>"), 0, 0)
    sel = select([odd, extra, bucket(PROJECT, "old")], PROJECT, RUNNING)
    assert names([g.stream for g in sel.garbage]) == ["OBJ_KAI_demo_old_CLAIMS"]
    assert names(sel.foreign_subjects) == ["KAI_demo_old_b", "KAI_demo_old_wf"]
    assert notes(sel) == [
        "kept: KAI_demo_old_b: named like a stream of this project, but it captures "
        "kai.demo.old.b.>, more.>, not what the runner's would",
        "kept: KAI_demo_old_wf: named like a stream of this project, but it captures "
        "orders.>, not what the runner's would",
    ]


def test_a_version_still_consumed_is_kept_whole() -> None:
    busy = ConsumerInfo("s1-b", pending=0, waiting=2)
    idle = ConsumerInfo("s0-a", pending=3, waiting=0)
    streams = [work(PROJECT, "old", "one", idle), work(PROJECT, "old", "two", busy),
               bucket(PROJECT, "old"), work(PROJECT, "other", "wf", idle)]
    sel = select(streams, PROJECT, RUNNING)
    assert names([g.stream for g in sel.garbage]) == ["KAI_demo_other_wf"]
    assert [(u.version, u.consumers) for u in sel.in_use] == [("old", ("KAI_demo_old_two/s1-b",))]
    assert notes(sel)[0].startswith("kept: version old is not started in kai.yaml, but its "
                                    "streams are still consumed (KAI_demo_old_two/s1-b ")


def test_listing_is_sorted_one_line_each() -> None:
    streams = [
        bucket(PROJECT, "b"),
        work(PROJECT, "b", "wf", ConsumerInfo("s1-y", 0, 0), ConsumerInfo("s0-x", 1, 0),
             messages=1, size=120),
        work(PROJECT, "a-long", "z"), work(PROJECT, "a-long", "m", messages=2, size=1),
    ]
    sel = select(streams, PROJECT, RUNNING)
    assert listing(sel) == [
        "a-long  work stream   KAI_demo_a-long_m: 2 messages, 1 byte",
        "a-long  work stream   KAI_demo_a-long_z: 0 messages, 0 bytes",
        "b       work stream   KAI_demo_b_wf: 1 message, 120 bytes",
        "b       consumer      KAI_demo_b_wf/s0-x: 1 message pending",
        "b       consumer      KAI_demo_b_wf/s1-y: 0 messages pending",
        "b       claim bucket  KAI_demo_b_CLAIMS (stream OBJ_KAI_demo_b_CLAIMS): "
        "0 messages, 0 bytes",
    ]
    assert summary(sel) == "4 streams (2 consumers) of versions a-long, b"
    assert listing(select(list(reversed(streams)), PROJECT, RUNNING)) == listing(sel)
