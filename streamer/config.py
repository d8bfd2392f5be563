"""Typed configuration: a YAML file plus environment overrides, validated at start.

Config objects are plain data that *build* the running service. Unknown keys
are rejected, units are in the names, and every error is reported as one
line naming the key (`sources.0.poll_interval_seconds: ...`), so bad config
fails fast instead of at 3 a.m.

Environment overrides use `STREAMER__` and double underscores for nesting,
list items by index. Values stay strings (pydantic converts them where the
key is a number or a flag), so an account-id prefix is not turned into an int:
    STREAMER__HTTP__LISTEN_ADDRESS=0.0.0.0:9108
    STREAMER__SOURCES__0__BUCKET=my-flow-logs
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streamer.schema import UnknownFieldError, parse_log_format

ENV_PREFIX = "STREAMER__"


class ConfigError(ValueError):
    """Configuration cannot be used; the message is one line naming the key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpConfig(_Model):
    #: host:port for /metrics, /healthz, /readyz
    listen_address: str = "0.0.0.0:9108"

    @field_validator("listen_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        _, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be host:port, e.g. 0.0.0.0:9108")
        return value

    @property
    def host(self) -> str:
        return self.listen_address.rpartition(":")[0] or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.listen_address.rpartition(":")[2])


class CheckpointConfig(_Model):
    #: SQLite file holding counters, windows and positions (directory is created)
    path: Path = Path("/var/lib/streamer/state.db")
    #: how long to remember finished S3 objects (must exceed any lookback)
    retention_seconds: int = Field(default=7 * 86400, gt=0)


