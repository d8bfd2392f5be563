"""What an ENI is: context from the records themselves and from EC2, merged for metrics and alerts.

Two sources, kept apart so neither overwrites the other:
- the records: a format that carries `instance-id`, `vpc-id`, `subnet-id`, `az-id`, `interface-type`,
  `resource-id` or the tag fields names the ENI's workload at no API call, and stays right after the
  ENI is deleted (Lambda, ECS tasks);
- EC2 (`ec2:DescribeNetworkInterfaces`, streamer/enrich/): names, description, requester and
  security groups, which no record carries.

Merge rule: for a field both know, the records win. They describe the traffic as it was, while a
describe may be minutes old, denied, or about an ENI deleted since. EC2 fills every field the
records do not carry.

Per batch, `record_context` is one small group-by over the few context columns (none when the
format has none), on the decode thread; the enricher folds the results off the hot path.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

#: record fields that say what an ENI is (AWS names) -> context key
RECORD_FIELDS: dict[str, str] = {
    "account-id": "account_id",
    "region": "region",
    "instance-id": "instance_id",
    "vpc-id": "vpc_id",
    "subnet-id": "subnet_id",
    "az-id": "az",
    "interface-type": "interface_type",
    "resource-id": "resource_id",
    "instance-tag": "instance_tag",
    "interface-tag": "interface_tag",
}
#: the fields above that are context proper (account-id and region only say where to ask EC2)
CONTEXT_FIELDS = tuple(f for f in RECORD_FIELDS if f not in ("account-id", "region"))
#: label values of vpcflow_interface_info are cut to this many characters
MAX_LABEL_CHARS = 120


@dataclasses.dataclass(frozen=True)
class InterfaceContext:
    """Everything known about one ENI; None where nothing is known."""

    interface_id: str
    interface_type: str | None = None
    #: the ENI's own Name tag, else its instance's
    name: str | None = None
    instance_id: str | None = None
    instance_name: str | None = None
    #: who made the ENI: instance, elb, nat_gateway, lambda, ecs, vpc_endpoint, ... (see enrich/ec2.py)
    requester: str | None = None
    description: str | None = None
    security_groups: tuple[str, ...] = ()
    subnet_id: str | None = None
    vpc_id: str | None = None
    az: str | None = None
    account_id: str | None = None
    region: str | None = None
    resource_id: str | None = None
    instance_tag: str | None = None
    interface_tag: str | None = None
    #: EC2 no longer knows the ENI: what is shown is its last-known context
    deleted: bool = False

    def labels(self) -> dict[str, str]:
        """vpcflow_interface_info's labels (empty string where unknown), each cut to MAX_LABEL_CHARS."""
        raw = {
            "interface_id": self.interface_id,
            "interface_type": self.interface_type or "",
            "name": self.name or "",
            "instance_id": self.instance_id or "",
            "subnet_id": self.subnet_id or "",
            "vpc_id": self.vpc_id or "",
            "az": self.az or "",
            "security_groups": ",".join(self.security_groups),
            "description": self.description or "",
        }
        return {k: truncate(v) for k, v in raw.items()}

    def to_json(self) -> dict[str, Any]:
        doc = {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, (), False)}
        if self.security_groups:
            doc["security_groups"] = list(self.security_groups)
        return doc


def truncate(value: str, limit: int = MAX_LABEL_CHARS) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


def merge(interface_id: str, records: Mapping[str, Any] | None, ec2: Mapping[str, Any] | None) -> InterfaceContext:
    """One ENI's context: the records' fields win, EC2 fills the rest (module docstring)."""
    doc: dict[str, Any] = dict(ec2 or {})
    doc.update({k: v for k, v in (records or {}).items() if v})
    if not doc.get("name") and doc.get("instance_name"):
        doc["name"] = doc["instance_name"]
    fields = {f.name for f in dataclasses.fields(InterfaceContext)}
    doc = {k: v for k, v in doc.items() if k in fields and k != "interface_id"}
    doc["security_groups"] = tuple(doc.get("security_groups") or ())
    return InterfaceContext(interface_id, **doc)


def record_context(table: pa.Table) -> pa.Table | None:
    """The context fields a decoded batch's records carry: its distinct (interface, field values) rows,
    about one per interface. None when the format carries none of them.

    A group-by on the (dictionary-encoded) columns themselves, with no aggregate: their values are
    converted to strings only for the few distinct rows, never per record."""
    present = [f for f in RECORD_FIELDS if f in table.column_names]
    if not present or "interface-id" not in table.column_names or not table.num_rows:
        return None
    keyed = table.select(["interface-id", *present])
    if any(pa.types.is_dictionary(c.type) and c.num_chunks > 1 for c in keyed.columns):
        keyed = keyed.unify_dictionaries()
    distinct = keyed.group_by(keyed.column_names, use_threads=False).aggregate([])
    distinct = distinct.filter(pc.is_valid(distinct.column("interface-id")))
    return pa.table(
        {
            "interface_id": pc.cast(distinct.column("interface-id"), pa.string()),
            **{RECORD_FIELDS[n]: pc.cast(distinct.column(n), pa.string()) for n in present},
        }
    )


def fold(parts: Iterable[pa.Table | None]) -> dict[str, dict[str, str]]:
    """Batches' `record_context` tables as {interface: {key: value}} (values only where known; later wins)."""
    out: dict[str, dict[str, str]] = {}
    for part in parts:
        if part is None or not part.num_rows:
            continue
        for row in part.to_pylist():  # one row per interface of an input, off the hot path
            eni = row.pop("interface_id")
            out.setdefault(eni, {}).update({k: v for k, v in row.items() if v is not None})
    return out


class ContextBook:
    """The context of every ENI known: what the records said, what EC2 said, and when each was last seen
    and described (wall clock). Exported and alerted on through `get`."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, str]] = {}
        self.ec2: dict[str, dict[str, Any]] = {}
        self.seen_at: dict[str, float] = {}
        self.described_at: dict[str, float] = {}

    def get(self, interface_id: str) -> InterfaceContext | None:
        records, ec2 = self.records.get(interface_id), self.ec2.get(interface_id)
        if records is None and (ec2 is None or ec2.get("not_found")):  # nothing known (an answer of "no such ENI")
            return None
        return merge(interface_id, records, ec2)

    def known(self) -> set[str]:
        return set(self.records) | set(self.ec2) | set(self.seen_at)

    def forget(self, interfaces: Iterable[str]) -> None:
        for eni in interfaces:
            for part in (self.records, self.ec2, self.seen_at, self.described_at):
                part.pop(eni, None)


def dumps(doc: Mapping[str, Any] | None) -> str | None:
    return None if doc is None else json.dumps(doc, sort_keys=True, separators=(",", ":"))


def loads(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    doc = json.loads(text)
    return doc if isinstance(doc, dict) else None


@dataclasses.dataclass(frozen=True)
class ContextRow:
    """One row of the checkpoint store's interface_context table (JSON documents as text)."""

    interface_id: str
    records: str | None
    ec2: str | None
    seen_at: float
    described_at: float | None
