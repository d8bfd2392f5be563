"""NACL return rejects on a real process reading S3 (moto): requests and their rejected replies in
different objects, minutes apart in event time and delivered across a kill -9, pair exactly once."""

from __future__ import annotations

import datetime as dt
import gzip
import time
import zlib
from pathlib import Path

import pytest

from streamer.schema import V5_ALL_FIELDS
from streamer.synth import InsightCase, insight_table, to_lines
from tests.integration.conftest import aws_key, boto, scrape
from tests.integration.test_crash_restart import Harness, wait_until
from tests.integration.test_fleet import Replica

pytestmark = pytest.mark.integration

A, B = "eni-0pairs00000000001", "eni-0pairs00000000002"


def body(cases: list[InsightCase]) -> bytes:
    text = " ".join(V5_ALL_FIELDS) + "\n" + "\n".join(to_lines(insight_table(cases)).to_pylist()) + "\n"
    return gzip.compress(text.encode())


def request(eni: str, port: int, at: int) -> InsightCase:
    return InsightCase(eni, "10.0.1.5", "52.94.1.10", port, 443, "ACCEPT", at, direction="egress")


def reply(eni: str, port: int, at: int) -> InsightCase:
    return InsightCase(eni, "52.94.1.10", "10.0.1.5", 443, port, "REJECT", at)


def nacl(port: int) -> dict[str, int]:
    found = scrape(port).get("vpcflow_nacl_return_rejects_total", {})
    return {dict(labels)["interface_id"]: int(v) for labels, v in found.items()}


def test_requests_and_replies_in_objects_minutes_apart_pair_exactly_across_a_kill(aws: str, tmp_path: Path) -> None:
    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="flow-logs")
    now = dt.datetime.now(dt.UTC)
    t0 = int(now.timestamp()) - 1200
    first = [
        request(A, 50001, t0),
        request(A, 50002, t0 + 10),  # their replies come 4 minutes later, in the next object
        reply(B, 50003, t0 + 30),  # this reply comes before its request: it waits
        reply(A, 50009, t0 + 40),  # no request ever: never counted
    ]
    second = [
        reply(A, 50001, t0 + 240),
        reply(A, 50002, t0 + 250),
        reply(A, 50002, t0 + 260),  # two rejected replies: both count
        request(B, 50003, t0 + 20),
    ]
    s3.put_object(Bucket="flow-logs", Key=aws_key(now - dt.timedelta(minutes=5), "daily", n=1), Body=body(first))
    source = {"type": "s3", "bucket": "flow-logs", "endpoint_url": aws, "poll_interval_seconds": 0.2}
    h = Harness(tmp_path, source, extra={"insights": {"nacl_pairing": True}})
    h.kill_when(lambda: h.done_objects() >= 1, "the first object committed")  # kill -9 between the two objects
    s3.put_object(Bucket="flow-logs", Key=aws_key(now, "daily", n=2), Body=body(second))
    proc = h.start()
    try:

        def paired() -> bool:
            try:
                return h.done_objects() >= 2 and nacl(h.port) == {A: 3, B: 1}
            except OSError:
                return False

        wait_until(paired, 60, "exact NACL return rejects on /metrics")
    finally:
        proc.kill()
        proc.wait()
    # and once more after a restart on the same checkpoint: exact, nothing counted twice
    proc = h.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                got = nacl(h.port)
                break
            except OSError:
                assert time.monotonic() < deadline, h.log.read_text()[-2000:]
                time.sleep(0.05)
        assert got == {A: 3, B: 1}
    finally:
        proc.kill()
        proc.wait()
    assert "Traceback" not in h.log.read_text()


