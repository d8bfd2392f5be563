"""NACL return rejects paired across chunks, inputs (either order), the lateness bound and restarts."""

from __future__ import annotations

import dataclasses
import gzip
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from streamer.aggregate import insights as ins
from streamer.aggregate.batch import BatchResult, columns, delta_of, reducer
from streamer.aggregate.pairing import PREFIX, Pairing, Pieces
from streamer.aggregate.state import FlowState
from streamer.decode.objects import ObjectReader
from streamer.ingest import Ingestor
from streamer.replay import Input, replay_counts
from streamer.schema import V5_ALL_FIELDS
from streamer.synth import InsightCase, insight_table, to_lines

W = 1_764_000_000 - 1_764_000_000 % 60
ENI = "eni-0pair000000000001"
LATENESS = 900


def request(at: int, port: int = 50001, eni: str = ENI) -> InsightCase:
    return InsightCase(eni, "10.0.1.5", "52.94.1.10", port, 443, "ACCEPT", at, direction="egress")


def reply(at: int, port: int = 50001, eni: str = ENI) -> InsightCase:
    return InsightCase(eni, "52.94.1.10", "10.0.1.5", 443, port, "REJECT", at)


def body(cases: list[InsightCase]) -> bytes:
    text = " ".join(V5_ALL_FIELDS) + "\n" + "\n".join(to_lines(insight_table(cases)).to_pylist()) + "\n"
    return gzip.compress(text.encode())


def delta(cases: list[InsightCase], chunk_bytes: int = 1 << 16) -> FlowState:
    """One input through the real decode and batch reduce (`chunk_bytes` small: many batches)."""
    reader = ObjectReader(columns=columns(False, True, True), chunk_bytes=chunk_bytes)
    parts: list[BatchResult] = []
    with ThreadPoolExecutor(2) as pool:
        result = Ingestor(reader, reducer(None, None, 60, True), pool).run([body(cases)], parts.append)
    assert result.failure is None
    return delta_of(parts)


def nacl(state: FlowState) -> dict[str, int]:
    found = ins.report(state.insights, state.insight_examples, 0.0, nacl_pairing=True)["nacl_return_rejects"]
    return {k: v["records"] for k, v in found.items()}


def commit(stored: dict[str, bytes], pieces: Pieces) -> None:
    """What a store does with a commit's pieces: drop by prefix first, then write."""
    for prefix in pieces.drop:
        for name in [n for n in stored if n.startswith(prefix)]:
            del stored[name]
    stored.update(pieces.snapshots)


def run(inputs: list[list[InsightCase]], pairing: Pairing | None = None, restart: bool = False) -> tuple[FlowState, Pairing]:
    """Inputs in order through one pairing state (rebuilt from its committed pieces between inputs with `restart`)."""
    state, pairing = FlowState(), pairing or Pairing(LATENESS)
    stored: dict[str, bytes] = {}
    for cases in inputs:
        d = delta(cases)
        pairing, pieces = d.pair_with(pairing)
        commit(stored, pieces)
        if restart:
            pairing = Pairing.restore(stored, LATENESS)
        state.apply(d)
    return state, pairing


def waiting(pairing: Pairing) -> int:
    return sum(t.num_rows for t in pairing.replies.values())


def test_a_pair_split_across_the_chunks_of_one_input_counts() -> None:
    cases = [request(W + 5), *[InsightCase(ENI, "10.9.9.9", "10.0.1.5", 80, 1000 + i, "ACCEPT", W + 5) for i in range(50)]]
    cases.append(reply(W + 6))
    state, _ = run([cases])
    assert nacl(state) == {ENI: 1}
    d = delta(cases, chunk_bytes=1024)  # the request and the reply in different batches
    assert d.pairs is not None
    assert len(set(d.pairs.table().column("window").to_pylist())) == 1
    d.pair_with(Pairing(LATENESS))
    assert nacl(d) == {ENI: 1}


def test_pairs_across_inputs_in_either_order_with_a_real_example() -> None:
    for inputs in ([[request(W + 5)], [reply(W + 6)]], [[reply(W + 6)], [request(W + 5)]]):
        state, pairing = run(inputs)
        assert nacl(state) == {ENI: 1}
        assert state.insight_examples[ENI] == f"{ENI} 52.94.1.10:443 -> 10.0.1.5:50001 protocol 6 REJECT"
        assert waiting(pairing) == 0  # a paired reply no longer waits


def test_each_reject_counts_once_and_a_reply_before_its_request_window_does_not_pair() -> None:
    state, _ = run([[request(W + 5), request(W + 65)], [reply(W + 66), reply(W + 70), reply(W - 50, port=50001)]])
    assert nacl(state) == {ENI: 2}  # W - 50 lies in the window before both requests'
    state, _ = run([[request(W + 5, eni="eni-0other00000000001")], [reply(W + 6)]])
    assert nacl(state) == {}  # another ENI's request


def test_the_lateness_bound_inside_pairs_outside_does_not() -> None:
    for gap, pairs in ((LATENESS, True), (LATENESS + 60, False)):
        for inputs in ([[request(W + 5)], [reply(W + 5 + gap)]], [[reply(W + 5 + gap)], [request(W + 5)]]):
            state, _ = run(inputs)
            assert nacl(state) == ({ENI: 1} if pairs else {}), (gap, inputs)


