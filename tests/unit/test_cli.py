"""`streamer replay` as a user runs it: a real subprocess."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from streamer.schema import DEFAULT_FIELDS

LINES = [
    "2 123456789010 eni-a 10.0.0.1 10.0.0.2 443 49152 6 10 840 1439387263 1439387264 ACCEPT OK",
    "2 123456789010 eni-a 10.0.0.9 10.0.0.2 443 22 6 3 120 1439387263 1439387264 REJECT OK",
    "2 123456789010 eni-b 10.0.0.3 10.0.0.4 443 49152 6 1 40 1439387263 1439387264 ACCEPT OK",
    "2 123456789010 eni-b - - - - - - - 1439387263 1439387264 - NODATA",
    "this line is garbage",
]


def streamer(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "streamer", *args], input=stdin, capture_output=True, timeout=120, check=False)


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "logs" / "a.log.gz"
    path.parent.mkdir()
    path.write_bytes(gzip.compress((" ".join(DEFAULT_FIELDS) + "\n" + "\n".join(LINES) + "\n").encode()))
    return path


def test_json_output_is_one_object(sample: Path) -> None:
    proc = streamer("replay", "--output", "json", str(sample.parent))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc == {
        "records": 3,
        "interfaces": {
            "eni-a": {
                "ACCEPT": {"records": 1, "packets": 10, "bytes": 840},
                "REJECT": {"records": 1, "packets": 3, "bytes": 120},
            },
            "eni-b": {"ACCEPT": {"records": 1, "packets": 1, "bytes": 40}},
        },
        "log_status": {"NODATA": 1, "OK": 3},
        "errors": {"wrong_field_count": 1},
        "insights": {
            "gateway_endpoint_candidates": {},
            "ipv6_internet_inbound": {},
            "traffic_path_bytes": {},
        },
        "context": {  # what the records say about each ENI (v2: its account)
            "eni-a": {"interface_id": "eni-a", "account_id": "123456789010"},
            "eni-b": {"interface_id": "eni-b", "account_id": "123456789010"},
        },
    }
    assert b"wrong_field_count" in proc.stderr
    assert b"a.log.gz" in proc.stderr


def test_records_output_is_ndjson_with_aws_names(sample: Path) -> None:
    proc = streamer("replay", "--output", "records", str(sample))
    assert proc.returncode == 0
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 4
    assert rows[3]["log-status"] == "NODATA"
    assert rows[3]["packets"] is None
    assert rows[0]["interface-id"] == "eni-a"
    assert rows[0]["bytes"] == 840


def test_stdin_and_log_format() -> None:
    proc = streamer(
        "replay", "--output", "json", "--log-format", "${interface-id} ${action} ${bytes}", "-", stdin=b"eni-z REJECT 5\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["interfaces"] == {"eni-z": {"REJECT": {"records": 1, "packets": 0, "bytes": 5}}}


def test_table_output(sample: Path) -> None:
    proc = streamer("replay", str(sample))
    assert proc.returncode == 0
    out = proc.stdout.decode()
    assert "eni-a" in out
    assert "records (ACCEPT+REJECT): 3" in out


def test_unreadable_path_fails_with_one_line(tmp_path: Path) -> None:
    proc = streamer("replay", str(tmp_path / "nope.log"))
    assert proc.returncode == 2
    assert proc.stderr.decode().strip().count("\n") == 0
    assert "nope.log" in proc.stderr.decode()


def test_bad_log_format_fails_with_one_line() -> None:
    proc = streamer("replay", "--log-format", "${version} ${bogus field}", "-", stdin=b"")
    assert proc.returncode == 2
    assert "bogus field" in proc.stderr.decode()
    assert proc.stderr.decode().strip().count("\n") == 0


def test_corrupt_object_is_reported_and_others_still_count(tmp_path: Path, sample: Path) -> None:
    (sample.parent / "b.log.gz").write_bytes(gzip.compress(b"x" * 1000)[:20])
    proc = streamer("replay", "--output", "json", str(sample.parent))
    assert proc.returncode == 0
    doc = json.loads(proc.stdout)
    assert doc["records"] == 3
    assert doc["errors"]["truncated"] == 1


def test_many_files_give_what_the_same_records_give_as_one_file(tmp_path: Path) -> None:
    """Replay works many inputs back to back and folds their partials in groups (streamer/replay.py): the
    report is the one of the same records in one file, insights included, a bad file in the middle aside."""
    from streamer.schema import V5_ALL_FIELDS
    from streamer.synth import TrafficProfile, generate_table, to_lines

    profile = TrafficProfile(records=14_000, enis=300, ipv6_ratio=0.2, fields=V5_ALL_FIELDS)
    lines = to_lines(generate_table(profile)).to_pylist()
    header = " ".join(V5_ALL_FIELDS) + "\n"
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "all.log.gz").write_bytes(gzip.compress((header + "\n".join(lines) + "\n").encode()))
    many = tmp_path / "many"
    many.mkdir()
    for i in range(70):  # more files than replay folds at once
        (many / f"{i:03d}.log.gz").write_bytes(
            gzip.compress((header + "\n".join(lines[i * 200 : i * 200 + 200]) + "\n").encode())
        )
    (many / "035b.log.gz").write_bytes(gzip.compress(b"x" * 1000)[:20])
    docs = [json.loads(streamer("replay", "--output", "json", str(tmp_path / d)).stdout) for d in ("one", "many")]
    assert sum(docs[0]["log_status"].values()) == 14_000
    assert docs[1].pop("errors") == {"truncated": 1}
    assert docs[0].pop("errors") == {}
    assert docs[1] == docs[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_port_keeps_serving_until_interrupted(sample: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer", "replay", "--output", "json", "--metrics-port", str(port), str(sample)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        body = ""
        for _ in range(100):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert 'vpcflow_records_total{action="REJECT",interface_id="eni-a"} 1.0' in body
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"replay kept running 30 s after SIGINT; stderr: {err.decode()[-2000:]}")
        assert code == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_replay_alerts_reports_the_spike_in_json_and_table(tmp_path: Path) -> None:
    import pyarrow as pa

    from streamer.synth import Spike, TrafficProfile, eni_ids, generate_table, spike_table, to_lines

    base = 1_764_000_000
    profile = TrafficProfile(records=60_000, enis=10, span_seconds=3600, start_epoch=base, seed=3)
    victim = eni_ids(10)[4]
    table = pa.concat_tables([generate_table(profile), spike_table(Spike(victim, base + 2400, records=500))])
    table = table.sort_by([("start", "ascending")])
    path = tmp_path / "spike.log.gz"
    path.write_bytes(gzip.compress((" ".join(profile.fields) + "\n" + "\n".join(to_lines(table).to_pylist()) + "\n").encode()))
    proc = streamer("replay", "--alerts", "--output", "json", str(path))
    assert proc.returncode == 0, proc.stderr
    alerts = json.loads(proc.stdout)["alerts"]
    assert len(alerts) == 1
    assert alerts[0]["interface_id"] == victim
    assert alerts[0]["window_start"] == base + 2400
    assert alerts[0]["window_end"] == base + 2460
    assert alerts[0]["rejected_records"] >= 500
    assert alerts[0]["baseline"] < 20
    proc = streamer("replay", "--alerts", str(path))
    assert "1 rejected-traffic spike(s)" in proc.stdout.decode()
    assert victim in proc.stdout.decode()


def test_replay_reads_firehose_objects_without_flags(tmp_path: Path) -> None:
    """A Firehose S3 folder: CloudWatch payloads one gzip member each, and headerless flow-log lines, sniffed."""
    folder = tmp_path / "2026" / "11" / "26" / "13"
    folder.mkdir(parents=True)
    payload = {"messageType": "DATA_MESSAGE", "logGroup": "/vpc", "logStream": "eni-a", "logEvents": []}
    control = {"messageType": "CONTROL_MESSAGE", "logGroup": "", "logStream": "", "logEvents": [{"message": "health"}]}
    members = [json.dumps({**payload, "logEvents": [{"id": str(i), "message": m}]}).encode() for i, m in enumerate(LINES[:2])]
    members.insert(1, json.dumps(control).encode())
    name = "flowlogs-1-2026-11-26-13-05-00-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    (folder / f"{name}.gz").write_bytes(b"".join(gzip.compress(m) for m in members))
    (folder / name.replace("-1-", "-2-")).write_bytes(("\n".join(LINES[2:4]) + "\n").encode())
    proc = streamer("replay", "--output", "json", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["records"] == 3
    assert doc["interfaces"]["eni-a"]["REJECT"]["records"] == 1
    assert doc["log_status"] == {"NODATA": 1, "OK": 3}
    assert doc["errors"] == {}


def test_replay_json_reports_network_insights(tmp_path: Path) -> None:
    from streamer.schema import V5_ALL_FIELDS
    from streamer.synth import insight_cases, insight_table, to_lines

    cases, expected = insight_cases(1_764_000_000)
    text = " ".join(V5_ALL_FIELDS) + "\n" + "\n".join(to_lines(insight_table(cases)).to_pylist()) + "\n"
    path = tmp_path / "v5.log.gz"
    path.write_bytes(gzip.compress(text.encode()))
    argv = ("replay", "--output", "json", "--nat-gateway-price-per-gb", "0.05", str(path))
    doc = json.loads(streamer(*argv, "--nacl-pairing").stdout)
    insights = doc["insights"]
    assert {k: v["records"] for k, v in insights["nacl_return_rejects"].items()} == expected["nacl_return_rejects"]
    assert insights["ipv6_internet_inbound"] == expected["ipv6_internet_inbound"]
    assert insights["traffic_path_bytes"] == expected["traffic_path_bytes"]
    s3 = insights["gateway_endpoint_candidates"]["vpc-0insight000000001"]["S3"]
    assert (s3["records"], s3["bytes"], s3["estimated_nat_cost_usd"]) == (2, 4 * 2**30, 0.2)
    assert "insights" not in json.loads(streamer("replay", "--output", "json", "--no-insights", str(path)).stdout)
    # NACL pairing is opt-in: by default the other signals are the same, and no NACL section says "none found"
    default = json.loads(streamer(*argv).stdout)["insights"]
    assert "nacl_return_rejects" not in default
    assert default == {k: v for k, v in insights.items() if k != "nacl_return_rejects"}


def test_replay_json_pairs_across_its_files_and_the_example_is_a_counted_reject(tmp_path: Path) -> None:
    """The replies in the first file wait for the requests in the second; a reject nothing pairs with,
    read first on the same ENI, is neither counted nor the example."""
    from streamer.schema import V5_ALL_FIELDS
    from streamer.synth import InsightCase, insight_table, to_lines

    eni, t = "eni-0pair000000000009", 1_764_000_000

    def write(name: str, cases: list[InsightCase]) -> None:
        text = " ".join(V5_ALL_FIELDS) + "\n" + "\n".join(to_lines(insight_table(cases)).to_pylist()) + "\n"
        (tmp_path / name).write_bytes(gzip.compress(text.encode()))

    write(
        "a.log.gz",
        [
            InsightCase(eni, "198.51.100.7", "10.0.1.5", 443, 50007, "REJECT", t),  # no request ever
            InsightCase(eni, "52.94.1.10", "10.0.1.5", 443, 50001, "REJECT", t + 240),
            InsightCase(eni, "52.94.1.10", "10.0.1.5", 443, 50001, "REJECT", t + 250),
        ],
    )
    write("b.log.gz", [InsightCase(eni, "10.0.1.5", "52.94.1.10", 50001, 443, "ACCEPT", t + 5, direction="egress")])
    doc = json.loads(streamer("replay", "--output", "json", "--nacl-pairing", str(tmp_path)).stdout)
    nacl = doc["insights"]["nacl_return_rejects"]
    assert nacl[eni]["records"] == 2
    assert nacl[eni]["example"] == f"{eni} 52.94.1.10:443 -> 10.0.1.5:50001 protocol 6 REJECT"
