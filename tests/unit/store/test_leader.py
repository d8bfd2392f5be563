"""The leader's slice over pairing candidates: its totals are capped, forgotten when idle, and their
snapshot is written only by a slice that counted or forgot something (the database side is in
tests/integration/test_fleet_nacl_totals.py)."""

from __future__ import annotations

import orjson

from streamer.aggregate.anomaly import Settings
from streamer.aggregate.detection import Detection
from streamer.aggregate.nacl_totals import TOTALS_SNAPSHOT, Totals
from streamer.aggregate.pairing import META, PARTIAL_SOURCE, Pairing, encode_candidates
from streamer.aggregate.state import OTHER_INTERFACE
from streamer.store.leader import _apply, _Pairs
from streamer.synth import InsightCase
from tests.unit.aggregate.test_pairing import LATENESS, W, delta, reply, request


def pairs_of(counts: dict[str, int], at: int = W, requests_only: bool = False) -> bytes:
    """One replica's input as the leader gets it: `counts[eni]` rejected replies to one accepted request each."""
    cases: list[InsightCase] = []
    for eni, n in counts.items():
        for k in range(n):
            cases.append(request(at, 50000 + k, eni))
            if not requests_only:
                cases.append(reply(at + 1, 50000 + k, eni))
    d = delta(cases)
    assert d.pairs is not None
    return encode_candidates(d.pairs)


def slice_of(pairs: _Pairs, bodies: list[bytes], now: float) -> dict[str, bytes]:
    """One leader slice: the partials through `_apply`, then what it would commit."""
    detection = Detection.create(Settings(window_seconds=60), LATENESS)
    _apply(detection, [(i, PARTIAL_SOURCE, b) for i, b in enumerate(bodies)], now, pairs)
    return pairs.snapshots()


def test_a_slice_caps_the_totals_and_writes_them_only_when_it_counted_or_forgot_something() -> None:
    pairing, totals = Pairing(LATENESS), Totals()
    step = _Pairs(pairing, totals, max_interfaces=2, idle_seconds=100)
    written = slice_of(step, [pairs_of({"eni-a": 3, "eni-b": 2}), pairs_of({"eni-c": 1})], now=1000.0)
    assert step.totals is not None
    assert step.pairing is not None
    assert orjson.loads(written[TOTALS_SNAPSHOT])["counts"] == {"eni-a": 3, "eni-b": 2, OTHER_INTERFACE: 1}
    assert totals == Totals()  # the leader's own copy moves only when the slice is committed
    pairing, totals = step.pairing, step.totals

    step = _Pairs(pairing, totals, 2, 100)
    written = slice_of(step, [pairs_of({"eni-d": 2}, requests_only=True)], now=1050.0)  # paired nothing
    assert TOTALS_SNAPSHOT not in written
    assert META in written
    step = _Pairs(step.pairing, step.totals, 2, 100)
    assert slice_of(step, [], now=1099.0) == {}  # nothing taken, nobody idle: nothing written

    step = _Pairs(step.pairing, step.totals, 2, 100)
    written = slice_of(step, [], now=1100.0)  # nothing taken, but a and b are idle now
    assert orjson.loads(written[TOTALS_SNAPSHOT]) == {"counts": {OTHER_INTERFACE: 1}, "examples": {}, "seen": {}}


def test_the_first_slice_after_restoring_a_snapshot_without_membership_rewrites_it() -> None:
    old = orjson.dumps({"counts": {"eni-a": 3}, "examples": {"eni-a": "x"}})
    step = _Pairs(Pairing(LATENESS), Totals.restore(old, now=10.0), 2, 100)
    written = slice_of(step, [], now=20.0)
    assert orjson.loads(written[TOTALS_SNAPSHOT]) == {"counts": {"eni-a": 3}, "examples": {"eni-a": "x"}, "seen": {"eni-a": 10.0}}
    assert step.totals is not None
    assert not step.totals.stale
    assert slice_of(_Pairs(step.pairing, step.totals, 2, 100), [], now=30.0) == {}


def test_a_slice_counts_the_waiting_replies_its_pairing_dropped() -> None:
    """The leader pairs every replica's candidates under the same cap per window; what it drops reaches the
    metric through `LeaderDetector.on_replies_dropped` once the slice is committed."""
    unanswered = delta([reply(W + 1, 50000 + k) for k in range(5)])
    assert unanswered.pairs is not None
    step = _Pairs(Pairing(LATENESS, max_waiting_replies=2), Totals(), 2, 100)
    slice_of(step, [encode_candidates(unanswered.pairs)] * 2, now=1000.0)
    assert step.dropped == 3 + 3  # each input: three find no room (the second input's other two count up their rows)
    assert step.pairing is not None
    assert sorted(step.pairing.replies[W].column("n").to_pylist()) == [2, 2]


def test_a_new_leader_sends_an_alert_with_the_labels_it_was_first_sent_with() -> None:
    from streamer.aggregate.anomaly import Anomaly
    from streamer.export.alerts import ActiveAlert
    from streamer.store.leader import _decode_alerts, _encode_alerts

    found = Anomaly("eni-a", "vpc-1", None, 0, 60, 400, 400, 16000, 3, 10.0, 3.2, 121.9, [("192.0.2.1", 390)], [("22", 400)])
    sent = {"eni-a": ActiveAlert(found, 1.0, 2.0, 3, {"name": "web-1", "instance_id": "i-1"})}
    assert _decode_alerts(_encode_alerts(sent)) == sent
