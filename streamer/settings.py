"""Config sections every layer may read, validated at start.

The pieces the root `Config` (config.py) is assembled from: HTTP, checkpoint,
anomaly, alerts, logging and metrics sections, and the base every source's
own config model extends (each source keeps its model beside its runner in
`streamer/sources/`). Unknown keys are rejected and units are in the names.
"""

from __future__ import annotations

import difflib
import logging
import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from streamer import defaults
from streamer.schema import FIELDS, UnknownFieldError, parse_log_format, unknown

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """Configuration cannot be used; the message is one line naming the key."""


class Model(BaseModel):
    """Plain, frozen data; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpConfig(Model):
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


class CheckpointConfig(Model):
    #: SQLite file holding counters, windows and positions (directory is created)
    path: Path = Path("/var/lib/streamer/state.db")
    #: a fleet's shared PostgreSQL instead: postgresql://user@host:5432/db (the password may be in it, never logged)
    url: SecretStr | None = None
    #: a file holding the database password (a mounted Secret); else the URL's, or the standard PG* variables
    password_file: Path | None = None
    #: database connections per process
    pool_size: int = Field(default=4, ge=2, le=32)
    #: how long to remember finished S3 objects (must exceed any lookback)
    retention_seconds: int = Field(default=7 * 86400, gt=0)
    # Group commit: inputs decoded close together commit in one transaction (see commit_group.py).
    #: at most this many inputs per transaction
    group_commit_max_inputs: int = Field(default=16, ge=1, le=1024)
    #: at most about this many input bytes per transaction (a larger input goes alone)
    group_commit_max_bytes: int = Field(default=64 << 20, ge=1)
    #: a ready input waits at most this long for others still decoding (0: never waits)
    group_commit_delay_seconds: float = Field(default=0.15, ge=0, le=5)
    # PostgreSQL only (see store/pgtimeouts.py): no call to the database waits longer than these.
    #: connecting, and waiting for a (checked) connection from the pool
    connect_timeout_seconds: int = Field(default=10, ge=2, le=300)
    #: one call (a transaction): the server cancels a statement past it, the replica cuts a call not answered by then
    statement_timeout_seconds: float = Field(default=30, ge=1, le=3600)
    #: TCP keepalive: probe an idle connection after this long, then every interval; drop it after `keepalive_count` misses
    keepalive_idle_seconds: int = Field(default=10, ge=1, le=7200)
    #: TCP keepalive: the interval between probes of an idle connection
    keepalive_interval_seconds: int = Field(default=5, ge=1, le=600)
    #: TCP keepalive: unanswered probes before the connection is dropped
    keepalive_count: int = Field(default=3, ge=1, le=30)
    #: data sent and not acknowledged for this long drops the connection (TCP_USER_TIMEOUT)
    tcp_user_timeout_seconds: float = Field(default=30, ge=1, le=3600)

    @field_validator("url")
    @classmethod
    def _postgres(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value


class FleetConfig(Model):
    """Several replicas over one PostgreSQL (checkpoint.url): work split by leases, one leader detects."""

    #: this replica's name: its counters are kept under it and resume after a restart (default: the hostname)
    replica_id: str = Field(default_factory=socket.gethostname, min_length=1)
    #: a lease not renewed for this long is taken over by another replica (renewed every third of it)
    lease_seconds: float = Field(default=30, ge=2)
    #: S3 polling is split into this many key-hash partitions, leased among the replicas
    s3_partitions: int = Field(default=8, ge=1, le=256)
    #: the rows of a replica not seen (or gone since it left) for this long are folded into shared rows
    replica_retention_seconds: float = Field(default=86400)

    @field_validator("replica_retention_seconds")
    @classmethod
    def _past_leases(cls, value: float, info: ValidationInfo) -> float:
        lease = info.data.get("lease_seconds", 30)
        if value < max(60, 10 * lease):
            raise ValueError(f"must be at least 60 and ten times fleet.lease_seconds ({10 * lease:g})")
        return value


def check_log_format(value: str | None) -> str | None:
    """Validate an AWS LogFormat string (`${version} ${interface-id} ...`).

    A field the catalogue does not know is accepted (read as a string, used by nothing: next year's
    field must not stop the service), with a warning that names the known field it may be a typo of.
    """
    if value is not None:
        try:
            names = parse_log_format(value)
        except (UnknownFieldError, ValueError) as exc:
            raise ValueError(str(exc)) from exc
        for name in unknown(names):
            near = difflib.get_close_matches(name, FIELDS, n=1)
            hint = f" (a typo of {near[0]!r}?)" if near else ""
            log.warning("log_format: field %r is not in the catalogue: read as a string and used by nothing%s", name, hint)
    return value


class SourceSettings(Model):
    """What every source's config has: a name for metrics and logs."""

    #: label used in metrics and logs; defaults to the type plus its index
    name: str | None = None


class AwsSourceSettings(SourceSettings):
    """What every source that talks to AWS has."""

    #: the AWS region of the bucket, queue, stream or log group
    region: str = "us-east-1"
    #: S3-compatible stores, VPC endpoints and tests
    endpoint_url: str | None = None
    #: LogFormat for headerless records (AWS `${field}` syntax); default v2
    log_format: str | None = None

    _log_format = field_validator("log_format")(check_log_format)


