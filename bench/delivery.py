"""Throughput on real delivery: many gzip'd objects through moto S3+SQS, against `replay` of the same records.

    python bench/run.py --delivery                      # 40 objects x 40,000 v2 records, uniform and skewed
    python bench/run.py --delivery --objects 10         # quicker

For each ENI spread (uniform and skewed over 2,000 ENIs) the objects are
generated once, written as files (one per object, and the same records as
one file) and uploaded to moto's S3 once. Then, each with a fresh queue and
a fresh checkpoint:

- one `streamer run` process on SQLite,
- one and two `streamer run` replicas on a real PostgreSQL (Debian's, as the tests),

are started and, once ready, one S3 notification per object is sent to the
queue; the clock runs from the first notification until the checkpoint holds
every record (polled there every 50 ms: a /metrics scrape of 2,000 ENIs' series
costs the service about 0.1 s of CPU, so scraping that often slowed what was
measured), then /metrics (summed over the replicas) is checked to show them all.
Peak RSS is each process's VmHWM.
`streamer replay --output json` of the files and of the one file run as
children (fastest of --repeat). Nothing here asserts: it prints records/s,
peak RSS and the issue's target ratios.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.integration.conftest import CREDENTIALS, aws_key, boto, free_port  # noqa: E402
from tests.integration.test_fleet import Fleet, Replica  # noqa: E402

SPREADS = {"uniform": 0.0, "skewed": 1.1}
#: extra s3_sqs settings for every run (e.g. max_bytes_in_flight)
SOURCE: dict[str, Any] = {}


def write_inputs(folder: Path, objects: int, records: int, skew: float) -> tuple[list[Path], Path]:
    """One gzip file per object, and the same records (one header) as one file."""
    from streamer.synth import TrafficProfile, iter_text_chunks

    folder.mkdir(parents=True, exist_ok=True)
    start = int(time.time()) - 3600
    files: list[Path] = []
    whole = folder / "all.log.gz"
    with whole.open("wb") as one:
        for i in range(objects):
            profile = TrafficProfile(records=records, seed=i, start_epoch=start, eni_skew=skew, span_seconds=600)
            chunks = list(iter_text_chunks(profile))
            path = folder / "objects" / f"{i:04d}.log.gz"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(gzip.compress(b"".join(chunks), 6))
            files.append(path)
            one.write(gzip.compress(b"".join(chunks if i == 0 else chunks[1:]), 6))
    return files, whole


def process_peak_mib(pid: int) -> float:
    """VmHWM of a live process (its peak resident set), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def one_process(fleet: Fleet) -> None:
    """Make the fleet's replicas (one) a single process on SQLite: no fleet section in its config."""
    import yaml

    for r in fleet.replicas:
        doc = yaml.safe_load(r.config.read_text())
        del doc["fleet"]
        r.config.write_text(yaml.safe_dump(doc))


def wait_ready(fleet: Fleet, label: str, seconds: float = 120) -> None:
    """Until every replica answers /readyz (polled every 50 ms), or exit with their logs."""
    deadline = time.monotonic() + seconds
    while not all(ready(r) for r in fleet.replicas):
        if time.monotonic() > deadline:
            raise SystemExit(f"{label}: not ready in {seconds:.0f} s:\n{fleet.logs()}")
        time.sleep(0.05)


def ready(replica: Replica) -> bool:
    try:
        return int(urllib.request.urlopen(f"http://127.0.0.1:{replica.port}/readyz", timeout=2).status) == 200
    except OSError:
        return False


def counted(fleet: Fleet) -> float:
    return sum(sum(m.get("vpcflow_records_total", {}).values()) for m in fleet.scrapes())


def committed(checkpoint: dict[str, Any]) -> int:
    """Records in the checkpoint (every replica's rows): cheap to poll, unlike /metrics."""
    sql = "SELECT coalesce(sum(records), 0) FROM counters"
    try:
        if "url" in checkpoint:
            import psycopg

            with psycopg.connect(checkpoint["url"], connect_timeout=5) as conn:
                row = conn.execute(sql).fetchone()
        else:
            import sqlite3

            with contextlib.closing(sqlite3.connect(f"file:{checkpoint['path']}?mode=ro", uri=True, timeout=5)) as db:
                row = db.execute(sql).fetchone()
    except Exception:  # not created yet
        return 0
    return int(row[0]) if row else 0


