"""Shared fixtures: the corpus folder and small decode helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CORPUS = Path(os.environ.get("STREAMER_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus"))


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"flow-log corpus missing in CI: {CORPUS}")
        pytest.skip(f"flow-log corpus not found at {CORPUS} (it lives beside the repo in ../shared/corpus)")
    return CORPUS
