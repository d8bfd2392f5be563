"""A compressed day of ENI churn through the live pipeline: does cost follow active ENIs, not ENIs ever seen?

    python bench/soak.py                         # ~1,200 objects: 50,000 distinct ENIs, 1,500 active at a time
    python bench/soak.py --objects 300           # shorter
    python bench/soak.py --objects 300 --backscatter 20000   # reply-heavy: internet-facing ENIs' backscatter

The service's own parts, in-process, with SQLite: the Pipeline that `streamer
run` builds (sticky cap, idle expiry, windows and detector, insights), its
checkpoint store, and its /metrics collectors. Each object holds `--records`
v2 records over a sliding pool of `--active` ENIs that moves by `--shift` per
object, with event time 2-11 minutes before delivery. A simulated clock runs
`--seconds-per-object` per object (72 s: 1,200 objects make a day), so
interface expiry, windows and baselines see a day go by in minutes.

With `--backscatter N`, each object also holds N rejects to an ephemeral port
from a low one (SYN-ACKs and RSTs answering spoofed SYNs) on the internet-facing
tenth of the active ENIs: NACL return-reject candidates no request ever
answers, so they wait in the pairing state (at most `--max-waiting-replies`
rows per window) until their window falls out of the lateness.

Every `--every` objects it prints RSS, mean commit ms (the store transaction,
and the whole object), the store's file size, the series count and the
number of exported counter series that went down; at the end, the targets'
ratios over thirds of the run. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from streamer.aggregate import insights as ins  # noqa: E402
from streamer.aggregate.anomaly import Settings  # noqa: E402
from streamer.aggregate.detection import Detection  # noqa: E402
from streamer.aggregate.eventtime import EventClock  # noqa: E402
from streamer.aggregate.pairing import PREFIX, Pairing  # noqa: E402
from streamer.aggregate.state import FlowState  # noqa: E402
from streamer.export.metrics import DetectionCollector, FlowCollector, InsightsCollector  # noqa: E402
from streamer.export.telemetry import Telemetry  # noqa: E402
from streamer.pipeline import Pipeline, Store  # noqa: E402
from streamer.sources.base import Delivery, single_chunk  # noqa: E402
from streamer.store.base import Commit, Done, Refused  # noqa: E402
from streamer.store.sqlite import CheckpointStore  # noqa: E402

FIELDS = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status"
SOURCE = "soak"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def eni(i: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise("eni-", pc.utf8_lpad(pc.cast(pa.array(i), pa.string()), 17, "0"), "")


def make_object(n: int, first: int, active: int, now: float, rng: np.random.Generator, backscatter: int = 0) -> bytes:
    """`n` v2 records over ENIs [first, first+active), ending 2-11 minutes before `now`; and `backscatter`
    unanswered replies rejected on the first tenth of those ENIs (the internet-facing ones)."""
    lines = _records(n, first, active, now, rng)
    if backscatter:
        lines = pa.concat_arrays([lines, _backscatter(backscatter, first, max(1, active // 10), now, rng)])
    return gzip.compress((FIELDS + "\n" + "\n".join(lines.to_pylist()) + "\n").encode(), 1)


def _backscatter(n: int, first: int, facing: int, now: float, rng: np.random.Generator) -> pa.Array:
    """Replies from random internet hosts' service ports to the ENIs' ephemeral ports, rejected by the NACL."""
    idx = first + rng.integers(0, facing, n)
    end = (now - rng.integers(120, 660, n)).astype(np.int64)
    text = lambda a: pc.cast(pa.array(a), pa.string())  # noqa: E731
    octet = lambda: text(rng.integers(1, 255, n))  # noqa: E731
    cols = [
        pa.array(np.full(n, "2")),
        pa.array(np.full(n, "123456789012")),
        eni(idx),
        pc.binary_join_element_wise(octet(), octet(), octet(), octet(), "."),
        pc.binary_join_element_wise("10.1.", text(idx % 255), ".", text(idx % 251 + 1), ""),
        text(np.array([80, 443, 22, 53])[rng.integers(0, 4, n)]),
        text(rng.integers(1024, 65535, n)),
        pa.array(np.full(n, "6")),
        pa.array(np.full(n, "1")),
        pa.array(np.full(n, "40")),
        text(end - 60),
        text(end),
        pa.array(np.full(n, "REJECT")),
        pa.array(np.full(n, "OK")),
    ]
    return pc.binary_join_element_wise(*cols, " ")


def _records(n: int, first: int, active: int, now: float, rng: np.random.Generator) -> pa.Array:
    idx = first + rng.integers(0, active, n)
    end = (now - rng.integers(120, 660, n)).astype(np.int64)
    roll = rng.random(n)
    nodata = roll < 0.002
    reject = roll > 0.95
    text = lambda a: pc.cast(pa.array(a), pa.string())  # noqa: E731
    dash = pa.scalar("-")
    flow = lambda col: pc.if_else(pa.array(nodata), dash, col)  # noqa: E731
    cols = [
        pa.array(np.full(n, "2")),
        pa.array(np.full(n, "123456789012")),
        eni(idx),
        flow(pc.binary_join_element_wise("10.0.", text(rng.integers(0, 255, n)), ".", text(rng.integers(1, 255, n)), "")),
        flow(pc.binary_join_element_wise("10.1.", text(idx % 255), ".", text(idx % 251 + 1), "")),
        flow(text(rng.integers(1024, 65535, n))),
        flow(text(np.array([443, 80, 22, 5432])[rng.integers(0, 4, n)])),
        flow(pa.array(np.full(n, "6"))),
        flow(text(rng.integers(1, 40, n))),
        flow(text(rng.integers(40, 60_000, n))),
        text(end - 60),
        text(end),
        flow(pc.if_else(pa.array(reject), pa.scalar("REJECT"), pa.scalar("ACCEPT"))),
        pc.if_else(pa.array(nodata), pa.scalar("NODATA"), pa.scalar("OK")),
    ]
    return pc.binary_join_element_wise(*cols, " ")


def deep_size(d: dict[object, object]) -> int:
    return sys.getsizeof(d) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in d.items())


def footprint(pipe: Pipeline, store: CheckpointStore) -> tuple[set[str], int, int]:
    """ENIs held anywhere in the state, the state's bytes in memory (Arrow buffers and Python dicts), and the
    checkpoint's bytes in the tables that hold per-ENI rows (SQLite's dbstat)."""
    det = pipe.detection
    assert det is not None
    state = pipe.state
    eni_insights = state.insights.filter(pc.is_in(state.insights.column("kind"), pa.array(ins.ENI_KINDS)))
    tables = [
        state.counters.table(),
        state.insights,
        det.windows.stats,
        det.windows.sources,
        det.windows.ports,
        det.detector.baseline_table,
        det.detector.score_table,
    ]
    held: set[str] = set(state.seen) | set(state.insight_examples) | set(eni_insights.column("key1").to_pylist())
    for t in tables:
        if "interface_id" in t.column_names:
            held |= set(pc.unique(t.column("interface_id")).to_pylist())
    held.discard("other")
    memory = sum(t.nbytes for t in tables) + deep_size(state.seen) + deep_size(state.insight_examples)  # type: ignore[arg-type]
    rows = store._db.execute(
        "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name IN ('counters', 'interfaces', 'insights', 'snapshots')"
    ).fetchone()
    return held, memory, int(rows[0])


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.type != "counter":
            continue
        for s in family.samples:
            if s.name.endswith("_total"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class CountingStore(CheckpointStore):
    """The real SQLite store; counts the bytes of NACL pairing pieces each transaction writes."""

    pairing_bytes = 0

    def commit_group(self, changes: Sequence[Commit]) -> list[Refused]:
        self.pairing_bytes += sum(len(v) for c in changes for n, v in c.snapshots.items() if n.startswith(PREFIX))
        return super().commit_group(changes)


class Watch:
    """Per series: did a counter ever go down? A series may vanish only with its (forgotten) interface."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.decreased: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        self.vanished_without_interface: set[tuple[str, tuple[tuple[str, str], ...]]] = set()

    def check(self, now: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> None:
        for key, value in now.items():
            if key in self.last and value < self.last[key]:
                self.decreased.add(key)
        for key in self.last.keys() - now.keys():
            if "interface_id" not in dict(key[1]):
                self.vanished_without_interface.add(key)
        self.last = now


async def soak(args: argparse.Namespace, workdir: Path) -> list[dict[str, float]]:
    sim = [1_764_000_000.0]
    clock = lambda: sim[0]  # noqa: E731
    settings = Settings(window_seconds=60, idle_seconds=args.baseline_idle_seconds or args.idle_seconds)
    store = CountingStore(workdir / "state.db")
    late = args.lateness_seconds
    detection = Detection.create(settings, late, EventClock(late, 600, True, frozenset({SOURCE}), started_at=sim[0]))
    registry = CollectorRegistry()
    telemetry = Telemetry(registry)
    pool = ThreadPoolExecutor(2)
    pipe = Pipeline(
        FlowState(),
        Store(store),
        telemetry,
        pool,
        detection,
        None,
        max_interfaces=args.max_interfaces,
        interface_idle_seconds=args.idle_seconds,
        clock=clock,
        insights_window_seconds=60,
        pairing=Pairing(late, max_waiting_replies=args.max_waiting_replies),
    )
    registry.register(FlowCollector(lambda: pipe.state, args.max_interfaces))
    registry.register(InsightsCollector(lambda: pipe.state, 0.045))
    registry.register(DetectionCollector(lambda: pipe.detection, lambda: pipe.state.seen.keys(), args.max_interfaces))
    rng = np.random.default_rng(7)
    watch = Watch()
    rows: list[dict[str, float]] = []
    commit_ms: list[float] = []
    object_ms: list[float] = []
    last_commit = (0.0, 0)
    last_pairing = (0, 0)
    started = time.perf_counter()
    print(
        f"{'objects':>7} {'sim h':>6} {'distinct':>8} {'RSS MB':>7} {'commit ms':>9} {'object ms':>9} "
        f"{'store MB':>8} {'series':>7} {'members':>7} {'baselines':>9} {'snap KB':>7} {'decreased':>9} "
        f"{'waiting':>7} {'dropped':>8} {'pair KB':>7} {'pair w KB':>9}"
    )
    for i in range(args.objects):
        sim[0] += args.seconds_per_object
        body = make_object(args.records, i * args.shift, args.active, sim[0], rng, args.backscatter)
        delivery = Delivery(f"soak/{i}", lambda b=body: single_chunk(b), [Done("s3", f"soak/{i}")], arrived_at=sim[0])
        t0 = time.perf_counter()
        await pipe.process(SOURCE, delivery)
        await pipe.tick()
        object_ms.append((time.perf_counter() - t0) * 1000)
        hist = {s.name: s.value for m in telemetry.commit_seconds.collect() for s in m.samples}
        total, count = hist["streamer_commit_seconds_sum"], int(hist["streamer_commit_seconds_count"])
        commit_ms.append((total - last_commit[0]) * 1000 / max(1, count - last_commit[1]))
        last_commit = (total, count)
        if i % args.prune_every == 0:
            await pipe.store.call(store.prune, args.retention_seconds)
        if (i + 1) % args.every == 0 or i + 1 == args.objects:
            now = scrape(registry)
            watch.check(now)
            det = pipe.detection
            assert det is not None
            row = {
                "objects": i + 1,
                "sim_hours": (i + 1) * args.seconds_per_object / 3600,
                "distinct": i * args.shift + args.active,
                "rss_mb": rss_mb(),
                "commit_ms": float(np.mean(commit_ms[-args.every :])),
                "object_ms": float(np.mean(object_ms[-args.every :])),
                "store_mb": store.size_bytes() / 2**20,
                "series": len(now),
                "members": len(pipe.state.seen),
                "baselines": det.detector.baseline_table.num_rows,
                "snapshot_kb": len(det.snapshot()) / 1024,
                "decreased": len(watch.decreased),
                "waiting": sum(t.num_rows for t in pipe.pairing.replies.values()) if pipe.pairing else 0,
                "dropped": registry.get_sample_value("streamer_nacl_waiting_replies_dropped_total") or 0,
                "pairing_kb": sum(len(v) for v in store.snapshots(PREFIX).values()) / 1024,
                # pairing pieces written per commit, over the last `every` objects
                "pairing_written_kb": (store.pairing_bytes - last_pairing[0]) / 1024 / max(1, count - last_pairing[1]),
            }
            last_pairing = (store.pairing_bytes, count)
            rows.append(row)
            print(
                f"{row['objects']:>7.0f} {row['sim_hours']:>6.1f} {row['distinct']:>8.0f} {row['rss_mb']:>7.0f} "
                f"{row['commit_ms']:>9.1f} {row['object_ms']:>9.1f} {row['store_mb']:>8.1f} {row['series']:>7.0f} "
                f"{row['members']:>7.0f} {row['baselines']:>9.0f} {row['snapshot_kb']:>7.0f} {row['decreased']:>9.0f} "
                f"{row['waiting']:>7.0f} {row['dropped']:>8.0f} {row['pairing_kb']:>7.0f} {row['pairing_written_kb']:>9.0f}",
                flush=True,
            )
    held, memory, disk = footprint(pipe, store)
    last_object = args.objects - 1
    margin = int((args.idle_seconds + 900) / args.seconds_per_object) + 1  # idle, plus event-time lag and lateness
    expired = {f"eni-{k:017d}" for k in range(max(0, (last_object - margin) * args.shift))}
    print(
        f"\nENIs ever seen {last_object * args.shift + args.active}; held in any state at the end {len(held)}; "
        f"expired (nothing for {margin} objects) {len(expired)}, of which still held: {len(held & expired)}"
    )
    stored = {
        r[0] for table in ("counters", "interfaces") for r in store._db.execute(f"SELECT DISTINCT interface_id FROM {table}")
    }
    print(f"checkpoint: interfaces with rows {len(stored - {'other'})}, of which expired: {len(stored & expired)}")
    print(
        f"per held ENI: {memory / max(1, len(held)):.0f} bytes of state in memory, "
        f"{disk / max(1, len(held)):.0f} bytes in the checkpoint's per-ENI tables and snapshots"
    )
    pipe.store.close()
    pool.shutdown()
    third = len(commit_ms) // 3
    rss = [r["rss_mb"] for r in rows]
    k = len(rss) // 3
    print(f"wall {time.perf_counter() - started:.0f} s, {args.objects * args.records / 1e6:.1f} M records")
    print(
        f"commit ms, last third / first third: {np.mean(commit_ms[-third:]) / np.mean(commit_ms[:third]):.2f}"
        f"  ({np.mean(commit_ms[:third]):.1f} -> {np.mean(commit_ms[-third:]):.1f})"
    )
    print(
        f"object ms, last third / first third: {np.mean(object_ms[-third:]) / np.mean(object_ms[:third]):.2f}"
        f"  ({np.mean(object_ms[:third]):.1f} -> {np.mean(object_ms[-third:]):.1f})"
    )
    if k:
        print(
            f"RSS, last third / middle third: {np.mean(rss[-k:]) / np.mean(rss[k : 2 * k]):.3f}"
            f"  ({np.mean(rss[k : 2 * k]):.0f} -> {np.mean(rss[-k:]):.0f} MB)"
        )
    print(f"peak RSS: {peak_mb():.0f} MB")
    print(f"exported counter series that ever decreased: {len(watch.decreased)} {sorted(watch.decreased)[:5]}")
    print(f"series gone that were not an interface's: {len(watch.vanished_without_interface)}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=1200)
    parser.add_argument("--records", type=int, default=15_000)
    parser.add_argument("--active", type=int, default=1500)
    parser.add_argument("--shift", type=int, default=40)
    parser.add_argument("--seconds-per-object", type=float, default=72.0)
    parser.add_argument("--idle-seconds", type=float, default=900.0, help="metrics.interface_idle_seconds (simulated)")
    parser.add_argument("--baseline-idle-seconds", type=float, default=None, help="detector baselines (default: as ENIs)")
    parser.add_argument("--max-interfaces", type=int, default=2000)
    parser.add_argument("--retention-seconds", type=float, default=60.0, help="done keys kept (wall clock)")
    parser.add_argument("--prune-every", type=int, default=50)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--backscatter", type=int, default=0, help="unanswered rejected replies per object")
    parser.add_argument("--lateness-seconds", type=int, default=120, help="anomaly.lateness_seconds (windows and pairing)")
    parser.add_argument("--max-waiting-replies", type=int, default=20_000, help="insights.max_waiting_replies_per_window")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(soak(args, Path(tmp)))


if __name__ == "__main__":
    main()
