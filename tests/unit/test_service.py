"""A crashed source's restart backoff: doubling while it keeps crashing, short again after a clean run."""

from __future__ import annotations

from streamer.service import CLEAN_RUN_SECONDS, RestartBackoff


def test_backoff_doubles_while_a_source_keeps_crashing_up_to_the_limit() -> None:
    backoff = RestartBackoff(first=1.0, limit=8.0)
    assert [backoff.after(0.1) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_backoff_resets_after_the_source_ran_cleanly_for_a_while() -> None:
    backoff = RestartBackoff()
    for _ in range(7):
        backoff.after(1.0)
    assert backoff.after(CLEAN_RUN_SECONDS - 1) == 128.0
    assert backoff.after(CLEAN_RUN_SECONDS) == 1.0  # a crash after a clean minute is not a crash loop
    assert backoff.after(0.5) == 2.0
