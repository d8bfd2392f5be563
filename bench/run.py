"""Throughput and memory benchmark: streamer vs. a plain-Python loop, same run.

    python bench/run.py                 # 2 M v2, 1 M v5, 6 M v2 (whole process)
    python bench/run.py --big           # also a 10 M-record file, for peak RSS
    python bench/run.py --delivery      # many objects through S3+SQS, SQLite and PostgreSQL (bench/delivery.py)
    python bench/run.py --baseline REV  # regression check: today ÷ REV, whole process, interleaved (bench/baseline.py)

Files are generated once into bench/data/ (realistic: ~2,000 ENIs with a
skewed distribution, ~5% REJECT, some IPv6 and NODATA rows, zlib level 6 like
AWS objects). Every measurement runs in its own child process so peak RSS
(ru_maxrss from wait4) belongs to that measurement alone. Nothing here
asserts: it prints records/s, peak RSS and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
ROOT = HERE.parent


# --- children: each prints one JSON line {"records", "seconds"} --------------------------------


def child_inproc(path: str) -> dict[str, float]:
    """Decompress + parse + aggregate in-process, imports excluded."""
    from concurrent.futures import ThreadPoolExecutor

    from streamer.aggregate.counters import COLUMNS, Counters, count_batch
    from streamer.decode.objects import ObjectReader
    from streamer.ingest import Ingestor
    from streamer.replay import read_chunks

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        start = time.perf_counter()
        counters = Counters()
        with open(path, "rb") as handle:
            result = Ingestor(ObjectReader(columns=COLUMNS), count_batch, pool).run(read_chunks(handle), counters.add)
        counters.table()
        seconds = time.perf_counter() - start
    return {"records": result.rows, "seconds": seconds}


def child_inproc_windows(path: str, with_insights: bool = False) -> dict[str, float]:
    """The live service's path: counters plus event-time windows (more columns decoded), and the insights."""
    from concurrent.futures import ThreadPoolExecutor

    from streamer.aggregate.anomaly import Settings
    from streamer.aggregate.batch import BatchResult, columns, delta_of, reducer
    from streamer.aggregate.counters import Counters
    from streamer.aggregate.detection import Detection
    from streamer.aggregate.pairing import Pairing
    from streamer.aggregate.windows import merge
    from streamer.decode.objects import ObjectReader
    from streamer.ingest import Ingestor
    from streamer.replay import read_chunks

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        start, cpu = time.perf_counter(), time.process_time()
        counters = Counters()
        parts: list[BatchResult] = []
        with open(path, "rb") as handle:
            reader = ObjectReader(columns=columns(True, with_insights, with_insights))  # every signal, NACL pairing too
            result = Ingestor(reader, reducer(60, None, 60 if with_insights else None, with_insights), pool).run(
                read_chunks(handle), parts.append
            )
        # As the live pipeline: the object's partials folded into one on its reading thread while its delta is
        # built on a decode thread, then folded into the state in the commit's plan, the input's NACL
        # candidates paired beside that on the pairing thread.
        built = pool.submit(delta_of, parts)
        windows = merge([p.windows for p in parts if p.windows is not None])
        delta = built.result()
        counters.merge(delta.counters)
        pairing, candidates, paired = None, 0, None
        if with_insights:
            candidates = delta.pairs.num_rows if delta.pairs is not None else 0
            paired = pool.submit(delta.pair_with, Pairing(900))
        detection, _ = Detection.create(Settings(), 900).advance(windows)
        detection.flush()
        if paired is not None:
            pairing, _ = paired.result()
        counters.table()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    out = {"records": result.rows, "seconds": seconds, "cpu_seconds": cpu}
    if pairing is not None:  # what stays pending after the input, for the README's sizing
        out["pending_entries"] = pairing.entries()
        out["pending_bytes"] = pairing.nbytes()
        out["candidates"] = candidates
    return out


def child_inproc_insights(path: str) -> dict[str, float]:
    return child_inproc_windows(path, with_insights=True)


