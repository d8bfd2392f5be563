"""Tests of the native part (streamer/decode/_scan.c) run only where it was built: in CI it must be."""

from __future__ import annotations

import os

import pytest


def require_native(built: bool, what: str = "the native part") -> None:
    """Skip the test where `what` was not built (no C compiler at install time); fail it in CI."""
    if built:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} was not built in CI (streamer/decode/_scan.c needs a C compiler)")
    pytest.skip(f"{what} is not built here (no C compiler at install time)")
