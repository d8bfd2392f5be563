"""Where AWS puts flow-log objects in S3, as pure functions.

    [prefix/]AWSLogs/{acct}/vpcflowlogs/{region}/YYYY/MM/DD/[HH/]{file}
    [prefix/]AWSLogs/aws-account-id={acct}/aws-service=vpcflowlogs/aws-region={region}/year=YYYY/month=MM/day=DD/[hour=HH/]{file}

(the Transit Gateway guide spells the Hive service part `service=`, so both
are accepted). A Firehose stream's S3 destination instead writes

    [prefix]YYYY/MM/DD/HH/{stream}-{n}-YYYY-MM-DD-HH-MM-SS-{uuid}[.gz]

with the hour of arrival (UTC). Listing stays bounded: only the day, and
where present hour, partitions that overlap the lookback window are listed,
never the bucket.
"""

from __future__ import annotations

import dataclasses
import datetime as dt


@dataclasses.dataclass(frozen=True)
class Layout:
    """How partition folder names are spelled under one account/region."""

    hive: bool

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


def days_in_window(now: dt.datetime, lookback_seconds: int) -> list[dt.date]:
    """UTC dates whose partitions can hold objects from the lookback window."""
    start = (now - dt.timedelta(seconds=lookback_seconds)).date()
    return [start + dt.timedelta(days=i) for i in range((now.date() - start).days + 1)]


def hour_in_window(day: dt.date, hour: int, now: dt.datetime, lookback_seconds: int) -> bool:
    begin = dt.datetime.combine(day, dt.time(hour), tzinfo=dt.UTC)
    return begin + dt.timedelta(hours=1) > now - dt.timedelta(seconds=lookback_seconds) and begin <= now


def is_flow_log_object(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.endswith((".log.gz", ".log", ".parquet", ".gz")) and not name.startswith(".")


def is_object_name(key: str) -> bool:
    """Any object, not a folder marker or a hidden file (Firehose names carry no fixed suffix)."""
    name = key.rsplit("/", 1)[-1]
    return bool(name) and not name.startswith(".")


def hours_in_window(now: dt.datetime, lookback_seconds: int) -> list[dt.datetime]:
    """Starts of the UTC hours that overlap [now - lookback, now]."""
    first = (now - dt.timedelta(seconds=lookback_seconds)).replace(minute=0, second=0, microsecond=0)
    hours = []
    while first <= now:
        hours.append(first)
        first += dt.timedelta(hours=1)
    return hours


def firehose_hour(prefix: str, hour: dt.datetime) -> str:
    """The folder Firehose writes an hour's objects to."""
    return f"{prefix}{hour:%Y/%m/%d/%H}/"
