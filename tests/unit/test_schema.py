from __future__ import annotations

import pyarrow as pa
import pytest

from streamer.schema import (
    BY_PARQUET_NAME,
    DEFAULT_FIELDS,
    FIELDS,
    V5_ALL_FIELDS,
    UnknownFieldError,
    header_fields,
    parse_log_format,
)


def test_default_format_is_the_14_v2_fields_in_order() -> None:
    assert (
        tuple(
            [
                "version",
                "account-id",
                "interface-id",
                "srcaddr",
                "dstaddr",
                "srcport",
                "dstport",
                "protocol",
                "packets",
                "bytes",
                "start",
                "end",
                "action",
                "log-status",
            ]
        )
        == DEFAULT_FIELDS
    )
    assert len(V5_ALL_FIELDS) == 29


def test_catalogue_covers_every_version_through_v11() -> None:
    versions = {f.version for f in FIELDS.values()}
    assert versions == {2, 3, 4, 5, 6, 7, 8, 9, 10, 11}
    assert FIELDS["reject-reason"].version == 8
    assert FIELDS["tgw-src-eni"].version == 6
    assert FIELDS["ecs-task-arn"].version == 7
    assert FIELDS["bytes"].type == pa.int64()
    assert FIELDS["account-id"].type == pa.string()
    assert BY_PARQUET_NAME["log_status"].name == "log-status"


def test_log_format_accepts_aws_syntax_and_plain_lists() -> None:
    assert parse_log_format("${version} ${interface-id} ${action}") == ("version", "interface-id", "action")
    assert parse_log_format("version interface_id action") == ("version", "interface-id", "action")


@pytest.mark.parametrize(("text", "message"), [("${version} ${no pe}", "'no pe'"), ("", "empty"), ("action action", "twice")])
def test_bad_log_formats_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_log_format(text)


def test_header_detection() -> None:
    assert header_fields("version account-id interface-id") == ("version", "account-id", "interface-id")
    assert header_fields("2 123456789012 eni-a") is None
    assert header_fields("version bogus") == ("version", "bogus")  # read as a string, never a lost object
    assert header_fields("version version") is None


def test_a_log_format_token_that_cannot_be_a_name_is_refused() -> None:
    with pytest.raises(UnknownFieldError, match="'x!'"):
        parse_log_format("${version} ${x!}")
