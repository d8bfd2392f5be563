"""The Firehose endpoint on its own, over real HTTP on 127.0.0.1, with a sink of our own (the Sink seam)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
from pathlib import Path

import aiohttp
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.config import ConfigError, parse_config
from streamer.sources import firehose_http
from streamer.sources.base import Delivery
from streamer.sources.firehose_http import ACCESS_KEY_HEADER as ACCESS_KEY
from streamer.sources.firehose_http import (
    BadRequest,
    FirehoseHttpSource,
    FirehoseHttpSourceConfig,
    TooLarge,
    done_key,
    records_lines,
)
from tests.firehose_data import firehose_bodies

KEY = "k3y-that-must-never-be-logged"
OLD_KEY = "old-k3y-being-rotated-out"


class HeldSink:
    """Holds every delivery until released, as a slow commit would."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.errors: list[tuple[str, str]] = []

    async def process(self, source: str, delivery: Delivery) -> str:
        self.entered.set()
        await self.release.wait()
        return "ok"

    async def give_up(self, source: str, delivery: Delivery, reason: str) -> None:
        raise AssertionError("not used")

    def source_error(self, source: str, reason: str, message: str, *, logged: bool = True) -> None:
        self.errors.append((reason, message))

    def polled(self, source: str) -> None:
        pass


def request(request_id: str) -> bytes:
    line = "2 123456789012 eni-a 10.0.0.1 10.0.0.2 1 2 6 1 40 100 160 ACCEPT OK\n"
    return json.dumps({"requestId": request_id, "records": [{"data": base64.b64encode(line.encode()).decode()}]}).encode()


async def started(source: FirehoseHttpSource, sink: HeldSink) -> asyncio.Task[None]:
    task = asyncio.create_task(source.run(sink))
    await asyncio.wait_for(source.listening.wait(), 10)
    return task


async def test_shutdown_drains_what_is_being_committed_and_answers_503_meanwhile() -> None:
    config = FirehoseHttpSourceConfig(type="firehose_http", listen_address="127.0.0.1:0", access_key=KEY)
    source = FirehoseHttpSource("firehose", config)
    sink = HeldSink()
    task = await started(source, sink)
    url = f"http://127.0.0.1:{source.port}/"
    headers = {"X-Amz-Firehose-Access-Key": KEY}
    async with aiohttp.ClientSession() as http:
        first = asyncio.create_task(http.post(url, data=request("first"), headers=headers))
        await asyncio.wait_for(sink.entered.wait(), 5)  # being committed (held, like a slow disk)
        sink.entered.clear()
        task.cancel()  # SIGTERM
        await asyncio.sleep(0.2)
        assert source.ready is False
        async with http.post(url, data=request("second"), headers={**headers, "X-Amz-Firehose-Request-Id": "second"}) as resp:
            assert resp.status == 503
            assert (await resp.json())["requestId"] == "second"
        assert not sink.entered.is_set()  # the new request was not handed on
        sink.release.set()
        async with await first as resp:
            assert resp.status == 200
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_key_is_never_logged_even_when_wrong(caplog: pytest.LogCaptureFixture) -> None:
    config = FirehoseHttpSourceConfig(type="firehose_http", listen_address="127.0.0.1:0", access_key=KEY)
    source = FirehoseHttpSource("firehose", config)
    sink = HeldSink()
    task = await started(source, sink)
    try:
        with caplog.at_level(logging.DEBUG):
            async with aiohttp.ClientSession() as http:
                for key in ("wrong-" + KEY, KEY[:-1]):
                    async with http.post(
                        f"http://127.0.0.1:{source.port}/", data=request("r"), headers={"X-Amz-Firehose-Access-Key": key}
                    ) as resp:
                        assert resp.status == 401
        assert [reason for reason, _ in sink.errors] == ["unauthorized", "unauthorized"]
        assert KEY not in caplog.text
        assert all(KEY[:-1] not in message for _, message in sink.errors)
        assert KEY not in repr(config)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --- keys, bounds and bad records --------------------------------------------------------------


def source_doc(**extra: object) -> dict[str, object]:
    return {"sources": [{"type": "firehose_http", "listen_address": "127.0.0.1:0", **extra}]}


