"""The service wires config into the parts (what the parts' own tests cannot see), and restarts crashed sources."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from streamer.aws import AwsClients
from streamer.commit_group import Limits
from streamer.config import parse_config
from streamer.pipeline import Store
from streamer.service import CLEAN_RUN_SECONDS, RestartBackoff, Service
from streamer.store.base import CheckpointError
from streamer.store.sqlite import CheckpointStore


def test_backoff_doubles_while_a_source_keeps_crashing_up_to_the_limit() -> None:
    backoff = RestartBackoff(first=1.0, limit=8.0)
    assert [backoff.after(0.1) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_backoff_resets_after_the_source_ran_cleanly_for_a_while() -> None:
    backoff = RestartBackoff()
    for _ in range(7):
        backoff.after(1.0)
    assert backoff.after(CLEAN_RUN_SECONDS - 1) == 128.0
    assert backoff.after(CLEAN_RUN_SECONDS) == 1.0  # a crash after a clean minute is not a crash loop
    assert backoff.after(0.5) == 2.0


def test_detector_baselines_expire_with_their_interfaces(tmp_path: Path) -> None:
    """metrics.interface_idle_seconds bounds the detector too: no baseline outlives its ENI's series."""
    doc = {
        "checkpoint": {"path": str(tmp_path / "state.db")},
        "sources": [{"type": "s3", "bucket": "flow-logs"}],
        "metrics": {"interface_idle_seconds": 1234},
    }
    service = Service(parse_config(doc, {}), AwsClients())
    assert service._settings().idle_seconds == 1234


def test_group_commit_bounds_come_from_the_checkpoint_section(tmp_path: Path) -> None:
    cp = {"path": str(tmp_path / "state.db"), "group_commit_max_inputs": 4, "group_commit_max_bytes": 1000}
    doc = {"checkpoint": {**cp, "group_commit_delay_seconds": 0.5}, "sources": [{"type": "s3", "bucket": "flow-logs"}]}
    assert Service(parse_config(doc, {}), AwsClients())._group_limits() == Limits(4, 1000, 0.5)


class _PruneFails(CheckpointStore):
    """The real SQLite store whose housekeeping fails (a locked or slow database)."""

    calls = 0

    def prune(self, older_than_seconds: float) -> int:
        type(self).calls += 1
        raise CheckpointError("database is locked")


async def test_a_failed_prune_is_tried_again_and_stops_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import streamer.service as service_module

    monkeypatch.setattr(service_module, "PRUNE_INTERVAL_SECONDS", 0.01)
    doc = {"checkpoint": {"path": str(tmp_path / "state.db")}, "sources": [{"type": "s3", "bucket": "flow-logs"}]}
    service = Service(parse_config(doc, {}), AwsClients())
    store = Store(_PruneFails(tmp_path / "state.db"))
    task = asyncio.create_task(service._prune(store))
    try:
        for _ in range(1000):
            if _PruneFails.calls >= 3 or task.done():
                break
            await asyncio.sleep(0.01)
        assert not task.done()  # the failure did not end the task (nor, through the TaskGroup, the service)
        assert _PruneFails.calls >= 3
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        store.close()


class _FailsWhileAnotherStops:
    """A source whose task group loses one reader to an error while another takes a moment to stop (as a
    Kinesis shard reader that cancels its read-ahead task and waits for it)."""

    name = "flaky"
    ready = True

    def __init__(self, body_ends: bool = False) -> None:
        self.failed = asyncio.Event()
        self.fail = asyncio.Event()
        self.runs = 0
        #: the group's body only starts the readers (the failure comes while the group waits for them)
        self.body_ends = body_ends

    async def run(self, sink: object) -> None:
        self.runs += 1

        async def stops_slowly() -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                await asyncio.sleep(0.05)

        async def fails() -> None:
            await self.fail.wait()
            self.failed.set()
            raise OSError("the database went away")

        async with asyncio.TaskGroup() as group:
            group.create_task(stops_slowly())
            group.create_task(fails())
            if not self.body_ends:
                await asyncio.sleep(3600)


