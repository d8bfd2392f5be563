"""Keep the service's resident memory near what it uses, not what it once used.

Decoding many inputs at once allocates and frees megabytes per chunk on
several threads. Two allocators keep those pages by default, so peak RSS grew
far past what was live at any moment (measured: 570-800 MiB for about 100 MiB
in use, bench/delivery.py):

- Arrow's default pool (mimalloc in the wheels) holds freed pages. The
  system pool (glibc, with the threshold below) peaks lowest: the S3+SQS
  bench's service 296-302 MiB against jemalloc's 336-341 and no slower; a
  240-object soak 187 against 195 MiB, flat over the run. Used unless the
  operator chose a pool (ARROW_DEFAULT_MEMORY_POOL). Arrow fixes its pool
  when pyarrow is imported, so this must run before that.
- glibc raises its mmap threshold after each large free, so later 4 MiB line
  chunks and bodies land in per-thread arenas and stay there. A fixed
  threshold keeps large buffers mmapped: returned to the system when freed.
  Left alone when MALLOC_MMAP_THRESHOLD_ is set, or where glibc is absent.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

#: buffers at least this large are mmapped (and unmapped when freed); glibc's own starting value
MMAP_THRESHOLD_BYTES = 256 << 10
_M_MMAP_THRESHOLD = -3


def bound_process_memory() -> None:
    """Call once at start, before pyarrow is imported (else Arrow keeps the pool it chose)."""
    if "pyarrow" in sys.modules:
        log.debug("pyarrow imported already: its memory pool stays %s", os.environ.get("ARROW_DEFAULT_MEMORY_POOL"))
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        name = ctypes.util.find_library("c")
        if name is None:
            return
        with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
            if not ctypes.CDLL(name).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
                log.debug("mallopt(M_MMAP_THRESHOLD) refused")
