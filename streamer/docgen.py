"""The generated references: every config key from the pydantic models, every metric from the registry.

    python -m streamer.docgen            # rewrite docs/reference/config.md and docs/reference/metrics.md
    python -m streamer.docgen --check    # exit 1, naming the file, when either differs from the code

Written from the code so that the docs cannot drift from it: tests run the check. The metrics come from
the registry of a real one-process service that docgen starts on 127.0.0.1 for a moment (so a collector
service.py registers is documented without more work), plus what only a fleet replica registers. A key's one line of
meaning is its `Field(description=...)`, else the `#:` comment above it; a key with neither, or a metric
label that `LABEL_BOUNDS` does not explain, stops the generation with one line saying what to add.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import re
import sys
import tempfile
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DOC = ROOT / "docs" / "reference" / "config.md"
METRICS_DOC = ROOT / "docs" / "reference" / "metrics.md"
COMMAND = "python -m streamer.docgen"

#: what bounds each label's values; `metric:label` overrides `label` for one metric (metric without _total)
LABEL_BOUNDS: dict[str, str] = {
    "interface_id": "`metrics.max_interfaces` ENIs plus `other` (sticky cap; an ENI idle for "
    "`metrics.interface_idle_seconds` is forgotten)",
    "vpcflow_reject_anomaly_score:interface_id": "ENIs with their own counter series (at most `metrics.max_interfaces`)",
    "action": "`ACCEPT`, `REJECT`, `-` (NODATA/SKIPDATA rows)",
    "vpcflow_ipv6_internet_inbound_records:action": "`ACCEPT`, `REJECT`",
    "log_status": "`OK`, `NODATA`, `SKIPDATA`",
    "reason": "the fixed decode reasons (`streamer/decode/errors.py`: `wrong_field_count`, `invalid_number`, "
    "`invalid_utf8`, `invalid_json`, `invalid_payload`, `record_too_large`, `corrupt_gzip`, `truncated`, "
    "`unknown_format`, `unsupported_column`, `decode_failed`, …)",
    "streamer_source_errors:reason": "AWS error codes, `crashed`, else the exception's type name (cut to 64 characters)",
    "source": "one per configured source (`sources[].name`)",
    "streamer_watermark_timestamp_seconds:source": "one per configured source, plus `all`",
    "outcome": "`ok`, `failed`, `duplicate`, `lease_lost`, `read_error`",
    "vpc_id": "the VPCs in the flow logs (not capped)",
    "subnet_id": "the subnets in the flow logs (not capped), `-` when unknown",
    "service": "`S3`, `DYNAMODB`",
    "path": "the eight traffic paths (`same_vpc` … `internet_gateway`)",
    "shard": "the stream's shards being read (a reshard's parents until drained)",
    "state": "`waiting`, `held`",
    "kind": "`kinesis_shard`, `s3_partition`, `cloudwatch`, `leader`",
    "name": "one per Kinesis shard, `fleet.s3_partitions` S3 partitions, one CloudWatch poller, one leader",
    "target": "`alertmanager`, `webhook`",
    "result": "`ok`, `error`",
    # Labels of features landing beside this one (unknown fields, ENI context): ready for their metrics.
    "field": "32 field names, then `other` (names cut to 64 characters)",
    "call": "the EC2 API calls made (`DescribeNetworkInterfaces`, `DescribeTags`)",
    "origin": "`records`, `ec2`",
    "streamer_enrich_errors:reason": "`throttled`, `access_denied`, `assume_role`, `unreachable`, `error`",
}
#: metrics whose series are bounded as a whole rather than label by label (an `_info` metric: one series per ENI)
METRIC_BOUNDS: dict[str, str] = {
    "vpcflow_interface_info": "one series per ENI with its own counter series (at most `metrics.max_interfaces`); "
    "the other labels describe that ENI",
}

# --- config ------------------------------------------------------------------------------------------


def _comment(model: type[BaseModel], name: str) -> str | None:
    """The `#:` comment lines right above `name:` in the class that declares it."""
    owner = next((c for c in model.__mro__ if name in inspect.get_annotations(c)), model)
    lines = inspect.getsource(owner).splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"\s+{name}\s*:", line):
            found = []
            for above in reversed(lines[:i]):
                if not above.strip().startswith("#:"):
                    break
                found.append(above.strip()[2:].strip())
            return " ".join(reversed(found)) or None
    return None


def _meaning(model: type[BaseModel], name: str, info: FieldInfo) -> str:
    text = info.description or _comment(model, name)
    if text is None and name == "type" and get_origin(info.annotation) is Literal:
        text = "selects this kind of source"
    if text is None:
        raise SystemExit(
            f"{model.__module__}.{model.__name__}.{name}: no description; add a `#:` comment above it "
            f"(or Field(description=...)), then run {COMMAND}"
        )
    return text


def _type(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " or ".join(f"`{json.dumps(a)}`" for a in args)
    if origin in (Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        text = " or ".join(_type(a) for a in kept)
        return f"{text}, optional" if len(kept) < len(args) else text
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"mapping of {_type(args[0])} to {_type(args[1])}"
    if _model(annotation) is not None:
        return "section (keys below)"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path", SecretStr: "secret string"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


_SIGNS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "length ≥"), ("max_length", "length ≤"))


def _bounds(info: FieldInfo) -> str:
    found = []
    for item in info.metadata:
        for attr, sign in _SIGNS:
            value = getattr(item, attr, None)
            if value is not None:
                found.append(f"{sign} {value}")
    return f" ({', '.join(found)})" if found else ""


def _default(name: str, info: FieldInfo) -> str:
    if info.default_factory in (dict, list):
        return "`{}`" if info.default_factory is dict else "`[]`"
    if info.default_factory is not None:
        return "computed at start"
    value = info.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "as below"
    if isinstance(value, Path):
        value = str(value)
    try:
        text = f"`{json.dumps(value)}`"
    except TypeError:  # a value JSON has no spelling for: as Python prints it
        text = f"`{value}`"
    mib = isinstance(value, int) and not isinstance(value, bool) and value >= 1 << 20 and value % (1 << 20) == 0
    if mib and "bytes" in name:
        text += f" ({value >> 20} MiB)"
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _model(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, itself or optional (`Section | None`), else None."""
    if get_origin(annotation) in (Union, types.UnionType):
        kept = [a for a in get_args(annotation) if a is not type(None)]
        annotation = kept[0] if len(kept) == 1 else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _rows(model: type[BaseModel], key: str, env: str) -> Iterator[str]:
    """One row per key; a key holding a model of its own is a row, then a row per key inside it."""
    for name, info in model.model_fields.items():
        yield (
            f"| `{key}{name}` | {_cell(_type(info.annotation) + _bounds(info))} | {_cell(_default(name, info))} | "
            f"`{env}{name.upper()}` | {_cell(_meaning(model, name, info))} |"
        )
        inner = _model(info.annotation)
        if inner is not None:
            yield from _rows(inner, f"{key}{name}.", f"{env}{name.upper()}__")


