"""The Fraud Detection Handbook's transaction simulator, vectorised with numpy, writing the landing zone.

Model (Le Borgne et al., *Reproducible Machine Learning for Credit Card Fraud Detection*, "Transaction data
simulator"), with every draw made for all customers, days or transactions at once:

* customers at (x, y) ~ U(0, 100)², mean amount ~ U(5, 100), std = mean / 2, transactions a day ~ U(0, 4);
  terminals at (x, y) ~ U(0, 100)²; a customer uses the terminals closer than ``radius`` (5).
* each day a customer makes Poisson(mean a day) transactions; the second of the day is N(43 200, 20 000)
  truncated to an integer, and draws outside the day are discarded, as the handbook does; the amount is
  N(mean, std), a negative draw replaced by U(0, 2·mean), rounded to cents; the terminal is uniform among the
  customer's terminals (a customer with none makes no transactions).
* fraud scenarios, in the handbook's order (a later scenario's label wins):

  1. an amount above 220 is fraud;
  2. each day 2 terminals are compromised for 28 days, that day included: all their transactions are fraud;
  3. each day 3 cards are compromised for 14 days: int(n / 3) of the n transactions of such a window, drawn
     without replacement, have their amount multiplied by 5 and are fraud.

  The daily numbers keep the handbook's density (2 per 10,000 terminals, 3 per 5,000 customers) so that a
  small dataset keeps the handbook's fraud rate; at the handbook size they are exactly 2 and 3 (an expectation
  with a fraction is its floor plus a Bernoulli draw of the fraction).

At the handbook size (5,000 customers, 10,000 terminals, 183 days from 2018-04-01, radius 5) the totals,
fraud rate and scenario mix are meant to match the handbook's published run; counts by scenario are the
frauds each scenario adds in that order, as the handbook prints them. ``python -m benchmarks simulate``
prints them side by side (the README has the comparison over seeds).

Fraud reports (chargebacks): each fraud is reported at a uniform second from the start of the next day up to
7 days after the transaction: strictly after it, and always for a transaction of an earlier day, as the
landing contract requires. Reports that would arrive after the last simulated day have not arrived yet: they
are neither in ``SimulatedData.fraud_reports`` nor written; the truth stays in ``transactions.tx_fraud``.

Drift (``drift_from``): from that day on, every amount is 1.5× larger, a quarter of the transactions move to
the night (00:00-06:00), and a new fraud pattern appears, scenario 4 "card testing": each day 1 card per
1,000 customers makes a burst of 2 + Poisson(3) transactions of 0.50-5.00 between 00:00 and 06:00, minutes
apart, at one terminal anywhere on the grid (card not present). The shift in amounts and in the night share
is large enough for the PSI drift monitor to fire against the month before; every transaction and report
before that day is identical to the run without drift.

Reproducible: one ``numpy.random.SeedSequence`` per seed, with separate streams for profiles, transactions,
scenarios, drift and reports; the same seed gives byte-identical files.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.platform.storage import filesystem, join

Format = Literal["csv", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "parquet")

DAY_SECONDS = 86_400
TRANSACTION_COLUMNS = ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount")
FRAUD_REPORT_COLUMNS = ("transaction_id", "reported_at")

SCENARIO_AMOUNT = 1
SCENARIO_TERMINAL = 2
SCENARIO_CARD = 3
SCENARIO_CARD_TESTING = 4

AMOUNT_THRESHOLD = 220.0
TERMINAL_COMPROMISE_DAYS = 28
CARD_COMPROMISE_DAYS = 14
CARD_FRAUD_AMOUNT_FACTOR = 5
TERMINALS_PER_DAY_PER_10K_TERMINALS = 2.0
CARDS_PER_DAY_PER_5K_CUSTOMERS = 3.0
REPORT_DELAY_DAYS = 7

DRIFT_AMOUNT_FACTOR = 1.5
DRIFT_NIGHT_SHARE = 0.25
DRIFT_NIGHT_END_SECOND = 6 * 3600
DRIFT_TESTED_CARDS_PER_1K_CUSTOMERS = 1.0


@dataclass(frozen=True)
class HandbookReference:
    """The handbook's published run, for comparison."""

    transactions: int = 1_754_155
    frauds: int = 14_681
    frauds_by_scenario: dict[int, int] = field(default_factory=lambda: {1: 978, 2: 9_099, 3: 4_604})

    @property
    def fraud_rate(self) -> float:
        return self.frauds / self.transactions