def test_state_older_than_the_newest_window_minus_the_lateness_is_dropped_by_name() -> None:
    stored: dict[str, bytes] = {}
    pairing = Pairing(LATENESS)
    for cases in ([request(W + 5), reply(W + 5, port=50009)], [request(W + 2 * LATENESS, port=50002)]):
        pairing, pieces = delta(cases).pair_with(pairing)
        commit(stored, pieces)
    newest = W + 2 * LATENESS - (W + 2 * LATENESS) % 60
    assert list(pairing.requests) == [newest]
    assert waiting(pairing) == 0
    assert pieces.drop == [f"{PREFIX}w/{W:012d}/"]  # the old window goes by its prefix, nothing is rewritten
    assert sorted(stored) == [f"{PREFIX}meta", f"{PREFIX}w/{newest:012d}/q000000000001"]


def test_a_commit_writes_only_what_its_input_added() -> None:
    """Incremental: the second input's pieces hold its own new requests, not the first input's again."""
    pairing, first = delta([request(W + 5, port=p) for p in range(50001, 50101)]).pair_with(Pairing(LATENESS))
    again = [request(W + 5, port=p) for p in range(50051, 50151)]  # half of them known already
    pairing, second = delta(again).pair_with(pairing)
    q = [n for n in second.snapshots if "/q" in n]
    assert len(q) == 1
    assert len(second.snapshots[q[0]]) == 50 * 8
    assert second.drop == []
    assert len(pairing.requests[W]) == 150
    stored: dict[str, bytes] = {}
    commit(stored, first)
    commit(stored, second)
    assert set(Pairing.restore(stored, LATENESS).requests[W].tolist()) == set(pairing.requests[W].tolist())


def test_only_requests_from_an_ephemeral_port_and_replies_to_one_are_kept() -> None:
    """A reject to a service port (a scan) is no reply, and an accept to an ephemeral port no request."""
    scan = InsightCase(ENI, "198.51.100.9", "10.0.1.5", 50000, 22, "REJECT", W + 5)
    served = InsightCase(ENI, "10.0.1.5", "52.94.1.10", 443, 50001, "ACCEPT", W + 5)  # a reply we sent
    sctp = dataclasses.replace(request(W + 5, port=50003), protocol=132)  # only TCP and UDP have ports
    d = delta([scan, served, sctp, dataclasses.replace(reply(W + 6, port=50003), protocol=132)])
    assert d.pairs is None or d.pairs.num_rows == 0
    _, pairing = run([[request(W + 5)], [reply(W + 6, port=50002)]])
    assert pairing.entries() == 2  # one request, one reply waiting


def test_after_a_restart_the_state_pairs_the_same() -> None:
    for inputs in ([[request(W + 5)], [reply(W + 6)]], [[reply(W + 6)], [request(W + 5)]]):
        state, _ = run(inputs, restart=True)
        assert nacl(state) == {ENI: 1}


def test_replay_pairs_across_all_its_files_in_either_order(tmp_path: Path) -> None:
    (tmp_path / "a.log.gz").write_bytes(body([request(W + 5), request(W + 7, port=50002)]))
    (tmp_path / "b.log.gz").write_bytes(body([reply(W + 6), reply(W + 400, port=50002)]))
    reader = ObjectReader(columns=columns(False, True, True))
    for names in (["a", "b"], ["b", "a"]):
        inputs = [Input(name, tmp_path / f"{name}.log.gz", 0) for name in names]
        with ThreadPoolExecutor(2) as pool:
            state, _ = replay_counts(
                inputs, reader, pool, insights_window_seconds=60, lateness_seconds=LATENESS, nacl_pairing=True
            )
        assert nacl(state) == {ENI: 2}
        with ThreadPoolExecutor(2) as pool:
            state, _ = replay_counts(inputs, reader, pool, insights_window_seconds=60, lateness_seconds=300, nacl_pairing=True)
        # W + 400 lies beyond 300 s of lateness; and read first, it moves the state past the reply at W + 6 too
        assert nacl(state) == ({ENI: 1} if names == ["a", "b"] else {})


def test_a_pending_request_takes_8_bytes() -> None:
    """The size the README states: a request is one 64-bit hash in its window's sorted set."""
    _, pairing = run([[request(W + 5, port=p) for p in range(50001, 50101)]])
    assert pairing.entries() == 100
    assert pairing.nbytes() == 100 * 8


def test_a_record_without_an_end_takes_its_start_and_one_without_either_is_none() -> None:
    """`end` null (as the tokenizer and Parquet leave it: 0 under the null) falls back to `start`; a record
    with neither time is no candidate, on the native and the numpy path alike."""
    import pyarrow as pa

    from streamer.aggregate import pairing as p

    table = pa.table(
        {
            "interface-id": [ENI] * 3,
            "srcaddr": ["10.0.1.5", "52.94.1.10", "52.94.1.10"],
            "dstaddr": ["52.94.1.10", "10.0.1.5", "10.0.1.5"],
            "srcport": pa.array([50001, 443, 443], pa.int32()),
            "dstport": pa.array([443, 50001, 50002], pa.int32()),
            "protocol": pa.array([6, 6, 6], pa.int32()),
            "action": ["ACCEPT", "REJECT", "REJECT"],
            "start": pa.array([W + 1, W + 30, None], pa.int64()),
            "end": pa.array([W + 2, None, None], pa.int64()),
        }
    )
    got = p.candidates(table, 60).table()
    assert got.column("request").to_pylist() == [True, False]
    assert got.column("window").to_pylist() == [W, W]
