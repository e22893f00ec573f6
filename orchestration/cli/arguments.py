"""Partition-day arguments (``--from``, ``--to``), checked before anything heavy is imported.

A mistyped date, a reversed range, a day outside the partitions or a range without landing files is refused
in the time it takes to parse the command line, with one line that names the option and the fix, the usage
exit code 2, and no Dagster run recorded: Dagster, Spark and MLflow are imported only once the range holds.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from jobs.platform.days import FIRST_DAY, first_day, last_day


class Refusal(click.BadParameter):
    """A bad value, said in one line that names the option and the fix (exit code 2, no usage text)."""

    def show(self, file: Any = None) -> None:
        self.ctx = None
        super().show(file)


def refuse(message: str, *options: str) -> Refusal:
    """The refusal of a value given to ``options`` (their names, e.g. ``--from``)."""
    return Refusal(message, param_hint=list(options))


class PartitionDay(click.ParamType):
    """A business day that has a partition: a real YYYY-MM-DD date from the first partition to yesterday."""

    name = "YYYY-MM-DD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dt.date:
        if isinstance(value, dt.date):
            return value
        option = param.opts[0] if param is not None else "day"
        text = str(value).strip()
        try:
            day = dt.date.fromisoformat(text) if len(text) == 10 else None
        except ValueError:
            day = None
        if day is None:
            raise refuse(f"{text!r} is not a calendar date; write it as YYYY-MM-DD, e.g. {FIRST_DAY}", option)
        if day < FIRST_DAY:
            raise refuse(f"{day} is before the first partition; use {FIRST_DAY} or later", option)
        last = last_day()
        if day > last:
            raise refuse(
                f"{day} has no partition yet; the last one is yesterday, {last} (UTC): use it or an earlier "
                "day",
                option,
            )
        return day


PARTITION_DAY = PartitionDay()


def checked_range(start: dt.date, end: dt.date) -> list[dt.date]:
    """Every day from ``start`` to ``end``, both included; a reversed range is refused naming ``--to``, and a
    start before the data home's first partition (a home ``txguard demo`` made) naming ``--from``."""
    if end < start:
        raise refuse(f"{end} is before --from {start}; swap the two days", "--to")
    from jobs.platform.settings import load_settings

    first = first_day(load_settings().home)
    if start < first:
        raise refuse(f"{start} is before the data home's first partition; use {first} or later", "--from")
    return [start + dt.timedelta(days=k) for k in range((end - start).days + 1)]


def landed_days(landing: str) -> list[dt.date]:
    """The days that have a transactions file in the landing zone, in order: one listing of the folder."""
    from jobs.ingest.landing import BadLandingName, list_landing, parse_landing_name

    landed = set()
    for file in list_landing(landing, ["transactions"]):
        try:
            landed.add(parse_landing_name(file.name))
        except BadLandingName:
            continue
    return sorted(landed)


def require_landing_files(landing: str, days: list[dt.date]) -> None:
    """Refuse a range with a day that has no transactions file: ingestion would fail on it mid-run.

    One listing of the landing folder, not one request per day.
    """
    landed = set(landed_days(landing))
    missing = [day for day in days if day not in landed]
    if missing:
        which = f"{missing[0]}" if len(missing) == 1 else f"{len(missing)} of its days, first {missing[0]}"
        raise refuse(
            f"no transactions file in {landing}/transactions for {which}; land the files (txguard simulate "
            "writes some) or choose days that have them",
            "--from",
            "--to",
        )
