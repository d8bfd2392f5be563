"""Everything the pipeline has counted: what checkpoints save and export reads.

The live service bounds per-ENI series with a *sticky* cap: an interface that
has its own counters keeps them, and once `max_interfaces` interfaces are
held, newcomers are counted under `interface_id="other"` (`admit`). So no
exported counter ever goes down: "other" only grows, and nobody is re-ranked
in or out of it between scrapes. Interfaces with nothing new for
`interface_idle_seconds` (wall clock) are forgotten (`idle`), freeing their
slot; their series disappear rather than decrease. Membership and last-seen
times are committed with the counters, so a restart keeps them.

Totals that are not per interface (records by log-status, skipped lines by
reason, per-VPC insights) are kept apart from the per-interface rows, in
`totals`, `decode_errors` and the insight kinds outside `ENI_KINDS`:
forgetting an interface removes its own series and changes nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from streamer.aggregate import insights as ins
from streamer.aggregate.counters import Counters, combine
from streamer.aggregate.pairing import Candidates, Pairing, Pieces
from streamer.decode.errors import ErrorCounts

OTHER_INTERFACE = "other"
#: `totals` key name: records by log-status (exported as vpcflow_log_status_total)
LOG_STATUS = "log_status"


@dataclasses.dataclass
class FlowState:
    """Per-ENI counters plus skipped-line counts by reason."""

    counters: Counters = dataclasses.field(default_factory=Counters)
    decode_errors: dict[str, int] = dataclasses.field(default_factory=dict)
    #: interface -> wall time it was last counted (the cap's members; empty when uncapped)
    seen: dict[str, float] = dataclasses.field(default_factory=dict)
    #: network insight sums (aggregate/insights.py), and an example record per ENI for reports
    insights: pa.Table = dataclasses.field(default_factory=ins.SCHEMA.empty_table)
    insight_examples: dict[str, str] = dataclasses.field(default_factory=dict)
    #: (name, label value) -> count: totals that are not per interface, so forgetting one never lowers them.
    #: Left empty, derived from `counters` (a delta, or a state built from counters alone).
    totals: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    #: a delta's NACL pairing candidates, consumed by `pair_with`; never applied or stored
    pairs: Candidates | None = dataclasses.field(default=None, compare=False)
    #: a delta's unpaired replies its pairing could not keep waiting (`Paired.dropped`): a metric, never stored
    replies_dropped: int = dataclasses.field(default=0, compare=False)
    #: a delta's record-context tables (aggregate/context.py), handed to the enricher; never applied or stored
    context: list[pa.Table] | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.totals:
            self.totals = status_totals(self.counters)

    def apply(self, delta: FlowState) -> None:
        """Add the effect of one object (a delta built the same way)."""
        self.counters.merge(delta.counters)
        for key, n in delta.totals.items():
            self.totals[key] = self.totals.get(key, 0) + n
        for reason, count in delta.decode_errors.items():
            self.count(reason, count)
        self.seen.update(delta.seen)
        if delta.insights.num_rows:
            self.insights = ins.fold([self.insights, delta.insights])
        ins.merge_examples(self.insight_examples, delta.insight_examples)

    def pair_with(self, state: Pairing) -> tuple[Pairing, Pieces]:
        """Pair this delta's candidates with `state`: its NACL counts and examples are added here; returns the
        pairing state after it and the snapshot pieces to commit with it."""
        if self.pairs is None:
            return state, Pieces()
        after, paired, pieces = state.pair(self.pairs)
        self.insights = ins.add_pairs(self.insights, self.insight_examples, paired)
        self.pairs = None
        self.replies_dropped = paired.dropped
        return after, pieces

    def add_errors(self, errors: ErrorCounts) -> None:
        for reason, count in errors.counts.items():
            self.count(reason, count)

    def count(self, reason: str, n: int = 1) -> None:
        """Count `n` skipped lines or objects under `reason`."""
        self.decode_errors[reason] = self.decode_errors.get(reason, 0) + n

    # --- the sticky per-interface cap ------------------------------------------------------------

    def admit(self, delta: FlowState, limit: int, now: float) -> FlowState:
        """`delta` with interfaces beyond the cap relabelled "other", and its members stamped `now`.

        Members stay members; newcomers take free slots, busiest first. Works on
        the delta's few rows per interface, never per record.
        """
        table = delta.counters.table()
        if not table.num_rows:
            return delta
        totals = table.group_by(["interface_id"], use_threads=False).aggregate([("records", "sum")])
        ranked = totals.sort_by([("records_sum", "descending"), ("interface_id", "ascending")]).column("interface_id")
        free = max(0, limit - len(self.seen))
        keep: list[str] = []
        for eni in ranked.to_pylist():  # distinct interfaces of one input
            if eni == OTHER_INTERFACE:
                continue
            if eni in self.seen:
                keep.append(eni)
            elif free > 0:
                keep.append(eni)
                free -= 1
        insights = delta.insights
        if len(keep) < len(ranked):
            kept = pc.is_in(table.column("interface_id"), pa.array(keep, pa.string()))
            relabeled = pc.if_else(kept, table.column("interface_id"), pa.scalar(OTHER_INTERFACE))
            table = combine([table.set_column(0, "interface_id", relabeled)])
            insights = _relabel_insights(insights, keep)
        examples = {eni: text for eni, text in delta.insight_examples.items() if eni in keep}
        admitted = FlowState(
            Counters(table), dict(delta.decode_errors), dict.fromkeys(keep, now), insights, examples, dict(delta.totals)
        )
        admitted.replies_dropped = delta.replies_dropped
        return admitted

    def capped(self, delta: FlowState, limit: int, idle_seconds: float, now: float) -> tuple[FlowState, list[str]]:
        """`delta` admitted under the cap, and the idle members to forget with it (none it touches)."""
        admitted = self.admit(delta, limit, now)
        return admitted, [eni for eni in self.idle(now, idle_seconds) if eni not in admitted.seen]

    def idle(self, now: float, idle_seconds: float) -> list[str]:
        """Members with nothing new for `idle_seconds`: to be forgotten."""
        return sorted(eni for eni, at in self.seen.items() if now - at >= idle_seconds)

    def forget(self, interfaces: Iterable[str]) -> None:
        """Drop interfaces' counters, membership and per-ENI insights (their series disappear); totals stay."""
        gone = list(interfaces)
        if not gone:
            return
        for eni in gone:
            self.seen.pop(eni, None)
        table = self.counters.table()
        self.counters = Counters(table.filter(pc.invert(pc.is_in(table.column("interface_id"), pa.array(gone, pa.string())))))
        eni_rows = pc.and_(
            pc.is_in(self.insights.column("kind"), pa.array(ins.ENI_KINDS)),
            pc.is_in(self.insights.column("key1"), pa.array(gone, pa.string())),
        )
        self.insights = self.insights.filter(pc.invert(eni_rows))
        for eni in gone:
            self.insight_examples.pop(eni, None)


def status_totals(counters: Counters) -> dict[tuple[str, str], int]:
    """Records by log-status, as `totals` keys."""
    return {(LOG_STATUS, status): n for status, n in counters.by_log_status().items()}


def _relabel_insights(table: pa.Table, keep: list[str]) -> pa.Table:
    """Per-ENI insight rows of interfaces beyond the cap go to "other", like their counters."""
    if not table.num_rows:
        return table
    folded = pc.and_(
        pc.is_in(table.column("kind"), pa.array(ins.ENI_KINDS)),
        pc.invert(pc.is_in(table.column("key1"), pa.array(keep, pa.string()))),
    )
    relabeled = pc.if_else(folded, pa.scalar(OTHER_INTERFACE), table.column("key1"))
    return ins.fold([table.set_column(1, "key1", relabeled)])
