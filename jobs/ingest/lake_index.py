"""The lake's cross-file index: what earlier partitions (and earlier days of this run) already accepted.

The cross-file rules need it: ``duplicate_id_across_files`` (an id accepted in another partition, or in
another file of the same day), and for fraud reports ``unknown_transaction`` and
``report_before_transaction``, judged against the transactions in the lake on or before the report's day,
whether or not that day's own transactions file arrived.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from jobs.ingest.contract import FRAUD_REPORTS, TRANSACTIONS, Source
from jobs.ingest.validation import FileOutcome, one_per_row
from jobs.platform.layout import RAW_FRAUD_REPORTS, RAW_TRANSACTIONS, dataset_uri
from jobs.platform.storage import filesystem

_ISO = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class _Partition:
    """One day's rows with their ids sorted once, so that a lookup is a binary search, not a scan."""

    rows: pa.Table
    ids: np.ndarray
    order: np.ndarray
    """Row positions of ``ids``; the sort is stable, so an id held twice points at its first row first."""

    @classmethod
    def of(cls, rows: pa.Table) -> _Partition:
        values = rows.column("transaction_id").to_numpy()
        order = np.argsort(values, kind="stable")
        return cls(rows.replace_schema_metadata(None), values[order], order)

    def meets(self, wanted: np.ndarray) -> bool:
        """Whether the id range held here overlaps that of ``wanted`` (sorted)."""
        return bool(len(self.ids)) and _overlaps((self.ids[0], self.ids[-1]), wanted)

    def find(self, wanted: np.ndarray) -> np.ndarray:
        """Where the ``wanted`` ids (sorted, unique) are held here: the first row of each, in row order."""
        at = np.searchsorted(self.ids, wanted)
        inside = at < len(self.ids)
        at = at[inside]
        return np.sort(self.order[at[self.ids[at] == wanted[inside]]])


class LakeIndex:
    """A few columns of what one lake dataset already accepted, held per partition ``date``.

    Opening it reads each partition's id range from its files' Parquet statistics (their footers), not its
    rows; a lookup then reads, once, only the partitions whose range meets the ids asked for, and searches
    those. Ids grow with time, so a new day's lookup reads the few recent days it can meet, whatever the
    history. The run keeps it current as it writes each day.
    """

    def __init__(self, lake: str, dataset: str, columns: Sequence[str]) -> None:
        self._uri = dataset_uri(lake, dataset)
        self._columns = list(columns)
        self._ranges: dict[str, tuple[int, int] | None] | None = None
        """Each partition's id range from its statistics; None where a file has none (read it to know)."""
        self._files: dict[str, list[ds.ParquetFileFragment]] = {}
        self._read: dict[str, _Partition] = {}

    def _days(self) -> dict[str, tuple[int, int] | None]:
        if self._ranges is None:
            self._ranges = self._scan()
        return self._ranges

    def _scan(self) -> dict[str, tuple[int, int] | None]:
        """Each ``date=D`` partition's files and the id range their footers give."""
        fs, path = filesystem(self._uri)
        if not fs.exists(path):
            return {}
        dataset = ds.dataset(
            path,
            filesystem=fs,
            format="parquet",
            partitioning=ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive"),
        )
        ranges: dict[str, tuple[int, int] | None] = {}
        for fragment in dataset.get_fragments():
            day = ds.get_partition_keys(fragment.partition_expression).get("date")
            if day is None:
                continue
            self._files.setdefault(day, []).append(fragment)
            ranges[day] = _widened(ranges.get(day, _NOTHING), _id_range(fragment))
        return ranges

    def _meeting(self, day: str, wanted: np.ndarray) -> _Partition | None:
        """The day's rows if its id range can hold one of ``wanted`` (sorted), read on first need."""
        if day not in self._read:
            held = self._days()[day]
            if held is not None and not _overlaps(held, wanted):
                return None
            tables = [fragment.to_table(columns=self._columns) for fragment in self._files[day]]
            self._read[day] = _Partition.of(pa.concat_tables(tables))
        partition = self._read[day]
        return partition if partition.meets(wanted) else None

    def lookup(
        self, ids: pd.Series, *, exclude_day: str | None = None, through_day: str | None = None
    ) -> pd.DataFrame:
        """Rows whose transaction_id is in ``ids``, optionally outside one day or up to a day (inclusive);
        an id held by several partitions is given once, with its earliest."""
        wanted = ids.to_numpy(np.int64)
        if not (wanted[1:] > wanted[:-1]).all():
            wanted = np.unique(wanted)
        tables, dates = [], []
        for day in sorted(self._days()):
            if day == exclude_day or (through_day is not None and day > through_day):
                continue
            partition = self._meeting(day, wanted)
            positions = partition.find(wanted) if partition is not None else []
            if len(positions):
                tables.append(partition.rows.take(positions))
                dates += [day] * len(positions)
        if not tables:
            return pd.DataFrame(columns=[*self._columns, "date"])
        found = pa.concat_tables(tables, promote_options="permissive").append_column("date", pa.array(dates))
        _, first = np.unique(found.column("transaction_id").to_numpy(), return_index=True)
        return found.take(np.sort(first)).to_pandas()

    def replace(self, day: str, accepted: pa.Table) -> None:
        """Hold ``day`` as just written (its accepted rows), in place of what the lake held for it."""
        self._days()[day] = None
        self._files.pop(day, None)
        self._read[day] = _Partition.of(accepted.select(self._columns))


