"""Fleet rules in deploy/ are valid and behave as unit-tested with the real promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
TESTS = sorted((ROOT / "tests" / "rules").glob("*.test.yml"))


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed (scripts/test.sh installs Debian's prometheus)")
    return path


def test_there_are_rules_and_rule_tests() -> None:
    assert RULES
    assert TESTS


@pytest.mark.parametrize("rules", RULES, ids=lambda p: p.name)
def test_rules_pass_promtool_check(promtool: str, rules: Path) -> None:
    proc = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("test_file", TESTS, ids=lambda p: p.name)
def test_rule_unit_tests_pass(promtool: str, test_file: Path) -> None:
    proc = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60, check=False, cwd=test_file.parent
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


# --- a runbook per alert (docs/runbooks.md) ------------------------------------------------------------

RUNBOOKS = ROOT / "docs" / "runbooks.md"
#: what every runbook section says, in this order
PARTS = ("**What it means.**", "**Confirm.**", "**Likely causes.**", "**What to do.**")


def runbook_sections() -> dict[str, str]:
    """Anchor -> section text, the anchor as MkDocs makes it from the `## ` heading (markdown's toc slugify)."""
    from markdown.extensions.toc import slugify

    parts = re.split(r"^## (.+)$", RUNBOOKS.read_text(), flags=re.M)
    return {slugify(heading, "-"): body for heading, body in zip(parts[1::2], parts[2::2], strict=True)}


def alerting_rules() -> list[dict[str, Any]]:
    groups = [group for path in RULES for group in yaml.safe_load(path.read_text())["groups"]]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_alerting_rule_links_its_runbook_section() -> None:
    from streamer.settings import RUNBOOK_BASE_URL

    sections = runbook_sections()
    rules = alerting_rules()
    assert rules
    for rule in rules:
        url = rule.get("annotations", {}).get("runbook_url")
        assert url, f"{rule['alert']}: no runbook_url annotation (add a section to docs/runbooks.md and link it)"
        base, _, anchor = url.partition("#")
        assert base == RUNBOOK_BASE_URL, f"{rule['alert']}: runbook_url must start with {RUNBOOK_BASE_URL}"
        assert anchor in sections, f"{rule['alert']}: docs/runbooks.md has no section #{anchor}"
        assert anchor == rule["alert"].lower()


def test_every_runbook_section_is_an_alert_and_says_the_four_things() -> None:
    from streamer.export.alerts import ALERT_NAME

    sections = runbook_sections()
    alerts = {rule["alert"].lower() for rule in alerting_rules()} | {ALERT_NAME.lower()}
    assert set(sections) == alerts, "one section per alert, named after it"
    for anchor, body in sections.items():
        places = [body.find(part) for part in PARTS]
        assert -1 not in places, f"#{anchor} lacks one of {PARTS}"
        assert places == sorted(places), f"#{anchor}: {PARTS} in this order"
