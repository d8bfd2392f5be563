"""The service's own metrics (streamer_*), instrumented directly on our registry.

Per stage: inputs finished by outcome, records in, source errors by a
bounded reason, the timestamp of the last finished input, and how late
inputs arrive (delivery delay: arrival at the source minus the newest
record end inside).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger(__name__)

#: distinct field names streamer_unknown_fields_total keeps as labels; the rest count under OTHER_FIELD
MAX_UNKNOWN_FIELDS = 32
OTHER_FIELD = "other"
#: a label value longer than this is cut (header names come from input)
_FIELD_CHARS = 64

DELAY_BUCKETS = (60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 21600, 86400)


class Telemetry:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.objects = Counter(
            "streamer_objects_total", "Inputs (objects, payloads) finished, by outcome.", ["source", "outcome"], registry=registry
        )
        self.records = Counter("streamer_input_records_total", "Records decoded, by source.", ["source"], registry=registry)
        self.last_object = Gauge(
            "streamer_last_object_timestamp_seconds",
            "When the last input of a source was committed.",
            ["source"],
            registry=registry,
        )
        self.delay = Histogram(
            "streamer_delivery_delay_seconds",
            "Arrival at the source minus the newest record end in the input.",
            ["source"],
            buckets=DELAY_BUCKETS,
            registry=registry,
        )
        self.source_errors = Counter(
            "streamer_source_errors_total", "Failures reading from a source, by reason.", ["source", "reason"], registry=registry
        )
        self.commit_seconds = Histogram(
            "streamer_commit_seconds",
            "Time to commit one group of inputs' state and positions to the checkpoint.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self.commit_inputs = Histogram(
            "streamer_commit_inputs",
            "Inputs committed together in one transaction (group commit).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=registry,
        )
        self.polls = Counter(
            "streamer_source_polls",
            "Completed look-ups for input (S3 listings, SQS receives, GetRecords, FilterLogEvents sweeps), by source.",
            ["source"],
            registry=registry,
        )
        self.future_records = Counter(
            "streamer_future_records",
            "Records more than anomaly.max_future_skew_seconds ahead of the wall clock: counted, but in no window.",
            ["source"],
            registry=registry,
        )
        self.nacl_replies_dropped = Counter(
            "streamer_nacl_waiting_replies_dropped",
            "Unpaired NACL return-reject candidates not kept waiting for a request: their window held "
            "insights.max_waiting_replies_per_window rows already (backscatter). Still in every total.",
            registry=registry,
        )
        self.inputs_in_flight = Gauge(
            "streamer_inputs_in_flight", "Inputs being read, decoded or committed, by source.", ["source"], registry=registry
        )
        self.bytes_in_flight = Gauge(
            "streamer_input_bytes_in_flight",
            "Bytes of the inputs in flight as their source holds them (S3: as stored; Kinesis: inflated text), by source.",
            ["source"],
            registry=registry,
        )
        self.behind = Gauge(
            "streamer_kinesis_behind_seconds",
            "How far a Kinesis shard's reader is behind the newest record (MillisBehindLatest), by source and shard.",
            ["source", "shard"],
            registry=registry,
        )
        self.queue_messages = Gauge(
            "streamer_sqs_messages",
            "SQS queue depth from GetQueueAttributes: state=waiting (visible) or held (received, not yet deleted).",
            ["source", "state"],
            registry=registry,
        )
        self.queue_age = Gauge(
            "streamer_sqs_oldest_message_age_seconds",
            "Age (now minus SentTimestamp) of the oldest message in the last non-empty receive, by source.",
            ["source"],
            registry=registry,
        )
        self.ready = Gauge("streamer_source_ready", "1 once a source has started reading.", ["source"], registry=registry)
        self.loop_lag = Histogram(
            "streamer_event_loop_lag_seconds",
            "How late the event loop woke a probe sleeping a fixed interval: time it was blocked (scrapes, heartbeats wait).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )

        self.unknown_fields_total = Counter(
            "streamer_unknown_fields",
            "Inputs whose header or LogFormat names a field the catalogue does not know (read as a string, used by "
            f'nothing), once per input and field; past {MAX_UNKNOWN_FIELDS} names, field="{OTHER_FIELD}".',
            ["field"],
            registry=registry,
        )
        self._unknown_names: set[str] = set()
        self._unknown_logged = False

    def unknown_fields(self, names: Iterable[str], location: str) -> None:
        """Count one input's unknown fields; each name is logged the first time it is seen (bounded like the labels)."""
        for name in sorted(names):
            name = name[:_FIELD_CHARS]
            if name not in self._unknown_names and len(self._unknown_names) < MAX_UNKNOWN_FIELDS:
                self._unknown_names.add(name)
                log.warning(
                    "%s: field %r is not in the catalogue: read as a string and used by nothing (records still count)",
                    location,
                    name,
                )
            elif name not in self._unknown_names and not self._unknown_logged:
                self._unknown_logged = True
                log.warning(
                    "%s: more than %d unknown field names: the rest count as %r", location, MAX_UNKNOWN_FIELDS, OTHER_FIELD
                )
            self.unknown_fields_total.labels(name if name in self._unknown_names else OTHER_FIELD).inc()

    def finished(self, source: str, outcome: str, records: int, delay_seconds: float | None) -> None:
        self.objects.labels(source, outcome).inc()
        self.records.labels(source).inc(records)
        self.last_object.labels(source).set(time.time())
        if delay_seconds is not None:
            self.delay.labels(source).observe(max(0.0, delay_seconds))

    def source_error(self, source: str, reason: str) -> None:
        self.source_errors.labels(source, reason[:64]).inc()
