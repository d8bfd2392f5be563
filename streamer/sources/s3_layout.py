"""Where AWS puts flow-log objects in S3, as pure functions.

    [prefix/]AWSLogs/{acct}/vpcflowlogs/{region}/YYYY/MM/DD/[HH/]{file}
    [prefix/]AWSLogs/aws-account-id={acct}/aws-service=vpcflowlogs/aws-region={region}/year=YYYY/month=MM/day=DD/[hour=HH/]{file}

(the Transit Gateway guide spells the Hive service part `service=`, so both
are accepted). Listing stays bounded: only the day, and where present hour,
partitions that overlap the lookback window are listed, never the bucket.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

_FILE_TIME = re.compile(r"_(\d{8}T\d{4}Z)_[^_/]*$")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How partition folder names are spelled under one account/region."""

    hive: bool

    def account_dir(self, name: str) -> str | None:
        """The account id of an `AWSLogs/<name>/` folder, if it is one."""
        if name.startswith("aws-account-id="):
            return name.removeprefix("aws-account-id=")
        return name if name.isdigit() else None

    def day(self, day: dt.date) -> str:
        if self.hive:
            return f"year={day:%Y}/month={day:%m}/day={day:%d}/"
        return f"{day:%Y}/{day:%m}/{day:%d}/"

    def hour_of(self, folder: str) -> int | None:
        """The hour of an hourly partition folder name (`13/` or `hour=13/`)."""
        name = folder.rstrip("/").rsplit("/", 1)[-1].removeprefix("hour=")
        return int(name) if name.isdigit() and len(name) <= 2 and int(name) < 24 else None


SERVICE_DIRS = {"vpcflowlogs/": False, "aws-service=vpcflowlogs/": True, "service=vpcflowlogs/": True}


def root(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/AWSLogs/" if prefix else "AWSLogs/"


def region_of(folder: str) -> str:
    return folder.rstrip("/").rsplit("/", 1)[-1].removeprefix("aws-region=")


def days_in_window(now: dt.datetime, lookback_seconds: int) -> list[dt.date]:
    """UTC dates whose partitions can hold objects from the lookback window."""
    start = (now - dt.timedelta(seconds=lookback_seconds)).date()
    return [start + dt.timedelta(days=i) for i in range((now.date() - start).days + 1)]


def hour_in_window(day: dt.date, hour: int, now: dt.datetime, lookback_seconds: int) -> bool:
    begin = dt.datetime.combine(day, dt.time(hour), tzinfo=dt.UTC)
    return begin + dt.timedelta(hours=1) > now - dt.timedelta(seconds=lookback_seconds) and begin <= now


def file_time(key: str) -> float | None:
    """The `YYYYMMDDTHHmmZ` stamp in an AWS flow-log file name, as epoch seconds."""
    match = _FILE_TIME.search(key.split(".", 1)[0] if "/" not in key else key.rsplit("/", 1)[-1].split(".", 1)[0])
    if match is None:
        return None
    return dt.datetime.strptime(match.group(1), "%Y%m%dT%H%MZ").replace(tzinfo=dt.UTC).timestamp()


def is_flow_log_object(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.endswith((".log.gz", ".log", ".parquet", ".gz")) and not name.startswith(".")
