"""Every v9-v11 field (AWS's 2024-2026 additions), EC2 tag values with spaces, and Transit Gateway logs.

v9-v11 values are the corpus's v11 line (Vector's test data, SYNTHETIC, names as
Vector spells them); each field is read in text (header and LogFormat) and Parquet.

Tag values: nothing we could read from AWS says how a value with spaces is
written (the EC2 tag-field docs give keys, not an encoding), so each way it can
come is handled: no spaces; percent-encoded (kept as written); raw spaces with
one tag field (the extra tokens are its value); raw spaces with several tag
fields side by side (which one holds them cannot be told: all unknown, the
record still counts).
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamer.aggregate.counters import COLUMNS, count_batch
from streamer.decode.objects import ObjectReader
from streamer.ingest import Ingestor
from streamer.schema import FIELDS, normalize_name, parse_log_format
from tests.helpers import decode_bytes

CORPUS = Path(__file__).resolve().parents[4] / "shared" / "corpus"
V9_TO_V11 = tuple(name for name, f in FIELDS.items() if f.version >= 9)


def vrl_v11() -> tuple[tuple[str, ...], list[str]]:
    cases = json.loads((CORPUS / "vrl" / "cases.json").read_text())
    entry = next(c for c in cases["ok_only_groups"] if c["file"] == "v8-to-v11-fields.log")
    fields = tuple(normalize_name(t) for t in entry["format_vrl"].split())
    lines = (CORPUS / "vrl" / "v8-to-v11-fields.log").read_text().splitlines()
    return fields, lines


def expected(fields: tuple[str, ...], line: str) -> dict[str, object]:
    return {f: None if v == "-" else int(v) if FIELDS[f].numeric else v for f, v in zip(fields, line.split(), strict=True)}


def test_the_catalogue_has_every_v9_to_v11_field_with_its_version_and_type() -> None:
    assert {n: FIELDS[n].version for n in V9_TO_V11} == {
        "resource-id": 9,
        "encryption-status": 10,
        **dict.fromkeys(
            ["interface-type", "next-hop-interface-id", "next-hop-subnet-id", "next-hop-az-id", "next-hop-vpc-id"], 11
        ),
        "next-hop-interface-type": 11,
        **dict.fromkeys(["instance-tag", "instance-tag-2", "interface-tag", "interface-tag-2", "asg-tag", "asg-tag-2"], 11),
    }
    assert FIELDS["encryption-status"].type == pa.int32()  # 0 cleartext, 1 Nitro, 2 application, 3 both
    assert all(FIELDS[n].type == pa.string() for n in V9_TO_V11 if n != "encryption-status")


@pytest.mark.parametrize("delivery", ["header", "log_format"])
def test_every_v9_to_v11_field_in_text(delivery: str) -> None:
    fields, lines = vrl_v11()
    assert set(V9_TO_V11) <= set(fields)
    if delivery == "header":
        rows, errors, failure = decode_bytes((" ".join(fields) + "\n" + "\n".join(lines) + "\n").encode())
    else:
        rows, errors, failure = decode_bytes(("\n".join(lines) + "\n").encode(), " ".join(f"${{{f}}}" for f in fields))
    assert failure is None
    assert errors.counts == {}
    assert errors.unknown_fields == set()
    assert rows == [expected(fields, line) for line in lines]
    assert rows[0]["encryption-status"] == 1
    assert rows[0]["instance-tag"] == "web"
    assert rows[0]["next-hop-interface-type"] == "network_load_balancer"


def test_every_v9_to_v11_field_in_parquet() -> None:
    fields, lines = vrl_v11()
    want = [expected(fields, line) for line in lines]
    table = pa.table({FIELDS[f].parquet_name: pa.array([w[f] for w in want], FIELDS[f].type) for f in fields})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    rows, errors, failure = decode_bytes(buf.getvalue())
    assert failure is None
    assert errors.counts == {}
    assert errors.unknown_fields == set()
    assert rows == want


HEADER_ONE_TAG = "version interface-id packets bytes instance-tag action log-status"
HEADER_TAGS = "version interface-id packets bytes instance-tag instance-tag-2 interface-tag action log-status"


@pytest.mark.parametrize(
    ("header", "line", "tags"),
    [
        (HEADER_ONE_TAG, "11 eni-a 3 120 web ACCEPT OK", {"instance-tag": "web"}),
        (HEADER_ONE_TAG, "11 eni-a 3 120 my%20web%20app ACCEPT OK", {"instance-tag": "my%20web%20app"}),
        (HEADER_ONE_TAG, "11 eni-a 3 120 my web  app ACCEPT OK", {"instance-tag": "my web app"}),
        (HEADER_ONE_TAG, "11 eni-a 3 120 - ACCEPT OK", {"instance-tag": None}),
        (
            HEADER_TAGS,
            "11 eni-a 3 120 web prod eni-tag ACCEPT OK",
            {"instance-tag": "web", "instance-tag-2": "prod", "interface-tag": "eni-tag"},
        ),
        (
            HEADER_TAGS,
            "11 eni-a 3 120 my web app prod eni-tag ACCEPT OK",
            {"instance-tag": None, "instance-tag-2": None, "interface-tag": None},
        ),
    ],
    ids=["plain", "percent-encoded", "spaces-one-tag", "absent", "several-plain", "spaces-several-tags"],
)
def test_tag_values_however_written_never_cost_the_record(header: str, line: str, tags: dict[str, object]) -> None:
    others = [
        f"11 eni-b {i} 40 - - - REJECT OK" if "instance-tag-2" in header else f"11 eni-b {i} 40 - REJECT OK" for i in range(3)
    ]
    rows, errors, failure = decode_bytes((f"{header}\n{line}\n" + "\n".join(others) + "\n").encode())
    assert failure is None
    assert errors.counts == {}
    mine = [r for r in rows if r["interface-id"] == "eni-a"]
    assert len(mine) == 1
    assert {k: mine[0][k] for k in tags} == tags
    assert (mine[0]["packets"], mine[0]["bytes"], mine[0]["action"], mine[0]["log-status"]) == (3, 120, "ACCEPT", "OK")
    assert len(rows) == 4


def test_tag_fields_apart_with_a_spaced_value_are_not_guessed() -> None:
    """Tag fields with a signal field between them: which tokens are whose cannot be told; the line is counted bad."""
    data = b"version interface-id instance-tag action interface-tag packets\n11 eni-a my app ACCEPT x 3\n11 eni-b a ACCEPT b 4\n"
    rows, errors, failure = decode_bytes(data)
    assert failure is None
    assert errors.counts == {"wrong_field_count": 1}
    assert [r["interface-id"] for r in rows] == ["eni-b"]


def counted(data: bytes, log_format: str | None = None) -> dict[str, int]:
    reader = ObjectReader(log_format=parse_log_format(log_format) if log_format else None, columns=COLUMNS)
    tables: list[pa.Table] = []
    with ThreadPoolExecutor(2) as pool:
        result = Ingestor(reader, count_batch, pool).run([data], tables.append)
    assert result.failure is None
    merged = pa.concat_tables(tables)
    return {r["interface_id"]: r["records"] for r in merged.to_pylist()}


def test_transit_gateway_records_count_under_their_attachment() -> None:
    """A real-format TGW sample (otel-contrib, header line, no interface-id): counted, under tgw-attachment-id."""
    data = (CORPUS / "otel-contrib" / "valid_tgw_flow_log.log").read_bytes()
    assert counted(data) == {"tgw-attach-0abc12345def67890": 1}


def test_transit_gateway_v6_record_with_resource_type_counts_under_its_attachment() -> None:
    """Beats' v6 TransitGateway sample: resource-type first, runs of spaces, no interface-id; headerless (LogFormat)."""
    yml = (CORPUS / "beats" / "processor-aws_vpcflow-testdata" / "aws-vpc-flow-logs.yml").read_text()
    block = yml[yml.index("v6-fields-original:") :]
    fmt = block.split("format: ", 1)[1].split("\n", 1)[0]
    sample = block.split("    - ", 1)[1].split("\n", 1)[0]
    assert sample.startswith("TransitGateway ")
    assert counted(sample.encode() + b"\n", fmt) == {"tgw-attach-3e0bbb28e9ac7e3d8": 1}


def test_a_vpc_record_keeps_its_own_interface_next_to_an_attachment() -> None:
    data = b"interface-id tgw-attachment-id action\neni-a tgw-attach-1 ACCEPT\n- tgw-attach-2 REJECT\n"
    assert counted(data) == {"eni-a": 1, "tgw-attach-2": 1}


def test_tgw_parquet_counts_under_the_attachment() -> None:
    table = pa.table(
        {
            "resource_type": ["TransitGateway"] * 2,
            "tgw_attachment_id": ["tgw-attach-9", "tgw-attach-9"],
            "packets": pa.array([1, 2]),
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    assert counted(buf.getvalue()) == {"tgw-attach-9": 2}
