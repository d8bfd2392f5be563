"""The connection cap fits the open-file limit (the listener itself is tested over real sockets in
tests/integration/test_firehose_connections.py)."""

from __future__ import annotations

from streamer.sources.http_listener import RESERVED_FILES, effective_cap


def test_the_cap_is_lowered_to_what_the_open_file_limit_leaves() -> None:
    assert effective_cap(256, None, 40) == 256  # unlimited
    assert effective_cap(256, 1 << 20, 40) == 256
    assert effective_cap(256, 256, 11) == 256 - 11 - RESERVED_FILES
    assert effective_cap(256, 64, 30) == 1  # never 0: one connection still gets in
