"""Command line: `streamer replay | run | demo | check-config | config-from-stack`.

Each command imports what it uses when it runs: `streamer --help` loads no
Arrow, pydantic or asyncio, and `replay` no pydantic, asyncio or AWS client
(tests/unit/test_cli_imports.py), so a one-line replay starts fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from streamer import defaults, logs

if TYPE_CHECKING:
    from streamer.aggregate.detection import Detection
    from streamer.aggregate.state import FlowState
    from streamer.config import Config

log = logging.getLogger("streamer")


class Progress:
    """A one-line progress bar on stderr, only for people and long inputs."""

    MIN_BYTES = 64 << 20

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.last = 0.0
        self.enabled = sys.stderr.isatty() and total >= self.MIN_BYTES

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self.last > 0.2:
            self.last = now
            pct = min(100.0, 100.0 * self.done / self.total)
            bar = "#" * int(pct / 4)
            sys.stderr.write(f"\r[{bar:<25}] {pct:5.1f}% {self.done >> 20} / {self.total >> 20} MiB")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 60 + "\r")


def _fail(message: str) -> int:
    print(f"streamer: error: {message}", file=sys.stderr)
    return 2


def cmd_replay(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    import orjson

    from streamer import output
    from streamer.aggregate.batch import columns, plus
    from streamer.aggregate.context import RECORD_FIELDS, fold, merge
    from streamer.aggregate.insights import report
    from streamer.decode.objects import ObjectReader
    from streamer.replay import InputError, expand, replay_counts, replay_records
    from streamer.schema import UnknownFieldError, parse_log_format

    try:
        log_format = parse_log_format(args.log_format) if args.log_format else None
    except (UnknownFieldError, ValueError) as exc:
        return _fail(f"--log-format: {exc}")
    try:
        inputs = expand(args.paths)
    except InputError as exc:
        return _fail(str(exc))
    workers = args.workers or min(4, os.cpu_count() or 2)
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        if args.output == "records":
            reader = ObjectReader(log_format=log_format)
            state = replay_records(inputs, reader, pool, lambda t: output.write_records(t, sys.stdout.buffer))
            sys.stdout.flush()
        else:
            progress = Progress(sum(i.size for i in inputs))
            detection = _detection(args) if args.alerts else None
            insights_window = None if args.no_insights else args.window_seconds
            pairing = insights_window is not None and args.nacl_pairing
            wanted = columns(detection is not None, insights_window is not None, pairing)
            found: list[Any] = []  # the ENI context the records carry (--output json)
            if args.output == "json":
                wanted = plus(wanted, tuple(RECORD_FIELDS))
            reader = ObjectReader(log_format=log_format, columns=wanted)
            state, anomalies = replay_counts(
                inputs,
                reader,
                pool,
                progress,
                detection,
                insights_window_seconds=insights_window,
                lateness_seconds=args.lateness_seconds,
                nacl_pairing=pairing,
                on_context=found.extend if args.output == "json" else None,
            )
            progress.close()
            doc = output.summary(state)
            if insights_window is not None:
                doc["insights"] = report(state.insights, state.insight_examples, args.nat_gateway_price_per_gb, pairing)
            if detection is not None:
                doc["alerts"] = [a.to_json() for a in anomalies]
            if args.output == "json":
                doc["context"] = {eni: merge(eni, known, None).to_json() for eni, known in sorted(fold(found).items())}
                sys.stdout.buffer.write(orjson.dumps(doc) + b"\n")
            else:
                sys.stdout.write(output.render_table(doc))
                if detection is not None:
                    sys.stdout.write(output.render_alerts(anomalies))
            sys.stdout.flush()
    if args.metrics_port is not None:
        import asyncio

        nacl = args.nacl_pairing and not args.no_insights
        asyncio.run(_serve_forever(state, args.metrics_address, args.metrics_port, args.nat_gateway_price_per_gb, nacl))
    return 0


async def _serve_forever(state: FlowState, host: str, port: int, price: float, nacl_pairing: bool) -> None:
    # Imported here: a plain replay should not pay for the HTTP stack at start-up.
    import asyncio
    import signal

    from prometheus_client import CollectorRegistry

    from streamer.export.http import build_app, serve
    from streamer.export.metrics import FlowCollector, InsightsCollector

    registry = CollectorRegistry(auto_describe=True)
    registry.register(FlowCollector(lambda: state))
    registry.register(InsightsCollector(lambda: state, price, nacl_pairing))
    # Explicit handlers, like `run` and `demo`: they work even where SIGINT was inherited as ignored.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner, bound = await serve(build_app(registry), host, port)
    print(f"serving /metrics on http://{host}:{bound}/metrics (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _detection(args: argparse.Namespace) -> Detection:
    from streamer.aggregate.anomaly import Settings
    from streamer.aggregate.detection import Detection

    settings = Settings(
        args.window_seconds, args.score_threshold, args.min_rejected_records, args.warmup_windows, defaults.BASELINE_ALPHA
    )
    return Detection.create(settings, args.lateness_seconds)


def cmd_demo(args: argparse.Namespace) -> int:
    """The real service against an embedded S3 with generated traffic and a spike."""
    try:
        import moto  # noqa: F401  # the embedded S3 lives in the optional demo extra
    except ImportError:
        return _fail("demo needs the demo extra: pip install 'vpcflow-streamer[demo]' (scripts/run.sh installs it)")
    import asyncio

    from streamer.demo import DemoOptions, run_demo

    options = DemoOptions(
        listen=args.listen,
        duration_seconds=args.duration,
        spike_after_seconds=args.spike_after,
        speed=args.speed,
        alertmanager_url=args.alertmanager_url,
        webhook_url=args.webhook_url,
    )
    try:
        return asyncio.run(run_demo(options))
    except OSError as exc:
        return _fail(f"demo: {exc}")


def _load(path: str) -> Config:
    from pathlib import Path

    from streamer.config import load_config  # the sources' modules: only for commands that run them

    return load_config(Path(path))


def cmd_check_config(args: argparse.Namespace) -> int:
    from streamer.settings import ConfigError

    try:
        config = _load(args.config)
    except ConfigError as exc:
        return _fail(f"config: {exc}")
    names = ", ".join(f"{config.source_name(i)} ({s.type})" for i, s in enumerate(config.sources))
    if config.checkpoint.url is not None:
        where = f"PostgreSQL (fleet replica {config.fleet.replica_id})"  # never the URL: it may hold the password
    else:
        where = str(config.checkpoint.path)
    print(f"{args.config}: ok; sources: {names}; checkpoint: {where}")
    return 0


def cmd_config_from_stack(args: argparse.Namespace) -> int:
    """Print a streamer.yaml from a deploy/aws/streamer.yaml stack's outputs (DescribeStacks, or a JSON file)."""
    from streamer.stack import StackError, outputs_from_json, render

    try:
        if args.outputs is not None:
            try:
                from pathlib import Path

                text = sys.stdin.read() if args.outputs == "-" else Path(args.outputs).read_text()
            except OSError as exc:
                return _fail(f"--outputs {args.outputs}: {exc.strerror}")
            outputs = outputs_from_json(text)
        else:
            import asyncio

            from botocore.exceptions import BotoCoreError, ClientError

            try:
                outputs = asyncio.run(_stack_outputs(args.stack, args.region, args.endpoint_url))
            except (ClientError, BotoCoreError, OSError) as exc:
                return _fail(f"stack {args.stack}: {exc}")
        sys.stdout.write(render(outputs, args.access_key_file))
    except StackError as exc:
        return _fail(str(exc))
    return 0


