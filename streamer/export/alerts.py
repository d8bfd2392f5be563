"""Rejected-traffic spike alerts to Alertmanager (v2 API) and/or a JSON webhook.

Flow logs arrive 5-15 minutes late, so a short spike is usually over when it
is seen. An alert therefore stays firing for `hold_seconds` of wall-clock
time after its last anomalous window was detected, then resolves. While
active it is re-sent every `resend_interval_seconds` with
`endsAt = last detection + hold`, so Alertmanager resolves it on time even if
streamer dies. Sending runs in its own task and only reads the alert table:
a slow or failing receiver is retried with backoff and never blocks ingestion.

One alert per ENI (`alertname=VPCFlowRejectSpike`, labels `interface_id`,
`vpc_id`/`subnet_id`, `instance_id` and `name` when known, `severity`);
annotations carry observed vs baseline, the window, the top rejected sources
and destination ports, what the ENI is (type, requester, description,
security groups) when its context is known (aggregate/context.py), and
`runbook_url` (docs/runbooks.md, under `alerts.runbook_base_url`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from streamer.aggregate.anomaly import Anomaly
from streamer.aggregate.context import InterfaceContext
from streamer.settings import AlertsConfig

log = logging.getLogger(__name__)

ALERT_NAME = "VPCFlowRejectSpike"
RETRIES = 3


def runbook_url(base: str, alertname: str) -> str:
    """The alert's section of the runbooks page (docs/runbooks.md: one heading per alert, its anchor the name in lower case)."""
    return f"{base}#{alertname.lower()}"


