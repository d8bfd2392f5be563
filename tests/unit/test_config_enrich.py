"""The optional `enrich:` section: defaults, per-account roles, and one line naming a bad key."""

from __future__ import annotations

import pytest
import yaml

from streamer.config import ConfigError, parse_config

BASE = {"sources": [{"type": "s3", "bucket": "my-flow-logs"}]}


def test_absent_means_no_ec2_calls_and_present_has_defaults() -> None:
    assert parse_config(BASE, {}).enrich is None
    enrich = parse_config({**BASE, "enrich": {}}, {}).enrich
    assert enrich is not None
    assert (enrich.refresh_seconds, enrich.role_arn, enrich.max_requests_per_second) == (600, {}, 5)


def test_roles_per_account() -> None:
    doc = yaml.safe_load(
        "enrich:\n  role_arn:\n    '012345678901': arn:aws:iam::012345678901:role/streamer-enrich\n"
        "    '222222222222': arn:aws-us-gov:iam::222222222222:role/path/streamer-enrich\n"
    )
    enrich = parse_config({**BASE, **doc}, {}).enrich
    assert enrich is not None
    assert sorted(enrich.role_arn) == ["012345678901", "222222222222"]


@pytest.mark.parametrize(
    ("enrich", "message"),
    [
        ({"refresh_second": 60}, "enrich.refresh_second: unknown key"),
        ({"refresh_seconds": 0}, "enrich.refresh_seconds: "),
        ({"role_arn": {"12345": "arn:aws:iam::123456789012:role/x"}}, "enrich.role_arn: '12345': an account id is 12 digits"),
        ({"role_arn": {"123456789012": "streamer-enrich"}}, "is not an IAM role ARN"),
        ({"role_arn": {123456789012: "arn:aws:iam::123456789012:role/x"}}, "quote account ids in YAML"),
    ],
)
def test_bad_enrich_config_is_one_line_naming_the_key(enrich: dict[object, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "enrich": enrich}, {})
    assert message in str(err.value)
    assert "\n" not in str(err.value)