def _check_log_format(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_log_format(value)
        except (UnknownFieldError, ValueError) as exc:
            raise ValueError(str(exc)) from exc
    return value


class _AwsSource(_Model):
    #: label used in metrics and logs; defaults to the type plus its index
    name: str | None = None
    region: str = "us-east-1"
    #: S3-compatible stores, VPC endpoints and tests
    endpoint_url: str | None = None
    #: LogFormat for headerless records (AWS `${field}` syntax); default v2
    log_format: str | None = None

    _log_format = field_validator("log_format")(_check_log_format)


class S3SourceConfig(_AwsSource):
    type: Literal["s3"]
    bucket: str = Field(min_length=3, max_length=63)
    #: anything before AWSLogs/
    prefix: str = ""
    poll_interval_seconds: float = Field(default=60, gt=0)
    #: how far back to look for late objects
    lookback_seconds: int = Field(default=21600, gt=0)
    #: objects processed at once
    max_concurrent_objects: int = Field(default=2, ge=1, le=32)


class S3SqsSourceConfig(_AwsSource):
    type: Literal["s3_sqs"]
    queue_url: str
    #: long-poll wait per ReceiveMessage
    wait_time_seconds: int = Field(default=20, ge=0, le=20)
    #: visibility timeout; extended while a large object is processed
    visibility_timeout_seconds: int = Field(default=300, ge=10, le=43200)
    max_messages: int = Field(default=10, ge=1, le=10)
    #: a message received more often than this is given up (logged, counted, deleted)
    max_receive_count: int = Field(default=5, ge=1)
    #: how often a held message's visibility is extended (default: a third of the timeout)
    visibility_keepalive_seconds: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _keepalive_in_time(self) -> S3SqsSourceConfig:
        if self.visibility_keepalive_seconds is not None and self.visibility_keepalive_seconds >= self.visibility_timeout_seconds:
            raise ValueError(
                f"visibility_keepalive_seconds ({self.visibility_keepalive_seconds:g}) must be shorter than "
                f"visibility_timeout_seconds ({self.visibility_timeout_seconds}), or messages reappear while held"
            )
        return self

    @property
    def keepalive_seconds(self) -> float:
        return self.visibility_keepalive_seconds or self.visibility_timeout_seconds / 3


class KinesisSourceConfig(_AwsSource):
    type: Literal["kinesis"]
    stream_name: str
    start_position: Literal["trim_horizon", "latest"] = "trim_horizon"
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    #: how often to look for new shards (resharding)
    shard_refresh_seconds: float = Field(default=60, gt=0)
    #: Kinesis records per GetRecords call (one checkpoint commit each)
    batch_records: int = Field(default=10_000, ge=1, le=10_000)


class CloudWatchSourceConfig(_AwsSource):
    type: Literal["cloudwatch"]
    log_group: str
    log_stream_prefix: str | None = None
    poll_interval_seconds: float = Field(default=30, gt=0)
    #: events whose ingestion lags this much are still counted once
    lateness_seconds: int = Field(default=900, ge=0)
    #: on a first start, how far back to read
    start_lookback_seconds: int = Field(default=3600, ge=0)
    #: discover log_format from ec2:DescribeFlowLogs
    flow_log_id: str | None = None


SourceConfig = Annotated[
    S3SourceConfig | S3SqsSourceConfig | KinesisSourceConfig | CloudWatchSourceConfig,
    Field(discriminator="type"),
]


class AnomalyConfig(_Model):
    window_seconds: int = Field(default=60, gt=0)
    #: how far behind the slowest active source's newest record a window stays open
    lateness_seconds: int = Field(default=900, ge=0)
    #: a record this far ahead of the wall clock counts in totals but never moves event time
    max_future_skew_seconds: int = Field(default=300, ge=0)
    #: a source with nothing new this long stops holding event time back; all idle: it follows the wall clock
    idle_timeout_seconds: float = Field(default=600, gt=0)
    score_threshold: float = Field(default=4.0, gt=0)
    min_rejected_records: int = Field(default=50, ge=0)
    #: closed windows before an ENI's baseline is trusted
    warmup_windows: int = Field(default=10, ge=1)
    #: EWMA smoothing factor for the baseline mean and variance
    baseline_alpha: float = Field(default=0.1, gt=0, le=1)


class AlertsConfig(_Model):
    alertmanager_url: str | None = None
    webhook_url: str | None = None
    #: an alert keeps firing this long after its last anomalous window was seen
    hold_seconds: int = Field(default=900, ge=0)
    #: active alerts are re-sent this often
    resend_interval_seconds: float = Field(default=60, gt=0)
    severity: str = "warning"


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    json_lines: bool = False


class MetricsConfig(_Model):
    #: interfaces beyond this many are counted under interface_id="other" (membership is sticky)
    max_interfaces: int = Field(default=5000, ge=1)
    #: an interface with nothing new this long is forgotten: its series go, its slot frees
    interface_idle_seconds: float = Field(default=86400, gt=0)


class Config(_Model):
    http: HttpConfig = HttpConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    sources: list[SourceConfig] = Field(min_length=1)
    anomaly: AnomalyConfig = AnomalyConfig()
    alerts: AlertsConfig = AlertsConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    #: threads decoding chunks (0: number of CPUs, at most 4)
    decode_workers: int = Field(default=0, ge=0, le=64)

    @model_validator(mode="after")
    def _retention_covers_lookback(self) -> Config:
        for src in self.sources:
            if isinstance(src, S3SourceConfig) and self.checkpoint.retention_seconds < src.lookback_seconds + 86400:
                raise ValueError(
                    f"checkpoint.retention_seconds ({self.checkpoint.retention_seconds}) must be at least a source's "
                    f"lookback_seconds ({src.lookback_seconds}) plus a day, or objects are counted twice"
                )
        return self

    def source_name(self, index: int) -> str:
        src = self.sources[index]
        return src.name or f"{src.type}-{index}"


def apply_env(doc: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay STREAMER__A__B=value variables onto the parsed YAML."""
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        node: Any = doc
        for i, part in enumerate(path):
            last = i == len(path) - 1
            key: Any = int(part) if part.isdigit() and isinstance(node, list) else part
            if isinstance(node, list):
                while len(node) <= key:
                    node.append({})
            if last:
                node[key] = raw
            else:
                if isinstance(node, dict) and not isinstance(node.get(key), dict | list):
                    node[key] = [] if path[i + 1].isdigit() else {}
                node = node[key]
    return doc


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in ("s3", "s3_sqs", "kinesis", "cloudwatch")))
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"


def parse_config(doc: Any, environ: Mapping[str, str] | None = None) -> Config:
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError("config: the file must hold a mapping")
    doc = apply_env(doc, os.environ if environ is None else environ)
    try:
        return Config.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML") from None
    return parse_config(doc, environ)
