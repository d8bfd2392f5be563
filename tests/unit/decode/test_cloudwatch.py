"""CloudWatch Logs payloads of the wrong shape: the unit is the record (Kinesis) or the document (objects),
and an event inside a payload is skipped alone; nothing raises."""

from __future__ import annotations

import gzip

import orjson
import pytest

from streamer.decode import cloudwatch
from streamer.decode.cloudwatch import SMALL_PAYLOAD_BYTES, document_lines, payload_text, unpack_records
from streamer.decode.errors import ErrorCounts

LINE = "2 123456789012 eni-a 10.0.0.1 10.0.0.2 1024 22 6 1 40 1700000000 1700000060 REJECT OK"


def payload_lines(records: list[bytes]) -> tuple[list[str], int]:
    """Lines of Kinesis records as a list, and how many records or events were skipped."""
    end, text, errors = unpack_records(records)
    assert end == len(records)
    return text.decode().splitlines(), errors.total


def payload(events: object, **extra: object) -> dict[str, object]:
    return {"messageType": "DATA_MESSAGE", "logGroup": "g", "logStream": "s", "logEvents": events, **extra}


def good(n: int) -> dict[str, object]:
    return payload([{"id": str(i), "timestamp": 1, "message": LINE} for i in range(n)])


BAD_DOCUMENTS = [
    payload(1),
    payload("abc"),
    payload({"message": LINE}),
    payload([], messageType=["DATA_MESSAGE"]),
]


def test_a_bad_kinesis_record_is_skipped_and_the_rest_of_the_batch_counts() -> None:
    records = [gzip.compress(orjson.dumps(good(3)))]
    records += [gzip.compress(orjson.dumps(doc)) for doc in BAD_DOCUMENTS]
    records += [b"\x1f\x8b\x08garbage", b"", b"[1, 2]", b'{"logEvents": [1e999]}', orjson.dumps(good(2))]
    lines, bad = payload_lines(records)
    assert lines == [LINE] * 5
    assert bad == len(BAD_DOCUMENTS) + 4


def test_an_event_of_the_wrong_shape_is_skipped_alone() -> None:
    doc = good(2)
    doc["logEvents"] += [1, {"message": 5}, {"id": "x"}]  # type: ignore[operator]
    lines, bad = payload_lines([gzip.compress(orjson.dumps(doc))])
    assert lines == [LINE, LINE]
    assert bad == 3


def test_documents_of_the_wrong_shape_count_as_invalid_payloads() -> None:
    errors = ErrorCounts()
    lines = document_lines([good(1), *BAD_DOCUMENTS, {"message": LINE}, [1], payload([1, {"message": LINE}])], errors)
    assert lines == [LINE, LINE, LINE]
    assert errors.counts == {"invalid_payload": len(BAD_DOCUMENTS) + 1, "invalid_json": 1}


def test_a_control_message_gives_nothing_whatever_its_events() -> None:
    errors = ErrorCounts()
    assert document_lines([payload(1, messageType="CONTROL_MESSAGE")], errors) == []
    assert errors.counts == {}


def test_a_large_payload_reads_as_a_small_one_does() -> None:
    """Past SMALL_PAYLOAD_BYTES a record is read by Arrow, not orjson: the same lines and errors."""
    many = [LINE] * (SMALL_PAYLOAD_BYTES // len(LINE) + 10)
    errors = ErrorCounts()
    data = orjson.dumps(good(len(many)))
    assert len(data) > SMALL_PAYLOAD_BYTES
    assert payload_text(data, errors, wrappers=False) == (LINE + "\n").encode() * len(many)
    assert errors.counts == {}
    # Firehose: documents back to back, a control message, a wrapper, a document that is neither.
    control = payload([{"message": "CWL CONTROL MESSAGE"}], messageType="CONTROL_MESSAGE")
    body = b"".join(orjson.dumps(d) for d in (good(len(many)), control, {"message": LINE}, {"other": 1}))
    assert payload_text(body, errors) == (LINE + "\n").encode() * (len(many) + 1)
    assert errors.counts == {"invalid_json": 1}


def test_a_large_payload_with_an_event_of_the_wrong_type_is_one_bad_record() -> None:
    """Arrow reads a payload as typed columns: one event of another type fails the record as a whole."""
    doc = good(SMALL_PAYLOAD_BYTES // len(LINE) + 10)
    doc["logEvents"].append({"message": 5})  # type: ignore[attr-defined]
    end, text, errors = unpack_records([gzip.compress(orjson.dumps(doc)), gzip.compress(orjson.dumps(good(1)))])
    assert (end, text) == (2, (LINE + "\n").encode())
    assert errors.counts == {"invalid_payload": 1}


def test_running_out_of_memory_on_a_kinesis_record_is_not_a_bad_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """A MemoryError is the machine's fault, not the record's: counted as an invalid payload, the record would be
    skipped and the shard's cursor moved past it (lost). It passes through, and the shard reads it again."""

    def no_memory(data: bytes, limit: int) -> bytes:
        raise MemoryError

    monkeypatch.setattr(cloudwatch, "inflate_record", no_memory)
    with pytest.raises(MemoryError):
        unpack_records([gzip.compress(orjson.dumps(good(2)))])
