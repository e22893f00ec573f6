"""The calendar of the daily partitions, with the standard library only, so that a command line can check a
day before it imports anything heavy.

A partition is one business day of the card processor, in UTC, and exists once the day is over: its file
lands after the day ends, so the last partition is yesterday's (``end_offset=0`` in
``orchestration/partitions.py``). The first is the day the data home records in its ``first_day`` file
(``txguard demo`` records the first day it simulates), else ``PARTITION_START``, the handbook's first day,
which no partition precedes.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

PARTITION_START = "2018-04-01"
FIRST_DAY = dt.date.fromisoformat(PARTITION_START)
FIRST_DAY_FILE = "first_day"
"""In the data home: the first partition of that home's data, as an ISO date."""


def first_day(home: Path) -> dt.date:
    """The first partition of the data home ``home``: the day it records, else ``FIRST_DAY``."""
    recorded = home / FIRST_DAY_FILE
    return dt.date.fromisoformat(recorded.read_text().strip()) if recorded.is_file() else FIRST_DAY


def record_first_day(home: Path, day: dt.date) -> None:
    """Make ``day`` the first partition of the data home ``home`` (read when the code location loads)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / FIRST_DAY_FILE).write_text(f"{day.isoformat()}\n")


def last_day() -> dt.date:
    """The newest partition: yesterday, the last whole day in UTC."""
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
