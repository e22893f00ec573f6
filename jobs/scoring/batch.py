"""Scoring a day of features with one pinned model version: score, decision, reason codes, provenance.

``score_features`` is pure (a DataFrame in, a DataFrame out). ``score_days`` is the batch around it: it
reads each day's feature partition from the lake and replaces that day in the warehouse
(``jobs.scoring.store``), all with the one model version the caller resolved for the whole run.
``score_out_of_time`` is what a run uses: a day is scored only by a model whose label cutoff is before it,
the champion for the days after its cutoff and as-of models for the history before
(``jobs.training.asof``); days no model may score yet stay unscored, with the reason.

Reason codes are the three largest positive LightGBM contributions (``pred_contrib=True``, exact TreeSHAP) of
a row, as feature names. TreeSHAP costs far more than a plain prediction (``python -m benchmarks scoring``
measures it), so by default (``explain="review"``) they are computed for the rows people review: every alert
(``decision``) and the highest-scored transaction of each of the day's ``REVIEW_TOP_CARDS`` top cards
(investigators work through cards by score, the handbook's card precision@100). Other rows carry null reasons;
``explain="all"`` explains every row.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from jobs.features.definitions import FEATURE_COLUMNS, KEY_COLUMNS, require_feature_set
from jobs.platform import storage
from jobs.platform.layout import TRANSACTION_FEATURES, parse_day, partition_uri
from jobs.scoring.store import REASON_COLUMNS, PartitionWrite, open_store, write_partition

if TYPE_CHECKING:
    import lightgbm

    from jobs.platform.settings import Settings
    from jobs.registry.aliases import ModelRef
    from jobs.registry.tracking import RunOrigin

Explain = Literal["review", "all", "none"]
REVIEW_TOP_CARDS = 100
PREVIEW_ALERTS = 5
"""The day's highest-scored alerts kept for the run's preview: a glance, not the investigators' list."""
PREVIEW_COLUMNS = ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "score", *REASON_COLUMNS)
VERSION_COLUMN = "feature_set_version"


class ScoringInputError(ValueError):
    """Features that cannot be scored; the message names the source, the row and the rule."""


class MissingFeatures(ScoringInputError):
    """A partition to score has no feature partition in the lake."""


@dataclass(frozen=True)
class ScoredDay:
    """One partition written: what the run's metadata, its checks and the audit trail report."""

    write: PartitionWrite
    explained_rows: int
    score_seconds: float
    feature_rows: int
    top_alerts: pd.DataFrame


def _check_input(features: pd.DataFrame, names: list[str], model: ModelRef, source: str) -> np.ndarray:
    """The feature matrix in the model's column order, after the checks scoring relies on."""
    missing = [c for c in (*KEY_COLUMNS, *names, VERSION_COLUMN) if c not in features.columns]
    if missing:
        raise ScoringInputError(f"{source}: missing column(s) {', '.join(missing)}")
    for found in features[VERSION_COLUMN].unique():
        require_feature_set(
            model.feature_set_version, str(found), f"{source} for {model.name} v{model.version}"
        )
    keys = features[list(KEY_COLUMNS)].isna().to_numpy()
    matrix = features[names].to_numpy(dtype=np.float64)
    null = np.concatenate([keys, np.isnan(matrix)], axis=1)
    if null.any():
        row, column = (int(i) for i in np.argwhere(null)[0])
        raise ScoringInputError(
            f"{source}, row {row + 1}: {[*KEY_COLUMNS, *names][column]} is null; rule: keys and features "
            f"may not be null or NaN ({int(null.any(axis=1).sum())} row(s) affected)"
        )
    return matrix


def review_rows(
    customer_ids: np.ndarray, transaction_ids: np.ndarray, scores: np.ndarray, top_cards: int
) -> np.ndarray:
    """Positions of the highest-scored transaction of each of the ``top_cards`` best-scored cards.

    Ties break on the smaller transaction id, so the same day always gives the same rows.
    """
    ranked = np.lexsort((transaction_ids, -scores))
    _, first = np.unique(customer_ids[ranked], return_index=True)
    return ranked[np.sort(first)[:top_cards]]


