"""Independent references for the Spark feature job, for parity tests and the benchmark (never the product).

* ``duckdb_feature_query``: the features as one DuckDB SQL query, written straight from the definitions:
  RANGE windows for counts and means, and a range join of each transaction against the reported
  transactions of its terminal for the risk (no event timeline, unlike ``jobs.features.spark_job``).
* ``pandas_features``: the Fraud Detection Handbook's method (``groupby(...).apply`` with time-based
  ``rolling`` per customer and per terminal, "Baseline feature transformation"), adapted to the point-in-time
  rule: the handbook labels a transaction with its final fraud flag; here a transaction counts as fraud in
  the terminal windows of ``t`` only when reported by ``t``. A report within the delay is always known by
  then, so the rolling sums use "reported within the delay", and the rarer late reports are added by a merge.
  Pandas' rolling breaks ties at equal timestamps by row order; the customer windows take the last row of
  each tie so that every transaction at ``t`` counts, as the definition says.
* ``random_raw`` and ``write_raw_lake``: adversarial random data (timestamps on a coarse grid so that window
  edges and ties are hit exactly, late, duplicate and orphan reports) and a raw lake to run the job on.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from jobs.features.definitions import (
    FEATURE_SET_VERSION,
    HISTORY_DAYS,
    NIGHT_LAST_HOUR,
    TERMINAL_DELAY_DAYS,
    WINDOWS_DAYS,
    amount_ratio,
)
from jobs.features.spark_job import OUTPUT_COLUMNS
from jobs.platform.layout import RAW_FRAUD_REPORTS, RAW_TRANSACTIONS, partition_uri
from jobs.platform.storage import write_parquet_atomic

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

DAY_US = 86_400_000_000


def _utc(day: dt.date) -> str:
    return f"TIMESTAMPTZ '{day.isoformat()} 00:00:00+00'"


def duckdb_feature_query(transactions: str, fraud_reports: str, start: dt.date, end: dt.date) -> str:
    """One SQL query over two relations (table names or ``read_parquet([...])``) giving OUTPUT_COLUMNS."""
    history_from = _utc(start - dt.timedelta(days=HISTORY_DAYS))
    target_from, target_to = _utc(start), _utc(end + dt.timedelta(days=1))
    delay = TERMINAL_DELAY_DAYS * DAY_US
    widest = max(WINDOWS_DAYS)
    windows = ",\n        ".join(
        f"customer_{w} as (partition by customer_id order by us range between {w * DAY_US - 1} preceding "
        f"and current row),\n        terminal_{w} as (partition by terminal_id order by us range between "
        f"{delay + w * DAY_US} preceding and {delay + 1} preceding)"
        for w in WINDOWS_DAYS
    )
    windowed = ",\n        ".join(
        f"count(*) over customer_{w} as customer_id_nb_tx_{w}day_window,\n        "
        f"avg(tx_amount) over customer_{w} as customer_id_avg_amount_{w}day_window,\n        "
        f"count(*) over terminal_{w} as terminal_id_nb_tx_{w}day_window"
        for w in WINDOWS_DAYS
    )
    known = ",\n        ".join(
        f"count(*) filter (where r.us >= t.us - {delay + w * DAY_US} and r.us < t.us - {delay}) as frauds_{w}"
        for w in WINDOWS_DAYS
    )
    risks = ",\n    ".join(
        f"case when terminal_id_nb_tx_{w}day_window > 0 then coalesce(k.frauds_{w}, 0) / "
        f"terminal_id_nb_tx_{w}day_window else 0.0 end as terminal_id_risk_{w}day_window"
        for w in WINDOWS_DAYS
    )
    recent = ",\n        ".join(
        f"count(*) filter (where r.us >= t.us - {w * DAY_US}) as terminal_id_nb_reported_frauds_{w}day_window"
        for w in WINDOWS_DAYS
    )
    reported_counts = ",\n    ".join(
        f"coalesce(k.{name}, 0) as {name}"
        for name in (f"terminal_id_nb_reported_frauds_{w}day_window" for w in WINDOWS_DAYS)
    )
    ratios = ",\n    ".join(
        f"case when customer_id_avg_amount_{w}day_window > 0 then tx_amount / "
        f"customer_id_avg_amount_{w}day_window else 1.0 end as customer_id_amount_ratio_{w}day_window"
        for w in WINDOWS_DAYS
    )
    return f"""