def _table(rows: Iterable[str]) -> list[str]:
    return ["| key | type | default | environment variable | meaning |", "|---|---|---|---|---|", *rows, ""]


def config_reference() -> str:
    from streamer.config import ENV_PREFIX, Config
    from streamer.sources.registry import SourceConfig

    out = [
        "# Configuration keys",
        "",
        f"<!-- Generated by `{COMMAND}` from streamer/config.py, streamer/settings.py and the source models in",
        "     streamer/sources/. Do not edit: change the code's `#:` comment or Field(description=...) and regenerate. -->",
        "",
        "Every key streamer reads, from the code. A YAML file gives them (`streamer run -c FILE`;",
        "`streamer check-config -c FILE` checks one); an unknown or bad key fails at start with one line",
        "naming it. Environment variables override any key: `STREAMER__` then the path in capitals, double",
        "underscores between levels, list items by index (`STREAMER__SOURCES__0__BUCKET`). Their values stay",
        "strings and are converted only where the key is a number or a flag. See",
        "[Configuration](../configuration.md).",
        "",
    ]
    sections: list[tuple[str, type[BaseModel]]] = []
    top: list[str] = []
    for name, info in Config.model_fields.items():
        ann = info.annotation
        section = _model(ann)
        if section is not None:
            sections.append((name, section))
        elif name != "sources":
            top.append(
                f"| `{name}` | {_cell(_type(ann) + _bounds(info))} | {_cell(_default(name, info))} | "
                f"`{ENV_PREFIX}{name.upper()}` | {_cell(_meaning(Config, name, info))} |"
            )
    if top:
        out += ["## Top level {#top-level}", "", *_table(top)]
    for name, model in sections:
        out += [f"## `{name}` {{#{name}}}", ""]
        if Config.model_fields[name].default is None:
            out += ["Optional: the feature is off unless this section is given.", ""]
        if model.__doc__ and not model.__doc__.startswith(model.__name__ + "("):
            out += [" ".join(model.__doc__.split()), ""]
        out += _table(_rows(model, f"{name}.", f"{ENV_PREFIX}{name.upper()}__"))
    out += [
        "## `sources` {#sources}",
        "",
        "A list with at least one entry; `type` selects the kind, and each kind has its own keys",
        "([Sources](../sources/index.md)). `N` in the variable is the entry's index.",
        "",
    ]
    for model in get_args(get_args(SourceConfig)[0]):
        kind = get_args(model.model_fields["type"].annotation)[0]
        out += [f"### `type: {kind}` {{#type-{kind}}}", ""]
        out += _table(_rows(model, "sources[].", f"{ENV_PREFIX}SOURCES__N__"))
    return "\n".join(out).rstrip() + "\n"


# --- metrics -----------------------------------------------------------------------------------------


