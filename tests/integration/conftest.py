"""Real servers on 127.0.0.1: moto in server mode (AWS APIs over HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gzip
import os
import socket
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamer.aws import AwsClients
from streamer.config import Config, parse_config
from streamer.service import Service
from streamer.synth import TrafficProfile, generate_table, to_lines

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(predicate, what: str, seconds: float = 30, context=lambda: "") -> None:  # type: ignore[no-untyped-def]
    """Wait (on the loop) until `predicate()` holds, failing the test after `seconds` with `what` and `context()`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what} ({context()})"
        await asyncio.sleep(0.02)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One real PostgreSQL for the session (see postgres.py)."""
    from tests.integration.postgres import running_postgres

    with running_postgres(free_port()) as pg:
        yield pg


@pytest.fixture
def pg_url(postgres_server: Any) -> str:
    """A fresh, empty database on the session's PostgreSQL."""
    return str(postgres_server.url(postgres_server.database()))


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws(moto_server: str) -> str:
    """A clean moto: every test starts with no buckets, queues or streams."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"), timeout=10).read()
    return moto_server


def boto(service: str, endpoint: str) -> Any:
    return boto3.client(service, region_name="us-east-1", endpoint_url=endpoint)


# --- traffic with known totals ----------------------------------------------------------------


class Truth:
    """Expected per-(interface, action) totals, computed in plain Python from what was generated."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], list[int]] = {}

    def add_rows(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            action = row["action"]
            key = (row["interface-id"], action if action not in (None, "-") else "-")
            acc = self.totals.setdefault(key, [0, 0, 0])
            acc[0] += 1
            acc[1] += int(row["packets"]) if row["packets"] not in (None, "-") else 0
            acc[2] += int(row["bytes"]) if row["bytes"] not in (None, "-") else 0


def flow_object(truth: Truth | None, records: int, seed: int, start_epoch: int, enis: int = 20) -> bytes:
    """A gzip'd S3-style object (header + records); its rows are added to `truth`."""
    profile = TrafficProfile(records=records, enis=enis, seed=seed, start_epoch=start_epoch, span_seconds=600)
    table = generate_table(profile)
    if truth is not None:
        truth.add_rows(table.to_pylist())
    text = " ".join(profile.fields) + "\n" + "\n".join(to_lines(table).to_pylist()) + "\n"
    return gzip.compress(text.encode())


def aws_key(
    when: dt.datetime, layout: str, account: str = "123456789012", region: str = "us-east-1", prefix: str = "", n: int = 0
) -> str:
    base = f"{prefix.strip('/')}/AWSLogs/" if prefix else "AWSLogs/"
    name = f"{account}_vpcflowlogs_{region}_fl-0abc_{when:%Y%m%dT%H%MZ}_{n:08x}.log.gz"
    if layout == "daily":
        return f"{base}{account}/vpcflowlogs/{region}/{when:%Y/%m/%d}/{name}"
    if layout == "hourly":
        return f"{base}{account}/vpcflowlogs/{region}/{when:%Y/%m/%d/%H}/{name}"
    if layout == "hive":
        return (
            f"{base}aws-account-id={account}/aws-service=vpcflowlogs/aws-region={region}/"
            f"year={when:%Y}/month={when:%m}/day={when:%d}/{name}"
        )
    raise ValueError(layout)


# --- reading what streamer exports -------------------------------------------------------------


Metrics = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse_metrics(body: str) -> Metrics:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def scrape(port: int) -> Metrics:
    """Blocking scrape: only for a service running in another process."""
    return parse_metrics(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())


async def ascrape(port: int | None) -> Metrics:
    """Scrape a service running in this event loop."""
    assert port is not None
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        return parse_metrics(await resp.text())


async def status(port: int | None, path: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as resp:
        return resp.status


def exported_totals(metrics: Metrics) -> dict[tuple[str, str], list[int]]:
    totals: dict[tuple[str, str], list[int]] = {}
    for i, name in enumerate(("vpcflow_records_total", "vpcflow_packets_total", "vpcflow_bytes_total")):
        for labels, value in metrics.get(name, {}).items():
            d = dict(labels)
            totals.setdefault((d["interface_id"], d["action"]), [0, 0, 0])[i] = int(value)
    return totals


def summed_totals(scrapes: list[Metrics]) -> dict[tuple[str, str], list[int]]:
    """What `sum()` over several replicas' /metrics gives, per (interface, action)."""
    merged: dict[tuple[str, str], list[int]] = {}
    for metrics in scrapes:
        for key, values in exported_totals(metrics).items():
            acc = merged.setdefault(key, [0, 0, 0])
            for i in range(3):
                acc[i] += values[i]
    return merged


def objects_by_outcome(metrics: Metrics) -> dict[str, int]:
    out: dict[str, int] = {}
    for labels, value in metrics.get("streamer_objects_total", {}).items():
        outcome = dict(labels)["outcome"]
        out[outcome] = out.get(outcome, 0) + int(value)
    return out


async def wait_metrics(
    port: int | None, predicate: Callable[[Metrics], bool], seconds: float = 60.0, what: str = "condition"
) -> Metrics:
    """Scrape until `predicate` holds; returns that scrape."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        metrics = await ascrape(port)
        if predicate(metrics):
            return metrics
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def polls(metrics: Metrics, source: str | None = None) -> int:
    """Completed look-ups for input (listings, receives, sweeps) of one source, or of all."""
    found = metrics.get("streamer_source_polls_total", {})
    return int(sum(v for k, v in found.items() if source is None or dict(k)["source"] == source))


async def more_polls(port: int | None, n: int = 3, source: str | None = None) -> Metrics:
    """Wait until every source has looked for input `n` more times; returns that scrape.

    For "nothing more happens" checks: instead of sleeping a guess, wait until
    the service has demonstrably looked again (and found nothing new).
    """
    before = polls(await ascrape(port), source)
    return await wait_metrics(port, lambda m: polls(m, source) >= before + n, what=f"{n} more polls")


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Service]:
    """The real service in this event loop, stopped and cleaned up on exit."""
    service = Service(config, AwsClients())
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.started.wait(), 30)
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def service_config(tmp_path: Path, sources: list[dict[str, Any]], **extra: Any) -> Config:
    doc = {
        "http": {"listen_address": "127.0.0.1:0"},
        "checkpoint": {"path": str(tmp_path / "state.db")},
        "sources": sources,
        "decode_workers": 2,
        **extra,
    }
    return parse_config(doc, {})


async def am_alerts(url: str, name: str = "VPCFlowRejectSpike") -> list[dict[str, Any]]:
    """Alerts of one name that a real Alertmanager holds."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/api/v2/alerts", params={"filter": f'alertname="{name}"'}) as r:
        return list(await r.json())


# --- Debian prometheus / prometheus-alertmanager -------------------------------------------


@contextlib.contextmanager
def server_process(argv: list[str], url: str, log: Path) -> Iterator[str]:
    """Run a server binary until the test ends; yields once its /-/ready answers."""
    import subprocess
    import time

    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(log.read_text()[-2000:]) from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def binary(*names: str) -> str:
    import shutil

    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    pytest.fail(f"{names[0]} is not installed (scripts/test.sh installs Debian's prometheus and prometheus-alertmanager)")


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager on 127.0.0.1 with clustering off; stopped after the test."""
    port = free_port()
    config = tmp_path / "alertmanager.yml"
    config.write_text("route:\n  receiver: blackhole\n  group_wait: 1s\nreceivers:\n  - name: blackhole\n")
    argv = [
        binary("prometheus-alertmanager", "alertmanager"),
        f"--config.file={config}",
        f"--storage.path={tmp_path / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    with server_process(argv, f"http://127.0.0.1:{port}", tmp_path / "alertmanager.log") as url:
        yield url


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Start a real Prometheus on 127.0.0.1 scraping a given target, with deploy/'s rules loaded."""
    import yaml

    with contextlib.ExitStack() as stack:

        def start(target: str) -> str:
            port = free_port()
            rules = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules"
            config = tmp_path / "prometheus.yml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                        "rule_files": [str(rules / "*.yml")],
                        "scrape_configs": [{"job_name": "streamer", "static_configs": [{"targets": [target]}]}],
                    }
                )
            )
            argv = [
                binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ]
            return stack.enter_context(server_process(argv, f"http://127.0.0.1:{port}", tmp_path / "prometheus.log"))

        yield start