HANDBOOK = HandbookReference()


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate; the defaults are the handbook's dataset."""

    customers: int = 5_000
    terminals: int = 10_000
    days: int = 183
    start: dt.date = dt.date(2018, 4, 1)
    seed: int = 0
    radius: float = 5.0
    drift_from: dt.date | None = None

    def __post_init__(self) -> None:
        for name in ("customers", "terminals", "days"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        if not self.radius > 0:
            raise ValueError(f"radius must be positive, got {self.radius}")
        if self.drift_from is not None and not self.start < self.drift_from <= self.end:
            raise ValueError(
                f"drift_from {self.drift_from} must fall after the first day and within the simulated days "
                f"({self.start} .. {self.end})"
            )

    @property
    def end(self) -> dt.date:
        """The last simulated day."""
        return self.start + dt.timedelta(days=self.days - 1)


@dataclass(frozen=True)
class SimulatedData:
    """Simulated transactions (landing columns + truth), the fraud reports that arrived, and the profiles.

    ``transactions`` is ordered by time with ``transaction_id`` 0, 1, ...; ``tx_fraud`` and
    ``tx_fraud_scenario`` are the truth, never written to the landing zone. ``fraud_reports`` is ordered by
    ``reported_at``.
    """

    config: SimulationConfig
    transactions: pa.Table
    fraud_reports: pa.Table
    customers: pa.Table
    terminals: pa.Table
    frauds_by_scenario: dict[int, int]
    seconds: float

    @property
    def frauds(self) -> int:
        return sum(self.frauds_by_scenario.values())

    @property
    def fraud_rate(self) -> float:
        return self.frauds / max(self.transactions.num_rows, 1)


@dataclass(frozen=True)
class LandingSummary:
    """What ``write_landing`` wrote."""

    landing: str
    fmt: Format
    first_day: dt.date
    last_day: dt.date
    transactions: int
    frauds: int
    fraud_rate: float
    frauds_by_scenario: dict[int, int]
    fraud_reports: int
    reports_pending: int
    files_written: int
    simulate_seconds: float
    write_seconds: float

    def line(self) -> str:
        mix = ", ".join(f"s{k} {v:,}" for k, v in sorted(self.frauds_by_scenario.items()))
        return (
            f"simulated {self.transactions:,} transactions {self.first_day}..{self.last_day}, "
            f"{self.frauds:,} frauds ({self.fraud_rate:.2%}: {mix}); {self.fraud_reports:,} reports arrived, "
            f"{self.reports_pending:,} pending; {self.files_written} {self.fmt} files in {self.landing} "
            f"({self.simulate_seconds:.1f} s simulate + {self.write_seconds:.1f} s write)"
        )


def simulate(config: SimulationConfig) -> SimulatedData:
    """Simulate the handbook's transactions and fraud for ``config``; no I/O."""
    started = time.perf_counter()
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(5)]
    profiles_rng, tx_rng, fraud_rng, drift_rng, report_rng = streams

    customers = _customer_profiles(profiles_rng, config.customers)
    terminal_xy = profiles_rng.uniform(0, 100, size=(config.terminals, 2))
    offsets, usable = _terminals_within(customers["xy"], terminal_xy, config.radius)

    tx = _transactions(tx_rng, config, customers, offsets, usable)
    scenario, added = _add_frauds(fraud_rng, config, tx)
    tx["scenario"] = scenario
    if config.drift_from is not None:
        tx, added[SCENARIO_CARD_TESTING] = _drift(drift_rng, config, tx)

    order = np.argsort(tx["day"] * DAY_SECONDS + tx["second"], kind="stable")
    tx = {name: values[order] for name, values in tx.items()}
    start_epoch = _epoch_seconds(config.start)
    tx_seconds = tx["day"] * DAY_SECONDS + tx["second"]
    transactions = pa.table(
        {
            "transaction_id": pa.array(np.arange(len(order), dtype=np.int64)),
            "tx_datetime": _timestamps(start_epoch + tx_seconds),
            "customer_id": pa.array(tx["customer"].astype(np.int64)),
            "terminal_id": pa.array(tx["terminal"].astype(np.int64)),
            "tx_amount": pa.array(tx["amount"]),
            "tx_fraud": pa.array(tx["scenario"] > 0),
            "tx_fraud_scenario": pa.array(tx["scenario"].astype(np.int8)),
        }
    )
    reports = _fraud_reports(report_rng, config, tx_seconds, tx["scenario"] > 0, start_epoch)
    return SimulatedData(
        config=config,
        transactions=transactions,
        fraud_reports=reports,
        customers=pa.table(
            {
                "customer_id": pa.array(np.arange(config.customers, dtype=np.int64)),
                "x": customers["xy"][:, 0],
                "y": customers["xy"][:, 1],
                "mean_amount": customers["mean_amount"],
                "std_amount": customers["std_amount"],
                "mean_nb_tx_per_day": customers["mean_nb_tx_per_day"],
                "nb_terminals": np.diff(offsets),
            }
        ),
        terminals=pa.table(
            {
                "terminal_id": pa.array(np.arange(config.terminals, dtype=np.int64)),
                "x": terminal_xy[:, 0],
                "y": terminal_xy[:, 1],
            }
        ),
        frauds_by_scenario=added,
        seconds=time.perf_counter() - started,
    )


