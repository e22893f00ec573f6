"""Batch scoring into the warehouse vs bare ``Booster.predict`` on the same rows, in the same run.

Goal: end-to-end throughput (read the day's features from the lake, score, reason codes, one DuckDB
transaction per day) at least 50 % of bare predict throughput. Reason codes (TreeSHAP through
``pred_contrib``) are reported on their own: what the default review set costs, and what explaining every row
would cost. The model has the production training parameters (``jobs.training.trainer.TrainingParams``) and a
fixed number of trees; the rows look like the handbook's (5,000 cards, 10,000 terminals, ~10k transactions a
day).
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from jobs.features.definitions import FEATURE_COLUMNS, FEATURE_SET_VERSION
from jobs.platform import storage
from jobs.platform.layout import TRANSACTION_FEATURES, partition_uri

DAYS = 8
ROWS_PER_DAY = 12_500
TREES = 300
FIRST_DAY = dt.date(2018, 8, 1)
REPEATS = 3


def synthetic_day(day: dt.date, rows: int, rng: np.random.Generator) -> pd.DataFrame:
    """Feature rows with the handbook's shapes; the label is a noisy mix of its three fraud scenarios."""
    midnight = pd.Timestamp(day.isoformat(), tz="UTC")
    amount = np.round(rng.gamma(2.0, 27.0, rows), 2)
    frame = pd.DataFrame(
        {
            "transaction_id": (day - FIRST_DAY).days * 1_000_000 + np.arange(rows, dtype=np.int64),
            "tx_datetime": midnight + pd.to_timedelta(np.sort(rng.integers(0, 86_400, rows)), unit="s"),
            "customer_id": rng.integers(0, 5_000, rows),
            "terminal_id": rng.integers(0, 10_000, rows),
            "tx_amount": amount,
            "tx_during_weekend": np.full(rows, int(day.weekday() >= 5)),
            "tx_during_night": (rng.uniform(0, 1, rows) < 0.2).astype(np.int64),
        }
    )
    for w in (1, 7, 30):
        frame[f"customer_id_nb_tx_{w}day_window"] = rng.poisson(2.0 * w, rows) + 1
        frame[f"customer_id_avg_amount_{w}day_window"] = amount * rng.uniform(0.5, 1.5, rows)
        frame[f"terminal_id_nb_tx_{w}day_window"] = rng.poisson(1.0 * w, rows)
        frame[f"terminal_id_risk_{w}day_window"] = np.where(rng.uniform(0, 1, rows) < 0.01, 1.0, 0.0)
        average = frame[f"customer_id_avg_amount_{w}day_window"]
        frame[f"customer_id_amount_ratio_{w}day_window"] = amount / average
        frame[f"terminal_id_nb_reported_frauds_{w}day_window"] = rng.poisson(0.02 * w, rows)
    frame["feature_set_version"] = FEATURE_SET_VERSION
    risk = (
        (frame["tx_amount"] > 220) * 4.0
        + frame["terminal_id_risk_7day_window"] * 3.0
        + (frame["tx_amount"] > 2.5 * frame["customer_id_avg_amount_30day_window"]) * 2.0
    )
    frame["label"] = rng.uniform(0, 1, rows) < 1 / (1 + np.exp(-(risk - 6.0)))
    return frame[[*frame.columns[:4], *FEATURE_COLUMNS, "feature_set_version", "label"]]


def train(frame: pd.DataFrame):
    import lightgbm as lgb

    from jobs.training.trainer import TrainingParams

    positives = int(frame["label"].sum())
    params = TrainingParams().lightgbm_params("cpu", positives, len(frame) - positives)
    data = lgb.Dataset(
        frame[list(FEATURE_COLUMNS)].to_numpy(np.float64), frame["label"], feature_name=list(FEATURE_COLUMNS)
    )
    return lgb.train({**params, "metric": "auc"}, data, num_boost_round=TREES)


def best_of(repeats: int, action) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return min(timings)


def main() -> None:
    from jobs.platform.catalog import publish
    from jobs.platform.settings import load_settings
    from jobs.registry.aliases import ModelRef
    from jobs.scoring.batch import reason_codes, score_days
    from jobs.training.trainer import choose_threshold, with_day

    rng = np.random.default_rng(11)
    booster = train(
        pd.concat([synthetic_day(FIRST_DAY - dt.timedelta(days=i + 1), 12_500, rng) for i in range(4)])
    )
    days = [FIRST_DAY + dt.timedelta(days=i) for i in range(DAYS)]
    frames = [synthetic_day(day, ROWS_PER_DAY, rng).drop(columns="label") for day in days]
    rows = pd.concat(frames, ignore_index=True)
    matrix = rows[list(FEATURE_COLUMNS)].to_numpy(np.float64)
    threshold, alerts_per_day = choose_threshold(with_day(rows), booster.predict(matrix), alert_budget=100)
    model = ModelRef("txguard-fraud", 1, "bench", "0" * 64, threshold, FEATURE_SET_VERSION, "file:///bench")

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        settings = load_settings(home=home, lake_root=str(home / "lake"), warehouse=home / "bench.duckdb")
        for day, frame in zip(days, frames, strict=True):
            table = pa.Table.from_pandas(frame, preserve_index=False)
            storage.write_parquet_atomic(table, partition_uri(settings.lake, TRANSACTION_FEATURES, day))

        bare = best_of(REPEATS, lambda: booster.predict(matrix))

        def end_to_end(explain: str) -> float:
            return best_of(
                REPEATS,
                lambda: score_days(
                    settings,
                    days,
                    model,
                    booster,
                    run_id="bench",
                    run_created_at=dt.datetime.now(dt.UTC),
                    explain=explain,
                ),
            )

        plain = end_to_end("none")
        review = end_to_end("review")
        written = score_days(
            settings, days, model, booster, run_id="bench", run_created_at=dt.datetime.now(dt.UTC)
        )
        explained = sum(d.explained_rows for d in written)
        snapshot = best_of(1, lambda: publish(settings, days))
        sample = matrix[:2_000]
        shap_per_row = best_of(1, lambda: reason_codes(booster, sample, FEATURE_COLUMNS)) / len(sample)

    n = len(rows)
    goal = "OK" if bare / review >= 0.5 else "MISSED"
    print(f"rows scored                  {n:,} ({DAYS} days x {ROWS_PER_DAY:,}), {TREES} trees, 2 threads")
    print(f"alerts                       {alerts_per_day:.0f} cards/day at threshold {threshold:.4f}")
    print(f"bare Booster.predict         {n / bare:12,.0f} rows/s   (best of {REPEATS})")
    print(f"end to end, no reason codes  {n / plain:12,.0f} rows/s   {bare / plain:6.1%} of bare predict")
    print(
        f"end to end, with reasons     {n / review:12,.0f} rows/s   {bare / review:6.1%} of bare predict"
        f"   goal >= 50 %   {goal}"
    )
    print(
        f"reason codes (review set)    {explained:,} rows explained ({explained / n:.1%}), "
        f"{review - plain:+.2f} s for the whole batch"
    )
    print(
        f"reason codes for every row   TreeSHAP costs {shap_per_row / (bare / n):.0f}x a prediction per row: "
        f"{shap_per_row * n:.1f} s for this batch ({n / (shap_per_row * n + plain):,.0f} rows/s end to end)"
    )
    print(
        f"snapshot publication         {snapshot:.2f} s per run (the scored days' files and a new catalog; "
        "once per run, not in the rates)"
    )


if __name__ == "__main__":
    main()
