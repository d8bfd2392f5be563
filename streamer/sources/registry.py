"""Every kind of source, listed once.

A new source is a new module in this folder holding its config model (a
pydantic model with a `type` literal and an async `build(ctx)`) and its
runner; adding it to `SourceConfig` below is the only other change. The root
config validates `sources:` entries against this union, and the service
builds each one with `await config.build(ctx)`.
"""

from __future__ import annotations

from typing import Annotated, get_args

from pydantic import Field

from streamer.sources.cloudwatch import CloudWatchSourceConfig
from streamer.sources.firehose_http import FirehoseHttpSourceConfig
from streamer.sources.kinesis import KinesisSourceConfig
from streamer.sources.s3_poll import S3SourceConfig
from streamer.sources.s3_sqs import S3SqsSourceConfig

SourceConfig = Annotated[
    S3SourceConfig | S3SqsSourceConfig | KinesisSourceConfig | CloudWatchSourceConfig | FirehoseHttpSourceConfig,
    Field(discriminator="type"),
]


def source_types() -> list[str]:
    """The `type:` values a config may use."""
    union = get_args(SourceConfig)[0]
    return [get_args(cls.model_fields["type"].annotation)[0] for cls in get_args(union)]


__all__ = [
    "CloudWatchSourceConfig",
    "FirehoseHttpSourceConfig",
    "KinesisSourceConfig",
    "S3SourceConfig",
    "S3SqsSourceConfig",
    "SourceConfig",
    "source_types",
]
