"""Prometheus exposition of the flow state, built fresh on every scrape.

A custom collector (client_python's pattern for exporters) reads the state
and emits families, so nothing is kept twice and keys that vanish stop being
exported. Per-interface series are bounded: the live service caps them where
they are counted, with sticky membership (aggregate/state.py), so no counter
ever goes down; a state that was never capped (replay) is folded here, all
but the `max_interfaces` busiest into `interface_id="other"`. Totals that
are not per interface (log-status, skipped lines, per-VPC views) come from
their own state, never from the per-interface rows, so forgetting an
interface removes its series and lowers nothing else. Anomaly scores
are exported only for interfaces that have their own counter series.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator

import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streamer.aggregate import insights as ins
from streamer.aggregate.context import InterfaceContext
from streamer.aggregate.counters import combine
from streamer.aggregate.detection import Detection
from streamer.aggregate.eventtime import ALL_SOURCES
from streamer.aggregate.state import LOG_STATUS, OTHER_INTERFACE, FlowState

DEFAULT_MAX_INTERFACES = 5000


class FlowCollector(Collector):
    """vpcflow_* counters and streamer_decode_errors_total from a FlowState."""

    def __init__(self, state: Callable[[], FlowState], max_interfaces: int = DEFAULT_MAX_INTERFACES) -> None:
        self._state = state
        self.max_interfaces = max_interfaces

    def collect(self) -> Iterator[Metric]:
        state = self._state()
        table = cap_interfaces(state.counters.table(), self.max_interfaces)
        records = CounterMetricFamily(
            "vpcflow_records", "Flow-log records by interface and action.", labels=["interface_id", "action"]
        )
        packets = CounterMetricFamily(
            "vpcflow_packets", "Packets in flow-log records by interface and action.", labels=["interface_id", "action"]
        )
        nbytes = CounterMetricFamily(
            "vpcflow_bytes", "Bytes in flow-log records by interface and action.", labels=["interface_id", "action"]
        )
        status = CounterMetricFamily("vpcflow_log_status", "Flow-log records by log-status.", labels=["log_status"])
        if table.num_rows:
            by_key = table.group_by(["interface_id", "action"], use_threads=False).aggregate(
                [("records", "sum"), ("packets", "sum"), ("bytes", "sum")]
            )
            for row in by_key.to_pylist():  # one row per series
                labels = [row["interface_id"], row["action"]]
                records.add_metric(labels, row["records_sum"])
                packets.add_metric(labels, row["packets_sum"])
                nbytes.add_metric(labels, row["bytes_sum"])
        for (name, key), n in sorted(state.totals.items()):  # apart from the per-interface rows: never lowered
            if name == LOG_STATUS:
                status.add_metric([key], n)
        errors = CounterMetricFamily("streamer_decode_errors", "Input lines or objects skipped, by reason.", labels=["reason"])
        for reason, count in sorted(state.decode_errors.items()):
            errors.add_metric([reason], count)
        yield from (records, packets, nbytes, status, errors)


def cap_interfaces(table: pa.Table, limit: int) -> pa.Table:
    """Fold all but the `limit` busiest interfaces into OTHER_INTERFACE."""
    if not table.num_rows:
        return table
    totals = table.group_by(["interface_id"], use_threads=False).aggregate([("records", "sum")])
    totals = totals.filter(pc.not_equal(totals.column("interface_id"), OTHER_INTERFACE))
    if totals.num_rows <= limit:
        return table  # already within the cap (the live service caps where it counts)
    keep = totals.sort_by([("records_sum", "descending"), ("interface_id", "ascending")]).slice(0, limit)
    kept = pc.is_in(table.column("interface_id"), keep.column("interface_id"))
    relabeled = pc.if_else(kept, table.column("interface_id"), pa.scalar(OTHER_INTERFACE))
    return combine([table.set_column(0, "interface_id", relabeled)])


class DetectionCollector(Collector):
    """Anomaly scores, VPC/subnet reject views and window progress from the detection state."""

    def __init__(
        self,
        detection: Callable[[], Detection | None],
        members: Callable[[], Collection[str]] | None = None,
        max_interfaces: int = DEFAULT_MAX_INTERFACES,
    ) -> None:
        self._detection = detection
        self._members = members
        self.max_interfaces = max_interfaces

    def collect(self) -> Iterator[Metric]:
        det = self._detection()
        if det is None:
            return
        score = GaugeMetricFamily(
            "vpcflow_reject_anomaly_score",
            "Rejected-records score of the last closed window per ENI (standard deviations above its baseline).",
            labels=["interface_id"],
        )
        scores = det.detector.scores
        if self._members is not None:
            members = self._members()
            scores = {eni: v for eni, v in scores.items() if eni in members}
        for eni, (value, _) in sorted(scores.items())[: self.max_interfaces]:
            score.add_metric([eni], value)
        subnet_records = CounterMetricFamily(
            "vpcflow_subnet_rejected_records", "Rejected records per VPC and subnet.", labels=["vpc_id", "subnet_id"]
        )
        subnet_bytes = CounterMetricFamily(
            "vpcflow_subnet_rejected_bytes", "Rejected bytes per VPC and subnet.", labels=["vpc_id", "subnet_id"]
        )
        vpc_records = CounterMetricFamily("vpcflow_vpc_rejected_records", "Rejected records per VPC.", labels=["vpc_id"])
        subnets = det.windows.subnets
        if subnets.num_rows:
            for row in subnets.to_pylist():
                labels = [row["vpc_id"], row["subnet_id"] or "-"]
                subnet_records.add_metric(labels, row["rejected_records"])
                subnet_bytes.add_metric(labels, row["rejected_bytes"])
        for vpc, n in sorted(det.windows.vpc_rejected_records().items()):
            vpc_records.add_metric([vpc], n)
        late = CounterMetricFamily(
            "streamer_late_records",
            "Records that arrived after their window closed (still in the totals).",
            value=det.windows.late_records,
        )
        yield from (score, subnet_records, subnet_bytes, vpc_records, late)
        watermark = GaugeMetricFamily(
            "streamer_watermark_timestamp_seconds",
            'Event-time watermark per source (its newest record minus the lateness); source="all" closes windows.',
            labels=["source"],
        )
        clock = det.windows.clock
        for name, value in clock.source_watermarks().items():
            watermark.add_metric([name], value)
        if clock.watermark is not None:
            watermark.add_metric([ALL_SOURCES], clock.watermark)
        yield watermark
        yield GaugeMetricFamily("streamer_open_windows", "Open (ENI, window) pairs.", value=det.windows.stats.num_rows)


class InsightsCollector(Collector):
    """Network insight counters (aggregate/insights.py) from the flow state; per-ENI ones share the counters' cap."""

    def __init__(self, state: Callable[[], FlowState], nat_price_per_gb: float, nacl_pairing: bool = False) -> None:
        self._state = state
        self.nat_price_per_gb = nat_price_per_gb
        #: without NACL pairing its family is not exported at all (not as zeros: nothing was looked for)
        self.nacl_pairing = nacl_pairing

    def collect(self) -> Iterator[Metric]:
        nacl = CounterMetricFamily(
            "vpcflow_nacl_return_rejects",
            "Rejected replies to accepted flows (same ENI, within the lateness): a stateless NACL dropping return traffic.",
            labels=["interface_id"],
        )
        gw_bytes = CounterMetricFamily(
            "vpcflow_gateway_endpoint_candidate_bytes",
            "Egress bytes to S3/DynamoDB through a NAT or internet gateway: a gateway endpoint would carry them free.",
            labels=["vpc_id", "service"],
        )
        gw_records = CounterMetricFamily(
            "vpcflow_gateway_endpoint_candidate_records",
            "Egress records to S3/DynamoDB through a NAT or internet gateway.",
            labels=["vpc_id", "service"],
        )
        ipv6 = CounterMetricFamily(
            "vpcflow_ipv6_internet_inbound_records",
            "Connections started from global IPv6 addresses on the internet, by ENI and action: reachable over IPv6.",
            labels=["interface_id", "action"],
        )
        paths = CounterMetricFamily(
            "vpcflow_traffic_path_bytes", "Egress bytes by traffic-path (v5 field), per VPC.", labels=["vpc_id", "path"]
        )
        for row in self._state().insights.to_pylist():  # one row per series
            kind, k1, k2 = row["kind"], row["key1"], row["key2"]
            if kind == ins.NACL:
                if self.nacl_pairing:
                    nacl.add_metric([k1], row["records"])
            elif kind == ins.GATEWAY:
                gw_bytes.add_metric([k1, k2], row["bytes"])
                gw_records.add_metric([k1, k2], row["records"])
            elif kind == ins.IPV6:
                ipv6.add_metric([k1, k2], row["records"])
            elif kind == ins.PATHS:
                paths.add_metric([k1, k2], row["bytes"])
        price = GaugeMetricFamily(
            "streamer_nat_gateway_price_usd_per_gb",
            "insights.nat_gateway_price_per_gb: the NAT gateway processing price the cost estimates use.",
            value=self.nat_price_per_gb,
        )
        if self.nacl_pairing:
            yield nacl
        yield from (gw_bytes, gw_records, ipv6, paths, price)


INFO_LABELS = (
    "interface_id",
    "interface_type",
    "name",
    "instance_id",
    "subnet_id",
    "vpc_id",
    "az",
    "security_groups",
    "description",
)


class InterfaceInfoCollector(Collector):
    """vpcflow_interface_info: what each ENI is, value 1, for joins (kube-state-metrics' `_info` pattern):

        sum by (interface_id) (rate(vpcflow_records_total{action="REJECT"}[5m]))
          * on(interface_id) group_left(name, interface_type) vpcflow_interface_info

    Only interfaces with their own counter series (`members`) get one, so it is capped like them and
    goes when they are forgotten; label values are cut to 120 characters."""

    def __init__(self, context: Callable[[str], InterfaceContext | None], members: Callable[[], Collection[str]]) -> None:
        self._context = context
        self._members = members

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "vpcflow_interface_info", "What an ENI is (from its records and EC2); always 1.", labels=list(INFO_LABELS)
        )
        for eni in sorted(self._members()):
            if eni == OTHER_INTERFACE:
                continue
            known = self._context(eni)
            if known is not None:
                labels = known.labels()
                info.add_metric([labels[k] for k in INFO_LABELS], 1)
        yield info
