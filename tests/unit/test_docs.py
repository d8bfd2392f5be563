"""The docs say what the code does: generated references are current, the README's config and links work,
the runbooks' base URL is where the site is published, and the backup command of Operations works."""

from __future__ import annotations

import re
import shlex
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from streamer import docgen
from streamer.config import Config, parse_config
from streamer.settings import RUNBOOK_BASE_URL

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_the_config_reference_is_what_the_code_says() -> None:
    """(The metrics reference starts a service to read its registry: tests/integration/test_docs_metrics.py.)"""
    path = docgen.CONFIG_DOC
    assert path.read_text() == docgen.config_reference(), f"{path.relative_to(ROOT)} is stale: run {docgen.COMMAND}"


def test_the_config_reference_names_every_key_with_its_environment_variable() -> None:
    text = docgen.CONFIG_DOC.read_text()
    for section, info in Config.model_fields.items():
        model = info.annotation
        if isinstance(model, type) and issubclass(model, docgen.BaseModel):
            for key in model.model_fields:
                assert f"| `{section}.{key}` |" in text
                assert f"`STREAMER__{section.upper()}__{key.upper()}`" in text
    assert "| `sources[].queue_url` |" in text
    assert "`STREAMER__SOURCES__N__QUEUE_URL`" in text


def test_a_key_without_a_description_stops_the_generation_naming_it() -> None:
    class Section(docgen.BaseModel):
        #: documented
        good: int = 1
        bad: int = 2

    rows = docgen._rows(Section, "s.", "STREAMER__S__")
    assert next(rows) == "| `s.good` | integer | `1` | `STREAMER__S__GOOD` | documented |"
    with pytest.raises(SystemExit, match=r"Section\.bad: no description.*python -m streamer\.docgen"):
        next(rows)


def test_a_label_without_a_bound_stops_the_generation_naming_it() -> None:
    assert "`interface_id`: `metrics.max_interfaces`" in docgen.bound("vpcflow_records", ("interface_id", "action"), "counter")
    assert docgen.bound("streamer_commit_seconds", (), "histogram") == "one series; × the buckets"
    assert docgen.bound("vpcflow_interface_info", ("interface_id", "name"), "gauge").startswith("one series per ENI")
    with pytest.raises(SystemExit, match=r"streamer_x: label 'colour' is not in LABEL_BOUNDS"):
        docgen.bound("streamer_x", ("colour",), "counter")


def test_the_check_command_names_a_stale_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "docs" / "reference" / "config.md"
    stale.parent.mkdir(parents=True)
    stale.write_text("old\n")
    monkeypatch.setattr(docgen, "ROOT", tmp_path)
    monkeypatch.setattr(docgen, "generated", lambda: {stale: "new\n"})
    assert docgen.main(["--check"]) == 1
    assert capsys.readouterr().err == "docs/reference/config.md differs from the code: run python -m streamer.docgen\n"
    assert docgen.main([]) == 0
    assert stale.read_text() == "new\n"


def test_the_readme_is_short_and_its_config_is_valid() -> None:
    assert len(README.splitlines()) <= 220
    (block,) = re.findall(r"```yaml\n(.*?)```", README, re.S)
    config = parse_config(yaml.safe_load(block), {})
    assert config.sources[0].type == "s3"


def test_the_readme_links_to_pages_that_exist() -> None:
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not link.startswith("http")]
    assert any(link.startswith("docs/") for link in local)
    for link in local:
        assert (ROOT / link).is_file(), link


def test_the_readme_installs_our_distribution_name() -> None:
    assert "`vpcflow-streamer`" in README
    commands = [line for line in README.splitlines() if line.startswith("pip install")]
    assert commands
    for line in commands:  # never the unrelated `streamer` distribution
        assert "streamer" not in [word.split("[")[0] for word in shlex.split(line.split("#")[0])]


def test_the_runbooks_are_linked_where_the_site_is_published() -> None:
    site = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert site["site_url"] + "runbooks/" == RUNBOOK_BASE_URL
    assert site["strict"] is True


def test_the_test_script_builds_the_docs_strictly() -> None:
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert "mkdocs build --strict" in script


def test_the_backup_command_of_operations_copies_an_open_checkpoint(tmp_path: Path) -> None:
    """docs/operations.md's online backup, run while a checkpoint store is open, makes a store that opens."""
    from streamer.aggregate.state import FlowState
    from streamer.store.base import Commit, Done
    from streamer.store.sqlite import CheckpointStore

    (command,) = [line for line in (ROOT / "docs" / "operations.md").read_text().splitlines() if line.startswith("python3 -c")]
    argv = shlex.split(command)
    live, copy = tmp_path / "state.db", tmp_path / "backup" / "state.db"
    copy.parent.mkdir()
    store = CheckpointStore(live)
    try:
        store.commit(Commit(FlowState(decode_errors={"wrong_field_count": 3}), [Done("s3", "k#e", "ok")], {("s", "p"): "42"}))
        argv[argv.index("/var/lib/streamer/state.db")] = str(live)
        argv[argv.index("/backup/state.db")] = str(copy)
        subprocess.run(argv, check=True, timeout=60)
    finally:
        store.close()
    restored = CheckpointStore(copy)
    try:
        assert restored.done_among("s3", ["k#e", "other"]) == {"k#e"}
        assert restored.cursors("s") == {"p": "42"}
        assert restored.load_state().decode_errors == {"wrong_field_count": 3}
    finally:
        restored.close()
    assert sqlite3.connect(copy).execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_sections_inside_sections_and_mappings_are_documented_key_by_key() -> None:
    """What the next config section may hold (a model in a model, optional, a mapping) still gets a row per key."""
    from pydantic import Field

    class Inner(docgen.BaseModel):
        #: how often
        refresh_seconds: float = Field(default=600, gt=0)

    class Outer(docgen.BaseModel):
        #: role per account
        role_arn: dict[str, str] = Field(default_factory=dict)
        #: the inner part
        inner: Inner = Inner()
        #: maybe
        maybe: Inner | None = None

    rows = list(docgen._rows(Outer, "enrich.", "STREAMER__ENRICH__"))
    assert rows == [
        "| `enrich.role_arn` | mapping of string to string | `{}` | `STREAMER__ENRICH__ROLE_ARN` | role per account |",
        "| `enrich.inner` | section (keys below) | as below | `STREAMER__ENRICH__INNER` | the inner part |",
        "| `enrich.inner.refresh_seconds` | number (> 0) | `600` | `STREAMER__ENRICH__INNER__REFRESH_SECONDS` | how often |",
        "| `enrich.maybe` | section (keys below), optional | `null` | `STREAMER__ENRICH__MAYBE` | maybe |",
        "| `enrich.maybe.refresh_seconds` | number (> 0) | `600` | `STREAMER__ENRICH__MAYBE__REFRESH_SECONDS` | how often |",
    ]
