"""Every corpus file with expected values, decoded and compared field by field.

Files come from AWS docs, Vector, Elastic Beats/Integrations, OpenTelemetry,
flowlogs-reader and alphagov (see ../shared/corpus/PROVENANCE.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamer.schema import FIELDS, V5_ALL_FIELDS
from tests.helpers import decode_bytes, decode_path, epoch, hyphen, typed

TCP_FLAG_FORMAT = (
    "version vpc-id subnet-id instance-id interface-id account-id type srcaddr dstaddr srcport dstport "
    "pkt-srcaddr pkt-dstaddr protocol bytes packets start end action tcp-flags log-status"
)
TGW_DOC_FORMAT = (
    "version interface-id account-id vpc-id subnet-id instance-id srcaddr dstaddr srcport dstport protocol "
    "tcp-flags type pkt-srcaddr pkt-dstaddr action log-status"
)
NAT_FORMAT = "instance-id interface-id srcaddr dstaddr pkt-srcaddr pkt-dstaddr"
#: Elastic's 29-field order: v2 default, then v3..v5 in AWS table order.
ELASTIC_29 = " ".join(V5_ALL_FIELDS)
ECS_10 = (
    "ecs-cluster-arn ecs-cluster-name ecs-container-instance-arn ecs-container-instance-id ecs-container-id "
    "ecs-second-container-id ecs-service-name ecs-task-definition-arn ecs-task-arn ecs-task-id"
)


def load(path: Path) -> Any:
    return json.loads(path.read_text())


# --- AWS documentation examples -------------------------------------------------------------

AWSDOCS = [
    "default-format.log",
    "tcp-flag-sequence.log",
    "nat-gateway.log",
    "transit-gateway.log",
    "service-traffic-path-flow-direction.log",
]


@pytest.mark.parametrize("name", AWSDOCS)
def test_awsdocs_examples_field_by_field(corpus: Path, name: str) -> None:
    spec = load(corpus / "awsdocs" / "expected.json")[name]
    rows, errors, failure = decode_path(corpus / "awsdocs" / name, spec["format"])
    assert failure is None
    assert errors.counts == {}
    assert len(rows) == len(spec["records"])
    for row, record in zip(rows, spec["records"], strict=True):
        expected = {hyphen(k): typed(hyphen(k), v) for k, v in record["fields"].items()}
        assert row == expected, record["line"]


# --- Vector (VRL parse_aws_vpc_flow_log) ---------------------------------------------------


def test_vrl_cases_with_expected_values(corpus: Path) -> None:
    cases = load(corpus / "vrl" / "cases.json")
    checked = 0
    for case in cases["cases_with_expected_values"]:
        if "STALE" in json.dumps(case):
            continue  # VRL changed account_id to a string since; the case is kept upstream only as history
        rows, errors, _ = decode_bytes(case["value"].encode() + b"\n", case.get("format_vrl"))
        assert errors.counts == {}, case["title"]
        assert rows == [{hyphen(k): v for k, v in case["expected"].items()}], case["title"]
        checked += 1
    assert checked >= 5


def test_vrl_files_parse_cleanly(corpus: Path) -> None:
    for group in load(corpus / "vrl" / "cases.json")["ok_only_groups"]:
        rows, errors, failure = decode_path(
            corpus / "vrl" / group["file"], None if group["format_is_default"] else group["format_vrl"]
        )
        assert failure is None
        assert errors.counts == {}, group["file"]
        assert len(rows) == group["records"], group["file"]


# --- flowlogs-reader --------------------------------------------------------------------------


def _flowlogs_reader_expect(row: dict[str, Any], expected: dict[str, Any]) -> None:
    """to_dict() omits '-' fields and gives start/end as datetimes."""
    want = {}
    for key, value in expected.items():
        name = hyphen(key)
        want[name] = epoch(value) if name in ("start", "end") else value
    got = {k: v for k, v in row.items() if v is not None}
    assert got == want


def test_flowlogs_reader_cases(corpus: Path) -> None:
    base = corpus / "flowlogs-reader"
    checked = 0
    for case in load(base / "expected.json")["cases"]:
        rows, errors, failure = decode_path(base / case["file"])
        assert failure is None, case["file"]
        if "line_index" in case and "expected" in case:
            _flowlogs_reader_expect(rows[case["line_index"]], case["expected"])
        elif "expected_partial" in case:
            row = rows[case["line_index"]]
            assert {k: row[k] for k in ("start", "end")} == {k: epoch(v) for k, v in case["expected_partial"].items()}
        elif "expected" in case:
            assert len(rows) == len(case["expected"]), case["file"]
            for row, expected in zip(rows, case["expected"], strict=True):
                _flowlogs_reader_expect(row, expected)
        else:
            continue
        checked += 1
        if case["file"] == "v5-file.log":
            assert errors.counts == {"wrong_field_count": 1}  # the trailing 'bogus line'
        else:
            assert errors.counts == {}, case["file"]
    assert checked == 8


# --- Elastic Beats: processor goldens (typed parses) -------------------------------------------

GOLDENS = ["v5-fields-original", "v6-fields-original", "v7-fields-original"]


@pytest.mark.parametrize("name", GOLDENS)
def test_beats_processor_goldens(corpus: Path, name: str) -> None:
    base = corpus / "beats" / "processor-aws_vpcflow-testdata"
    spec = yaml.safe_load((base / "aws-vpc-flow-logs.yml").read_text())[name]
    golden = load(base / f"{name}.golden.json")
    lines = [s for s in spec["samples"]]
    rows, errors, _ = decode_bytes(("\n".join(lines) + "\n").encode(), spec["format"])
    assert errors.counts == {}
    assert len(rows) == len(golden)
    for row, doc in zip(rows, golden, strict=True):
        for key, value in doc["aws"]["vpcflow"].items():
            name_ = hyphen(key)
            if name_ not in FIELDS:
                continue  # derived fields such as tcp_flags_array
            want = epoch(value) if name_ in ("start", "end") else value
            assert row[name_] == want, name_
        assert all(row[f] is None for f in row if f.replace("-", "_") not in doc["aws"]["vpcflow"])


def test_beats_processor_ecs_goldens_by_message(corpus: Path) -> None:
    """The ECS-mode goldens keep event.original; every message decodes with its case's format."""
    base = corpus / "beats" / "processor-aws_vpcflow-testdata"
    spec = yaml.safe_load((base / "aws-vpc-flow-logs.yml").read_text())
    for name in ["default-v2-format", "service-name-path-direction", "transit-gateway", "custom-nat-gateway"]:
        golden = load(base / f"{name}.golden.json")
        rows, errors, _ = decode_bytes(("\n".join(spec[name]["samples"]) + "\n").encode(), spec[name]["format"])
        assert errors.counts == {}, name
        assert len(rows) == len(golden), name
        for row, doc in zip(rows, golden, strict=True):
            src = doc.get("source", {})
            if "port" in src:
                assert row["srcport"] == src["port"], name
            if "bytes" in doc.get("network", {}):
                assert row["bytes"] == doc["network"]["bytes"], name


