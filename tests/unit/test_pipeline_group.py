"""Group commit in the pipeline, on a real SQLite checkpoint in a temp dir.

- inputs decoded together commit in one transaction; a duplicate claim inside
  it drops only that input, the others commit exactly;
- property-ish: for several random sets of inputs (interfaces over the cap,
  idle interfaces forgotten, windows closing, anomalies), a group ends exactly
  where the same inputs committed one by one, in the group's order, end:
  counters, membership, insights, windows, detector, anomalies, checkpoint.

The recording store is the real SQLite store that also notes what each
transaction held; the group delay is an hour, so a group closes only when
every input in flight is decoded (nothing waits on the clock).
"""

from __future__ import annotations

import asyncio
import gzip
import random
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry

from streamer.aggregate.anomaly import Anomaly, Settings
from streamer.aggregate.detection import DETECTOR_SNAPSHOT, SNAPSHOT_NAME, Detection
from streamer.aggregate.pairing import PREFIX, Pairing
from streamer.aggregate.state import OTHER_INTERFACE, FlowState
from streamer.commit_group import Limits
from streamer.export.telemetry import Telemetry
from streamer.pipeline import DUPLICATE, Pipeline, Store
from streamer.sources.base import Delivery, single_chunk
from streamer.store.base import Commit, Done, Refused
from streamer.store.sqlite import CheckpointStore
from streamer.synth import TrafficProfile, iter_text_chunks

HOUR = 3600.0
T0 = 1_764_000_000


