"""Feature tiles: what a feature build may read instead of raw rows, and whether each tile can be trusted.

A card window ``(t - w, t]`` of a transaction at ``t`` on day ``D`` holds every day strictly between ``D - w``
and ``D`` whole, whatever ``t`` is on ``D``; only ``D - w`` and ``D`` are cut. A terminal window
``[t - delay - w, t - delay)`` likewise cuts only ``D - delay - w`` and ``D - delay``. A build therefore reads
its target days and those edge days raw, and every other day of its history as tiles: per card and day the
transactions and their amount in whole micro-units, per terminal and day the transactions. Integers add up
exactly, so a feature is the same bit for bit whichever days came from tiles (the point-in-time rule itself
is in docs/architecture.md).

A fraud report names only a transaction id, and the terminal features need that transaction's terminal and
time. The report tile of day ``r`` holds that day's reports resolved against the raw transactions of
``r - HISTORY_DAYS .. r`` (the landing contract puts a report on or after its transaction's day, and an older
transaction is outside every window), reading only the files whose footer statistics can hold one of the
reported ids.

Never silently wrong: every tile records its format version and the fingerprint (size and ETag, or size and
modification time) of each raw partition it was derived from. A tile that is missing, unreadable, of another
format or built from files that have changed since (a re-delivered day) is not used: its day is read raw and
its tiles are written again, and a report tile is rebuilt. Tiles are day partitions written with
``write_parquet_atomic`` like every lake partition.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.features.definitions import HISTORY_DAYS, TERMINAL_DELAY_DAYS, WINDOWS_DAYS
from jobs.platform.layout import (
    CUSTOMER_TILES,
    RAW_FRAUD_REPORTS,
    RAW_TRANSACTIONS,
    REPORT_TILES,
    TERMINAL_TILES,
    partition_uri,
)
from jobs.platform.storage import filesystem, write_parquet_atomic

AMOUNT_UNITS = 1_000_000
"""Amounts are summed as integers of 1e-6: exact for the contract's cents (and up to six decimals)."""

CUSTOMER_TILE_SCHEMA = pa.schema(
    [("day", pa.date32()), ("customer_id", pa.int64()), ("n", pa.int64()), ("units", pa.int64())]
)
TERMINAL_TILE_SCHEMA = pa.schema([("day", pa.date32()), ("terminal_id", pa.int64()), ("n", pa.int64())])
REPORT_TILE_SCHEMA = pa.schema(
    [
        ("day", pa.date32()),
        ("transaction_id", pa.int64()),
        ("terminal_id", pa.int64()),
        ("tx_us", pa.int64()),
        ("reported_us", pa.int64()),
    ]
)
"""Report tiles: ``day`` is the report's day, ``tx_us`` and ``reported_us`` are microseconds since the epoch,
and each transaction appears once a day, with its first report of that day."""


def _tile_version() -> str:
    definition = {
        "amount_units": AMOUNT_UNITS,
        "history_days": HISTORY_DAYS,
        "schemas": [str(s) for s in (CUSTOMER_TILE_SCHEMA, TERMINAL_TILE_SCHEMA, REPORT_TILE_SCHEMA)],
    }
    return "tiles-" + hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:12]


TILE_VERSION = _tile_version()
"""A tile written under another definition of its contents is never read."""

HEADER_KEY = b"txguard.tile"

EDGE_OFFSETS: tuple[int, ...] = tuple(
    sorted({*WINDOWS_DAYS, TERMINAL_DELAY_DAYS, *(TERMINAL_DELAY_DAYS + w for w in WINDOWS_DAYS)})
)
"""How many days before a target day each window edge falls: those days are read raw."""

_CUSTOMER_SPAN = (max(WINDOWS_DAYS) - 1, 1)
_TERMINAL_SPAN = (TERMINAL_DELAY_DAYS + max(WINDOWS_DAYS) - 1, TERMINAL_DELAY_DAYS + 1)
"""Days before a target day that some window holds whole: (first, last) offsets, for cards and terminals."""

_IO_THREADS = 16
"""Stats, footers and tile writes are small: in parallel, since on S3 each one is a round trip."""

T = TypeVar("T")
R = TypeVar("R")


