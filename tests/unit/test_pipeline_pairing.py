"""NACL pairing state committed with the counters (real SQLite checkpoint): a restart keeps it, a retried
input pairs nothing twice."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streamer.aggregate import insights as ins
from streamer.aggregate.anomaly import Settings
from streamer.aggregate.detection import Detection
from streamer.aggregate.pairing import PREFIX, Pairing
from streamer.aggregate.state import FlowState
from streamer.export.telemetry import Telemetry
from streamer.pipeline import DUPLICATE, Pipeline, Store
from streamer.sources.base import Delivery, single_chunk
from streamer.store.base import CheckpointError, Done
from streamer.store.sqlite import CheckpointStore
from tests.unit.aggregate.test_pairing import ENI, LATENESS, W, body, reply, request
from tests.unit.test_pipeline_ambiguous import Ambiguous


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as p:
        yield p


def open_pipeline(path: Path, pool: ThreadPoolExecutor) -> Pipeline:
    """A process starting on the checkpoint at `path`, as the service does (state and pairing restored)."""
    store = CheckpointStore(path)
    pairing = Pairing.restore(store.snapshots(PREFIX), LATENESS)
    telemetry = Telemetry(CollectorRegistry())
    return Pipeline(store.load_state(), Store(store), telemetry, pool, insights_window_seconds=60, pairing=pairing)


def delivery(key: str, data: bytes) -> Delivery:
    return Delivery(location=f"s3://b/{key}", body=lambda: single_chunk(data), done=[Done("s3", f"b/{key}#etag")])


def nacl(state: FlowState) -> dict[str, int]:
    return {r["key1"]: r["records"] for r in state.insights.to_pylist() if r["kind"] == ins.NACL}


@pytest.mark.parametrize("reply_first", [False, True])
async def test_a_pair_across_a_restart_counts_once_and_a_retry_adds_nothing(
    tmp_path: Path, pool: ThreadPoolExecutor, reply_first: bool
) -> None:
    first, second = ("reply", [reply(W + 6)]), ("request", [request(W + 5)])
    if not reply_first:
        first, second = second, first
    pipe = open_pipeline(tmp_path / "state.db", pool)
    assert await pipe.process("s3", delivery(first[0], body(first[1]))) == "ok"
    pipe.store.close()  # the process ends; the next one starts on the checkpoint
    pipe = open_pipeline(tmp_path / "state.db", pool)
    assert await pipe.process("s3", delivery(second[0], body(second[1]))) == "ok"
    assert nacl(pipe.state) == {ENI: 1}
    # the same inputs again (a retried delivery): nothing pairs twice
    for name, cases in (first, second):
        assert await pipe.process("s3", delivery(name, body(cases))) == DUPLICATE
    assert nacl(pipe.state) == {ENI: 1}
    pipe.store.close()
    pipe = open_pipeline(tmp_path / "state.db", pool)
    assert nacl(pipe.state) == {ENI: 1}
    assert pipe.pairing is not None
    assert not pipe.pairing.replies  # the reply paired: it waits no more
    pipe.store.close()


async def test_the_state_is_committed_in_pieces_and_old_windows_go_with_the_counters(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """Each commit appends its own requests; a piece once written is never rewritten; windows older than
    the newest minus the lateness leave the checkpoint in the commit that moves past them."""
    pipe = open_pipeline(tmp_path / "state.db", pool)
    assert await pipe.process("s3", delivery("a", body([request(W + 5, port=p) for p in range(50001, 50051)]))) == "ok"
    first = pipe.store.store.snapshots(PREFIX)
    assert await pipe.process("s3", delivery("b", body([request(W + 65, port=p) for p in range(50001, 50051)]))) == "ok"
    second = pipe.store.store.snapshots(PREFIX)
    assert {n: v for n, v in second.items() if n in first and "/q" in n} == {n: v for n, v in first.items() if "/q" in n}
    assert [len(v) for n, v in second.items() if n not in first] == [50 * 8]  # its 50 requests, 8 bytes each
    late = W + 2 * LATENESS
    assert await pipe.process("s3", delivery("c", body([request(late, port=50001)]))) == "ok"
    windows = {n.split("/")[2] for n in pipe.store.store.snapshots(PREFIX) if "/w/" in n}
    assert windows == {f"{late - late % 60:012d}"}
    pipe.store.close()


@pytest.mark.parametrize("landed", [False, True])
async def test_after_a_commit_with_an_unknown_outcome_the_retry_pairs_exactly_once(
    tmp_path: Path, pool: ThreadPoolExecutor, landed: bool
) -> None:
    """The pairing state is read back from the checkpoint with the counters: a retry of an input whose commit
    landed is a duplicate and pairs nothing, one that did not land pairs once."""
    store = Ambiguous(tmp_path / "state.db", landed)
    telemetry = Telemetry(CollectorRegistry())
    pipe = Pipeline(FlowState(), Store(store), telemetry, pool, insights_window_seconds=60, pairing=Pairing(LATENESS))
    assert await pipe.process("s3", delivery("request", body([request(W + 5)]))) == "ok"
    store.fail_next = True
    with pytest.raises(CheckpointError):
        await pipe.process("s3", delivery("reply", body([reply(W + 6)])))
    again = await pipe.process("s3", delivery("reply", body([reply(W + 6)])))
    assert again == (DUPLICATE if landed else "ok")
    assert nacl(pipe.state) == {ENI: 1}
    assert pipe.pairing is not None
    assert not pipe.pairing.replies
    pipe.store.close()
    pipe = open_pipeline(tmp_path / "state.db", pool)
    assert nacl(pipe.state) == {ENI: 1}
    pipe.store.close()


async def test_a_record_far_ahead_of_the_wall_clock_moves_no_pairing_state(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    """A record beyond the allowed skew (year 2100) counts, but, as for the windows, moves no event time: it
    does not make every window of the pairing state look older than the lateness (they would all be dropped,
    and nothing would pair across inputs any more)."""
    pipe = open_pipeline(tmp_path / "state.db", pool)
    assert await pipe.process("s3", delivery("request", body([request(W + 5)]))) == "ok"
    far, other = 4_102_444_800, "eni-0far0000000000001"  # year 2100: a pair there counts nothing
    bogus = [request(far, port=50002, eni=other), reply(far + 5, port=50002, eni=other)]
    assert await pipe.process("s3", delivery("bogus", body(bogus))) == "ok"
    assert await pipe.process("s3", delivery("reply", body([reply(W + 6)]))) == "ok"
    assert nacl(pipe.state) == {ENI: 1}
    assert pipe.pairing is not None
    assert pipe.pairing.newest == W
    pipe.store.close()


async def test_with_detection_on_a_groups_pairing_runs_beside_the_detector_and_counts_the_same(
    tmp_path: Path, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_plan` pairs a group on the pipeline's pairing thread while the windows advance the detector: each
    waits here until the other has started (in turn, one would wait in vain), and the pair and the
    windows come out as they would one after the other."""
    pairing_started, advancing = threading.Event(), threading.Event()
    met: dict[str, object] = {}
    pair, advance = Pairing.pair, Detection.advance_many

    def pairing_beside(self: Pairing, *args: Any, **kwargs: Any) -> Any:
        pairing_started.set()
        met["pairing saw the detector"] = advancing.wait(10)
        met["pairing thread"] = threading.current_thread().name
        return pair(self, *args, **kwargs)

    def advancing_beside(self: Detection, *args: Any, **kwargs: Any) -> Any:
        advancing.set()
        met["detector saw the pairing"] = pairing_started.wait(10)
        return advance(self, *args, **kwargs)

    monkeypatch.setattr(Pairing, "pair", pairing_beside)
    monkeypatch.setattr(Detection, "advance_many", advancing_beside)
    store = CheckpointStore(tmp_path / "state.db")
    detection = Detection.create(Settings(), LATENESS)
    pipe = Pipeline(
        store.load_state(), Store(store), Telemetry(CollectorRegistry()), pool, detection=detection,
        insights_window_seconds=60, pairing=Pairing(LATENESS), clock=lambda: W + 120,
    )  # fmt: skip
    try:
        assert await pipe.process("s3", delivery("request", body([request(W + 5)]))) == "ok"
        assert met["pairing saw the detector"] is True
        assert met["detector saw the pairing"] is True
        assert str(met["pairing thread"]).startswith("pairing")
        pairing_started.clear(), advancing.clear()
        assert await pipe.process("s3", delivery("reply", body([reply(W + 6)]))) == "ok"
        assert nacl(pipe.state) == {ENI: 1}
        assert pipe.detection is not None
        assert pipe.detection is not detection  # the windows advanced too
        assert pipe.pairing is not None
        assert not pipe.pairing.replies
    finally:
        pipe.close()
        store.close()