# --- Elastic Beats module and Elastic Integrations (ingest-pipeline output) ----------------------


def _flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


ELASTIC_FILES = [
    ("beats/module-vpcflow-test/accept-reject-traffic.log", None),
    ("beats/module-vpcflow-test/custom-nat-gateway.log", None),
    ("beats/module-vpcflow-test/custom-transit-gateway.log", None),
    ("beats/module-vpcflow-test/ipv6.log", None),
    ("beats/module-vpcflow-test/no-data-skip-data.log", None),
    ("beats/module-vpcflow-test/tcp-flag-sequence-skip-data.log", None),
    ("beats/module-vpcflow-test/tcp-flag-sequence.log", None),
    ("integrations/pipeline-tests/test-extra-samples.log", None),
    ("integrations/pipeline-tests/test-tcp-flag-sequence.log", TCP_FLAG_FORMAT),
    ("integrations/pipeline-tests/test-v5-all-fields.log", ELASTIC_29),
    ("integrations/pipeline-tests/test-v8-samples.log", f"{ELASTIC_29} {ECS_10} reject-reason"),
    ("integrations/pipeline-tests-older/test-tcp-flag-sequence.log", None),
]


@pytest.mark.parametrize(("name", "log_format"), ELASTIC_FILES)
def test_elastic_pipeline_expectations(corpus: Path, name: str, log_format: str | None) -> None:
    path = corpus / name
    expected = load(path.with_name(path.name + "-expected.json"))
    docs = [_flatten(d) for d in (expected["expected"] if isinstance(expected, dict) else expected)]
    rows, errors, failure = decode_path(path, log_format)
    assert failure is None
    assert errors.counts == {}
    assert len(rows) == len(docs)
    for row, doc in zip(rows, docs, strict=True):
        compared = 0
        for key, value in doc.items():
            if not key.startswith("aws.vpcflow."):
                continue
            field = hyphen(key.removeprefix("aws.vpcflow."))
            if field not in FIELDS or isinstance(value, list):
                continue
            if value == "-" and row[field] is None:
                continue  # the pipeline keeps some '-' literally
            assert str(row[field]) == str(value), f"{name}: {field}"
            compared += 1
        for key, field in (
            ("network.bytes", "bytes"),
            ("network.packets", "packets"),
            ("source.port", "srcport"),
            ("destination.port", "dstport"),
        ):
            if key in doc:
                assert row[field] == doc[key], f"{name}: {field}"
                compared += 1
        assert compared >= 2, f"{name}: nothing to compare"


def test_elastic_message_wrapper(corpus: Path) -> None:
    path = corpus / "integrations/pipeline-tests/test-with-message-field.log"
    doc = _flatten(load(path.with_name(path.name + "-expected.json"))["expected"][0])
    rows, errors, _ = decode_path(path)
    assert errors.counts == {}
    assert len(rows) == 1
    assert rows[0]["interface-id"] == doc["aws.vpcflow.interface_id"]
    assert rows[0]["log-status"] == doc["aws.vpcflow.log_status"]


