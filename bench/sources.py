"""Throughput of the polling sources on a backlog: S3 polling and Kinesis, through moto, one `streamer run` on SQLite.

    python bench/sources.py                          # 40 objects x 40,000 v2 records; Kinesis 4 shards and 1
    python bench/sources.py --objects 10 --kinesis-records 100

The inputs are in moto before the process starts (a backlog, as after an
outage or on a first start), and each run has a fresh checkpoint; the clock
runs from the process being ready
until /metrics has counted every record. Kinesis records are gzip'd
CloudWatch Logs documents of `--lines` flow-log lines each, read
`--batch-records` per GetRecords, so that each shard has several batches to
pipeline. Peak RSS is the process's VmHWM. The child processes import
streamer from PYTHONPATH, so the same script measures another checkout.
Nothing here asserts: it prints records/s and peak RSS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.delivery import counted, one_process, process_peak_mib, wait_ready  # noqa: E402
from tests.integration.conftest import aws_key, boto  # noqa: E402
from tests.integration.test_fleet import Fleet  # noqa: E402


def timed(label: str, tmp: Path, source: dict[str, Any], total: int) -> dict[str, float]:
    folder = tmp / label
    folder.mkdir()
    fleet = Fleet(folder, {"checkpoint": {"path": str(folder / "state.db")}, "sources": [source]}, n=1)
    one_process(fleet)
    with fleet:
        wait_ready(fleet, label)
        started = time.perf_counter()
        deadline = time.monotonic() + 600
        while counted(fleet) < total:
            if time.monotonic() > deadline:
                raise SystemExit(f"{label}: not every record counted in 10 minutes:\n{fleet.logs()}")
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        proc = fleet.replicas[0].proc
        assert proc is not None
        peak = process_peak_mib(proc.pid)
    return {"rate": total / seconds, "seconds": seconds, "rss_mib": peak}


def s3_backlog(moto: str, objects: int, records: int) -> int:
    from streamer.synth import TrafficProfile, iter_text_chunks

    s3 = boto("s3", moto)
    s3.create_bucket(Bucket="backlog")
    now = dt.datetime.now(dt.UTC)
    start = int(time.time()) - 3600
    for i in range(objects):
        profile = TrafficProfile(records=records, seed=i, start_epoch=start, span_seconds=600)
        body = gzip.compress(b"".join(iter_text_chunks(profile)), 6)
        s3.put_object(Bucket="backlog", Key=aws_key(now, "daily", n=i), Body=body)
    return objects * records


def kinesis_backlog(moto: str, stream: str, shards: int, records: int, lines: int) -> int:
    """`records` Kinesis records per shard, each a gzip'd CloudWatch Logs document of `lines` flow-log lines."""
    from streamer.synth import TrafficProfile, generate_table, to_lines

    kinesis = boto("kinesis", moto)
    kinesis.create_stream(StreamName=stream, ShardCount=shards)
    table = generate_table(TrafficProfile(records=lines, seed=1, start_epoch=int(time.time()) - 3600, span_seconds=600))
    events = [{"id": str(i), "timestamp": 1, "message": str(m)} for i, m in enumerate(to_lines(table).to_pylist())]
    doc = {"messageType": "DATA_MESSAGE", "logGroup": "g", "logStream": "s", "logEvents": events}
    data = gzip.compress(json.dumps(doc).encode(), 6)
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        key = shard["HashKeyRange"]["StartingHashKey"]
        for i in range(0, records, 100):
            entries = [{"Data": data, "PartitionKey": "p", "ExplicitHashKey": key} for _ in range(min(100, records - i))]
            kinesis.put_records(StreamName=stream, Records=entries)
    return shards * records * lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=40)
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--kinesis-records", type=int, default=400, help="Kinesis records per shard (4 shards), 4x on 1 shard")
    parser.add_argument("--lines", type=int, default=1000, help="flow-log lines per Kinesis record")
    parser.add_argument("--batch-records", type=int, default=100, help="Kinesis records per GetRecords")
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    from tests.integration.conftest import CREDENTIALS, free_port

    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    moto = f"http://127.0.0.1:{port}"
    rows: list[tuple[str, dict[str, float]]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            total = s3_backlog(moto, args.objects, args.records)
            source = {"type": "s3", "bucket": "backlog", "endpoint_url": moto, "poll_interval_seconds": 0.5}
            rows.append((f"s3 polling, {args.objects} objects x {args.records:,}", timed("s3", Path(tmp), source, total)))
            for shards, per_shard in ((4, args.kinesis_records), (1, 4 * args.kinesis_records)):
                stream = f"flowlogs{shards}"
                total = kinesis_backlog(moto, stream, shards, per_shard, args.lines)
                source = {
                    "type": "kinesis",
                    "stream_name": stream,
                    "endpoint_url": moto,
                    "poll_interval_seconds": 0.2,
                    "batch_records": args.batch_records,
                }
                label = f"kinesis, {shards} shard(s) x {per_shard} records x {args.lines} lines"
                rows.append((label, timed(f"kinesis{shards}", Path(tmp), source, total)))
    finally:
        server.stop()
    print(f"{'input':<52} {'M records/s':>12} {'seconds':>8} {'peak RSS MiB':>13}")
    for label, row in rows:
        print(f"{label:<52} {row['rate'] / 1e6:>12.2f} {row['seconds']:>8.2f} {row['rss_mib']:>13.0f}")


if __name__ == "__main__":
    main()