def _overlaps(ids: tuple[int, int], wanted: np.ndarray) -> bool:
    """Whether ids from ``ids[0]`` to ``ids[1]`` can hold one of ``wanted`` (sorted)."""
    return bool(len(wanted) and ids[0] <= wanted[-1] and wanted[0] <= ids[1])


_NOTHING = (np.iinfo(np.int64).max, np.iinfo(np.int64).min)
"""The id range of no rows: widened by the first file's."""


def _widened(held: tuple[int, int] | None, found: tuple[int, int] | None) -> tuple[int, int] | None:
    """Both ranges in one; unknown if either is."""
    if held is None or found is None:
        return None
    return min(held[0], found[0]), max(held[1], found[1])


def _id_range(fragment: ds.ParquetFileFragment) -> tuple[int, int] | None:
    """The lowest and highest transaction_id of a file from its row groups' statistics; None without them."""
    fragment.ensure_complete_metadata()
    low, high = _NOTHING
    for group in fragment.row_groups:
        statistics = (group.statistics or {}).get("transaction_id")
        if not statistics or statistics.get("min") is None or statistics.get("max") is None:
            return None
        low, high = min(low, statistics["min"]), max(high, statistics["max"])
    return low, high


@dataclass
class LakeIndexes:
    """The lake lookups the cross-file rules need, shared by every day of a run."""

    transactions: LakeIndex
    fraud_reports: LakeIndex

    @classmethod
    def open(cls, lake: str) -> LakeIndexes:
        return cls(
            LakeIndex(lake, RAW_TRANSACTIONS, ["transaction_id", "tx_datetime"]),
            LakeIndex(lake, RAW_FRAUD_REPORTS, ["transaction_id"]),
        )

    def for_source(self, source: str) -> LakeIndex:
        return self.transactions if source == TRANSACTIONS else self.fraud_reports


def cross_file(
    outcome: FileOutcome, source: Source, day: dt.date, indexes: LakeIndexes, same_day: pd.DataFrame
) -> FileOutcome:
    """Quarantine what the lake contradicts: ids accepted elsewhere, reports of unknown or later tx."""
    key = day.isoformat()
    accepted = outcome.accepted
    flagged: list[pd.DataFrame] = []

    def quarantine(mask: pd.Series, rule: str, reasons: Callable[[pd.DataFrame], pd.Series]) -> None:
        nonlocal accepted
        if mask.any():
            hits = accepted[mask]
            reason = reasons(hits).to_numpy(dtype=object)
            flagged.append(
                pd.DataFrame({"row_number": hits.index, "rule": rule, "reason": reason, "raw_record": None})
            )
            accepted = accepted[~mask]

    elsewhere = indexes.for_source(source.name).lookup(accepted["transaction_id"], exclude_day=key)
    parts = []
    if not elsewhere.empty:
        parts.append("partition " + elsewhere.set_index("transaction_id")["date"].astype("string"))
    if not same_day.empty:
        parts.append(same_day.set_index("transaction_id")["source_file"].astype("string") + " (same day)")
    if parts:
        places = pd.concat(parts)
        place = accepted["transaction_id"].map(places[~places.index.duplicated()])
        quarantine(
            place.notna(),
            "duplicate_id_across_files",
            lambda hits: (
                "transaction_id "
                + hits["transaction_id"].astype(str)
                + " already accepted in "
                + place[hits.index]
            ),
        )
    if source.name == FRAUD_REPORTS:
        known = indexes.transactions.lookup(accepted["transaction_id"], through_day=key)
        tx_time = known.set_index("transaction_id")["tx_datetime"]
        quarantine(
            ~accepted["transaction_id"].isin(tx_time.index),
            "unknown_transaction",
            lambda hits: (
                "no accepted transaction " + hits["transaction_id"].astype(str) + f" on or before {key}"
            ),
        )
        when = pd.to_datetime(accepted["transaction_id"].map(tx_time), utc=True)
        quarantine(
            accepted["reported_at"] < when,
            "report_before_transaction",
            lambda hits: (
                "reported at "
                + hits["reported_at"].dt.strftime(_ISO)
                + ", before its transaction at "
                + when[hits.index].dt.strftime(_ISO)
            ),
        )
    if not flagged:
        return outcome
    quarantine_rows = one_per_row(pd.concat([outcome.quarantine, *flagged], ignore_index=True))
    return FileOutcome(
        outcome.uri, accepted, quarantine_rows, outcome.rows_in, outcome.extras_columns, outcome.raw_record
    )
