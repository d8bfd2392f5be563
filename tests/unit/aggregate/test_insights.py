"""Network insights: generated cases with known answers (near misses included), formats without the
fields, the corpus files that carry v5 fields and tcp-flags, and the cap on per-ENI series."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.aggregate import insights as ins
from streamer.aggregate.batch import columns, delta_of, reducer
from streamer.aggregate.pairing import Pairing
from streamer.aggregate.state import OTHER_INTERFACE, FlowState
from streamer.schema import DEFAULT_FIELDS, V5_ALL_FIELDS
from streamer.synth import insight_cases, insight_table, to_lines
from tests.helpers import decode_bytes

START = 1_764_000_000


def decoded(fields: tuple[str, ...], table: pa.Table | None = None) -> pa.Table:
    """The insight cases written in `fields` order with a header, decoded by the real path."""
    cases, _ = insight_cases(START)
    table = insight_table(cases, fields) if table is None else table
    text = " ".join(fields) + "\n" + "\n".join(to_lines(table).to_pylist()) + "\n"
    rows, errors, failure = decode_bytes(gzip.compress(text.encode()), columns=columns(True, True, True))
    assert failure is None
    assert errors.counts == {}
    return pa.Table.from_pylist(rows)


def without_costs_and_examples(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "nacl_return_rejects": {k: v["records"] for k, v in doc["nacl_return_rejects"].items()},
        "gateway_endpoint_candidates": {
            vpc: {svc: {"records": e["records"], "bytes": e["bytes"]} for svc, e in per.items()}
            for vpc, per in doc["gateway_endpoint_candidates"].items()
        },
        "ipv6_internet_inbound": doc["ipv6_internet_inbound"],
        "traffic_path_bytes": doc["traffic_path_bytes"],
    }


def run(table: pa.Table, chunks: int = 1) -> dict[str, Any]:
    """The signals through the batch reduce, the table cut into `chunks` batches."""
    step = -(-table.num_rows // chunks)
    parts = [reducer(None, None, 60, True)(table.slice(i, step)) for i in range(0, table.num_rows, step)]
    delta = delta_of(parts)
    delta.pair_with(Pairing(900))
    return ins.report(delta.insights, delta.insight_examples, 0.045, True)


def test_every_signal_has_its_known_answer_and_near_misses_do_not_count() -> None:
    _, expected = insight_cases(START)
    doc = run(decoded(V5_ALL_FIELDS))
    assert without_costs_and_examples(doc) == expected
    nacl = doc["nacl_return_rejects"]["eni-0nacl000000000001"]
    assert nacl["example"] == "eni-0nacl000000000001 52.94.1.10:443 -> 10.0.1.5:50001 protocol 6 REJECT"
    s3 = doc["gateway_endpoint_candidates"]["vpc-0insight000000001"]["S3"]
    assert s3["estimated_nat_cost_usd"] == pytest.approx(4 * 0.045)


def test_without_tcp_flags_a_connection_start_is_a_high_port_to_a_low_one() -> None:
    fields = tuple(f for f in V5_ALL_FIELDS if f != "tcp-flags")
    doc = run(decoded(fields))
    # The SYNs to 3389 (not < 1024) no longer count; the one to 22 does; the SYN-ACK from 443 still does not.
    assert doc["ipv6_internet_inbound"] == {"eni-0ipv6000000000001": {"ACCEPT": 1}}


def test_a_format_without_the_fields_gets_no_signal_and_no_error() -> None:
    doc = run(decoded(DEFAULT_FIELDS))  # v2: no flow-direction, traffic-path or service fields
    assert doc["gateway_endpoint_candidates"] == doc["ipv6_internet_inbound"] == doc["traffic_path_bytes"] == {}
    assert {k: v["records"] for k, v in doc["nacl_return_rejects"].items()} == {"eni-0nacl000000000001": 3}
    fields = ("interface-id", "packets", "bytes", "start", "end")
    doc = run(decoded(fields))
    assert all(section == {} for section in doc.values())


def test_sums_fold_exactly_however_the_input_is_cut() -> None:
    """Batches are reduced separately and every signal adds up: NACL pairs across batches too."""
    table = decoded(V5_ALL_FIELDS)
    whole = run(table)
    for chunks in (2, 7, table.num_rows):
        assert run(table, chunks=chunks) == whole


def test_per_eni_insights_share_the_counters_cap() -> None:
    table = decoded(V5_ALL_FIELDS)
    delta = delta_of([reducer(None, None, 60, True)(table)])
    state = FlowState()
    admitted = state.admit(delta, limit=1, now=0.0)  # room for the busiest ENI only
    state.apply(admitted)
    enis = {r["key1"] for r in state.insights.to_pylist() if r["kind"] in ins.ENI_KINDS}
    assert OTHER_INTERFACE in enis
    assert enis - {OTHER_INTERFACE} <= set(state.seen)


CORPUS = Path(__file__).resolve().parents[4] / "shared" / "corpus"


def corpus(relative: str) -> Path:
    path = CORPUS / relative
    if not path.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"corpus file missing in CI: {path}")
        pytest.skip(f"corpus not found at {CORPUS} (it ships beside the repo, not in it)")
    return path


def test_the_aws_v5_example_is_s3_through_a_gateway_endpoint_already() -> None:
    """flowlogs-reader's v5 file (AWS's doc example): egress to S3 on traffic-path 7 is no candidate."""
    rows, errors, _ = decode_bytes(corpus("flowlogs-reader/v5-file.log").read_bytes(), columns=columns(True, True, True))
    assert errors.counts == {"wrong_field_count": 1}  # its "bogus line"
    doc = run(pa.Table.from_pylist(rows))
    assert doc == {
        "nacl_return_rejects": {},
        "gateway_endpoint_candidates": {},
        "ipv6_internet_inbound": {},
        "traffic_path_bytes": {"vpc-04456ab739938ee3f": {"gateway_endpoint": 3015}},
    }


@pytest.mark.parametrize(
    "relative",
    [
        "beats/module-vpcflow-test/tcp-flag-sequence.log",
        "beats/module-vpcflow-test/tcp-flag-sequence-skip-data.log",
        "integrations/pipeline-tests-older/test-tcp-flag-sequence.log",
    ],
)
def test_tcp_flag_samples_without_flow_direction_get_no_ipv6_or_path_signal(relative: str) -> None:
    """AWS's tcp-flag examples (v3): flags but no flow-direction, all accepted: nothing to report, nothing broken."""
    rows, _, failure = decode_bytes(corpus(relative).read_bytes(), columns=columns(True, True, True))
    assert failure is None
    assert rows
    assert "tcp-flags" in rows[0]  # decoded, not ignored
    assert all(section == {} for section in run(pa.Table.from_pylist(rows)).values())


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.sampled_from(["2600:1f18::1", "3fff:0::", "2001:db8::1", "fe80::1", "203.0.113.9", "2a0:", "2AbC:x", "", "2"]),
            st.text(alphabet="0123456789abcdefABCDEFgG:.", max_size=8),
        ),
        min_size=1,
        max_size=40,
    ),
    st.integers(0, 5),
)
def test_the_global_ipv6_test_on_bytes_is_the_regex(values: list[str | None], front: int) -> None:
    col = pa.array(values, pa.string()).slice(min(front, len(values) - 1))
    rows = np.arange(len(col))
    want = pc.fill_null(pc.match_substring_regex(col, ins._GLOBAL_IPV6), False).to_pylist()
    assert ins._global_ipv6(col, rows).tolist() == want


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.one_of(st.none(), st.sampled_from(["vpc-a", "vpc-b", "vpc-c"])), st.integers(0, 8), st.integers(0, 2**62)),
        min_size=1,
        max_size=200,
    )
)
def test_counting_on_codes_is_the_group_by(rows: list[tuple[str | None, int, int]]) -> None:
    """Exact byte sums too: values up to 2^62 (bincount's float64 weights would round them). Few rows are
    counted by their distinct keys, many by a count per possible key: up to 100 rows take both ways."""
    vpc = pa.array([r[0] for r in rows], pa.string())
    path = pa.array([r[1] for r in rows], pa.int64())
    nbytes = np.array([r[2] for r in rows], np.int64)
    picked = np.arange(0, len(rows), 2)
    got = ins._count(ins._codes(vpc.dictionary_encode()), ins._codes(path), picked, nbytes)
    assert got is not None
    mine = sorted(zip(got[0].to_pylist(), got[1].to_pylist(), got[2].tolist(), got[3].tolist(), strict=True), key=str)
    table = pa.table({"vpc": vpc, "path": path, "bytes": nbytes}).take(picked)
    g = table.group_by(["vpc", "path"]).aggregate([([], "count_all"), ("bytes", "sum")])
    want = sorted(zip(*(g.column(c).to_pylist() for c in ("vpc", "path", "count_all", "bytes_sum")), strict=True), key=str)
    assert mine == want