def reason_codes(booster: lightgbm.Booster, matrix: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """The top three positive contributions of each row as feature names (None where fewer are positive)."""
    labels = np.full((len(matrix), len(REASON_COLUMNS)), None, dtype=object)
    if len(matrix) == 0:
        return labels
    contributions = np.asarray(booster.predict(matrix, pred_contrib=True))[:, : len(names)]
    top = np.argsort(-contributions, axis=1, kind="stable")[:, : len(REASON_COLUMNS)]
    values = np.take_along_axis(contributions, top, axis=1)
    labels[:, : top.shape[1]] = np.asarray(names, dtype=object)[top]
    labels[:, : top.shape[1]][values <= 0] = None
    return labels


def score_features(
    features: pd.DataFrame,
    booster: lightgbm.Booster,
    model: ModelRef,
    run_id: str,
    run_created_at: dt.datetime,
    *,
    explain: Explain = "review",
    source: str = "features",
) -> pd.DataFrame:
    """Scores, decisions, reason codes and provenance for each row of ``features`` (one row per row).

    The rows are a batch for ``jobs.scoring.store.write_partition``, which adds ``scored_at`` as it writes.
    """
    if run_created_at.tzinfo is None:
        raise ValueError("run_created_at must be timezone-aware (UTC)")
    names = list(booster.feature_name())
    if names != list(FEATURE_COLUMNS):
        raise ScoringInputError(
            f"{model.name} v{model.version}: model features {names} differ from the feature set"
        )
    matrix = _check_input(features, names, model, source)
    scores = np.asarray(booster.predict(matrix), dtype=np.float64) if len(matrix) else np.empty(0)
    decisions = scores >= model.threshold
    reasons = np.full((len(matrix), len(REASON_COLUMNS)), None, dtype=object)
    if explain == "all":
        reasons = reason_codes(booster, matrix, names)
    elif explain == "review":
        chosen = decisions.copy()
        customers = features["customer_id"].to_numpy()
        chosen[review_rows(customers, features["transaction_id"].to_numpy(), scores, REVIEW_TOP_CARDS)] = True
        reasons[chosen] = reason_codes(booster, matrix[chosen], names)
    stamps = features["tx_datetime"].reset_index(drop=True)
    stamps = (
        stamps.dt.tz_convert("UTC")
        if isinstance(stamps.dtype, pd.DatetimeTZDtype)
        else pd.to_datetime(stamps, utc=True)
    )
    days = pa.array(stamps.dt.tz_localize(None).to_numpy().astype("datetime64[D]"), type=pa.date32())
    return pd.DataFrame(
        {
            "transaction_id": features["transaction_id"].to_numpy(dtype=np.int64),
            "tx_datetime": stamps,
            "customer_id": features["customer_id"].to_numpy(dtype=np.int64),
            "terminal_id": features["terminal_id"].to_numpy(dtype=np.int64),
            "score": scores,
            "decision": decisions,
            **{name: reasons[:, i] for i, name in enumerate(REASON_COLUMNS)},
            "model_name": model.name,
            "model_version": model.version,
            "feature_set_version": model.feature_set_version,
            "dagster_run_id": run_id,
            "run_created_at": pd.Timestamp(run_created_at).tz_convert("UTC"),
            "day": pd.Series(days, dtype=pd.ArrowDtype(pa.date32())),
        }
    )


def require_features(lake: str, days: Sequence[dt.date]) -> dict[dt.date, str]:
    """Each day's feature partition URI; any missing one stops the run before anything is written."""
    uris = {day: partition_uri(lake, TRANSACTION_FEATURES, day) for day in days}
    missing = [f"{day} ({uri})" for day, uri in uris.items() if not storage.exists(uri)]
    if missing:
        raise MissingFeatures(
            f"transaction_features partition(s) missing for {', '.join(missing)}: materialize "
            "transaction_features for these days first; nothing was scored or written"
        )
    return uris


def score_days(
    settings: Settings,
    days: Sequence[dt.date],
    model: ModelRef,
    booster: lightgbm.Booster,
    *,
    run_id: str,
    run_created_at: dt.datetime,
    checks: Sequence[Mapping[str, Any]] = (),
    upstream_runs: Mapping[dt.date, Mapping[str, str]] | None = None,
    explain: Explain = "review",
) -> list[ScoredDay]:
    """Score and write each day with ``model``; each day is replaced atomically with its audit record.

    Checks that name an ``asset`` are upstream validations (pandera, dbt, Great Expectations): each is
    recorded for the day before the day's scoring record, so the audit chain shows what gated it. A broken
    audit chain stops the day before anything is written, and each day's new chain head is kept in MLflow.
    """
    from jobs.governance.audit import MlflowHeads, ScoringRun, ValidationResult, anchored, record

    uris = require_features(settings.lake, days)
    heads = MlflowHeads.of(settings)
    done = []
    with open_store(settings.warehouse_path) as connection:
        for day in days:
            started = time.perf_counter()
            features = storage.read_parquet(uris[day]).to_pandas()
            scores = score_features(
                features, booster, model, run_id, run_created_at, explain=explain, source=uris[day]
            )
            explained = int(scores["reason_1"].notna().sum())
            seconds = time.perf_counter() - started
            entry = ScoringRun(
                day=day,
                model_name=model.name,
                model_version=str(model.version),
                artifact_sha256=model.artifact_sha256,
                feature_set_version=model.feature_set_version,
                row_count=len(scores),
                checks=[dict(c) for c in checks],
                dagster_run_id=run_id,
                mlflow_run_id=model.run_id,
                upstream_runs=dict((upstream_runs or {}).get(day, {})),
            )
            with anchored(connection, heads, f"scoring {day}", run_id):
                for check in checks:
                    if "asset" in check:
                        record(
                            connection,
                            ValidationResult(
                                day=day,
                                tool=str(check["tool"]),
                                check_name=str(check["name"]),
                                asset=str(check["asset"]),
                                passed=bool(check["passed"]),
                                details=dict(check),
                                dagster_run_id=check.get("dagster_run_id"),
                            ),
                        )
                write = write_partition(connection, day, scores, audit_entry=entry)
            done.append(ScoredDay(write, explained, seconds, len(features), top_alerts(scores)))
    return done


@dataclass(frozen=True)
class OutOfTimeRun:
    """What ``score_out_of_time`` did: the days each model scored, in time order, and the days left."""

    scored: list[tuple[ModelRef, list[ScoredDay]]]
    unscored: dict[dt.date, str]

    @property
    def days(self) -> list[ScoredDay]:
        return sorted((d for _, days in self.scored for d in days), key=lambda d: d.write.day)


def model_checks(model: ModelRef) -> list[dict[str, object]]:
    """The checks scoring itself passed for a model, recorded with each day it scores."""
    return [
        {"name": "artifact_sha256", "tool": "txguard", "passed": True, "sha256": model.artifact_sha256},
        {
            "name": "feature_set_version",
            "tool": "txguard",
            "passed": True,
            "version": model.feature_set_version,
        },
        {
            "name": "out_of_time",
            "tool": "txguard",
            "passed": True,
            "label_cutoff": model.label_cutoff.isoformat() if model.label_cutoff else None,
        },
    ]


def score_out_of_time(
    settings: Settings,
    days: Sequence[dt.date],
    champion: ModelRef,
    *,
    run_id: str,
    run_created_at: dt.datetime,
    checks: Sequence[Mapping[str, Any]] = (),
    upstream_runs: Mapping[dt.date, Mapping[str, str]] | None = None,
    origin: RunOrigin | None = None,
    explain: Explain = "review",
) -> OutOfTimeRun:
    """Score each day with a model that never saw it: ``champion`` after its label cutoff, else the as-of
    model of the day's block, trained (or reused) in time order at ``settings.asof_cadence_days``.

    A day whose as-of model cannot exist yet, or cannot be trained (too little history, one class), is left
    unscored with the reason; every other day is written as ``score_days`` writes it.
    """
    from jobs.registry.asof import asof_model
    from jobs.registry.tracking import load_verified_booster
    from jobs.training.asof import plan_out_of_time
    from jobs.training.trainer import TrainingDataError, feature_days

    require_features(settings.lake, days)
    lake_days = feature_days(settings.lake)
    plan = plan_out_of_time(
        days, champion.label_cutoff, lake_days[0] if lake_days else None, settings.asof_cadence_days
    )
    unscored = dict(plan.unscored)
    assigned: list[tuple[ModelRef, list[dt.date]]] = []
    for cutoff, block in plan.asof_days.items():
        try:
            model = asof_model(settings, cutoff, origin=origin, dagster_run_id=run_id)
        except TrainingDataError as error:
            why = f"its as-of model (labels up to {cutoff}) cannot be trained: {error}"
            unscored.update(dict.fromkeys(block, why))
            continue
        assigned.append((model, block))
    if plan.champion_days:
        assigned.append((champion, plan.champion_days))
    scored = []
    for model, block in assigned:
        booster = load_verified_booster(model, tracking_uri=settings.tracking_uri)
        written = score_days(
            settings,
            block,
            model,
            booster,
            run_id=run_id,
            run_created_at=run_created_at,
            checks=[*model_checks(model), *checks],
            upstream_runs=upstream_runs,
            explain=explain,
        )
        scored.append((model, written))
    return OutOfTimeRun(scored, dict(sorted(unscored.items())))


def top_alerts(scores: pd.DataFrame, limit: int = PREVIEW_ALERTS) -> pd.DataFrame:
    """The ``limit`` highest-scored alerts of a scored batch, ties to the smaller transaction id."""
    alerts = scores[scores["decision"]].sort_values(["score", "transaction_id"], ascending=[False, True])
    return alerts.loc[:, list(PREVIEW_COLUMNS)].head(limit).reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.scoring.batch --from D --to D``: score out of time outside Dagster (ops, debug)."""
    from jobs.platform.catalog import publish
    from jobs.platform.layout import SCORES_TABLE
    from jobs.platform.settings import load_settings
    from jobs.registry.aliases import CHAMPION, resolve_alias
    from jobs.scoring.store import PARTITIONS_TABLE

    parser = argparse.ArgumentParser(prog="python -m jobs.scoring.batch", description=__doc__)
    parser.add_argument("--from", dest="start", required=True, type=parse_day)
    parser.add_argument("--to", dest="end", required=True, type=parse_day)
    args = parser.parse_args(argv)
    settings = load_settings()
    champion = resolve_alias(CHAMPION, tracking_uri=settings.tracking_uri)
    days = [args.start + dt.timedelta(days=i) for i in range((args.end - args.start).days + 1)]
    run_id = f"cli-{uuid.uuid4()}"
    done = score_out_of_time(settings, days, champion, run_id=run_id, run_created_at=dt.datetime.now(dt.UTC))
    for model, scored_days in done.scored:
        for scored in scored_days:
            write = scored.write
            print(
                f"{write.day}: {write.rows} rows, {write.alerts} alerts, {model.name} v{model.version} "
                f"({model.trained_up_to})"
            )
    for day, reason in done.unscored.items():
        print(f"{day}: not scored, {reason}")
    publish(settings, days, relations=(SCORES_TABLE, PARTITIONS_TABLE))
    print(f"snapshot published at {settings.snapshot_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
