"""Plain helpers the test modules share: a free port, Dagster runs, raw and feature lakes, leak searches,
simulated worlds, scored partitions, a lineage warehouse and an MLflow run with plots. Fixtures live in
``tests/conftest.py``; this module holds what tests import by name.

Heavy engines (Dagster, pandera, LightGBM, MLflow) are imported inside the helpers that use them, so that a
test module pays only for what it runs.
"""

from __future__ import annotations

import base64
import datetime as dt
import random
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.features.definitions import FEATURE_COLUMNS, FEATURE_SET_VERSION, amount_ratio
from jobs.governance import audit
from jobs.platform import storage
from jobs.platform.catalog import publish
from jobs.platform.layout import (
    RAW_FRAUD_REPORTS,
    RAW_TRANSACTIONS,
    SCORES_TABLE,
    TRANSACTION_FEATURES,
    partition_uri,
)
from jobs.platform.settings import Settings
from jobs.platform.warehouse import connect
from jobs.testing.reference_features import add_recent_reports
from jobs.training.trainer import (
    TrainedModel,
    TrainingParams,
    TrainingSet,
    TrainingWindow,
    feature_days,
    matured_window,
)

if TYPE_CHECKING:
    import dagster as dg
    import lightgbm

START = dt.date(2018, 4, 1)
"""The first day of every simulated world here, and of the partitions."""

# --- ports ------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server to start on, or to find closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- Dagster -----------------------------------------------------------------------------------------------


def with_settings(defs: dg.Definitions) -> dg.Definitions:
    """A domain's definitions with the settings resource, bound as ``orchestration/definitions.py`` does."""
    import dagster as dg

    from orchestration.resources import TxguardSettings

    return dg.Definitions.merge(defs, dg.Definitions(resources={"settings": TxguardSettings()}))


def materialize(
    assets: Sequence[Any],
    *,
    resources: Mapping[str, object] | None = None,
    instance: dg.DagsterInstance | None = None,
    raise_on_error: bool = False,
    **options: Any,
) -> dg.ExecuteInProcessResult:
    """``dg.materialize`` with the settings resource (read from the environment at run time) besides
    ``resources``, on ``instance`` or an ephemeral one. A failed step is returned, not raised, so that a test
    can assert on the failure; ``raise_on_error=True`` where a failure is the test's own error."""
    import dagster as dg

    from orchestration.resources import TxguardSettings

    return dg.materialize(
        assets,
        resources={"settings": TxguardSettings(), **(resources or {})},
        instance=instance if instance is not None else dg.DagsterInstance.ephemeral(),
        raise_on_error=raise_on_error,
        **options,
    )


def single_check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    """The run's one asset check evaluation; none or several fail the test."""
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def run_in_step_processes(module: str, job: str, first_day: str, last_day: str) -> list[dg.EventLogEntry]:
    """Run a test module's job over ``first_day..last_day`` as one run with a process per step, as the daemon
    runs it, on DAGSTER_HOME's instance prepared as the product prepares it (pools included); the run must
    succeed. ``job`` names a function of ``module`` that returns the job: step processes import it by name
    from the repository root. Returns the run's event log."""
    import dagster as dg

    from jobs.platform.settings import REPO_ROOT, load_settings
    from orchestration.instance import prepare_dagster_home
    from orchestration.runs import partition_range_tags

    prepare_dagster_home(load_settings())
    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(
            dg.build_reconstructable_job(module, job, reconstructor_working_directory=str(REPO_ROOT)),
            instance=instance,
            tags=partition_range_tags(first_day, last_day),
        )
        assert result.success
        return instance.all_logs(result.run_id)


def step_spans(records: Sequence[dg.EventLogEntry]) -> dict[str, list[float]]:
    """When each step of a run started and succeeded, from its event log: what shows two steps overlapped."""
    spans: dict[str, list[float]] = {}
    for record in records:
        event = record.dagster_event
        if event and event.event_type_value in ("STEP_START", "STEP_SUCCESS") and event.step_key:
            spans.setdefault(event.step_key, []).append(record.timestamp)
    return spans