def _in_parallel(function: Callable[[T], R], items: Sequence[T]) -> list[R]:
    if len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(_IO_THREADS, len(items))) as pool:
        return list(pool.map(function, items))


def days_between(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


@dataclass(frozen=True)
class RawPartition:
    """One raw lake file: where it is, its size and a fingerprint that changes when it is replaced."""

    uri: str
    size: int
    fingerprint: str


def fingerprint(info: dict[str, Any]) -> str:
    """Size and ETag on S3, size and modification time on a disk: both change when a file is replaced (a
    copy that keeps modification times, as ``cp -p`` does, keeps its tiles)."""
    etag = info.get("ETag") or info.get("etag")
    stamp = str(etag).strip('"') if etag else repr(info.get("mtime"))
    return f"{info['size']}:{stamp}"


def raw_partitions(lake: str, dataset: str, days: Sequence[dt.date]) -> dict[dt.date, RawPartition]:
    """The partition files of ``days`` that exist, by day."""

    def stat(day: dt.date) -> RawPartition | None:
        uri = partition_uri(lake, dataset, day)
        fs, path = filesystem(uri)
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return None
        return RawPartition(uri, int(info["size"]), fingerprint(info))

    return {day: found for day, found in zip(days, _in_parallel(stat, days), strict=True) if found}


def _header(uri: str) -> tuple[dict[str, Any] | None, int]:
    """A tile's recorded sources and its size; None for a tile that is missing or cannot be read."""
    fs, path = filesystem(uri)
    try:
        size = int(fs.info(path)["size"])
        with fs.open(path, "rb") as handle:
            metadata = pq.ParquetFile(handle).schema_arrow.metadata or {}
        return json.loads(metadata[HEADER_KEY]), size
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None, 0


def _daily_sources(day: dt.date, partition: RawPartition) -> dict[str, Any]:
    return {"version": TILE_VERSION, "sources": {RAW_TRANSACTIONS: {day.isoformat(): partition.fingerprint}}}


def _report_sources(
    day: dt.date, lookup_from: dt.date, reports: RawPartition, transactions: dict[dt.date, RawPartition]
) -> dict[str, Any]:
    looked_up = {
        d.isoformat(): p.fingerprint if (p := transactions.get(d)) else None
        for d in days_between(lookup_from, day)
    }
    return {
        "version": TILE_VERSION,
        "resolved_from": lookup_from.isoformat(),
        "sources": {RAW_FRAUD_REPORTS: {day.isoformat(): reports.fingerprint}, RAW_TRANSACTIONS: looked_up},
    }


def _report_tile_covers(
    header: dict[str, Any] | None,
    day: dt.date,
    lookup_from: dt.date,
    reports: RawPartition,
    transactions: dict[dt.date, RawPartition],
) -> bool:
    """The tile resolved this reports file against the transactions of ``lookup_from..day``, all unchanged."""
    if not header or header.get("version") != TILE_VERSION:
        return False
    sources = header.get("sources", {})
    if sources.get(RAW_FRAUD_REPORTS) != {day.isoformat(): reports.fingerprint}:
        return False
    if header.get("resolved_from", "9999-12-31") > lookup_from.isoformat():
        return False
    looked_up = sources.get(RAW_TRANSACTIONS, {})
    return all(
        looked_up.get(d.isoformat(), "absent") == (p.fingerprint if (p := transactions.get(d)) else None)
        for d in days_between(lookup_from, day)
    )


def _runs(days: Iterable[dt.date]) -> dict[dt.date, dt.date]:
    """Each day's first day of its run of consecutive days."""
    first: dict[dt.date, dt.date] = {}
    for day in sorted(days):
        first[day] = first.get(day - dt.timedelta(days=1), day)
    return first


@dataclass(frozen=True)
class TilePlan:
    """What a build of ``start..end`` reads raw, reads as tiles, and must (re)build first."""

    lake: str
    start: dt.date
    end: dt.date
    transactions: dict[dt.date, RawPartition]
    fraud_reports: dict[dt.date, RawPartition]
    raw_days: tuple[dt.date, ...]
    customer_days: tuple[dt.date, ...]
    terminal_days: tuple[dt.date, ...]
    report_days: tuple[dt.date, ...]
    reports_to_build: tuple[dt.date, ...]
    daily_tiles_to_write: tuple[dt.date, ...]
    tile_bytes: int
    stale: tuple[str, ...] = ()

    def lookup_from(self, day: dt.date) -> dt.date:
        """The first day whose transactions a report of ``day`` can name and this build can count."""
        return max(day, self.start) - dt.timedelta(days=HISTORY_DAYS)

    def customer_blocks(self) -> dict[dt.date, dt.date]:
        """Tile days by the first day of their run: a run between two raw days is inside or outside each card
        window as a whole, so its tiles stand as one row per card at the run's first midnight."""
        return _runs(self.customer_days)

    def terminal_blocks(self) -> dict[dt.date, dt.date]:
        """The same for the terminal windows."""
        return _runs(self.terminal_days)

    def uris(self, dataset: str, days: Iterable[dt.date]) -> list[str]:
        return _uris(self.lake, dataset, days)


def plan_build(lake: str, start: dt.date, end: dt.date) -> TilePlan:
    """Which days a build of ``start..end`` reads raw and which as tiles, from the lake as it is now."""
    history = days_between(start - dt.timedelta(days=HISTORY_DAYS), end)
    transactions = raw_partitions(lake, RAW_TRANSACTIONS, history)
    fraud_reports = raw_partitions(lake, RAW_FRAUD_REPORTS, history)
    targets = days_between(start, end)
    raw = {d for day in targets for d in (day, *(day - dt.timedelta(days=o) for o in EDGE_OFFSETS))}
    raw &= transactions.keys()

    def whole(offsets: tuple[int, int]) -> list[dt.date]:
        first, last = (dt.timedelta(days=o) for o in offsets)
        return [d for d in days_between(start - first, end - last) if d in transactions and d not in raw]

    wanted = {CUSTOMER_TILES: whole(_CUSTOMER_SPAN), TERMINAL_TILES: whole(_TERMINAL_SPAN)}
    checked = sorted(raw.union(*wanted.values()))
    headers = {
        dataset: dict(zip(checked, _in_parallel(_header, _uris(lake, dataset, checked)), strict=True))
        for dataset in wanted
    }
    stale: list[str] = []
    invalid: set[dt.date] = set()
    for dataset, found in headers.items():
        for day, (header, _) in found.items():
            if header != _daily_sources(day, transactions[day]):
                invalid.add(day)
                if header is not None:
                    stale.append(f"{dataset}/{day.isoformat()}")
    fallback = invalid & set().union(*wanted.values())
    raw |= fallback
    # Besides the tiles this build missed, keep those a later day will read: a long backfill need not leave a
    # tile for every day it read (a re-run of an older day reads such a day raw and writes its tile then).
    later_from = end + dt.timedelta(days=1 - max(_CUSTOMER_SPAN[0], _TERMINAL_SPAN[0]))
    to_write = fallback | {d for d in raw & invalid if d >= later_from}
    tiled = {dataset: tuple(d for d in days if d not in raw) for dataset, days in wanted.items()}

    report_days = tuple(sorted(fraud_reports))
    report_headers = _in_parallel(_header, _uris(lake, REPORT_TILES, report_days))
    to_build = []
    for day, (header, _) in zip(report_days, report_headers, strict=True):
        lookup_from = max(day, start) - dt.timedelta(days=HISTORY_DAYS)
        if not _report_tile_covers(header, day, lookup_from, fraud_reports[day], transactions):
            to_build.append(day)
            if header is not None:
                stale.append(f"{REPORT_TILES}/{day.isoformat()}")
    tile_bytes = sum(size for _, size in report_headers) + sum(
        headers[dataset][d][1] for dataset, days in tiled.items() for d in days
    )
    return TilePlan(
        lake=lake,
        start=start,
        end=end,
        transactions=transactions,
        fraud_reports=fraud_reports,
        raw_days=tuple(sorted(raw)),
        customer_days=tiled[CUSTOMER_TILES],
        terminal_days=tiled[TERMINAL_TILES],
        report_days=report_days,
        reports_to_build=tuple(to_build),
        daily_tiles_to_write=tuple(sorted(to_write)),
        tile_bytes=tile_bytes,
        stale=tuple(sorted(stale)),
    )


def _uris(lake: str, dataset: str, days: Iterable[dt.date]) -> list[str]:
    return [partition_uri(lake, dataset, day) for day in days]


def _footer(uri: str) -> pq.FileMetaData:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as handle:
        return pq.ParquetFile(handle).metadata


def _may_hold(metadata: pq.FileMetaData, ids: np.ndarray) -> bool:
    """Whether any of the sorted ``ids`` can be in the file, from the transaction_id statistics of each row
    group (a row group without statistics may hold anything)."""
    column = metadata.schema.to_arrow_schema().get_field_index("transaction_id")
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(column).statistics
        if stats is None or not stats.has_min_max:
            return True
        if np.searchsorted(ids, stats.max, side="right") > np.searchsorted(ids, stats.min, side="left"):
            return True
    return False


@dataclass(frozen=True)
class ReportLookup:
    """The raw transaction partitions that the report tiles to build resolve their ids against."""

    days: tuple[dt.date, ...]
    uris: tuple[str, ...]
    report_rows: int


def report_lookup(plan: TilePlan) -> ReportLookup:
    """The transaction files that can hold a transaction reported on a day whose report tile is missing."""
    if not plan.reports_to_build:
        return ReportLookup((), (), 0)

    def reported_ids(day: dt.date) -> np.ndarray:
        fs, path = filesystem(plan.fraud_reports[day].uri)
        with fs.open(path, "rb") as handle:
            return pq.read_table(handle, columns=["transaction_id"])["transaction_id"].to_numpy()

    reported = np.concatenate([np.empty(0, np.int64), *_in_parallel(reported_ids, plan.reports_to_build)])
    ids = np.unique(reported)
    candidates = sorted(
        {
            d
            for day in plan.reports_to_build
            for d in days_between(plan.lookup_from(day), day)
            if d in plan.transactions
        }
    )
    footers = _in_parallel(_footer, [plan.transactions[d].uri for d in candidates]) if len(ids) else []
    days = tuple(d for d, footer in zip(candidates, footers, strict=False) if _may_hold(footer, ids))
    return ReportLookup(days, tuple(plan.transactions[d].uri for d in days), len(reported))


def partition_rows(uris: Sequence[str]) -> int:
    """Rows of the given Parquet files, from their footers."""
    return sum(footer.num_rows for footer in _in_parallel(_footer, list(uris)))


def _write_by_day(
    lake: str,
    dataset: str,
    schema: pa.Schema,
    table: pa.Table,
    days: Sequence[dt.date],
    header: Callable[[dt.date], dict[str, Any]],
) -> None:
    """One file per day of ``days`` (empty when the table has no rows for it), each with its header."""
    table = table.select(schema.names).cast(schema).sort_by("day")
    day_numbers = table["day"].cast(pa.int32()).to_numpy()
    epoch = dt.date(1970, 1, 1)

    def write(day: dt.date) -> None:
        number = (day - epoch).days
        first, last = np.searchsorted(day_numbers, [number, number + 1])
        part = table.slice(first, last - first).replace_schema_metadata(
            {HEADER_KEY: json.dumps(header(day), sort_keys=True)}
        )
        write_parquet_atomic(part, partition_uri(lake, dataset, day))

    _in_parallel(write, list(days))


def write_daily_tiles(plan: TilePlan, customers: pa.Table, terminals: pa.Table) -> None:
    """The card and terminal tiles of ``plan.daily_tiles_to_write``, from aggregates of their raw rows."""
    days = plan.daily_tiles_to_write

    def header(day: dt.date) -> dict[str, Any]:
        return _daily_sources(day, plan.transactions[day])

    _write_by_day(plan.lake, CUSTOMER_TILES, CUSTOMER_TILE_SCHEMA, customers, days, header)
    _write_by_day(plan.lake, TERMINAL_TILES, TERMINAL_TILE_SCHEMA, terminals, days, header)


def write_report_tiles(plan: TilePlan, resolved: pa.Table) -> None:
    """The report tiles of ``plan.reports_to_build``, from those days' reports resolved to transactions."""

    def header(day: dt.date) -> dict[str, Any]:
        return _report_sources(day, plan.lookup_from(day), plan.fraud_reports[day], plan.transactions)

    _write_by_day(plan.lake, REPORT_TILES, REPORT_TILE_SCHEMA, resolved, plan.reports_to_build, header)
