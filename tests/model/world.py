"""The world the model test drives: fake AWS, a Firehose sender, the real service on a real SQLite store.

Every input carries one ENI of its own, so the committed counters say, input by input, whether it was
counted, and how often. The oracle reads the checkpoint file directly (a read-only connection): an input
is committed when its done key is there (S3, Firehose) or its shard's cursor is at or past it (Kinesis),
and then its ENI holds exactly its records; otherwise none.

Faults are injected around the real parts, never inside them: the store's commit fails before or after
it lands (a subclass of the SQLite store: the database misbehaving), a decode worker's reduce step
raises MemoryError (the pipeline's reducer, wrapped), AWS's clock jumps, the Kinesis stream reshards, the
service is cancelled abruptly and started again on the same file, the Firehose port is taken at start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import dataclasses
import gzip
import itertools
import json
import socket
import sqlite3
import tempfile
import threading
import time
import traceback
import unittest.mock
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow as pa
from prometheus_client.parser import text_string_to_metric_families

import streamer.pipeline
from streamer.aggregate.anomaly import Settings
from streamer.aggregate.batch import columns
from streamer.aggregate.detection import SNAPSHOT_NAME, Detection
from streamer.config import Config, parse_config
from streamer.decode.objects import ObjectReader
from streamer.defaults import LATENESS_SECONDS, WINDOW_SECONDS
from streamer.pipeline import Store
from streamer.replay import expand, replay_counts
from streamer.service import Service
from streamer.sources.kinesis import SHARD_END, KinesisSource
from streamer.store.base import CheckpointError, Commit, Refused
from streamer.store.sqlite import CheckpointStore
from tests.model.fakes import Clock, FakeAwsClients, FakeKinesis, FakeS3, FakeSqs

BUCKET = "flows"
QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/flows"
STREAM = "flows"
KEY = "model-access-key"
FIELDS = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status"
LOG_FORMAT = " ".join(f"${{{f}}}" for f in FIELDS.split())
VISIBILITY = 30
#: real seconds within which everything must be acknowledged once faults stop
LIVENESS_SECONDS = 4.0
#: and this much more per reshard (a generation of shards to drain)
RESHARD_SECONDS = 1.5


class Violation(AssertionError):
    """A property does not hold; each kind its own class, so that Hypothesis tells the kinds apart."""


class AckedNotCommitted(Violation):
    """Safety: acknowledged upstream (SQS delete, Firehose 200), yet not in the committed state."""


class CountsDiffer(Violation):
    """Safety: an input's committed counters are not exactly its records (0 when it is not committed)."""


class MetricsWentDown(Violation):
    """Monotone: /metrics went down, or shows more than is committed."""


class NotLive(Violation):
    """Liveness: with the faults stopped, something is still not acknowledged and counted."""


class DidNotStop(Violation):
    """Liveness of a stop: a cancelled service did not finish within STOP_SECONDS (its tasks' stacks attached)."""


class ServiceDied(Violation):
    """A service (a replica) ended by itself, or with an error when it was stopped: its sources and commits
    stopped with it, which another replica's takeover or a liveness bound could otherwise hide."""


class ReplayDiffers(Violation):
    """The committed counters differ from `streamer replay` of the committed inputs."""


def check(ok: bool, kind: type[Violation], message: str) -> None:
    if not ok:
        raise kind(message)


#: a cancelled service finishes the commit in flight (the database's timeouts bound it), then stops
STOP_SECONDS = 30.0


#: services that did not stop: cancelled again when their world closes, never waited for again
STUCK: set[asyncio.Future[Any]] = set()


async def stop(task: asyncio.Future[Any], what: str, graceful: asyncio.Event | None = None) -> None:
    """Stop a service and wait until it has: cancelled (a crash, as far as a process can model one), or with
    `graceful`, its stop event set (the path SIGTERM takes). One that does not stop is a violation, not a hang
    of the whole run (pytest's timeout would hide which schedule did it): every task's stack says where. The
    model does nothing more in that schedule (Model.found) but settle and close. One that stops with an error
    is a violation too, and so is one that had ended before it was asked to."""
    if task.done():
        raise ServiceDied(f"{what} had ended by itself before its stop: {_outcome(task)}")
    if graceful is not None:
        graceful.set()
    else:
        task.cancel()
    done, _ = await asyncio.wait([task], timeout=STOP_SECONDS)
    if done:
        if not task.cancelled() and (exc := task.exception()) is not None:
            raise ServiceDied(f"{what} stopped with an error: {_outcome(task)}") from exc
        return
    STUCK.add(task)
    stacks = "\n".join(_awaiting(other) for other in asyncio.all_tasks() if other is not asyncio.current_task())
    how = "its stop was asked" if graceful is not None else "its cancellation"
    raise DidNotStop(f"{what} did not stop within {STOP_SECONDS:g} s of {how}:\n{stacks}")