# --- raw lake partitions, as ingest writes them ------------------------------------------------------------


def write_raw_partition(lake: Path | str, dataset: str, day: dt.date | str, rows: list[dict]) -> None:
    """One raw partition (``RAW_TRANSACTIONS`` or ``RAW_FRAUD_REPORTS``) with ingest's schema and lineage."""
    from jobs.ingest.contract import RAW_FRAUD_REPORTS_SCHEMA, RAW_TRANSACTIONS_SCHEMA

    schema = RAW_TRANSACTIONS_SCHEMA if dataset == RAW_TRANSACTIONS else RAW_FRAUD_REPORTS_SCHEMA
    lineage = {"extras": None, "source_file": f"{dataset}/{day}.csv", "ingest_run_id": "test-run"}
    table = pa.Table.from_pylist([{**lineage, **row} for row in rows], schema=schema)
    storage.write_parquet_atomic(table, partition_uri(str(lake), dataset, day))


def transaction_rows(day: dt.date | str, count: int, first_id: int | None = None) -> list[dict]:
    """``count`` valid transactions of ``day``, seven minutes apart, on five cards and three terminals,
    amounts rising from 5.00; ids from ``first_id``, by default ``day``'s ordinal * 1000 (days never share
    one)."""
    start = dt.datetime.combine(dt.date.fromisoformat(str(day)), dt.time(), tzinfo=dt.UTC)
    first = start.toordinal() * 1000 if first_id is None else first_id
    return [
        {
            "transaction_id": first + i,
            "tx_datetime": start + dt.timedelta(minutes=7 * i),
            "customer_id": i % 5,
            "terminal_id": i % 3,
            "tx_amount": round(5 + 1.25 * i, 2),
        }
        for i in range(count)
    ]


def leaks(marker: str, root: Path) -> list[str]:
    """Files under ``root`` whose bytes, or whose Parquet values once decoded, hold ``marker`` (links are not
    followed: what a link points at is not under ``root``)."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        content = path.read_bytes()
        if path.suffix == ".parquet":
            content += pq.read_table(path).to_pandas().to_csv().encode()
        if marker.encode() in content:
            found.append(str(path))
    return found


def perturb_after(
    transactions: pd.DataFrame, reports: pd.DataFrame, cutoff: pd.Timestamp, rng: np.random.Generator
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Change everything strictly after ``cutoff``: amounts, who and where, new rows, and every report."""
    tx = transactions.copy()
    after = tx["tx_datetime"] > cutoff
    tx.loc[after, "tx_amount"] = tx.loc[after, "tx_amount"] * 7 + 1
    tx.loc[after, "customer_id"] = (tx.loc[after, "customer_id"] + 1) % 40
    tx.loc[after, "terminal_id"] = (tx.loc[after, "terminal_id"] + 3) % 25
    new = pd.DataFrame(
        {
            "transaction_id": np.arange(500) + 10**7,
            "tx_datetime": cutoff + pd.to_timedelta(rng.integers(1, 20 * 86_400, 500), unit="s"),
            "customer_id": rng.integers(0, 40, 500),
            "terminal_id": rng.integers(0, 25, 500),
            "tx_amount": rng.uniform(0, 500, 500).round(2),
        }
    )
    later_reports = pd.DataFrame(
        {  # reports arriving later, for transactions before the cutoff as well as after it
            "transaction_id": rng.choice(tx["transaction_id"].to_numpy(), 400),
            "reported_at": cutoff + pd.to_timedelta(rng.integers(1, 10 * 86_400, 400), unit="s"),
        }
    )
    kept = reports[reports["reported_at"] <= cutoff]
    tx = pd.concat([tx, new], ignore_index=True).astype({"tx_datetime": transactions["tx_datetime"].dtype})
    reports = pd.concat([kept, later_reports], ignore_index=True).astype(
        {"reported_at": reports["reported_at"].dtype}
    )
    return tx, reports


