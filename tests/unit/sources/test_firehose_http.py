"""The Firehose endpoint on its own, over real HTTP on 127.0.0.1, with a sink of our own (the Sink seam)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import aiohttp
import pytest

from streamer.sources.base import Delivery
from streamer.sources.firehose_http import FirehoseHttpSource, FirehoseHttpSourceConfig

KEY = "k3y-that-must-never-be-logged"


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

    def source_error(self, source: str, reason: str, message: str) -> None:
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
