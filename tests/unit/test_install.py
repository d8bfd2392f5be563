"""Installs are reproducible: the test command and the image install against constraints.txt,
which pins every package the venv holds, the AWS ones at the versions aiobotocore accepts."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            out[re.sub(r"[-_.]+", "-", name.lower())] = pinned
    return out


def test_constraints_pin_what_is_installed_and_what_aiobotocore_needs() -> None:
    pinned = pins()
    assert pinned["aiobotocore"] == "3.10.0"
    assert pinned["botocore"] == pinned["boto3"] == "1.43.117"
    for name in ("pyarrow", "psycopg", "moto", "aiohttp", "prometheus-client", "pydantic"):
        assert pinned[name] == version(name), name


def test_the_test_command_and_the_image_use_the_constraints() -> None:
    assert "-c constraints.txt" in (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert "-c /src/constraints.txt" in (ROOT / "Dockerfile").read_text()
