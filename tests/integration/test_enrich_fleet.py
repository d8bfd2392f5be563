"""A fleet over one real PostgreSQL: only the leader describes ENIs; every replica reads the shared cache."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from streamer.config import Config
from streamer.service import Service
from streamer.store.postgres import PostgresStore
from tests.integration.conftest import Metrics, Truth, ascrape, boto, objects_by_outcome, running, service_config, summed_totals
from tests.integration.test_enrich import flow_objects, info, put, requests, source, world

pytestmark = pytest.mark.integration


async def test_only_the_leader_describes_and_every_replica_names_the_enis(aws: str, pg_url: str, tmp_path: Path) -> None:
    w = world(boto("ec2", aws))
    enis = [w["instance"], w["nat"], w["lambda"], w["task"]]
    truth = Truth()
    put(aws, flow_objects(truth, enis))

    def config(replica: str) -> Config:
        return service_config(
            tmp_path / replica,
            source(aws),
            checkpoint={"url": pg_url},
            fleet={"replica_id": replica, "lease_seconds": 3, "s3_partitions": 4},
            enrich={"endpoint_url": aws, "region": "us-east-1", "refresh_seconds": 4},  # the cache is read every 1 s
        )

    def described(m: Metrics) -> bool:
        """Every ENI this replica counts has its EC2 type (v2 records carry none)."""
        return all(labels["interface_type"] for labels in info(m).values())

    def cached(service: Service) -> bool:
        """The replica's own copy of the context has every ENI's EC2 answer (the leader's, or read from the table)."""
        return service.enricher is not None and all(service.enricher.book.ec2.get(e) for e in enis)

    async with contextlib.AsyncExitStack() as stack:
        services = [await stack.enter_async_context(running(config(r))) for r in ("r1", "r2")]
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            scrapes = [await ascrape(s.port) for s in services]
            counted = sum(objects_by_outcome(m).get("ok", 0) for m in scrapes)
            if counted == 6 and all(described(m) for m in scrapes) and all(cached(s) for s in services):
                break
            assert asyncio.get_running_loop().time() < deadline, (counted, [info(m) for m in scrapes])
            await asyncio.sleep(0.2)
        assert summed_totals(scrapes) == truth.totals
        leaders = [s.config.fleet.replica_id for s in services if s.leader is not None and s.leader.leader]
        describers = [s.config.fleet.replica_id for s, m in zip(services, scrapes, strict=True) if requests(m) > 0]
        assert len(leaders) == 1
        assert describers == leaders
        for service, m in zip(services, scrapes, strict=True):  # the replica that never called EC2 knows them too
            assert service.enricher is not None
            book = service.enricher.book
            named = {kind: getattr(book.get(w[kind]), "name", None) for kind in ("instance", "lambda", "task")}
            assert named == {"instance": "web-1", "lambda": "orders-fn", "task": "task-1"}
            assert {e: labels["name"] for e, labels in info(m).items()} == {e: book.get(e).name or "" for e in info(m)}  # type: ignore[union-attr]

    store = PostgresStore(pg_url, "reader")  # what the fleet left in the shared table
    try:
        rows = {r.interface_id: r for r in store.contexts()}
        assert all(rows[e].ec2 and rows[e].described_at for e in enis)
    finally:
        store.close()


def test_a_database_from_before_the_cache_gains_it_and_keeps_everything(postgres_server: object) -> None:
    import psycopg

    from streamer.store.postgres import MIGRATIONS

    url = postgres_server.url(postgres_server.database())  # type: ignore[attr-defined]
    mine = next(i for i, sql in enumerate(MIGRATIONS) if "interface_context" in sql)
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE streamer_schema (version INTEGER NOT NULL)")
        for number, sql in enumerate(MIGRATIONS[:mine], start=1):
            conn.execute(sql)
            conn.execute("INSERT INTO streamer_schema VALUES (%s)", (number,))
        conn.execute("INSERT INTO counters VALUES ('r1', 'eni-a', 'ACCEPT', 'OK', 5, 9, 90)")
    store = PostgresStore(url, "r1")
    try:
        assert store.schema_version == len(MIGRATIONS)
        assert store.load_state().counters.by_interface() == {"eni-a": {"ACCEPT": {"records": 5, "packets": 9, "bytes": 90}}}
        assert store.contexts() == []
        store.put_seen([("eni-a", '{"vpc_id":"vpc-1"}', 10.0)])
        store.put_described([("eni-a", '{"name":"web"}', 11.0)])
        store.put_seen([("eni-a", None, 9.0)])  # older, and no record context: nothing moves back
        (row,) = store.contexts()
        assert (row.records, row.ec2, row.seen_at, row.described_at) == ('{"vpc_id":"vpc-1"}', '{"name":"web"}', 10.0, 11.0)
    finally:
        store.close()