def write_landing(
    data: SimulatedData, landing: str, fmt: Format = "parquet", *, progress: bool = False, workers: int = 4
) -> LandingSummary:
    """Write one transactions file and one fraud-reports file per simulated day under ``landing``.

    Days without rows still get a file (header only), so that every daily partition finds its delivery. Each
    file is written whole (staged and renamed locally, one PUT on S3), so a landing sensor never sees half a
    file. Files of other days are left alone; a file of the other format for a day to write is refused, as
    two deliveries for one day would be ambiguous.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    started = time.perf_counter()
    config = data.config
    days = [config.start + dt.timedelta(days=i) for i in range(config.days)]
    fs, root = filesystem(landing)
    _refuse_mixed_formats(fs, root, days, fmt)

    start_epoch = _epoch_seconds(config.start)
    sources = {
        "transactions": (data.transactions.select(list(TRANSACTION_COLUMNS)), "tx_datetime"),
        "fraud_reports": (data.fraud_reports.select(list(FRAUD_REPORT_COLUMNS)), "reported_at"),
    }
    deliveries: list[tuple[str, Callable[[], bytes]]] = []
    for source, (table, time_column) in sources.items():
        encoded = _csv_columns(table) if fmt == "csv" else table
        seconds = pc.cast(table[time_column], pa.int64()).to_numpy() // 1_000_000 - start_epoch
        bounds = np.searchsorted(seconds, np.arange(config.days + 1) * DAY_SECONDS, side="left")
        for i, day in enumerate(days):
            piece = encoded.slice(bounds[i], bounds[i + 1] - bounds[i])
            path = join(root, source, f"{day.isoformat()}.{fmt}")
            deliveries.append((path, _encoder(piece, fmt)))

    from tqdm import tqdm

    show = progress and sys.stderr.isatty()
    with (
        tqdm(total=len(deliveries), desc="writing landing files", unit="file", disable=not show) as bar,
        ThreadPoolExecutor(max_workers=workers) as pool,
    ):
        for _ in pool.map(lambda delivery: _put(fs, delivery[0], delivery[1]()), deliveries):
            bar.update(1)

    return LandingSummary(
        landing=landing,
        fmt=fmt,
        first_day=config.start,
        last_day=config.end,
        transactions=data.transactions.num_rows,
        frauds=data.frauds,
        fraud_rate=data.fraud_rate,
        frauds_by_scenario=dict(data.frauds_by_scenario),
        fraud_reports=data.fraud_reports.num_rows,
        reports_pending=data.frauds - data.fraud_reports.num_rows,
        files_written=len(deliveries),
        simulate_seconds=data.seconds,
        write_seconds=time.perf_counter() - started,
    )


def write_file_atomic(uri: str, payload: bytes) -> None:
    """Write ``payload`` as one whole file at ``uri`` (local: staged then renamed; S3: a single PUT)."""
    fs, path = filesystem(uri)
    _put(fs, path, payload)


def _put(fs: fsspec.AbstractFileSystem, path: str, payload: bytes) -> None:
    if _is_local(fs):
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        staging = os.path.join(parent, f".{uuid.uuid4().hex}.tmp")
        with open(staging, "wb") as handle:
            handle.write(payload)
        os.replace(staging, path)
    else:
        fs.pipe_file(path, payload)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol
    return "file" in (protocol if isinstance(protocol, tuple) else (protocol,))


def _refuse_mixed_formats(fs: fsspec.AbstractFileSystem, root: str, days: list[dt.date], fmt: Format) -> None:
    other = next(f for f in FORMATS if f != fmt)
    wanted = {f"{day.isoformat()}.{other}" for day in days}
    for source in ("transactions", "fraud_reports"):
        folder = join(root, source)
        if not fs.exists(folder):
            continue
        clashes = sorted(wanted.intersection(p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)))
        if clashes:
            raise FileExistsError(
                f"{folder} already holds {other} files for the days to write ({clashes[0]} and "
                f"{len(clashes) - 1} more): two files for one day would be ambiguous; remove them or write "
                f"{other}"
            )


def _encoder(piece: pa.Table, fmt: Format) -> Callable[[], bytes]:
    def encode() -> bytes:
        buffer = io.BytesIO()
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(piece, buffer)
        else:
            import pyarrow.csv as pcsv

            buffer.write((",".join(piece.column_names) + "\n").encode())
            pcsv.write_csv(piece, buffer, pcsv.WriteOptions(include_header=False, quoting_style="none"))
        return buffer.getvalue()

    return encode


def _csv_columns(table: pa.Table) -> pa.Table:
    """Timestamps as ``2018-04-01T00:01:22Z`` and amounts with exactly two decimals, as the contract shows."""
    columns = {}
    for name in table.column_names:
        column = table[name]
        if pa.types.is_timestamp(column.type):
            column = pc.strftime(pc.cast(column, pa.timestamp("s", tz="UTC")), format="%Y-%m-%dT%H:%M:%SZ")
        elif pa.types.is_floating(column.type):
            column = pc.cast(column, pa.decimal128(18, 2))
        columns[name] = column
    return pa.table(columns)


def _epoch_seconds(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


def _timestamps(epoch_seconds: np.ndarray) -> pa.Array:
    return pa.array(epoch_seconds.astype(np.int64) * 1_000_000, pa.timestamp("us", tz="UTC"))


def _customer_profiles(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    xy = rng.uniform(0, 100, size=(n, 2))
    mean_amount = rng.uniform(5, 100, size=n)
    return {
        "xy": xy,
        "mean_amount": mean_amount,
        "std_amount": mean_amount / 2,
        "mean_nb_tx_per_day": rng.uniform(0, 4, size=n),
    }


def _terminals_within(
    customer_xy: np.ndarray, terminal_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Each customer's terminals closer than ``radius`` as CSR (offsets, terminal ids ascending).

    Terminals are bucketed in radius-sized cells and only the 9 cells around a customer are compared, so the
    cost follows the number of nearby pairs rather than customers × terminals.
    """
    n_cells = int(100 // radius) + 1
    terminal_cell = (terminal_xy // radius).astype(np.int64)
    terminal_key = terminal_cell[:, 0] * n_cells + terminal_cell[:, 1]
    by_cell = np.argsort(terminal_key, kind="stable")
    sorted_keys = terminal_key[by_cell]
    customer_cell = (customer_xy // radius).astype(np.int64)
    customer_ids = np.arange(len(customer_xy))

    pair_customers, pair_terminals = [], []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            cx, cy = customer_cell[:, 0] + dx, customer_cell[:, 1] + dy
            inside = (cx >= 0) & (cy >= 0) & (cx < n_cells) & (cy < n_cells)
            key = cx * n_cells + cy
            lo = np.searchsorted(sorted_keys, key, side="left")
            counts = np.where(inside, np.searchsorted(sorted_keys, key, side="right") - lo, 0)
            pair_customers.append(np.repeat(customer_ids, counts))
            pair_terminals.append(by_cell[np.repeat(lo, counts) + _ranks_within(counts)])
    customers = np.concatenate(pair_customers)
    terminals = np.concatenate(pair_terminals)
    distance = np.hypot(*(customer_xy[customers] - terminal_xy[terminals]).T)
    customers, terminals = customers[distance < radius], terminals[distance < radius]
    order = np.lexsort((terminals, customers))
    offsets = np.zeros(len(customer_xy) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(customers, minlength=len(customer_xy)))
    return offsets, terminals[order]


def _ranks_within(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., c-1 for each group of size c, concatenated."""
    starts = np.cumsum(counts) - counts
    return np.arange(counts.sum()) - np.repeat(starts, counts)


def _transactions(
    rng: np.random.Generator,
    config: SimulationConfig,
    customers: dict[str, np.ndarray],
    offsets: np.ndarray,
    usable: np.ndarray,
) -> dict[str, np.ndarray]:
    daily = rng.poisson(customers["mean_nb_tx_per_day"], size=(config.days, config.customers))
    cell = np.repeat(np.arange(config.days * config.customers), daily.ravel())
    day, customer = np.divmod(cell, config.customers)
    n = len(cell)
    second = np.trunc(rng.normal(DAY_SECONDS / 2, 20_000, size=n)).astype(np.int64)
    mean, std = customers["mean_amount"][customer], customers["std_amount"][customer]
    amount = rng.normal(mean, std)
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean[negative])
    pick = rng.random(n)

    available = np.diff(offsets)[customer]
    keep = (second > 0) & (second < DAY_SECONDS) & (available > 0)
    slot = offsets[customer[keep]] + (pick[keep] * available[keep]).astype(np.int64)
    return {
        "day": day[keep],
        "second": second[keep],
        "customer": customer[keep],
        "terminal": usable[slot],
        "amount": np.round(amount[keep], 2),
    }


def _daily_counts(rng: np.random.Generator, expected: float, days: int) -> np.ndarray:
    whole = int(expected)
    return whole + (rng.random(days) < expected - whole).astype(np.int64)


def _add_frauds(
    rng: np.random.Generator, config: SimulationConfig, tx: dict[str, np.ndarray]
) -> tuple[np.ndarray, dict[int, int]]:
    """The handbook's scenarios: each transaction's scenario (0 = genuine), and the frauds each adds."""
    days = config.days
    amount_fraud = tx["amount"] > AMOUNT_THRESHOLD

    per_day = _daily_counts(rng, TERMINALS_PER_DAY_PER_10K_TERMINALS * config.terminals / 10_000, days)
    picked = [rng.choice(config.terminals, size=min(k, config.terminals), replace=False) for k in per_day]
    event_day = np.repeat(np.arange(days), [len(p) for p in picked])
    event_terminal = np.concatenate(picked).astype(np.int64)
    span = np.minimum(event_day + TERMINAL_COMPROMISE_DAYS, days) - event_day
    compromised_keys = np.repeat(event_terminal * days + event_day, span) + _ranks_within(span)
    terminal_fraud = np.isin(tx["terminal"] * days + tx["day"], compromised_keys)

    per_day = _daily_counts(rng, CARDS_PER_DAY_PER_5K_CUSTOMERS * config.customers / 5_000, days)
    picked = [rng.choice(config.customers, size=min(k, config.customers), replace=False) for k in per_day]
    event_day = np.repeat(np.arange(days), [len(p) for p in picked])
    event_customer = np.concatenate(picked).astype(np.int64)
    times_hit = _compromised_card_hits(rng, days, tx, event_day, event_customer)
    tx["amount"] = np.round(tx["amount"] * CARD_FRAUD_AMOUNT_FACTOR**times_hit, 2)
    card_fraud = times_hit > 0

    scenario = np.zeros(len(amount_fraud), dtype=np.int8)
    scenario[amount_fraud] = SCENARIO_AMOUNT
    scenario[terminal_fraud] = SCENARIO_TERMINAL
    scenario[card_fraud] = SCENARIO_CARD
    added = {
        SCENARIO_AMOUNT: int(amount_fraud.sum()),
        SCENARIO_TERMINAL: int((terminal_fraud & ~amount_fraud).sum()),
        SCENARIO_CARD: int((card_fraud & ~terminal_fraud & ~amount_fraud).sum()),
    }
    return scenario, added


def _compromised_card_hits(
    rng: np.random.Generator,
    days: int,
    tx: dict[str, np.ndarray],
    event_day: np.ndarray,
    event_customer: np.ndarray,
) -> np.ndarray:
    """How many compromise windows picked each transaction (int(n / 3) of each window's n, no replacement)."""
    key = tx["customer"] * days + tx["day"]
    by_key = np.argsort(key, kind="stable")
    sorted_key = key[by_key]
    lo = np.searchsorted(sorted_key, event_customer * days + event_day, side="left")
    window_end = np.minimum(event_day + CARD_COMPROMISE_DAYS, days)
    hi = np.searchsorted(sorted_key, event_customer * days + window_end, side="left")
    sizes = hi - lo
    event = np.repeat(np.arange(len(sizes)), sizes)
    members = by_key[np.repeat(lo, sizes) + _ranks_within(sizes)]
    shuffled = np.lexsort((rng.random(len(members)), event))
    rank = np.arange(len(members)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    chosen = members[shuffled][rank < (sizes // 3)[event]]
    return np.bincount(chosen, minlength=len(key))


def _drift(
    rng: np.random.Generator, config: SimulationConfig, tx: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], int]:
    """Shift spending from ``drift_from`` on and add the card-testing fraud pattern (module docstring)."""
    assert config.drift_from is not None
    first = (config.drift_from - config.start).days
    after = tx["day"] >= first
    tx["amount"] = np.where(after, np.round(tx["amount"] * DRIFT_AMOUNT_FACTOR, 2), tx["amount"])
    to_night = after & (rng.random(len(after)) < DRIFT_NIGHT_SHARE)
    tx["second"] = np.where(to_night, rng.integers(1, DRIFT_NIGHT_END_SECOND, size=len(after)), tx["second"])

    expected = DRIFT_TESTED_CARDS_PER_1K_CUSTOMERS * config.customers / 1_000
    per_day = _daily_counts(rng, expected, config.days - first)
    event_day = np.repeat(np.arange(first, config.days), per_day)
    n_events = len(event_day)
    burst = 2 + rng.poisson(3, size=n_events)
    event = np.repeat(np.arange(n_events), burst)
    first_of_burst = np.cumsum(burst) - burst
    gaps = rng.integers(30, 600, size=len(event))
    gaps[first_of_burst] = 0
    elapsed = np.cumsum(gaps)
    offset_in_burst = elapsed - np.repeat(elapsed[first_of_burst], burst)
    start = rng.integers(0, 4 * 3600, size=n_events)
    testing = {
        "day": event_day[event],
        "second": np.minimum(start[event] + offset_in_burst, DRIFT_NIGHT_END_SECOND - 1),
        "customer": rng.integers(0, config.customers, size=n_events)[event],
        "terminal": rng.integers(0, config.terminals, size=n_events)[event],
        "amount": np.round(rng.uniform(0.5, 5.0, size=len(event)), 2),
        "scenario": np.full(len(event), SCENARIO_CARD_TESTING, dtype=np.int8),
    }
    merged = {name: np.concatenate([tx[name], testing[name]]) for name in tx}
    return merged, len(event)


def _fraud_reports(
    rng: np.random.Generator,
    config: SimulationConfig,
    tx_seconds: np.ndarray,
    fraud: np.ndarray,
    start_epoch: int,
) -> pa.Table:
    ids = np.flatnonzero(fraud)
    seconds = tx_seconds[ids]
    earliest = (seconds // DAY_SECONDS + 1) * DAY_SECONDS
    latest = seconds + REPORT_DELAY_DAYS * DAY_SECONDS
    reported = rng.integers(earliest, latest + 1)
    arrived = reported < config.days * DAY_SECONDS
    ids, reported = ids[arrived], reported[arrived]
    order = np.lexsort((ids, reported))
    return pa.table(
        {
            "transaction_id": pa.array(ids[order].astype(np.int64)),
            "reported_at": _timestamps(start_epoch + reported[order]),
        }
    )
