"""Exposition is checked by parsing it with prometheus_client's own parser,
and served over real HTTP by aiohttp on 127.0.0.1."""

from __future__ import annotations

import aiohttp
import pyarrow as pa
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamer.aggregate.counters import Counters, count_batch
from streamer.aggregate.state import FlowState
from streamer.export.http import build_app, serve
from streamer.export.metrics import OTHER_INTERFACE, FlowCollector
from streamer.export.telemetry import Telemetry


def state_with(rows: list[tuple[str, str, str, int, int]], errors: dict[str, int] | None = None) -> FlowState:
    eni, action, status, packets, nbytes = zip(*rows, strict=True)
    table = pa.table({"interface-id": eni, "action": action, "log-status": status, "packets": packets, "bytes": nbytes})
    return FlowState(Counters(count_batch(table)), dict(errors or {}))


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_exposition_parses_with_expected_series() -> None:
    state = state_with(
        [("eni-a", "ACCEPT", "OK", 5, 500), ("eni-a", "REJECT", "OK", 2, 80), ("eni-b", "-", "NODATA", 0, 0)],
        {"wrong_field_count": 3},
    )
    registry = CollectorRegistry()
    registry.register(FlowCollector(lambda: state))
    got = samples(registry)
    assert got[("vpcflow_records_total", (("action", "ACCEPT"), ("interface_id", "eni-a")))] == 1
    assert got[("vpcflow_packets_total", (("action", "REJECT"), ("interface_id", "eni-a")))] == 2
    assert got[("vpcflow_bytes_total", (("action", "ACCEPT"), ("interface_id", "eni-a")))] == 500
    assert got[("vpcflow_log_status_total", (("log_status", "NODATA"),))] == 1
    assert got[("vpcflow_log_status_total", (("log_status", "OK"),))] == 2
    assert got[("streamer_decode_errors_total", (("reason", "wrong_field_count"),))] == 3


def test_interface_cap_folds_the_tail_and_keeps_sums() -> None:
    rows = [(f"eni-{i:02d}", "REJECT", "OK", 1, 1) for i in range(20) for _ in range(i + 1)]
    registry = CollectorRegistry()
    registry.register(FlowCollector(lambda: state_with(rows), max_interfaces=5))
    got = samples(registry)
    records = {dict(labels)["interface_id"]: v for (name, labels), v in got.items() if name == "vpcflow_records_total"}
    assert set(records) == {"eni-19", "eni-18", "eni-17", "eni-16", "eni-15", OTHER_INTERFACE}
    assert sum(records.values()) == len(rows)


async def test_http_endpoints_on_loopback() -> None:
    registry = CollectorRegistry()
    registry.register(FlowCollector(lambda: state_with([("eni-a", "ACCEPT", "OK", 1, 1)])))
    ready = {"value": False}
    runner, port = await serve(build_app(registry, lambda: ready["value"]), "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                body = await resp.text()
            assert any(f.name == "vpcflow_records" for f in text_string_to_metric_families(body))
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                assert resp.status == 503
            ready["value"] = True
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                assert resp.status == 200
    finally:
        await runner.cleanup()


async def test_metrics_speaks_openmetrics_and_gzip_when_asked_and_has_no_created_series() -> None:
    import gzip

    registry = CollectorRegistry()
    Telemetry(registry).finished("s3-0", "ok", 10, 60.0)
    registry.register(FlowCollector(lambda: state_with([("eni-a", "ACCEPT", "OK", 1, 1)])))
    runner, port = await serve(build_app(registry), "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics", headers={"Accept-Encoding": "identity"}) as resp:
                plain = (await resp.read()).decode()
                assert "Content-Encoding" not in resp.headers
                assert resp.headers["Content-Type"].startswith("text/plain")
            assert "_created" not in plain
            assert "streamer_objects_total" in plain
            headers = {"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"}
            async with http.get(f"http://127.0.0.1:{port}/metrics", headers=headers) as resp:
                assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
                assert resp.headers["Content-Encoding"] == "gzip"
                body = gzip.decompress(await resp.read()).decode()
            assert body.rstrip().endswith("# EOF")
            assert "_created" not in body
    finally:
        await runner.cleanup()


def test_an_idle_subnet_s_series_go_and_its_vpc_s_total_stays() -> None:
    """vpcflow_subnet_* follow the active subnets (forgotten after metrics.interface_idle_seconds, as ENIs);
    vpcflow_vpc_rejected_records_total keeps the forgotten subnet's records: it never goes down."""
    from streamer.aggregate.anomaly import Settings
    from streamer.aggregate.detection import Detection
    from streamer.aggregate.windows import WindowBatch, window_batch
    from streamer.export.metrics import DetectionCollector

    def rejects(subnet: str, n: int) -> list[WindowBatch]:
        table = pa.table(
            {
                "interface-id": [f"eni-{subnet}"] * n,
                "action": ["REJECT"] * n,
                "end": pa.array([1000] * n, pa.int64()),
                "bytes": pa.array([40] * n, pa.int64()),
                "vpc-id": ["vpc-1"] * n,
                "subnet-id": [subnet] * n,
            }
        )
        return [window_batch(table, 60)]

    det = Detection.create(Settings(window_seconds=60, idle_seconds=3600), 0)
    registry = CollectorRegistry()
    registry.register(DetectionCollector(lambda: det))
    det, _ = det.advance(rejects("subnet-a", 3), now=0.0)
    det, _ = det.advance(rejects("subnet-b", 2), now=1800.0)
    before = samples(registry)
    assert before[("vpcflow_subnet_rejected_records_total", (("subnet_id", "subnet-a"), ("vpc_id", "vpc-1")))] == 3
    assert before[("vpcflow_vpc_rejected_records_total", (("vpc_id", "vpc-1"),))] == 5
    det, _ = det.advance(rejects("subnet-b", 1), now=3600.0)  # subnet-a: nothing for an hour
    after = samples(registry)
    assert ("vpcflow_subnet_rejected_records_total", (("subnet_id", "subnet-a"), ("vpc_id", "vpc-1"))) not in after
    assert after[("vpcflow_vpc_rejected_records_total", (("vpc_id", "vpc-1"),))] == 6
