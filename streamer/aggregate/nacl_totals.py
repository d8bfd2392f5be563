"""The fleet leader's paired NACL return rejects per ENI, bounded like every other per-ENI series.

In a fleet the leader pairs every replica's candidates (store/leader.py) and
exports what it counted as `vpcflow_nacl_return_rejects_total`. Those series
follow a single process's rules (aggregate/state.py): a sticky cap of
`max_interfaces` ENIs (members keep their series; newcomers beyond it count
under interface_id="other", which only grows) and ENIs with nothing new for
`interface_idle_seconds` of the leader's wall clock are forgotten (their
series disappear, never decrease). So ENI churn over weeks costs the leader
what its active ENIs cost, in memory, on /metrics and in the snapshot it
commits.

The membership is the leader's own: the ENIs it counted rejects for, each
with the time it was last counted. The replicas' memberships are per replica
and count records, not pairs; this one needs nothing from them, and it is in
the snapshot with the counts, so a new leader carries on with it.
"""

from __future__ import annotations

import dataclasses

import orjson

from streamer.aggregate.pairing import Paired
from streamer.aggregate.state import OTHER_INTERFACE

#: the snapshot the leader commits them in (with its pairing state)
TOTALS_SNAPSHOT = "pairing.totals"


@dataclasses.dataclass
class Totals:
    """Rejects the fleet's leader paired: counts and an example per member ENI, "other" beyond the cap."""

    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    examples: dict[str, str] = dataclasses.field(default_factory=dict)
    #: member ENI -> the leader's wall time it was last counted ("other" is never a member)
    seen: dict[str, float] = dataclasses.field(default_factory=dict)
    #: restored from a snapshot without membership: the next commit rewrites it, so the stamps stick
    stale: bool = dataclasses.field(default=False, compare=False)

    def copy(self) -> Totals:
        return Totals(dict(self.counts), dict(self.examples), dict(self.seen), self.stale)

    def add(self, paired: Paired, limit: int | None, now: float) -> bool:
        """Count `paired`: members and, busiest first, newcomers while slots are free (`limit` None: no cap)
        under their own ENI, stamped `now`; the rest under "other". True if anything was counted."""
        if not paired.counts:
            return False
        free = len(paired.counts) if limit is None else max(0, limit - len(self.seen))
        for eni in sorted(paired.counts, key=lambda e: (-paired.counts[e], e)):
            n = paired.counts[eni]
            member = eni in self.seen
            if eni != OTHER_INTERFACE and (member or free > 0):
                if not member:
                    free -= 1
                self.seen[eni] = now
                if eni in paired.examples:
                    self.examples.setdefault(eni, paired.examples[eni])
            else:
                eni = OTHER_INTERFACE
            self.counts[eni] = self.counts.get(eni, 0) + n
        return True

    def forget_idle(self, now: float, idle_seconds: float) -> list[str]:
        """Forget members with nothing counted for `idle_seconds` (their series go, their slots free)."""
        gone = sorted(eni for eni, at in self.seen.items() if now - at >= idle_seconds)
        for eni in gone:
            del self.seen[eni]
            self.counts.pop(eni, None)
            self.examples.pop(eni, None)
        return gone

    def snapshot(self) -> bytes:
        return orjson.dumps({"counts": self.counts, "examples": self.examples, "seen": self.seen})

    @classmethod
    def restore(cls, blob: bytes, now: float) -> Totals:
        """From `snapshot`; one written before the cap (no "seen": a rolling upgrade) makes every ENI in it
        a member seen `now`, so each keeps its series until idle."""
        doc = orjson.loads(blob)
        counts = {str(k): int(v) for k, v in doc["counts"].items()}
        seen = doc.get("seen")
        stale = seen is None
        if seen is None:
            seen = dict.fromkeys((eni for eni in counts if eni != OTHER_INTERFACE), now)
        return cls(counts, dict(doc["examples"]), {str(k): float(v) for k, v in seen.items()}, stale)