async def _stack_outputs(stack: str, region: str | None, endpoint_url: str | None) -> dict[str, str]:
    from streamer.aws import AwsClients
    from streamer.stack import StackError, outputs_from_stack

    clients = AwsClients()
    try:
        region = region or clients.default_region()
        if region is None:
            raise StackError("no region: give --region or set AWS_REGION")
        return await outputs_from_stack(clients, stack, region, endpoint_url)
    finally:
        await clients.close()


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from streamer.memory import bound_process_memory

    bound_process_memory()  # before pyarrow is imported
    from streamer.settings import ConfigError

    try:
        config = _load(args.config)
    except ConfigError as exc:
        return _fail(f"config: {exc}")
    logs.setup(config.logging.level if args.log_level == "info" else args.log_level, config.logging.json_lines or args.log_json)
    from streamer.service import run_until_signalled
    from streamer.store.base import CheckpointError

    try:
        asyncio.run(run_until_signalled(config))
    except CheckpointError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot start: {exc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamer", description="VPC Flow Logs to per-ENI metrics and reject-spike alerts.")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-json", action="store_true", help="log JSON lines instead of text")
    sub = parser.add_subparsers(dest="command", required=True)

    rp = sub.add_parser("replay", help="decode and count local flow-log files")
    rp.add_argument("paths", nargs="+", metavar="PATH", help="file, directory (recursed) or - for stdin")
    rp.add_argument("--log-format", help="AWS LogFormat for headerless input, e.g. '${version} ${interface-id} ...'")
    rp.add_argument("--output", choices=["table", "json", "records"], default="table")
    rp.add_argument("--metrics-port", type=int, help="after processing, serve /metrics on this port until interrupted")
    rp.add_argument("--metrics-address", default="127.0.0.1")
    rp.add_argument("--workers", type=int, default=0, help="decode threads (default: CPUs, at most 4)")
    rp.add_argument("--alerts", action="store_true", help="report rejected-traffic spikes the input contains")
    rp.add_argument("--window-seconds", type=int, default=defaults.WINDOW_SECONDS)
    rp.add_argument("--lateness-seconds", type=int, default=defaults.LATENESS_SECONDS)
    rp.add_argument("--score-threshold", type=float, default=defaults.SCORE_THRESHOLD)
    rp.add_argument("--min-rejected-records", type=int, default=defaults.MIN_REJECTED_RECORDS)
    rp.add_argument("--warmup-windows", type=int, default=defaults.WARMUP_WINDOWS)
    rp.add_argument("--no-insights", action="store_true", help="skip the network insights (NAT, IPv6, paths; NACL)")
    rp.add_argument(
        "--nacl-pairing",
        action="store_true",
        help="also pair NACL return rejects (off by default: +50%% CPU on v2, +40%% on v5)",
    )
    rp.add_argument("--nat-gateway-price-per-gb", type=float, default=defaults.NAT_GATEWAY_PRICE_PER_GB)
    rp.set_defaults(func=cmd_replay)

    dp = sub.add_parser("demo", help="the live service against an embedded S3 with generated traffic (no AWS needed)")
    dp.add_argument("--listen", default="127.0.0.1:9108", help="address for /metrics, /healthz, /readyz")
    dp.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    dp.add_argument("--spike-after", type=float, default=60.0, help="seconds until one ENI gets scanned")
    dp.add_argument("--speed", type=float, default=20.0, help="event time runs this many times faster than the clock")
    dp.add_argument("--alertmanager-url", help="also send the alert to this Alertmanager")
    dp.add_argument("--webhook-url", help="also send the alert to this webhook")
    dp.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run the service from a config file")
    run.add_argument("--config", "-c", required=True, help="YAML config (environment STREAMER__A__B overrides)")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", "-c", required=True)
    check.set_defaults(func=cmd_check_config)

    stack = sub.add_parser("config-from-stack", help="print a streamer.yaml from a deploy/aws/streamer.yaml stack's outputs")
    where = stack.add_mutually_exclusive_group(required=True)
    where.add_argument("--stack", help="the stack's name (CloudFormation DescribeStacks)")
    where.add_argument("--outputs", help="a JSON file of its outputs (describe-stacks output; - for stdin)")
    stack.add_argument("--region", help="the stack's region (default: the standard AWS chain)")
    stack.add_argument("--endpoint-url", help="CloudFormation endpoint (VPC endpoints, tests)")
    stack.add_argument("--access-key-file", default="/etc/streamer/firehose-access-key", help="cloudwatch-firehose: its key")
    stack.set_defaults(func=cmd_config_from_stack)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_json)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
