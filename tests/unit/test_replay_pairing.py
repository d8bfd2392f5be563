"""NACL return rejects pair by one rule live and in replay: an input's candidates (all its batches) pair as
one, after the inputs before it. Replay used to pair batch by batch, so the state's floor (the newest window
minus the lateness) moved between the batches of one object, and a pair that counted live was lost."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streamer.aggregate.batch import columns
from streamer.aggregate.pairing import Pairing
from streamer.decode.objects import CHUNK_BYTES, ObjectReader
from streamer.export.telemetry import Telemetry
from streamer.pipeline import Pipeline, Store
from streamer.replay import Input, replay_counts
from streamer.schema import V5_ALL_FIELDS
from streamer.sources.base import Delivery, single_chunk
from streamer.store.base import Done
from streamer.store.sqlite import CheckpointStore
from streamer.synth import InsightCase, insight_table, to_lines
from tests.unit.aggregate.test_pairing import ENI, LATENESS, W, nacl, reply, request


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as p:
        yield p


def text(cases: list[InsightCase]) -> str:
    return "\n".join(to_lines(insight_table(cases)).to_pylist()) + "\n"


def one_object() -> bytes:
    """A request, a record far ahead in event time, then more than a decode batch of other traffic, then the
    reply to the request: its first batch moves the pairing's floor past the request's window."""
    first = text([request(W + 5), request(W + 3 * LATENESS, port=50002)])
    filler = text([InsightCase(ENI, "10.0.1.5", "10.0.2.7", 80, 80, "ACCEPT", W + 5)])  # no candidate
    last = text([reply(W + 6)])
    body = " ".join(V5_ALL_FIELDS) + "\n" + first + filler * (2 * CHUNK_BYTES // len(filler)) + last
    assert len(body) > 2 * CHUNK_BYTES  # two batches at least
    return gzip.compress(body.encode(), 1)


async def test_one_object_gives_the_same_nacl_totals_live_and_in_replay(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    data = one_object()
    store = CheckpointStore(tmp_path / "state.db")
    telemetry = Telemetry(CollectorRegistry())
    live = Pipeline(store.load_state(), Store(store), telemetry, pool, insights_window_seconds=60, pairing=Pairing(LATENESS))
    assert await live.process("s3", Delivery("s3://b/k", lambda: single_chunk(data), [Done("s3", "b/k")])) == "ok"
    live.close()
    live.store.close()

    (tmp_path / "k.log.gz").write_bytes(data)
    reader = ObjectReader(columns=columns(False, True, nacl_pairing=True))
    state, _ = replay_counts(
        [Input("k", tmp_path / "k.log.gz", 0)],
        reader,
        pool,
        insights_window_seconds=60,
        lateness_seconds=LATENESS,
        nacl_pairing=True,
    )
    assert nacl(state) == nacl(live.state) == {ENI: 1}
