"""CHANGELOG.md moves with the package: Keep a Changelog's shape, the latest release is the package version,
and the checkpoint schema versions it names are the stores' own."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from streamer.store import postgres, sqlite

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "CHANGELOG.md").read_text()
RELEASE = re.compile(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", re.M)


def test_it_has_unreleased_first_then_releases_newest_first() -> None:
    headings = re.findall(r"^## (.*)$", TEXT, re.M)
    assert headings[0] == "[Unreleased]"
    releases = RELEASE.findall(TEXT)
    assert len(releases) == len(headings) - 1, "every other heading is `## [x.y.z] - YYYY-MM-DD`"
    versions = [tuple(int(p) for p in v.split(".")) for v, _ in releases]
    assert versions == sorted(versions, reverse=True)
    assert [d for _, d in releases] == sorted((d for _, d in releases), reverse=True)


def test_the_latest_release_is_the_package_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    latest = RELEASE.search(TEXT)
    assert latest is not None
    assert latest.group(1) == version, "pyproject.toml's version and CHANGELOG.md's latest release move together"


def test_the_schema_versions_it_names_last_are_the_stores() -> None:
    """The newest line `Checkpoint schema: SQLite N, PostgreSQL M` (under Unreleased when a change moved one)."""
    found = re.search(r"^Checkpoint schema: SQLite (\d+), PostgreSQL (\d+)\.$", TEXT, re.M)
    assert found is not None
    named = (int(found.group(1)), int(found.group(2)))
    assert named == (sqlite._SCHEMA_VERSION, len(postgres.MIGRATIONS)), (
        "a store's schema version changed: add `Checkpoint schema: SQLite N, PostgreSQL M.` under [Unreleased]"
    )