class AnomalyConfig(Model):
    #: length of the tumbling event-time windows each ENI's rejected traffic is counted in
    window_seconds: int = Field(default=defaults.WINDOW_SECONDS, gt=0)
    #: how far behind the slowest active source's newest record a window stays open
    lateness_seconds: int = Field(default=defaults.LATENESS_SECONDS, ge=0)
    #: a record this far ahead of the wall clock counts in totals but never moves event time
    max_future_skew_seconds: int = Field(default=300, ge=0)
    #: a source with nothing new this long stops holding event time back; all idle: it follows the wall clock
    idle_timeout_seconds: float = Field(default=600, gt=0)
    #: a closed window is a spike when its score (standard deviations above the baseline) reaches this
    score_threshold: float = Field(default=defaults.SCORE_THRESHOLD, gt=0)
    #: a spike also needs at least this many rejected records in the window
    min_rejected_records: int = Field(default=defaults.MIN_REJECTED_RECORDS, ge=0)
    #: closed windows before an ENI's baseline is trusted
    warmup_windows: int = Field(default=defaults.WARMUP_WINDOWS, ge=1)
    #: EWMA smoothing factor for the baseline mean and variance
    baseline_alpha: float = Field(default=defaults.BASELINE_ALPHA, gt=0, le=1)


class InsightsConfig(Model):
    """Network insights (NACL return rejects, gateway-endpoint candidates, internet-reachable IPv6, traffic paths)."""

    #: derive the network insights from the same records (off: counters, windows and alerts only)
    enabled: bool = True
    #: pair NACL return rejects (`vpcflow_nacl_return_rejects_total`; off: not exported). Opt-in for its cost:
    #: it decodes six more columns on v2 and keys every accepted request, measured +50% whole-process CPU on
    #: v2 and +40% on v5 (docs/performance.md); the other insights stay on with `enabled`
    nacl_pairing: bool = False
    #: NAT gateway data processing price, USD per GB (AWS bills GiB-like "GB"), for the cost estimate
    nat_gateway_price_per_gb: float = Field(default=defaults.NAT_GATEWAY_PRICE_PER_GB, ge=0)
    #: NACL return rejects: unpaired replies (a row per ENI and flow) one window keeps waiting for their request;
    #: beyond it newcomers are dropped and counted (internet-facing ENIs reject backscatter no request answers)
    max_waiting_replies_per_window: int = Field(default=defaults.MAX_WAITING_REPLIES_PER_WINDOW, ge=0)


#: where the docs' runbooks page is published (mkdocs.yml's site_url + "runbooks/"; tests keep them in step)
RUNBOOK_BASE_URL = "https://vpcflow-streamer.readthedocs.io/en/latest/runbooks/"


class AlertsConfig(Model):
    #: Alertmanager to send VPCFlowRejectSpike to (its v2 API), e.g. http://alertmanager:9093
    alertmanager_url: str | None = None
    #: a URL that receives the alerts as JSON (`{"alerts": [...]}`) by POST
    webhook_url: str | None = None
    #: an alert keeps firing this long after its last anomalous window was seen
    hold_seconds: int = Field(default=900, ge=0)
    #: active alerts are re-sent this often
    resend_interval_seconds: float = Field(default=60, gt=0)
    #: the `severity` label of the alerts streamer sends
    severity: str = "warning"
    #: the runbooks page alerts link to: their `runbook_url` annotation is this plus `#<alertname in lower case>`
    #: (default: this project's docs; set your own copy's, or null for no link)
    runbook_base_url: str | None = RUNBOOK_BASE_URL


_ACCOUNT_ID = re.compile(r"^[0-9]{12}$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]{1,512}$")


class EnrichConfig(Model):
    """ENI context from EC2 (`ec2:DescribeNetworkInterfaces`): names, types, requesters, security groups.

    Off the hot path: a record never waits for a describe, and a denied or throttled describe only
    leaves its ENI without EC2 context (streamer_enrich_errors_total). Context the records carry
    (instance-id, vpc-id, ...) is used with or without this section.
    """

    #: an active ENI is described again this often (a new one at once)
    refresh_seconds: float = Field(default=600, ge=1)
    #: the region to ask for ENIs whose records name none (the `region` field); default: the credential chain's
    region: str | None = None
    #: EC2 endpoint (VPC endpoints, tests)
    endpoint_url: str | None = None
    #: STS endpoint for the roles below (regional STS, VPC endpoints, tests)
    sts_endpoint_url: str | None = None
    #: account id -> role to assume for that account's ENIs (the records' account-id); others use our own credentials
    role_arn: dict[str, str] = Field(default_factory=dict)
    #: EC2 calls per second at most, per account and region (EC2 throttles per account and region)
    max_requests_per_second: float = Field(default=5, gt=0, le=100)
    #: the first pause after a throttled or failed call; it doubles while they go on, up to 300 s
    backoff_seconds: float = Field(default=1, gt=0, le=300)

    @field_validator("role_arn", mode="before")
    @classmethod
    def _quoted(cls, value: object) -> object:
        if isinstance(value, dict):
            for account in value:
                if not isinstance(account, str):
                    raise ValueError(f"{account!r}: quote account ids in YAML ('012345678901'), or leading zeros are lost")
        return value

    @field_validator("role_arn")
    @classmethod
    def _roles(cls, value: dict[str, str]) -> dict[str, str]:
        for account, arn in value.items():
            if not _ACCOUNT_ID.match(account):
                raise ValueError(f"{account!r}: an account id is 12 digits (quote it in YAML)")
            if not _ROLE_ARN.match(arn):
                raise ValueError(f"{account}: {arn!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
        return value


class LoggingConfig(Model):
    #: the lowest level logged
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: one JSON object per log line instead of text
    json_lines: bool = False


class MetricsConfig(Model):
    #: interfaces beyond this many are counted under interface_id="other" (membership is sticky)
    max_interfaces: int = Field(default=5000, ge=1)
    #: an interface with nothing new this long is forgotten: its series go, its slot frees (and, after as long
    #: in event time, its detector baseline); totals that are not per interface stay
    interface_idle_seconds: float = Field(default=86400, gt=0)