async def test_with_windows_on_an_inputs_delta_is_built_on_a_decode_thread_while_its_partials_fold(
    tmp_path: Path, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The input's reading thread folds its window partials while a decode thread builds its delta: each
    waits here until the other has started (in turn, one would wait in vain); the counts are as before."""
    import streamer.pipeline as pipeline_module

    building, folding = threading.Event(), threading.Event()
    met: dict[str, object] = {}
    delta_of, merge = pipeline_module.delta_of, pipeline_module.merge

    def building_beside(*args: Any) -> Any:
        building.set()
        met["delta saw the fold"] = folding.wait(10)
        met["delta thread"] = threading.current_thread()
        return delta_of(*args)

    def folding_beside(*args: Any) -> Any:
        folding.set()
        met["fold saw the delta"] = building.wait(10)
        met["fold thread"] = threading.current_thread()
        return merge(*args)

    monkeypatch.setattr(pipeline_module, "delta_of", building_beside)
    monkeypatch.setattr(pipeline_module, "merge", folding_beside)
    store = CheckpointStore(tmp_path / "state.db")
    pipe = Pipeline(
        store.load_state(), Store(store), Telemetry(CollectorRegistry()), pool,
        detection=Detection.create(Settings(), LATENESS), insights_window_seconds=60, pairing=Pairing(LATENESS),
        clock=lambda: W + 120,
    )  # fmt: skip
    try:
        assert await pipe.process("s3", delivery("both", body([request(W + 5), reply(W + 6)]))) == "ok"
        assert met["delta saw the fold"] is True
        assert met["fold saw the delta"] is True
        assert met["delta thread"] is not met["fold thread"]
        assert nacl(pipe.state) == {ENI: 1}
        assert sum(pipe.state.counters.table().column("records").to_pylist()) == 2
    finally:
        pipe.close()
        store.close()


async def test_unpaired_replies_beyond_the_cap_of_their_window_are_dropped_and_counted(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """Backscatter: replies no request answers. A window keeps at most the cap (one row per ENI and flow, with a
    count), the rest is counted in streamer_nacl_waiting_replies_dropped_total; a restart keeps the rows."""
    store = CheckpointStore(tmp_path / "state.db")
    registry = CollectorRegistry()
    pairing = Pairing(LATENESS, max_waiting_replies=2)
    pipe = Pipeline(store.load_state(), Store(store), Telemetry(registry), pool, insights_window_seconds=60, pairing=pairing)
    cases = [reply(W + 6, port=p) for p in range(50001, 50006)] + [reply(W + 7, port=50001)]
    assert await pipe.process("s3", delivery("scatter", body(cases))) == "ok"
    assert registry.get_sample_value("streamer_nacl_waiting_replies_dropped_total") == 3
    assert pipe.pairing is not None
    assert [t.num_rows for t in pipe.pairing.replies.values()] == [2]
    pipe.close()
    pipe.store.close()
    again = Pairing.restore(CheckpointStore(tmp_path / "state.db").snapshots(PREFIX), LATENESS, 2)
    assert sorted(again.replies[W].column("n").to_pylist()) == [1, 2]


async def test_the_cap_on_waiting_replies_holds_after_a_commit_with_an_unknown_outcome(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """The pairing state read back after a commit whose outcome is unknown keeps the configured cap
    (insights.max_waiting_replies_per_window), not the default: backscatter after it is still dropped."""
    store = Ambiguous(tmp_path / "state.db", landed=False)
    registry = CollectorRegistry()
    pairing = Pairing(LATENESS, max_waiting_replies=2)
    pipe = Pipeline(FlowState(), Store(store), Telemetry(registry), pool, insights_window_seconds=60, pairing=pairing)
    store.fail_next = True
    with pytest.raises(CheckpointError):
        await pipe.process("s3", delivery("request", body([request(W + 5)])))
    cases = [reply(W + 6, port=p) for p in range(50101, 50106)]
    assert await pipe.process("s3", delivery("scatter", body(cases))) == "ok"
    assert pipe.pairing is not None
    assert [t.num_rows for t in pipe.pairing.replies.values()] == [2]
    assert registry.get_sample_value("streamer_nacl_waiting_replies_dropped_total") == 3
    pipe.store.close()
