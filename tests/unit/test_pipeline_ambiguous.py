"""Live detection after a commit with an unknown outcome (one process, real SQLite checkpoint).

A commit that landed although the call failed leaves its input "already
counted": the retry is a duplicate and never reaches the detector again. The
windows and detector state that commit wrote must therefore become the live
ones, and the alerts it closed must still go out, exactly once; a commit that
did not land changes nothing and its retry counts as usual.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.compute as pc
import pytest
from prometheus_client import CollectorRegistry

from streamer.aggregate.anomaly import Anomaly, Settings
from streamer.aggregate.detection import Detection
from streamer.aggregate.state import FlowState
from streamer.export.telemetry import Telemetry
from streamer.pipeline import DUPLICATE, Pipeline, Store
from streamer.schema import DEFAULT_FIELDS
from streamer.sources.base import Delivery, single_chunk
from streamer.store.base import CheckpointError, Commit, Done, Refused
from streamer.store.sqlite import CheckpointStore

ENI = "eni-0spike000000000001"
#: a minute-aligned event time two hours back (event time here comes from the records only)
T = (int(time.time()) - 7200) // 60 * 60
SPIKE = T + 240


class Ambiguous(CheckpointStore):
    """The real SQLite store whose next group commit fails with an unknown outcome: landed or not."""

    def __init__(self, path: Path, landed: bool) -> None:
        super().__init__(path)
        self.landed = landed
        self.fail_next = False

    def commit_group(self, changes: Sequence[Commit]) -> list[Refused]:
        if not self.fail_next:
            return super().commit_group(changes)
        self.fail_next = False
        if self.landed:
            super().commit_group(changes)
        raise CheckpointError("connection lost; did it commit?")


def body(*windows: tuple[int, int]) -> bytes:
    """(rejected records, end time) per window."""
    rows = "".join(
        f"2 123456789012 {ENI} 10.0.0.{i % 200 + 1} 10.0.1.1 {40000 + i} 22 6 1 40 {end - 5} {end} REJECT OK\n"
        for n, end in windows
        for i in range(n)
    )
    return gzip.compress((" ".join(DEFAULT_FIELDS) + "\n" + rows).encode())


def delivery(key: str, data: bytes) -> Delivery:
    return Delivery(location=f"s3://b/{key}", body=lambda: single_chunk(data), done=[Done("s3", f"b/{key}#etag")])


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as p:
        yield p


def open_pipeline(store: CheckpointStore, pool: ThreadPoolExecutor, alerts: list[Anomaly]) -> Pipeline:
    settings = Settings(window_seconds=60, warmup_windows=3, min_rejected_records=20)
    detection = Detection.create(settings, 120)
    return Pipeline(FlowState(), Store(store), Telemetry(CollectorRegistry()), pool, detection, alerts.extend)


BASELINE = body(*((1, T + 60 * w + 30) for w in range(4)))  # one reject a minute, T .. T+3m
SPIKE_INPUT = body((100, SPIKE + 30))  # a hundred in the minute after
LATER = body((1, SPIKE + 260))  # moves event time past the spike's window (lateness 120 s)


def spike_records(pipe: Pipeline) -> int:
    assert pipe.detection is not None
    stats = pipe.detection.windows.stats
    mine = stats.filter(pc.equal(stats.column("window_start"), SPIKE))
    return int(pc.sum(mine.column("records")).as_py() or 0)


@pytest.mark.parametrize("landed", [False, True])
async def test_the_windows_of_an_input_whose_commit_outcome_was_unknown_reach_the_detector(
    tmp_path: Path, pool: ThreadPoolExecutor, landed: bool
) -> None:
    store = Ambiguous(tmp_path / "state.db", landed)
    alerts: list[Anomaly] = []
    pipe = open_pipeline(store, pool, alerts)
    assert await pipe.process("s3", delivery("baseline", BASELINE)) == "ok"
    store.fail_next = True
    with pytest.raises(CheckpointError):
        await pipe.process("s3", delivery("spike", SPIKE_INPUT))
    assert await pipe.process("s3", delivery("spike", SPIKE_INPUT)) == (DUPLICATE if landed else "ok")
    assert spike_records(pipe) == 100  # in the live windows once, whichever way the commit went
    assert await pipe.process("s3", delivery("later", LATER)) == "ok"
    assert [(a.interface_id, a.window_start, a.rejected_records) for a in alerts] == [(ENI, SPIKE, 100)]
    pipe.store.close()


@pytest.mark.parametrize("landed", [False, True])
async def test_an_alert_closed_by_a_commit_whose_outcome_was_unknown_goes_out_once(
    tmp_path: Path, pool: ThreadPoolExecutor, landed: bool
) -> None:
    store = Ambiguous(tmp_path / "state.db", landed)
    alerts: list[Anomaly] = []
    pipe = open_pipeline(store, pool, alerts)
    assert await pipe.process("s3", delivery("baseline", BASELINE)) == "ok"
    assert await pipe.process("s3", delivery("spike", SPIKE_INPUT)) == "ok"
    store.fail_next = True
    with pytest.raises(CheckpointError):
        await pipe.process("s3", delivery("later", LATER))
    assert await pipe.process("s3", delivery("later", LATER)) == (DUPLICATE if landed else "ok")
    assert [(a.interface_id, a.window_start) for a in alerts] == [(ENI, SPIKE)]
    assert spike_records(pipe) == 0  # closed, not open again
    # more input later: the spike's window is not scored again
    assert await pipe.process("s3", delivery("much-later", body((1, SPIKE + 600)))) == "ok"
    assert [(a.interface_id, a.window_start) for a in alerts] == [(ENI, SPIKE)]
    pipe.store.close()
