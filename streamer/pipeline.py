"""decode -> aggregate -> checkpoint -> apply, for one delivery at a time.

The event loop streams the delivery's bytes; a worker thread runs the same
Ingestor as `replay`, pulling chunks back from the loop. When the input is
decoded, its delta and positions are committed in one SQLite transaction
(on the store's own thread), and only then applied to the live state that
/metrics reads. The source acknowledges upstream after `process` returns.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from streamer.aggregate.anomaly import Anomaly
from streamer.aggregate.batch import COLUMNS, COLUMNS_WITH_WINDOWS, BatchResult, reducer
from streamer.aggregate.counters import Counters, combine
from streamer.aggregate.detection import SNAPSHOT_NAME, Detection
from streamer.aggregate.state import FlowState
from streamer.aggregate.windows import WindowBatch
from streamer.checkpoint import CheckpointStore, Commit, Done
from streamer.decode.objects import ObjectReader
from streamer.export.telemetry import Telemetry
from streamer.ingest import Ingestor, ObjectResult, account
from streamer.sources.base import Delivery, SourceError

log = logging.getLogger(__name__)
T = TypeVar("T")

KEEPALIVE_SECONDS = 30.0


class _Stopped(Exception):
    """The service is shutting down; abandon the delivery uncommitted."""


class Store:
    """The checkpoint store behind one dedicated thread (SQLite is blocking)."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.store.close()


class Pipeline:
    """The Sink every source hands its deliveries to."""

    def __init__(
        self,
        state: FlowState,
        store: Store,
        telemetry: Telemetry,
        pool: ThreadPoolExecutor,
        detection: Detection | None = None,
        on_anomalies: Callable[[list[Anomaly]], None] | None = None,
    ) -> None:
        self.state = state
        self.store = store
        self.telemetry = telemetry
        self.pool = pool
        self.detection = detection
        self.on_anomalies = on_anomalies
        self.columns = COLUMNS_WITH_WINDOWS if detection is not None else COLUMNS
        self.reduce = reducer(detection.windows.window_seconds if detection is not None else None)
        # Decoding runs concurrently; advancing the shared window state and committing it do not.
        self._commit_lock = asyncio.Lock()

    async def process(self, source: str, delivery: Delivery) -> str:
        if delivery.done and await self._already_done(delivery.done):
            self.telemetry.finished(source, "duplicate", 0, None)
            return "duplicate"
        keepalive = asyncio.create_task(self._keepalive(delivery)) if delivery.keepalive else None
        try:
            result, delta, max_end, window_parts = await self._decode(delivery)
        finally:
            if keepalive is not None:
                keepalive.cancel()
        outcome = account(result, delta, delivery.location)
        for reason, count in delivery.errors.items():
            delta.count(reason, count)
        change = Commit(
            delta, [Done(d.namespace, d.key, outcome) for d in delivery.done], dict(delivery.cursors), dict(delivery.snapshots)
        )
        anomalies: list[Anomaly] = []
        async with self._commit_lock:
            after = None
            if self.detection is not None:
                after, anomalies = self.detection.advance(window_parts)
                change.snapshots[SNAPSHOT_NAME] = after.snapshot()
            await self.store.call(self.store.store.commit, change)
            if after is not None:
                self.detection = after
            self.state.apply(delta)
        if anomalies and self.on_anomalies is not None:
            self.on_anomalies(anomalies)
        delay = None if delivery.arrived_at is None or max_end is None else delivery.arrived_at - max_end
        self.telemetry.finished(source, outcome, result.rows, delay)
        return outcome

    async def give_up(self, source: str, delivery: Delivery, reason: str) -> None:
        log.error("%s: giving up: %s", delivery.location, reason)
        change = Commit(
            FlowState(),
            [Done(d.namespace, d.key, reason) for d in delivery.done],
            dict(delivery.cursors),
            dict(delivery.snapshots),
        )
        await self.store.call(self.store.store.commit, change)
        self.telemetry.finished(source, reason, 0, None)

    def source_error(self, source: str, reason: str, message: str) -> None:
        log.warning("%s: %s: %s", source, reason, message)
        self.telemetry.source_error(source, reason)

    async def _already_done(self, done: list[Done]) -> bool:
        by_ns: dict[str, list[str]] = {}
        for d in done:
            by_ns.setdefault(d.namespace, []).append(d.key)
        for namespace, keys in by_ns.items():
            if len(await self.store.call(self.store.store.done_among, namespace, keys)) < len(keys):
                return False
        return True

    async def _keepalive(self, delivery: Delivery) -> None:
        assert delivery.keepalive is not None
        while True:
            await asyncio.sleep(KEEPALIVE_SECONDS)
            try:
                await delivery.keepalive()
            except Exception as exc:  # a failed extension only risks a redelivery, which is deduplicated
                log.warning("%s: keepalive failed: %s", delivery.location, exc)

    async def _decode(self, delivery: Delivery) -> tuple[ObjectResult[BatchResult], FlowState, int | None, list[WindowBatch]]:
        loop = asyncio.get_running_loop()
        body = delivery.body()
        stop = threading.Event()
        reader = ObjectReader(log_format=delivery.log_format, columns=self.columns, headerless=delivery.headerless)
        ingest: Ingestor[BatchResult] = Ingestor(reader, self.reduce, self.pool)

        def work() -> tuple[ObjectResult[BatchResult], FlowState, int | None, list[WindowBatch]]:
            parts: list[BatchResult] = []
            result = ingest.run(_pull(body, loop, stop), parts.append)
            delta = FlowState(Counters(combine(p.counters for p in parts)))
            ends = [p.max_end for p in parts if p.max_end is not None]
            windows = [p.windows for p in parts if p.windows is not None]
            return result, delta, max(ends) if ends else None, windows

        try:
            return await asyncio.to_thread(work)
        except _Stopped as exc:
            raise asyncio.CancelledError from exc
        except asyncio.CancelledError:
            stop.set()
            raise
        finally:
            stop.set()
            if isinstance(body, AsyncGenerator):
                await body.aclose()


def _pull(body: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop, stop: threading.Event) -> Iterator[bytes]:
    """Chunks of an async body, fetched from a worker thread."""
    while True:
        future = asyncio.run_coroutine_threadsafe(_next(body), loop)
        while True:
            try:
                chunk = future.result(timeout=0.5)
                break
            except FutureTimeout:
                if stop.is_set():
                    future.cancel()
                    raise _Stopped from None
        if chunk is None:
            return
        yield chunk


async def _next(body: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await anext(body)
    except StopAsyncIteration:
        return None
    except SourceError:
        raise
    except Exception as exc:  # anything else from the network is a read failure too
        raise SourceError(type(exc).__name__, str(exc)) from exc