def notification(bucket: str, key: str, size: int, etag: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "eventTime": when,
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": size, "eTag": etag}},
    }
    return json.dumps({"Records": [record]})


def service_run(
    label: str,
    tmp: Path,
    moto: str,
    bucket: str,
    uploaded: list[tuple[str, int, str]],
    total: int,
    checkpoint: dict[str, Any],
    replicas: int,
) -> dict[str, float]:
    """Start the process(es), notify every object at once, time until every record is counted."""
    sqs = boto("sqs", moto)
    url = sqs.create_queue(QueueName=label)["QueueUrl"]
    config: dict[str, Any] = {
        "checkpoint": checkpoint,
        "sources": [{"type": "s3_sqs", "queue_url": url, "endpoint_url": moto, "wait_time_seconds": 1, **SOURCE}],
    }
    folder = tmp / label
    folder.mkdir()
    fleet = Fleet(folder, config, n=replicas)
    if "url" not in checkpoint:
        one_process(fleet)
    with fleet:
        wait_ready(fleet, label)
        bodies = [notification(bucket, key, size, etag) for key, size, etag in uploaded]
        started = time.perf_counter()
        for i in range(0, len(bodies), 10):
            sqs.send_message_batch(
                QueueUrl=url, Entries=[{"Id": str(j), "MessageBody": b} for j, b in enumerate(bodies[i : i + 10])]
            )
        deadline = time.monotonic() + 600
        peak = 0.0
        while committed(checkpoint) < total:
            if time.monotonic() > deadline:
                raise SystemExit(f"{label}: not every record committed in 10 minutes:\n{fleet.logs()}")
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        while counted(fleet) < total:
            if time.monotonic() > deadline:
                raise SystemExit(f"{label}: /metrics does not show every record:\n{fleet.logs()}")
            time.sleep(0.5)
        for r in fleet.replicas:
            assert r.proc is not None
            peak = max(peak, process_peak_mib(r.proc.pid))
        commits = sum(sum(m.get("streamer_commit_seconds_count", {}).values()) for m in fleet.scrapes())
        commit_s = sum(sum(m.get("streamer_commit_seconds_sum", {}).values()) for m in fleet.scrapes())
        inputs = sum(sum(m.get("streamer_commit_inputs_sum", {}).values()) for m in fleet.scrapes())
    return {
        "rate": total / seconds,
        "seconds": seconds,
        "rss_mib": peak,
        "commits": commits,
        "commit_ms": 1000 * commit_s / max(commits, 1),
        "inputs": inputs,
    }


def replay(paths: list[Path], repeat: int) -> dict[str, float]:
    """Fastest of `repeat` runs of `streamer replay`; peak RSS from VmHWM, read until the process exits.

    Not ru_maxrss: a child forked from this parent (moto, the objects) starts with the parent's peak.
    """
    argv = [sys.executable, "-m", "streamer", "replay", "--output", "json", *map(str, paths)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARROW_DEFAULT_MEMORY_POOL": "jemalloc"}
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        peak = 0.0
        while proc.poll() is None:
            with contextlib.suppress(OSError):
                peak = max(peak, process_peak_mib(proc.pid))
            time.sleep(0.005)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv[:5])} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
        runs.append({"wall": wall, "rss_mib": peak})
    return {"wall": min(r["wall"] for r in runs), "rss_mib": max(r["rss_mib"] for r in runs)}


def main(objects: int, records: int, repeat: int, postgres: bool = True) -> None:
    rows, notes, _ = measure(objects, records, repeat, postgres)
    print(f"\n{'measurement':<70} {'records/s':>12} {'seconds':>8} {'peak RSS':>10}")
    for label, rate, seconds, rss in rows:
        print(f"{label:<70} {rate / 1e6:>10.2f} M {seconds:>8.2f} {rss:>7.0f} MiB")
    print()
    for note in notes:
        print(f"  {note}")
    print(f"machine: {os.cpu_count()} CPUs; moto in this process; peak RSS: the largest replica's")


