"""`streamer demo`: the real service against an embedded S3, with a spike to find.

An in-process moto S3 server stands in for AWS. A producer writes flow-log
objects in the AWS key layout: a dozen ENIs of steady traffic, one object
per minute of event time, delivered late and out of order. Event time runs
`speed` times faster than the wall clock (default 20x: a minute of traffic
every 3 s) until it catches up with the wall clock, then in real time, with
the first minutes back-filled so that baselines warm up in seconds. About a minute in, one ENI is scanned. The real service (S3
polling, checkpoint, windows, detector, alerts, /metrics) runs against it
and a live summary shows counters and the alert when it fires.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import gzip
import os
import random
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import pyarrow as pa
import pyarrow.compute as pc

from streamer.aws import AwsClients
from streamer.config import Config, parse_config
from streamer.export.alerts import rfc3339
from streamer.schema import V5_ALL_FIELDS
from streamer.service import Service
from streamer.synth import Spike, TrafficProfile, eni_ids, generate_table, insight_cases, insight_table, spike_table, to_lines

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

BUCKET = "demo-flow-logs"
ACCOUNT = "123456789012"
ENIS = 12
WARMUP_MINUTES = 14


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    listen: str = "127.0.0.1:9108"
    duration_seconds: float | None = None
    spike_after_seconds: float = 60.0
    speed: float = 20.0
    alertmanager_url: str | None = None
    webhook_url: str | None = None
    records_per_minute: int = 3000
    seed: int = 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_config(options: DemoOptions, endpoint: str, state_dir: Path) -> Config:
    return parse_config(
        {
            "http": {"listen_address": options.listen},
            "checkpoint": {"path": str(state_dir / "state.db")},
            "sources": [
                {
                    "type": "s3",
                    "name": "demo-bucket",
                    "bucket": BUCKET,
                    "endpoint_url": endpoint,
                    "poll_interval_seconds": 1,
                    "lookback_seconds": 6 * 3600,
                }
            ],
            # The demo shows every signal, the opt-in NACL return-reject pairing included.
            "insights": {"nacl_pairing": True},
            # Event time runs fast in the demo, so lateness is a few minutes of it.
            "anomaly": {"window_seconds": 60, "lateness_seconds": 180, "warmup_windows": 10, "min_rejected_records": 50},
            "alerts": {
                "alertmanager_url": options.alertmanager_url,
                "webhook_url": options.webhook_url,
                "resend_interval_seconds": 15,
                "hold_seconds": 900,
            },
        },
        {},
    )


class Producer:
    """Writes one object per minute of event time, late and out of order."""

    def __init__(self, s3: S3Client, options: DemoOptions, clock: Callable[[], float] = time.monotonic) -> None:
        self.s3 = s3
        self.options = options
        self.clock = clock
        self.rng = random.Random(options.seed)
        now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
        self.event_start = int(now.timestamp()) - 40 * 60
        self.enis = eni_ids(ENIS)
        self.victim = self.enis[2]
        self.spike_minute: int | None = None
        self.objects = 0
        self._pending: list[tuple[float, int, bytes]] = []

    def minute_object(self, minute: int, spike: bool) -> bytes:
        start = self.event_start + minute * 60
        profile = TrafficProfile(
            records=self.options.records_per_minute,
            enis=ENIS,
            span_seconds=60,
            start_epoch=start,
            seed=self.options.seed * 1000 + minute,
            fields=V5_ALL_FIELDS,
        )
        # Every minute also carries one case of each network insight, so each dashboard panel lights up.
        parts = [generate_table(profile), insight_table(insight_cases(start)[0])]
        if spike:
            parts.append(spike_table(Spike(self.victim, start, duration_seconds=60, records=900, seed=minute), V5_ALL_FIELDS))
        table = self.with_context(pa.concat_tables(parts).sort_by([("start", "ascending")]))
        text = " ".join(table.column_names) + "\n" + "\n".join(to_lines(table).to_pylist()) + "\n"
        return gzip.compress(text.encode(), 6)

    def with_context(self, table: pa.Table) -> pa.Table:
        """Each ENI's instance and interface type in its records (v11 `interface-type`), as AWS writes them:
        the scanned one is an instance's, two are a NAT gateway's and a Lambda function's (no instance), so
        the alert names what was hit with no EC2 call."""
        kinds = {eni: (f"i-{eni[4:]}", "interface") for eni in self.enis}
        kinds[self.enis[0]] = ("-", "nat_gateway")
        kinds[self.enis[1]] = ("-", "lambda")
        where = pc.index_in(table.column("interface-id"), value_set=pa.array(list(kinds)))
        instance = pc.coalesce(pa.array([k[0] for k in kinds.values()]).take(where), table.column("instance-id"))
        kind = pc.coalesce(pa.array([k[1] for k in kinds.values()]).take(where), pa.scalar("interface"))
        table = table.set_column(table.column_names.index("instance-id"), "instance-id", instance)
        return table.append_column("interface-type", kind)

    def key(self, minute: int) -> str:
        when = dt.datetime.fromtimestamp(self.event_start + minute * 60, dt.UTC)
        name = f"{ACCOUNT}_vpcflowlogs_us-east-1_fl-0demo1234_{when:%Y%m%dT%H%MZ}_{minute:08x}.log.gz"
        delivered = dt.datetime.now(dt.UTC)  # partitions follow delivery here, so the poller's lookback sees them
        return f"AWSLogs/{ACCOUNT}/vpcflowlogs/us-east-1/{delivered:%Y/%m/%d}/{name}"

    async def prepare(self) -> None:
        """The bucket, before the service's first listing (a newcomer's first line is not a NoSuchBucket)."""
        await self.s3.create_bucket(Bucket=BUCKET)

    async def run(self) -> None:
        started = self.clock()
        for minute in range(WARMUP_MINUTES):  # back-fill: baselines warm up at once
            await self._put(minute, self.minute_object(minute, False))
        tick = 60.0 / self.options.speed
        minute = WARMUP_MINUTES
        while True:
            elapsed = self.clock() - started
            spike = self.spike_minute is None and elapsed >= self.options.spike_after_seconds
            if spike:
                self.spike_minute = minute
            body = await asyncio.to_thread(self.minute_object, minute, spike)
            # Delivered 0-2 ticks late, so objects land out of order.
            self._pending.append((self.clock() + self.rng.choice([0, 1, 2]) * tick, minute, body))
            for item in sorted(self._pending):
                if item[0] <= self.clock():
                    self._pending.remove(item)
                    await self._put(item[1], item[2])
            minute += 1
            await asyncio.sleep(self.pause(minute, time.time()))

    def pause(self, next_minute: int, now: float) -> float:
        """Seconds to wait before writing `next_minute`: `speed` times faster than real time until event
        time catches up with the wall clock (less a minute of delivery), then real time. Flow logs never
        come from the future, and streamer would rightly keep such records out of every window."""
        return max(60.0 / self.options.speed, self.event_start + (next_minute + 2) * 60 - now)

    async def _put(self, minute: int, body: bytes) -> None:
        await self.s3.put_object(Bucket=BUCKET, Key=self.key(minute), Body=body)
        self.objects += 1


def render(service: Service, producer: Producer, elapsed: float, seen_alerts: set[str]) -> str:
    pipeline = service.pipeline
    if pipeline is None:
        return "starting ...\n"
    per_eni = pipeline.state.counters.by_interface()
    scores = pipeline.detection.detector.scores if pipeline.detection else {}
    rows = sorted(per_eni.items(), key=lambda kv: -kv[1].get("REJECT", {}).get("records", 0))
    wm = pipeline.detection.windows.watermark if pipeline.detection else None
    lines = [
        f"streamer demo  {elapsed:5.0f} s   objects written {producer.objects}   "
        f"event-time watermark {rfc3339(wm) if wm else '-'}   metrics http://{service.config.http.host}:{service.port}/metrics",
        f"{'interface':<24}{'accepted':>12}{'rejected':>12}{'bytes':>16}{'score':>9}",
    ]
    for eni, actions in rows[:ENIS]:
        acc = actions.get("ACCEPT", {})
        rej = actions.get("REJECT", {})
        score = scores.get(eni)
        mark = "  <- scanned" if eni == producer.victim and producer.spike_minute is not None else ""
        lines.append(
            f"{eni:<24}{acc.get('records', 0):>12,}{rej.get('records', 0):>12,}"
            f"{acc.get('bytes', 0) + rej.get('bytes', 0):>16,}{(f'{score[0]:.1f}' if score else '-'):>9}{mark}"
        )
    alerter = service.alerter
    if alerter is not None and alerter.active:
        for alert in alerter.active.values():
            a = alert.anomaly
            lines.append(
                f"ALERT VPCFlowRejectSpike {alerter.describe(a.interface_id)}: {a.rejected_records} rejected records in "
                f"{rfc3339(a.window_start)}..{rfc3339(a.window_end)} (baseline {a.baseline:.1f}, score {a.score:.0f}); "
                f"top sources {', '.join(f'{x} ({n})' for x, n in a.top_sources[:3])}; "
                f"top ports {', '.join(f'{p} ({n})' for p, n in a.top_ports[:3])}"
            )
            seen_alerts.add(alerter.describe(a.interface_id))
    elif producer.spike_minute is None:
        lines.append(f"(a scan on {producer.victim} starts about {producer.options.spike_after_seconds:.0f} s in)")
    else:
        lines.append("(scan under way: flow logs arrive late, the alert follows once its window closes)")
    return "\n".join(lines) + "\n"


async def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> int:
    from moto.server import ThreadedMotoServer

    for key, value in {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(key, value)  # the embedded S3 accepts anything; nothing leaves 127.0.0.1
    port = _free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tty = out.isatty()
    seen: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="streamer-demo-") as tmp:
        producer_clients = AwsClients()
        producer = Producer(await producer_clients.s3("us-east-1", endpoint), options)
        await producer.prepare()
        service = Service(demo_config(options, endpoint, Path(tmp)), AwsClients())
        service_task = asyncio.create_task(service.run(stop))
        producer_task: asyncio.Task[None] | None = None
        try:
            await asyncio.wait_for(service.started.wait(), 30)
            producer_task = asyncio.create_task(producer.run())
            started = time.monotonic()
            announced: set[str] = set()
            last_plain = 0.0
            while not stop.is_set():
                elapsed = time.monotonic() - started
                if options.duration_seconds is not None and elapsed >= options.duration_seconds:
                    break
                if producer_task.done():
                    producer_task.result()  # re-raise what stopped it
                screen = render(service, producer, elapsed, seen)
                if tty:
                    out.write("\x1b[H\x1b[2J" + screen)
                else:
                    for line in screen.splitlines():
                        if line.startswith("ALERT") and line.split()[2] not in announced:
                            announced.add(line.split()[2])
                            out.write(line + "\n")
                    if elapsed - last_plain >= 10:
                        last_plain = elapsed
                        out.write(screen.splitlines()[0] + "\n")
                out.flush()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        finally:
            stop.set()
            if producer_task is not None:
                producer_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer_task
            await producer_clients.close()
            await asyncio.wait_for(service_task, 30)
            moto.stop()
    out.write(f"demo finished: {'alert seen for ' + ', '.join(sorted(seen)) if seen else 'no alert yet'}\n")
    out.flush()
    return 0
