"""The flow-log field catalogue: one place that knows every field.

Each field has its AWS name (hyphenated, as in headers and LogFormat
strings), the flow-log version that introduced it, its Arrow type and its
Parquet column name (AWS writes underscores). Text delivery carries every
field as a string; we type the numeric ones so that sums are exact int64.

Versions 2-5 come from the AWS VPC user guide; v6 (Transit Gateway), v7
(ECS) and v8 (reject-reason) from AWS's later additions as seen in the
samples of Elastic Beats and Vector; the fields after reject-reason follow
the names Vector's parser accepts (their exact introducing versions are not
documented in anything we could read, so they are all tagged 9).
"""

from __future__ import annotations

import dataclasses
import re

import pyarrow as pa


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    version: int
    type: pa.DataType

    @property
    def parquet_name(self) -> str:
        return self.name.replace("-", "_")

    @property
    def numeric(self) -> bool:
        return bool(pa.types.is_integer(self.type))


_S, _I32, _I64 = pa.string(), pa.int32(), pa.int64()

_CATALOGUE: tuple[tuple[str, int, pa.DataType], ...] = (
    ("version", 2, _I32),
    ("account-id", 2, _S),
    ("interface-id", 2, _S),
    ("srcaddr", 2, _S),
    ("dstaddr", 2, _S),
    ("srcport", 2, _I32),
    ("dstport", 2, _I32),
    ("protocol", 2, _I32),
    ("packets", 2, _I64),
    ("bytes", 2, _I64),
    ("start", 2, _I64),
    ("end", 2, _I64),
    ("action", 2, _S),
    ("log-status", 2, _S),
    ("vpc-id", 3, _S),
    ("subnet-id", 3, _S),
    ("instance-id", 3, _S),
    ("tcp-flags", 3, _I32),
    ("type", 3, _S),
    ("pkt-srcaddr", 3, _S),
    ("pkt-dstaddr", 3, _S),
    ("region", 4, _S),
    ("az-id", 4, _S),
    ("sublocation-type", 4, _S),
    ("sublocation-id", 4, _S),
    ("pkt-src-aws-service", 5, _S),
    ("pkt-dst-aws-service", 5, _S),
    ("flow-direction", 5, _S),
    ("traffic-path", 5, _I32),
    ("resource-type", 6, _S),
    ("tgw-id", 6, _S),
    ("tgw-attachment-id", 6, _S),
    ("tgw-src-vpc-account-id", 6, _S),
    ("tgw-dst-vpc-account-id", 6, _S),
    ("tgw-src-vpc-id", 6, _S),
    ("tgw-dst-vpc-id", 6, _S),
    ("tgw-src-subnet-id", 6, _S),
    ("tgw-dst-subnet-id", 6, _S),
    ("tgw-src-eni", 6, _S),
    ("tgw-dst-eni", 6, _S),
    ("tgw-src-az-id", 6, _S),
    ("tgw-dst-az-id", 6, _S),
    ("tgw-pair-attachment-id", 6, _S),
    ("packets-lost-no-route", 6, _I64),
    ("packets-lost-blackhole", 6, _I64),
    ("packets-lost-mtu-exceeded", 6, _I64),
    ("packets-lost-ttl-expired", 6, _I64),
    ("ecs-cluster-arn", 7, _S),
    ("ecs-cluster-name", 7, _S),
    ("ecs-container-instance-arn", 7, _S),
    ("ecs-container-instance-id", 7, _S),
    ("ecs-container-id", 7, _S),
    ("ecs-second-container-id", 7, _S),
    ("ecs-service-name", 7, _S),
    ("ecs-task-definition-arn", 7, _S),
    ("ecs-task-arn", 7, _S),
    ("ecs-task-id", 7, _S),
    ("reject-reason", 8, _S),
    ("resource-id", 9, _S),
    ("encryption-status", 9, _I32),
    ("instance-tag", 9, _S),
    ("instance-tag-2", 9, _S),
    ("interface-tag", 9, _S),
    ("interface-tag-2", 9, _S),
    ("asg-tag", 9, _S),
    ("asg-tag-2", 9, _S),
    ("interface-type", 9, _S),
    ("next-hop-interface-id", 9, _S),
    ("next-hop-subnet-id", 9, _S),
    ("next-hop-az-id", 9, _S),
    ("next-hop-vpc-id", 9, _S),
    ("next-hop-interface-type", 9, _S),
)

FIELDS: dict[str, Field] = {name: Field(name, version, typ) for name, version, typ in _CATALOGUE}
BY_PARQUET_NAME: dict[str, Field] = {f.parquet_name: f for f in FIELDS.values()}

DEFAULT_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS.values() if f.version == 2)
#: All v2-v5 fields in the AWS table order (the 29-field "everything" format).
V5_ALL_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS.values() if f.version <= 5)

#: Low-cardinality string fields decoded dictionary-encoded: cheaper to parse
#: and to group by than plain strings. Addresses and per-flow ids are not.
DICTIONARY_FIELDS = frozenset(
    {
        "account-id",
        "interface-id",
        "action",
        "log-status",
        "vpc-id",
        "subnet-id",
        "instance-id",
        "type",
        "region",
        "az-id",
        "sublocation-type",
        "sublocation-id",
        "pkt-src-aws-service",
        "pkt-dst-aws-service",
        "flow-direction",
        "resource-type",
        "reject-reason",
        "interface-type",
    }
)

#: Timestamps above this are epoch milliseconds (year 5138 in seconds).
MILLISECONDS_THRESHOLD = 100_000_000_000


class UnknownFieldError(ValueError):
    """A header or LogFormat names a field that is not in the catalogue."""

    def __init__(self, name: str, where: str) -> None:
        super().__init__(f"unknown flow-log field {name!r} in {where}")
        self.field = name


_LOGFORMAT_TOKEN = re.compile(r"\$\{([^}]*)\}")


def normalize_name(token: str) -> str:
    """AWS hyphen name for a token written with hyphens or underscores."""
    return token.strip().lower().replace("_", "-")


def parse_log_format(text: str) -> tuple[str, ...]:
    """Field names of an AWS LogFormat (`${version} ${interface-id}`) or a plain list.

    Raises UnknownFieldError naming the first unknown field, ValueError when empty
    or when a field repeats.
    """
    tokens = _LOGFORMAT_TOKEN.findall(text) if "${" in text else text.split()
    names = tuple(normalize_name(t) for t in tokens)
    if not names:
        raise ValueError("empty log format")
    for name in names:
        if name not in FIELDS:
            raise UnknownFieldError(name, "log format")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"field {dup!r} appears twice in log format")
    return names


def header_fields(line: str) -> tuple[str, ...] | None:
    """Field names if `line` is a header line, else None.

    A line is a header when its first token is a field name (no record starts
    with a field name). Unknown names after that raise UnknownFieldError.
    """
    tokens = line.split()
    if not tokens or normalize_name(tokens[0]) not in FIELDS:
        return None
    names = tuple(normalize_name(t) for t in tokens)
    for name in names:
        if name not in FIELDS:
            raise UnknownFieldError(name, "header line")
    return names


def arrow_schema(names: tuple[str, ...]) -> pa.Schema:
    return pa.schema([pa.field(n, FIELDS[n].type) for n in names])