with tx as (
    select transaction_id, tx_datetime, customer_id, terminal_id, tx_amount, epoch_us(tx_datetime) as us
    from {transactions}
    where tx_datetime >= {history_from} and tx_datetime < {target_to}
),
first_report as (
    select transaction_id, min(epoch_us(reported_at)) as reported_us
    from {fraud_reports}
    group by transaction_id
),
-- materialized: otherwise DuckDB may pair every report with every transaction on the time inequality
-- before it joins on the terminal (hundreds of millions of rows at handbook size)
reported as materialized (
    select tx.terminal_id, tx.us, r.reported_us from tx join first_report r using (transaction_id)
),
windowed as (
    select
        *,
        {windowed}
    from tx
    window
        {windows}
),
target as (select * from windowed where tx_datetime >= {target_from}),
known_frauds as (
    select
        t.transaction_id,
        {known},
        {recent}
    from target t
    join reported r
      on r.terminal_id = t.terminal_id
     and r.us >= t.us - {delay + widest * DAY_US}
     and r.us < t.us
     and r.reported_us <= t.us
    group by t.transaction_id
)
select
    transaction_id, tx_datetime, customer_id, terminal_id, tx_amount,
    (dayofweek(tx_datetime) in (0, 6))::integer as tx_during_weekend,
    (hour(tx_datetime) <= {NIGHT_LAST_HOUR})::integer as tx_during_night,
    {", ".join(f"customer_id_nb_tx_{w}day_window" for w in WINDOWS_DAYS)},
    {", ".join(f"customer_id_avg_amount_{w}day_window" for w in WINDOWS_DAYS)},
    {", ".join(f"terminal_id_nb_tx_{w}day_window" for w in WINDOWS_DAYS)},
    {risks},
    {ratios},
    {reported_counts},
    '{FEATURE_SET_VERSION}' as feature_set_version
from target
left join known_frauds k using (transaction_id)
"""


def duckdb_features(
    transactions: pd.DataFrame | pa.Table,
    fraud_reports: pd.DataFrame | pa.Table,
    start: dt.date,
    end: dt.date,
    con: duckdb.DuckDBPyConnection | None = None,
) -> pd.DataFrame:
    """The DuckDB reference over in-memory frames, sorted by transaction id."""
    import duckdb

    con = con or duckdb.connect()
    con.execute("set TimeZone = 'UTC'")
    con.register("ref_transactions", transactions)
    con.register("ref_fraud_reports", fraud_reports)
    query = duckdb_feature_query("ref_transactions", "ref_fraud_reports", start, end)
    return normalise(con.sql(query).df())


def _customer_spending(customer: pd.DataFrame) -> pd.DataFrame:
    """The handbook's ``get_customer_spending_behaviour_features`` for one customer, rows in time order."""
    amounts = customer.set_index("tx_datetime")["tx_amount"]
    features = {}
    for w in WINDOWS_DAYS:
        window = amounts.rolling(f"{w}d")
        total, count = window.sum().to_numpy(), window.count().to_numpy()
        features[f"customer_id_nb_tx_{w}day_window"] = count
        features[f"customer_id_avg_amount_{w}day_window"] = total / count
    return pd.DataFrame(features, index=customer.index)


def _terminal_risk(terminal: pd.DataFrame) -> pd.DataFrame:
    """The handbook's ``get_count_risk_rolling_window`` for one terminal: [t - delay - w, t - delay)."""
    frauds = terminal.set_index("tx_datetime")["reported_within_delay"]
    delay = f"{TERMINAL_DELAY_DAYS}d"
    nb_delay = frauds.rolling(delay, closed="left").count().fillna(0).to_numpy()
    frauds_delay = frauds.rolling(delay, closed="left").sum().fillna(0).to_numpy()
    features = {}
    for w in WINDOWS_DAYS:
        span = f"{TERMINAL_DELAY_DAYS + w}d"
        nb = frauds.rolling(span, closed="left").count().fillna(0).to_numpy() - nb_delay
        known = frauds.rolling(span, closed="left").sum().fillna(0).to_numpy() - frauds_delay
        features[f"terminal_id_nb_tx_{w}day_window"] = nb
        features[f"frauds_{w}"] = known
    return pd.DataFrame(features, index=terminal.index)


