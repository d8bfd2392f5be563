"""Commit safety of the pipeline, on a real SQLite checkpoint in a temp dir.

- cancellation (SIGTERM) while the commit runs: the commit and the apply both
  finish, so live state equals the checkpoint;
- cancellation while the body is still being read: a clean CancelledError,
  never "aclose(): asynchronous generator is already running";
- the same input from two sources at once: counted once (the done-key check
  is inside the transaction);
- a record from a broken clock: counted, one warning naming the object.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streamer.aggregate.anomaly import Settings
from streamer.aggregate.detection import SNAPSHOT_NAME, Detection
from streamer.aggregate.state import FlowState
from streamer.export.telemetry import Telemetry
from streamer.pipeline import DUPLICATE, Pipeline, Store
from streamer.schema import DEFAULT_FIELDS
from streamer.sources.base import Delivery, single_chunk
from streamer.store.base import Commit, Done
from streamer.store.sqlite import CheckpointStore

NOW = int(time.time())


def lines(n: int, eni: str = "eni-a", end: int = NOW - 600) -> bytes:
    body = "".join(f"2 123456789012 {eni} 10.0.0.1 10.0.0.2 1024 22 6 1 40 {end - 5} {end} REJECT OK\n" for _ in range(n))
    return gzip.compress((" ".join(DEFAULT_FIELDS) + "\n" + body).encode())


class SlowStore(CheckpointStore):
    """The real SQLite store on a slow disk: each commit takes a while, and says when it started."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.committing = threading.Event()

    def commit(self, change: Commit) -> bool:
        self.committing.set()
        time.sleep(0.5)
        return super().commit(change)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as p:
        yield p


def pipeline(store: CheckpointStore, pool: ThreadPoolExecutor, **kwargs: object) -> Pipeline:
    detection = Detection.create(Settings(window_seconds=60), 120)
    return Pipeline(FlowState(), Store(store), Telemetry(CollectorRegistry()), pool, detection, **kwargs)  # type: ignore[arg-type]


def s3_delivery(key: str, body: bytes) -> Delivery:
    return Delivery(location=f"s3://bucket/{key}", body=lambda: single_chunk(body), done=[Done("s3", f"bucket/{key}#etag")])


async def test_cancel_during_commit_still_applies_what_was_committed(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    store = SlowStore(tmp_path / "state.db")
    pipe = pipeline(store, pool)
    task = asyncio.create_task(pipe.process("s3", s3_delivery("a.log.gz", lines(10))))
    await asyncio.to_thread(store.committing.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pipe.commits == 1
    committed = store.load_state()
    assert pipe.state.counters.table().equals(committed.counters.table())
    assert pipe.state.counters.total_records() == 10
    assert pipe.detection is not None
    assert store.snapshot(SNAPSHOT_NAME) == pipe.detection.snapshot(with_detector=False)  # the next snapshot builds on it
    pipe.store.close()


async def test_cancel_while_the_body_is_being_read_stops_cleanly(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    first = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield lines(5)[:20]
        first.set()
        await asyncio.Event().wait()  # a download that never finishes
        yield b""

    pipe = pipeline(CheckpointStore(tmp_path / "state.db"), pool)
    delivery = Delivery(location="s3://bucket/slow.log.gz", body=stalled, done=[Done("s3", "bucket/slow#e")])
    task = asyncio.create_task(pipe.process("s3", delivery))
    await asyncio.wait_for(first.wait(), 10)
    await asyncio.sleep(0.1)  # the worker is now waiting on the next chunk
    task.cancel()
    with pytest.raises(asyncio.CancelledError):  # not RuntimeError("aclose(): asynchronous generator is already running")
        await asyncio.wait_for(task, 5)
    assert pipe.commits == 0
    pipe.store.close()


async def test_the_same_object_from_two_sources_at_once_counts_once(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    store = CheckpointStore(tmp_path / "state.db")
    pipe = pipeline(store, pool)
    body = lines(50)
    outcomes = await asyncio.gather(
        pipe.process("s3", s3_delivery("same.log.gz", body)), pipe.process("s3_sqs", s3_delivery("same.log.gz", body))
    )
    assert sorted(outcomes) == [DUPLICATE, "ok"]
    assert pipe.state.counters.total_records() == 50
    assert store.load_state().counters.total_records() == 50
    pipe.store.close()


def test_commit_of_a_done_key_changes_nothing(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "state.db")
    assert store.commit(Commit(done=[Done("s3", "k")], cursors={("s", "p"): "1"}))
    assert not store.commit(Commit(done=[Done("s3", "k")], cursors={("s", "p"): "2"}))
    assert store.cursors("s") == {"p": "1"}
    store.close()


async def test_a_broken_clock_record_counts_and_warns_once_per_object(
    tmp_path: Path, pool: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    pipe = pipeline(CheckpointStore(tmp_path / "state.db"), pool, max_future_skew_seconds=300)
    body = gzip.decompress(lines(3)) + gzip.decompress(lines(2, "eni-broken", NOW + 30 * 86400)).split(b"\n", 1)[1]
    with caplog.at_level(logging.WARNING, "streamer.pipeline"):
        assert await pipe.process("s3", s3_delivery("mixed.log.gz", gzip.compress(body))) == "ok"
    assert pipe.state.counters.total_records() == 5
    assert pipe.telemetry.future_records.labels("s3")._value.get() == 2
    warnings = [r.getMessage() for r in caplog.records if "ahead of the wall clock" in r.getMessage()]
    assert len(warnings) == 1
    assert "s3://bucket/mixed.log.gz" in warnings[0]
    assert "eni-broken" in warnings[0]
    assert pipe.detection is not None
    assert pipe.detection.windows.watermark is not None
    assert pipe.detection.windows.watermark < NOW
    pipe.store.close()
