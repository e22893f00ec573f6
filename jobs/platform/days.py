"""The calendar of the daily partitions, with the standard library only, so that a command line can check a
day before it imports anything heavy.

A partition is one business day of the card processor, in UTC. The first is ``PARTITION_START``; the last is
today's, which exists while the day is in progress (``end_offset=1`` in ``orchestration/partitions.py``).
"""

from __future__ import annotations

import datetime as dt

PARTITION_START = "2018-04-01"
FIRST_DAY = dt.date.fromisoformat(PARTITION_START)


def last_day() -> dt.date:
    """The newest partition: today, in UTC."""
    return dt.datetime.now(dt.UTC).date()
