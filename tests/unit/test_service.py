"""The service wires config into the parts: what the parts' own tests cannot see."""

from __future__ import annotations

from pathlib import Path

from streamer.aws import AwsClients
from streamer.config import parse_config
from streamer.service import Service


def test_detector_baselines_expire_with_their_interfaces(tmp_path: Path) -> None:
    """metrics.interface_idle_seconds bounds the detector too: no baseline outlives its ENI's series."""
    doc = {
        "checkpoint": {"path": str(tmp_path / "state.db")},
        "sources": [{"type": "s3", "bucket": "flow-logs"}],
        "metrics": {"interface_idle_seconds": 1234},
    }
    service = Service(parse_config(doc, {}), AwsClients())
    assert service._settings().idle_seconds == 1234
