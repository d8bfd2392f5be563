"""Commit safety of the pipeline, on a real SQLite checkpoint in a temp dir.

- cancellation (SIGTERM) while the commit runs: the commit and the apply both
  finish, so live state equals the checkpoint;
- cancellation while the body is still being read: a clean CancelledError,
  never "aclose(): asynchronous generator is already running";
- the same input from two sources at once: counted once (the done-key check
  is inside the transaction);
- a record from a broken clock: counted, one warning naming the object;
- cancellation while a commit runs that then fails: still a cancellation, also
  through a source's commit-retry loop;
- an input that fails to decode: committed as failed, counted once, not retried.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry

from streamer.aggregate.anomaly import Settings
from streamer.aggregate.detection import SNAPSHOT_NAME, Detection
from streamer.aggregate.state import FlowState
from streamer.export.telemetry import Telemetry
from streamer.pipeline import DUPLICATE, Pipeline, Store
from streamer.schema import DEFAULT_FIELDS
from streamer.sources.base import Delivery, SourceError, single_chunk
from streamer.sources.kinesis import KinesisSource, KinesisSourceConfig
from streamer.store.base import Commit, Done, Refused
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

    def commit_group(self, changes: Sequence[Commit]) -> list[Refused]:
        self.committing.set()
        time.sleep(0.5)
        return super().commit_group(changes)


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


async def test_a_future_record_echoed_in_the_warning_cannot_forge_or_hide_log_lines(
    tmp_path: Path, pool: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    """The example names the record's interface, which is whatever the line said (a Firehose client's text)."""
    pipe = pipeline(CheckpointStore(tmp_path / "state.db"), pool, max_future_skew_seconds=300)
    forged = "eni-x\x1b[2K\x1b[1A\u2028ERROR\u202eforged"  # erase the line, go up, a line separator, bidi
    with caplog.at_level(logging.WARNING, "streamer.pipeline"):
        assert await pipe.process("s3", s3_delivery("forged.log.gz", lines(1, forged, NOW + 30 * 86400))) == "ok"
    (warning,) = [r.getMessage() for r in caplog.records if "ahead of the wall clock" in r.getMessage()]
    assert "eni-x" in warning
    assert warning.isprintable()
    pipe.store.close()


class FailingStore(CheckpointStore):
    """The real SQLite store on a disk that fails: each commit takes a while, then raises."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.committing = threading.Event()

    def commit_group(self, changes: Sequence[Commit]) -> list[Refused]:
        self.committing.set()
        time.sleep(0.5)
        raise sqlite3.OperationalError("disk I/O error")


async def test_sigterm_during_a_commit_that_then_fails_still_cancels(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    store = FailingStore(tmp_path / "state.db")
    pipe = pipeline(store, pool)
    task = asyncio.create_task(pipe.process("s3", s3_delivery("a.log.gz", lines(10))))
    await asyncio.to_thread(store.committing.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):  # not the OperationalError: a retry loop above would swallow that
        await asyncio.wait_for(task, 10)
    assert pipe.commits == 0
    pipe.store.close()


async def test_sigterm_stops_a_kinesis_shard_whose_commit_fails_instead_of_retrying(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """The shard reader retries a failed commit (the batch is in memory); a stop must still stop it."""
    store = FailingStore(tmp_path / "state.db")
    pipe = pipeline(store, pool)
    config = KinesisSourceConfig(type="kinesis", stream_name="s")
    source = KinesisSource("kinesis", config, None, lambda: asyncio.sleep(0, {}))  # type: ignore[arg-type]
    record = {"Data": gzip.compress(orjson.dumps({"logEvents": [{"id": "1", "message": "x"}]})), "SequenceNumber": "1"}
    batches: asyncio.Queue[Any] = asyncio.Queue()
    await source._unpack_in_pieces(pipe, "shard-0", [record], None, False, None, batches)  # type: ignore[list-item]
    batch = batches.get_nowait()
    task = asyncio.create_task(source._deliver(pipe, "shard-0", batch, None))
    await asyncio.to_thread(store.committing.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert source.positions == {}
    pipe.store.close()


async def test_an_input_that_fails_to_decode_is_counted_once_and_never_retried(
    tmp_path: Path, pool: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.table({"interface_id": [["eni-a"]], "packets": [1]}), buf)
    store = CheckpointStore(tmp_path / "state.db")
    pipe = pipeline(store, pool)
    with caplog.at_level(logging.ERROR, "streamer"):
        assert await pipe.process("s3", s3_delivery("list.parquet", buf.getvalue())) == "failed"
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("s3://bucket/list.parquet: unsupported_column: Parquet column interface_id")
    assert pipe.telemetry.objects.labels("s3", "failed")._value.get() == 1
    assert pipe.state.decode_errors == {"unsupported_column": 1}
    assert store.done_among("s3", ["bucket/list.parquet#etag"]) == {"bucket/list.parquet#etag"}
    assert await pipe.process("s3", s3_delivery("list.parquet", buf.getvalue())) == DUPLICATE
    assert store.load_state().decode_errors == {"unsupported_column": 1}
    pipe.store.close()


async def test_a_read_failure_is_not_bad_input_nothing_is_committed(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    async def reset_midway() -> AsyncIterator[bytes]:
        yield lines(2000)[:5000]
        raise SourceError("ConnectionResetError", "s3://bucket/reset.log.gz: connection reset by peer")

    store = CheckpointStore(tmp_path / "state.db")
    pipe = pipeline(store, pool)
    delivery = Delivery(location="s3://bucket/reset.log.gz", body=reset_midway, done=[Done("s3", "bucket/reset#e")])
    with pytest.raises(SourceError, match="connection reset"):
        await pipe.process("s3", delivery)
    assert pipe.commits == 0
    assert store.done_among("s3", ["bucket/reset#e"]) == set()  # read again, not remembered as failed
    pipe.store.close()


def test_a_shard_no_longer_read_here_drops_its_lag_series(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    """A shard that moved to another replica must not keep exporting its last lag from this one."""
    pipe = pipeline(CheckpointStore(tmp_path / "state.db"), pool)
    registry = pipe.telemetry.behind
    pipe.behind("kinesis", "shard-0", 600.0)
    assert [s.value for m in registry.collect() for s in m.samples] == [600.0]
    pipe.behind("kinesis", "shard-0", None)
    pipe.behind("kinesis", "shard-0", None)  # twice: still fine
    assert [s for m in registry.collect() for s in m.samples] == []
    pipe.store.close()
