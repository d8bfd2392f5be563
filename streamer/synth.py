"""Synthetic but realistic flow-log records, generated column-wise.

The project must run and benchmark on its own (no real AWS data ships with
it), so this module builds records the way AWS shapes them: a skewed ENI
population, a few percent REJECT, some IPv6, NODATA rows that carry `-` in
the flow fields. Generation is vectorized (numpy + Arrow) so the 2-10 M
record benchmark files take seconds, not minutes.
"""

from __future__ import annotations

import dataclasses
import gzip
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamer.schema import DEFAULT_FIELDS, V5_ALL_FIELDS

ACCOUNT = "123456789012"
_PROTOCOLS = np.array([6, 6, 6, 6, 17, 17, 1])
_WELL_KNOWN_PORTS = np.array([443, 80, 22, 53, 3306, 5432, 6379, 8080, 3389, 123])


@dataclasses.dataclass(frozen=True)
class TrafficProfile:
    """What to generate: population, time span and the share of odd rows."""

    records: int
    enis: int = 2000
    #: Zipf exponent of the ENI spread: 1.1 is a few busy ENIs; 0 spreads records uniformly
    eni_skew: float = 1.1
    reject_ratio: float = 0.05
    ipv6_ratio: float = 0.03
    nodata_ratio: float = 0.002
    skipdata_ratio: float = 0.0005
    start_epoch: int = 1_764_000_000
    span_seconds: int = 3600
    seed: int = 7
    fields: Sequence[str] = DEFAULT_FIELDS


def eni_ids(count: int) -> list[str]:
    """Deterministic 17-hex-digit interface ids like AWS's."""
    return [f"eni-{(0x0A1B2C3D4E5F60000 + i * 7919) & 0xFFFFFFFFFFFFFFFFF:017x}" for i in range(count)]


def _address_pool(rng: np.random.Generator, count: int, ipv6: bool) -> pa.Array:
    if ipv6:
        words = rng.integers(0, 0xFFFF, size=(count, 4))
        return pa.array([f"2001:db8:{a:x}:{b:x}::{c:x}:{d:x}" for a, b, c, d in words])
    octets = rng.integers(1, 255, size=(count, 4))
    return pa.array([f"{a}.{b}.{c}.{d}" for a, b, c, d in octets])


def _as_text(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values), pa.string())