def pandas_features(
    transactions: pd.DataFrame, fraud_reports: pd.DataFrame, start: dt.date, end: dt.date
) -> pd.DataFrame:
    """The handbook's pandas groupby-rolling method, point in time; sorted by transaction id."""
    lower = pd.Timestamp(start - dt.timedelta(days=HISTORY_DAYS), tz="UTC")
    target_from, target_to = pd.Timestamp(start, tz="UTC"), pd.Timestamp(end + dt.timedelta(days=1), tz="UTC")
    delay = pd.Timedelta(days=TERMINAL_DELAY_DAYS)
    columns = ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount"]
    tx = transactions.loc[
        (transactions["tx_datetime"] >= lower) & (transactions["tx_datetime"] < target_to), columns
    ]
    tx = tx.sort_values(["tx_datetime", "transaction_id"], kind="stable").reset_index(drop=True)
    first_report = fraud_reports.groupby("transaction_id")["reported_at"].min()
    tx["reported_at"] = tx["transaction_id"].map(first_report)
    tx["reported_within_delay"] = (tx["reported_at"] <= tx["tx_datetime"] + delay).astype(float)

    customer = tx.groupby("customer_id", group_keys=False)[["tx_datetime", "tx_amount"]].apply(
        _customer_spending
    )
    ties = customer.groupby([tx["customer_id"], tx["tx_datetime"]])
    customer = ties.transform("last")
    terminal = tx.groupby("terminal_id", group_keys=False)[["tx_datetime", "reported_within_delay"]].apply(
        _terminal_risk
    )
    out = pd.concat([tx, customer, terminal], axis=1)
    out = out[out["tx_datetime"] >= target_from]
    _add_late_reports(out, tx[tx["reported_at"] > tx["tx_datetime"] + delay], delay)

    for w in WINDOWS_DAYS:
        nb = out[f"terminal_id_nb_tx_{w}day_window"]
        out[f"terminal_id_risk_{w}day_window"] = np.where(
            nb > 0, out[f"frauds_{w}"] / nb.where(nb > 0, 1), 0.0
        )
    add_recent_reports(out, tx[tx["reported_at"].notna()])
    for w in WINDOWS_DAYS:
        out[f"customer_id_amount_ratio_{w}day_window"] = amount_ratio(
            out["tx_amount"], out[f"customer_id_avg_amount_{w}day_window"]
        )
    out["tx_during_weekend"] = (out["tx_datetime"].dt.weekday >= 5).astype("int32")
    out["tx_during_night"] = (out["tx_datetime"].dt.hour <= NIGHT_LAST_HOUR).astype("int32")
    out["feature_set_version"] = FEATURE_SET_VERSION
    return normalise(out[list(OUTPUT_COLUMNS)])


def _known_pairs(out: pd.DataFrame, reported: pd.DataFrame) -> pd.DataFrame:
    """Each target row (``index``) with every reported transaction (``*_j``) at its terminal whose report is
    known at the target's time."""
    pairs = (
        out[["terminal_id", "tx_datetime"]]
        .reset_index()
        .merge(reported[["terminal_id", "tx_datetime", "reported_at"]], on="terminal_id", suffixes=("", "_j"))
    )
    return pairs[pairs["reported_at"] <= pairs["tx_datetime"]]


def _add_late_reports(out: pd.DataFrame, late: pd.DataFrame, delay: pd.Timedelta) -> None:
    """Reports after the delay count from their arrival on: merge them with the target transactions."""
    if late.empty or out.empty:
        return
    pairs = _known_pairs(out, late)
    for w in WINDOWS_DAYS:
        inside = pairs["tx_datetime_j"] >= pairs["tx_datetime"] - delay - pd.Timedelta(days=w)
        hits = pairs[inside].groupby("index").size()
        out[f"frauds_{w}"] = out[f"frauds_{w}"].add(hits.reindex(out.index, fill_value=0))