def child_pairing(path: str) -> dict[str, float]:
    """The NACL pairing state over a file delivered as objects of one decoded batch each (as S3 delivers
    a stream of objects): its peak size, and what each commit writes."""
    from concurrent.futures import ThreadPoolExecutor

    from streamer.aggregate.batch import BatchResult, columns, delta_of, reducer
    from streamer.aggregate.pairing import Pairing
    from streamer.decode.objects import ObjectReader
    from streamer.ingest import Ingestor
    from streamer.replay import read_chunks

    pairing = Pairing(900)
    sizes = {"peak_entries": 0.0, "peak_bytes": 0.0, "written": 0.0, "max_written": 0.0, "commits": 0.0}

    def commit(part: BatchResult) -> None:
        nonlocal pairing
        pairing, pieces = delta_of([part]).pair_with(pairing)
        written = sum(len(v) for v in pieces.snapshots.values())
        sizes["peak_entries"] = max(sizes["peak_entries"], pairing.entries())
        sizes["peak_bytes"] = max(sizes["peak_bytes"], pairing.nbytes())
        sizes["max_written"] = max(sizes["max_written"], written)
        sizes["written"] += written
        sizes["commits"] += 1

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool, open(path, "rb") as handle:
        start = time.perf_counter()
        result = Ingestor(ObjectReader(columns=columns(False, True, True)), reducer(None, None, 60, True), pool).run(
            read_chunks(handle), commit
        )
        seconds = time.perf_counter() - start
    return {"records": result.rows, "seconds": seconds, **sizes}


def child_baseline(path: str) -> dict[str, float]:
    """What people write today: ISA-L gunzip, str.split, dict sums per record."""
    from isal import igzip

    start = time.perf_counter()
    totals: dict[tuple[bytes, bytes], list[int]] = {}
    records = 0
    with igzip.open(path, "rb") as handle:
        header = handle.readline().split()
        iface, action, packets, nbytes = (header.index(n) for n in (b"interface-id", b"action", b"packets", b"bytes"))
        width = len(header)
        for line in handle:
            parts = line.split()
            if len(parts) != width or parts[0] == header[0]:
                continue
            records += 1
            key = (parts[iface], parts[action])
            acc = totals.get(key)
            if acc is None:
                acc = totals[key] = [0, 0, 0]
            acc[0] += 1
            if parts[packets] != b"-":
                acc[1] += int(parts[packets])
                acc[2] += int(parts[nbytes])
    return {"records": records, "seconds": time.perf_counter() - start}


def child_polars(path: str) -> dict[str, float]:
    """polars' streaming engine on the same file: scan_csv, the counters' four columns, grouped."""
    import polars as pl

    start = time.perf_counter()
    scan = pl.scan_csv(path, separator=" ", null_values=["-"], schema_overrides={"packets": pl.Int64, "bytes": pl.Int64})
    out = (
        scan.select(["interface-id", "action", "packets", "bytes"])
        .group_by(["interface-id", "action"])
        .agg(pl.len().alias("records"), pl.col("packets").sum(), pl.col("bytes").sum())
        .collect(engine="streaming")
    )
    return {"records": int(out["records"].sum()), "seconds": time.perf_counter() - start}


def child_duckdb(path: str) -> dict[str, float]:
    """duckdb's read_csv on the same file, the same group-by."""
    import duckdb

    start = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    rows = con.execute(
        'SELECT "interface-id", action, count(*) AS n, sum(packets), sum(bytes) '
        "FROM read_csv(?, delim=' ', header=true, nullstr='-', types={'packets': 'BIGINT', 'bytes': 'BIGINT'}) GROUP BY ALL",
        [path],
    ).fetchall()
    return {"records": sum(r[2] for r in rows), "seconds": time.perf_counter() - start}


def installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def child_decompress(path: str) -> dict[str, float]:
    """ISA-L decompression alone (streamed): the ceiling for any decoder."""
    from streamer.decode.gzip import gunzip_stream
    from streamer.replay import read_chunks

    start = time.perf_counter()
    size = 0
    with open(path, "rb") as handle:
        for piece in gunzip_stream(read_chunks(handle)):
            size += len(piece)
    seconds = time.perf_counter() - start
    records = int(Path(path).name.split("-")[1].split(".")[0])  # v2-2000000.log.gz: counting lines would cost time
    return {"records": records, "seconds": seconds, "bytes": size}


# --- parent ---------------------------------------------------------------------------------------


def child_generate(spec: str) -> dict[str, float]:
    """Write one benchmark file: spec is PATH:RECORDS:v2|v5."""
    from streamer.schema import DEFAULT_FIELDS, V5_ALL_FIELDS
    from streamer.synth import TrafficProfile, write_log_gz

    name, records, fields = spec.rsplit(":", 2)
    path = Path(name)
    tmp = path.with_suffix(".tmp")
    start = time.perf_counter()
    write_log_gz(tmp, TrafficProfile(records=int(records), fields=DEFAULT_FIELDS if fields == "v2" else V5_ALL_FIELDS))
    tmp.rename(path)
    return {"records": int(records), "seconds": time.perf_counter() - start}


