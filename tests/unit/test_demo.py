"""The demo's traffic never runs ahead of the wall clock (it would be kept out of every window)."""

from __future__ import annotations

import time

from streamer.demo import DemoOptions, Producer


def test_demo_event_time_runs_fast_until_it_catches_up_then_real_time() -> None:
    producer = Producer(None, DemoOptions(speed=20))
    now = time.time()
    assert producer.pause(15, now) == 3.0  # 20x: a minute of traffic every 3 s
    minute = 15
    wall = now
    while minute < 200:  # simulate a long run
        wall += producer.pause(minute, wall)  # then minute `minute` is written
        newest_end = producer.event_start + (minute + 2) * 60  # its records start within it, last under 60 s
        assert newest_end <= wall + 3.0  # never from the future (beyond one 3 s tick, far inside the skew guard)
        minute += 1
    assert producer.pause(minute, wall) >= 59  # and by then in real time