def measure(
    objects: int, records: int, repeat: int, postgres: bool = True, spreads: tuple[str, ...] = tuple(SPREADS)
) -> tuple[list[tuple[str, float, float, float]], list[str], dict[str, dict[str, dict[str, float]]]]:
    """Every spread's runs: the printed rows and notes, and per spread each run's numbers ("replay_files",
    "replay_one", "sqlite", "pg1", "pg2": rate, seconds or wall, rss_mib), e.g. for bench/baseline.py."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)
    port = free_port()
    moto_server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto_server.start()
    moto = f"http://127.0.0.1:{port}"
    total = objects * records
    rows: list[tuple[str, float, float, float]] = []
    notes: list[str] = []
    measured: dict[str, dict[str, dict[str, float]]] = {}
    try:
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            pg = None
            if postgres:
                from tests.integration.postgres import running_postgres

                pg = stack.enter_context(running_postgres(free_port()))
            s3 = boto("s3", moto)
            now = dt.datetime.now(dt.UTC)
            for spread in spreads:
                skew = SPREADS[spread]
                print(f"{spread}: writing {objects} x {records:,} records ...", file=sys.stderr, flush=True)
                files, whole = write_inputs(tmp / spread, objects, records, skew)
                bucket = f"delivery-{spread}"
                s3.create_bucket(Bucket=bucket)
                uploaded = []
                for i, path in enumerate(files):
                    key = aws_key(now, "daily", n=i)
                    etag = s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())["ETag"].strip('"')
                    uploaded.append((key, path.stat().st_size, etag))
                r_files = replay(files, repeat)
                r_one = replay([whole], repeat)
                name = f"{objects} x {records // 1000}k {spread}"
                rate_files = total / r_files["wall"]
                rate_one = total / r_one["wall"]
                rows.append((f"{name}: replay of the {objects} files", rate_files, r_files["wall"], r_files["rss_mib"]))
                rows.append((f"{name}: replay of the same records as one file", rate_one, r_one["wall"], r_one["rss_mib"]))
                runs: dict[str, dict[str, float]] = {
                    "replay_files": {**r_files, "rate": rate_files},
                    "replay_one": {**r_one, "rate": rate_one},
                }
                measured[spread] = runs
                plan: list[tuple[str, dict[str, Any], int]] = [("sqlite", {"path": str(tmp / f"{spread}.db")}, 1)]
                if pg is not None:
                    for n in (1, 2):
                        plan.append((f"pg{n}", {"url": pg.url(pg.database())}, n))
                for kind, checkpoint, n in plan:
                    print(f"{spread}: {kind} ...", file=sys.stderr, flush=True)
                    got = service_run(f"{spread}-{kind}", tmp, moto, bucket, uploaded, total, checkpoint, n)
                    runs[kind] = got
                    what = {
                        "sqlite": "`streamer run` s3_sqs, SQLite",
                        "pg1": "one replica, PostgreSQL",
                        "pg2": "two replicas, PostgreSQL",
                    }[kind]
                    rows.append((f"{name}: {what}", got["rate"], got["seconds"], got["rss_mib"]))
                    notes.append(
                        f"{name} {kind}: {got['commits']:.0f} commits of {got['inputs']:.0f} inputs, "
                        f"mean {got['commit_ms']:.1f} ms"
                    )
                notes.append(f"{name}: replay files / one file = {rate_files / rate_one:.2f} (target >= 0.8)")
                notes.append(
                    f"{name}: S3+SQS SQLite / replay of the files = {runs['sqlite']['rate'] / rate_files:.2f} (target >= 0.7)"
                )
                if "pg1" in runs:
                    pg_vs_sqlite = runs["pg1"]["rate"] / runs["sqlite"]["rate"]
                    notes.append(f"{name}: one PostgreSQL replica / SQLite = {pg_vs_sqlite:.2f} (target >= 0.9)")
                    notes.append(f"{name}: two replicas / one = {runs['pg2']['rate'] / runs['pg1']['rate']:.2f} (target >= 1.0)")
    finally:
        moto_server.stop()
    return rows, notes, measured
