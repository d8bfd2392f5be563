"""What `replay` prints: a table for people, one JSON object, or NDJSON records."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson
import pyarrow as pa

from streamer.aggregate.state import FlowState

if TYPE_CHECKING:  # a replay without --alerts never loads the detector
    from streamer.aggregate.anomaly import Anomaly

ACTIONS = ("ACCEPT", "REJECT")


def summary(state: FlowState) -> dict[str, Any]:
    """The `--output json` document."""
    interfaces = {
        eni: {action: totals for action, totals in sorted(actions.items()) if action in ACTIONS}
        for eni, actions in sorted(state.counters.by_interface().items())
    }
    return {
        "records": state.counters.total_records(ACTIONS),
        "interfaces": interfaces,
        "log_status": dict(sorted(state.counters.by_log_status().items())),
        "errors": dict(sorted(state.decode_errors.items())),
    }


def render_table(doc: dict[str, Any], limit: int = 50) -> str:
    """Per-interface table, most rejected first."""
    rows = []
    for eni, actions in doc["interfaces"].items():
        acc = actions.get("ACCEPT", {})
        rej = actions.get("REJECT", {})
        rows.append(
            (
                eni,
                acc.get("records", 0),
                rej.get("records", 0),
                acc.get("packets", 0) + rej.get("packets", 0),
                acc.get("bytes", 0) + rej.get("bytes", 0),
            )
        )
    rows.sort(key=lambda r: (-r[2], -r[1], r[0]))
    head = ("interface", "accepted", "rejected", "packets", "bytes")
    shown = [head] + [tuple(str(v) if isinstance(v, str) else f"{v:,}" for v in r) for r in rows[:limit]]
    widths = [max(len(r[i]) for r in shown) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in shown
    ]
    if len(rows) > limit:
        lines.append(f"… {len(rows) - limit} more interfaces (use --output json for all)")
    lines.append("")
    lines.append(f"records (ACCEPT+REJECT): {doc['records']:,}   interfaces: {len(rows):,}")
    lines.append("log status: " + (", ".join(f"{k} {v:,}" for k, v in doc["log_status"].items()) or "none"))
    lines.append("skipped: " + (", ".join(f"{k} {v:,}" for k, v in doc["errors"].items()) or "none"))
    return "\n".join(lines) + "\n"


def write_records(table: pa.Table, out: BinaryIO) -> None:
    """Decoded records as NDJSON keyed by AWS field name, `-` as null (inspection only)."""
    out.write(b"".join(orjson.dumps(row) + b"\n" for row in table.to_pylist()))


def render_alerts(anomalies: list[Anomaly]) -> str:
    """Anomalies for people: one paragraph each, oldest first."""
    if not anomalies:
        return "\nno rejected-traffic spikes found\n"
    lines = [f"\n{len(anomalies)} rejected-traffic spike(s):"]
    for a in anomalies:
        start = dt.datetime.fromtimestamp(a.window_start, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        where = " ".join(x for x in (a.vpc_id, a.subnet_id) if x)
        lines.append(
            f"  {start}Z +{a.window_end - a.window_start}s  {a.interface_id} {where}".rstrip()
            + f"\n      {a.rejected_records:,} rejected records vs baseline {a.baseline:.1f} (score {a.score:.1f})"
            + f"\n      top sources: {', '.join(f'{x} ({n})' for x, n in a.top_sources) or '-'}"
            + f"\n      top ports:   {', '.join(f'{x} ({n})' for x, n in a.top_ports) or '-'}"
        )
    return "\n".join(lines) + "\n"
