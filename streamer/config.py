"""Typed configuration: a YAML file plus environment overrides, validated at start.

The root `Config` assembles the sections (settings.py) and one entry per
source, validated against the sources' own models (sources/registry.py).
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
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from streamer.settings import (
    AlertsConfig,
    AnomalyConfig,
    CheckpointConfig,
    ConfigError,
    EnrichConfig,
    FleetConfig,
    HttpConfig,
    InsightsConfig,
    LoggingConfig,
    MetricsConfig,
    Model,
)
from streamer.sources.registry import (
    CloudWatchSourceConfig,
    KinesisSourceConfig,
    S3SourceConfig,
    S3SqsSourceConfig,
    SourceConfig,
    source_types,
)

ENV_PREFIX = "STREAMER__"


class Config(Model):
    http: HttpConfig = HttpConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    sources: list[SourceConfig] = Field(min_length=1)
    anomaly: AnomalyConfig = AnomalyConfig()
    insights: InsightsConfig = InsightsConfig()
    fleet: FleetConfig = FleetConfig()
    alerts: AlertsConfig = AlertsConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    #: ENI context from EC2 (optional; context the records carry is used either way)
    enrich: EnrichConfig | None = None
    #: threads decoding chunks (0: number of CPUs, at most 4)
    decode_workers: int = Field(default=0, ge=0, le=64)

    @model_validator(mode="after")
    def _retention_covers_lookback(self) -> Config:
        for src in self.sources:
            lookback = getattr(src, "lookback_seconds", None)  # sources that list what they already read
            if lookback is not None and self.checkpoint.retention_seconds < lookback + 86400:
                raise ValueError(
                    f"checkpoint.retention_seconds ({self.checkpoint.retention_seconds}) must be at least a source's "
                    f"lookback_seconds ({lookback}) plus a day, or objects are counted twice"
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
    tags = set(source_types())
    loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in tags))
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


__all__ = [
    "AlertsConfig",
    "AnomalyConfig",
    "CheckpointConfig",
    "CloudWatchSourceConfig",
    "Config",
    "ConfigError",
    "EnrichConfig",
    "FleetConfig",
    "HttpConfig",
    "InsightsConfig",
    "KinesisSourceConfig",
    "LoggingConfig",
    "MetricsConfig",
    "S3SourceConfig",
    "S3SqsSourceConfig",
    "SourceConfig",
    "apply_env",
    "load_config",
    "parse_config",
]
