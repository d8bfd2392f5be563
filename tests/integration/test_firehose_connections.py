"""Firehose HTTP against a real `streamer run`: connections that never finish a request (issue 29.5).

Each connection holds a file descriptor. Before the cap, 300 connections that
sent half a header, under `ulimit -n 256`, left none for `/healthz` (it hung)
nor for an authenticated delivery, and asyncio's accept loop logged "Too many
open files" some 900,000 times in 30 s. The process here runs with that limit
(`resource.setrlimit` before exec), over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from streamer.sources.firehose_http import ACCESS_KEY_HEADER as ACCESS_KEY
from streamer.sources.firehose_http import FirehoseHttpSource, FirehoseHttpSourceConfig
from streamer.sources.http_listener import RESERVED_FILES
from tests.integration.conftest import Truth, exported_totals, free_port, scrape
from tests.integration.test_firehose import KEY, firehose_request, http_records, http_source, wait_until_ready
from tests.unit.sources.test_firehose_http import HeldSink, request, started

pytestmark = pytest.mark.integration

OPEN_FILES = 256
HALF_A_HEADER = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appli"


def limit_open_files() -> None:  # in the child, before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


class Streamer:
    """`streamer run` with one firehose_http source, `ulimit -n 256`, its log kept."""

    def __init__(self, tmp: Path, **source: Any) -> None:
        self.port, self.http_port = free_port(), free_port()
        self.log = tmp / "streamer.log"
        config = tmp / "streamer.yaml"
        doc = {
            "http": {"listen_address": f"127.0.0.1:{self.http_port}"},
            "checkpoint": {"path": str(tmp / "state.db")},
            "sources": [http_source(listen_address=f"127.0.0.1:{self.port}", **source)],
        }
        config.write_text(yaml.safe_dump(doc))
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamer", "run", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=os.environ.copy(),
                preexec_fn=limit_open_files,
            )
        wait_until_ready(self.http_port, self.proc)

    def post(self, body: bytes) -> int:
        headers = {"X-Amz-Firehose-Access-Key": KEY, "Content-Type": "application/json"}
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/", data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)

    def healthz(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=10) as resp:
            return int(resp.status)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=15)
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
        return int(self.proc.returncode)


@pytest.fixture
def streamer(tmp_path: Path) -> Iterator[Streamer]:
    process = Streamer(tmp_path, header_timeout_seconds=120)
    try:
        yield process
    finally:
        process.stop()


def half_open(port: int, stack: ExitStack) -> bool:
    """One connection that sends half a header and then nothing (False: the connection itself failed)."""
    try:
        sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
        sock.sendall(HALF_A_HEADER)
    except OSError:
        return False
    return True


def test_slow_connections_exhaust_neither_files_nor_deliveries_nor_the_log(streamer: Streamer) -> None:
    truth = Truth()
    with ExitStack() as stack:
        opened = sum(half_open(streamer.port, stack) for _ in range(300))
        assert opened == 300  # accepted (or evicted later): none is left hanging in the backlog
        assert streamer.healthz() == 200
        assert streamer.post(firehose_request("through", http_records(truth, 1))) == 200
        assert streamer.proc.poll() is None
    assert exported_totals(scrape(streamer.http_port)) == truth.totals
    assert streamer.stop() == 0
    log = streamer.log.read_text()
    assert log.count("Too many open files") <= 2
    assert len(log.splitlines()) < 100
    assert "Traceback" not in log


def test_a_connection_that_never_sends_a_request_is_closed_after_header_timeout_seconds(tmp_path: Path) -> None:
    """aiohttp before 3.14.4 armed no timer until a first request: such a connection was held for ever."""
    process = Streamer(tmp_path, header_timeout_seconds=0.5)
    try:
        for first in (b"", HALF_A_HEADER):
            with socket.create_connection(("127.0.0.1", process.port), timeout=30) as sock:
                sock.sendall(first)
                assert sock.recv(1024) == b""  # closed by the server, no answer (a timeout raises instead)
    finally:
        assert process.stop() == 0


#: a listener in a process whose files run out: what it logs and reports, and whether it accepts once files are back
EXHAUSTED = r"""
import asyncio, json, logging, resource, sys
from streamer.sources.http_listener import CappedListener

resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
lines, reports, made = [], [], []
handler = logging.Handler()
handler.emit = lambda record: lines.append(record.getMessage())
logging.getLogger().addHandler(handler)
logging.getLogger().setLevel(logging.INFO)


class Counted(asyncio.Protocol):
    def connection_made(self, transport):
        made.append(transport)


