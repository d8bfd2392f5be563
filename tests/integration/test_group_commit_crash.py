"""kill -9 while a group commit is inside its transaction, restart: nothing lost, nothing twice.

The service runs as a real process (`streamer run`) polling S3 on moto, several
objects in flight, on SQLite and on a fleet's PostgreSQL alone. A test-only
seam (STREAMER_TEST_COMMIT_PAUSE) stops the first transaction holding two or
more inputs after it has written them and before COMMIT, and notes how many
it holds; the test SIGKILLs the process there, then restarts it without the
seam until /metrics equals the truth.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Truth, aws_key, boto, flow_object
from tests.integration.test_crash_restart import Harness, store  # noqa: F401 - the sqlite/postgres fixture

pytestmark = pytest.mark.integration


def test_sigkill_inside_a_group_commit_then_restart_counts_exactly(
    aws: str, tmp_path: Path, store: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811 - the fixture
) -> None:
    n_objects = 12
    s3 = boto("s3", aws)
    s3.create_bucket(Bucket="flow-logs")
    truth = Truth()
    now = dt.datetime.now(dt.UTC)
    for i in range(n_objects):
        when = now - dt.timedelta(minutes=i)
        s3.put_object(
            Bucket="flow-logs", Key=aws_key(when, "daily", n=i), Body=flow_object(truth, 4000, i, int(when.timestamp()) - 900)
        )
    source = {"type": "s3", "bucket": "flow-logs", "endpoint_url": aws, "poll_interval_seconds": 0.2, "max_concurrent_objects": 4}
    h = Harness(tmp_path, source, store)
    paused = tmp_path / "paused"
    monkeypatch.setenv("STREAMER_TEST_COMMIT_PAUSE", str(paused))
    h.kill_when(paused.exists, "a group commit of two or more inputs inside its transaction")
    monkeypatch.delenv("STREAMER_TEST_COMMIT_PAUSE")
    in_group = int(paused.read_text())
    assert in_group >= 2
    done = h.done_objects()
    assert done <= n_objects - in_group  # the paused group's objects are not committed
    h.finish_and_compare(truth)
    assert h.done_objects() == n_objects