def generate_table(profile: TrafficProfile, offset: int = 0, count: int | None = None) -> pa.Table:
    """Records [offset, offset+count) of the profile as a table of strings."""
    n = profile.records - offset if count is None else count
    rng = np.random.default_rng((profile.seed, offset))
    enis = pa.array(eni_ids(profile.enis))
    # Zipf-like skew: a few ENIs carry most of the traffic.
    weights = 1.0 / np.arange(1, profile.enis + 1) ** profile.eni_skew
    eni_idx = rng.choice(profile.enis, size=n, p=weights / weights.sum())
    roll = rng.random(n)
    nodata = roll < profile.nodata_ratio
    skipdata = (roll >= profile.nodata_ratio) & (roll < profile.nodata_ratio + profile.skipdata_ratio)
    noflow = nodata | skipdata
    reject = rng.random(n) < profile.reject_ratio
    ipv6 = rng.random(n) < profile.ipv6_ratio
    v4_pool, v6_pool = _address_pool(rng, 4096, False), _address_pool(rng, 1024, True)
    src = pc.if_else(
        pa.array(ipv6), v6_pool.take(pa.array(rng.integers(0, 1024, n))), v4_pool.take(pa.array(rng.integers(0, 4096, n)))
    )
    dst = pc.if_else(
        pa.array(ipv6), v6_pool.take(pa.array(rng.integers(0, 1024, n))), v4_pool.take(pa.array(rng.integers(0, 4096, n)))
    )
    packets = rng.geometric(0.08, n)
    nbytes = packets * rng.integers(40, 1500, n)
    start = profile.start_epoch + np.sort(rng.integers(0, profile.span_seconds, n))
    end = start + rng.integers(1, 60, n)
    dash = pa.scalar("-")
    mask = pa.array(noflow)

    def flow(col: pa.Array) -> pa.Array:
        return pc.if_else(mask, dash, col)

    columns: dict[str, pa.Array] = {
        "version": pa.array(np.full(n, "2" if list(profile.fields) == list(DEFAULT_FIELDS) else "5")),
        "account-id": pa.array(np.full(n, ACCOUNT)),
        "interface-id": enis.take(pa.array(eni_idx)),
        "srcaddr": flow(src),
        "dstaddr": flow(dst),
        "srcport": flow(_as_text(rng.integers(1024, 65535, n))),
        "dstport": flow(_as_text(_WELL_KNOWN_PORTS[rng.integers(0, len(_WELL_KNOWN_PORTS), n)])),
        "protocol": flow(_as_text(_PROTOCOLS[rng.integers(0, len(_PROTOCOLS), n)])),
        "packets": flow(_as_text(packets)),
        "bytes": flow(_as_text(nbytes)),
        "start": _as_text(start),
        "end": _as_text(end),
        "action": flow(pc.if_else(pa.array(reject), pa.scalar("REJECT"), pa.scalar("ACCEPT"))),
        "log-status": pc.if_else(
            pa.array(nodata), pa.scalar("NODATA"), pc.if_else(pa.array(skipdata), pa.scalar("SKIPDATA"), pa.scalar("OK"))
        ),
        "vpc-id": pa.array(np.full(n, "vpc-0a1b2c3d4e5f67890")),
        "subnet-id": pa.array([f"subnet-{i % 8:017x}" for i in range(8)]).take(pa.array(eni_idx % 8)),
        "instance-id": pa.array([f"i-{i:017x}" for i in range(profile.enis)]).take(pa.array(eni_idx)),
        "tcp-flags": flow(_as_text(np.array([2, 18, 19, 3, 1, 0])[rng.integers(0, 6, n)])),
        "type": pc.if_else(pa.array(ipv6), pa.scalar("IPv6"), pa.scalar("IPv4")),
        "pkt-srcaddr": flow(src),
        "pkt-dstaddr": flow(dst),
        "region": pa.array(np.full(n, "us-east-1")),
        "az-id": pa.array(["use1-az1", "use1-az2", "use1-az4"]).take(pa.array(eni_idx % 3)),
        "sublocation-type": pa.array(np.full(n, "-")),
        "sublocation-id": pa.array(np.full(n, "-")),
        "pkt-src-aws-service": pa.array(["-", "-", "-", "S3", "AMAZON"]).take(pa.array(rng.integers(0, 5, n))),
        "pkt-dst-aws-service": pa.array(np.full(n, "-")),
        "flow-direction": pa.array(["ingress", "egress"]).take(pa.array(rng.integers(0, 2, n))),
        "traffic-path": pa.array(["-", "1", "8"]).take(pa.array(rng.integers(0, 3, n))),
    }
    missing = [f for f in profile.fields if f not in columns]
    if missing:
        raise ValueError(f"synth cannot generate fields {missing}")
    return pa.table({f: columns[f] for f in profile.fields})


def to_lines(table: pa.Table) -> pa.Array:
    """Join a table of string columns into space-separated lines."""
    cols = [table.column(i).combine_chunks() for i in range(table.num_columns)]
    return pc.binary_join_element_wise(*cols, " ")


def iter_text_chunks(profile: TrafficProfile, header: bool = True, batch: int = 250_000) -> Iterator[bytes]:
    """The object's bytes in pieces: optional header line, then records."""
    if header:
        yield (" ".join(profile.fields) + "\n").encode()
    for offset in range(0, profile.records, batch):
        lines = to_lines(generate_table(profile, offset, min(batch, profile.records - offset)))
        yield ("\n".join(lines.to_pylist()) + "\n").encode()


