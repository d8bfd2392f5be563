"""`streamer run` picks an Arrow pool that gives freed memory back, unless the operator chose one (streamer/memory.py).

Arrow fixes its pool when pyarrow is imported, so each case runs in a fresh interpreter.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

#: as `streamer run` does: the CLI is imported (it must not import pyarrow), then the bounds are set
PROBE = (
    "import streamer.cli; from streamer.memory import bound_process_memory; bound_process_memory(); "
    "import pyarrow as pa, pyarrow.compute as pc; pc.sum(pa.array(range(10))); "
    "print(pa.default_memory_pool().backend_name)"
)


def pool_in_a_fresh_process(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_run_uses_the_system_pool_for_arrow_by_default() -> None:
    assert pool_in_a_fresh_process() == "system"


@pytest.mark.parametrize("chosen", ["jemalloc", "mimalloc"])
def test_an_operators_choice_of_pool_stands(chosen: str) -> None:
    assert pool_in_a_fresh_process(ARROW_DEFAULT_MEMORY_POOL=chosen) == chosen


MMAP_PROBE = """
import ctypes, ctypes.util, sys
from streamer.memory import bound_process_memory
if sys.argv[1] == "bounded":
    bound_process_memory()

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = Info
block = bytearray(4 << 20)
del block  # glibc raises its mmap threshold past 4 MiB here, unless it is fixed
block = bytearray(4 << 20)
print(libc.mallinfo2().hblkhd >= 4 << 20)
"""


def mmapped_after_a_free(mode: str) -> bool:
    out = subprocess.run([sys.executable, "-c", MMAP_PROBE, mode], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


def test_large_buffers_stay_mmapped_so_freeing_them_returns_the_memory() -> None:
    if "glibc" not in " ".join(platform.libc_ver()):
        pytest.skip("glibc only")
    assert mmapped_after_a_free("bounded")
    assert not mmapped_after_a_free("default")  # what it fixes: the second buffer lands in the heap
