"""What every source hands the pipeline, and what it gets back.

A source finds input and says where it is; it never decides that something
is done. It calls `Sink.process` with a Delivery; the pipeline decodes it,
commits the positions together with the state they produced, and returns.
Only then does the source acknowledge upstream (delete the SQS message,
advance its own in-memory cursor, answer the HTTP request).

A source is a plug-in: one module holding its config model and its runner,
listed once in `registry.py`. The config *builds* the running source from a
`BuildContext` (Vector's `SourceConfig::build`), so the service never needs
to know which kinds exist.

    SourceError                 reading from the source failed (try again later)
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from streamer.aws import AwsClients
from streamer.store.base import Done

#: Namespace of done keys for S3 objects, shared by the polling and SQS sources
#: so that both reading one bucket never count an object twice.
S3_NAMESPACE = "s3"
#: what `Sink.process` returns for an input read under a lease that another replica holds now
LEASE_LOST = "lease_lost"
#: what `Sink.process` returns for an input counted before (its done key exists, or its cursor moved on)
DUPLICATE = "duplicate"


def aws_error_reason(exc: BaseException) -> str:
    """A bounded label for an AWS failure: the error code, else the exception type."""
    code = getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(exc, "response") else None
    return str(code) if code else type(exc).__name__


async def single_chunk(body: bytes) -> AsyncIterator[bytes]:
    """A delivery body that is already in memory (Kinesis batches, CloudWatch sweeps)."""
    if body:
        yield body


class SourceError(Exception):
    """Reading input failed in a way that may pass (network, throttling, 5xx)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass
class Delivery:
    """One unit of input: its bytes, and the positions that mark it done."""

    location: str
    body: Callable[[], AsyncIterator[bytes]]
    done: list[Done] = dataclasses.field(default_factory=list)
    cursors: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    #: when the input reached the source (S3 LastModified), for delivery delay
    arrived_at: float | None = None
    log_format: tuple[str, ...] | None = None
    #: lines with no header by construction (CloudWatch events): never sniff one
    headerless: bool = False
    #: problems the source already found (e.g. a Kinesis record that is not a payload)
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    #: source state committed with this delivery (e.g. recently seen event ids)
    snapshots: dict[str, bytes] = dataclasses.field(default_factory=dict)
    #: fleet: the lease (kind, name) this input was read under; it commits only while the lease is held
    lease: tuple[str, str] | None = None
    #: fleet: that lease's epoch when the input was read (a lease lost and won back since fences it too)
    epoch: int | None = None
    #: compare-and-set: the value each cursor had when the input was read; if one moved since, the input
    #: was counted already and `process` returns DUPLICATE (re-read from the committed cursor)
    expected: dict[tuple[str, str], str | None] = dataclasses.field(default_factory=dict)
    #: its size in bytes as the source holds it (S3: as stored, compressed; Kinesis: its inflated text), when
    #: known: shown as bytes in flight
    size: int = 0


class Coordinator(Protocol):
    """Who reads what, when several replicas share the work (leases in the fleet's database).

    A single process owns everything. In a fleet, `claim` returns this
    replica's fair share of `names` (taking free or expired leases, giving
    back extras when replicas join), and `owns` says whether a lease is still
    held: a source stops reading a partition it no longer owns, and a commit
    under a lost lease counts nothing.
    """

    async def claim(self, kind: str, names: list[str]) -> set[str]: ...

    def owns(self, kind: str, name: str) -> bool: ...

    def epoch(self, kind: str, name: str) -> int | None:
        """The held lease's epoch: bumped on every acquisition, so a lease lost and won back reads anew."""
        ...


class OwnsEverything:
    """The single process's coordinator."""

    async def claim(self, kind: str, names: list[str]) -> set[str]:
        return set(names)

    def owns(self, kind: str, name: str) -> bool:
        return True

    def epoch(self, kind: str, name: str) -> int | None:
        return None


class Sink(Protocol):
    async def process(self, source: str, delivery: Delivery) -> str:
        """Decode, commit and apply; returns the outcome ("ok" or a reason).

        Raises SourceError when the body could not be read (nothing committed).
        """
        ...

    async def give_up(self, source: str, delivery: Delivery, reason: str) -> None:
        """Mark a delivery done without reading it (it failed too often)."""
        ...

    def source_error(self, source: str, reason: str, message: str, *, logged: bool = True) -> None:
        """Count and log a source-side failure (`logged=False`: count only, the source throttles its lines)."""
        ...

    def polled(self, source: str) -> None:
        """Count one completed look-up for input (a listing, a receive, a sweep)."""
        ...

    def behind(self, source: str, shard: str, seconds: float | None) -> None:
        """A stream shard's lag behind its newest record (Kinesis MillisBehindLatest); None: no longer read here."""
        ...

    def queue_backlog(self, source: str, waiting: int, held: int, oldest_age_seconds: float | None) -> None:
        """A queue's depth (messages waiting and held by consumers) and the age of the oldest message received."""
        ...


class Source(abc.ABC):
    def __init__(self, name: str) -> None:
        self.name = name
        self.ready = False
        #: why the first call failed (shown on /readyz until the source is ready)
        self.problem: str | None = None

    #: the API call `first_call` makes (for the one-line error)
    first_call_name = ""

    async def first_call(self, clients: AwsClients) -> None:
        """One cheap call, tried once with short timeouts, so that a wrong endpoint, bucket or credential
        shows within seconds rather than after minutes of retries. Sources without one do nothing."""
        return None  # a default, not an abstract method: the HTTP source has no first call

    @abc.abstractmethod
    async def run(self, sink: Sink) -> None:
        """Read forever (until cancelled), handing deliveries to `sink`."""


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """What building a source may use: the AWS clients (made in one place) and read access to the checkpoint."""

    name: str
    clients: AwsClients
    #: which of these keys (in a namespace) are done already
    done_among: Callable[[str, list[str]], Awaitable[set[str]]]
    #: this source's committed cursors
    cursors: Callable[[], Awaitable[dict[str, str]]]
    #: a committed snapshot by name
    snapshot: Callable[[str], Awaitable[bytes | None]]
    #: who reads which partition (a fleet's leases; a single process owns everything)
    coordinator: Coordinator = dataclasses.field(default_factory=OwnsEverything)
    #: S3 polling is split into this many key-hash partitions (leased, in a fleet)
    s3_partitions: int = 1
