"""ENI context from the records: one row per interface per batch, and the merge rule (records win)."""

from __future__ import annotations

import pyarrow as pa

from streamer.aggregate.context import MAX_LABEL_CHARS, ContextBook, fold, merge, record_context
from streamer.decode.objects import ObjectReader
from streamer.ingest import Ingestor


def decoded(text: str) -> list[pa.Table]:
    """Tables as the pipeline's decoder produces them (dictionary-encoded ids, `-` as null)."""
    from concurrent.futures import ThreadPoolExecutor

    tables: list[pa.Table] = []
    with ThreadPoolExecutor(1) as pool:
        Ingestor(ObjectReader(), lambda t: t, pool).run(iter([text.encode()]), tables.append)
    return tables


V5 = "version account-id interface-id instance-id vpc-id subnet-id az-id action log-status packets bytes start end\n"


def test_the_fields_the_records_carry_one_row_per_interface() -> None:
    text = V5 + (
        "5 111111111111 eni-a i-1 vpc-1 subnet-1 use1-az1 ACCEPT OK 1 40 1 2\n"
        "5 111111111111 eni-a i-1 vpc-1 subnet-1 use1-az1 REJECT OK 1 40 1 2\n"
        "5 111111111111 eni-b - vpc-1 subnet-2 use1-az2 ACCEPT OK 1 40 1 2\n"
        "5 111111111111 - - - - - - NODATA - - 1 2\n"
    )
    got = fold(record_context(t) for t in decoded(text))
    assert got == {
        "eni-a": {
            "account_id": "111111111111",
            "instance_id": "i-1",
            "vpc_id": "vpc-1",
            "subnet_id": "subnet-1",
            "az": "use1-az1",
        },
        "eni-b": {"account_id": "111111111111", "vpc_id": "vpc-1", "subnet_id": "subnet-2", "az": "use1-az2"},
    }


def test_a_format_without_context_fields_costs_nothing() -> None:
    text = "version interface-id action log-status packets bytes start end\n2 eni-a ACCEPT OK 1 40 1 2\n"
    assert [record_context(t) for t in decoded(text)] == [None]


def test_records_win_and_ec2_fills_the_rest() -> None:
    records = {"instance_id": "i-records", "vpc_id": "vpc-1"}
    ec2 = {
        "instance_id": "i-ec2",
        "name": None,
        "instance_name": "web-1",
        "security_groups": ["sg-2", "sg-1"],
        "az": "us-east-1a",
    }
    got = merge("eni-a", records, ec2)
    assert (got.instance_id, got.vpc_id, got.az, got.name, got.security_groups) == (
        "i-records",
        "vpc-1",
        "us-east-1a",
        "web-1",
        ("sg-2", "sg-1"),
    )
    assert merge("eni-a", None, {"name": "own-name", "instance_name": "web-1"}).name == "own-name"


def test_info_labels_are_cut_and_never_missing() -> None:
    got = merge("eni-a", None, {"description": "x" * 500}).labels()
    assert len(got["description"]) == MAX_LABEL_CHARS
    assert got["description"].endswith("…")
    assert set(got) == {
        "interface_id",
        "interface_type",
        "name",
        "instance_id",
        "subnet_id",
        "vpc_id",
        "az",
        "security_groups",
        "description",
    }
    assert got["name"] == ""


def test_a_book_forgets_what_it_is_told_to() -> None:
    book = ContextBook()
    book.records["eni-a"] = {"vpc_id": "vpc-1"}
    book.ec2["eni-a"] = {"name": "a", "deleted": True}
    book.seen_at["eni-a"] = 1.0
    known = book.get("eni-a")
    assert known is not None
    assert known.deleted
    assert known.name == "a"
    book.forget(["eni-a"])
    assert book.get("eni-a") is None
    assert book.known() == set()