def test_elastic_synthetic_samples_without_expected_files(corpus: Path) -> None:
    """Expected output was not copied; the manifest's formats and counts still hold."""
    manifest = {f["file"]: f for f in load(corpus / "integrations" / "manifest.json")["files"]}
    tgw = manifest["pipeline-tests/test-tgw-samples.log"]["format"].split(":", 1)[1].split("(")[0]
    for name, fmt in (("test-tgw-samples.log", tgw), ("test-ecs-samples.log", f"{ELASTIC_29} {ECS_10}")):
        rows, errors, _ = decode_path(corpus / "integrations/pipeline-tests" / name, fmt)
        assert errors.counts == {}, name
        assert len(rows) == 10, name
        assert all(r["start"] and r["end"] and r["log-status"] for r in rows)


def test_mixed_formats_in_one_object_count_the_odd_lines(corpus: Path) -> None:
    rows, errors, _ = decode_path(corpus / "integrations/system-test-tf/test-extra-samples.log")
    assert len(rows) == 7
    assert errors.counts == {"wrong_field_count": 2}


def test_beats_garbage_line(corpus: Path) -> None:
    rows, errors, failure = decode_path(corpus / "beats/module-vpcflow-test/bad.log")
    assert rows == []
    assert errors.counts == {"wrong_field_count": 1}
    assert failure is None


# --- OpenTelemetry collector-contrib ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "records"),
    [
        ("valid_vpc_flow_log.log", 1),
        ("valid_vpc_flow_log_multi.log", 2),
        ("valid_vpc_flow_log_ecs.log", 1),
        ("valid_tgw_flow_log.log", 1),
    ],
)
def test_otel_headered_files(corpus: Path, name: str, records: int) -> None:
    rows, errors, _ = decode_path(corpus / "otel-contrib" / name)
    assert errors.counts == {}
    assert len(rows) == records


def test_otel_ecs_expected_attributes(corpus: Path) -> None:
    doc = yaml.safe_load((corpus / "otel-contrib/valid_vpc_flow_log_ecs_expected.yaml").read_text())
    record = doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    attrs = {a["key"]: next(iter(a["value"].values())) for a in record["attributes"]}
    rows, _, _ = decode_path(corpus / "otel-contrib/valid_vpc_flow_log_ecs.log")
    row = rows[0]
    mapping = {
        "aws.vpc.flow.log.version": "version",
        "network.interface.name": "interface-id",
        "source.port": "srcport",
        "destination.port": "dstport",
        "aws.vpc.flow.packets": "packets",
        "aws.vpc.flow.bytes": "bytes",
        "aws.vpc.flow.start": "start",
        "aws.vpc.flow.action": "action",
        "aws.vpc.flow.status": "log-status",
        "aws.ecs.cluster.arn": "ecs-cluster-arn",
        "aws.ecs.cluster.name": "ecs-cluster-name",
        "aws.ecs.container.instance.id": "ecs-container-instance-id",
        "aws.ecs.container.id": "ecs-container-id",
        "aws.ecs.second.container.id": "ecs-second-container-id",
    }
    for attr, field in mapping.items():
        assert str(row[field]) == str(attrs[attr]), attr


@pytest.mark.parametrize("name", ["vpc_flow_log_too_few_fields.log", "vpc_flow_log_too_many_fields.log"])
def test_otel_wrong_field_counts_are_skipped_and_counted(corpus: Path, name: str) -> None:
    rows, errors, failure = decode_path(corpus / "otel-contrib" / name)
    assert rows == []
    assert errors.counts == {"wrong_field_count": 1}
    assert failure is None


@pytest.mark.parametrize(
    ("name", "log_format", "records"),
    [("valid_vpc_flow_cw.json", None, 2), ("valid_vpc_flow_cw_custom.json", "version interface-id srcaddr dstaddr", 2)],
)
def test_otel_cloudwatch_payloads(corpus: Path, name: str, log_format: str | None, records: int) -> None:
    rows, errors, _ = decode_path(corpus / "otel-contrib" / name, log_format)
    assert errors.counts == {}
    assert len(rows) == records
    assert all(r["interface-id"].startswith("eni-") for r in rows)


# --- alphagov CloudWatch subscription fixture ---------------------------------------------------


def test_alphagov_cloudwatch_payload(corpus: Path) -> None:
    expected = load(corpus / "alphagov/expected.json")["expected"]["forwarded_splunk_event"]["event"]
    rows, errors, _ = decode_path(corpus / "alphagov/vpcflowlog_fixtures.cwl-payload.json")
    assert errors.counts == {}
    assert len(rows) == 5
    want, _, _ = decode_bytes(expected.encode() + b"\n")
    assert want[0] in rows
    plain, _, _ = decode_path(corpus / "alphagov/vpcflowlog_fixtures.records.log")
    assert plain == rows