def test_a_fleet_pairs_requests_read_by_one_replica_with_replies_read_by_the_other(aws: str, pg_url: str, tmp_path: Path) -> None:
    """Two replicas over one PostgreSQL, each holding one of the bucket's two partitions: the requests go
    to r1's, the replies to r2's. The leader pairs the candidates both commit with their inputs; the
    fleet's sum (what `sum()` over the replicas gives) is exact."""
    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="flow-logs")
    now = dt.datetime.now(dt.UTC)
    t0 = int(now.timestamp()) - 1200
    objects = [
        [request(A, 50001, t0), request(A, 50002, t0 + 10), request(B, 50003, t0 + 20)],
        [reply(A, 50001, t0 + 240), reply(A, 50002, t0 + 250), reply(A, 50002, t0 + 260), reply(B, 50003, t0 + 30)],
    ]
    source = {"type": "s3", "name": "bucket", "bucket": "flow-logs", "endpoint_url": aws, "poll_interval_seconds": 0.2}
    config = {
        "checkpoint": {"url": pg_url},
        "sources": [source],
        "fleet": {"lease_seconds": 3, "s3_partitions": 2},
        "insights": {"nacl_pairing": True},
    }
    replicas = [Replica(tmp_path, f"r{i + 1}", config) for i in range(2)]

    def partitions(r: Replica) -> list[int]:
        held = (r.scrape() or {}).get("streamer_leases", {})
        return [int(dict(k)["name"].split("/")[1]) for k, v in held.items() if v and dict(k)["name"].startswith("bucket/")]

    def summed() -> dict[str, int]:
        out: dict[str, int] = {}
        for r in replicas:
            for labels, v in (r.scrape() or {}).get("vpcflow_nacl_return_rejects_total", {}).items():
                eni = dict(labels)["interface_id"]
                out[eni] = out.get(eni, 0) + int(v)
        return out

    try:
        for r in replicas:
            r.start()
        wait_until(lambda: all(len(partitions(r)) == 1 for r in replicas), 60, "one partition per replica")
        keys = [aws_key(now, "daily", n=n) for n in range(64)]
        for r, cases in zip(replicas, objects, strict=True):
            (mine,) = partitions(r)
            key = next(k for k in keys if zlib.crc32(k.encode()) % 2 == mine)
            s3.put_object(Bucket="flow-logs", Key=key, Body=body(cases))
        wait_until(lambda: summed() == {A: 3, B: 1}, 90, "the fleet's exact NACL return rejects")
        (leader,) = [r for r in replicas if (r.scrape() or {}).get("streamer_leader", {}).get((), 0) == 1]
        exported = (leader.scrape() or {}).get("vpcflow_nacl_return_rejects_total", {})
        assert {dict(k)["interface_id"]: int(v) for k, v in exported.items()} == {A: 3, B: 1}  # the leader exports them
        for r in replicas:  # each replica read one of the two objects: the pairs were made across replicas
            done = (r.scrape() or {}).get("streamer_objects_total", {})
            assert sum(v for k, v in done.items() if dict(k)["outcome"] == "ok") == 1
    finally:
        for r in replicas:
            if r.proc is not None:
                r.stop()
    assert "Traceback" not in "".join(r.log.read_text() for r in replicas)


def test_postgres_reads_pieces_by_prefix_and_drops_them_with_a_commit_or_the_leaders_step(pg_url: str) -> None:
    """The pairing state's pieces on PostgreSQL: written and dropped by prefix in the same transaction as
    the claim (a duplicate drops nothing), and by the leader's fenced step."""
    from streamer.store.base import Commit, Done
    from streamer.store.leader import LEADER
    from streamer.store.postgres import PostgresStore

    store = PostgresStore(pg_url, "r1")
    try:
        pieces = {"p/w/1/q1": b"a", "p/w/1/q2": b"b", "p/w/2/q1": b"c", "p/meta": b"m", "p.totals": b"t"}
        assert store.commit(Commit(done=[Done("s3", "k1")], snapshots=pieces))
        assert store.snapshots("p/") == {n: v for n, v in pieces.items() if n.startswith("p/")}
        assert not store.commit(Commit(done=[Done("s3", "k1")], drop_snapshots=["p/w/1/"]))  # counted before
        assert set(store.snapshots("p/w/1/")) == {"p/w/1/q1", "p/w/1/q2"}
        assert store.commit(Commit(done=[Done("s3", "k2")], drop_snapshots=["p/w/1/"], snapshots={"p/w/1/q3": b"d"}))
        assert store.snapshots("p/w/") == {"p/w/1/q3": b"d", "p/w/2/q1": b"c"}
        epoch = store.acquire(*LEADER, 30)
        assert epoch
        store.commit_detection(LEADER, [], {"p/w/3/q4": b"e"}, epoch, ["p/w/1/", "p/w/2/"])
        assert store.snapshots("p/") == {"p/w/3/q4": b"e", "p/meta": b"m"}
        assert store.snapshot("p.totals") == b"t"
    finally:
        store.close()