def report_rows(day: dt.date | str, transaction_ids: Sequence[int]) -> list[dict]:
    """Fraud reports that arrived on ``day``, from noon on, a minute apart."""
    noon = dt.datetime.combine(dt.date.fromisoformat(str(day)), dt.time(12), tzinfo=dt.UTC)
    return [
        {"transaction_id": t, "reported_at": noon + dt.timedelta(minutes=i)}
        for i, t in enumerate(transaction_ids)
    ]


# --- the handbook-style world: transactions, features, a feature lake, quick models ------------------------

FAST = TrainingParams(num_threads=1, learning_rate=0.1)
"""One thread: no OpenMP spinning when the test machine's two cores are busy; same bytes either way."""


def handbook_transactions(
    n_customers: int = 600,
    n_terminals: int = 1000,
    n_days: int = 60,
    radius: float = 10.0,
    compromised_terminals_per_day: float = 0.3,
    compromised_customers_per_day: float = 1.0,
    seed: int = 7,
    start: dt.date = START,
) -> pd.DataFrame:
    """Transactions with the handbook's generative story and its three fraud scenarios, plus reports."""
    rng = np.random.default_rng(seed)
    cust_xy = rng.uniform(0, 100, (n_customers, 2))
    term_xy = rng.uniform(0, 100, (n_terminals, 2))
    mean_amount = rng.uniform(5, 100, n_customers)
    mean_nb = rng.uniform(0, 4, n_customers)
    near = np.linalg.norm(cust_xy[:, None, :] - term_xy[None, :, :], axis=2) < radius
    counts = near.sum(axis=1)
    offsets = np.r_[0, np.cumsum(counts)[:-1]]
    flat_terminals = np.nonzero(near)[1]

    per_day = rng.poisson(np.tile(mean_nb, n_days))
    customer = np.repeat(np.tile(np.arange(n_customers), n_days), per_day)
    day = np.repeat(np.repeat(np.arange(n_days), n_customers), per_day)
    seconds = rng.normal(86400 / 2, 20000, len(customer))
    amount = rng.normal(mean_amount[customer], mean_amount[customer] / 2)
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean_amount[customer[negative]])
    keep = (seconds > 0) & (seconds < 86400) & (counts[customer] > 0)
    customer, day, seconds, amount = customer[keep], day[keep], seconds[keep], amount[keep]
    terminal = flat_terminals[offsets[customer] + (rng.random(len(customer)) * counts[customer]).astype(int)]

    fraud = amount > 220
    for start_day in range(n_days):
        for t in rng.choice(n_terminals, rng.poisson(compromised_terminals_per_day), replace=False):
            fraud |= (terminal == t) & (day >= start_day) & (day < start_day + 28)
        for c in rng.choice(n_customers, rng.poisson(compromised_customers_per_day), replace=False):
            window = np.flatnonzero((customer == c) & (day >= start_day) & (day < start_day + 14))
            chosen = rng.choice(window, len(window) // 3, replace=False) if len(window) >= 3 else window[:0]
            amount[chosen] *= 5
            fraud[chosen] = True

    stamps = (
        pd.Timestamp(start, tz="UTC") + pd.to_timedelta(day, "D") + pd.to_timedelta(seconds.astype(int), "s")
    )
    tx = pd.DataFrame(
        {
            "tx_datetime": stamps.astype("datetime64[us, UTC]"),
            "customer_id": customer.astype(np.int64),
            "terminal_id": terminal.astype(np.int64),
            "tx_amount": np.round(amount, 2),
            "fraud": fraud,
        }
    ).sort_values("tx_datetime", kind="mergesort")
    tx.insert(0, "transaction_id", np.arange(len(tx), dtype=np.int64))
    report_delay = pd.to_timedelta(rng.uniform(3600, 6 * 86400, len(tx)).astype(int), "s")
    tx["reported_at"] = (tx["tx_datetime"] + report_delay).where(tx["fraud"])
    return tx.reset_index(drop=True)


def handbook_features(tx: pd.DataFrame, delay: int = 7) -> pd.DataFrame:
    """The feature set, point in time, with the handbook's pandas rolling windows."""
    out = tx[["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount"]].copy()
    out["tx_during_weekend"] = (tx["tx_datetime"].dt.weekday >= 5).astype(np.int64)
    out["tx_during_night"] = (tx["tx_datetime"].dt.hour <= 6).astype(np.int64)
    by_customer = tx.sort_values(["customer_id", "tx_datetime"], kind="mergesort")
    indexed = by_customer.set_index("tx_datetime").groupby("customer_id")["tx_amount"]
    for w in (1, 7, 30):
        rolling = indexed.rolling(f"{w}D")
        out.loc[by_customer.index, f"customer_id_nb_tx_{w}day_window"] = rolling.count().to_numpy()
        out.loc[by_customer.index, f"customer_id_avg_amount_{w}day_window"] = rolling.mean().to_numpy()
    for w in (1, 7, 30):
        out[f"customer_id_amount_ratio_{w}day_window"] = amount_ratio(
            out["tx_amount"], out[f"customer_id_avg_amount_{w}day_window"]
        )
    by_terminal = tx.sort_values(["terminal_id", "tx_datetime"], kind="mergesort")
    frauds = (
        by_terminal.assign(f=by_terminal["fraud"].astype(float))
        .set_index("tx_datetime")
        .groupby("terminal_id")
    )
    nb_delay = frauds["f"].rolling(f"{delay}D").count().to_numpy()
    fr_delay = frauds["f"].rolling(f"{delay}D").sum().to_numpy()
    for w in (1, 7, 30):
        nb = frauds["f"].rolling(f"{delay + w}D").count().to_numpy() - nb_delay
        fr = frauds["f"].rolling(f"{delay + w}D").sum().to_numpy() - fr_delay
        out.loc[by_terminal.index, f"terminal_id_nb_tx_{w}day_window"] = nb
        out.loc[by_terminal.index, f"terminal_id_risk_{w}day_window"] = np.where(
            nb > 0, fr / np.maximum(nb, 1), 0
        )
    add_recent_reports(out, tx[tx["reported_at"].notna()])
    out[list(FEATURE_COLUMNS)] = out[list(FEATURE_COLUMNS)].astype(np.float64)
    out["feature_set_version"] = FEATURE_SET_VERSION
    return out


def write_feature_partition(lake: Path | str, frame: pd.DataFrame, day: dt.date) -> None:
    """One day's feature partition, as the feature job leaves it."""
    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    storage.write_parquet_atomic(table, partition_uri(str(lake), TRANSACTION_FEATURES, day))


def write_feature_lake(lake: Path | str, tx: pd.DataFrame, features: pd.DataFrame) -> None:
    """Feature partitions by transaction day, report partitions by arrival day, as the pipeline does."""
    for day, rows in features.groupby(features["tx_datetime"].dt.date):
        write_feature_partition(lake, rows, day)
    reports = tx.loc[tx["fraud"], ["transaction_id", "reported_at"]].reset_index(drop=True)
    reports["extras"] = None
    reports["source_file"] = "fraud_reports/generated.csv"
    reports["ingest_run_id"] = "test"
    for day, rows in reports.groupby(reports["reported_at"].dt.date):
        table = pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False)
        storage.write_parquet_atomic(table, partition_uri(str(lake), RAW_FRAUD_REPORTS, day))