async def main():
    listener = CappedListener("t", 30, lambda reason, message, logged: reports.append([reason, logged]))
    await listener.start(Counted, "127.0.0.1", 0)
    hog = []
    try:
        while True:
            hog.append(open("/dev/null"))
    except OSError:
        pass
    print(listener.port, flush=True)
    while sum(reason == "open_files" for reason, _ in reports) < 3:  # the parent connects: accept fails, again and again
        await asyncio.sleep(0.05)
    print("exhausted", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for f in hog:
        f.close()
    while len(made) < 20:
        await asyncio.sleep(0.05)
    await listener.stop()
    print(json.dumps({"lines": lines, "reports": reports, "made": len(made), "open": listener.connections}), flush=True)


asyncio.run(main())
"""


def test_an_accept_without_files_waits_and_logs_once_then_accepts_again() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", EXHAUSTED], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        with ExitStack() as stack:
            for _ in range(20):
                stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            assert proc.stdout.readline() == "exhausted\n"
            result = json.loads(proc.communicate("go\n", timeout=60)[0].splitlines()[-1])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert result["made"] == result["open"] == 20  # every connection accepted once files were back
    exhausted = [r for r in result["reports"] if r[0] == "open_files"]
    assert len(exhausted) >= 3  # every failed accept counted
    assert exhausted[0] == ["open_files", True]  # the first logged
    assert sum(logged for _, logged in exhausted) == 1  # then throttled
    assert sum("Too many open files" in line for line in result["lines"]) == 0  # asyncio's own loop never ran
    assert sum("cannot accept" in line for line in result["lines"]) == 0  # the report is the caller's to log


#: a listener at its cap in a process with 128 files; the parent holds a burst of connections in the backlog meanwhile
BURST = r"""
import asyncio, json, resource, sys
from streamer.sources.http_listener import CappedListener

resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
reports, made = [], []


class Counted(asyncio.Protocol):
    def connection_made(self, transport):
        made.append(transport)


async def main():
    listener = CappedListener("t", 1000, lambda reason, message, logged: reports.append(reason))
    await listener.start(Counted, "127.0.0.1", 0)  # the cap is lowered to leave RESERVED_FILES free
    print(listener.port, listener.max_connections, flush=True)
    while len(made) < listener.max_connections:
        await asyncio.sleep(0.01)
    print("full", flush=True)
    sys.stdin.readline()  # blocks the loop: what the parent connects meanwhile waits in the backlog
    while reports.count("connections_full") < 100:
        await asyncio.sleep(0.01)
    await listener.stop()
    print(json.dumps(reports), flush=True)


asyncio.run(main())
"""


def test_a_burst_at_the_cap_never_holds_more_files_than_the_cap_leaves() -> None:
    """A burst waiting in the backlog was accepted whole before the connections it evicted were closed (they
    close on the next turn of the loop): the listener ran out of files, though the cap leaves RESERVED_FILES."""
    proc = subprocess.Popen([sys.executable, "-c", BURST], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port, cap = map(int, proc.stdout.readline().split())
        with ExitStack() as stack:
            for _ in range(cap):
                stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            assert proc.stdout.readline() == "full\n"
            for _ in range(100):  # under BACKLOG: all wait there, made by the kernel
                stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            reports = json.loads(proc.communicate("go\n", timeout=60)[0].splitlines()[-1])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert reports.count("connections_full") == 100  # each made room by closing the oldest
    assert "open_files" not in reports  # and the files it closed were free before the next accept


#: a listener holding idle connections in a process whose other files then use up the limit
CROWDED = r"""
import asyncio, json, resource, sys
from streamer.sources.http_listener import CappedListener

resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
reports, made = [], []


class Counted(asyncio.Protocol):
    def connection_made(self, transport):
        made.append(transport)


async def main():
    listener = CappedListener("t", 1000, lambda reason, message, logged: reports.append(reason))
    await listener.start(Counted, "127.0.0.1", 0)
    print(listener.port, listener.max_connections, flush=True)
    while len(made) < listener.max_connections:
        await asyncio.sleep(0.01)
    hog = []  # the store, AWS clients...: what the rest of the process opened since the start
    try:
        while True:
            hog.append(open("/dev/null"))
    except OSError:
        pass
    print("crowded", flush=True)
    while len(made) <= listener.max_connections and reports.count("open_files") < 5:
        await asyncio.sleep(0.05)
    got_in, failed = len(made), reports.count("open_files")
    while reports.count("open_files") < failed + 3:  # no file still: accept fails, though no one is waiting
        await asyncio.sleep(0.05)
    print(json.dumps({"made": got_in, "closed": sum(t.is_closing() for t in made)}), flush=True)
    await listener.stop()


asyncio.run(main())
"""


def test_out_of_files_with_idle_connections_held_an_idle_one_makes_room() -> None:
    """The listener waited for a file while it held idle ones of its own: slow clients kept deliveries out for
    header_timeout_seconds once anything else in the process had used up the reserve."""
    proc = subprocess.Popen([sys.executable, "-c", CROWDED], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port, cap = map(int, proc.stdout.readline().split())
        with ExitStack() as stack:
            for _ in range(cap):
                stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            assert proc.stdout.readline() == "crowded\n"
            stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            result = json.loads(proc.communicate("", timeout=60)[0].splitlines()[-1])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert result["made"] == cap + 1  # the new one got in
    assert result["closed"] == 1  # the oldest idle one was closed for it, and no other one for nobody


#: two listeners (two firehose_http sources) in one process with 128 files: what each may hold
TWO = r"""
import asyncio, json, resource
from streamer.sources.http_listener import CappedListener

resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))