def gzip_object(profile: TrafficProfile, header: bool = True, compresslevel: int = 6) -> Iterator[bytes]:
    """An S3-style `.log.gz` object in pieces, compressed like AWS's (zlib level 6).

    Each piece is a complete gzip member (a multi-member file is valid gzip);
    members are compressed on a small thread pool since zlib releases the GIL.
    """
    with ThreadPoolExecutor(2) as pool:
        yield from pool.map(lambda chunk: gzip.compress(chunk, compresslevel), iter_text_chunks(profile, header=header))


def write_log_gz(path: Path, profile: TrafficProfile, header: bool = True) -> Path:
    """Write an S3-style `.log.gz` object (header line + records)."""
    with path.open("wb") as out:
        for member in gzip_object(profile, header):
            out.write(member)
    return path


@dataclasses.dataclass(frozen=True)
class Spike:
    """A burst of rejected traffic on one ENI: a scan or a misconfigured client."""

    interface_id: str
    start_epoch: int
    duration_seconds: int = 60
    records: int = 600
    sources: tuple[str, ...] = ("198.51.100.7", "198.51.100.8", "203.0.113.99")
    ports: tuple[int, ...] = (22, 3389, 445, 23, 5900, 1433)
    seed: int = 11


def spike_table(spike: Spike, fields: Sequence[str] = DEFAULT_FIELDS) -> pa.Table:
    """REJECT records of a spike, as strings in `fields` order (mergeable with generate_table)."""
    rng = np.random.default_rng(spike.seed)
    n = spike.records
    # Skewed: the first source and port dominate, as in a real scan.
    src_w = 1.0 / np.arange(1, len(spike.sources) + 1) ** 2
    port_w = 1.0 / np.arange(1, len(spike.ports) + 1) ** 1.5
    src = pa.array(spike.sources).take(pa.array(rng.choice(len(spike.sources), n, p=src_w / src_w.sum())))
    ports = np.array(spike.ports)[rng.choice(len(spike.ports), n, p=port_w / port_w.sum())]
    start = spike.start_epoch + np.sort(rng.integers(0, max(1, spike.duration_seconds - 5), n))
    columns: dict[str, pa.Array] = {
        "version": pa.array(np.full(n, "2")),
        "account-id": pa.array(np.full(n, ACCOUNT)),
        "interface-id": pa.array(np.full(n, spike.interface_id)),
        "srcaddr": src,
        "dstaddr": pa.array(np.full(n, "10.0.1.10")),
        "srcport": _as_text(rng.integers(1024, 65535, n)),
        "dstport": _as_text(ports),
        "protocol": pa.array(np.full(n, "6")),
        "packets": pa.array(np.full(n, "1")),
        "bytes": pa.array(np.full(n, "44")),
        "start": _as_text(start),
        "end": _as_text(start + 4),
        "action": pa.array(np.full(n, "REJECT")),
        "log-status": pa.array(np.full(n, "OK")),
        "vpc-id": pa.array(np.full(n, "vpc-0a1b2c3d4e5f67890")),
        "subnet-id": pa.array(np.full(n, f"subnet-{0:017x}")),
        "instance-id": pa.array(np.full(n, f"i-{0:017x}")),
        "tcp-flags": pa.array(np.full(n, "2")),
        "type": pa.array(np.full(n, "IPv4")),
        "pkt-srcaddr": src,
        "pkt-dstaddr": pa.array(np.full(n, "10.0.1.10")),
        "region": pa.array(np.full(n, "us-east-1")),
        "az-id": pa.array(np.full(n, "use1-az1")),
        "sublocation-type": pa.array(np.full(n, "-")),
        "sublocation-id": pa.array(np.full(n, "-")),
        "pkt-src-aws-service": pa.array(np.full(n, "-")),
        "pkt-dst-aws-service": pa.array(np.full(n, "-")),
        "flow-direction": pa.array(np.full(n, "ingress")),
        "traffic-path": pa.array(np.full(n, "-")),
    }
    missing = [f for f in fields if f not in columns]
    if missing:
        raise ValueError(f"spike_table cannot generate fields {missing}")
    return pa.table({f: columns[f] for f in fields})