def latest_window(lake: str) -> TrainingWindow:
    """The latest matured training window the lake's feature partitions allow."""
    days = feature_days(lake)
    return matured_window(days[-1], earliest_day=days[0])


def small_booster(features: pd.DataFrame, labels: np.ndarray, rounds: int) -> lightgbm.Booster:
    """A small deterministic LightGBM model on the feature columns, for tests that need a real model but not
    the trainer's (no registry, no threshold search)."""
    import lightgbm as lgb

    data = lgb.Dataset(features[list(FEATURE_COLUMNS)].to_numpy(), labels, feature_name=list(FEATURE_COLUMNS))
    params = {"objective": "binary", "num_leaves": 15, "num_threads": 1, "deterministic": True, "verbose": -1}
    return lgb.train(params, data, num_boost_round=rounds)


# --- the drifting world: the product's simulator with its drift option -------------------------------------

DRIFT_FROM = dt.date(2018, 6, 5)
DRIFT_DAYS = 75
"""Days simulated from START; the drift starts on DRIFT_FROM."""
CALM_WEEK = (DRIFT_FROM - dt.timedelta(days=7), DRIFT_FROM - dt.timedelta(days=1))
"""The first and last of the seven days before the drift starts: drift must stay quiet on every one."""
WORLD_VARIABLES = {
    "lake": "TXGUARD_LAKE_ROOT",
    "mlflow": "TXGUARD_MLFLOW_URI",
    "warehouse": "TXGUARD_WAREHOUSE",
}


