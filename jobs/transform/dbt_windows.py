"""From a run's partition keys to the dbt invocation that rebuilds exactly that window of the warehouse.

Everything that reaches dbt (and so SQL) passes through here first: partition keys are parsed as dates by
``jobs.platform.layout.parse_day`` and the lake root is checked, so a hostile key never reaches a query.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from jobs.features.definitions import TERMINAL_DELAY_DAYS
from jobs.platform.layout import parse_day

_UNSAFE_ROOT = re.compile(r"['\"\\\x00-\x1f]")


@dataclass(frozen=True)
class PartitionWindow:
    """Days ``[start, end)``: the partitions one run replaces."""

    start: dt.date
    end: dt.date

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"empty partition window [{self.start}, {self.end})")

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    @property
    def last(self) -> dt.date:
        return self.end - dt.timedelta(days=1)

    def __str__(self) -> str:
        return f"{self.start.isoformat()}..{self.last.isoformat()}"


def rebuilt_days(window: PartitionWindow, lookback_days: int = TERMINAL_DELAY_DAYS) -> list[dt.date]:
    """The days a dbt build of ``window`` may rewrite: the window, and the days before it that the
    incremental models look back over for late labels (their ``lookback_days``, the label delay)."""
    first = window.start - dt.timedelta(days=lookback_days)
    return [first + dt.timedelta(days=i) for i in range((window.end - first).days)]


def window_from_keys(first_key: str, last_key: str) -> PartitionWindow:
    """The window covering the daily partition keys ``first_key`` to ``last_key``, both included."""
    first, last = parse_day(first_key), parse_day(last_key)
    if last < first:
        raise ValueError(f"partition range {first_key}..{last_key} ends before it starts")
    return PartitionWindow(first, last + dt.timedelta(days=1))


def lake_location(lake_root: str) -> str:
    """The lake root as DuckDB reads it: an absolute local path or an ``s3://`` URI, safe to quote in SQL."""
    if _UNSAFE_ROOT.search(lake_root) or not lake_root.strip():
        raise ValueError(f"lake root {lake_root!r} is empty or holds quotes, backslashes or control bytes")
    if lake_root.startswith("s3://"):
        return lake_root.rstrip("/")
    local = lake_root.removeprefix("file://")
    return os.path.abspath(local).rstrip("/")


def dbt_target(lake_root: str) -> str:
    """The profile target: ``s3`` registers the s3fs filesystem with DuckDB, ``local`` needs nothing."""
    return "s3" if lake_root.startswith("s3://") else "local"


def dbt_vars(window: PartitionWindow, lake_root: str) -> dict[str, str]:
    return {
        "start_date": window.start.isoformat(),
        "end_date": window.end.isoformat(),
        "lake_root": lake_location(lake_root),
    }


def dbt_build_args(window: PartitionWindow, lake_root: str) -> list[str]:
    """``dbt build`` arguments for the window (the model selection is the caller's)."""
    return [
        "build",
        "--vars",
        json.dumps(dbt_vars(window, lake_root), sort_keys=True),
        "--target",
        dbt_target(lake_root),
    ]


def dbt_environment(warehouse: Path, s3_endpoint_url: str | None = None) -> dict[str, str]:
    """Environment variables the dbt profile reads: the warehouse file, telemetry off, the S3 endpoint."""
    env = {"TXGUARD_WAREHOUSE": str(Path(warehouse).absolute()), "DO_NOT_TRACK": "1"}
    if s3_endpoint_url:
        env["AWS_ENDPOINT_URL_S3"] = s3_endpoint_url
    return env
