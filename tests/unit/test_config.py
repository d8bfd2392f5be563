from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from streamer.config import ConfigError, apply_env, load_config, parse_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BASE = {"sources": [{"type": "s3", "bucket": "my-flow-logs"}]}


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_shipped_examples_are_valid(name: str, tmp_path: Path) -> None:
    """As shipped, except that a key file an example names is one the test writes (a mounted Secret in production)."""
    environ: dict[str, str] = {}
    for i, source in enumerate(yaml.safe_load((EXAMPLES / name).read_text())["sources"]):
        if source.get("access_key_file"):
            key = tmp_path / f"key-{i}"
            key.write_text(secrets.token_hex(24) + "\n")
            environ[f"STREAMER__SOURCES__{i}__ACCESS_KEY_FILE"] = str(key)
    load_config(EXAMPLES / name, environ)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {"sources": [{"type": "s3", "bucket": "abc", "poll_intervl_seconds": 3}]},
            "sources.0.poll_intervl_seconds: unknown key",
        ),
        ({"sources": [{"type": "s3", "bucket": "abc", "poll_interval_seconds": 0}]}, "sources.0.poll_interval_seconds: "),
        ({"sources": [{"type": "s3", "bucket": "abc", "log_format": "${version} ${no pe}"}]}, "'no pe'"),
        ({"sources": []}, "sources:"),
        ({"sources": [{"type": "s3", "bucket": "abc"}], "htp": {}}, "htp: unknown key"),
        ({"http": {"listen_address": "nowhere"}, **BASE}, "http.listen_address"),
        (
            {"sources": [{"type": "s3", "bucket": "abc", "lookback_seconds": 7 * 86400}]},
            "checkpoint.retention_seconds (604800) must be at least a source's lookback_seconds (604800) plus a day",
        ),
        (
            {
                "sources": [
                    {
                        "type": "s3_sqs",
                        "queue_url": "https://q",
                        "visibility_timeout_seconds": 30,
                        "visibility_keepalive_seconds": 30,
                    }
                ]
            },
            "sources.0: visibility_keepalive_seconds (30) must be shorter than visibility_timeout_seconds (30)",
        ),
        ({"anomaly": {"idle_timeout_seconds": 0}, **BASE}, "anomaly.idle_timeout_seconds"),
        ({"anomaly": {"max_future_skew_seconds": -1}, **BASE}, "anomaly.max_future_skew_seconds"),
        (
            {"sources": [{"type": "cloudwatch", "log_group": "/g", "max_bytes_per_delivery": 0}]},
            "sources.0.max_bytes_per_delivery: ",
        ),
    ],
)
def test_bad_config_is_one_line_naming_the_key(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc, {})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_environment_overrides() -> None:
    config = parse_config(
        BASE,
        {
            "STREAMER__SOURCES__0__BUCKET": "other-bucket",
            "STREAMER__SOURCES__0__POLL_INTERVAL_SECONDS": "5",
            "STREAMER__HTTP__LISTEN_ADDRESS": "127.0.0.1:9999",
            "STREAMER__LOGGING__JSON_LINES": "true",
            "UNRELATED": "x",
        },
    )
    assert config.sources[0].bucket == "other-bucket"  # type: ignore[union-attr]
    assert config.sources[0].poll_interval_seconds == 5  # type: ignore[union-attr]
    assert config.http.port == 9999
    assert config.logging.json_lines is True


def test_environment_values_stay_strings_where_the_key_is_a_string() -> None:
    """An account id as a prefix must not become the integer 123456789012 (YAML would make it one)."""
    config = parse_config(BASE, {"STREAMER__SOURCES__0__PREFIX": "123456789012", "STREAMER__SOURCES__0__NAME": "0755"})
    assert config.sources[0].prefix == "123456789012"  # type: ignore[union-attr]
    assert config.sources[0].name == "0755"


def test_keepalive_defaults_to_a_third_of_the_visibility_timeout() -> None:
    config = parse_config({"sources": [{"type": "s3_sqs", "queue_url": "https://q", "visibility_timeout_seconds": 60}]}, {})
    assert config.sources[0].keepalive_seconds == 20  # type: ignore[union-attr]


def test_environment_can_add_a_whole_source() -> None:
    doc = apply_env({}, {"STREAMER__SOURCES__0__TYPE": "s3_sqs", "STREAMER__SOURCES__0__QUEUE_URL": "https://q"})
    assert parse_config(doc, {}).sources[0].type == "s3_sqs"


