"""The metrics reference (docs/reference/metrics.md) is what the code registers, and leaves out no metric a
running streamer exports, one process or a fleet replica.

docgen reads the registry of a one-process service it starts, plus a fleet replica's lease collector;
these tests also collect the registries of services started here, one of them a fleet replica on a real
PostgreSQL, and compare. A stale or incomplete reference fails naming the command to run.
"""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from streamer.docgen import COMMAND, METRICS_DOC, exposed, metrics_reference
from tests.integration.conftest import running, service_config

SOURCE = {"type": "firehose_http", "name": "firehose", "listen_address": "127.0.0.1:0", "access_key": "test-key-of-sixteen-chars"}


def documented() -> set[str]:
    return set(re.findall(r"^\| `(\w+)` \|", METRICS_DOC.read_text(), re.M))


def exported(registry: CollectorRegistry) -> set[str]:
    return {exposed(family.name, family.type) for family in registry.collect()}


def missing(registry: CollectorRegistry) -> str:
    names = sorted(exported(registry) - documented())
    return (
        f"exported but not in {METRICS_DOC.name}: {names}; run {COMMAND} (a collector only a fleet replica registers "
        "goes into streamer/docgen.py's collectors() first)"
    )


def test_the_metrics_reference_is_what_the_code_says() -> None:
    assert METRICS_DOC.read_text() == metrics_reference(), f"{METRICS_DOC.name} is stale: run {COMMAND}"


async def test_every_metric_of_one_process_is_in_the_reference(tmp_path: Path) -> None:
    async with running(service_config(tmp_path, [SOURCE])) as service:
        assert exported(service.registry) <= documented(), missing(service.registry)
        assert "vpcflow_records_total" in exported(service.registry)  # the collectors were read, not an empty registry


async def test_every_metric_of_a_fleet_replica_is_in_the_reference(tmp_path: Path, pg_url: str) -> None:
    config = service_config(tmp_path, [SOURCE], checkpoint={"url": pg_url}, fleet={"replica_id": "r1", "lease_seconds": 6})
    async with running(config) as service:
        assert exported(service.registry) <= documented(), missing(service.registry)
        assert {"streamer_leases", "streamer_leader"} <= exported(service.registry)
