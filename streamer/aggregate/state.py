"""Everything the pipeline has counted: what checkpoints save and export reads."""

from __future__ import annotations

import dataclasses

from streamer.aggregate.counters import Counters
from streamer.decode.errors import ErrorCounts


@dataclasses.dataclass
class FlowState:
    """Per-ENI counters plus skipped-line counts by reason."""

    counters: Counters = dataclasses.field(default_factory=Counters)
    decode_errors: dict[str, int] = dataclasses.field(default_factory=dict)

    def apply(self, delta: FlowState) -> None:
        """Add the effect of one object (a delta built the same way)."""
        self.counters.merge(delta.counters)
        for reason, count in delta.decode_errors.items():
            self.count(reason, count)

    def add_errors(self, errors: ErrorCounts) -> None:
        for reason, count in errors.counts.items():
            self.count(reason, count)

    def count(self, reason: str, n: int = 1) -> None:
        """Count `n` skipped lines or objects under `reason`."""
        self.decode_errors[reason] = self.decode_errors.get(reason, 0) + n