def rfc3339(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclasses.dataclass
class ActiveAlert:
    anomaly: Anomaly
    starts_at: float
    last_detected: float
    windows: int = 1
    #: the labels its ENI context added when it was first sent, fixed from then on: Alertmanager tells
    #: alerts apart by their labels, so a resend or resolve with other labels would be another alert
    context_labels: dict[str, str] | None = None


class Alerter:
    def __init__(
        self,
        config: AlertsConfig,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.time,
        context: Callable[[str], InterfaceContext | None] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        #: what an ENI is, read when an alert is sent (its context may arrive after the detection)
        self.context = context
        self.active: dict[str, ActiveAlert] = {}
        self.resolved: list[ActiveAlert] = []
        self._wake = asyncio.Event()
        self.sent = Counter(
            "streamer_alert_notifications_total",
            "Alert notifications sent, by target and result.",
            ["target", "result"],
            registry=registry,
        )
        self.active_gauge = Gauge("streamer_alerts_active", "Rejected-traffic spike alerts currently firing.", registry=registry)
        # Read at scrape time: an alert past its hold stops counting then, whether or not anything sends alerts.
        self.active_gauge.set_function(self.firing)
        self.detected = Counter("streamer_anomalies_total", "Anomalous (ENI, window) pairs detected.", registry=registry)

    @property
    def targets(self) -> list[str]:
        return [t for t in (self.config.alertmanager_url, self.config.webhook_url) if t]

    def preview(self, anomalies: list[Anomaly]) -> dict[str, ActiveAlert]:
        """The active alerts `notify` would leave, without changing anything (a fleet's leader commits them first)."""
        return self._merged(anomalies, self.clock())

    def _merged(self, anomalies: list[Anomaly], now: float) -> dict[str, ActiveAlert]:
        active = dict(self.active)
        for anomaly in anomalies:
            current = active.get(anomaly.interface_id)
            if current is None:
                active[anomaly.interface_id] = ActiveAlert(anomaly, now, now)
            else:
                keep = anomaly if anomaly.window_start >= current.anomaly.window_start else current.anomaly
                active[anomaly.interface_id] = ActiveAlert(
                    keep, current.starts_at, now, current.windows + 1, current.context_labels
                )
        return active

    def notify(self, anomalies: list[Anomaly]) -> None:
        """Record detections (called after their state is committed)."""
        now = self.clock()
        for anomaly in anomalies:
            self.detected.inc()
            log.warning(
                "reject spike on %s: %d rejected records in [%s, %s), baseline %.1f (score %.1f); top sources %s",
                self.describe(anomaly.interface_id),
                anomaly.rejected_records,
                rfc3339(anomaly.window_start),
                rfc3339(anomaly.window_end),
                anomaly.baseline,
                anomaly.score,
                ", ".join(f"{a} ({n})" for a, n in anomaly.top_sources) or "-",
            )
        self.active = self._merged(anomalies, now)
        if anomalies:
            self._wake.set()

    def firing(self) -> int:
        """Active alerts still inside their hold time."""
        now = self.clock()
        return sum(1 for a in list(self.active.values()) if now < a.last_detected + self.config.hold_seconds)

    def expire(self) -> None:
        now = self.clock()
        for eni, alert in list(self.active.items()):
            if now >= alert.last_detected + self.config.hold_seconds:
                self.resolved.append(self.active.pop(eni))

    def alertmanager_payload(self) -> list[dict[str, Any]]:
        now = self.clock()
        out = [self._alert(a, a.last_detected + self.config.hold_seconds) for a in self.active.values()]
        out += [self._alert(a, now) for a in self.resolved]
        return out

    def webhook_payload(self) -> dict[str, Any]:
        return {
            "receiver": "streamer",
            "alerts": [
                {**self._alert(a, a.last_detected + self.config.hold_seconds), "status": "firing", "anomaly": a.anomaly.to_json()}
                for a in self.active.values()
            ]
            + [{**self._alert(a, self.clock()), "status": "resolved", "anomaly": a.anomaly.to_json()} for a in self.resolved],
        }

    def _alert(self, alert: ActiveAlert, ends_at: float) -> dict[str, Any]:
        a = alert.anomaly
        labels = {"alertname": ALERT_NAME, "interface_id": a.interface_id, "severity": self.config.severity}
        if a.vpc_id:
            labels["vpc_id"] = a.vpc_id
        if a.subnet_id:
            labels["subnet_id"] = a.subnet_id
        sources = ", ".join(f"{addr} ({n})" for addr, n in a.top_sources) or "-"
        ports = ", ".join(f"{port} ({n})" for port, n in a.top_ports) or "-"
        annotations = {
            "summary": (
                f"Rejected traffic spike on {a.interface_id}: {a.rejected_records} rejected records "
                f"in {a.window_end - a.window_start} s (baseline {a.baseline:.1f})"
            ),
            "description": (
                f"{a.interface_id} rejected {a.rejected_records} records "
                f"({a.rejected_packets} packets, {a.rejected_bytes} bytes) "
                f"in the window {rfc3339(a.window_start)} to {rfc3339(a.window_end)}; its baseline is {a.baseline:.1f} "
                f"± {a.baseline_spread:.1f} per window (score {a.score:.1f}). Anomalous windows so far: {alert.windows}. "
                f"Top rejected sources: {sources}. Top destination ports: {ports}."
            ),
            "observed_rejected_records": str(a.rejected_records),
            "baseline_rejected_records": f"{a.baseline:.1f}",
            "score": f"{a.score:.1f}",
            "window_start": rfc3339(a.window_start),
            "window_end": rfc3339(a.window_end),
            "top_sources": sources,
            "top_destination_ports": ports,
        }
        if self.config.runbook_base_url:
            annotations["runbook_url"] = runbook_url(self.config.runbook_base_url, ALERT_NAME)
        known = self.context(a.interface_id) if self.context is not None else None
        if alert.context_labels is None:  # first sent now: what is known now names it for good
            alert.context_labels = _context_labels(labels, known) if known is not None else {}
        labels.update(alert.context_labels)
        if known is not None:
            _add_annotations(annotations, known)
        return {"labels": labels, "annotations": annotations, "startsAt": rfc3339(alert.starts_at), "endsAt": rfc3339(ends_at)}

    def describe(self, interface_id: str) -> str:
        """The ENI as a log line names it: its id, then its name and type when known."""
        known = self.context(interface_id) if self.context is not None else None
        if known is None:
            return interface_id
        what = ", ".join(x for x in (known.name, known.interface_type, known.instance_id) if x)
        return f"{interface_id} ({what})" if what else interface_id

    async def run(self) -> None:
        """Send on every new detection and every resend interval, until cancelled.

        With no target configured, only expire alerts past their hold (so that a
        later spike on the same ENI starts a new alert).
        """
        if not self.targets:
            while True:
                await self._woken()
                self.expire()
                self.resolved.clear()  # nobody to tell
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                await self._woken()
                self.expire()
                if not self.active and not self.resolved:
                    continue
                ok = True
                if self.config.alertmanager_url:
                    url = self.config.alertmanager_url.rstrip("/") + "/api/v2/alerts"
                    ok &= await self._post(http, "alertmanager", url, self.alertmanager_payload())
                if self.config.webhook_url:
                    ok &= await self._post(http, "webhook", self.config.webhook_url, self.webhook_payload())
                if ok:
                    self.resolved.clear()  # resolutions delivered; firing alerts are re-sent anyway

    async def _woken(self) -> None:
        """Until a new detection or the resend interval. `asyncio.timeout`, not `wait_for`: on Python 3.11
        wait_for swallows a cancellation that lands as the event is set, and the service would never stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.resend_interval_seconds):
                await self._wake.wait()
        self._wake.clear()

    async def _post(self, http: aiohttp.ClientSession, target: str, url: str, payload: Any) -> bool:
        delay = 1.0
        for attempt in range(1, RETRIES + 1):
            try:
                async with http.post(url, json=payload) as resp:
                    if resp.status < 300:
                        self.sent.labels(target, "ok").inc()
                        return True
                    problem = f"HTTP {resp.status}: {(await resp.text())[:200]}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = str(exc) or type(exc).__name__
            self.sent.labels(target, "error").inc()
            log.warning("sending alerts to %s failed (attempt %d of %d): %s", target, attempt, RETRIES, problem)
            if attempt < RETRIES:
                await asyncio.sleep(delay)
                delay *= 2
        return False


def _context_labels(labels: Mapping[str, str], known: InterfaceContext) -> dict[str, str]:
    """Labels that route and group (instance, name), taken once per alert (ActiveAlert.context_labels).
    The records' vpc_id/subnet_id stay as the detector saw them; EC2's fill them when the records had none."""
    candidates = (
        ("instance_id", known.instance_id),
        ("name", known.name),
        ("vpc_id", known.vpc_id),
        ("subnet_id", known.subnet_id),
    )
    return {key: value for key, value in candidates if value and key not in labels}


def _add_annotations(annotations: dict[str, str], known: InterfaceContext) -> None:
    """Annotations that explain (type, description, groups): the current context, as it changes."""
    notes = {
        "interface_type": known.interface_type,
        "requester": known.requester,
        "interface_description": known.description,
        "security_groups": ", ".join(known.security_groups) or None,
        "instance_name": known.instance_name,
        "availability_zone": known.az,
        "interface_deleted": "true" if known.deleted else None,
    }
    annotations.update({k: v for k, v in notes.items() if v})
    what = ", ".join(x for x in (known.name, known.interface_type, known.instance_id) if x)
    if what:
        annotations["summary"] = annotations["summary"].replace(known.interface_id, f"{known.interface_id} ({what})", 1)
