"""Reading one S3 object, shared by every source that finds objects (polling, SQS notifications).

An object is named by bucket, key and ETag; its done key (`bucket/key#etag`,
in the shared `s3` namespace) is the same whichever source found it, so two
sources on one bucket never count an object twice. The body is streamed in
chunks with `IfMatch` on the ETag, so an object overwritten meanwhile is not
read half old, half new.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from streamer.sources.base import S3_NAMESPACE, Delivery, SourceError, aws_error_reason
from streamer.store.base import Done

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

BODY_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str
    etag: str
    last_modified: float
    size: int

    @property
    def done_key(self) -> str:
        return f"{self.bucket}/{self.key}#{self.etag}"


async def stream_object(s3: S3Client, obj: S3Object) -> AsyncIterator[bytes]:
    """The object's bytes in chunks; raises SourceError if it cannot be read."""
    try:
        resp = await s3.get_object(Bucket=obj.bucket, Key=obj.key, IfMatch=f'"{obj.etag}"')
        async with resp["Body"] as body:
            async for chunk in body.iter_chunks(BODY_CHUNK):
                yield chunk
    except (TimeoutError, ClientError, BotoCoreError, OSError) as exc:
        raise SourceError(aws_error_reason(exc), f"s3://{obj.bucket}/{obj.key}: {exc}") from exc


def object_delivery(
    s3: S3Client,
    obj: S3Object,
    log_format: tuple[str, ...] | None,
) -> Delivery:
    """One object as a delivery: streamed body, done key, arrival time for the delivery delay."""
    return Delivery(
        location=f"s3://{obj.bucket}/{obj.key}",
        body=lambda: stream_object(s3, obj),
        done=[Done(S3_NAMESPACE, obj.done_key)],
        arrived_at=obj.last_modified,
        log_format=log_format,
        size=obj.size,
    )
