"""Firehose, all three paths, counted exactly: S3 objects through both S3 sources, and HTTP endpoint deliveries.

S3 objects are written as Firehose writes them (CloudWatch Logs payloads back
to back, one per line, one gzip member each; or flow-log text published
straight to Firehose) under `<prefix>YYYY/MM/DD/HH/`. HTTP deliveries are
POSTed over real HTTP on 127.0.0.1, as Firehose's HTTP endpoint destination
sends them.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import gzip
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from streamer.sources.firehose_http import FirehoseHttpSource
from streamer.synth import TrafficProfile, generate_table, to_lines
from tests.integration.conftest import (
    Truth,
    ascrape,
    boto,
    exported_totals,
    free_port,
    objects_by_outcome,
    running,
    scrape,
    service_config,
    status,
    wait_metrics,
)

pytestmark = pytest.mark.integration

#: a custom format in its own order: the sources' `log_format` must apply to payload events and text alike
FIELDS = (
    "interface-id",
    "action",
    "srcaddr",
    "dstaddr",
    "srcport",
    "dstport",
    "protocol",
    "packets",
    "bytes",
    "start",
    "end",
    "log-status",
)
LOG_FORMAT = " ".join(f"${{{f}}}" for f in FIELDS)
KEY = "s3cr3t-firehose-key"
NOW = dt.datetime.now(dt.UTC)


def flow_lines(truth: Truth | None, n: int, seed: int) -> list[str]:
    table = generate_table(TrafficProfile(records=n, enis=6, seed=seed, fields=FIELDS, start_epoch=int(time.time()) - 1800))
    if truth is not None:
        truth.add_rows(table.to_pylist())
    return [str(line) for line in to_lines(table).to_pylist()]


def payload(lines: list[str], control: bool = False) -> bytes:
    if control:
        doc = {
            "messageType": "CONTROL_MESSAGE",
            "logGroup": "",
            "logStream": "",
            "logEvents": [{"id": "", "message": "CWL CONTROL MESSAGE"}],
        }
    else:
        events = [{"id": uuid.uuid4().hex, "timestamp": 0, "message": m} for m in lines]
        doc = {
            "messageType": "DATA_MESSAGE",
            "owner": "123456789012",
            "logGroup": "/vpc/flow",
            "logStream": "eni",
            "logEvents": events,
        }
    return json.dumps(doc).encode()


def payload_docs(truth: Truth, seed: int) -> list[bytes]:
    docs = [payload(flow_lines(truth, 150, seed * 10 + i)) for i in range(3)]
    docs.insert(1, payload([], control=True))
    return docs


def firehose_objects(truth: Truth) -> dict[str, bytes]:
    """Name -> body: the three payload packings and direct-put text, as Firehose names them."""
    stamp = f"{NOW:%Y-%m-%d-%H-%M-%S}"
    return {
        f"flowlogs-1-{stamp}-{uuid.uuid4()}.gz": gzip.compress(b"".join(payload_docs(truth, 1))),  # back to back
        f"flowlogs-2-{stamp}-{uuid.uuid4()}": b"\n".join(payload_docs(truth, 2)) + b"\n",  # one per line
        f"flowlogs-3-{stamp}-{uuid.uuid4()}": b"".join(gzip.compress(d) for d in payload_docs(truth, 3)),  # gzip members
        f"flowlogs-4-{stamp}-{uuid.uuid4()}.gz": gzip.compress(("\n".join(flow_lines(truth, 400, 4)) + "\n").encode()),
    }


def put_firehose_objects(s3: Any, bucket: str, truth: Truth, prefix: str = "flows/") -> list[str]:
    keys = []
    for name, body in firehose_objects(truth).items():
        key = f"{prefix}{NOW:%Y/%m/%d/%H}/{name}"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        keys.append(key)
    old = NOW - dt.timedelta(hours=30)  # outside the lookback: never listed
    s3.put_object(
        Bucket=bucket, Key=f"{prefix}{old:%Y/%m/%d/%H}/flowlogs-9-x", Body=("\n".join(flow_lines(None, 5, 9)) + "\n").encode()
    )
    return keys


def records_total(metrics: dict[str, Any]) -> int:
    return int(sum(metrics.get("vpcflow_records_total", {}).values()))


async def test_firehose_objects_in_s3_through_the_polling_source(aws: str, tmp_path: Path) -> None:
    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="firehose-dest")
    truth = Truth()
    put_firehose_objects(s3, "firehose-dest", truth)
    source = {
        "type": "s3",
        "bucket": "firehose-dest",
        "layout": "firehose",
        "prefix": "flows/",
        "log_format": LOG_FORMAT,
        "endpoint_url": aws,
        "poll_interval_seconds": 0.3,
    }
    async with running(service_config(tmp_path, [source])) as service:
        await wait_metrics(service.port, lambda m: objects_by_outcome(m).get("ok") == 4, what="4 objects")
        metrics = await wait_metrics(service.port, lambda m: records_total(m) >= 1750, what="every record")
        assert exported_totals(metrics) == truth.totals
        assert objects_by_outcome(metrics) == {"ok": 4}
        assert "streamer_decode_errors_total" not in metrics or not any(metrics["streamer_decode_errors_total"].values())


async def test_firehose_objects_through_s3_notifications(aws: str, tmp_path: Path) -> None:
    s3, sqs = boto("s3", aws), boto("sqs", aws)
    s3.create_bucket(Bucket="firehose-dest")
    url = sqs.create_queue(QueueName="firehose-objects")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket="firehose-dest",
        NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
    )
    truth = Truth()
    put_firehose_objects(s3, "firehose-dest", truth, prefix="")
    source = {"type": "s3_sqs", "queue_url": url, "log_format": LOG_FORMAT, "endpoint_url": aws, "wait_time_seconds": 1}
    async with running(service_config(tmp_path, [source])) as service:
        # The object outside the lookback counts here: a notification names it, whatever its partition.
        metrics = await wait_metrics(service.port, lambda m: objects_by_outcome(m).get("ok") == 5, what="5 objects")
        assert records_total(metrics) == sum(v[0] for v in truth.totals.values()) + 5


# --- the HTTP endpoint source ----------------------------------------------------------------


def firehose_request(request_id: str, records: list[bytes]) -> bytes:
    doc = {
        "requestId": request_id,
        "timestamp": int(time.time() * 1000),
        "records": [{"data": base64.b64encode(r).decode()} for r in records],
    }
    return json.dumps(doc).encode()


def http_records(truth: Truth, seed: int) -> list[bytes]:
    """What one delivery carries: subscription payloads (gzip'd, as CloudWatch Logs sends them) and direct-put lines."""
    out = [gzip.compress(payload(flow_lines(truth, 40, seed * 10 + i))) for i in range(2)]
    out.append(gzip.compress(payload([], control=True)))
    out.extend((line + "\n").encode() for line in flow_lines(truth, 20, seed * 10 + 5))
    return out


def http_source(**extra: Any) -> dict[str, Any]:
    return {
        "type": "firehose_http",
        "name": "firehose",
        "listen_address": "127.0.0.1:0",
        "access_key": KEY,
        "log_format": LOG_FORMAT,
        **extra,
    }


async def endpoint(service: Any) -> str:
    """The source's URL, once it listens (which is when /readyz turns 200)."""
    source = service.sources[0]
    assert isinstance(source, FirehoseHttpSource)
    deadline = time.monotonic() + 30
    while await status(service.port, "/readyz") != 200:
        assert time.monotonic() < deadline, "the Firehose source never listened"
        await asyncio.sleep(0.05)
    return f"http://127.0.0.1:{source.port}/"


async def post(
    http: aiohttp.ClientSession, url: str, body: bytes, key: str | None = KEY, gzip_body: bool = False
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-Amz-Firehose-Access-Key"] = key
    if gzip_body:
        headers["Content-Encoding"] = "gzip"
        body = gzip.compress(body)
    async with http.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_http_deliveries_count_exactly_and_a_retry_counts_once(tmp_path: Path) -> None:
    truth = Truth()
    async with running(service_config(tmp_path, [http_source()])) as service:
        url = await endpoint(service)
        async with aiohttp.ClientSession() as http:
            for i in range(5):
                code, doc = await post(http, url, firehose_request(f"req-{i}", http_records(truth, i)), gzip_body=i % 2 == 1)
                assert (code, doc["requestId"]) == (200, f"req-{i}")
                assert isinstance(doc["timestamp"], int)
            before = exported_totals(await ascrape(service.port))
            assert before == truth.totals
            # Firehose retries with the same requestId: 200 again, nothing counted twice.
            code, doc = await post(http, url, firehose_request("req-3", http_records(Truth(), 3)))
            assert (code, doc["requestId"]) == (200, "req-3")
        metrics = await ascrape(service.port)
        assert exported_totals(metrics) == truth.totals
        assert objects_by_outcome(metrics) == {"ok": 5, "duplicate": 1}


async def test_http_rejects_bad_keys_bad_bodies_and_oversize_ones_without_counting(tmp_path: Path) -> None:
    config = service_config(tmp_path, [http_source(max_request_bytes=256 * 1024)])
    async with running(config) as service:
        url = await endpoint(service)
        good = firehose_request("r", http_records(Truth(), 1))
        async with aiohttp.ClientSession() as http:
            assert (await post(http, url, good, key="wrong"))[0] == 401
            assert (await post(http, url, good, key=None))[0] == 401
            assert (await post(http, url, b"{not json"))[0] == 400
            assert (await post(http, url, json.dumps({"requestId": "r", "records": "none"}).encode()))[0] == 400
            assert (await post(http, url, json.dumps({"records": []}).encode()))[0] == 400
            big = firehose_request("big", [("x" * 1000 + "\n").encode()] * 400)  # ~530 KB once base64'd
            assert (await post(http, url, big))[0] == 413
            bomb = b'{"requestId": "bomb", "records": [' + b" " * (64 << 20) + b"]}"  # 64 MiB of nothing, 64 KiB gzip'd
            code, doc = await post(http, url, bomb, gzip_body=True)
            assert code == 413
            assert doc["requestId"] == ""
        metrics = await ascrape(service.port)
        assert records_total(metrics) == 0
        assert objects_by_outcome(metrics) == {}
        errors = {dict(k)["reason"]: v for k, v in metrics["streamer_source_errors_total"].items()}
        assert errors == {"unauthorized": 2, "bad_request": 3, "too_large": 2}


async def test_http_100_concurrent_deliveries_are_all_counted(tmp_path: Path) -> None:
    truth = Truth()
    bodies = [firehose_request(f"c-{i}", http_records(truth, i)) for i in range(100)]
    async with running(service_config(tmp_path, [http_source()])) as service:
        url = await endpoint(service)
        busy = 0

        async def deliver(http: aiohttp.ClientSession, body: bytes) -> tuple[int, dict[str, Any]]:
            nonlocal busy
            while True:  # as Firehose does: 503 beyond max_concurrent_requests (4) is retried
                code, doc = await post(http, url, body)
                if code != 503:
                    return code, doc
                busy += 1
                await asyncio.sleep(0.05)

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as http:
            results = await asyncio.gather(*(deliver(http, b) for b in bodies))
        assert [code for code, _ in results] == [200] * 100
        assert busy > 0
        assert sorted(doc["requestId"] for _, doc in results) == sorted(f"c-{i}" for i in range(100))
        metrics = await ascrape(service.port)
        assert exported_totals(metrics) == truth.totals
        assert objects_by_outcome(metrics) == {"ok": 100}


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made by openssl."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_with_a_certificate_from_the_config(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    truth = Truth()
    async with running(service_config(tmp_path, [http_source(tls_cert_file=str(cert), tls_key_file=str(key))])) as service:
        url = (await endpoint(service)).replace("http://", "https://")
        trust = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as http:
            assert (await post(http, url, firehose_request("tls", http_records(truth, 7))))[0] == 200
        assert exported_totals(await ascrape(service.port)) == truth.totals


def test_killed_after_the_commit_before_the_response_the_retry_counts_once(tmp_path: Path) -> None:
    """kill -9 between the commit and the 200 (held there by a test seam); Firehose's retry then gets 200, counted once."""
    port, http_port = free_port(), free_port()
    config = tmp_path / "streamer.yaml"
    db = tmp_path / "state.db"
    doc = {
        "http": {"listen_address": f"127.0.0.1:{http_port}"},
        "checkpoint": {"path": str(db)},
        "sources": [http_source(listen_address=f"127.0.0.1:{port}")],
    }
    config.write_text(yaml.safe_dump(doc))
    truth = Truth()
    body = firehose_request("kill-me", http_records(truth, 3))
    log = (tmp_path / "streamer.log").open("ab")

    def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, **env},
        )
        wait_until_ready(http_port, proc)
        return proc

    def send() -> int:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/", data=body, headers={"X-Amz-Firehose-Access-Key": KEY}, method="POST"
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            return int(resp.status)

    proc = start({"STREAMER_TEST_FIREHOSE_RESPONSE_DELAY_SECONDS": "60"})
    outcome: dict[str, object] = {}
    try:
        sender = threading.Thread(target=lambda: outcome.update(result=_try(send)), daemon=True)
        sender.start()
        deadline = time.monotonic() + 30
        while not committed(db, "kill-me"):
            assert time.monotonic() < deadline, "the delivery was never committed"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        sender.join(10)
        assert isinstance(outcome.get("result"), BaseException), outcome  # no 200 ever reached Firehose
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    proc = start({})
    try:
        assert send() == 200  # the retry
        assert exported_totals(scrape(http_port)) == truth.totals
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_gzip_bomb_costs_at_most_the_limit_in_memory(tmp_path: Path) -> None:
    """1 GiB of padding in 1 MiB of gzip: 413, and the process's peak RSS grows by less than the limit plus a margin."""
    port, http_port = free_port(), free_port()
    config = tmp_path / "streamer.yaml"
    limit = 8 << 20
    doc = {
        "http": {"listen_address": f"127.0.0.1:{http_port}"},
        "checkpoint": {"path": str(tmp_path / "state.db")},
        "sources": [http_source(listen_address=f"127.0.0.1:{port}", max_request_bytes=limit)],
    }
    config.write_text(yaml.safe_dump(doc))
    bomb = gzip.compress(b'{"requestId": "bomb", "records": [' + b" " * (1 << 30) + b"]}", 9)
    assert len(bomb) < 2 << 20
    with (tmp_path / "streamer.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=log
        )
    try:
        wait_until_ready(http_port, proc)
        before = peak_rss(proc.pid)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/",
            data=bomb,
            method="POST",
            headers={"X-Amz-Firehose-Access-Key": KEY, "Content-Encoding": "gzip"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=60)
        assert refused.value.code == 413
        grown = peak_rss(proc.pid) - before
        assert grown < limit + (24 << 20), f"peak RSS grew by {grown >> 20} MiB"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _try(fn: Any) -> object:
    try:
        return fn()
    except BaseException as exc:
        return exc


def committed(db: Path, request_id: str) -> bool:
    import sqlite3

    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT 1 FROM done WHERE namespace = 'firehose' AND key = ?", (request_id,)).fetchone()
            return row is not None
    except sqlite3.OperationalError:
        return False


def wait_until_ready(http_port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        assert proc.poll() is None, "streamer exited"
        assert time.monotonic() < deadline, "streamer never became ready"
        time.sleep(0.05)


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")