class _NoLeases:
    """What LeaseCollector reads of a fleet's coordinator: no lease held."""

    held: frozenset[tuple[str, str]] = frozenset()

    def owns(self, kind: str, name: str) -> bool:
        return False


#: the service docgen starts to read its registry: one process, SQLite, a source that needs no AWS
_SERVICE = {
    "http": {"listen_address": "127.0.0.1:0"},
    "insights": {"nacl_pairing": True},  # every opt-in signal on: the reference lists its metrics too
    "sources": [
        {"type": "firehose_http", "name": "docs", "listen_address": "127.0.0.1:0", "access_key": "docgen-reads-the-registry-only"}
    ],
}


async def _running_service_collectors() -> list[Any]:
    """What the real service registers (service.py wires it; a new collector there is read here too), taken
    while it runs: a one-process service on a temporary checkpoint, stopped at once."""
    from streamer.aws import AwsClients
    from streamer.config import parse_config
    from streamer.service import Service

    with tempfile.TemporaryDirectory(prefix="streamer-docgen-") as tmp:
        service = Service(parse_config({**_SERVICE, "checkpoint": {"path": f"{tmp}/state.db"}}, {}), AwsClients())
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        started = asyncio.create_task(service.started.wait())
        try:
            await asyncio.wait({task, started}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
            if not service.started.is_set():
                raise SystemExit(f"the service did not start for {COMMAND}: {task.exception() if task.done() else 'timeout'}")
            return list(service.registry._collector_to_names)
        finally:
            started.cancel()
            stop.set()
            await asyncio.wait({task}, timeout=30)


class _NoLeader:
    """What LeaderCollector reads of a fleet's leader: nothing set aside."""

    set_aside = 0


def collectors() -> list[Any]:
    """Every collector a replica with every feature on registers: the running service's, plus what only a fleet
    replica adds (its leases)."""
    from streamer.store.leader import LeaderCollector
    from streamer.store.leases import LeaseCollector

    fleet_only = [LeaseCollector(_NoLeases()), LeaderCollector(_NoLeader())]  # type: ignore[arg-type]
    return [*asyncio.run(_running_service_collectors()), *fleet_only]


def families() -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """name -> (type, help, label names) of every metric family, by the name the registry collects it under."""
    from prometheus_client.metrics import MetricWrapperBase

    found: dict[str, tuple[str, str, tuple[str, ...]]] = {}
    for item in collectors():
        if isinstance(item, MetricWrapperBase):
            for family in item.describe():
                found[family.name] = (family.type, family.documentation, tuple(item._labelnames))
        else:
            for family in item.collect():
                labels = getattr(family, "_labelnames", ()) or tuple(dict.fromkeys(k for s in family.samples for k in s.labels))
                found[family.name] = (family.type, family.documentation, tuple(labels))
    return dict(sorted(found.items()))


def exposed(name: str, kind: str) -> str:
    """The name a scrape shows: counters gain `_total`; histograms are `_bucket`, `_sum` and `_count` of it."""
    return f"{name}_total" if kind == "counter" else name


def bound(name: str, labels: tuple[str, ...], kind: str) -> str:
    if name in METRIC_BOUNDS:
        return METRIC_BOUNDS[name]
    parts = []
    for label in labels:
        found = LABEL_BOUNDS.get(f"{name}:{label}") or LABEL_BOUNDS.get(label)
        if found is None:
            raise SystemExit(f"{name}: label {label!r} is not in LABEL_BOUNDS (streamer/docgen.py): add it, then run {COMMAND}")
        parts.append(f"`{label}`: {found}")
    text = "; ".join(parts) or "one series"
    return f"{text}; × the buckets" if kind == "histogram" else text


def metrics_reference() -> str:
    out = [
        "# Metrics",
        "",
        f"<!-- Generated by `{COMMAND}` from the registry of a running streamer (what service.py registers) and",
        "     a fleet replica's lease collector. Do not edit: change the metric's help text, or LABEL_BOUNDS in",
        "     streamer/docgen.py, and regenerate. -->",
        "",
        "Every metric on `/metrics`, from the code: its type, labels, help text, and what bounds the",
        "number of its series. `vpcflow_*` describe the flow logs, `streamer_*` the service. What the",
        "cap and forgetting mean is in [Metrics](../metrics.md).",
        "",
        "| metric | type | labels | help | series bounded by |",
        "|---|---|---|---|---|",
    ]
    for name, (kind, help_text, labels) in families().items():
        label_text = ", ".join(f"`{label}`" for label in labels) or "–"
        out.append(
            f"| `{exposed(name, kind)}` | {kind} | {label_text} | {_cell(help_text)} | {_cell(bound(name, labels, kind))} |"
        )
    return "\n".join(out) + "\n"


# --- command -----------------------------------------------------------------------------------------


def generated() -> dict[Path, str]:
    return {CONFIG_DOC: config_reference(), METRICS_DOC: metrics_reference()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamer.docgen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a reference differs from the code")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated().items():
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.relative_to(ROOT))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{path} differs from the code: run {COMMAND}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
