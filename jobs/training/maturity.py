"""When a judged day's labels and features can be trusted: matured fraud reports and the end of the warm-up.

Labels: a fraud is reported from the day after the transaction up to ``LABEL_DELAY_DAYS`` later, so the labels
of days ``first..last`` are final only once the lake holds the fraud-report partitions up to
``last + LABEL_DELAY_DAYS``. A metric computed before then counts the frauds still to be reported as genuine
transactions and reads too low; every evaluation on labels (``txguard evaluate``, the promotion holdout,
``model_performance``) asks ``missing_report_days`` first and refuses or skips, naming the days, instead of
printing that number.

Warm-up: a feature of day D reads ``HISTORY_DAYS`` of history (the widest window plus the terminal delay), so
the features of the lake's first days are built on a partial history and have another distribution; and
the trainer needs its matured window (label delay, holdout, validation and a training day) before a first
model can exist. ``warm_up_end`` is the first day past both, counted from the lake's first ingested day.

The module imports no pandas: the Dagster code location loads it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from jobs.features.definitions import HISTORY_DAYS, TERMINAL_DELAY_DAYS
from jobs.platform import storage
from jobs.platform.layout import RAW_FRAUD_REPORTS, RAW_TRANSACTIONS, TRANSACTION_FEATURES, dataset_uri

LABEL_DELAY_DAYS = TERMINAL_DELAY_DAYS
"""Days after a transaction by which its fraud report has arrived (the simulator's and the handbook's)."""


class ImmatureLabels(ValueError):
    """The fraud reports that label the judged days have not all been ingested; the message names the days."""


def partition_days(lake: str, dataset: str) -> list[dt.date]:
    """The days with a partition of ``dataset`` in the lake, in order (an ingested day always has one)."""
    fs, path = storage.filesystem(dataset_uri(lake, dataset))
    if not fs.exists(path):
        return []
    days = []
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("date="):
            try:
                days.append(dt.date.fromisoformat(name.removeprefix("date=")))
            except ValueError:
                continue
    return sorted(days)


def newest_report_day(lake: str) -> dt.date | None:
    """The newest ingested fraud-report partition: reports up to it are in the lake."""
    days = partition_days(lake, RAW_FRAUD_REPORTS)
    return days[-1] if days else None


def first_ingested_day(lake: str) -> dt.date | None:
    """The first day the lake holds transactions of: its first raw or feature partition, whichever is first
    (a lake written straight as features, as benchmarks and tests write it, has no raw partitions)."""
    listed = (partition_days(lake, dataset) for dataset in (RAW_TRANSACTIONS, TRANSACTION_FEATURES))
    firsts = [days[0] for days in listed if days]
    return min(firsts) if firsts else None


def missing_report_days(
    first_day: dt.date,
    last_day: dt.date,
    newest_report: dt.date | None,
    delay_days: int = LABEL_DELAY_DAYS,
) -> list[dt.date]:
    """The report days still to be ingested before the labels of ``first_day..last_day`` are final.

    Reports of a day's transactions arrive from the next day up to ``delay_days`` later, so the labels need
    every report day through ``last_day + delay_days``; those after ``newest_report`` are missing.
    """
    needed_from = first_day + dt.timedelta(days=1)
    if newest_report is not None:
        needed_from = max(needed_from, newest_report + dt.timedelta(days=1))
    needed_to = last_day + dt.timedelta(days=delay_days)
    return [needed_from + dt.timedelta(days=i) for i in range((needed_to - needed_from).days + 1)]


def format_days(days: Sequence[dt.date]) -> str:
    """``2018-08-15`` for one day, ``2018-08-15..2018-08-21 (7 days)`` for a run of them."""
    if len(days) == 1:
        return days[0].isoformat()
    return f"{days[0]}..{days[-1]} ({len(days)} days)"


def immature_labels_message(
    what: str,
    first_day: dt.date,
    last_day: dt.date,
    newest_report: dt.date | None,
    missing: Sequence[dt.date],
) -> str:
    """What a refusal or a skip says: which labels, why they are not final, and the report days missing."""
    newest = f"the newest is {newest_report}" if newest_report else "the lake has none"
    return (
        f"{what}: the labels of {first_day}..{last_day} are not mature: fraud reports arrive up to "
        f"{LABEL_DELAY_DAYS} days after a transaction, so they need the fraud-report partitions through "
        f"{last_day + dt.timedelta(days=LABEL_DELAY_DAYS)} and {newest}; missing report days: "
        f"{format_days(missing)}. Ingest them, or judge earlier days."
    )


def require_mature_labels(lake: str, first_day: dt.date, last_day: dt.date, what: str) -> dt.date:
    """The newest report day, once the lake holds every report that labels ``first_day..last_day``;
    ``ImmatureLabels`` before then."""
    newest = newest_report_day(lake)
    missing = missing_report_days(first_day, last_day, newest)
    if missing or newest is None:
        raise ImmatureLabels(immature_labels_message(what, first_day, last_day, newest, missing))
    return newest


def first_model_day(first_day: dt.date) -> dt.date:
    """The first day on which the trainer's matured window fits in a lake that starts on ``first_day``."""
    from jobs.training.trainer import matured_window

    window = matured_window(first_day + dt.timedelta(days=366), earliest_day=first_day)
    return first_day + (window.label_cutoff.date() - window.train_end)


def warm_up_end(first_day: dt.date) -> dt.date:
    """The first day whose features have their whole history and by which a first model can exist."""
    return max(first_day + dt.timedelta(days=HISTORY_DAYS), first_model_day(first_day))
