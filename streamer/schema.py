"""The flow-log field catalogue: one place that knows every field.

Each field has its AWS name (hyphenated, as in headers and LogFormat
strings), the flow-log version that introduced it, its Arrow type and its
Parquet column name (AWS writes underscores). Text delivery carries every
field as a string; we type the numeric ones so that sums are exact int64.

Versions 2-5 come from the AWS VPC user guide; v6 (Transit Gateway), v7
(ECS) and v8 (reject-reason) from AWS's later additions as seen in the
samples of Elastic Beats and Vector. v9 resource-id, v10 encryption-status
(0 cleartext, 1 Nitro, 2 application, 3 both: an int) and v11 (June 2026:
interface-type, next-hop-*, and the EC2 tag fields, whose keys the flow log's
TagFieldSpecifications name, at most two per resource type) as AWS announced
them; names as Vector's parser accepts them.

A field that is not here never costs a record: it is read as a string,
reported (`unknown_fields`), and left out of every signal.
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
    ("encryption-status", 10, _I32),
    ("interface-type", 11, _S),
    ("next-hop-interface-id", 11, _S),
    ("next-hop-subnet-id", 11, _S),
    ("next-hop-az-id", 11, _S),
    ("next-hop-vpc-id", 11, _S),
    ("next-hop-interface-type", 11, _S),
    ("instance-tag", 11, _S),
    ("instance-tag-2", 11, _S),
    ("interface-tag", 11, _S),
    ("interface-tag-2", 11, _S),
    ("asg-tag", 11, _S),
    ("asg-tag-2", 11, _S),
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

#: EC2 tag values (v11): free text chosen by users, so they may hold spaces (see decode/text.py `_fit_tags`)
TAG_FIELDS = frozenset(("instance-tag", "instance-tag-2", "interface-tag", "interface-tag-2", "asg-tag", "asg-tag-2"))

#: Timestamps above this are epoch milliseconds (year 5138 in seconds).
MILLISECONDS_THRESHOLD = 100_000_000_000


class UnknownFieldError(ValueError):
    """A LogFormat token that cannot be a field name at all (not merely one we do not know)."""

    def __init__(self, name: str, where: str) -> None:
        super().__init__(f"{name!r} in {where} is not a flow-log field name")
        self.field = name


_LOGFORMAT_TOKEN = re.compile(r"\$\{([^}]*)\}")
#: what a field name looks like (AWS's are lowercase words joined by hyphens), known or not
_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
#: the longest name we take for a field we do not know (a longer token is not a header)
MAX_NAME_CHARS = 64


def normalize_name(token: str) -> str:
    """AWS hyphen name for a token written with hyphens or underscores."""
    return token.strip().lower().replace("_", "-")


def field(name: str) -> Field:
    """The catalogue entry of `name`; a name we do not know is a string field (version 0)."""
    known = FIELDS.get(name)
    return known if known is not None else Field(name, 0, _S)


def unknown(names: tuple[str, ...]) -> tuple[str, ...]:
    """The names of a layout that are not in the catalogue, in order."""
    return tuple(n for n in names if n not in FIELDS)


def parse_log_format(text: str) -> tuple[str, ...]:
    """Field names of an AWS LogFormat (`${version} ${interface-id}`) or a plain list.

    A name not in the catalogue is kept (read as a string, used by nothing).
    Raises UnknownFieldError for a token that is no field name at all,
    ValueError when empty or when a field repeats.
    """
    tokens = _LOGFORMAT_TOKEN.findall(text) if "${" in text else text.split()
    names = tuple(normalize_name(t) for t in tokens)
    if not names:
        raise ValueError("empty log format")
    for name in names:
        if name not in FIELDS and not is_field_name(name):
            raise UnknownFieldError(name, "log format")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"field {dup!r} appears twice in log format")
    return names


def is_field_name(name: str) -> bool:
    """`name` (normalized) looks like a flow-log field name, known or not."""
    return len(name) <= MAX_NAME_CHARS and _NAME.fullmatch(name) is not None


def header_fields(line: str) -> tuple[str, ...] | None:
    """Field names if `line` is a header line, else None.

    A line is a header when its first token is a field name we know (no
    record starts with one), or when every token looks like a field name
    and some are ones we know (a header that starts with next year's field).
    Names we do not know are kept: they are read as strings.
    """
    tokens = line.split()
    if not tokens:
        return None
    names = tuple(normalize_name(t) for t in tokens)
    if names[0] not in FIELDS and not (all(map(is_field_name, names)) and any(n in FIELDS for n in names)):
        return None
    if len(set(names)) != len(names) or not all(n in FIELDS or is_field_name(n) for n in names):
        return None  # a repeated or impossible name: a record (or garbage), not a header
    return names


def arrow_schema(names: tuple[str, ...]) -> pa.Schema:
    return pa.schema([pa.field(n, field(n).type) for n in names])
