"""NACL return-reject pairing is opt-in (`insights.nacl_pairing`): off, nothing of it is decoded, paired,
stored or exported; the other insights stay on."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
from prometheus_client import CollectorRegistry

from streamer.aggregate import insights as ins
from streamer.aggregate.pairing import PREFIX
from streamer.aggregate.state import FlowState
from streamer.aws import AwsClients
from streamer.config import parse_config
from streamer.decode.objects import ObjectReader
from streamer.export.metrics import InsightsCollector
from streamer.export.telemetry import Telemetry
from streamer.pipeline import Pipeline, Store
from streamer.schema import DEFAULT_FIELDS, V5_ALL_FIELDS
from streamer.service import Service
from streamer.store.sqlite import CheckpointStore
from tests.unit.aggregate.test_pairing import ENI, W, body, reply, request
from tests.unit.test_pipeline_pairing import delivery, nacl

#: what only the pairing reads on v2 (v2 has no flow-direction: the IPv6 signal reads none of them)
PAIRING_ONLY_V2 = {"srcaddr", "dstaddr", "srcport", "dstport", "protocol", "start"}


def config(**insights: bool) -> Service:
    doc = {"sources": [{"type": "kinesis", "stream_name": "s"}], "insights": insights}
    return Service(parse_config(doc, {}), AwsClients())


async def test_off_by_default_nothing_is_paired_stored_or_decoded_for_it(tmp_path: Path) -> None:
    service = config()
    assert service.config.insights.enabled
    assert not service.config.insights.nacl_pairing
    store = CheckpointStore(tmp_path / "state.db")
    assert await service._restore_pairing(Store(store), fleet=False) == {}  # what the service passes: no pairing
    with ThreadPoolExecutor(2) as pool:
        pipe = Pipeline(FlowState(), Store(store), Telemetry(CollectorRegistry()), pool, insights_window_seconds=60)
        v2 = ObjectReader(columns=pipe.columns).decoder(DEFAULT_FIELDS)
        assert not PAIRING_ONLY_V2 & set(v2.columns)
        assert await pipe.process("s3", delivery("request", body([request(W + 5)]))) == "ok"
        assert await pipe.process("s3", delivery("reply", body([reply(W + 6)]))) == "ok"
    assert nacl(pipe.state) == {}
    assert store.snapshots(PREFIX) == {}
    store.close()


async def test_on_the_same_inputs_pair_and_the_state_is_stored(tmp_path: Path) -> None:
    service = config(nacl_pairing=True)
    store = CheckpointStore(tmp_path / "state.db")
    with ThreadPoolExecutor(2) as pool:
        pipe = Pipeline(
            FlowState(),
            Store(store),
            Telemetry(CollectorRegistry()),
            pool,
            insights_window_seconds=60,
            nacl_pairing=True,
            **(await service._restore_pairing(Store(store), fleet=False)),
        )
        v2 = set(ObjectReader(columns=pipe.columns).decoder(DEFAULT_FIELDS).columns)
        assert v2 >= PAIRING_ONLY_V2
        assert await pipe.process("s3", delivery("request", body([request(W + 5)]))) == "ok"
        assert await pipe.process("s3", delivery("reply", body([reply(W + 6)]))) == "ok"
    assert nacl(pipe.state) == {ENI: 1}
    assert store.snapshots(PREFIX)
    store.close()


def test_v5_without_pairing_decodes_what_the_ipv6_signal_reads_only() -> None:
    from streamer.aggregate.batch import columns

    wanted = ObjectReader(columns=columns(False, True)).decoder(V5_ALL_FIELDS).columns
    assert {"srcaddr", "tcp-flags", "flow-direction", "traffic-path"} <= set(wanted)
    assert not {"dstaddr", "srcport", "dstport", "protocol", "start"} & set(wanted)


def test_the_nacl_series_is_exported_only_with_pairing_on() -> None:
    rows = [{"kind": ins.NACL, "key1": ENI, "key2": "", "records": 2, "bytes": 0}]
    state = FlowState(insights=pa.Table.from_pylist(rows, schema=ins.SCHEMA))  # e.g. restored from when it was on

    def names(on: bool) -> set[str]:
        return {m.name for m in InsightsCollector(lambda: state, 0.045, on).collect()}

    assert "vpcflow_nacl_return_rejects" in names(True)
    assert not any(n.startswith("vpcflow_nacl") for n in names(False))
    assert "vpcflow_traffic_path_bytes" in names(False)