async def restart_after(died: ServiceDied | None, start: Coroutine[Any, Any, None]) -> None:
    """Start a service again after a stop that may have found the old one dead (`died`), and report what was
    found first: the death, with a note of how the restart failed if it did; but a restart that did not stop
    (DidNotStop) wins, for Model.found runs nothing more of a schedule once a service is stuck."""
    try:
        await start
    except DidNotStop:
        raise
    except Exception as exc:
        if died is None:
            raise
        died.add_note(f"and then the restart failed: {type(exc).__name__}: {exc}")
        raise died from died.__cause__
    if died is not None:
        raise died


async def until_started(service: Service, task: asyncio.Task[None], what: str, seconds: float) -> None:
    """Wait until a new service says it has started; one that does not (or ends first) is stopped, and fails."""
    started = asyncio.ensure_future(service.started.wait())
    await asyncio.wait([started, task], timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    if not service.started.is_set():
        started.cancel()
        with contextlib.suppress(ServiceDied):  # what it ended with is said below
            await stop(task, what)
        raise AssertionError(f"{what} did not start: {_outcome(task) if task.done() else 'timeout'}")


def first_finding(found: list[Exception]) -> Exception:
    """Of several steps' failures, the one to report: a stuck service first, else the first found."""
    return next((e for e in found if isinstance(e, DidNotStop)), found[0])


def _outcome(task: asyncio.Future[Any]) -> str:
    """How a finished service task ended, with the traceback of its error."""
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    if exc is None:
        return "returned"
    return "".join(traceback.format_exception(exc)).strip()


def _awaiting(task: asyncio.Task[Any]) -> str:
    """A task and the whole chain of coroutines it is suspended in (a task's own stack shows only its first)."""
    lines = [repr(task)]
    coro: Any = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if coro is not None and not hasattr(coro, "cr_frame") and not hasattr(coro, "gi_frame"):
            lines.append(f"  awaiting {coro!r}")
            break
    return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class Input:
    """One unit of input as the world sent it; `key` is its done key (S3, Firehose) or its sequence number."""

    kind: str  # "s3" | "kinesis" | "firehose"
    eni: str
    lines: list[str]
    key: str
    shard: str | None = None
    index: int = 0  # its place in the shard (Kinesis)


class Faults:
    """What the next calls do wrong; the model arms them, the store and the reducer consume them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: one entry per coming commit_group call: None (works), "before" (fails, nothing written), "after"
        #: (lands, then raises: the outcome is unknown to the caller)
        self.commits: deque[str | None] = deque()
        #: reduce steps to pass before one raises MemoryError (None: none will)
        self.memory: int | None = None

    def next_commit(self) -> str | None:
        with self.lock:
            return self.commits.popleft() if self.commits else None

    def next_reduce(self) -> bool:
        with self.lock:
            if self.memory is None:
                return False
            if self.memory == 0:
                self.memory = None
                return True
            self.memory -= 1
            return False

    def clear(self) -> None:
        with self.lock:
            self.commits.clear()
            self.memory = None


class InjectsCommitFaults:
    """Put before a real store class: its group commits fail when the model says so (before they land, or
    after they landed: an unknown outcome). Either store, one rule."""

    faults: Faults

    def commit_group(self, changes: Sequence[Commit]) -> list[Refused]:
        fault = self.faults.next_commit()
        if fault == "before":
            raise CheckpointError("injected: the commit failed before it landed")
        refused: list[Refused] = super().commit_group(changes)  # type: ignore[misc]
        if fault == "after" and not refused:
            raise CheckpointError("injected: the commit landed, then the connection dropped")
        return refused


class FaultyStore(InjectsCommitFaults, CheckpointStore):
    """The real SQLite store, whose group commits fail when the model says so."""

    def __init__(self, path: Path, faults: Faults) -> None:
        super().__init__(path)
        self.faults = faults


class ModelService(Service):
    """The real service; only its checkpoint store is the fault-injecting one."""

    faults: Faults

    async def _open_store(self) -> Store:
        return Store(FaultyStore(self.config.checkpoint.path, self.faults))


#: the faults of the world whose service is running in this context (each world's service runs in its own:
#: two worlds in one process, SQLite's and PostgreSQL's, each get their own faults)
FAULTS: contextvars.ContextVar[Faults | None] = contextvars.ContextVar("model_faults", default=None)


def _faulty_reducer(real: Callable[..., Callable[[pa.Table], Any]]) -> Callable[..., Callable[[pa.Table], Any]]:
    def make(*args: Any, **kwargs: Any) -> Callable[[pa.Table], Any]:
        reduce = real(*args, **kwargs)
        faults = FAULTS.get()  # made on the loop, in the service's context; called on a decode worker
        if faults is None:
            return reduce

        def faulty(table: pa.Table) -> Any:
            if faults.next_reduce():
                raise MemoryError("injected: a decode worker ran out of memory")
            return reduce(table)

        return faulty

    make.model_real = real  # type: ignore[attr-defined]
    return make


def in_context(faults: Faults, step: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A task (a service's run) whose reduce steps consult `faults`."""
    ctx = contextvars.copy_context()
    ctx.run(FAULTS.set, faults)
    return asyncio.create_task(step, context=ctx)


@dataclasses.dataclass
class Committed:
    """What the checkpoint file holds right now."""

    records: dict[str, int]
    done: set[tuple[str, str]]
    cursors: dict[str, str]


class World:
    """Fake AWS, the service on its store, the inputs sent, and the checks."""

    def __init__(self, sources: Sequence[str]) -> None:
        self.sources = tuple(sources)
        self.dir = Path(tempfile.mkdtemp(prefix="model-"))
        self.db = self.dir / "state.db"
        self.clock = Clock()
        self.s3 = FakeS3()
        self.s3.create_bucket(BUCKET)
        self.sqs = FakeSqs(self.clock)
        self.sqs.create_queue(QUEUE)
        self.sqs.on_delete = self._deleted
        self.kinesis = FakeKinesis(self.clock, STREAM, shards=2)
        self.kinesis.cursor_of = lambda shard: self.committed().cursors.get(shard)
        self.clients = FakeAwsClients(self.s3, self.sqs, self.kinesis)
        self.faults = Faults()
        self.firehose_port = free_port()
        self.inputs: list[Input] = []
        #: SQS message id -> the inputs it names; messages deleted (acknowledged)
        self.messages: dict[str, list[Input]] = {}
        self.deleted: list[str] = []
        #: Firehose request ids answered 200 (acknowledged), the sender's tasks
        self.answered: set[str] = set()
        self.senders: set[asyncio.Task[None]] = set()
        self.stray: set[asyncio.Task[Any]] = set()
        self.service: ModelService | None = None
        self.task: asyncio.Task[None] | None = None
        #: the running service's stop event (set: the path SIGTERM takes)
        self.stop_event = asyncio.Event()
        self.http: aiohttp.ClientSession | None = None
        #: highest records total scraped from /metrics so far (restarts included)
        self.scraped = 0
        self.reshards = 0
        #: Firehose requests on their way (the model waits for them between steps)
        self.posting = 0
        self.port_holder: socket.socket | None = None
        if not hasattr(streamer.pipeline.reducer, "model_real"):  # once per process, whatever the worlds
            streamer.pipeline.reducer = _faulty_reducer(streamer.pipeline.reducer)  # type: ignore[assignment]

    # --- the service ---------------------------------------------------------------------------

    def config(self) -> Config:
        sources: list[dict[str, Any]] = []
        if "s3" in self.sources:
            sources.append(
                {
                    "type": "s3_sqs",
                    "name": "sqs",
                    "queue_url": QUEUE,
                    "wait_time_seconds": 1,
                    "visibility_timeout_seconds": VISIBILITY,
                    "max_receive_count": 1000,
                    "backlog_interval_seconds": 3600,
                }
            )
        if "kinesis" in self.sources:
            sources.append(
                {
                    "type": "kinesis",
                    "name": "kinesis",
                    "stream_name": STREAM,
                    "start_position": "latest",
                    "poll_interval_seconds": 0.02,
                    "shard_refresh_seconds": 0.05,
                    "batch_records": 3,
                    "log_format": LOG_FORMAT,
                }
            )
        if "firehose" in self.sources:
            sources.append(
                {
                    "type": "firehose_http",
                    "name": "firehose",
                    "listen_address": f"127.0.0.1:{self.firehose_port}",
                    "access_key": KEY,
                    "log_format": LOG_FORMAT,
                }
            )
        doc = {
            "http": {"listen_address": "127.0.0.1:0"},
            "checkpoint": {"path": str(self.db), "group_commit_delay_seconds": 0.3},
            "sources": sources,
            "decode_workers": 1,
            "insights": {"nacl_pairing": True},  # opt-in: the model checks its pairing too
        }
        return parse_config(doc, {})

    async def start(self) -> None:
        before = self.committed()  # nothing runs now: what the new service must restore
        service = ModelService(self.config(), self.clients)  # type: ignore[arg-type]
        service.faults = self.faults
        stop_event = asyncio.Event()
        task = in_context(self.faults, service.run(stop_event))
        await until_started(service, task, "the service", 15)
        self.service, self.task, self.stop_event = service, task, stop_event
        for source in service.sources:
            if isinstance(source, KinesisSource):
                source.retry_seconds = 0.05
        for _ in range(50):  # the sources get going (a Firehose port still taken: not yet)
            if service.ready():
                break
            await asyncio.sleep(0.02)
        # After a restart the live counters are the committed ones (unless a commit came in and was applied since:
        # one that landed and then raised counts no commit, but the pipeline reloads what landed).
        assert service.pipeline is not None
        if service.pipeline.commits == 0:
            live = _records(service.pipeline.state.counters.table().to_pylist())
            check(
                live in (before.records, self.committed().records),
                MetricsWentDown,
                "restored counters differ from the committed state",
            )

    async def crash(self, port_taken: bool = False, graceful: bool = False) -> None:
        """Cancel everything abruptly (the store's file is all that is kept), or stop it as SIGTERM does
        (`graceful`), then start a new service on it."""
        assert self.task is not None
        task, self.service, self.task = self.task, None, None
        died: ServiceDied | None = None
        try:
            await stop(task, "the service", self.stop_event if graceful else None)
        except ServiceDied as exc:  # a finding; the schedule goes on with a new service
            died = exc
        if port_taken:  # the Firehose port is busy for a moment: its source fails at start and is restarted
            self.port_holder = await self._take_port()

        async def start_again() -> None:
            await self.start()
            if self.port_holder is not None:
                await asyncio.sleep(0.2)
                self.release_port()

        await restart_after(died, start_again())

    async def _take_port(self) -> socket.socket | None:
        """Listen on the Firehose port (a cancelled run may still hold it for a moment: then try again)."""
        for _ in range(40):
            holder = socket.socket()
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                holder.bind(("127.0.0.1", self.firehose_port))
            except OSError:
                holder.close()
                await asyncio.sleep(0.05)
                continue
            holder.listen(1)
            return holder
        return None  # still held: this restart finds the port free

    def release_port(self) -> None:
        if self.port_holder is not None:
            self.port_holder.close()
            self.port_holder = None

    # --- faults armed by the model ----------------------------------------------------------------

    def arm_commit(self, kind: str, skip: int) -> None:
        """The skip+1-th group commit from now fails before it lands ("before"), or lands and then raises."""
        self.faults.commits.extend([None] * skip + [kind])

    def arm_memory(self, skip: int) -> None:
        """The skip+1-th reduce step on a decode worker from now raises MemoryError."""
        self.faults.memory = skip

    def jump(self, seconds: int) -> None:
        """AWS's clock moves on."""
        self.clock.advance(seconds)

    # --- inputs --------------------------------------------------------------------------------

    def _new(self, kind: str, records: int) -> Input:
        n = len(self.inputs)
        eni = f"eni-{n:017x}"
        now = int(time.time())
        # A connection out, and its reply REJECTed on the way back (a NACL return reject: an insight that pairs).
        host, peer = f"10.0.{n % 250}.7", f"10.1.{n % 250}.9"
        flows = [f"{host} {peer} 40000 443 ACCEPT", f"{peer} {host} 443 40000 REJECT", f"{host} {peer} 40001 443 ACCEPT"]
        lines = []
        for i in range(records):
            src, dst, sport, dport, action = flows[i].split()
            counts = f"{i + 2} {100 * (i + 1)} {now - 120} {now - 60}"
            lines.append(f"2 123456789012 {eni} {src} {dst} {sport} {dport} 6 {counts} {action} OK")
        item = Input(kind, eni, lines, "")
        self.inputs.append(item)
        return item

    async def s3_object(self, records: int, copies: int) -> None:
        """An object lands in S3 and its notification is sent `copies` times (S3 may send duplicates)."""
        item = self._new("s3", records)
        key = f"AWSLogs/123456789012/vpcflowlogs/us-east-1/2026/12/07/{item.eni}.log.gz"
        body = gzip.compress((FIELDS + "\n" + "\n".join(item.lines) + "\n").encode())
        await self.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        etag = (await self.s3.get_object(Bucket=BUCKET, Key=key))["ETag"].strip('"')
        item.key = f"{BUCKET}/{key}#{etag}"
        event = {
            "Records": [
                {
                    "eventName": "ObjectCreated:Put",
                    "eventTime": "2026-12-07T10:00:00.000Z",
                    "s3": {"bucket": {"name": BUCKET}, "object": {"key": key, "eTag": etag, "size": len(body)}},
                }
            ]
        }
        for _ in range(copies):
            sent = await self.sqs.send_message(QueueUrl=QUEUE, MessageBody=json.dumps(event))
            self.messages[sent["MessageId"]] = [item]

    def _deleted(self, message_id: str) -> None:
        self.deleted.append(message_id)

    async def kinesis_record(self, records: int, which: int) -> None:
        """A CloudWatch Logs payload (gzip'd JSON, as a subscription filter writes it) onto an open shard."""
        item = self._new("kinesis", records)
        shards = self.kinesis.open_shards()
        shard = self.kinesis.shards[shards[which % len(shards)]]
        events = [{"id": uuid.uuid4().hex, "timestamp": 0, "message": line} for line in item.lines]
        doc = {
            "messageType": "DATA_MESSAGE",
            "owner": "123456789012",
            "logGroup": "/vpc",
            "logStream": "eni",
            "logEvents": events,
        }
        put = await self.kinesis.put_record(
            StreamName=STREAM, Data=gzip.compress(json.dumps(doc).encode()), PartitionKey="k", ExplicitHashKey=str(shard.lo)
        )
        item.key, item.shard, item.index = put["SequenceNumber"], put["ShardId"], len(shard.records) - 1

    async def reshard(self, split: bool, which: int, then: int = 0) -> None:
        """Split or merge, while the producer keeps writing: `then` records go to the new shards at once."""
        await self._reshard(split, which)
        for i in range(then):
            await self.kinesis_record(1 + i % 2, -1 - i)

    async def _reshard(self, split: bool, which: int) -> None:
        self.reshards += 1
        shards = self.kinesis.open_shards()
        shard = self.kinesis.shards[shards[which % len(shards)]]
        if split and shard.hi > shard.lo:
            await self.kinesis.split_shard(
                StreamName=STREAM, ShardToSplit=shard.id, NewStartingHashKey=str((shard.lo + shard.hi) // 2 + 1)
            )
            return
        ordered = sorted((self.kinesis.shards[s] for s in shards), key=lambda s: s.lo)
        pairs = [(a, b) for a, b in itertools.pairwise(ordered) if a.hi + 1 == b.lo]
        if pairs:
            a, b = pairs[which % len(pairs)]
            await self.kinesis.merge_shards(StreamName=STREAM, ShardToMerge=a.id, AdjacentShardToMerge=b.id)

    async def firehose_request(self, records: int, concurrent: bool) -> None:
        item = self._new("firehose", records)
        item.key = f"req-{uuid.uuid4()}"
        self._send(item, concurrent)

    async def firehose_again(self, which: int) -> None:
        """Firehose sends a request again that it sent before (a response lost on the way): counted once."""
        sent = [i for i in self.inputs if i.kind == "firehose"]
        if sent:
            self._send(sent[which % len(sent)], concurrent=False)

    def _send(self, item: Input, concurrent: bool) -> None:
        task = asyncio.create_task(self._deliver(item, concurrent))
        self.senders.add(task)
        task.add_done_callback(self.senders.discard)

    async def _deliver(self, item: Input, concurrent: bool) -> None:
        """Firehose's sender: retries a request until it gets a 200, with the same requestId. `concurrent`: a
        second copy goes out before the first is answered (a timeout and a retry); the first answer wins."""
        body = json.dumps(
            {
                "requestId": item.key,
                "timestamp": int(time.time() * 1000),
                "records": [{"data": base64.b64encode((line + "\n").encode()).decode()} for line in item.lines],
            }
        ).encode()
        copies = 2 if concurrent else 1
        while True:
            attempts = [asyncio.create_task(self._post(body)) for _ in range(copies)]
            self.stray.update(attempts)
            copies = 1
            first = next(asyncio.as_completed(attempts))
            status = await first
            if status == 200:
                self.answered.add(item.key)
                return
            await asyncio.sleep(0.05)

    async def _post(self, body: bytes) -> int | None:
        assert self.http is not None
        headers = {"Content-Type": "application/json", "X-Amz-Firehose-Access-Key": KEY}
        self.posting += 1
        try:
            url = f"http://127.0.0.1:{self.firehose_port}/"
            async with self.http.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=3)) as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None
        finally:
            self.posting -= 1

    def idle(self) -> bool:
        """Nothing in flight: no input being read, decoded or committed, no message visible, no request on its
        way, every shard being read read to its end."""
        service = self.service
        if service is None:
            return False
        busy = sum(
            service.registry.get_sample_value("streamer_inputs_in_flight", {"source": s.name}) or 0 for s in service.sources
        )
        visible = any(m.visible_at <= self.clock.now for m in self.sqs.queues[QUEUE].values())
        behind = any(
            self.kinesis.served.get(shard, 0) < len(self.kinesis.shards[shard].records)
            for source in service.sources
            if isinstance(source, KinesisSource)
            for shard in source.reading
        )
        return not busy and not visible and not self.posting and not behind

    async def quiet(self, limit: float = 1.0) -> None:
        """Let the service run until nothing is in flight (twice in a row), at most `limit` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        calm = 0
        while calm < 2 and loop.time() < deadline:
            await asyncio.sleep(0.03)
            calm = calm + 1 if self.idle() else 0

    # --- the oracle ----------------------------------------------------------------------------

    def committed(self) -> Committed:
        if not self.db.exists():
            return Committed({}, set(), {})
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            db.execute("BEGIN")
            records = dict(db.execute("SELECT interface_id, SUM(records) FROM counters GROUP BY interface_id").fetchall())
            done = {(ns, key) for ns, key in db.execute("SELECT namespace, key FROM done")}
            cursors = dict(db.execute("SELECT partition, value FROM cursors WHERE source = 'kinesis'").fetchall())
            db.execute("COMMIT")
        finally:
            db.close()
        return Committed(records, done, cursors)

    def is_committed(self, item: Input, state: Committed) -> bool:
        if item.kind == "kinesis":
            cursor = state.cursors.get(item.shard or "")
            return cursor == SHARD_END or (cursor is not None and int(cursor) >= int(item.key))
        return ("s3" if item.kind == "s3" else "firehose", item.key) in state.done

    def excused(self, item: Input) -> bool:
        """A record `start_position: latest` may skip: on one of the stream's first shards, before a LATEST iterator
        taken while the shard had no committed cursor."""
        if item.kind != "kinesis" or item.shard is None:
            return False
        shard = self.kinesis.shards[item.shard]
        return shard.parent is None and item.index < max(self.kinesis.latest.get(item.shard, [0]))

    def running(self) -> dict[str, asyncio.Task[None]]:
        """The services that should be running now, by name."""
        return {"the service": self.task} if self.task is not None else {}

    def check_safety(self) -> None:
        """Every service still runs; acknowledged upstream => committed; committed counters == the sum over
        exactly the committed inputs."""
        for what, task in self.running().items():
            check(not task.done(), ServiceDied, f"{what} ended by itself: {_outcome(task) if task.done() else ''}")
        state = self.committed()
        for message in self.deleted:
            for item in self.messages[message]:
                check(
                    self.is_committed(item, state), AckedNotCommitted, f"SQS message {message} deleted, {item.key} not committed"
                )
        for item in self.inputs:
            if item.kind == "firehose" and item.key in self.answered:
                check(self.is_committed(item, state), AckedNotCommitted, f"Firehose {item.key} answered 200, not committed")
        for item in self.inputs:
            counted = state.records.get(item.eni, 0)
            expected = len(item.lines) if self.is_committed(item, state) else 0
            if expected and self.excused(item) and counted == 0:
                continue  # skipped by `latest` (never read), and the cursor moved past it: right
            check(
                counted == expected, CountsDiffer, f"{item.kind} input {item.key} ({item.eni}): counted {counted}, not {expected}"
            )

    async def check_monotone(self) -> None:
        """The records total scraped from /metrics never decreases (restarts included) and never exceeds what
        is committed."""
        if self.service is None or self.service.port is None or self.http is None:
            return
        async with self.http.get(f"http://127.0.0.1:{self.service.port}/metrics") as resp:
            text = await resp.text()
        total = 0
        for family in text_string_to_metric_families(text):
            if family.name == "vpcflow_records":
                total += int(sum(s.value for s in family.samples if s.name == "vpcflow_records_total"))
        committed = sum(self.committed().records.values())
        check(total >= self.scraped, MetricsWentDown, f"/metrics went down: {self.scraped} -> {total}")
        check(total <= committed, MetricsWentDown, f"/metrics shows {total} records, only {committed} are committed")
        self.scraped = total

    def waiting(self) -> list[str]:
        state = self.committed()
        out = [f"{i.kind} {i.key}" for i in self.inputs if not self.is_committed(i, state) and not self.excused(i)]
        out += [f"SQS message {m}" for m in self.sqs.queues[QUEUE]]
        out += [f"Firehose {i.key} unanswered" for i in self.inputs if i.kind == "firehose" and i.key not in self.answered]
        return out

    async def settle(self) -> None:
        """Liveness: with the faults stopped, every input is acknowledged and counted within a bounded time."""
        self.faults.clear()
        self.release_port()
        loop = asyncio.get_running_loop()
        # A child shard is read once its parents are drained, which the source looks for every second:
        # each reshard may add a generation to wait through.
        deadline = loop.time() + LIVENESS_SECONDS + RESHARD_SECONDS * self.reshards
        moved = loop.time()
        while (left := self.waiting()) and loop.time() < deadline:
            if loop.time() - moved > 0.5:  # held messages' visibility runs out: SQS redelivers them
                self.clock.advance(VISIBILITY + 1)
                moved = loop.time()
            await asyncio.sleep(0.05)
        check(not left, NotLive, f"still not acknowledged and counted after the faults stopped: {left[:5]}")
        self.check_safety()

    def check_replay(self) -> None:
        """The committed counters (per ENI and action) and insights (NACL return rejects paired) equal
        `streamer replay` of the same (committed) inputs."""
        state = self.committed()
        folder = self.dir / "replay"
        folder.mkdir(exist_ok=True)
        for n, item in enumerate(self.inputs):
            if self.is_committed(item, state) and not (self.excused(item) and state.records.get(item.eni, 0) == 0):
                # (a record `latest` skipped is committed past, never counted: replay must not count it either)
                (folder / f"{n:06d}.log").write_text(FIELDS + "\n" + "\n".join(item.lines) + "\n")
        # Replay's event-time windows as they are before its final flush (live, nothing closes within a schedule:
        # every record is minutes old, the lateness is 15 minutes).
        flushed: list[pa.Table] = []
        real_flush = Detection.flush

        def flush(detection: Detection) -> tuple[Detection, list[Any]]:
            flushed.append(detection.windows.stats)
            return real_flush(detection)

        windows = self.committed_windows()
        with ThreadPoolExecutor(1) as pool, unittest.mock.patch.object(Detection, "flush", flush):
            reader = ObjectReader(columns=columns(True, True, nacl_pairing=True))
            inputs = expand([str(folder)]) if any(folder.iterdir()) else []
            detection = Detection.create(Settings(window_seconds=WINDOW_SECONDS), LATENESS_SECONDS)
            replayed, _ = (
                replay_counts(
                    inputs, reader, pool, detection=detection, insights_window_seconds=WINDOW_SECONDS, nacl_pairing=True
                )
                if inputs
                else (None, [])
            )
        replayed_windows = _window_totals(flushed[-1]) if flushed else {}
        want = _totals(replayed.counters.table().to_pylist()) if replayed is not None else {}
        want_insights = sorted(tuple(r.values()) for r in replayed.insights.to_pylist()) if replayed is not None else []
        rows, errors, found = self.committed_rows()
        insights = sorted(tuple(r) for r in found)
        want_insights = self.comparable_insights(want_insights)
        check(_totals(rows) == want, ReplayDiffers, "committed counters differ from replay of the committed inputs")
        if windows is not None:
            check(
                windows == replayed_windows,
                ReplayDiffers,
                f"committed event-time windows {windows} differ from replay's {replayed_windows}",
            )
        check(not errors, ReplayDiffers, f"decode errors committed for valid input: {errors}")
        check(insights == want_insights, ReplayDiffers, f"committed insights {insights} differ from replay's {want_insights}")

    def committed_rows(self) -> tuple[list[dict[str, Any]], list[Any], list[Any]]:
        """The committed counter rows, decode errors and insights, as they are in the store."""
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            cols = ("interface_id", "action", "records", "packets", "bytes")
            rows = [dict(zip(cols, r, strict=True)) for r in db.execute(f"SELECT {', '.join(cols)} FROM counters")]
            errors = db.execute("SELECT reason, count FROM decode_errors").fetchall()
            insights = db.execute("SELECT kind, key1, key2, records, bytes FROM insights").fetchall()
        finally:
            db.close()
        return rows, errors, insights

    def comparable_insights(self, replayed: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Replay's insights in the shape the store keeps them (here: as they are)."""
        return replayed

    def committed_windows(self) -> dict[tuple[str, int], tuple[int, ...]] | None:
        """The event-time windows' totals in the committed detection snapshot, per ENI and window (None: no
        snapshot, nothing committed yet)."""
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM snapshots WHERE name = ?", (SNAPSHOT_NAME,)).fetchone()
        finally:
            db.close()
        if row is None:
            return {} if not self.committed().records else None
        restored = Detection.restore(bytes(row[0]), Settings(window_seconds=WINDOW_SECONDS), LATENESS_SECONDS)
        return _window_totals(restored.windows.stats)

    # --- lifetime ------------------------------------------------------------------------------

    async def open(self) -> None:
        self.http = aiohttp.ClientSession()
        await self.start()

    async def close(self) -> None:
        for task in [*self.senders, *self.stray]:
            task.cancel()
        await asyncio.gather(*self.senders, *self.stray, return_exceptions=True)
        stuck: DidNotStop | ServiceDied | None = None
        if self.task is not None:
            try:
                await stop(self.task, "the service", self.stop_event)  # as SIGTERM stops it
            except (DidNotStop, ServiceDied) as exc:  # raised once the rest is closed: a finding
                stuck = exc
        for left in STUCK:  # their loop closes with them: they are gone with it
            left.cancel()
        STUCK.clear()
        if self.http is not None:
            await self.http.close()
        self.release_port()
        if stuck is not None:
            raise stuck


def _records(rows: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        out[row["interface_id"]] = out.get(row["interface_id"], 0) + int(row["records"])
    return {k: v for k, v in out.items() if v}


def _totals(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[int, int, int]]:
    out: dict[tuple[str, str], tuple[int, int, int]] = {}
    for row in rows:
        key = (row["interface_id"], row["action"])
        r, p, b = out.get(key, (0, 0, 0))
        out[key] = (r + int(row["records"]), p + int(row["packets"]), b + int(row["bytes"]))
    return {k: v for k, v in out.items() if v[0]}


def _window_totals(stats: pa.Table) -> dict[tuple[str, int], tuple[int, ...]]:
    sums = ("records", "rejected_records", "rejected_packets", "rejected_bytes", "accepted_records")
    out: dict[tuple[str, int], tuple[int, ...]] = {}
    for row in stats.to_pylist():
        key = (row["interface_id"], int(row["window_start"]))
        before = out.get(key, (0,) * len(sums))
        out[key] = tuple(a + int(row[c]) for a, c in zip(before, sums, strict=True))
    return {k: v for k, v in out.items() if v[0]}


@contextlib.contextmanager
def running_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()