@dataclasses.dataclass(frozen=True)
class InsightCase:
    """One flow-log record of an insight case (v5 fields; the rest filled in)."""

    eni: str
    src: str
    dst: str
    sport: int
    dport: int
    action: str
    start: int
    protocol: int = 6
    bytes: int = 1000
    flags: int = 0
    direction: str = "ingress"
    path: str = "-"
    dst_service: str = "-"
    vpc: str = "vpc-0insight000000001"


def insight_cases(start: int) -> tuple[list[InsightCase], dict[str, object]]:
    """Records with a known answer for each network insight, near misses included, and that answer
    (the `"insights"` JSON of `replay`). Used by the tests and by `streamer demo`."""
    nacl, other, v6, gw = "eni-0nacl000000000001", "eni-0nacl000000000002", "eni-0ipv6000000000001", "eni-0natgw00000000001"
    vpc = "vpc-0insight000000001"
    w = start - start % 60
    cases = [
        # NACL: a request accepted out, its reply rejected in (twice), and one in the next window.
        InsightCase(nacl, "10.0.1.5", "52.94.1.10", 50001, 443, "ACCEPT", w + 5, direction="egress"),
        InsightCase(nacl, "52.94.1.10", "10.0.1.5", 443, 50001, "REJECT", w + 6),
        InsightCase(nacl, "52.94.1.10", "10.0.1.5", 443, 50001, "REJECT", w + 61),
        InsightCase(nacl, "10.0.1.5", "52.94.1.11", 50002, 443, "ACCEPT", w + 7, direction="egress"),
        InsightCase(nacl, "52.94.1.11", "10.0.1.5", 443, 50002, "REJECT", w + 8),
        # near misses: a reject with no accepted request; a reply a window before its request's; another ENI's accept
        InsightCase(nacl, "198.51.100.9", "10.0.1.5", 443, 50003, "REJECT", w + 9),
        InsightCase(nacl, "10.0.1.5", "52.94.1.12", 50004, 443, "ACCEPT", w + 10, direction="egress"),
        InsightCase(nacl, "52.94.1.12", "10.0.1.5", 443, 50004, "REJECT", w - 50),
        InsightCase(other, "10.0.2.5", "52.94.1.13", 50005, 443, "ACCEPT", w + 11, direction="egress"),
        InsightCase(nacl, "52.94.1.13", "10.0.2.5", 443, 50005, "REJECT", w + 12),
        # Gateway endpoint: S3 via the NAT gateway (1) and the internet gateway (8), DynamoDB via NAT.
        InsightCase(
            gw, "10.0.3.5", "52.216.8.1", 50010, 443, "ACCEPT", w + 5,
            bytes=3 * 2**30, direction="egress", path="1", dst_service="S3",
        ),
        InsightCase(
            gw, "10.0.3.5", "52.216.8.2", 50011, 443, "ACCEPT", w + 6,
            bytes=2**30, direction="egress", path="8", dst_service="S3",
        ),
        InsightCase(
            gw, "10.0.3.5", "52.94.0.9", 50012, 443, "ACCEPT", w + 7,
            bytes=5000, direction="egress", path="1", dst_service="DYNAMODB",
        ),
        # near misses: S3 already through a gateway endpoint (7); S3's replies coming in
        InsightCase(
            gw, "10.0.3.5", "52.216.8.3", 50013, 443, "ACCEPT", w + 8,
            bytes=7000, direction="egress", path="7", dst_service="S3",
        ),
        InsightCase(gw, "52.216.8.1", "10.0.3.5", 443, 50010, "ACCEPT", w + 9, bytes=9000, direction="ingress", dst_service="-"),
        # IPv6 from the internet starting connections (SYN), accepted and rejected.
        InsightCase(v6, "2600:1f18:aaaa::1", "2600:1f18:bbbb::5", 51000, 22, "ACCEPT", w + 5, flags=2),
        InsightCase(v6, "2a05:d018:cccc::7", "2600:1f18:bbbb::5", 51001, 3389, "REJECT", w + 6, flags=2),
        InsightCase(v6, "2a05:d018:cccc::8", "2600:1f18:bbbb::5", 51002, 3389, "REJECT", w + 7, flags=2),
        # near misses: a response to an outbound connection (SYN-ACK); IPv4 inbound; a ULA source; outbound
        InsightCase(v6, "2600:1f18:aaaa::2", "2600:1f18:bbbb::5", 443, 51003, "ACCEPT", w + 8, flags=18),
        InsightCase(v6, "203.0.113.5", "10.0.4.5", 51004, 22, "REJECT", w + 9, flags=2),
        InsightCase(v6, "fd00::1", "2600:1f18:bbbb::5", 51005, 22, "ACCEPT", w + 10, flags=2),
        InsightCase(v6, "2600:1f18:bbbb::5", "2600:1f18:aaaa::3", 51006, 443, "ACCEPT", w + 11, flags=2, direction="egress"),
    ]
    gib = 2**30
    expected: dict[str, object] = {
        "nacl_return_rejects": {nacl: 3},
        "gateway_endpoint_candidates": {vpc: {"S3": {"records": 2, "bytes": 4 * gib}, "DYNAMODB": {"records": 1, "bytes": 5000}}},
        "ipv6_internet_inbound": {v6: {"ACCEPT": 1, "REJECT": 2}},
        "traffic_path_bytes": {vpc: {"same_vpc": 3 * gib + 5000, "internet_gateway": gib, "gateway_endpoint": 7000}},
    }
    return cases, expected


