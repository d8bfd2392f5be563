"""Streamed gzip decompression with ISA-L, in bounded pieces.

stdlib zlib is slower than our parser, and decompressing a whole object at
once doubles time and memory through page faults, so objects are inflated
chunk by chunk with `isal.igzip_lib` (which releases the GIL, letting
parsing run on other cores meanwhile). Multi-member files (concatenated
gzip streams) are followed to the end.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import cast

from isal import igzip_lib

from streamer.decode.errors import CorruptGzipError, TruncatedError

GZIP_MAGIC = b"\x1f\x8b"
#: Upper bound on one decompressed piece, which bounds memory per input chunk.
MAX_PIECE_BYTES = 4 << 20
#: What ISA-L raises for bad deflate data or a CRC mismatch.
_BAD_DATA = (cast(type[Exception], igzip_lib.IsalError), OSError, ValueError)


def gunzip_stream(chunks: Iterable[bytes], max_piece: int = MAX_PIECE_BYTES) -> Iterator[bytes]:
    """Decompressed pieces of a gzip stream given as compressed chunks.

    Raises CorruptGzipError for invalid data and TruncatedError when the
    stream ends inside a member.
    """
    decomp = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)
    seen_any = False
    for raw in chunks:
        data = raw
        while data:
            seen_any = True
            try:
                out = decomp.decompress(data, max_piece)
                if out:
                    yield out
                while not decomp.eof and decomp.needs_input is False:
                    out = decomp.decompress(b"", max_piece)
                    if out:
                        yield out
            except _BAD_DATA as exc:
                raise CorruptGzipError(f"invalid gzip data: {exc}") from exc
            if decomp.eof:
                data = decomp.unused_data
                decomp = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)
                if data and not data.startswith(GZIP_MAGIC):
                    # Trailing garbage after a complete member: zero padding is common.
                    if data.strip(b"\x00"):
                        raise CorruptGzipError("trailing bytes after gzip member")
                    data = b""
                seen_any = False
            else:
                data = b""
    if seen_any and not decomp.eof:
        raise TruncatedError("gzip stream ended before its end marker")