@pytest.mark.parametrize(
    ("extra", "environ", "message"),
    [
        ({"access_key": ""}, {}, r"^sources\.0\.access_key: is empty"),
        ({"access_key": "   "}, {}, r"^sources\.0\.access_key: is empty"),
        ({"access_key": "set-in-yaml"}, {"STREAMER__SOURCES__0__ACCESS_KEY": ""}, r"^sources\.0\.access_key: is empty"),
        ({"access_keys": []}, {}, r"^sources\.0\.access_keys: lists no key"),
        ({"access_keys": [KEY, ""]}, {}, r"^sources\.0\.access_keys: key 1 is empty"),
        ({"access_key": KEY, "access_keys": [KEY]}, {}, r"^sources\.0: give exactly one of access_key, access_keys"),
        ({}, {}, r"^sources\.0: give exactly one of"),
        ({"access_key": KEY, "max_concurrent_requests": 0}, {}, r"^sources\.0\.max_concurrent_requests: "),
        ({"access_key": KEY, "body_timeout_seconds": 0}, {}, r"^sources\.0\.body_timeout_seconds: "),
        # issue 29.8: the example's placeholder, and keys too short to be secret
        ({"access_key": "change-me"}, {}, r"^sources\.0\.access_key: is a placeholder"),
        ({"access_key": "CHANGE_ME_0123456789"}, {}, r"^sources\.0\.access_key: is a placeholder"),
        ({"access_key": KEY}, {"STREAMER__SOURCES__0__ACCESS_KEY": "changeme"}, r"^sources\.0\.access_key: is a placeholder"),
        ({"access_key": "short-key"}, {}, r"^sources\.0\.access_key: is 9 characters: use at least 16"),
        ({"access_keys": [KEY, "your-access-key"]}, {}, r"^sources\.0\.access_keys: key 1 is a placeholder"),
        ({"access_keys": [KEY, "abc"]}, {}, r"^sources\.0\.access_keys: key 1 is 3 characters: use at least 16"),
        # issue 31.5: no key only when asked for explicitly, and then no key at all
        ({"authentication": "none", "access_key": KEY}, {}, r"^sources\.0: authentication: none takes no access_key"),
        ({"authentication": "nothing"}, {}, r"^sources\.0\.authentication: "),
    ],
)
def test_an_empty_or_missing_key_is_refused_at_start_naming_the_key(
    extra: dict[str, object], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(source_doc(**extra), environ)


def test_a_key_file_holds_one_key_per_line_and_an_empty_one_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("\n  old-key-0123456789  \n\nnew-key-0123456789\n")
    config = parse_config(source_doc(access_key_file=str(keys)), {})
    assert config.sources[0].accepted_keys() == ["old-key-0123456789", "new-key-0123456789"]  # type: ignore[union-attr]
    keys.write_text("\n \n")
    with pytest.raises(ConfigError, match=r"^sources\.0: access_key_file .* holds no key"):
        parse_config(source_doc(access_key_file=str(keys)), {})
    keys.write_text("new-key-0123456789\nchange-me\n")
    with pytest.raises(ConfigError, match=r"^sources\.0: access_key_file .*: line 2 is a placeholder"):
        parse_config(source_doc(access_key_file=str(keys)), {})
    keys.write_text("new-key-0123456789\nshort\n")
    with pytest.raises(ConfigError, match=r"^sources\.0: access_key_file .*: line 2 is 5 characters: use at least 16"):
        parse_config(source_doc(access_key_file=str(keys)), {})
    env = {"STREAMER__SOURCES__0__ACCESS_KEYS__0": "k0" * 8, "STREAMER__SOURCES__0__ACCESS_KEYS__1": "k1" * 8}
    assert parse_config(source_doc(), env).sources[0].accepted_keys() == ["k0" * 8, "k1" * 8]  # type: ignore[union-attr]


async def test_a_key_set_with_a_trailing_newline_is_the_key_firehose_sends() -> None:
    """A Secret made with `echo key | kubectl create secret --from-file` puts "key\\n" in the environment. A header
    cannot carry it (its value is stripped): every delivery was refused with 401, as the key file's lines are not."""
    for environ in ({"STREAMER__SOURCES__0__ACCESS_KEY": KEY + "\n"}, {"STREAMER__SOURCES__0__ACCESS_KEYS__0": f" {KEY}\n"}):
        config = parse_config(source_doc(), environ).sources[0]
        assert isinstance(config, FirehoseHttpSourceConfig)
        source = FirehoseHttpSource("firehose", config)
        sink = HeldSink()
        sink.release.set()
        task = await started(source, sink)
        try:
            url = f"http://127.0.0.1:{source.port}/"
            async with aiohttp.ClientSession() as http, http.post(url, data=request("r"), headers={ACCESS_KEY: KEY}) as resp:
                assert resp.status == 200
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


def test_a_refused_key_is_never_echoed_in_the_error() -> None:
    for key in ("short-secret", "change-me"):
        with pytest.raises(ConfigError) as refused:
            parse_config(source_doc(access_key=key), {})
        assert key not in str(refused.value)


def gz(doc: object) -> bytes:
    return gzip.compress(orjson.dumps(doc))


LINE = "2 123456789012 eni-a 10.0.0.1 10.0.0.2 1 2 6 1 40 100 160 ACCEPT OK"
GOOD = gz({"messageType": "DATA_MESSAGE", "logEvents": [{"id": "1", "message": LINE}, {"id": "2", "message": LINE}]})
BAD_RECORDS = [
    {"data": base64.b64encode(gz({"logEvents": 1})).decode()},  # a payload whose logEvents is not a list
    {"data": "!!not base64!!"},
    {"data": base64.b64encode(b"{garbage json").decode()},
    {"data": base64.b64encode(gzip.compress(b"{}")[:-6]).decode()},  # truncated gzip
    {"data": base64.b64encode(gzip.compress(gzip.compress(b"{}"))).decode()},  # gzip inside gzip
    {"data": 12},
    {"nodata": "x"},
    "a string",
    None,
]


def test_each_bad_record_is_one_error_and_every_good_one_counts() -> None:
    good = {"data": base64.b64encode(GOOD).decode()}
    records: list[object] = [good]
    for bad in BAD_RECORDS:
        records += [bad, good]
    found = records_lines(list(records), 1 << 20)
    lines = b"".join(found.chunks).decode().splitlines()
    assert lines.count(LINE) == 2 * (len(BAD_RECORDS) + 1)
    assert sum(found.errors.values()) == len(BAD_RECORDS)
    assert set(found.errors) <= {"invalid_payload", "invalid_json"}


def test_what_the_records_inflate_to_shares_one_budget_with_the_body() -> None:
    record = {"data": base64.b64encode(gzip.compress(b"x" * 10_000)).decode()}
    assert records_lines([record] * 3, 30_000).errors == {}
    with pytest.raises(TooLarge):
        records_lines([record] * 3, 29_999)
    bomb = {"data": base64.b64encode(gzip.compress(b" " * (64 << 20))).decode()}
    with pytest.raises(TooLarge):
        records_lines([bomb], 1 << 20)


class RecordingSink(HeldSink):
    def __init__(self) -> None:
        super().__init__()
        self.release.set()
        self.deliveries: list[Delivery] = []

    async def process(self, source: str, delivery: Delivery) -> str:
        self.deliveries.append(delivery)
        return await super().process(source, delivery)


async def test_a_request_with_bad_records_among_good_ones_answers_200_and_counts_both(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = FirehoseHttpSourceConfig(type="firehose_http", listen_address="127.0.0.1:0", access_keys=[OLD_KEY, KEY])
    source = FirehoseHttpSource("firehose", config)
    sink = RecordingSink()
    task = await started(source, sink)
    good = {"data": base64.b64encode(GOOD).decode()}
    body = orjson.dumps({"requestId": "mixed", "timestamp": 1, "records": [good, *BAD_RECORDS[:3], good]})
    try:
        with caplog.at_level(logging.WARNING):
            async with aiohttp.ClientSession() as http:
                for key in (OLD_KEY, KEY):  # both keys accepted while the stream's key is rotated
                    async with http.post(
                        f"http://127.0.0.1:{source.port}/", data=body, headers={"X-Amz-Firehose-Access-Key": key}
                    ) as resp:
                        assert resp.status == 200
                        assert (await resp.json())["requestId"] == "mixed"
        delivery = sink.deliveries[0]
        assert sum(delivery.errors.values()) == 3
        assert set(delivery.errors) <= {"invalid_payload", "invalid_json"}
        chunks = [c async for c in delivery.body()]
        assert b"".join(chunks).decode().splitlines() == [LINE] * 4
        assert sum("request mixed" in r.getMessage() for r in caplog.records) == 2  # once per request
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_beyond_max_concurrent_requests_it_answers_503_without_reading_the_body() -> None:
    config = FirehoseHttpSourceConfig(
        type="firehose_http", listen_address="127.0.0.1:0", access_key=KEY, max_concurrent_requests=2
    )
    source = FirehoseHttpSource("firehose", config)
    sink = HeldSink()
    task = await started(source, sink)
    url = f"http://127.0.0.1:{source.port}/"
    headers = {"X-Amz-Firehose-Access-Key": KEY}
    try:
        async with aiohttp.ClientSession() as http:
            held = [asyncio.create_task(http.post(url, data=request(f"h{i}"), headers=headers)) for i in range(2)]
            deadline = asyncio.get_running_loop().time() + 10
            while source._busy < 2:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
            async with http.post(url, data=request("third"), headers=headers) as resp:
                assert resp.status == 503
            assert ("busy", "request ?: 2 requests in progress") in sink.errors
            # The body is never read: the answer comes while the client has sent only the headers.
            reader, writer = await asyncio.open_connection("127.0.0.1", source.port)
            writer.write(f"POST / HTTP/1.1\r\nHost: x\r\n{ACCESS_KEY}: {KEY}\r\nContent-Length: 9999999\r\n\r\n".encode())
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 503")
            writer.close()
            sink.release.set()
            for pending in held:
                async with await pending as resp:
                    assert resp.status == 200
            async with http.post(url, data=request("after"), headers=headers) as resp:
                assert resp.status == 200
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_slow_body_gets_408_and_frees_its_slot_and_slow_headers_are_dropped() -> None:
    config = FirehoseHttpSourceConfig(
        type="firehose_http",
        listen_address="127.0.0.1:0",
        access_key=KEY,
        max_concurrent_requests=1,
        body_timeout_seconds=0.5,
        header_timeout_seconds=0.5,
    )
    source = FirehoseHttpSource("firehose", config)
    sink = RecordingSink()
    task = await started(source, sink)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", source.port)
        head = f"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Firehose-Access-Key: {KEY}\r\nContent-Length: 1000\r\n\r\n"
        writer.write(head.encode() + b'{"requestId": ')  # and then nothing more
        answer = await asyncio.wait_for(reader.read(), 10)  # the server closes the connection
        assert answer.startswith(b"HTTP/1.1 408")
        writer.close()
        assert ("timeout", "request ?: body not received in time") in sink.errors
        reader, writer = await asyncio.open_connection("127.0.0.1", source.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        assert await asyncio.wait_for(reader.read(), 10) == b""  # dropped, no answer
        writer.close()
        url = f"http://127.0.0.1:{source.port}/"
        async with (
            aiohttp.ClientSession() as http,  # the slot is free again
            http.post(url, data=request("ok"), headers={"X-Amz-Firehose-Access-Key": KEY}) as resp,
        ):
            assert resp.status == 200
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_records_inflating_past_the_limit_with_the_body_get_413_and_nothing_is_handed_on() -> None:
    config = FirehoseHttpSourceConfig(
        type="firehose_http", listen_address="127.0.0.1:0", access_key=KEY, max_request_bytes=1 << 20
    )
    source = FirehoseHttpSource("firehose", config)
    sink = RecordingSink()
    task = await started(source, sink)
    record = {"data": base64.b64encode(gzip.compress(b"\n" * (300 << 10))).decode()}  # 300 KiB each once inflated
    try:
        async with aiohttp.ClientSession() as http:
            for count, status in ((3, 200), (4, 413)):
                body = orjson.dumps({"requestId": f"r{count}", "records": [record] * count})
                assert len(body) < 10_000
                async with http.post(f"http://127.0.0.1:{source.port}/", data=body, headers={ACCESS_KEY: KEY}) as resp:
                    assert resp.status == status
        assert [d.location for d in sink.deliveries] == ["firehose://firehose/r3"]
        assert ("too_large", "request ?: the records are over max_request_bytes once decompressed") in sink.errors
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@settings(max_examples=400, deadline=None)
@given(body=firehose_bodies())
def test_the_request_parser_reads_or_refuses_any_body_and_raises_nothing_else(body: bytes) -> None:
    """Mutated bodies: a BadRequest (400), a TooLarge (413), or records read with the bad ones counted (200)."""
    source = FirehoseHttpSource("firehose", FirehoseHttpSourceConfig(type="firehose_http", access_key=KEY))
    try:
        request_id, found = source._parse([body])
    except (BadRequest, TooLarge):
        return
    assert isinstance(request_id, str)
    assert request_id
    assert all(isinstance(c, bytes) and c.endswith(b"\n") for c in found.chunks)
    assert set(found.errors) <= {"invalid_payload", "invalid_json"}


async def _raw_status(port: int, head: bytes, body: bytes) -> int:
    """One request written byte for byte: headers a well-behaved client library would refuse to send."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + head)
        writer.write(b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        return int((await asyncio.wait_for(reader.readline(), 10)).split()[1])
    finally:
        writer.close()


async def test_undecodable_header_bytes_and_lone_surrogates_get_an_answer_not_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = FirehoseHttpSourceConfig(type="firehose_http", listen_address="127.0.0.1:0", access_key=KEY)
    source = FirehoseHttpSource("firehose", config)
    sink = HeldSink()
    sink.release.set()
    task = await started(source, sink)
    try:
        key = f"{ACCESS_KEY}: {KEY}\r\n".encode()
        assert await _raw_status(source.port, f"{ACCESS_KEY}: ".encode() + b"\xff\xfe\r\n", request("a")) == 401
        assert await _raw_status(source.port, key + b"X-Amz-Firehose-Request-Id: \xff\r\n", b"{") == 400
        lone = request("x").replace(b'"x"', b'"\\ud800"')  # a JSON escape for half a character
        assert await _raw_status(source.port, key, lone) == 200
        assert "Traceback" not in caplog.text
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_authentication_none_lets_keyless_requests_in_and_says_so_throttled(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 31.5: only when asked for; a WARNING at start, and for requests without a key (at most one a minute)."""
    config = parse_config(source_doc(authentication="none"), {}).sources[0]
    assert isinstance(config, FirehoseHttpSourceConfig)
    source = FirehoseHttpSource("firehose", config)
    sink = RecordingSink()
    with caplog.at_level(logging.WARNING):
        task = await started(source, sink)
        try:
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{source.port}/"
                for i in range(20):
                    async with http.post(url, data=request(f"keyless-{i}")) as resp:
                        assert resp.status == 200
                async with http.post(url, data=request("keyed"), headers={ACCESS_KEY: "any"}) as resp:
                    assert resp.status == 200
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert len(sink.deliveries) == 21
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("authentication: none" in w and "without a key" in w for w in warnings) == 1  # at start
    assert sum("carries no access key" in w for w in warnings) == 1  # the first; 19 more within the minute
    assert sink.errors == []


LONE_SURROGATES = ["h-\ud800", "h-\udbff", "h-\ufffd", "h-\\ud800", "h-\x00", "h-\\x00", "h-\\u0000", "h-"]


async def test_different_request_ids_never_share_a_done_key_and_ordinary_ones_keep_theirs() -> None:
    """Issue 29.7: "h-\\ud800" and "h-\\udbff" (JSON escapes for half a character) were both done key "h-\ufffd"."""
    config = FirehoseHttpSourceConfig(type="firehose_http", listen_address="127.0.0.1:0", access_key=KEY)
    source = FirehoseHttpSource("firehose", config)
    sink = RecordingSink()
    task = await started(source, sink)
    ordinary = ["8f9b3c2e-1d4a-4c5b-9e8f-0a1b2c3d4e5f", "é-ü", "a b"]
    try:
        async with aiohttp.ClientSession() as http:
            for request_id in [*LONE_SURROGATES, *ordinary]:
                body = json.dumps({"requestId": request_id, "records": []}).encode()  # ensure_ascii: escapes as sent
                async with http.post(f"http://127.0.0.1:{source.port}/", data=body, headers={ACCESS_KEY: KEY}) as resp:
                    assert resp.status == 200
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    keys = [(d.done[0].namespace, d.done[0].key) for d in sink.deliveries]
    assert len(set(keys)) == len(keys) == len(LONE_SURROGATES) + len(ordinary)
    assert keys[-3:] == [("firehose", r) for r in ordinary]  # as before: an upgrade re-counts no retry
    for _, key in keys:  # what both stores can hold (PostgreSQL text takes no NUL and no lone surrogate)
        assert "\x00" not in key
        key.encode("utf-8")


@given(st.text(), st.text())
def test_the_done_key_mapping_is_injective(a: str, b: str) -> None:
    if a != b:
        assert done_key(a) != done_key(b)
    done_key(a).key.encode("utf-8")  # both stores can hold it
    assert "\x00" not in done_key(a).key


def test_running_out_of_memory_on_a_record_is_not_a_bad_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """A MemoryError is the machine's fault, not the record's: counted as an invalid payload, the record would be
    skipped and the request answered 200 (lost). It passes through: the request fails (500), Firehose retries."""

    def no_memory(data: bytes, errors: object) -> bytes:
        raise MemoryError

    monkeypatch.setattr(firehose_http, "_record_text", no_memory)
    with pytest.raises(MemoryError):
        records_lines([{"data": base64.b64encode(GOOD).decode()}], 1 << 20)
