"""The enricher without EC2: the records' context is folded off the hot path, written to the real SQLite
cache, read back after a restart, and forgotten with the ENI's series."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from prometheus_client import CollectorRegistry

from streamer.aggregate.context import ContextBook
from streamer.enrich import Enricher
from streamer.store.sqlite import CheckpointStore


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


def enricher(store: CheckpointStore, seen: dict[str, float], now: list[float], idle_seconds: float = 100) -> Enricher:
    return Enricher(
        ContextBook(),
        store,
        _call,
        CollectorRegistry(),
        config=None,
        client_for=None,
        default_region="us-east-1",
        active=lambda: seen,
        idle_seconds=idle_seconds,
        clock=lambda: now[0],
    )


def part(eni: str, **fields: str) -> pa.Table:
    return pa.table({"interface_id": [eni], **{k: [v] for k, v in fields.items()}})


async def test_records_context_is_cached_read_back_and_forgotten(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "state.db")
    now = [1000.0]
    seen = {"eni-a": 1000.0, "eni-b": 1000.0, "other": 1000.0}
    e = enricher(store, seen, now)
    e.observe([part("eni-a", vpc_id="vpc-1", instance_id="i-1"), part("eni-b", vpc_id="vpc-1")])
    e.observe([part("eni-a", az="use1-az1")])
    assert e.book.get("eni-a") is None  # nothing on the caller's path: folded on the enricher's own step
    await e.step()
    known = e.book.get("eni-a")
    assert known is not None
    assert (known.vpc_id, known.instance_id, known.az) == ("vpc-1", "i-1", "use1-az1")
    assert {r.interface_id for r in store.contexts()} == {"eni-a", "eni-b"}  # never "other"

    again = enricher(store, {}, now)  # a restart
    await again.load()
    restored = again.book.get("eni-a")
    assert restored is not None
    assert restored.instance_id == "i-1"

    now[0] = 1050.0
    seen["eni-a"] = 1050.0  # eni-a counted again; eni-b idle since 1000
    e.idle_seconds = 50
    await e.step()
    assert e.book.get("eni-b") is None
    assert e.book.get("eni-a") is not None
    now[0] = 1000.0 + 50 + 600  # past the idle time plus the margin for the table's sparse last-seen writes
    seen["eni-a"] = now[0]
    e._forgot = float("-inf")  # the hourly clean-up of the table, now
    await e.step()
    assert {r.interface_id for r in store.contexts()} == {"eni-a"}
    store.close()


async def test_enis_beyond_the_cap_get_no_context_and_a_late_member_still_does(tmp_path: Path) -> None:
    """Context comes from the decode, before capping: only ENIs with their own series keep it (memory, rows
    and describes stay bounded by the cap); an ENI whose commit lands a step after its context still gets it."""
    store = CheckpointStore(tmp_path / "state.db")
    now = [1000.0]
    seen: dict[str, float] = {"eni-member": 1000.0}
    e = enricher(store, seen, now)
    e.observe([part("eni-member", vpc_id="vpc-1"), part("eni-capped", vpc_id="vpc-1"), part("eni-late", vpc_id="vpc-2")])
    await e.step()
    seen["eni-late"] = 1000.0  # its input committed after the first step
    await e.step()
    await e.step()
    assert e.book.get("eni-member") is not None
    late = e.book.get("eni-late")
    assert late is not None
    assert late.vpc_id == "vpc-2"
    assert e.book.get("eni-capped") is None
    assert "eni-capped" not in e.book.known()
    assert {r.interface_id for r in store.contexts()} == {"eni-member", "eni-late"}
    store.close()