def insight_table(cases: Sequence[InsightCase], fields: Sequence[str] = V5_ALL_FIELDS) -> pa.Table:
    """The cases as flow-log records (strings, in `fields` order; mergeable with generate_table)."""
    ipv6 = [":" in c.src for c in cases]
    values: dict[str, list[str]] = {
        "version": ["5"] * len(cases),
        "account-id": [ACCOUNT] * len(cases),
        "interface-id": [c.eni for c in cases],
        "srcaddr": [c.src for c in cases],
        "dstaddr": [c.dst for c in cases],
        "srcport": [str(c.sport) for c in cases],
        "dstport": [str(c.dport) for c in cases],
        "protocol": [str(c.protocol) for c in cases],
        "packets": ["10"] * len(cases),
        "bytes": [str(c.bytes) for c in cases],
        "start": [str(c.start) for c in cases],
        "end": [str(c.start + 4) for c in cases],
        "action": [c.action for c in cases],
        "log-status": ["OK"] * len(cases),
        "vpc-id": [c.vpc for c in cases],
        "subnet-id": ["subnet-0insight00000001"] * len(cases),
        "instance-id": ["i-0insight0000000001"] * len(cases),
        "tcp-flags": [str(c.flags) for c in cases],
        "type": ["IPv6" if v else "IPv4" for v in ipv6],
        "pkt-srcaddr": [c.src for c in cases],
        "pkt-dstaddr": [c.dst for c in cases],
        "region": ["us-east-1"] * len(cases),
        "az-id": ["use1-az1"] * len(cases),
        "sublocation-type": ["-"] * len(cases),
        "sublocation-id": ["-"] * len(cases),
        "pkt-src-aws-service": ["-"] * len(cases),
        "pkt-dst-aws-service": [c.dst_service for c in cases],
        "flow-direction": [c.direction for c in cases],
        "traffic-path": [c.path for c in cases],
    }
    return pa.table({f: pa.array(values[f], pa.string()) for f in fields})


__all__ = [
    "V5_ALL_FIELDS",
    "InsightCase",
    "Spike",
    "TrafficProfile",
    "eni_ids",
    "generate_table",
    "insight_cases",
    "insight_table",
    "iter_text_chunks",
    "to_lines",
    "write_log_gz",
]