async def _serving(
    tmp_path: Path, source: _FailsWhileAnotherStops, monkeypatch: pytest.MonkeyPatch
) -> tuple[Service, asyncio.Task[None]]:
    doc = {
        "checkpoint": {"path": str(tmp_path / "state.db")},
        "sources": [{"type": "s3", "bucket": "flow-logs"}],
        "http": {"listen_address": "127.0.0.1:0"},
    }
    service = Service(parse_config(doc, {}), AwsClients())

    async def sources(store: Store) -> list[object]:
        return [source]

    async def first_calls() -> None:
        return None

    monkeypatch.setattr(service, "_build_sources", sources)
    monkeypatch.setattr(service, "_first_calls", first_calls)
    task = asyncio.create_task(service.run(asyncio.Event()))
    started = asyncio.create_task(service.started.wait())
    await asyncio.wait([started, task], timeout=20, return_when=asyncio.FIRST_COMPLETED)
    assert service.started.is_set()
    return service, task


async def _stopped(task: asyncio.Task[None]) -> bool:
    done, _ = await asyncio.wait([task], timeout=10)
    if not done:
        task.cancel()
        await asyncio.wait([task], timeout=10)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: the test looks at it, or it is the failure it caused on purpose
    return bool(done)


async def test_a_service_cancelled_while_a_source_stops_on_a_failure_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.11's TaskGroup swallows a cancellation that arrives while it is stopping on a child's failure
    (cpython#116720): the source's restart loop must still end, not restart the source for ever while the
    service's group waits for it (the model test found a replica that never stopped: tests/model/FOUND.md)."""
    source = _FailsWhileAnotherStops()
    _, task = await _serving(tmp_path, source, monkeypatch)
    source.fail.set()
    await source.failed.wait()
    await asyncio.sleep(0)  # the source's group is stopping now: its slow reader is in its cleanup
    task.cancel()
    stopped = await _stopped(task)
    assert stopped, f"the service did not stop on its cancellation (the source restarted {source.runs - 1} times)"
    assert source.runs == 1


async def test_a_service_whose_task_fails_while_a_source_stops_on_a_failure_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race, from a failed task of the service's own group (here the lag probe): the service ends
    (and its supervisor restarts it) instead of hanging."""
    source = _FailsWhileAnotherStops()

    async def probe_fails(self: Service) -> None:
        source.fail.set()
        await source.failed.wait()
        await asyncio.sleep(0)
        raise RuntimeError("a bug in the lag probe")

    monkeypatch.setattr(Service, "_probe_lag", probe_fails)
    _, task = await _serving(tmp_path, source, monkeypatch)
    assert await _stopped(task), f"the service did not end (the source restarted {source.runs - 1} times)"
    assert isinstance(task.exception(), BaseExceptionGroup)


async def test_a_source_whose_reader_fails_after_the_group_body_ended_is_restarted(tmp_path: Path) -> None:
    """On Python 3.11 such a failure leaves the task counting a cancellation nobody asked for: the restart
    loop must not take that for a stop (the source would be gone until the process restarts)."""
    doc = {"checkpoint": {"path": str(tmp_path / "state.db")}, "sources": [{"type": "s3", "bucket": "flow-logs"}]}
    service = Service(parse_config(doc, {}), AwsClients())
    source = _FailsWhileAnotherStops(body_ends=True)
    source.fail.set()
    task = asyncio.create_task(service._run_source(source, pipeline=None))  # type: ignore[arg-type]
    try:
        for _ in range(300):
            if source.runs >= 2 or task.done():
                break
            await asyncio.sleep(0.01)
        assert not task.done()
        assert source.runs == 2
    finally:
        service.stopping = True  # as the service's group does before it cancels its tasks
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class _LongBackoff:
    def after(self, ran_seconds: float) -> float:
        return 60.0


class _ReaderFails:
    """A source whose reader fails and whose other reader stops at once; `on_failure` runs as the failed
    reader's done callback (so a task of the service can fail in the very same loop iteration)."""

    name = "racy"
    ready = True

    def __init__(self) -> None:
        self.runs = 0
        self.failed: asyncio.Future[None] | None = None

    async def run(self, sink: object) -> None:
        self.runs += 1
        if self.runs > 1:
            await asyncio.sleep(3600)  # restarted: it runs for ever

        async def fails() -> None:
            await asyncio.sleep(0.05)
            raise OSError("the database went away")

        async with asyncio.TaskGroup() as group:
            reader = group.create_task(fails())
            group.create_task(asyncio.sleep(3600))
            failed = self.failed
            if failed is not None:

                def tell(_: asyncio.Task[None]) -> None:
                    if not failed.done():
                        failed.set_result(None)

                reader.add_done_callback(tell)
            await asyncio.sleep(3600)


async def test_a_service_whose_task_fails_as_a_source_fails_ends_without_waiting_out_the_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's group cancels the source's restart loop one step before the service's own body: the
    loop sees the source's failure before the stop mark is set, unless it yields first (else it counts a
    crash and backs off, up to 300 s, while the service waits for it, had the mark not cut it short)."""
    import streamer.service as service_module

    monkeypatch.setattr(service_module, "RestartBackoff", _LongBackoff)
    source = _ReaderFails()
    source.failed = asyncio.get_running_loop().create_future()

    async def probe_fails(self: Service) -> None:
        assert source.failed is not None
        await source.failed
        raise RuntimeError("a bug in the lag probe")

    monkeypatch.setattr(Service, "_probe_lag", probe_fails)
    service, task = await _serving(tmp_path, source, monkeypatch)  # type: ignore[arg-type]
    assert await _stopped(task), "the service waited out its source's restart backoff"
    assert source.runs == 1
    # and the failure is not counted as a crash to restart from: the service was stopping
    assert service.telemetry.source_errors.labels(source.name, "crashed")._value.get() == 0


async def test_a_stop_marked_during_a_source_backoff_ends_its_restart_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop mark, not the cancellation (which a 3.11 TaskGroup may have swallowed), ends the loop: the
    backoff is cut short and the source is not started again."""
    import streamer.service as service_module

    monkeypatch.setattr(service_module, "RestartBackoff", _LongBackoff)
    doc = {"checkpoint": {"path": str(tmp_path / "state.db")}, "sources": [{"type": "s3", "bucket": "flow-logs"}]}
    service = Service(parse_config(doc, {}), AwsClients())
    source = _ReaderFails()
    task = asyncio.create_task(service._run_source(source, pipeline=None))  # type: ignore[arg-type]
    try:
        for _ in range(300):
            if source.runs and service.telemetry.source_errors.labels(source.name, "crashed")._value.get():
                break
            await asyncio.sleep(0.01)
        service._mark_stopping()  # no cancellation: as if it had been swallowed
        done, _ = await asyncio.wait([task], timeout=5)
        assert done, "the restart loop backed off on (or restarted the source) after the stop was marked"
        assert source.runs == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class _CommitsWhileTheDatabaseIsAway:
    """A source whose commit (shielded, as the group commit's) waits for a database that does not answer."""

    name = "waits"
    ready = True

    def __init__(self) -> None:
        self.waiting = asyncio.Event()

    async def run(self, sink: object) -> None:
        store = sink.store  # type: ignore[attr-defined]  # the pipeline's
        store.store.problem = "the database did not answer"  # as PostgresStore's health says
        call = asyncio.ensure_future(store.call(lambda: None))
        self.waiting.set()
        try:
            await asyncio.shield(call)
        except asyncio.CancelledError:
            await asyncio.wait([call])  # the commit in flight finishes (or fails) before the task stops
            raise


async def test_a_service_cancelled_while_a_commit_waits_for_the_database_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call waits while the database does not answer, until the fleet's heartbeat finds it back; once the
    service stops, nothing looks any more: the store is cut short however the stop came (the model test found a
    replica cancelled during an outage that never stopped)."""
    source = _CommitsWhileTheDatabaseIsAway()
    _, task = await _serving(tmp_path, source, monkeypatch)  # type: ignore[arg-type]
    waiting = asyncio.create_task(source.waiting.wait())
    await asyncio.wait([waiting, task], timeout=20, return_when=asyncio.FIRST_COMPLETED)
    assert source.waiting.is_set()
    task.cancel()
    assert await _stopped(task), "the service waited for a database nobody looks for any more"
