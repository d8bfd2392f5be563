"""What a client sent, echoed in a log line, stays one line and short; repeated warnings are throttled."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamer.logs import ECHO_CHARS, Throttle, printable, quieted


def test_ordinary_ids_are_echoed_as_they_are() -> None:
    for text in ("8f9b3c2e-1d4a-4c5b-9e8f-0a1b2c3d4e5f", "req 1", "é-ü"):
        assert printable(text) == text


def test_control_characters_cannot_forge_a_line() -> None:
    forged = "r1\n2026-12-07 10:00:00 WARNING streamer: all is well\r\x1b[2J\u2028\u202e"
    shown = printable(forged)
    assert not set(shown) & {"\n", "\r", "\x1b", "\u2028", "\u202e"}
    assert shown.startswith("r1\\x0a2026-12-07")
    assert shown.endswith("\\x0d\\x1b[2J\\u2028\\u202e")
    assert printable("a\\x0ab") == "a\\\\x0ab"  # a literal backslash cannot pass for an escape


def test_what_is_echoed_is_cut() -> None:
    shown = printable("x" * 8000)
    assert shown == "x" * ECHO_CHARS + "...(+7872 chars)"
    assert len(printable("\n" * 8000)) < ECHO_CHARS + 20


@given(st.text())
def test_any_text_becomes_one_printable_line(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable()
    assert len(shown) <= ECHO_CHARS + len("...(+99999999 chars)")


def test_a_throttle_logs_the_first_then_one_per_interval_with_the_count_in_between() -> None:
    now = [100.0]
    throttle = Throttle(60.0, clock=lambda: now[0])
    assert throttle.allow() == 0
    assert [throttle.allow() for _ in range(500)] == [None] * 500
    now[0] += 59.9
    assert throttle.allow() is None
    now[0] += 0.2
    assert throttle.allow() == 501
    assert throttle.allow() is None
    assert quieted(0) == ""
    assert quieted(501) == " (and 501 more not logged)"
