"""The sticky per-interface cap: members keep their series, "other" only grows, idle members go."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamer.aggregate import insights as ins
from streamer.aggregate.counters import Counters, count_batch
from streamer.aggregate.state import LOG_STATUS, OTHER_INTERFACE, FlowState
from streamer.export.metrics import FlowCollector, InsightsCollector
from streamer.store.base import Commit
from streamer.store.sqlite import CheckpointStore


def delta(counts: dict[str, int]) -> FlowState:
    enis = [eni for eni, n in counts.items() for _ in range(n)]
    table = pa.table(
        {
            "interface-id": enis,
            "action": ["REJECT"] * len(enis),
            "log-status": ["OK"] * len(enis),
            "packets": [1] * len(enis),
            "bytes": [40] * len(enis),
        }
    )
    return FlowState(Counters(count_batch(table)))


def records(registry: CollectorRegistry) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == "vpcflow_records_total":
                out[s.labels["interface_id"]] = s.value
    return out


def test_no_exported_counter_ever_decreases_while_traffic_shifts() -> None:
    """Under the old per-scrape re-ranking, "other" fell whenever a tail ENI overtook a member."""
    state = FlowState()
    registry = CollectorRegistry()
    registry.register(FlowCollector(lambda: state, max_interfaces=3))
    seen: dict[str, float] = {}
    rounds = [
        {"eni-a": 5, "eni-b": 4, "eni-c": 3, "eni-d": 1, "eni-e": 1},
        {"eni-d": 50, "eni-e": 40},  # the tail becomes the busiest: no re-ranking
        {"eni-f": 100, "eni-a": 1},
        {"eni-d": 7, "eni-b": 1},
    ]
    for i, counts in enumerate(rounds):
        state.apply(state.admit(delta(counts), 3, now=float(i)))
        now = records(registry)
        for eni, value in seen.items():
            assert now.get(eni, value) >= value, (eni, seen, now)
        seen.update(now)
    assert set(now) == {"eni-a", "eni-b", "eni-c", OTHER_INTERFACE}
    assert now[OTHER_INTERFACE] == 1 + 1 + 50 + 40 + 100 + 7
    assert sum(now.values()) == sum(sum(r.values()) for r in rounds)


def test_idle_members_are_forgotten_and_free_their_slot() -> None:
    state = FlowState()
    state.apply(state.admit(delta({"eni-a": 2, "eni-b": 1}), 2, now=0.0))
    state.apply(state.admit(delta({"eni-b": 1}), 2, now=50.0))
    assert state.idle(now=100.0, idle_seconds=60) == ["eni-a"]
    state.forget(state.idle(now=100.0, idle_seconds=60))
    state.apply(state.admit(delta({"eni-c": 3}), 2, now=100.0))
    assert set(state.counters.by_interface()) == {"eni-b", "eni-c"}
    assert set(state.seen) == {"eni-b", "eni-c"}


def test_membership_and_last_seen_survive_a_restart(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "state.db")
    live = FlowState()
    first = live.admit(delta({"eni-a": 2, "eni-b": 1, "eni-c": 1}), 2, now=10.0)
    assert store.commit(Commit(first))
    live.apply(first)
    second, forget = live.capped(delta({"eni-b": 1}), 2, idle_seconds=5, now=20.0)
    assert forget == ["eni-a"]  # idle, while eni-b is idle too but counted again now
    assert store.commit(Commit(second, forget=forget))
    live.forget(forget)
    live.apply(second)
    store.close()
    again = CheckpointStore(tmp_path / "state.db").load_state()
    assert again.seen == {"eni-b": 20.0}
    assert again.counters.table().sort_by("interface_id").equals(live.counters.table().sort_by("interface_id"))
    assert set(again.counters.by_interface()) == {"eni-b", OTHER_INTERFACE}


def exposition(state: FlowState) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(FlowCollector(lambda: state))
    registry.register(InsightsCollector(lambda: state, 0.045, nacl_pairing=True))
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def mixed(eni: str, statuses: list[str], vpc: str) -> FlowState:
    """A delta with per-ENI counters and insights, per-VPC insights, and skipped lines."""
    n = len(statuses)
    table = pa.table(
        {"interface-id": [eni] * n, "action": ["ACCEPT"] * n, "log-status": statuses, "packets": [1] * n, "bytes": [9] * n}
    )
    found = pa.Table.from_pylist(
        [
            {"kind": ins.NACL, "key1": eni, "key2": "", "records": 2, "bytes": 0},
            {"kind": ins.IPV6, "key1": eni, "key2": "REJECT", "records": 1, "bytes": 0},
            {"kind": ins.GATEWAY, "key1": vpc, "key2": "S3", "records": 3, "bytes": 300},
            {"kind": ins.PATHS, "key1": vpc, "key2": "internet_gateway", "records": 3, "bytes": 300},
        ],
        ins.SCHEMA,
    )
    return FlowState(Counters(count_batch(table)), {"wrong_field_count": 1}, insights=found)


def test_forgetting_an_interface_leaves_every_label_less_total_unchanged() -> None:
    """The issue's case: NODATA fell from 17 to 12 when idle interfaces' rows went."""
    state = FlowState()
    state.apply(state.admit(mixed("eni-a", ["OK", "NODATA", "NODATA"], "vpc-1"), 10, now=0.0))
    state.apply(state.admit(mixed("eni-b", ["OK", "SKIPDATA"], "vpc-1"), 10, now=50.0))
    before = exposition(state)
    gone = state.idle(now=100.0, idle_seconds=60)
    assert gone == ["eni-a"]
    state.forget(gone)
    after = exposition(state)
    per_eni = {key for key in before if dict(key[1]).get("interface_id") == "eni-a"}
    assert per_eni
    assert not per_eni & set(after)  # the forgotten interface's series are gone
    assert {key: v for key, v in before.items() if key not in per_eni} == after  # and nothing else changed
    assert after[("vpcflow_log_status_total", (("log_status", "NODATA"),))] == 2
    assert after[("vpcflow_log_status_total", (("log_status", "OK"),))] == 2
    assert after[("streamer_decode_errors_total", (("reason", "wrong_field_count"),))] == 2
    assert after[("vpcflow_gateway_endpoint_candidate_records_total", (("service", "S3"), ("vpc_id", "vpc-1")))] == 6


def test_label_less_totals_survive_forgetting_and_a_restart(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "state.db")
    live = FlowState()
    for now, (eni, statuses) in enumerate([("eni-a", ["OK", "NODATA"]), ("eni-b", ["OK"])]):
        change, forget = live.capped(mixed(eni, statuses, "vpc-1"), 10, idle_seconds=0.5, now=float(now))
        assert store.commit(Commit(change, forget=forget))
        live.forget(forget)
        live.apply(change)
    store.close()
    again = CheckpointStore(tmp_path / "state.db").load_state()
    assert set(again.seen) == {"eni-b"}
    assert again.totals == live.totals == {(LOG_STATUS, "OK"): 2, (LOG_STATUS, "NODATA"): 1}
    assert exposition(again) == exposition(live)
