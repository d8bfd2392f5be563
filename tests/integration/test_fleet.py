"""A fleet of three real `streamer run` processes over one real PostgreSQL behaves like one process.

- s3_sqs: 60 objects, and a scan spread over 6 of them in one minute, each
  object below `min_rejected_records`, the total well above: only the merged
  view can see it. Replicas, the leader included, are killed -9 and restarted
  along the way. At the end the fleet's summed counters equal the truth, and
  a real Alertmanager holds exactly one alert, for the scanned ENI.
- kinesis: a 4-shard stream split across the replicas by leases, exact under
  kill -9, every shard read by exactly one replica at a time.
- the PostgreSQL store itself: claims, lease fencing, schema versions, secrets.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from streamer.schema import DEFAULT_FIELDS
from streamer.synth import Spike, TrafficProfile, eni_ids, generate_table, spike_table, to_lines
from tests.integration.conftest import Metrics, Truth, aws_key, boto, free_port, parse_metrics, summed_totals

pytestmark = pytest.mark.integration

ENIS = 8
VICTIM = eni_ids(ENIS)[5]


class Replica:
    """One `streamer run` process of the fleet."""

    def __init__(self, tmp_path: Path, replica_id: str, config: dict[str, Any]) -> None:
        self.replica_id = replica_id
        self.port = free_port()
        self.config = tmp_path / f"{replica_id}.yaml"
        self.log = tmp_path / f"{replica_id}.log"
        doc = {**config, "http": {"listen_address": f"127.0.0.1:{self.port}"}}
        doc["fleet"] = {**doc.get("fleet", {}), "replica_id": replica_id}
        self.config.write_text(yaml.safe_dump(doc))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return int(self.proc.returncode)

    def scrape(self) -> Metrics | None:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        except OSError:
            return None
        return parse_metrics(body)


class Fleet:
    def __init__(self, tmp_path: Path, config: dict[str, Any], n: int = 3) -> None:
        self.replicas = [Replica(tmp_path, f"r{i + 1}", config) for i in range(n)]

    def __enter__(self) -> Fleet:
        for r in self.replicas:
            r.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for r in self.replicas:
            if r.proc is not None:
                r.stop()

    def scrapes(self) -> list[Metrics]:
        return [m for m in (r.scrape() for r in self.replicas if r.alive) if m is not None]

    def totals(self) -> dict[tuple[str, str], list[int]]:
        """The fleet's sum: what `sum()` over every replica's /metrics gives."""
        return summed_totals(self.scrapes())

    def leader(self) -> Replica | None:
        for r in self.replicas:
            m = r.scrape() if r.alive else None
            if m and m.get("streamer_leader", {}).get((), 0) == 1:
                return r
        return None

    def logs(self) -> str:
        return "\n".join(f"--- {r.replica_id}\n" + r.log.read_text()[-3000:] for r in self.replicas if r.log.exists())


def wait_for(predicate: Any, seconds: float, what: str, fleet: Fleet | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f"\n{fleet.logs()}" if fleet else ""))
        time.sleep(0.2)


def am_alerts(url: str) -> list[dict[str, Any]]:
    query = urllib.request.quote('alertname="VPCFlowRejectSpike"')
    return list(json.loads(urllib.request.urlopen(f"{url}/api/v2/alerts?filter={query}", timeout=10).read()))


def gz(table: pa.Table) -> bytes:
    return gzip.compress((" ".join(DEFAULT_FIELDS) + "\n" + "\n".join(to_lines(table).to_pylist()) + "\n").encode())


def fleet_objects(base: int, truth: Truth) -> list[bytes]:
    """54 objects of steady traffic (3 per minute, 18 minutes) and 6 with a scan in minute 14, 45 rejects each."""
    out = []
    for minute in range(18):
        for part in range(3):
            profile = TrafficProfile(
                records=330, enis=ENIS, span_seconds=60, start_epoch=base + minute * 60, seed=minute * 3 + part
            )
            table = generate_table(profile)
            truth.add_rows(table.to_pylist())
            out.append(gz(table))
    for k in range(6):
        table = spike_table(Spike(VICTIM, base + 14 * 60, duration_seconds=60, records=45, seed=100 + k))
        truth.add_rows(table.to_pylist())
        out.append(gz(table))
    return out


def test_sqs_fleet_counts_exactly_and_alerts_once_on_a_scan_no_replica_sees_alone(
    aws: str, alertmanager: str, pg_url: str, tmp_path: Path
) -> None:
    s3, sqs = boto("s3", aws), boto("sqs", aws)
    s3.create_bucket(Bucket="flow-logs")
    url = sqs.create_queue(QueueName="fleet", Attributes={"VisibilityTimeout": "10"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket="flow-logs",
        NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
    )
    truth = Truth()
    now = dt.datetime.now(dt.UTC)
    base = int(now.timestamp()) // 60 * 60 - 45 * 60
    objects = fleet_objects(base, truth)
    random.Random(7).shuffle(objects)  # competing consumers see them in any order anyway
    config = {
        "checkpoint": {"url": pg_url},
        "sources": [
            {
                "type": "s3_sqs",
                "name": "queue",
                "queue_url": url,
                "endpoint_url": aws,
                "wait_time_seconds": 1,
                "max_messages": 4,
                "visibility_timeout_seconds": 10,
            }
        ],
        # Lateness covers the whole shuffled span; the windows close when the fleet goes quiet. A killed
        # replica's messages come back after the visibility timeout: the idle timeout must be longer.
        "anomaly": {"window_seconds": 60, "lateness_seconds": 1500, "idle_timeout_seconds": 25, "warmup_windows": 10},
        "alerts": {"alertmanager_url": alertmanager, "resend_interval_seconds": 1},
        "fleet": {"lease_seconds": 3},
        "decode_workers": 1,
    }
    with Fleet(tmp_path, config) as fleet:
        for i, body in enumerate(objects):
            s3.put_object(Bucket="flow-logs", Key=aws_key(now, "daily", n=i), Body=body)
        rng = random.Random(11)
        killed_leader = False
        for threshold in (10, 25, 40):
            wait_for(
                lambda t=threshold: sum(v[0] for v in fleet.totals().values()) >= t * 300, 120, f"{threshold} objects", fleet
            )
            leader = fleet.leader()
            victim = leader if (leader is not None and not killed_leader) else rng.choice(fleet.replicas)
            killed_leader |= victim is leader
            victim.kill()
            time.sleep(rng.uniform(0.2, 1.5))
            victim.start()
        assert killed_leader
        wait_for(lambda: fleet.totals() == truth.totals, 180, "the fleet's sums to equal the truth", fleet)
        wait_for(lambda: bool(am_alerts(alertmanager)), 120, "the scan's alert", fleet)
        time.sleep(3)  # re-sends from whichever replica leads: still one alert
        alerts = am_alerts(alertmanager)
        assert [a["labels"]["interface_id"] for a in alerts] == [VICTIM], alerts
        assert int(alerts[0]["annotations"]["observed_rejected_records"]) >= 6 * 45
        assert fleet.totals() == truth.totals
        leaders = [r.replica_id for r in fleet.replicas if (m := r.scrape()) and m.get("streamer_leader", {}).get((), 0) == 1]
        assert len(leaders) == 1
    assert "Traceback" not in fleet.logs()


def test_kinesis_shards_are_split_across_replicas_and_counted_exactly(aws: str, pg_url: str, tmp_path: Path) -> None:
    logs = boto("logs", aws)
    logs.create_log_group(logGroupName="/vpc/flowlogs")
    kinesis = boto("kinesis", aws)
    kinesis.create_stream(StreamName="flowlogs", ShardCount=4)
    arn = kinesis.describe_stream(StreamName="flowlogs")["StreamDescription"]["StreamARN"]
    logs.put_subscription_filter(
        logGroupName="/vpc/flowlogs",
        filterName="k",
        filterPattern="",
        destinationArn=arn,
        roleArn="arn:aws:iam::123456789012:role/x",
    )
    truth = Truth()
    config = {
        "checkpoint": {"url": pg_url},
        "sources": [{"type": "kinesis", "name": "stream", "stream_name": "flowlogs", "endpoint_url": aws, "batch_records": 5}],
        "fleet": {"lease_seconds": 3},
        "decode_workers": 1,
    }
    with Fleet(tmp_path, config) as fleet:

        def shards_held() -> dict[str, set[str]]:
            out: dict[str, set[str]] = {}
            for r in fleet.replicas:
                m = r.scrape() if r.alive else None
                for labels in (m or {}).get("streamer_leases", {}):
                    d = dict(labels)
                    if d["kind"] == "kinesis_shard":
                        out.setdefault(r.replica_id, set()).add(d["name"])
            return out

        wait_for(
            lambda: len(shards_held()) == 3 and sum(map(len, shards_held().values())) == 4, 60, "4 shards over 3 replicas", fleet
        )
        held = shards_held()
        assert sorted(len(s) for s in held.values()) == [1, 1, 2]
        names = [n for s in held.values() for n in s]
        assert len(names) == len(set(names)) == 4  # every shard read by exactly one replica
        for stream in range(8):  # each put goes to Kinesis as one record, spread over the shards by partition key
            logs.create_log_stream(logGroupName="/vpc/flowlogs", logStreamName=f"eni-{stream}")
        rng = random.Random(3)
        for round_ in range(4):
            for stream in range(8):
                table = generate_table(
                    TrafficProfile(records=150, enis=6, seed=round_ * 10 + stream, start_epoch=int(time.time()) - 900)
                )
                truth.add_rows(table.to_pylist())
                events = [
                    {"timestamp": int(time.time() * 1000) + j, "message": m} for j, m in enumerate(to_lines(table).to_pylist())
                ]
                logs.put_log_events(logGroupName="/vpc/flowlogs", logStreamName=f"eni-{stream}", logEvents=events)
            victim = rng.choice(fleet.replicas)
            victim.kill()
            time.sleep(rng.uniform(0.1, 1.0))
            victim.start()
        wait_for(lambda: fleet.totals() == truth.totals, 120, "exact sums after kills", fleet)
        wait_for(lambda: sum(map(len, shards_held().values())) == 4, 60, "every shard held again", fleet)
        names = [n for s in shards_held().values() for n in s]
        assert len(names) == len(set(names))
    assert "Traceback" not in fleet.logs()


# --- the store ---------------------------------------------------------------------------------------


def test_store_claims_fence_leases_and_refuse_a_newer_schema(pg_url: str, postgres_server: Any) -> None:
    from streamer.store.base import CheckpointError, Commit, Done, LeaseLost
    from streamer.store.postgres import PostgresStore
    from tests.unit.aggregate.test_state import delta

    a, b = PostgresStore(pg_url, "r1"), PostgresStore(pg_url, "r2")
    try:
        assert a.commit(Commit(delta({"eni-a": 3}), [Done("s3", "bucket/k#1")]))
        assert not b.commit(Commit(delta({"eni-a": 5}), [Done("s3", "bucket/k#1")]))  # claimed already: nothing counted
        assert b.commit(Commit(delta({"eni-a": 2}), [Done("s3", "bucket/k#2")]))
        assert a.load_state().counters.total_records(("REJECT",)) == 3  # each replica resumes its own counters
        assert b.load_state().counters.total_records(("REJECT",)) == 2
        assert a.acquire("kinesis_shard", "s/0", 30)
        assert not b.acquire("kinesis_shard", "s/0", 30)
        with pytest.raises(LeaseLost):
            b.commit(Commit(delta({"eni-a": 1}), cursors={("s", "0"): "9"}, lease=("kinesis_shard", "s/0")))
        assert a.commit(Commit(delta({"eni-a": 1}), cursors={("s", "0"): "9"}, lease=("kinesis_shard", "s/0")))
        assert b.cursors("s") == {"0": "9"}
        a.release("kinesis_shard", "s/0")
        assert b.acquire("kinesis_shard", "s/0", 30)
        with pytest.raises(LeaseLost):  # a replica that lost its lease cannot count what the new owner counts
            a.commit(Commit(delta({"eni-a": 1}), cursors={("s", "0"): "10"}, lease=("kinesis_shard", "s/0")))
    finally:
        a.close()
        b.close()
    database = pg_url.rsplit("/", 1)[1]
    postgres_server.psql("INSERT INTO streamer_schema VALUES (99)", database)
    with pytest.raises(CheckpointError, match="schema is version 99, newer than this streamer's"):
        PostgresStore(pg_url, "r3")


def test_store_errors_never_show_the_password(tmp_path: Path) -> None:
    from streamer.store.base import CheckpointError
    from streamer.store.pgtimeouts import Timeouts
    from streamer.store.postgres import PostgresStore

    closed = free_port()  # nothing listens there
    quick = Timeouts(connect_seconds=2)
    with pytest.raises(CheckpointError) as err:
        PostgresStore(f"postgresql://fleet:in-the-url-42@127.0.0.1:{closed}/flows", "r1", timeouts=quick)
    assert "in-the-url-42" not in str(err.value)
    assert f"postgresql://fleet@127.0.0.1:{closed}/flows" in str(err.value)
    secret = tmp_path / "password"
    secret.write_text("from-a-file-77\n")
    with pytest.raises(CheckpointError) as err:
        PostgresStore(f"postgresql://fleet@127.0.0.1:{closed}/flows", "r1", password_file=secret, timeouts=quick)
    assert "from-a-file-77" not in str(err.value)
    with pytest.raises(CheckpointError, match="password_file"):
        PostgresStore(f"postgresql://fleet@127.0.0.1:{closed}/flows", "r1", password_file=tmp_path / "missing")


def leases_by_replica(fleet: Fleet, kind: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in fleet.replicas:
        m = r.scrape() if r.alive else None
        for labels in (m or {}).get("streamer_leases", {}):
            d = dict(labels)
            if d["kind"] == kind:
                out.setdefault(r.replica_id, set()).add(d["name"])
    return out


def test_s3_polling_is_split_by_partition_leases_and_no_object_is_read_twice(aws: str, pg_url: str, tmp_path: Path) -> None:
    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="flow-logs")
    truth = Truth()
    now = dt.datetime.now(dt.UTC)
    for i in range(40):
        table = generate_table(TrafficProfile(records=400, enis=6, seed=i, start_epoch=int(now.timestamp()) - 1800))
        truth.add_rows(table.to_pylist())
        s3.put_object(Bucket="flow-logs", Key=aws_key(now, "daily", n=i), Body=gz(table))
    config = {
        "checkpoint": {"url": pg_url},
        "sources": [{"type": "s3", "name": "bucket", "bucket": "flow-logs", "endpoint_url": aws, "poll_interval_seconds": 0.5}],
        "fleet": {"lease_seconds": 3, "s3_partitions": 6},
        "decode_workers": 1,
    }
    with Fleet(tmp_path, config) as fleet:
        wait_for(
            lambda: sorted(map(len, leases_by_replica(fleet, "s3_partition").values())) == [2, 2, 2],
            60,
            "6 partitions split evenly",
            fleet,
        )
        held = [n for s in leases_by_replica(fleet, "s3_partition").values() for n in s]
        assert len(held) == len(set(held)) == 6
        wait_for(lambda: fleet.totals() == truth.totals, 120, "exact sums", fleet)
        outcomes: dict[str, float] = {}
        for m in fleet.scrapes():
            for labels, value in m.get("streamer_objects_total", {}).items():
                outcomes[dict(labels)["outcome"]] = outcomes.get(dict(labels)["outcome"], 0) + value
        # Each object is committed once, by its partition's holder: no replica tried one another had done
        # (an object caught mid-read by a rebalance is abandoned by its old holder: "lease_lost").
        assert outcomes.pop("ok") == 40
        assert set(outcomes) <= {"lease_lost"}
    assert "Traceback" not in fleet.logs()


def test_cloudwatch_polling_runs_on_one_replica_and_moves_when_it_dies(aws: str, pg_url: str, tmp_path: Path) -> None:
    logs = boto("logs", aws)
    logs.create_log_group(logGroupName="/vpc/flowlogs")
    logs.create_log_stream(logGroupName="/vpc/flowlogs", logStreamName="eni-all")
    truth = Truth()

    def put(seed: int) -> None:
        table = generate_table(TrafficProfile(records=300, enis=5, seed=seed, start_epoch=int(time.time()) - 900))
        truth.add_rows(table.to_pylist())
        events = [
            {"timestamp": int(time.time() * 1000) - 60_000 + j, "message": m} for j, m in enumerate(to_lines(table).to_pylist())
        ]
        logs.put_log_events(logGroupName="/vpc/flowlogs", logStreamName="eni-all", logEvents=events)

    config = {
        "checkpoint": {"url": pg_url},
        "sources": [
            {
                "type": "cloudwatch",
                "name": "group",
                "log_group": "/vpc/flowlogs",
                "endpoint_url": aws,
                "poll_interval_seconds": 0.3,
            }
        ],
        "fleet": {"lease_seconds": 3},
        "decode_workers": 1,
    }
    with Fleet(tmp_path, config) as fleet:
        put(1)
        wait_for(lambda: fleet.totals() == truth.totals, 60, "the first events", fleet)
        holders = leases_by_replica(fleet, "cloudwatch")
        assert len(holders) == 1  # one poller at a time
        (poller,) = holders
        dead = next(r for r in fleet.replicas if r.replica_id == poller)
        dead.kill()
        put(2)
        wait_for(lambda: len(leases_by_replica(fleet, "cloudwatch")) == 1, 60, "another poller", fleet)
        assert poller not in leases_by_replica(fleet, "cloudwatch")
        dead.start()  # back under its id: its counters are exported again
        wait_for(lambda: fleet.totals() == truth.totals, 60, "the new events, counted once", fleet)


def test_replicas_starting_together_migrate_the_schema_once(postgres_server: Any) -> None:
    import threading

    from streamer.store.postgres import MIGRATIONS, PostgresStore

    url = postgres_server.url(postgres_server.database())
    errors: list[BaseException] = []

    def start(i: int) -> None:
        try:
            PostgresStore(url, f"r{i}").close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert postgres_server.psql("SELECT count(*) FROM streamer_schema", url.rsplit("/", 1)[1]) == str(len(MIGRATIONS))