class RecordingStore(CheckpointStore):
    """The real SQLite store; notes each transaction's inputs (their done keys) and whether it landed."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.transactions: list[tuple[list[str], list[Refused]]] = []

    def commit_group(self, changes: Sequence[Commit]) -> list[Refused]:
        refused = super().commit_group(changes)
        self.transactions.append(([d.key for c in changes for d in c.done], refused))
        return refused

    def landed(self) -> list[list[str]]:
        return [keys for keys, refused in self.transactions if not refused and keys]


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as p:
        yield p


def body(seed: int, records: int, enis: int, start: int) -> bytes:
    profile = TrafficProfile(
        records=records, enis=enis, seed=seed, start_epoch=start, span_seconds=120, reject_ratio=0.3, eni_skew=0.5
    )
    return gzip.compress(b"".join(iter_text_chunks(profile)))


def delivery(key: str, data: bytes) -> Delivery:
    return Delivery(location=f"s3://b/{key}", body=lambda: single_chunk(data), done=[Done("s3", key)], size=len(data))


class Run:
    """One pipeline over a fresh checkpoint, with the clock and detector settings every run shares."""

    def __init__(self, folder: Path, pool: ThreadPoolExecutor, group: Limits) -> None:
        folder.mkdir()
        self.store = RecordingStore(folder / "state.db")
        self.now = float(T0)
        self.anomalies: list[Anomaly] = []
        settings = Settings(window_seconds=60, warmup_windows=1, min_rejected_records=1, score_threshold=0.5)
        self.pipe = Pipeline(
            FlowState(),
            Store(self.store),
            Telemetry(CollectorRegistry()),
            pool,
            Detection.create(settings, 60),
            self.anomalies.extend,
            max_future_skew_seconds=10**9,
            max_interfaces=8,
            interface_idle_seconds=500,
            clock=lambda: self.now,
            insights_window_seconds=60,
            group=group,
            pairing=Pairing(lateness_seconds=60),
        )

    def close(self) -> None:
        self.pipe.close()
        self.pipe.store.close()


def sorted_table(table: pa.Table) -> pa.Table:
    return table.sort_by([(name, "ascending") for name in table.column_names])


def assert_same_state(a: FlowState, b: FlowState) -> None:
    assert sorted_table(a.counters.table()).equals(sorted_table(b.counters.table()))
    assert a.totals == b.totals
    assert a.decode_errors == b.decode_errors
    assert a.seen == b.seen
    assert sorted_table(a.insights).equals(sorted_table(b.insights))


async def test_a_duplicate_claim_in_a_group_drops_only_that_input(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    run = Run(tmp_path / "one", pool, Limits(delay_seconds=HOUR))
    bodies = {key: body(i, 500, 6, T0 - 3000) for i, key in enumerate(["a", "b", "c"])}
    deliveries = [delivery(key, data) for key, data in bodies.items()] + [delivery("b", bodies["b"])]  # b twice
    outcomes = await asyncio.gather(*(run.pipe.process("s3", d) for d in deliveries))
    assert sorted(outcomes) == [DUPLICATE, "ok", "ok", "ok"]
    # The claim was checked inside the transaction: refused there, then the three others committed together.
    assert [len(refused) for _, refused in run.store.transactions] == [1, 0]
    assert sorted(run.store.landed()[0]) == ["a", "b", "c"]
    assert run.pipe.group_commits == 1
    assert run.pipe.commits == 3
    committed = run.store.load_state()
    assert_same_state(committed, run.pipe.state)
    assert sum(n for (name, _), n in committed.totals.items() if name == "log_status") == 3 * 500  # a, b, c once
    assert run.store.done_among("s3", ["a", "b", "c"]) == {"a", "b", "c"}
    run.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_group_ends_exactly_where_its_inputs_committed_one_by_one_end(
    tmp_path: Path, pool: ThreadPoolExecutor, seed: int
) -> None:
    rng = random.Random(seed)
    start = T0 - 3000
    first = body(seed * 100, 400, 10, start - 600)  # its interfaces go idle before the others arrive
    inputs = {
        f"k{i}": body(seed * 100 + i + 1, rng.randint(200, 900), rng.randint(3, 14), start + i * rng.randint(30, 120))
        for i in range(7)
    }
    again = rng.choice(sorted(inputs))  # delivered twice in the group: its second claim is refused

    grouped = Run(tmp_path / "grouped", pool, Limits(delay_seconds=HOUR))
    assert await grouped.pipe.process("s3", delivery("first", first)) == "ok"
    grouped.now += 1000  # past interface_idle_seconds: the first input's members are forgotten
    deliveries = [delivery(key, data) for key, data in inputs.items()] + [delivery(again, inputs[again])]
    outcomes = await asyncio.gather(*(grouped.pipe.process("s3", d) for d in deliveries))
    assert sorted(outcomes) == [DUPLICATE] + ["ok"] * len(inputs)
    order = grouped.store.landed()[-1]
    assert sorted(order) == sorted(inputs)  # one transaction held every input

    alone = Run(tmp_path / "alone", pool, Limits(max_inputs=1))
    assert await alone.pipe.process("s3", delivery("first", first)) == "ok"
    alone.now += 1000
    for key in order:
        assert await alone.pipe.process("s3", delivery(key, inputs[key])) == "ok"
    assert await alone.pipe.process("s3", delivery(again, inputs[again])) == DUPLICATE
    assert len(alone.store.landed()) == 1 + len(inputs)

    assert_same_state(grouped.pipe.state, alone.pipe.state)
    assert_same_state(grouped.store.load_state(), alone.store.load_state())
    assert_same_state(grouped.store.load_state(), grouped.pipe.state)
    assert grouped.anomalies == alone.anomalies
    a, b = grouped.pipe.detection, alone.pipe.detection
    assert a is not None
    assert b is not None
    assert a.snapshot() == b.snapshot()  # open windows, event clock, detector baselines and scores
    assert a.anomalies_total == b.anomalies_total

    for name in (SNAPSHOT_NAME, DETECTOR_SNAPSHOT):
        assert grouped.store.snapshot(name) == alone.store.snapshot(name)
    pieces = grouped.store.snapshots(PREFIX)
    assert pieces == alone.store.snapshots(PREFIX)  # NACL pairing state: the same pieces, nothing left over
    assert pieces
    # and the checkpoint holds the live detection (a restart resumes where /metrics was)
    assert grouped.store.snapshot(SNAPSHOT_NAME) == a.snapshot(with_detector=False)
    assert grouped.store.snapshot(DETECTOR_SNAPSHOT) == a.detector.snapshot()
    # The case is not trivial: the cap, the idle forgetting and the windows all did something.
    assert OTHER_INTERFACE in grouped.pipe.state.counters.table().column("interface_id").to_pylist()
    assert not set(grouped.pipe.state.seen) & _enis(first) - _enis(*inputs.values())
    assert a.windows.watermark is not None
    assert grouped.anomalies
    grouped.close()
    alone.close()


def _enis(*bodies: bytes) -> set[str]:
    return {line.split()[2] for data in bodies for line in gzip.decompress(data).decode().splitlines()[1:]}
