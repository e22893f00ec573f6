"""Lineage answers rebuilt from the warehouse's records: from a scored row back to model, data, checks, code.

Every answer is a plain JSON-able dict (``title`` and a one-paragraph ``summary`` first, then one section per
key) so that one set of renderers serves all three questions: text, JSON, and a self-contained HTML page to
archive, drawn from the Jinja2 templates in ``templates/``. A hole in the trail (a score without its scoring
record, a digest that changed) is never papered over: it is listed under ``gaps``.

    transaction_lineage(connection, transaction_id, explain=None, links=UiLinks())
    partition_lineage(connection, day, links=UiLinks())
    model_lineage(connection, version, model_name=None, links=UiLinks())
    render(answer, "text" | "json" | "html")

Reason codes are stored as feature names only, for the rows people review. ``ReasonExplainer`` adds each
reason's feature value and contribution when a person asks: it reads the row from the feature partition in
the lake and recomputes LightGBM's ``pred_contrib`` for that one row with the registered, SHA-256-verified
booster. That costs one row's TreeSHAP per question instead of wider score rows for every scored day, so
scoring throughput is untouched, and any scored row can be explained, reviewed or not. The recomputed score
and reasons are compared with the stored ones: a difference (a partition rebuilt since) is a gap.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from jobs.governance.audit import SCHEMA, has_ledger
from jobs.platform.layout import SCORES_TABLE, parse_day
from jobs.platform.settings import DEFAULT_MLFLOW_UI_URL

if TYPE_CHECKING:
    import duckdb
    import jinja2
    import lightgbm
    import pandas as pd

FORMATS = ("text", "json", "html")
DEFAULT_DAGSTER_UI = "http://127.0.0.1:3000"
"""Where ``txguard ui`` (``make ui``) serves Dagster."""
REASON_COUNT = 3
"""As many reasons as the scores table stores (``reason_1..3``)."""
SCORE_TOLERANCE = 1e-9
"""How far a recomputed score may be from the stored one: the same booster on the same row gives the same
double, so anything beyond rounding means the features changed."""

_JSON_COLUMNS = {
    "metrics",
    "params",
    "evaluation",
    "checks",
    "upstream_runs",
    "details",
    "values",
    "model_versions",
}
_TITLES = {
    "subject": "Question",
    "decision": "Score and decision",
    "reasons": "Reasons",
    "explained": "How the reasons were obtained",
    "champion": "Champion when scored",
    "champion_periods": "Periods as champion",
    "scoring_periods": "Scoring, by period",
    "gating_checks": "Checks that gated scoring",
    "validation": "Validation results of the partition",
    "runs": "Dagster runs of each step",
    "code": "Code (git commits)",
    "links": "Links",
    "audit_records": "Audit records used",
    "scoring_runs": "Scoring runs",
    "gaps": "Gaps in the record",
}


class LineageNotFound(LookupError):
    """The question names something the records do not know (a transaction, a day, a model version)."""


class ExplanationUnavailable(RuntimeError):
    """A row's reasons cannot be recomputed (no model store, no feature partition); the answer says why.

    ``integrity`` marks a refusal that is itself a hole in the record (an artifact that is not the one
    registered), listed as a gap.
    """

    def __init__(self, message: str, integrity: bool = False) -> None:
        super().__init__(message)
        self.integrity = integrity


@dataclass(frozen=True)
class UiLinks:
    """Where people open what an answer names: the MLflow and Dagster UIs and the Great Expectations docs."""

    mlflow: str = DEFAULT_MLFLOW_UI_URL
    dagster: str = DEFAULT_DAGSTER_UI
    data_docs: str | None = None
    """The Data Docs index page (a ``file://`` URL), when it has been built."""

    def section(self, model_name: str, version: str, mlflow_run_id: str | None) -> dict[str, str | None]:
        mlflow = self.mlflow.rstrip("/")
        return {
            "mlflow_model_version": f"{mlflow}/#/models/{quote(model_name)}/versions/{quote(str(version))}",
            "mlflow_run": f"{mlflow}/#/runs/{quote(mlflow_run_id)}" if mlflow_run_id else None,
            "dagster_ui": self.dagster.rstrip("/"),
            "gx_data_docs": self.data_docs,
        }


@dataclass(frozen=True)
class Explanation:
    """One row's reasons recomputed: each with its feature value and contribution (log-odds)."""

    reasons: list[dict[str, Any]]
    score: float
    base_value: float
    """The model's expected raw score: score = sigmoid(base_value + the sum of all contributions)."""
    method: str
    problems: list[str] = field(default_factory=list)
    """Where the recomputation disagrees with what was stored: gaps in the record."""


Explainer = Callable[[dict[str, Any], str | None], Explanation]
"""Called with the scored row and the artifact SHA-256 the audit records registered for its model."""


def _iso(value: dt.datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.isoformat() + "Z"


def _jsonable(column: str, value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return _iso(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if column in _JSON_COLUMNS and isinstance(value, str):
        return json.loads(value)
    return value


def fetch_records(
    connection: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()
) -> list[dict[str, Any]]:
    cursor = connection.execute(sql, list(params))
    names = [column[0] for column in cursor.description or []]
    return [{n: _jsonable(n, v) for n, v in zip(names, row, strict=True)} for row in cursor.fetchall()]


def relation_exists(connection: duckdb.DuckDBPyConnection, schema: str, name: str) -> bool:
    row = connection.execute(
        "select count(*) from (select schema_name, table_name as name from duckdb_tables()"
        " union all select schema_name, view_name from duckdb_views()) where schema_name = ? and name = ?",
        [schema, name],
    ).fetchone()
    return bool(row and row[0])


class _Trail:
    """Reads audit records for one answer and remembers which records it used and what it could not find."""

    def __init__(self, connection: duckdb.DuckDBPyConnection) -> None:
        self.connection = connection
        self.ledger = has_ledger(connection)
        self.used: dict[int, dict[str, Any]] = {}
        self.gaps: list[str] = []
        if not self.ledger:
            self.gaps.append("this warehouse holds no audit records (schema audit is missing)")

    def find(self, kind: str, where: str, params: Sequence[Any], order: str = "seq desc") -> list[dict]:
        if not self.ledger:
            return []
        return fetch_records(
            self.connection, f"select * from {SCHEMA}.{kind} where {where} order by {order}", params
        )

    def use(self, kind: str, row: dict[str, Any] | None, missing: str = "") -> dict[str, Any] | None:
        """Cite ``row`` in the answer, or note ``missing`` as a gap when there is no such record."""
        if row is None:
            if self.ledger:
                self.gaps.append(missing)
            return None
        self.used[row["seq"]] = {"seq": row["seq"], "kind": kind, "record_hash": row["record_hash"]}
        return row

    def latest(self, kind: str, where: str, params: Sequence[Any], missing: str) -> dict[str, Any] | None:
        found = self.find(kind, where, params)
        return self.use(kind, found[0] if found else None, missing)

    def records(self) -> list[dict[str, Any]]:
        return [self.used[seq] for seq in sorted(self.used)]


def champion_periods(promotions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """When each version was champion, from promotion and rollback records in chain order."""
    periods: list[dict[str, Any]] = []
    for record in sorted(promotions, key=lambda row: row["seq"]):
        if record["action"] == "reject" or (
            periods and periods[-1]["model_version"] == record["model_version"]
        ):
            continue
        if periods:
            periods[-1]["until"] = record["recorded_at"]
            periods[-1]["ended_by"] = f"{record['action']} to {record['model_version']} by {record['actor']}"
        periods.append(
            {
                "model_version": record["model_version"],
                "since": record["recorded_at"],
                "until": None,
                "became_champion_by": f"{record['action']} by {record['actor']}",
                "reason": record["reason"],
                "ended_by": None,
            }
        )
    return periods


def scoring_periods(
    scorings: Sequence[dict[str, Any]], current: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Scoring records of one version folded into runs of consecutive days, one line each.

    A day's rows are those of its latest scoring by the version; ``current`` maps a day to the version whose
    scores it holds now, so that days rescored since by another version are counted as replaced.
    """
    by_day: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(scorings, key=lambda r: r["seq"]):
        by_day.setdefault(row["day"], []).append(row)
    periods: list[dict[str, Any]] = []
    previous: dt.date | None = None
    for day in sorted(by_day):
        date = dt.date.fromisoformat(day)
        if previous is None or date != previous + dt.timedelta(days=1):
            periods.append({"first_day": day, "records": []})
        periods[-1]["last_day"] = day
        periods[-1]["records"].append(by_day[day])
        previous = date
    folded = []
    for period in periods:
        days = period.pop("records")
        rows = [row for scored in days for row in scored]
        version = rows[0]["model_version"]
        first, last = period["first_day"], period["last_day"]
        folded.append(
            {
                "days": first if first == last else f"{first}..{last}",
                "day_count": len(days),
                "rows": sum(scored[-1]["row_count"] for scored in days),
                "dagster_run_ids": list(dict.fromkeys(row["dagster_run_id"] for row in rows)),
                "scorings": len(rows),
                "replaced_days": sum(
                    1 for scored in days if current and current.get(scored[-1]["day"], version) != version
                ),
                "first_seq": min(row["seq"] for row in rows),
                "last_seq": max(row["seq"] for row in rows),
            }
        )
    return folded


def _model_section(
    trail: _Trail, model_name: str, version: str, scored_digest: str | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    registered = trail.latest(
        "model_versions",
        "model_name = ? and model_version = ?",
        [model_name, version],
        f"no model_versions record for {model_name} version {version}",
    )
    section: dict[str, Any] = {"model_name": model_name, "model_version": version}
    if registered:
        keys = ("artifact_sha256", "artifact_uri", "mlflow_run_id", "feature_set_version")
        section |= {key: registered[key] for key in keys} | {"registered_at": registered["recorded_at"]}
        if scored_digest and scored_digest != registered["artifact_sha256"]:
            trail.gaps.append(
                f"the artifact scored (sha256 {scored_digest}) is not the artifact registered as "
                f"{model_name} version {version} (sha256 {registered['artifact_sha256']})"
            )
    elif scored_digest:
        section["artifact_sha256"] = scored_digest
    return section, registered


def _training_record(trail: _Trail, mlflow_run_id: str | None) -> dict[str, Any] | None:
    if not mlflow_run_id:
        return None
    return trail.latest(
        "training_runs",
        "mlflow_run_id = ?",
        [mlflow_run_id],
        f"no training_runs record for MLflow run {mlflow_run_id}",
    )


def _training_section(training: dict[str, Any] | None) -> dict[str, Any] | None:
    if training is None:
        return None
    keys = ("mlflow_run_id", "train_start", "train_end", "label_cutoff", "data_digest", "row_count")
    more = ("feature_set_version", "device", "metrics", "evaluation", "recorded_at")
    return {key: training[key] for key in (*keys, *more)}


def threshold_of(training: dict[str, Any] | None) -> float | None:
    """The decision threshold the training run chose (recorded with its evaluation), if recorded."""
    value = ((training or {}).get("evaluation") or {}).get("threshold")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _champion_record(trail: _Trail, model_name: str, before_seq: int | None) -> dict[str, Any] | None:
    """The promotion or rollback in force when the scoring record was written."""
    where, params = "model_name = ? and action <> 'reject'", [model_name]
    if before_seq is not None:
        where, params = f"{where} and seq < ?", [*params, before_seq]
    found = trail.find("promotions", where, params)
    return trail.use(
        "promotions", found[0] if found else None, f"no promotion of {model_name} recorded before it scored"
    )


def _champion_section(promotion: dict[str, Any] | None, version: str) -> dict[str, Any] | None:
    if promotion is None:
        return None
    return {
        "champion_version": promotion["model_version"],
        "scored_by_champion": promotion["model_version"] == version,
        "since": promotion["recorded_at"],
        "action": promotion["action"],
        "actor": promotion["actor"],
        "reason": promotion["reason"],
        "metrics": promotion["metrics"],
    }


def _validation(trail: _Trail, day: str, before_seq: int | None) -> list[dict[str, Any]]:
    """The latest result of each check on the partition recorded before scoring: what gated it."""
    where, params = "day = ?", [day]
    if before_seq is not None:
        where, params = f"{where} and seq < ?", [*params, before_seq]
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in trail.find("validation_results", where, params):
        latest.setdefault((row["tool"], row["asset"], row["check_name"]), row)
    results = []
    for row in sorted(latest.values(), key=lambda r: r["seq"]):
        trail.use("validation_results", row)
        keys = ("tool", "asset", "check_name", "passed", "details", "dagster_run_id", "recorded_at")
        results.append({key: row[key] for key in keys})
    if trail.ledger and not results:
        trail.gaps.append(f"no validation result recorded for partition {day} before it was scored")
    failed = [f"{r['tool']}:{r['check_name']}" for r in results if not r["passed"]]
    if failed:
        trail.gaps.append(f"partition {day} was scored although these checks had failed: {', '.join(failed)}")
    return results


def _runs(steps: Sequence[tuple[str, str | None]]) -> list[dict[str, str]]:
    """Each (step, Dagster run id) once, in the order the pipeline ran them."""
    seen: set[tuple[str, str]] = set()
    runs = []
    for step, run_id in steps:
        if run_id and (step, run_id) not in seen:
            seen.add((step, run_id))
            runs.append({"step": step, "dagster_run_id": run_id})
    return runs


def _commit(row: dict[str, Any] | None) -> str | None:
    return row["git_commit"] if row else None


def _scored_trail(
    trail: _Trail, scoring: dict | None, model_name: str, version: str, day: str
) -> dict[str, Any]:
    """The sections every scored answer shares: model, training, features, champion, checks, runs, code."""
    scoring_seq = scoring["seq"] if scoring else None
    model, registered = _model_section(trail, model_name, version, scoring and scoring["artifact_sha256"])
    training = _training_record(trail, model.get("mlflow_run_id") or (scoring or {}).get("mlflow_run_id"))
    promotion = _champion_record(trail, model_name, scoring_seq)
    validation = _validation(trail, day, scoring_seq)
    features = {
        "scored_with": scoring["feature_set_version"] if scoring else None,
        "model_trained_on": model.get("feature_set_version"),
    }
    if features["scored_with"] and features["model_trained_on"] not in (None, features["scored_with"]):
        trail.gaps.append(
            f"features {features['scored_with']} were scored by a model trained on "
            f"{features['model_trained_on']}"
        )
    steps = list((scoring or {}).get("upstream_runs", {}).items())
    steps += [(f"{row['tool']}: {row['asset']}", row["dagster_run_id"]) for row in validation]
    steps += [
        ("training", training and training["dagster_run_id"]),
        ("registration", registered and registered["dagster_run_id"]),
        ("promotion", promotion and promotion["dagster_run_id"]),
        ("scoring", scoring and scoring["dagster_run_id"]),
    ]
    return {
        "model": model,
        "training": _training_section(training),
        "features": features,
        "champion": _champion_section(promotion, version),
        "gating_checks": scoring["checks"] if scoring else [],
        "validation": validation,
        "runs": _runs(steps),
        "code": {
            "scoring": _commit(scoring),
            "training": _commit(training),
            "registration": _commit(registered),
        },
    }


# --- reasons: feature values and contributions, recomputed for one row ----------------------------------


def top_reasons(
    names: Sequence[str], values: Sequence[float], contributions: Sequence[float]
) -> list[dict[str, Any]]:
    """The largest positive contributions, as scoring ranks them (ties keep the feature order)."""
    order = sorted(range(len(names)), key=lambda i: -contributions[i])[:REASON_COUNT]
    return [
        {
            "rank": rank,
            "feature": names[i],
            "value": float(values[i]),
            "contribution": float(contributions[i]),
        }
        for rank, i in enumerate((i for i in order if contributions[i] > 0), start=1)
    ]


@dataclass(frozen=True)
class ReasonExplainer:
    """Recomputes a scored row's reasons from the lake's feature partition and the verified model artifact."""

    lake: str
    tracking_uri: str

    def __call__(self, row: dict[str, Any], artifact_sha256: str | None) -> Explanation:
        import numpy as np

        from jobs.features.definitions import FEATURE_COLUMNS

        name, version, day = row["model_name"], int(row["model_version"]), row["day"]
        problems: list[str] = []
        booster = self._booster(name, version, artifact_sha256)
        frame, uri = self._feature_row(row["transaction_id"], day)
        found_set = str(frame["feature_set_version"].iloc[0])
        if found_set != row["feature_set_version"]:
            problems.append(
                f"{uri} now holds feature set {found_set} for transaction {row['transaction_id']}; it was "
                f"scored with {row['feature_set_version']}"
            )
        matrix = frame[list(FEATURE_COLUMNS)].to_numpy(dtype=np.float64)
        score = float(booster.predict(matrix)[0])
        contributions = np.asarray(booster.predict(matrix, pred_contrib=True))[0]
        reasons = top_reasons(FEATURE_COLUMNS, matrix[0], contributions[: len(FEATURE_COLUMNS)])
        if abs(score - row["score"]) > SCORE_TOLERANCE:
            problems.append(
                f"the features of transaction {row['transaction_id']} in {uri} give score {score:.6g} with "
                f"{name} version {version}, not the stored {row['score']:.6g}: the partition changed after "
                "it was scored"
            )
        stored = _stored(row)
        if stored and stored != [reason["feature"] for reason in reasons]:
            problems.append(
                f"the stored reasons ({', '.join(stored)}) differ from those recomputed "
                f"({', '.join(r['feature'] for r in reasons) or 'none'})"
            )
        method = (
            f"exact TreeSHAP (LightGBM pred_contrib) of {name} version {version}, its artifact verified "
            f"against the registered SHA-256, on the row of {uri}; contributions are in log-odds"
        )
        return Explanation(reasons, score, float(contributions[-1]), method, problems)

    def _booster(self, name: str, version: int, artifact_sha256: str | None) -> lightgbm.Booster:
        """The version's booster, only if its bytes hash to the SHA-256 the audit records registered."""
        from jobs.registry.aliases import model_ref
        from jobs.registry.client import ModelIntegrityError
        from jobs.registry.tracking import load_verified_booster

        store = self.tracking_uri.removeprefix("sqlite:///")
        if store != self.tracking_uri and not Path(store).exists():
            raise ExplanationUnavailable(f"no MLflow store at {store}")
        try:
            ref = model_ref(version, tracking_uri=self.tracking_uri, name=name)
            if artifact_sha256 and ref.artifact_sha256 != artifact_sha256:
                raise ModelIntegrityError(
                    f"MLflow registers {name} version {version} with SHA-256 {ref.artifact_sha256}, the audit"
                    f" records with {artifact_sha256}; its reasons are not recomputed"
                )
            return load_verified_booster(ref, tracking_uri=self.tracking_uri)
        except ModelIntegrityError as error:
            raise ExplanationUnavailable(str(error), integrity=True) from None
        except Exception as error:  # any failure of the store: the answer goes on without the values
            raise ExplanationUnavailable(
                f"{name} version {version} could not be loaded from MLflow {self.tracking_uri} "
                f"({type(error).__name__}: {error})"
            ) from None

    def _feature_row(self, transaction_id: int, day: str) -> tuple[pd.DataFrame, str]:
        import pyarrow.compute as pc

        from jobs.platform import storage
        from jobs.platform.layout import TRANSACTION_FEATURES, partition_uri

        uri = partition_uri(self.lake, TRANSACTION_FEATURES, day)
        if not storage.exists(uri):
            raise ExplanationUnavailable(f"the feature partition {uri} is not in the lake")
        table = storage.read_parquet(uri)
        found = table.filter(pc.equal(table["transaction_id"], transaction_id))
        if found.num_rows != 1:
            raise ExplanationUnavailable(
                f"{uri} holds {found.num_rows} rows for transaction {transaction_id}"
            )
        return found.to_pandas(), uri


def _reasons_section(
    trail: _Trail, row: dict[str, Any], explain: Explainer | None, artifact_sha256: str | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The reasons with their values and contributions, and how they were obtained."""
    stored = _stored(row)
    note = (
        "stored when the row was scored"
        if stored
        else "none stored: reasons are stored for alerts and each day's top cards only"
    )
    plain = [
        {"rank": rank, "feature": name, "value": None, "contribution": None}
        for rank, name in enumerate(stored, start=1)
    ]
    if explain is None:
        return plain, {"stored": note, "values": "not recomputed"}
    try:
        explanation = explain(row, artifact_sha256)
    except ExplanationUnavailable as error:
        if error.integrity:
            trail.gaps.append(str(error))
        return plain, {"stored": note, "values": f"unavailable: {error}"}
    trail.gaps.extend(explanation.problems)
    how = {
        "stored": note,
        "values": explanation.method,
        "base_value": explanation.base_value,
        "recomputed_score": explanation.score,
    }
    return explanation.reasons, how


# --- the three questions ---------------------------------------------------------------------------------


def transaction_lineage(
    connection: duckdb.DuckDBPyConnection,
    transaction_id: int,
    explain: Explainer | None = None,
    links: UiLinks | None = None,
) -> dict[str, Any]:
    """Which model scored this transaction, trained on what, gated by which checks, from which code.

    ``explain`` (a ``ReasonExplainer``) adds each reason's feature value and contribution.
    """
    schema, table = SCORES_TABLE.split(".")
    if not relation_exists(connection, schema, table):
        raise LineageNotFound(f"no transaction has been scored yet: {SCORES_TABLE} does not exist")
    found = fetch_records(
        connection,
        f"select * from {SCORES_TABLE} where transaction_id = ? order by scored_at desc limit 1",
        [transaction_id],
    )
    if not found:
        raise LineageNotFound(f"transaction {transaction_id} was never scored: it is not in {SCORES_TABLE}")
    row = found[0]
    version = str(row["model_version"])
    trail = _Trail(connection)
    scoring = trail.latest(
        "scoring_runs",
        "day = ? and dagster_run_id = ? and model_name = ? and model_version = ?",
        [row["day"], row["dagster_run_id"], row["model_name"], version],
        f"no scoring_runs record for partition {row['day']} written by run {row['dagster_run_id']}",
    )
    shared = _scored_trail(trail, scoring, row["model_name"], version, row["day"])
    shared["features"]["scored_with"] = row["feature_set_version"]
    if scoring and row["feature_set_version"] != scoring["feature_set_version"]:
        trail.gaps.append(
            f"the row carries feature set {row['feature_set_version']}, "
            f"its scoring record {scoring['feature_set_version']}"
        )
    threshold = threshold_of(shared["training"])
    decision = _decision(row["decision"])
    if threshold is None:
        if trail.ledger:
            trail.gaps.append(f"no decision threshold recorded for {row['model_name']} version {version}")
    elif (row["score"] >= threshold) != (decision == "alert"):
        trail.gaps.append(
            f"the stored decision ({decision}) does not follow from score {row['score']} and threshold "
            f"{threshold}"
        )
    reasons, explained = _reasons_section(trail, row, explain, shared["model"].get("artifact_sha256"))
    answer = {
        "title": f"Lineage of transaction {transaction_id}",
        "summary": "",
        "subject": {"transaction_id": transaction_id},
        "transaction": {
            key: row[key] for key in ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "day")
        },
        "decision": {
            "score": row["score"],
            "threshold": threshold,
            "decision": decision,
            "reasons": _stored(row),
            "scored_at": row["scored_at"],
            "dagster_run_id": row["dagster_run_id"],
        },
        "reasons": reasons,
        "explained": explained,
        **shared,
        "links": (links or UiLinks()).section(
            row["model_name"], version, shared["model"].get("mlflow_run_id")
        ),
        "audit_records": trail.records(),
        "gaps": trail.gaps,
    }
    answer["summary"] = _transaction_summary(answer)
    return answer


def _stored(row: dict[str, Any]) -> list[str]:
    return [row[f"reason_{i}"] for i in range(1, REASON_COUNT + 1) if row.get(f"reason_{i}")]


def _decision(value: Any) -> str:
    """A decision as a label: the scores table stores ``decision`` as a boolean (True = alert)."""
    if isinstance(value, bool):
        return "alert" if value else "no alert"
    return str(value)


def partition_lineage(
    connection: duckdb.DuckDBPyConnection, day: str | dt.date, links: UiLinks | None = None
) -> dict[str, Any]:
    """How one business day was scored: every scoring run of it, the current one's model and its gates."""
    key = day.isoformat() if isinstance(day, dt.date) else parse_day(day).isoformat()
    trail = _Trail(connection)
    history = trail.find("scoring_runs", "day = ?", [key], order="seq")
    schema, table = SCORES_TABLE.split(".")
    scores: dict[str, Any] = {"rows": 0}
    if relation_exists(connection, schema, table):
        summary = fetch_records(
            connection,
            f"select count(*) as rows, min(scored_at) as first_scored_at, max(scored_at) as last_scored_at,"
            f" list(distinct model_name || ' v' || model_version) as model_versions,"
            f" list(distinct dagster_run_id) as dagster_run_ids from {SCORES_TABLE} where day = ?",
            [key],
        )[0]
        decisions = fetch_records(
            connection,
            f"select decision, count(*) as n from {SCORES_TABLE} where day = ? group by 1 order by 1",
            [key],
        )
        scores = summary | {"decisions": {_decision(row["decision"]): row["n"] for row in decisions}}
    if not history and not scores["rows"]:
        raise LineageNotFound(
            f"partition {key} was never scored: no scoring record and no scores for that day"
        )
    current = trail.use("scoring_runs", history[-1] if history else None, f"no scoring_runs record for {key}")
    if current and scores["rows"] != current["row_count"]:
        trail.gaps.append(
            f"{SCORES_TABLE} holds {scores['rows']} rows for {key}; "
            f"its scoring record says {current['row_count']}"
        )
    if current:
        model_name, version = current["model_name"], current["model_version"]
    else:
        model_name, version = scores["model_versions"][0].rsplit(" v", 1)
    shared = _scored_trail(trail, current, model_name, version, key)
    for row in history:
        trail.use("scoring_runs", row)
    scores["threshold"] = threshold_of(shared["training"])
    answer = {
        "title": f"Lineage of partition {key}",
        "summary": "",
        "subject": {"day": key},
        "scores": scores,
        "scoring_runs": [
            {
                "seq": row["seq"],
                "recorded_at": row["recorded_at"],
                "model": f"{row['model_name']} v{row['model_version']}",
                "row_count": row["row_count"],
                "checks_passed": all(check.get("passed", False) for check in row["checks"]),
                "dagster_run_id": row["dagster_run_id"],
                "current": row is current,
            }
            for row in history
        ],
        **shared,
        "links": (links or UiLinks()).section(model_name, version, shared["model"].get("mlflow_run_id")),
        "audit_records": trail.records(),
        "gaps": trail.gaps,
    }
    answer["summary"] = _partition_summary(answer)
    return answer


def model_lineage(
    connection: duckdb.DuckDBPyConnection,
    version: str,
    model_name: str | None = None,
    links: UiLinks | None = None,
) -> dict[str, Any]:
    """What trained a model version, when it was champion, and what it scored, by period of days."""
    trail = _Trail(connection)
    if not trail.ledger:
        raise LineageNotFound("no model version has been registered: this warehouse holds no audit records")
    where, params = "model_version = ?", [str(version)]
    if model_name:
        where, params = f"{where} and model_name = ?", [*params, model_name]
    found = trail.find("model_versions", where, params)
    if not found:
        known = fetch_records(
            connection,
            f"select distinct model_name || ' v' || model_version as v"
            f" from {SCHEMA}.model_versions order by 1",
        )
        listed = ", ".join(row["v"] for row in known) or "none"
        named = f"{model_name} " if model_name else ""
        raise LineageNotFound(f"model {named}version {version} is not registered; known versions: {listed}")
    names = sorted({row["model_name"] for row in found})
    if len(names) > 1:
        raise LineageNotFound(
            f"version {version} exists for several models ({', '.join(names)}): name one with --model-name"
        )
    name = names[0]
    model, registered = _model_section(trail, name, str(version), None)
    training = _training_record(trail, model.get("mlflow_run_id"))
    promotions = trail.find("promotions", "model_name = ?", [name], order="seq")
    involved = [p for p in promotions if str(version) in (p["model_version"], p["previous_version"])]
    for row in involved:
        trail.use("promotions", row)
    scoring = trail.find("scoring_runs", "model_name = ? and model_version = ?", [name, str(version)], "seq")
    days = sorted({row["day"] for row in scoring})
    current: dict[str, str] = {}
    if days:
        for row in trail.find(
            "scoring_runs", "model_name = ? and day between ? and ?", [name, days[0], days[-1]]
        ):
            current.setdefault(row["day"], row["model_version"])
    periods = scoring_periods(scoring, current)
    steps = [
        ("training", training and training["dagster_run_id"]),
        ("registration", registered and registered["dagster_run_id"]),
    ]
    steps += [(f"{row['action']} to v{row['model_version']}", row["dagster_run_id"]) for row in involved]
    promotion_keys = (
        "recorded_at",
        "action",
        "model_version",
        "previous_version",
        "actor",
        "reason",
        "metrics",
    )
    training_section = _training_section(training)
    answer = {
        "title": f"Lineage of model {name} version {version}",
        "summary": "",
        "subject": {"model_name": name, "model_version": str(version)},
        "model": model | {"threshold": threshold_of(training_section)},
        "training": training_section,
        "champion_periods": [p for p in champion_periods(promotions) if p["model_version"] == str(version)],
        "promotions": [{key: row[key] for key in promotion_keys} for row in involved],
        "scored": {
            "partitions": len(days),
            "rows": sum(period["rows"] for period in periods),
            "first_day": days[0] if days else None,
            "last_day": days[-1] if days else None,
        },
        "scoring_periods": periods,
        "runs": _runs(steps),
        "code": {"training": _commit(training), "registration": _commit(registered)},
        "links": (links or UiLinks()).section(name, str(version), model.get("mlflow_run_id")),
        "audit_records": trail.records(),
        "gaps": trail.gaps,
    }
    answer["summary"] = _model_summary(answer)
    return answer


# --- the summary paragraph --------------------------------------------------------------------------------


def _pair(score: float, threshold: float) -> tuple[str, str]:
    """Score and threshold with as few digits as keep them apart (4 significant at least)."""
    for digits in range(4, 18):
        shown = f"{score:.{digits}g}", f"{threshold:.{digits}g}"
        if shown[0] != shown[1] or score == threshold:
            return shown
    return shown


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _trained(training: dict[str, Any] | None) -> str:
    if not training:
        return "its training is not in the record"
    return f"trained on data up to {training['train_end']}"


def _checks_sentence(validation: Sequence[dict[str, Any]]) -> str:
    if not validation:
        return "No check result was recorded for the partition before it was scored."
    failed = [row for row in validation if not row["passed"]]
    verdict = "all passed" if not failed else f"{len(failed)} failed"
    return f"{_count(len(validation), 'check')} gated the partition: {verdict}."


def _gaps_sentence(gaps: Sequence[str]) -> str:
    return f" The record has {_count(len(gaps), 'gap')}, listed at the end." if gaps else ""


def is_as_of(training: dict[str, Any] | None) -> bool:
    """Whether the version was trained as an as-of model, to score history out of time (never champion)."""
    return ((training or {}).get("evaluation") or {}).get("purpose") == "as_of"


def _role_sentence(answer: dict[str, Any]) -> str:
    """Which role the scoring model had: an as-of model, or the champion (or not) when it scored."""
    training, version = answer["training"], answer["model"]["model_version"]
    if is_as_of(training):
        return (
            f"Version {version} is an as-of model: it scores only days after its label cutoff "
            f"{training['label_cutoff']}, so history is scored out of time, and it is never champion."
        )
    return _champion_sentence(answer["champion"], version)


def _champion_sentence(champion: dict[str, Any] | None, version: str) -> str:
    if champion is None:
        return "No promotion of the model was recorded before it scored."
    how = f"{champion['action']} by {champion['actor']}"
    if champion["scored_by_champion"]:
        return f"Version {version} was the champion then ({how})."
    return f"Version {version} was not the champion then: version {champion['champion_version']} was ({how})."


def _transaction_summary(answer: dict[str, Any]) -> str:
    decision, model = answer["decision"], answer["model"]
    day, tid = answer["transaction"]["day"], answer["transaction"]["transaction_id"]
    who = f"{model['model_name']} version {model['model_version']}"
    score, threshold = decision["score"], decision["threshold"]
    head = f"Transaction {tid} was scored {score:.4g} on {day} by {who}, {_trained(answer['training'])}"
    if threshold is None:
        text = f"{head}; its decision was {decision['decision']} (no decision threshold is recorded)."
    else:
        shown, bar = _pair(score, threshold)
        if decision["decision"] == "alert":
            text = f"{head}; it was an alert because {shown} ≥ threshold {bar}."
        else:
            text = f"{head}; it was not an alert because {shown} < threshold {bar}."
    reasons = [r for r in answer["reasons"] if r["feature"]]
    if reasons and reasons[0]["value"] is not None:
        listed = ", ".join(f"{r['feature']} = {r['value']:.6g} ({r['contribution']:+.3g})" for r in reasons)
        text += f" Main reasons (value, contribution in log-odds): {listed}."
    elif reasons:
        text += f" Main reasons: {', '.join(r['feature'] for r in reasons)}."
    text += f" {_role_sentence(answer)}"
    text += f" {_checks_sentence(answer['validation'])}"
    return text + _gaps_sentence(answer["gaps"])


def _partition_summary(answer: dict[str, Any]) -> str:
    day, scores, model = answer["subject"]["day"], answer["scores"], answer["model"]
    who = f"{model['model_name']} version {model['model_version']}"
    current = next((run for run in answer["scoring_runs"] if run["current"]), None)
    threshold = scores.get("threshold")
    bar = f"threshold {threshold:.4g}, " if threshold is not None else ""
    trained = _trained(answer["training"])
    text = f"Partition {day} holds {_count(scores['rows'], 'score')} by {who} ({bar}{trained})"
    if current:
        text += f", written by Dagster run {current['dagster_run_id']} at {current['recorded_at']}"
    if scores.get("decisions") is not None:
        text += f": {_count(scores['decisions'].get('alert', 0), 'alert')}"
    text += "."
    runs = answer["scoring_runs"]
    if len(runs) > 1:
        earlier = list(dict.fromkeys(run["model"] for run in runs if not run["current"]))
        text += (
            f" The day was scored {len(runs)} times; earlier scorings by {', '.join(earlier)} were replaced."
        )
    text += f" {_role_sentence(answer)}"
    text += f" {_checks_sentence(answer['validation'])}"
    return text + _gaps_sentence(answer["gaps"])


def _model_summary(answer: dict[str, Any]) -> str:
    model, training, scored = answer["model"], answer["training"], answer["scored"]
    who = f"{model['model_name']} version {model['model_version']}"
    if training:
        text = (
            f"{who} was trained on {training['row_count']:,} rows of {training['train_start']}.."
            f"{training['train_end']}"
            + (f" (labels reported by {training['label_cutoff']})" if training["label_cutoff"] else "")
            + f" in MLflow run {training['mlflow_run_id']}"
        )
    else:
        text = f"{who}'s training is not in the record"
    if model.get("registered_at"):
        text += f", registered at {model['registered_at']}"
    if model.get("threshold") is not None:
        text += f"; its decision threshold is {model['threshold']:.4g}"
    text += "."
    periods = answer["champion_periods"]
    if not periods:
        text += " It has never been champion."
    else:
        spans = [f"from {p['since']} to {p['until'] or 'now'} ({p['became_champion_by']})" for p in periods]
        text += f" Champion {'; '.join(spans)}."
    if scored["partitions"]:
        scoring = answer["scoring_periods"]
        first, last = scored["first_day"], scored["last_day"]
        span = first if first == last else f"{first}..{last}"
        text += (
            f" It scored {_count(scored['partitions'], 'day')} ({span}, "
            f"{_count(scored['rows'], 'row')}) in {_count(len(scoring), 'period')} of consecutive days"
        )
        replaced = sum(period["replaced_days"] for period in scoring)
        text += f"; another version has rescored {replaced:,} of them since." if replaced else "."
    else:
        text += " It has scored nothing."
    return text + _gaps_sentence(answer["gaps"])


# --- renderers --------------------------------------------------------------------------------------------


def _heading(key: str) -> str:
    return _TITLES.get(key, key.replace("_", " ").capitalize())


def scalar(value: Any) -> str:
    """A value as people read it: ``-`` for nothing, floats to 6 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={scalar(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return ", ".join(scalar(item) for item in value)
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return str(value)


def period_line(period: dict[str, Any], runs_shown: int = 3) -> str:
    """One scoring period as one line: ``2018-05-01..2018-05-31, 31 days, 296,000 rows, runs …``."""
    runs = period["dagster_run_ids"]
    listed = ", ".join(runs[:runs_shown]) + (
        f" and {len(runs) - runs_shown} more" if len(runs) > runs_shown else ""
    )
    text = (
        f"{period['days']}, {_count(period['day_count'], 'day')}, {_count(period['rows'], 'row')}, "
        f"{'run' if len(runs) == 1 else f'{len(runs)} runs'} {listed}"
    )
    if period["replaced_days"]:
        text += f"; {_count(period['replaced_days'], 'day')} rescored since by another version"
    seqs = (
        f"seq {period['first_seq']}"
        if period["first_seq"] == period["last_seq"]
        else (f"seq {period['first_seq']}..{period['last_seq']}")
    )
    return f"{text}; {_count(period['scorings'], 'scoring record')}, {seqs}"


def _reason_line(reason: dict[str, Any]) -> str:
    if reason["value"] is None:
        return f"{reason['rank']}. {reason['feature']}"
    value, contribution = reason["value"], reason["contribution"]
    return f"{reason['rank']}. {reason['feature']} = {value:.6g} (contribution {contribution:+.4g})"


def render_text(answer: dict[str, Any]) -> str:
    lines = [answer["title"], "=" * len(answer["title"])]
    lines += textwrap.wrap(answer["summary"], width=100) if answer.get("summary") else []
    for key, value in answer.items():
        if key in ("title", "summary"):
            continue
        count = f" ({len(value)})" if isinstance(value, list) else ""
        lines += ["", f"{_heading(key)}{count}"]
        if not value:
            lines.append("  (none)")
        elif key == "scoring_periods":
            lines += [f"  - {period_line(period)}" for period in value]
        elif key == "reasons":
            lines += [f"  {_reason_line(reason)}" for reason in value]
        elif isinstance(value, dict):
            width = max(len(k) for k in value)
            lines += [f"  {k.ljust(width)}  {scalar(v)}" for k, v in value.items()]
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    lines.append("  - " + "; ".join(f"{k}: {scalar(v)}" for k, v in item.items()))
                else:
                    lines.append(f"  - {scalar(item)}")
        else:
            lines.append(f"  {scalar(value)}")
    return "\n".join(lines) + "\n"


def render_json(answer: dict[str, Any]) -> str:
    return json.dumps(answer, indent=2, ensure_ascii=False) + "\n"


def dagster_run_url(links: dict[str, Any], run_id: str | None) -> str | None:
    """The run's page in the Dagster UI; none for a run that Dagster did not launch (``cli-…``)."""
    if not run_id or run_id.startswith("cli-") or not links.get("dagster_ui"):
        return None
    return f"{links['dagster_ui']}/runs/{quote(run_id)}"


@cache
def templates() -> jinja2.Environment:
    """The page templates (shipped inside the package), autoescaping every value."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("jobs.governance", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters |= {"scalar": scalar, "heading": _heading, "period_line": period_line}
    environment.globals |= {"dagster_run_url": dagster_run_url, "is_url": is_url, "columns_of": columns_of}
    return environment


def is_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://", "file://"))


def columns_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every key of a list of records, in first-seen order: the columns of its table."""
    return list(dict.fromkeys(key for row in rows for key in row))


def render_page(template: str, title: str, **context: Any) -> str:
    """A self-contained page (inline CSS, no external assets) that a reviewer can archive as one file."""
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return templates().get_template(template).render(title=title, generated=generated, **context)


def render_html(answer: dict[str, Any]) -> str:
    kind = next(iter(answer["subject"]))
    template = {"transaction_id": "transaction.html.j2", "day": "partition.html.j2"}.get(
        kind, "model.html.j2"
    )
    return render_page(template, answer["title"], answer=answer, links=answer["links"])


def render(answer: dict[str, Any], fmt: str) -> str:
    renderers = {"text": render_text, "json": render_json, "html": render_html}
    if fmt not in renderers:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return renderers[fmt](answer)
