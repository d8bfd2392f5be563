"""Fleet ingest throughput with 1, 2 and 3 replicas, and what each input costs the database.

    python bench/fleet.py                  # 40 objects x 50,000 v2 records, s3_sqs, real PostgreSQL
    python bench/fleet.py --objects 20     # smaller

Starts a real PostgreSQL (Debian's, as the tests do) and moto's S3+SQS on
127.0.0.1, uploads the objects once per run, then times N real `streamer run`
processes from the first notification to the last record counted (the sum of
their /metrics). Prints records/s per fleet size, database transactions and
rows written per object, and the mean commit time. On a 2-core machine the
replicas share the same two cores: more replicas buy availability, not speed.
Nothing here asserts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.integration.conftest import CREDENTIALS, aws_key, boto, free_port  # noqa: E402
from tests.integration.postgres import running_postgres  # noqa: E402
from tests.integration.test_fleet import Fleet  # noqa: E402


def fleet_sum(fleet: Fleet, name: str) -> float:
    return sum(sum(m.get(name, {}).values()) for m in fleet.scrapes())


def run(replicas: int, objects: int, records: int, pg: object, moto: str, tmp: Path) -> dict[str, float]:
    from streamer.synth import TrafficProfile, gzip_object

    database = pg.database()  # type: ignore[attr-defined]
    s3, sqs = boto("s3", moto), boto("sqs", moto)
    bucket = f"bench-{replicas}"
    s3.create_bucket(Bucket=bucket)
    url = sqs.create_queue(QueueName=bucket)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]}
    )
    now = dt.datetime.now(dt.UTC)
    start = int(now.timestamp()) - 3600
    bodies = [b"".join(gzip_object(TrafficProfile(records=records, seed=i, start_epoch=start))) for i in range(objects)]
    config = {
        "checkpoint": {"url": pg.url(database)},  # type: ignore[attr-defined]
        "sources": [{"type": "s3_sqs", "queue_url": url, "endpoint_url": moto, "wait_time_seconds": 1, "max_messages": 2}],
        "fleet": {"lease_seconds": 10},
    }
    before = pg.psql(  # type: ignore[attr-defined]
        f"SELECT xact_commit, tup_inserted + tup_updated FROM pg_stat_database WHERE datname = '{database}'"
    ).split("|")
    total = objects * records
    (tmp / f"fleet-{replicas}").mkdir()
    with Fleet(tmp / f"fleet-{replicas}", config, n=replicas) as fleet:
        time.sleep(3)  # started and listening
        started = time.perf_counter()
        for i, body in enumerate(bodies):  # S3 notifies the queue
            s3.put_object(Bucket=bucket, Key=aws_key(now, "daily", n=i), Body=body)
        deadline = started + 600
        while fleet_sum(fleet, "vpcflow_records_total") < total:
            if time.perf_counter() > deadline:
                raise SystemExit("the fleet did not count every record in 10 minutes:\n" + fleet.logs())
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        commits = fleet_sum(fleet, "streamer_commit_seconds_count")
        commit_time = fleet_sum(fleet, "streamer_commit_seconds_sum")
    after = pg.psql(  # type: ignore[attr-defined]
        f"SELECT xact_commit, tup_inserted + tup_updated FROM pg_stat_database WHERE datname = '{database}'"
    ).split("|")
    return {
        "records_per_second": total / seconds,
        "seconds": seconds,
        "transactions_per_object": (int(after[0]) - int(before[0])) / objects,
        "rows_per_object": (int(after[1]) - int(before[1])) / objects,
        "commit_ms": 1000 * commit_time / max(commits, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=40)
    parser.add_argument("--records", type=int, default=50_000)
    args = parser.parse_args()
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    import tempfile

    try:
        with running_postgres(free_port()) as pg, tempfile.TemporaryDirectory() as tmp:
            print(f"{'replicas':>8} {'records/s':>12} {'seconds':>8} {'tx/object':>10} {'rows/object':>12} {'commit ms':>10}")
            for n in (1, 2, 3):
                r = run(n, args.objects, args.records, pg, f"http://127.0.0.1:{port}", Path(tmp))
                print(
                    f"{n:>8} {r['records_per_second'] / 1e6:>10.2f} M {r['seconds']:>8.2f} {r['transactions_per_object']:>10.1f} "
                    f"{r['rows_per_object']:>12.1f} {r['commit_ms']:>10.1f}"
                )
    finally:
        moto.stop()
    print(f"\nmachine: {os.cpu_count()} CPUs; {args.objects} objects x {args.records:,} records, s3_sqs, PostgreSQL 15")


if __name__ == "__main__":
    main()
