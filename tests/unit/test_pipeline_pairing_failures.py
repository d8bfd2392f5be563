"""Review probes: with detection and pairing both on, a failure on either thread fails the input's commit
(never hangs) and leaves nothing behind: the retry pairs once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streamer.aggregate.anomaly import Settings
from streamer.aggregate.detection import Detection
from streamer.aggregate.pairing import PREFIX, Pairing
from streamer.export.telemetry import Telemetry
from streamer.pipeline import Pipeline, Store
from streamer.sources.base import DUPLICATE
from streamer.store.sqlite import CheckpointStore
from tests.unit.aggregate.test_pairing import ENI, LATENESS, W, body, reply, request
from tests.unit.test_pipeline_pairing import delivery, nacl


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as p:
        yield p


def open_both(path: Path, pool: ThreadPoolExecutor) -> tuple[Pipeline, CheckpointStore]:
    store = CheckpointStore(path)
    pipe = Pipeline(
        store.load_state(), Store(store), Telemetry(CollectorRegistry()), pool, detection=Detection.create(Settings(), LATENESS),
        insights_window_seconds=60, pairing=Pairing.restore(store.snapshots(PREFIX), LATENESS), clock=lambda: W + 120,
    )  # fmt: skip
    return pipe, store


@pytest.mark.parametrize("where", ["detector", "pairing"])
async def test_a_failure_on_either_thread_fails_the_commit_and_the_retry_pairs_once(
    tmp_path: Path, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    pipe, store = open_both(tmp_path / "state.db", pool)
    try:
        assert await pipe.process("s3", delivery("request", body([request(W + 5)]))) == "ok"
        calls = {"n": 0}
        owner: type = Detection if where == "detector" else Pairing
        name = "advance_many" if where == "detector" else "pair"
        original = getattr(owner, name)

        def failing(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError(f"{where} failed")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(owner, name, failing)
        with pytest.raises(RuntimeError, match="failed"):
            await asyncio.wait_for(pipe.process("s3", delivery("reply", body([reply(W + 6)]))), 60)
        assert nacl(pipe.state) == {}
        assert await asyncio.wait_for(pipe.process("s3", delivery("reply", body([reply(W + 6)]))), 60) == "ok"
        assert nacl(pipe.state) == {ENI: 1}
        assert await pipe.process("s3", delivery("reply", body([reply(W + 6)]))) == DUPLICATE
        assert nacl(pipe.state) == {ENI: 1}
        assert nacl(store.load_state()) == {ENI: 1}
    finally:
        pipe.close()
        store.close()
