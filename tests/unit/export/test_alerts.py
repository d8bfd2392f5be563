from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import CollectorRegistry

from streamer.aggregate.anomaly import Anomaly
from streamer.config import AlertsConfig
from streamer.export.alerts import Alerter


def anomaly(eni: str = "eni-a", start: int = 1_764_000_000) -> Anomaly:
    return Anomaly(
        eni, "vpc-1", None, start, start + 60, 400, 400, 16000, 3, 10.0, 3.2, 121.9, [("192.0.2.1", 390)], [("22", 400)]
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_alert_holds_for_the_hold_time_then_resolves() -> None:
    clock = Clock()
    alerter = Alerter(AlertsConfig(alertmanager_url="http://127.0.0.1:1", hold_seconds=900), CollectorRegistry(), clock)
    alerter.notify([anomaly()])
    [alert] = alerter.alertmanager_payload()
    assert alert["labels"] == {
        "alertname": "VPCFlowRejectSpike",
        "interface_id": "eni-a",
        "severity": "warning",
        "vpc_id": "vpc-1",
    }
    assert alert["endsAt"] == "2027-01-15T08:15:00Z"  # detection + 900 s
    assert "192.0.2.1 (390)" in alert["annotations"]["top_sources"]
    assert alert["annotations"]["window_start"] == "2025-11-24T16:00:00Z"
    clock.now += 600
    alerter.notify([anomaly(start=1_764_000_060)])  # a second anomalous window extends the hold
    clock.now += 600
    alerter.expire()
    assert list(alerter.active) == ["eni-a"]
    clock.now += 301
    alerter.expire()
    assert alerter.active == {}
    [resolved] = alerter.alertmanager_payload()
    assert resolved["endsAt"] == "2027-01-15T08:25:01Z"
    assert resolved["startsAt"] == "2027-01-15T08:00:00Z"


def test_webhook_payload_carries_status_and_the_anomaly() -> None:
    alerter = Alerter(AlertsConfig(webhook_url="http://127.0.0.1:1"), CollectorRegistry(), Clock())
    alerter.notify([anomaly()])
    doc = alerter.webhook_payload()
    assert doc["alerts"][0]["status"] == "firing"
    assert doc["alerts"][0]["anomaly"]["top_ports"] == [{"port": 22, "records": 400}]


def test_alerts_active_expires_with_no_alert_target_configured() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    alerter = Alerter(AlertsConfig(hold_seconds=900), registry, clock)
    assert alerter.targets == []
    alerter.notify([anomaly(), anomaly("eni-b")])
    assert registry.get_sample_value("streamer_alerts_active") == 2
    clock.now += 899
    assert registry.get_sample_value("streamer_alerts_active") == 2
    clock.now += 1
    assert registry.get_sample_value("streamer_alerts_active") == 0  # no sending loop needed for the gauge


async def test_the_loop_with_no_target_expires_alerts_and_sends_nothing() -> None:
    clock = Clock()
    alerter = Alerter(AlertsConfig(hold_seconds=60, resend_interval_seconds=0.05), CollectorRegistry(), clock)
    alerter.notify([anomaly()])
    task = asyncio.create_task(alerter.run())
    try:
        clock.now += 61
        deadline = asyncio.get_running_loop().time() + 10
        while True:  # the loop wakes every resend interval
            if not alerter.active:
                break
            assert asyncio.get_running_loop().time() < deadline, "the alert never expired"
            await asyncio.sleep(0.01)
        assert alerter.resolved == []
        alerter.notify([anomaly()])  # a later spike starts a new alert, not the old one's tenth window
        assert alerter.active["eni-a"].windows == 1
        assert alerter.active["eni-a"].starts_at == clock.now
    finally:
        task.cancel()  # right after a wake-up (the notify above): the loop must still stop
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


def test_the_alert_links_its_runbook_under_the_configured_base() -> None:
    """VPCFlowRejectSpike carries runbook_url like the rules' alerts (docs/runbooks.md#vpcflowrejectspike)."""
    from streamer.settings import RUNBOOK_BASE_URL

    alerter = Alerter(AlertsConfig(alertmanager_url="http://127.0.0.1:1"), CollectorRegistry(), Clock())
    alerter.notify([anomaly()])
    [alert] = alerter.alertmanager_payload()
    assert alert["annotations"]["runbook_url"] == RUNBOOK_BASE_URL + "#vpcflowrejectspike"
    own = Alerter(AlertsConfig(runbook_base_url="https://wiki.example/runbooks/"), CollectorRegistry(), Clock())
    own.notify([anomaly()])
    [webhook_alert] = own.webhook_payload()["alerts"]
    assert webhook_alert["annotations"]["runbook_url"] == "https://wiki.example/runbooks/#vpcflowrejectspike"
    none = Alerter(AlertsConfig(runbook_base_url=None), CollectorRegistry(), Clock())
    none.notify([anomaly()])
    assert "runbook_url" not in none.alertmanager_payload()[0]["annotations"]


def test_an_alerts_labels_never_change_once_sent_when_its_context_arrives_later() -> None:
    """Alertmanager tells alerts apart by their labels: a resend or a resolve with labels the first send lacked
    is another alert (the first would fire on until its endsAt, never resolved). Context that arrives after the
    first send (a describe throttled, denied or not yet due) goes to the annotations only."""
    from streamer.aggregate.context import InterfaceContext

    clock = Clock()
    known: dict[str, InterfaceContext] = {}
    alerter = Alerter(
        AlertsConfig(alertmanager_url="http://127.0.0.1:1", hold_seconds=900), CollectorRegistry(), clock, context=known.get
    )
    alerter.notify([anomaly()])
    [first] = alerter.alertmanager_payload()
    known["eni-a"] = InterfaceContext("eni-a", interface_type="interface", name="web-1", instance_id="i-1")
    clock.now += 60
    alerter.notify([anomaly(start=1_764_000_060)])  # a later window: the alert is resent
    [again] = alerter.alertmanager_payload()
    assert again["labels"] == first["labels"]
    assert again["annotations"]["interface_type"] == "interface"  # the context still shows, as annotations
    clock.now += 901
    alerter.expire()
    [resolved] = alerter.alertmanager_payload()
    assert resolved["labels"] == first["labels"]


def test_an_alert_sent_with_context_keeps_its_labels_when_the_context_changes() -> None:
    from streamer.aggregate.context import InterfaceContext

    clock = Clock()
    known = {"eni-a": InterfaceContext("eni-a", name="web-1", instance_id="i-1")}
    alerter = Alerter(AlertsConfig(alertmanager_url="http://127.0.0.1:1"), CollectorRegistry(), clock, context=known.get)
    alerter.notify([anomaly()])
    [first] = alerter.alertmanager_payload()
    assert first["labels"]["name"] == "web-1"
    assert first["labels"]["instance_id"] == "i-1"
    known["eni-a"] = InterfaceContext("eni-a", name="web-renamed", instance_id="i-1")  # a refresh saw a new Name tag
    clock.now += 60
    alerter.notify([anomaly(start=1_764_000_060)])
    [again] = alerter.alertmanager_payload()
    assert again["labels"] == first["labels"]