def drifted_transactions() -> pd.DataFrame:
    """The simulator's drift option, in the frame shape ``handbook_features`` and the lake writer take."""
    from jobs.simulation.simulator import SimulationConfig, simulate

    data = simulate(
        SimulationConfig(
            customers=500, terminals=1000, days=DRIFT_DAYS, start=START, seed=3, drift_from=DRIFT_FROM
        )
    )
    tx = data.transactions.to_pandas()
    reports = data.fraud_reports.to_pandas().set_index("transaction_id")["reported_at"]
    tx["fraud"] = tx.pop("tx_fraud")
    tx["reported_at"] = tx["transaction_id"].map(reports)
    return tx


def use_world(world: Mapping[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the settings at the parts of a module's world it has: ``lake``, ``mlflow``, ``warehouse``."""
    for part, variable in WORLD_VARIABLES.items():
        if part in world:
            monkeypatch.setenv(variable, str(world[part]))


# --- scored partitions ---------------------------------------------------------------------------------


def scores_for(day: dt.date, n: int, run_id: str, version: int = 1, seed: int = 0) -> pd.DataFrame:
    """A plausible partition of ``n`` scored rows for ``day`` (ids unique across days)."""
    rng = np.random.default_rng(seed)
    base = (day - START).days * 100_000
    midnight = pd.Timestamp(day.isoformat(), tz="UTC")
    score = rng.uniform(0, 1, n)
    return pd.DataFrame(
        {
            "transaction_id": base + np.arange(n, dtype=np.int64),
            "tx_datetime": midnight + pd.to_timedelta(np.sort(rng.integers(0, 86_399, n)), unit="s"),
            "customer_id": rng.integers(0, 50, n),
            "terminal_id": rng.integers(0, 80, n),
            "score": score,
            "decision": score >= 0.9,
            "reason_1": np.where(score >= 0.9, "tx_amount", None),
            "reason_2": np.where(score >= 0.95, "terminal_id_risk_7day_window", None),
            "reason_3": None,
            "model_name": "txguard-fraud",
            "model_version": version,
            "feature_set_version": "fs-test",
            "dagster_run_id": run_id,
            "run_created_at": pd.Timestamp("2018-08-03T06:00:00Z"),
            "day": day,
        }
    )


def scoring_record(
    day: dt.date, row_count: int, run_id: str, version: int = 1, checks: Sequence[dict[str, object]] = ()
) -> audit.ScoringRun:
    """The audit record the scoring writer appends with a partition like ``scores_for``'s (same model and
    feature set)."""
    return audit.ScoringRun(
        day=day,
        model_name="txguard-fraud",
        model_version=str(version),
        artifact_sha256="ab" * 32,
        feature_set_version="fs-test",
        row_count=row_count,
        checks=list(checks),
        dagster_run_id=run_id,
    )


# --- a lineage warehouse: what a few days of the pipeline record, and the truth to check against ----------

LINEAGE_MODEL = "txguard-fraud"
LINEAGE_FEATURE_SET = "fs-0123456789ab"
LINEAGE_THRESHOLD = 0.5
"""The decision threshold of every version: a row is an alert when its score reaches it."""
LINEAGE_SCORES_DDL = f"""
create schema if not exists scoring;
create table if not exists {SCORES_TABLE} (
    transaction_id bigint, tx_datetime timestamptz, customer_id bigint, terminal_id bigint, score double,
    decision boolean, reason_1 varchar, reason_2 varchar, reason_3 varchar, model_name varchar,
    model_version integer, feature_set_version varchar, dagster_run_id varchar, scored_at timestamptz,
    day date
)
"""


def _validate_day(connection: duckdb.DuckDBPyConnection, day: str) -> list[dict[str, Any]]:
    checks = [
        ("pandera", "raw_transactions_contract", "raw_transactions", f"run-ingest-{day}"),
        ("dbt", "unique_fct_transactions_transaction_id", "fct_transactions", f"run-dbt-{day}"),
        ("great_expectations", "stg_transactions_suite", "stg_landing__transactions", f"run-dbt-{day}"),
        ("pandera", "transaction_features_schema", "transaction_features", f"run-features-{day}"),
    ]
    for tool, name, asset, run_id in checks:
        audit.record(
            connection,
            audit.ValidationResult(
                day=dt.date.fromisoformat(day),
                tool=tool,
                check_name=name,
                asset=asset,
                passed=True,
                details={"unexpected": 0},
                dagster_run_id=run_id,
            ),
        )
    return [{"tool": t, "check_name": n, "asset": a, "dagster_run_id": r} for t, n, a, r in checks]


def _train_and_register(connection: duckdb.DuckDBPyConnection, version: str, start: str) -> dict[str, Any]:
    truth = {
        "mlflow_run_id": f"mlf-{version}",
        "train_start": start,
        "train_end": (dt.date.fromisoformat(start) + dt.timedelta(days=6)).isoformat(),
        "data_digest": f"{version}" * 64,
        "artifact_sha256": f"{int(version) + 10:x}" * 64,
        "training_run": f"run-train-{version}",
    }
    audit.record(
        connection,
        audit.TrainingRun(
            model_name=LINEAGE_MODEL,
            mlflow_run_id=truth["mlflow_run_id"],
            train_start=dt.date.fromisoformat(truth["train_start"]),
            train_end=dt.date.fromisoformat(truth["train_end"]),
            data_digest=truth["data_digest"],
            row_count=1000 * int(version),
            feature_set_version=LINEAGE_FEATURE_SET,
            metrics={
                "roc_auc": 0.86 + int(version) / 100,
                "average_precision": 0.6,
                "card_precision_at_100": 0.3,
            },
            params={"num_leaves": 31, "learning_rate": 0.05},
            device="cpu",
            dagster_run_id=truth["training_run"],
            label_cutoff=dt.date.fromisoformat(truth["train_end"]) + dt.timedelta(days=7),
            evaluation={"protocol": "handbook", "holdout_days": 7, "threshold": LINEAGE_THRESHOLD},
        ),
    )
    _register(
        connection,
        version,
        truth["mlflow_run_id"],
        f"mlflow-artifacts:/1/{truth['mlflow_run_id']}/artifacts/model",
        truth["artifact_sha256"],
        truth["training_run"],
    )
    return truth


def _register(
    connection: duckdb.DuckDBPyConnection,
    version: str,
    mlflow_run_id: str,
    artifact_uri: str,
    artifact_sha256: str,
    dagster_run_id: str,
) -> None:
    audit.record(
        connection,
        audit.ModelVersion(
            model_name=LINEAGE_MODEL,
            model_version=version,
            mlflow_run_id=mlflow_run_id,
            artifact_uri=artifact_uri,
            artifact_sha256=artifact_sha256,
            feature_set_version=LINEAGE_FEATURE_SET,
            dagster_run_id=dagster_run_id,
        ),
    )


def _promote(
    connection: duckdb.DuckDBPyConnection, action: str, version: str, previous: str | None, actor: str
) -> audit.AuditRecord:
    return audit.record(
        connection,
        audit.Promotion(
            model_name=LINEAGE_MODEL,
            action=action,
            model_version=version,
            previous_version=previous,
            actor=actor,
            reason=f"{action} {version}"
            if actor.startswith("pipeline")
            else "v2 floods analysts <b>alerts</b>",
            metrics={"challenger": {"average_precision": 0.61}, "champion": {"average_precision": 0.6}},
            dagster_run_id=f"run-{action}-{version}" if actor.startswith("pipeline") else None,
        ),
    )


def score_partition(
    connection: duckdb.DuckDBPyConnection,
    day: str,
    version: str,
    digest: str,
    run_id: str,
    first_id: int,
    n: int,
) -> list[dict[str, Any]]:
    """What the scoring writer does: replace the partition and append its record, in one transaction."""
    rng = random.Random(f"{day}{version}")
    scored_at = dt.datetime(2018, 8, 1, 6, tzinfo=dt.UTC) + dt.timedelta(days=int(version))
    rows = []
    for i in range(n):
        score = round(rng.random(), 4)
        rows.append(
            {
                "transaction_id": first_id + i,
                "tx_datetime": dt.datetime.fromisoformat(f"{day}T0{i}:15:00+00:00"),
                "customer_id": 100 + i,
                "terminal_id": 900 + i,
                "score": score,
                "decision": score >= LINEAGE_THRESHOLD,
                "reason_1": "terminal_id_risk_7day_window high",
                "reason_2": "tx_amount high" if i % 2 else None,
                "reason_3": None,
                "model_name": LINEAGE_MODEL,
                "model_version": int(version),
                "feature_set_version": LINEAGE_FEATURE_SET,
                "dagster_run_id": run_id,
                "scored_at": scored_at,
                "day": dt.date.fromisoformat(day),
            }
        )
    connection.execute("begin transaction")
    connection.execute(f"delete from {SCORES_TABLE} where day = ?", [day])
    connection.executemany(
        f"insert into {SCORES_TABLE} values ({', '.join('?' * 15)})", [list(r.values()) for r in rows]
    )
    audit.record(
        connection,
        audit.ScoringRun(
            day=dt.date.fromisoformat(day),
            model_name=LINEAGE_MODEL,
            model_version=version,
            artifact_sha256=digest,
            feature_set_version=LINEAGE_FEATURE_SET,
            row_count=n,
            checks=[{"name": "stg_transactions_suite", "tool": "great_expectations", "passed": True}],
            dagster_run_id=run_id,
            mlflow_run_id=f"mlf-{version}",
            upstream_runs={
                "raw_transactions": f"run-ingest-{day}",
                "transaction_features": f"run-features-{day}",
            },
        ),
    )
    connection.execute("commit")
    return rows


def build_lineage_warehouse(path: Path) -> dict[str, Any]:
    """A warehouse as a few days of the pipeline leave it, and the truth of what happened, to check against.

    v1 is trained and promoted and scores 2018-04-02; v2 replaces it and scores 2018-04-03; a person rolls
    back to v1, which rescores 2018-04-03. 2018-04-04 is never scored.
    """
    with connect(path) as connection:
        connection.execute(LINEAGE_SCORES_DDL)
        models = {"1": _train_and_register(connection, "1", "2018-04-01")}
        _promote(connection, "promote", "1", None, "pipeline:model_promotion")
        checks = {"2018-04-02": _validate_day(connection, "2018-04-02")}
        scored = {
            "2018-04-02": score_partition(
                connection, "2018-04-02", "1", models["1"]["artifact_sha256"], "run-s2", 1, 5
            )
        }
        models["2"] = _train_and_register(connection, "2", "2018-04-08")
        _promote(connection, "promote", "2", "1", "pipeline:model_promotion")
        checks["2018-04-03"] = _validate_day(connection, "2018-04-03")
        score_partition(connection, "2018-04-03", "2", models["2"]["artifact_sha256"], "run-s3", 101, 6)
        _promote(connection, "rollback", "1", "2", "alice")
        scored["2018-04-03"] = score_partition(
            connection, "2018-04-03", "1", models["1"]["artifact_sha256"], "run-r3", 101, 4
        )
    return {"models": models, "checks": checks, "scored": scored}


# --- an MLflow run with plots, for the model report ------------------------------------------------------

PNG_PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
"""A one-pixel PNG: a plot as MLflow stores it, without drawing one."""


def version_with_plots(settings: Settings, root: Path, plots: Sequence[str]) -> str:
    """Version 3 of ``LINEAGE_MODEL`` as the registry records it, trained by a finished MLflow run that logged
    ``plots`` (``PNG_PIXEL`` each, under ``plots/``; artifacts under ``root``), then the snapshot published:
    what ``txguard report model 3`` reads. Returns the MLflow run id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.create_experiment("txguard", artifact_location=(root / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    folder = root / "plots"
    folder.mkdir()
    for name in plots:
        (folder / name).write_bytes(PNG_PIXEL)
    client.log_artifacts(run_id, str(folder), artifact_path="plots")
    client.set_terminated(run_id)
    with connect(settings.warehouse_path) as live:
        _register(live, "3", run_id, f"runs:/{run_id}/model", "e" * 64, "run-train-3")
    publish(settings)
    return run_id


# --- a scored world: what the pipeline records for a real model that scores real feature partitions -----


def build_scored_world(
    settings: Settings,
    training_set: TrainingSet,
    trained: TrainedModel,
    days: Sequence[dt.date],
    gate_run_id: str = "run-dbt",
) -> dict[str, Any]:
    """``trained`` logged and registered in MLflow, promoted by a person, and scoring ``days`` of the lake's
    feature partitions into the warehouse, with every audit record the pipeline writes on the way and the
    analysts' snapshot published. ``gate_run_id`` is the run that evaluated the Great Expectations gate."""
    from jobs.registry.aliases import CHAMPION, resolve_alias
    from jobs.registry.client import open_client
    from jobs.registry.decision_records import record_decision, record_training
    from jobs.registry.promotion import promote
    from jobs.registry.tracking import load_verified_booster, log_training_run
    from jobs.scoring.batch import score_days

    uri = settings.tracking_uri
    open_client(uri)
    run = log_training_run(
        training_set, trained, tracking_uri=uri, artifact_root=settings.mlflow_artifact_root
    )
    record_training(settings, run, "run-training")
    record_decision(settings, promote(run.ref.version, "first model", "risk-officer", tracking_uri=uri), None)
    champion = resolve_alias(CHAMPION, tracking_uri=uri)
    booster = load_verified_booster(champion, tracking_uri=uri)
    gate = {
        "name": "gx_suite",
        "asset": "stg_landing__transactions",
        "tool": "great_expectations",
        "passed": True,
        "dagster_run_id": gate_run_id,
    }
    created = dt.datetime(2018, 8, 1, 6, tzinfo=dt.UTC)
    score_days(settings, days, champion, booster, run_id="run-scoring", run_created_at=created, checks=[gate])
    publish(settings)
    return {"champion": champion, "booster": booster, "training": run, "days": list(days)}


CUTOFF_OFFSET_DAYS = 35
"""The model's labels end 35 days after the lake's first day (2018-05-06, a Sunday)."""


def score_around_cutoff(settings: Settings) -> dict[str, object]:
    """A model whose labels end at the cutoff scores the cutoff day, the day before and the two ISO weeks
    after it; everything is recorded as the pipeline records it and the snapshot is published."""
    from jobs.platform.catalog import publish
    from jobs.registry.client import open_client
    from jobs.registry.decision_records import record_training
    from jobs.registry.tracking import load_verified_booster, log_training_run
    from jobs.scoring.batch import score_days
    from jobs.training.trainer import assemble_training_set, feature_days, matured_window, train_model

    first = feature_days(settings.lake)[0]
    cutoff = first + dt.timedelta(days=CUTOFF_OFFSET_DAYS)
    data = assemble_training_set(settings.lake, matured_window(cutoff, earliest_day=first))
    open_client(settings.tracking_uri)
    run = log_training_run(
        data,
        train_model(data, FAST, device="cpu"),
        tracking_uri=settings.tracking_uri,
        artifact_root=settings.mlflow_artifact_root,
    )
    record_training(settings, run, "run-training")
    days = [cutoff + dt.timedelta(days=i) for i in range(-1, 15)]
    booster = load_verified_booster(run.ref, tracking_uri=settings.tracking_uri)
    created = dt.datetime(2018, 6, 1, tzinfo=dt.UTC)
    score_days(settings, days, run.ref, booster, run_id="run-scoring", run_created_at=created)
    publish(settings)
    return {"cutoff": cutoff, "start": days[0], "end": days[-1]}
