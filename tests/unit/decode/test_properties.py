"""Property: any mixture of valid and garbage lines, cut anywhere, never crashes,
counts every valid record exactly and every garbage line once by its reason."""

from __future__ import annotations

import gzip
import itertools
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.aggregate.counters import Counters, count_batch
from streamer.decode.objects import ObjectReader
from streamer.ingest import Ingestor

ENIS = ["eni-0a", "eni-0b", "eni-0c"]
WORD = st.text(alphabet="XYZ0123456789.:/", min_size=1, max_size=12)


@st.composite
def valid_line(draw: st.DrawFn) -> tuple[bytes, tuple[str, str, int, int]]:
    eni = draw(st.sampled_from(ENIS))
    action = draw(st.sampled_from(["ACCEPT", "REJECT"]))
    packets = draw(st.integers(0, 10**6))
    nbytes = draw(st.integers(0, 10**12))
    sep = draw(st.sampled_from([" ", " ", " ", "  "]))  # runs of spaces get repaired
    fields = [
        "2",
        "123456789012",
        eni,
        "10.0.0.1",
        "2001:db8::1",
        "443",
        "1024",
        "6",
        str(packets),
        str(nbytes),
        "1700000000",
        "1700000060",
        action,
        "OK",
    ]
    return sep.join(fields).encode(), (eni, action, packets, nbytes)


@st.composite
def garbage_line(draw: st.DrawFn) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["few", "many", "number", "utf8"]))
    if kind == "few":
        return " ".join(draw(st.lists(WORD, min_size=1, max_size=13))).encode(), "wrong_field_count"
    if kind == "many":
        return " ".join(draw(st.lists(WORD, min_size=15, max_size=30))).encode(), "wrong_field_count"
    line, _ = draw(valid_line())
    parts = line.split()
    if kind == "number":
        parts[draw(st.sampled_from([5, 6, 7, 8, 9, 10, 11]))] = draw(WORD.filter(lambda w: not w.isdigit())).encode()
        return b" ".join(parts), "invalid_number"
    parts[2] = parts[2] + b"\xff\xc3"
    return b" ".join(parts), "invalid_utf8"


LINES = st.lists(st.one_of(valid_line(), garbage_line()), max_size=300)


def run(lines: list[tuple[bytes, object]], cuts: list[int], compress: bool) -> tuple[Counters, Counter[str]]:
    blob = b"".join(line + b"\n" for line, _ in lines)
    if compress:
        blob = gzip.compress(blob)
    points = sorted({min(c, len(blob)) for c in cuts} | {0, len(blob)})
    pieces = [blob[a:b] for a, b in itertools.pairwise(points)]
    counters = Counters()
    reader = ObjectReader(chunk_bytes=512)
    with ThreadPoolExecutor(2) as pool:
        result = Ingestor(reader, count_batch, pool).run(pieces, counters.add)
    assert result.failure is None
    return counters, Counter(result.errors.counts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=LINES, cuts=st.lists(st.integers(0, 50_000), max_size=20), compress=st.booleans())
def test_mixtures_count_exactly(lines: list[tuple[bytes, object]], cuts: list[int], compress: bool) -> None:
    counters, errors = run(lines, cuts, compress)
    want: dict[tuple[str, str], list[int]] = {}
    want_errors: Counter[str] = Counter()
    for _, meta in lines:
        if isinstance(meta, str):
            want_errors[meta] += 1
        else:
            eni, action, packets, nbytes = meta  # type: ignore[misc]
            acc = want.setdefault((eni, action), [0, 0, 0])
            acc[0] += 1
            acc[1] += packets
            acc[2] += nbytes
    got = {
        (eni, action): [v["records"], v["packets"], v["bytes"]]
        for eni, actions in counters.by_interface().items()
        for action, v in actions.items()
    }
    assert got == want
    assert errors == want_errors


@settings(max_examples=100, deadline=None)
@given(junk=st.lists(st.binary(max_size=200), max_size=30), lines=st.lists(valid_line(), max_size=30))
def test_random_bytes_never_crash_and_valid_lines_still_count(junk: list[bytes], lines: list[tuple[bytes, object]]) -> None:
    body = b"\n".join([j.replace(b"\n", b" ").replace(b"\r", b" ") for j in junk] + [line for line, _ in lines]) + b"\n"
    blob = b"2 " + body if body.startswith(b"\x1f\x8b") or body.startswith(b"PAR1") or body.lstrip().startswith(b"{") else body
    counters = Counters()
    with ThreadPoolExecutor(2) as pool:
        result = Ingestor(ObjectReader(chunk_bytes=256), count_batch, pool).run([blob], counters.add)
    if result.failure is None:
        # Every valid line counts; junk never turns into ACCEPT/REJECT records for our ENIs.
        assert counters.total_records() >= len(lines)
    else:
        assert result.failure.reason in {"unknown_format", "unknown_field"}
