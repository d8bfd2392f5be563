"""Why input could not be decoded, and how often.

    DecodeError                 an object (file, S3 object, payload) is unusable
    ├── CorruptGzipError        gzip stream is not valid deflate
    ├── TruncatedError          gzip stream ends before its trailer
    ├── UnknownFormatError      neither text, gzip, Parquet nor a CloudWatch payload
    ├── InvalidPayloadError     a CloudWatch Logs payload with the wrong shape (`"logEvents": 1`)
    ├── UnsupportedColumnError  a Parquet column whose type cannot become the field's (a list, a struct)
    └── DecodeFailedError       anything else decoding raised (see `as_decode_error`)

Line-level problems never raise: they are counted in an ErrorCounts by a
bounded set of reasons (REASONS) and the rest of the object still counts.
Whatever one input raises while it is decoded becomes one of these, so its
`reason` (a metric label) stays in a bounded set whatever the input.
"""

from __future__ import annotations

import dataclasses

#: Line-level reasons: the label values of streamer_decode_errors_total.
WRONG_FIELD_COUNT = "wrong_field_count"
INVALID_NUMBER = "invalid_number"
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
#: a CloudWatch Logs payload (or one of its events) whose fields have the wrong types
INVALID_PAYLOAD = "invalid_payload"
#: a record (a gzip'd CloudWatch Logs payload) that inflates past the cap (decode/cloudwatch.py MAX_RECORD_BYTES)
RECORD_TOO_LARGE = "record_too_large"
REASONS = (WRONG_FIELD_COUNT, INVALID_NUMBER, INVALID_UTF8, INVALID_JSON, INVALID_PAYLOAD, RECORD_TOO_LARGE)


class DecodeError(Exception):
    """An object as a whole cannot be decoded; `reason` is a bounded label."""

    reason = "decode_error"


class CorruptGzipError(DecodeError):
    reason = "corrupt_gzip"


class TruncatedError(DecodeError):
    reason = "truncated"


class UnknownFormatError(DecodeError):
    reason = "unknown_format"


class InvalidPayloadError(DecodeError):
    reason = INVALID_PAYLOAD


class UnsupportedColumnError(DecodeError):
    reason = "unsupported_column"


class DecodeFailedError(DecodeError):
    """Decoding raised something no decoder expected (a bug, or input no one foresaw): one bounded reason."""

    reason = "decode_failed"


def as_decode_error(exc: Exception) -> DecodeError:
    """The DecodeError an input failed with: itself, or `exc` wrapped (its type and text stay in the message)."""
    if isinstance(exc, DecodeError):
        return exc
    wrapped = DecodeFailedError(f"{type(exc).__name__}: {exc}")
    wrapped.__cause__ = exc
    return wrapped


@dataclasses.dataclass
class ErrorCounts:
    """Skipped lines by reason, plus the first example of each for the log."""

    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    examples: dict[str, str] = dataclasses.field(default_factory=dict)
    #: field names the input's layout has and the catalogue does not: read as strings, used by nothing,
    #: reported once per object (a set, so merging an object's units never counts one twice)
    unknown_fields: set[str] = dataclasses.field(default_factory=set)

    def add(self, reason: str, count: int = 1, example: str | None = None) -> None:
        if count <= 0:
            return
        self.counts[reason] = self.counts.get(reason, 0) + count
        if example is not None and reason not in self.examples:
            self.examples[reason] = example[:200]

    def merge(self, other: ErrorCounts) -> None:
        for reason, count in other.counts.items():
            self.add(reason, count, other.examples.get(reason))
        self.unknown_fields |= other.unknown_fields

    @property
    def total(self) -> int:
        return sum(self.counts.values())
