"""Drift monitoring on calm days and on the simulator's drift scenario, over several draws of the simulator.

Per draw (``TXGUARD_BENCH_SEEDS``, comma-separated seeds, default 0,1,2; size ``TXGUARD_BENCH_CUSTOMERS`` and
``TXGUARD_BENCH_TERMINALS``, default the handbook's 5,000 and 10,000): simulate from 2018-04-01 with the
drift scenario (``jobs.simulation.simulator``) starting ``CALM_DAYS`` days after the champion is trained;
compute the features with the DuckDB reference query (parity-tested against the Spark job); train the
champion as ``fraud_model`` does (its matured window, labels known at the cutoff) on the first window past
the warm-up, and keep it for the whole run (no weekly retraining: the reference only ages); build its
reference sample and each later day's drift report as ``feature_drift`` does.

It prints, per draw, the calm days at error level (each one a retraining request from the sensor: goal 0),
at warning, the worst calm PSI and its input, for comparison how many calm days the PSI of every row's score
against the whole reference would have put at error, and the days from the drift's start to its first error
(goal at most 2). A handbook-size draw takes a few minutes on two cores (``TXGUARD_BENCH_SEEDS=0``: one).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from jobs.monitoring.monitors import (
    PSI_ERROR,
    SCORE,
    DriftReport,
    drift_report,
    psi,
    reference_sample,
)
from jobs.simulation.simulator import SimulationConfig, simulate
from jobs.testing.reference_features import duckdb_features
from jobs.training.maturity import warm_up_end
from jobs.training.trainer import (
    DAY,
    LABEL,
    TrainingParams,
    matured_window,
    predict_scores,
    split_labelled,
    train_model,
    with_day,
)

CALM_DAYS = 60
DRIFT_DAYS_WATCHED = 7
FLAG_GOAL_DAYS = 2


@dataclass(frozen=True)
class DrawResult:
    seed: int
    calm: list[DriftReport]
    drifted: list[DriftReport]
    all_rows_score_errors: int
    seconds: float

    @property
    def false_requests(self) -> int:
        return sum(r.level == "error" for r in self.calm)

    @property
    def days_to_flag(self) -> int | None:
        flagged = [i for i, r in enumerate(self.drifted) if r.level == "error"]
        return flagged[0] if flagged else None


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _seeds() -> list[int]:
    raw = os.environ.get("TXGUARD_BENCH_SEEDS", "0,1,2")
    return [int(seed) for seed in raw.split(",") if seed.strip()]


def run_draw(seed: int, customers: int, terminals: int) -> DrawResult:
    """One draw: simulate, build features, train the champion, measure drift on every later day."""
    started = time.perf_counter()
    start = SimulationConfig().start
    judged_from = warm_up_end(start)
    probe = matured_window(judged_from + dt.timedelta(days=365), earliest_day=judged_from)
    trained_on = judged_from + (probe.label_cutoff.date() - probe.train_start)
    window = matured_window(trained_on, earliest_day=judged_from)
    drift_from = trained_on + dt.timedelta(days=CALM_DAYS + 1)
    last_day = drift_from + dt.timedelta(days=DRIFT_DAYS_WATCHED - 1)
    config = SimulationConfig(
        customers=customers,
        terminals=terminals,
        days=(last_day - start).days + 1,
        seed=seed,
        drift_from=drift_from,
    )
    data = simulate(config)
    transactions = data.transactions.drop(["tx_fraud", "tx_fraud_scenario"])
    frame = with_day(duckdb_features(transactions, data.fraud_reports, window.train_start, last_day))
    reports = data.fraud_reports.to_pandas()
    known = reports.loc[reports["reported_at"] <= pd.Timestamp(window.label_cutoff), "transaction_id"]
    frame[LABEL] = frame["transaction_id"].isin(known).astype(np.int8)

    days = frame[DAY].to_numpy()
    learned = frame[days <= np.datetime64(window.last_day, "D")].reset_index(drop=True)
    model = train_model(
        split_labelled(learned, window, source=f"seed {seed}"), TrainingParams(), device="cpu"
    )
    seen = (days >= np.datetime64(window.train_start, "D")) & (
        days <= np.datetime64(window.validation_end, "D")
    )
    reference = reference_sample(frame[seen], model.booster, seed=seed)

    calm, drifted, all_rows_errors = [], [], 0
    day = trained_on + dt.timedelta(days=1)
    while day <= last_day:
        current = frame[days == np.datetime64(day, "D")].reset_index(drop=True)
        current[SCORE] = predict_scores(model.booster, current)
        report = drift_report(reference, current, day, model_version=1)
        if day < drift_from:
            calm.append(report)
            all_rows_errors += psi(reference[SCORE].to_numpy(), current[SCORE].to_numpy()) >= PSI_ERROR
        else:
            drifted.append(report)
        day += dt.timedelta(days=1)
    return DrawResult(seed, calm, drifted, int(all_rows_errors), time.perf_counter() - started)


def main() -> None:
    seeds = _seeds()
    customers = _env_int("TXGUARD_BENCH_CUSTOMERS", 5_000)
    terminals = _env_int("TXGUARD_BENCH_TERMINALS", 10_000)
    print(
        f"{customers:,} customers, {terminals:,} terminals; {CALM_DAYS} calm days after the champion's "
        f"training, then the drift scenario for {DRIFT_DAYS_WATCHED} days"
    )
    print(
        "| seed | false requests (calm days at error) | calm days at warning | worst calm PSI | "
        "all-rows score PSI at error | days to first flag | first drift day's worst PSI | seconds |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    results = []
    for seed in seeds:
        result = run_draw(seed, customers, terminals)
        results.append(result)
        worst_calm = max(result.calm, key=lambda r: r.worst[1])
        first_drift = result.drifted[0]
        flag = result.days_to_flag
        print(f"| {seed} | {result.false_requests} | {sum(r.level == 'warn' for r in result.calm)} | "
              f"{worst_calm.worst[1]:.3f} ({worst_calm.worst[0]}, {worst_calm.day}) | "
              f"{result.all_rows_score_errors} | {'never' if flag is None else flag} | "
              f"{first_drift.worst[1]:.3f} ({first_drift.worst[0]}) | {result.seconds:.0f} |",
              flush=True)  # fmt: skip
    false_requests = sum(r.false_requests for r in results)
    flags = [r.days_to_flag for r in results]
    flagged_in_time = all(f is not None and f <= FLAG_GOAL_DAYS for f in flags)
    flagged = ", ".join("never" if f is None else str(f) for f in flags)
    print(
        f"\nfalse retraining requests: {false_requests} in {CALM_DAYS * len(results)} calm days (goal 0); "
        f"drift flagged within {FLAG_GOAL_DAYS} days of its start on every draw: "
        f"{'yes' if flagged_in_time else 'NO'} (days: {flagged})"
    )


if __name__ == "__main__":
    main()
