"""The regression check's verdicts (bench/baseline.py): ratios oriented so above 1.0 is better, a row
more than 5% worse flagged, a side whose runs spread too widely erratic."""

from __future__ import annotations

from bench.baseline import Row


def test_a_slower_row_is_flagged_and_a_faster_one_is_not() -> None:
    slower = Row("cpu", "s", today=[1.10, 1.12, 1.11], base=[1.0, 1.01, 1.0])
    faster = Row("cpu", "s", today=[0.9, 0.91, 0.9], base=[1.0, 1.0, 1.01])
    assert slower.ratio() < 0.95
    assert slower.verdict() == "REGRESSED"
    assert faster.ratio() > 1.0
    assert faster.verdict() == "ok"


def test_within_five_percent_is_no_regression() -> None:
    assert Row("cpu", "s", today=[1.04, 1.04, 1.04], base=[1.0, 1.0, 1.0]).verdict() == "ok"


def test_wide_spread_is_erratic_even_when_the_medians_agree() -> None:
    row = Row("wall", "s", today=[1.0, 2.0, 1.0, 0.6], base=[1.0, 1.0, 1.0, 1.0])
    assert row.verdict() == "erratic"
    assert min(row.ratios()) < 1.0 < max(row.ratios())


def test_a_larger_peak_rss_is_worse() -> None:
    assert Row("rss", "MiB", today=[250.0, 251.0], base=[190.0, 191.0]).verdict() == "REGRESSED"


def test_an_opt_in_rows_slowdown_is_shown_but_not_flagged() -> None:
    row = Row("cpu", "s", today=[1.5, 1.5, 1.5], base=[1.0, 1.0, 1.0], flagged=False)
    assert row.ratio() < 0.95
    assert "REGRESSED" not in row.verdict()
    assert row.verdict() == "worse (not flagged)"
