"""`streamer run` picks an Arrow pool that gives freed memory back, unless the operator chose one (streamer/memory.py).

Arrow fixes its pool when pyarrow is imported, so each case runs in a fresh interpreter.
"""

from __future__ import annotations

import os
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


def test_run_uses_jemalloc_for_arrow_by_default() -> None:
    assert pool_in_a_fresh_process() == "jemalloc"


@pytest.mark.parametrize("chosen", ["system", "mimalloc"])
def test_an_operators_choice_of_pool_stands(chosen: str) -> None:
    assert pool_in_a_fresh_process(ARROW_DEFAULT_MEMORY_POOL=chosen) == chosen
