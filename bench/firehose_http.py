"""Peak RSS of a real `streamer run` under many concurrent maximum-size Firehose HTTP requests.

    python bench/firehose_http.py [--clients 50] [--max-request-mib 64]

Starts `streamer run` with one firehose_http source (default
`max_concurrent_requests`, 4), then `--clients` clients each POST a request
as large as `max_request_bytes` allows (the body plus what its gzip'd
records inflate to), all at once, and retry on 503 as Firehose does, until
every one got 200. Two kinds of request: gzip'd CloudWatch Logs payloads
(body about a ninth of the limit, inflating to the rest) and flow-log lines
put directly (the body is the limit). Prints the server's peak RSS (VmHWM)
and that every record was counted; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamer.synth import to_lines  # noqa: E402
from tests.firehose_data import payload_stream  # noqa: E402
from tests.integration.conftest import free_port, parse_metrics  # noqa: E402

KEY = "bench-key"


def max_request(kind: str, limit: int) -> tuple[list[bytes], int]:
    """Records filling one request up to `limit` (body + inflated records), and how many flow-log records they hold."""
    docs, table = payload_stream(limit, seed=11)
    records: list[bytes] = []
    body = inflated = count = 0
    if kind == "payloads":
        for doc in docs:
            packed = gzip.compress(doc, 6)
            if body + inflated + len(doc) + len(packed) * 4 // 3 + 64 > limit:
                break
            records.append(packed)
            body += len(packed) * 4 // 3 + 16
            inflated += len(doc)
            count += doc.count(b'"message":')
        return records, count - sum(1 for d in docs[: len(records)] if b"CONTROL_MESSAGE" in d)
    lines = [str(x).encode() + b"\n" for x in to_lines(table).to_pylist()]
    batch: list[bytes] = []
    for line in lines:
        if body + (len(line) + 1) * 4 // 3 + 16 > limit - 4096:
            break
        batch.append(line)
        body += len(line) * 4 // 3 + 16
        count += 1
        if len(batch) == 50:
            records.append(b"".join(batch))
            batch = []
    if batch:
        records.append(b"".join(batch))
    return records, count


def records_json(records: list[bytes]) -> bytes:
    """The shared part of every request: the records array and the closing brace."""
    return json.dumps([{"data": base64.b64encode(r).decode()} for r in records]).encode() + b"}"


async def body_of(request_id: str, shared: memoryview) -> AsyncIterator[bytes]:
    """One request streamed in 1 MiB steps over the shared records, so 50 clients hold one copy."""
    yield json.dumps({"requestId": request_id, "timestamp": 0}).encode()[:-1] + b', "records": '
    for at in range(0, len(shared), 1 << 20):
        yield bytes(shared[at : at + (1 << 20)])


def vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


async def fire(url: str, ids: list[str], shared: memoryview) -> dict[int, int]:
    statuses: dict[int, int] = {}

    async def one(http: aiohttp.ClientSession, request_id: str) -> None:
        while True:
            async with http.post(url, data=body_of(request_id, shared), headers={"X-Amz-Firehose-Access-Key": KEY}) as resp:
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                if resp.status == 200:
                    return
                if resp.status != 503:
                    raise RuntimeError(f"{resp.status}: {await resp.text()}")
            await asyncio.sleep(0.2)

    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=len(ids)), timeout=timeout) as http:
        await asyncio.gather(*(one(http, i) for i in ids))
    return statuses


def run(kind: str, clients: int, limit: int) -> None:
    records, count = max_request(kind, limit)
    shared = memoryview(records_json(records))
    ids = [f"{kind}-{i}" for i in range(clients)]
    with tempfile.TemporaryDirectory() as tmp:
        port, http_port = free_port(), free_port()
        config = Path(tmp) / "streamer.yaml"
        source = {
            "type": "firehose_http",
            "listen_address": f"127.0.0.1:{port}",
            "access_key": KEY,
            "max_request_bytes": limit,
        }
        doc = {"http": {"listen_address": f"127.0.0.1:{http_port}"}, "checkpoint": {"path": f"{tmp}/state.db"}}
        config.write_text(yaml.safe_dump({**doc, "sources": [source]}))
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=open(Path(tmp) / "log", "wb"),  # noqa: SIM115
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    time.sleep(0.1)
                if time.monotonic() > deadline:
                    raise RuntimeError("streamer never became ready")
            idle = vm(proc.pid, "VmRSS")
            start = time.monotonic()
            statuses = asyncio.run(fire(f"http://127.0.0.1:{port}/", ids, shared))
            seconds = time.monotonic() - start
            peak = vm(proc.pid, "VmHWM")
            metrics = parse_metrics(urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics").read().decode())
            counted = int(sum(metrics.get("vpcflow_records_total", {}).values()))
        finally:
            proc.terminate()
            proc.wait(30)
    print(
        f"{kind:<9} {clients} x {len(shared) / 2**20:5.1f} MiB bodies ({len(records)} records, max_request_bytes "
        f"{limit >> 20} MiB): peak RSS {peak / 2**20:.0f} MiB (idle {idle / 2**20:.0f} MiB), answers {statuses}, "
        f"{seconds:.0f} s, records counted {counted:,} of {count * clients:,}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--max-request-mib", type=int, default=64)
    parser.add_argument("--kind", choices=["payloads", "lines", "both"], default="both")
    args = parser.parse_args()
    for kind in ("payloads", "lines") if args.kind == "both" else (args.kind,):
        run(kind, args.clients, args.max_request_mib << 20)


if __name__ == "__main__":
    main()