def ensure_file(name: str, records: int, fields: str) -> Path:
    """Generate in a child so this parent stays small (children inherit its RSS peak)."""
    DATA.mkdir(exist_ok=True)
    path = DATA / name
    if not path.exists():
        print(f"generating {path.name} ({records:,} records) ...", file=sys.stderr, flush=True)
        measure([sys.executable, str(Path(__file__)), "--child", "generate", f"{path}:{records}:{fields}"])
    return path


def measure(argv: list[str], expect_json: bool = True) -> dict[str, float]:
    """Run a child; wall time, peak RSS (MiB) and its reported records/seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARROW_DEFAULT_MEMORY_POOL": "jemalloc"}
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    doc = json.loads(out) if expect_json else {}
    return {"wall": wall, "rss_mib": usage.ru_maxrss / 1024, **doc}


REPEAT = 3
#: the live path without and with the network insights
KINDS = ("inproc_windows", "inproc_insights")


def best(runs: list[dict[str, float]], key: str) -> dict[str, float]:
    """Fastest of several runs (least disturbed by the machine), with the highest RSS seen."""
    fastest = min(runs, key=lambda r: r[key])
    return {**fastest, "rss_mib": max(r["rss_mib"] for r in runs)}


def run_child(kind: str, path: Path) -> dict[str, float]:
    return best([measure([sys.executable, str(Path(__file__)), "--child", kind, str(path)]) for _ in range(REPEAT)], "seconds")


def run_replay(path: Path) -> dict[str, float]:
    argv = [sys.executable, "-m", "streamer", "replay", "--output", "json", str(path)]
    return best([measure(argv, expect_json=False) for _ in range(REPEAT)], "wall")


V2_HEADER = (
    b"version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status\n"
)
ONE_LINE = b"2 123456789010 eni-0a1b2c3d4e5f60718 10.0.0.5 203.0.113.9 443 51000 6 10 8400 1700000000 1700000060 REJECT OK\n"


def cold_start() -> dict[str, float]:
    """Wall time of `streamer --help` and of `streamer replay` on a one-line file: the fastest of 7 runs each."""
    one = DATA / "one-line.log"
    DATA.mkdir(exist_ok=True)
    one.write_bytes(ONE_LINE)
    out: dict[str, float] = {}
    for label, argv in (("help", ["--help"]), ("replay", ["replay", str(one)])):
        runs = [measure([sys.executable, "-m", "streamer", *argv], expect_json=False) for _ in range(7)]
        out[label] = min(r["wall"] for r in runs)
    return out


def print_cold_start() -> None:
    cold = cold_start()
    print(f"cold start: `streamer --help` {cold['help']:.3f} s, `streamer replay` of one line {cold['replay']:.3f} s")


def regression_check(rev: str, scale: float, repeat: int, delivery: bool = True) -> None:
    """Today ÷ REV on the same files, whole process, interleaved (bench/baseline.py), and every other row of
    issue 30's targets (polars, the S3+SQS service, the insights' share, peak RSS); exits 1 on a flagged row."""
    sys.path.insert(0, str(ROOT))
    from bench.baseline import compare

    files = {
        f"v2 {6 * scale:g}M": ensure_file(f"v2-{int(6_000_000 * scale)}.log.gz", int(6_000_000 * scale), "v2"),
        f"v5 {3 * scale:g}M": ensure_file(f"v5-{int(3_000_000 * scale)}.log.gz", int(3_000_000 * scale), "v5"),
    }
    one = DATA / "one-line.log"
    one.write_bytes(ONE_LINE)
    polars_file = header_one = None
    if installed("polars"):
        polars_file = ensure_file(f"v2-{int(2_000_000 * scale)}.log.gz", int(2_000_000 * scale), "v2")
        header_one = DATA / "one-line-header.log"  # polars needs the header; both sides read the same file
        header_one.write_bytes(V2_HEADER + ONE_LINE)
    else:
        print("polars is not installed: `bash scripts/bootstrap.sh --bench` (or pip install polars)", file=sys.stderr)
    measure_delivery = None
    if delivery:

        def measure_delivery() -> dict[str, dict[str, dict[str, float]]]:
            # Imported last, after every replay row: moto and boto3 grow this process by ~140 MiB, and a
            # child's ru_maxrss is never below its parent's RSS when it was forked (bench/baseline.py).
            from bench import delivery as bench_delivery

            objects, records = 40, int(40_000 * scale)
            return bench_delivery.measure(objects, records, min(repeat, 3), postgres=False, spreads=("uniform",))[2]

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    lines = compare(rev, files, one, repeat, log, polars_file, header_one, measure_delivery)
    print("\n".join(lines))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load} (1, 5, 15 min), Python {sys.version.split()[0]}")
    if any("REGRESSED" in line or "COUNTS DIFFER" in line for line in lines):
        raise SystemExit(1)


CHILDREN = {
    "inproc": child_inproc,
    "inproc_windows": child_inproc_windows,
    "inproc_insights": child_inproc_insights,
    "pairing": child_pairing,
    "baseline": child_baseline,
    "decompress": child_decompress,
    "polars": child_polars,
    "duckdb": child_duckdb,
    "generate": child_generate,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=sorted(CHILDREN))
    parser.add_argument("path", nargs="?")
    parser.add_argument("--big", action="store_true", help="also measure a 10 M-record file")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply record counts (quick runs: 0.1)")
    parser.add_argument("--repeat", type=int, help="runs per measurement; the fastest is reported (default 3; --insights 5)")
    parser.add_argument("--insights", action="store_true", help="only the cost of the network insights, on v5")
    parser.add_argument("--pairing", action="store_true", help="only the NACL pairing state's size, on the 6 M v2 file")
    parser.add_argument("--cold-start", action="store_true", help="only the start-up time of two short commands")
    parser.add_argument("--baseline", metavar="REV", help="only the regression check against git revision REV (e.g. ecfff93)")
    parser.add_argument("--delivery", action="store_true", help="only many objects through S3+SQS (see bench/delivery.py)")
    parser.add_argument("--no-delivery", action="store_true", help="--baseline: skip the S3+SQS row (moto, a minute)")
    parser.add_argument("--objects", type=int, default=40, help="--delivery: objects per spread")
    parser.add_argument("--records", type=int, default=40_000, help="--delivery: records per object")
    parser.add_argument("--no-postgres", action="store_true", help="--delivery: the SQLite process and replay only")
    parser.add_argument("--max-bytes-in-flight", type=int, help="--delivery: the s3_sqs source's max_bytes_in_flight")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args.path)))
        return

    global REPEAT
    # the insights' cost is a difference of two runs, each as noisy as one run: more of each
    REPEAT = args.repeat or (5 if args.insights else 3)

    if args.cold_start:
        print_cold_start()
        return

    if args.baseline:
        regression_check(args.baseline, args.scale, args.repeat or 5, delivery=not args.no_delivery)
        return

    if args.delivery:
        sys.path.insert(0, str(ROOT))
        from bench import delivery as bench_delivery
        from bench.delivery import main as delivery

        if args.max_bytes_in_flight:
            bench_delivery.SOURCE["max_bytes_in_flight"] = args.max_bytes_in_flight

        delivery(args.objects, args.records, REPEAT, postgres=not args.no_postgres)
        return

    def n(x: int) -> int:
        return int(x * args.scale)

    v5 = ensure_file(f"v5-{n(1_000_000)}.log.gz", n(1_000_000), "v5")
    if args.insights:
        # interleaved, so both see the same load on a shared machine; the fastest of each
        child = [sys.executable, str(Path(__file__)), "--child"]
        runs = [[measure([*child, kind, str(v5)]) for kind in KINDS] for _ in range(REPEAT)]
        off, on = (best([r[i] for r in runs], "seconds") for i in range(2))
        cpu_off, cpu_on = (min(r[i]["cpu_seconds"] for r in runs) for i in range(2))
        r_off, r_on = off["records"] / off["seconds"], on["records"] / on["seconds"]
        print(f"v5 1M, live path, insights off: {r_off / 1e6:.2f} M/s ({off['rss_mib']:.0f} MiB)")
        print(f"v5 1M, live path, insights on:  {r_on / 1e6:.2f} M/s ({on['rss_mib']:.0f} MiB)")
        print(f"insights cost: {100 * (1 - r_on / r_off):.0f}% slower (the fastest of {REPEAT} interleaved runs each)")
        print(f"CPU seconds, insights off / on: {cpu_off:.2f} / {cpu_on:.2f} ({100 * (cpu_on / cpu_off - 1):.0f}% more)")
        pending = on["pending_entries"]
        print(f"NACL pairing state after the file: {pending:,.0f} entries, {on['pending_bytes'] / max(pending, 1):.1f} B each")
        return
    if args.pairing:
        v2_6m = ensure_file(f"v2-{n(6_000_000)}.log.gz", n(6_000_000), "v2")
        got = run_child("pairing", v2_6m)
        peak = got["peak_entries"]
        print(f"v2 6M as {got['commits']:.0f} objects: NACL pairing state peak {peak:,.0f} entries, ", end="")
        print(f"{got['peak_bytes'] / 2**20:.1f} MiB ({got['peak_bytes'] / max(peak, 1):.1f} B each)")
        mean, most = got["written"] / got["commits"] / 1024, got["max_written"] / 1024
        print(f"pieces written per commit: {mean:.0f} KiB mean, {most:.0f} KiB max")
        return
    v2 = ensure_file(f"v2-{n(2_000_000)}.log.gz", n(2_000_000), "v2")
    v2_6m = ensure_file(f"v2-{n(6_000_000)}.log.gz", n(6_000_000), "v2")
    rows: list[tuple[str, float, float, float]] = []

    def add(label: str, records: float, seconds: float, rss: float) -> float:
        rate = records / seconds
        rows.append((label, rate, seconds, rss))
        return rate

    for name, path in (("v2 2M", v2), ("v5 1M", v5)):
        inproc = run_child("inproc", path)
        windows = run_child("inproc_windows", path)
        with_insights = run_child("inproc_insights", path)
        base = run_child("baseline", path)
        dec = run_child("decompress", path)
        r_in = add(f"{name}: streamer decode+aggregate (in-process)", inproc["records"], inproc["seconds"], inproc["rss_mib"])
        r_w = add(f"{name}: + event-time windows (live service path)", windows["records"], windows["seconds"], windows["rss_mib"])
        r_i = add(f"{name}: + network insights", with_insights["records"], with_insights["seconds"], with_insights["rss_mib"])
        rows.append((f"{name}: insights cost {100 * (1 - r_i / r_w):.0f}% of the live path's rate", 0, 0, 0))
        pending = with_insights["pending_entries"]
        mib = with_insights["pending_bytes"] / 2**20
        rows.append((f"{name}: NACL pairing state {pending:,.0f} entries, {mib:.1f} MiB", 0, 0, 0))
        r_base = add(f"{name}: plain Python split+dict (in-process)", base["records"], base["seconds"], base["rss_mib"])
        r_dec = add(f"{name}: ISA-L decompression alone", dec["records"], dec["seconds"], dec["rss_mib"])
        rows.append((f"{name}: ratio streamer/plain = {r_in / r_base:.1f}x, streamer/decompress = {r_in / r_dec:.2f}", 0, 0, 0))
        for peer in ("polars", "duckdb"):
            if not installed(peer):
                rows.append((f"{name}: {peer} not installed (pip install -e '.[bench]')", 0, 0, 0))
                continue
            got = run_child(peer, path)
            r_peer = add(f"{name}: {peer} (same columns, grouped)", got["records"], got["seconds"], got["rss_mib"])
            rows.append((f"{name}: ratio streamer/{peer} = {r_in / r_peer:.2f}x", 0, 0, 0))

    records_6m = n(6_000_000)
    whole = run_replay(v2_6m)
    base6 = best(
        [measure([sys.executable, str(Path(__file__)), "--child", "baseline", str(v2_6m)]) for _ in range(REPEAT)], "wall"
    )
    r_whole = add("v2 6M: `streamer replay --output json` (whole process)", records_6m, whole["wall"], whole["rss_mib"])
    r_base6 = add("v2 6M: plain Python loop (whole process)", base6["records"], base6["wall"], base6["rss_mib"])
    rows.append((f"v2 6M: ratio whole process streamer/plain = {r_whole / r_base6:.1f}x", 0, 0, 0))
    whole5 = run_replay(v5)
    add("v5 1M: `streamer replay --output json` (whole process)", n(1_000_000), whole5["wall"], whole5["rss_mib"])
    if args.big:
        big = ensure_file(f"v2-{n(10_000_000)}.log.gz", n(10_000_000), "v2")
        whole_big = run_replay(big)
        add("v2 10M: `streamer replay --output json` (whole process)", n(10_000_000), whole_big["wall"], whole_big["rss_mib"])

    print(f"\n{'measurement':<62} {'records/s':>12} {'seconds':>8} {'peak RSS':>10}")
    for label, rate, seconds, rss in rows:
        if rate:
            print(f"{label:<62} {rate / 1e6:>10.2f} M {seconds:>8.2f} {rss:>7.0f} MiB")
        else:
            print(f"  {label}")
    print()
    print_cold_start()
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