async def main():
    first, second = (CappedListener(name, 1000, lambda reason, message, logged: None) for name in "ab")
    await first.start(asyncio.Protocol, "127.0.0.1", 0)
    await second.start(asyncio.Protocol, "127.0.0.1", 0)
    caps = [first.max_connections, second.max_connections]
    await first.stop()
    await second.stop()
    again = CappedListener("c", 1000, lambda reason, message, logged: None)  # a source restarted: the files are back
    await again.start(asyncio.Protocol, "127.0.0.1", 0)
    caps.append(again.max_connections)
    await again.stop()
    print(json.dumps(caps), flush=True)


asyncio.run(main())
"""


def test_listeners_in_one_process_share_the_open_file_limit() -> None:
    """Each listener lowered its cap as if it were alone: two full ones held twice what the limit leaves."""
    out = subprocess.run([sys.executable, "-c", TWO], capture_output=True, text=True, timeout=60, check=True).stdout
    first, second, again = json.loads(out.splitlines()[-1])
    assert first > 1
    assert first + second <= 128 - RESERVED_FILES
    assert again >= first  # a stopped listener gives its share back


async def test_at_the_cap_the_oldest_connection_outside_a_request_makes_room_never_one_inside() -> None:
    """In process: a delivery being committed keeps its connection whatever arrives; half-open ones make room."""
    config = FirehoseHttpSourceConfig(type="firehose_http", listen_address="127.0.0.1:0", access_key=KEY, max_connections=3)
    source = FirehoseHttpSource("firehose", config)
    sink = HeldSink()
    task = await started(source, sink)
    url = f"http://127.0.0.1:{source.port}/"
    try:
        async with aiohttp.ClientSession() as http:
            held = asyncio.create_task(http.post(url, data=request("held"), headers={ACCESS_KEY: KEY}))
            await asyncio.wait_for(sink.entered.wait(), 10)  # inside a request: being committed
            idle = []
            for _ in range(5):
                reader, writer = await asyncio.open_connection("127.0.0.1", source.port)
                writer.write(HALF_A_HEADER)
                idle.append((reader, writer))
            # The three oldest half-open ones were closed to make room, the held delivery was not.
            closed = [await asyncio.wait_for(reader.read(), 10) for reader, _ in idle[:3]]
            assert closed == [b"", b"", b""]
            assert source_errors(sink, "connections_full") == 3
            sink.release.set()
            async with await held as resp:
                assert resp.status == 200
            async with http.post(url, data=request("after"), headers={ACCESS_KEY: KEY}) as resp:
                assert resp.status == 200
            for _, writer in idle:
                writer.close()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_when_every_connection_is_inside_a_request_a_new_one_is_closed() -> None:
    config = FirehoseHttpSourceConfig(type="firehose_http", listen_address="127.0.0.1:0", access_key=KEY, max_connections=1)
    source = FirehoseHttpSource("firehose", config)
    sink = HeldSink()
    task = await started(source, sink)
    url = f"http://127.0.0.1:{source.port}/"
    try:
        async with aiohttp.ClientSession() as http:
            held = asyncio.create_task(http.post(url, data=request("held"), headers={ACCESS_KEY: KEY}))
            await asyncio.wait_for(sink.entered.wait(), 10)
            reader, writer = await asyncio.open_connection("127.0.0.1", source.port)
            writer.write(HALF_A_HEADER)
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            assert ("connections_full", "1 connections, all inside a request: a new one closed") in sink.errors
            sink.release.set()
            async with await held as resp:
                assert resp.status == 200
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def source_errors(sink: HeldSink, reason: str) -> int:
    return sum(r == reason for r, _ in sink.errors)