def test_check_config_cli(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - type: s3\n    bucket: abc\n    secret_key: hunter2\n")
    proc = subprocess.run([sys.executable, "-m", "streamer", "check-config", "-c", str(bad)], capture_output=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == "streamer: error: config: sources.0.secret_key: unknown key"
    assert b"hunter2" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "streamer", "run", "-c", str(bad)], capture_output=True, check=False, timeout=60)
    assert proc.returncode == 2
    good = tmp_path / "good.yaml"
    good.write_text("sources:\n  - type: s3\n    bucket: abc\n")
    proc = subprocess.run([sys.executable, "-m", "streamer", "check-config", "-c", str(good)], capture_output=True, check=False)
    assert proc.returncode == 0
    assert b"s3-0 (s3)" in proc.stdout
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        good.read_text() + "checkpoint:\n  url: postgresql://streamer:hunter2@db:5432/flows\nfleet:\n  replica_id: r7\n"
    )
    proc = subprocess.run([sys.executable, "-m", "streamer", "check-config", "-c", str(fleet)], capture_output=True, check=False)
    assert proc.returncode == 0
    assert b"PostgreSQL (fleet replica r7)" in proc.stdout
    assert b"hunter2" not in proc.stdout + proc.stderr


def test_fleet_replica_id_defaults_to_the_hostname_and_the_url_is_secret() -> None:
    import socket

    config = parse_config({**BASE, "checkpoint": {"url": "postgresql://u:s3cret@db:5432/flows"}}, {})
    assert config.fleet.replica_id == socket.gethostname()
    assert "s3cret" not in repr(config)
    with pytest.raises(ConfigError, match=r"checkpoint\.url: .*postgresql://"):
        parse_config({**BASE, "checkpoint": {"url": "mysql://db/flows"}}, {})


def test_replica_retention_has_a_default_and_must_outlast_the_leases_naming_the_key() -> None:
    assert parse_config(BASE, {}).fleet.replica_retention_seconds == 86400
    fleet = parse_config({**BASE, "fleet": {"lease_seconds": 60, "replica_retention_seconds": 600}}, {}).fleet
    assert fleet.replica_retention_seconds == 600
    with pytest.raises(ConfigError, match=r"fleet\.replica_retention_seconds"):
        parse_config({**BASE, "fleet": {"lease_seconds": 60, "replica_retention_seconds": 300}}, {})


def test_database_timeouts_have_defaults_and_bad_ones_fail_naming_the_key() -> None:
    cp = parse_config({**BASE, "checkpoint": {"url": "postgresql://u@db:5432/flows"}}, {}).checkpoint
    assert (cp.connect_timeout_seconds, cp.statement_timeout_seconds, cp.tcp_user_timeout_seconds) == (10, 30, 30)
    assert (cp.keepalive_idle_seconds, cp.keepalive_interval_seconds, cp.keepalive_count) == (10, 5, 3)
    with pytest.raises(ConfigError, match=r"checkpoint\.statement_timeout_seconds"):
        parse_config({**BASE, "checkpoint": {"statement_timeout_seconds": 0}}, {})
    with pytest.raises(ConfigError, match=r"checkpoint\.connect_timeout_seconds"):
        parse_config({**BASE, "checkpoint": {"connect_timeout_seconds": 1}}, {})
    with pytest.raises(ConfigError, match=r"checkpoint\.keepalive_count"):
        parse_config({**BASE, "checkpoint": {"keepalive_count": "many"}}, {})


def test_group_commit_bounds_have_defaults_and_bad_ones_fail_naming_the_key() -> None:
    cp = parse_config(BASE, {}).checkpoint
    assert (cp.group_commit_max_inputs, cp.group_commit_max_bytes, cp.group_commit_delay_seconds) == (16, 64 << 20, 0.15)
    for key, bad in (("group_commit_max_inputs", 0), ("group_commit_max_bytes", -1), ("group_commit_delay_seconds", 60)):
        with pytest.raises(ConfigError, match=rf"^checkpoint\.{key}: "):
            parse_config({**BASE, "checkpoint": {key: bad}}, {})


def test_waiting_nacl_replies_are_capped_per_window_by_default_and_a_bad_cap_names_its_key() -> None:
    from streamer.aggregate.pairing import MAX_WAITING_REPLIES

    insights = parse_config(BASE, {}).insights
    assert insights.max_waiting_replies_per_window == MAX_WAITING_REPLIES == 20_000  # the service's and replay's
    with pytest.raises(ConfigError, match=r"insights\.max_waiting_replies_per_window"):
        parse_config({**BASE, "insights": {"max_waiting_replies_per_window": -1}}, {})