def add_recent_reports(out: pd.DataFrame, reported: pd.DataFrame) -> None:
    """The terminal's frauds in ``[t - w, t)`` reported by ``t``: pairs of target and reported rows."""
    pairs = _known_pairs(out, reported)
    pairs = pairs[pairs["tx_datetime_j"] < pairs["tx_datetime"]]
    for w in WINDOWS_DAYS:
        inside = pairs["tx_datetime_j"] >= pairs["tx_datetime"] - pd.Timedelta(days=w)
        hits = pairs[inside].groupby("index").size()
        out[f"terminal_id_nb_reported_frauds_{w}day_window"] = hits.reindex(out.index, fill_value=0)


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Same column order, dtypes and row order whatever engine produced the frame."""
    frame = frame[list(OUTPUT_COLUMNS)].copy()
    for column in OUTPUT_COLUMNS:
        if column in ("transaction_id", "customer_id", "terminal_id") or "_nb_" in column:
            frame[column] = frame[column].astype("int64")
        elif column.startswith("tx_during_"):
            frame[column] = frame[column].astype("int32")
        elif column == "tx_datetime":
            frame[column] = pd.to_datetime(frame[column], utc=True).astype("datetime64[us, UTC]")
        elif column != "feature_set_version":
            frame[column] = frame[column].astype("float64")
    return frame.sort_values("transaction_id").reset_index(drop=True)


def random_raw(
    seed: int = 0,
    *,
    customers: int = 40,
    terminals: int = 25,
    days: int = 60,
    tx_per_day: int = 60,
    start: dt.date = dt.date(2018, 4, 1),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Transactions and fraud reports that hit every edge the definitions have.

    Timestamps fall on a 30-minute grid, so windows end exactly on other transactions and customers make
    several transactions at the same instant; reports arrive from 0 to 20 days later (often exactly at a
    grid point, often after the delay), some transactions are reported twice, some reports name no
    transaction at all.
    """
    rng = np.random.default_rng(seed)
    n = days * tx_per_day
    grid_us = 30 * 60 * 1_000_000
    start_us = int(pd.Timestamp(start, tz="UTC").value // 1000)
    times = start_us + rng.integers(0, days * 48, size=n) * grid_us
    order = np.argsort(times, kind="stable")
    transactions = pd.DataFrame(
        {
            "transaction_id": np.arange(n, dtype=np.int64) + 1000,
            "tx_datetime": pd.to_datetime(times[order], unit="us", utc=True),
            "customer_id": rng.integers(0, customers, size=n).astype(np.int64),
            "terminal_id": rng.integers(0, terminals, size=n).astype(np.int64),
            "tx_amount": np.round(rng.gamma(2.0, 30.0, size=n), 2),
        }
    )
    reported = rng.random(n) < 0.15
    ids = transactions.loc[reported, "transaction_id"].to_numpy()
    report_times = times[order][reported] + rng.integers(0, 20 * 48, size=reported.sum()) * grid_us
    again = rng.random(len(ids)) < 0.1
    orphans = rng.integers(10**9, 2 * 10**9, size=max(1, n // 100))
    orphan_times = start_us + rng.integers(0, days * 48, size=len(orphans)) * grid_us
    reports = pd.DataFrame(
        {
            "transaction_id": np.concatenate([ids, ids[again], orphans]).astype(np.int64),
            "reported_at": pd.to_datetime(
                np.concatenate([report_times, report_times[again] + 3 * DAY_US, orphan_times]),
                unit="us",
                utc=True,
            ),
        }
    )
    return transactions, reports.sort_values("reported_at", kind="stable").reset_index(drop=True)


def write_raw_lake(
    lake: str,
    transactions: pd.DataFrame | pa.Table,
    fraud_reports: pd.DataFrame | pa.Table,
    days: tuple[dt.date, dt.date] | None = None,
) -> None:
    """Raw partitions as ingest writes them (brief's "Lake raw" contract), one file per UTC day.

    Every day of ``days`` (default: the transactions' first to last day) gets a file, empty when it has no
    rows, and so does every day a row falls on.
    """
    import pyarrow as pa

    from jobs.ingest.contract import RAW_FRAUD_REPORTS_SCHEMA, RAW_TRANSACTIONS_SCHEMA

    tx = transactions if isinstance(transactions, pd.DataFrame) else transactions.to_pandas()
    reports = fraud_reports if isinstance(fraud_reports, pd.DataFrame) else fraud_reports.to_pandas()
    if days is None:
        days = (tx["tx_datetime"].min().date(), tx["tx_datetime"].max().date())
    for dataset, frame, column, schema in (
        (RAW_TRANSACTIONS, tx, "tx_datetime", RAW_TRANSACTIONS_SCHEMA),
        (RAW_FRAUD_REPORTS, reports, "reported_at", RAW_FRAUD_REPORTS_SCHEMA),
    ):
        frame = frame.assign(extras=None, source_file=f"{dataset}.bench", ingest_run_id="reference")
        by_day = dict(tuple(frame.groupby(frame[column].dt.date)))
        day, last = min([days[0], *by_day]), max([days[1], *by_day])
        while day <= last:
            rows = by_day.get(day, frame.iloc[:0])
            table = pa.Table.from_pandas(rows[schema.names], schema=schema, preserve_index=False)
            write_parquet_atomic(table, partition_uri(lake, dataset, day))
            day += dt.timedelta(days=1)
