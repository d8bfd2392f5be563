"""The corpus of malformed inputs (tests/data/malformed/, see generate.py there) through the decoders and
the real `streamer replay`: each file decodes to its expected records, line errors and failure, and replay
reports each bad file in one line, counts it, and never prints a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import decode_path

MALFORMED = Path(__file__).resolve().parents[2] / "data" / "malformed"
EXPECTED: dict[str, dict[str, Any]] = json.loads((MALFORMED / "expected.json").read_text())


def test_the_corpus_is_what_expected_json_describes() -> None:
    files = {p.name for p in MALFORMED.iterdir()} - {"expected.json", "generate.py"}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_malformed_file_decodes_to_what_is_expected(name: str) -> None:
    rows, errors, failure = decode_path(MALFORMED / name)
    want = EXPECTED[name]
    assert len(rows) == want["records"]
    assert errors.counts == want["errors"]
    assert (failure.reason if failure is not None else None) == want["failure"]


def test_replay_counts_every_bad_file_in_one_line_and_prints_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streamer", "replay", "--output", "json", str(MALFORMED)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    errors: Counter[str] = Counter()
    for want in EXPECTED.values():
        errors.update(want["errors"])
        if want["failure"] is not None:
            errors[want["failure"]] += 1
    assert doc["errors"] == dict(errors)
    failed = [name for name, want in EXPECTED.items() if want["failure"] is not None]
    for name in failed:
        [line] = [line for line in proc.stderr.splitlines() if name in line and EXPECTED[name]["failure"] in line]
        assert str(MALFORMED / name) in line
