"""Every process, fleet or not, exports how late its event loop runs: streamer_event_loop_lag_seconds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.conftest import Metrics, boto, running, service_config, wait_metrics

pytestmark = pytest.mark.integration


def lag(metrics: Metrics, le: str | None = None) -> float:
    if le is None:
        return metrics.get("streamer_event_loop_lag_seconds_count", {}).get((), 0)
    return metrics.get("streamer_event_loop_lag_seconds_bucket", {}).get((("le", le),), 0)


async def test_a_blocked_event_loop_shows_in_the_lag_histogram(aws: str, tmp_path: Path) -> None:
    boto("s3", aws).create_bucket(Bucket="flow-logs")
    config = service_config(tmp_path, [{"type": "s3", "bucket": "flow-logs", "endpoint_url": aws, "poll_interval_seconds": 0.5}])
    async with running(config) as service:
        before = await wait_metrics(service.port, lambda m: lag(m) >= 3, 30, "lag probes")
        # Block the service's loop (this test shares it), as a long step run on the loop would.
        time.sleep(1.5)  # noqa: ASYNC251 - blocking the loop is the point
        after = await wait_metrics(service.port, lambda m: lag(m) > lag(before), 30, "the next probe")
        assert lag(after) - lag(after, "1.0") > lag(before) - lag(before, "1.0")  # one more probe over 1 s late
        assert lag(after, "+Inf") == lag(after)
