from __future__ import annotations

import gzip

import pytest

from streamer.decode.errors import CorruptGzipError, TruncatedError
from streamer.decode.gzip import gunzip_stream

DATA = b"".join(b"line %d\n" % i for i in range(200_000))


def pieces(blob: bytes, size: int = 4096) -> list[bytes]:
    return [blob[i : i + size] for i in range(0, len(blob), size)]


def test_streams_in_bounded_pieces() -> None:
    out = list(gunzip_stream(pieces(gzip.compress(DATA)), max_piece=64 << 10))
    assert b"".join(out) == DATA
    assert max(len(p) for p in out) <= 64 << 10


def test_multi_member_files_are_read_to_the_end() -> None:
    blob = gzip.compress(DATA[:1000]) + gzip.compress(DATA[1000:])
    assert b"".join(gunzip_stream(pieces(blob))) == DATA


def test_truncated_stream() -> None:
    blob = gzip.compress(DATA)
    with pytest.raises(TruncatedError):
        b"".join(gunzip_stream(pieces(blob[: len(blob) // 2])))


def test_corrupt_stream() -> None:
    blob = bytearray(gzip.compress(DATA))
    blob[len(blob) // 2 : len(blob) // 2 + 64] = b"\xff" * 64
    with pytest.raises(CorruptGzipError):
        b"".join(gunzip_stream(pieces(bytes(blob))))


def test_zero_padding_after_member_is_tolerated() -> None:
    assert b"".join(gunzip_stream([gzip.compress(DATA) + b"\x00" * 16])) == DATA
