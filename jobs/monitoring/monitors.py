"""Monitoring the champion in production: input and score drift, and performance once labels have matured.

Drift is the population stability index (PSI) of each feature and of the score, for one day against the
reference sample of the model that scored that day: ``PSI = sum((a - e) * ln(a / e))`` over the reference's
decile bins, ``e`` and ``a`` the reference and current shares of a bin, each floored at ``PSI_EPSILON`` so
that an empty bin counts as a large (finite) shift instead of an infinite one. Bins are cut at the
reference's quantiles; a feature with few distinct values (a flag, a count) simply gets fewer bins.
Thresholds, the usual credit-scoring reading of PSI: below ``PSI_WARN`` (0.10) stable; from 0.10 a moderate
shift worth a look (warning); from ``PSI_ERROR`` (0.25) a significant shift (error: retrain).

What is compared, so that a calm day stays quiet:

- every feature but ``tx_during_weekend``, which is fixed by the calendar (a weekday against a month that
  includes weekends would always read as drift). The terminal's reported frauds stay in: their PSI moves
  with the day's fraud volume, but far less than the warning level (``python -m benchmarks drift``);
- the score, on ``comparable_scores`` only: rows whose terminal has no reported fraud in its windows (the
  model raises the scores at terminals with reported frauds, so a day with many such transactions moves the
  score distribution with the fraud volume) against reference rows of the same calendar kind (a model that
  learned a weekend effect would read every weekend as drift against a mostly weekday month).

The reference: training does not log a sample of its rows, so it is rebuilt from what the registry records
on each version, its training window (tag ``training_window``: the training and validation days): a seeded
sample of at most ``REFERENCE_SAMPLE_ROWS`` feature rows of those days from the lake, with that version's
scores on them. The sample is the same on every rebuild and is cached in the lake per version.

Warm-up (``jobs.training.maturity``): the lake's first days have features built on a partial history and no
possible model yet. Drift skips the days before ``warm_up_end`` and leaves those days out of a reference
(a version that learned only from them is skipped against); performance skips until its judged window
starts after it. A skipped day's check passes with the reason ("skipped: warm-up until YYYY-MM-DD").

Performance: labels mature ``LABEL_DELAY_DAYS`` (7) after a transaction, so on day D the judged window is the
``PERFORMANCE_WINDOW_DAYS`` (7) scored days ending D - 7, labelled with the fraud reports that arrived by the
end of D, and measured with ``jobs.training.metrics`` on what was actually scored (every scored row, no cards
removed; CP@100 removes cards detected on earlier days of the window, as the handbook does). A lake without
the report partitions up to D is skipped with the missing days named: its labels are not final. Floors: ROC
AUC ``AUC_FLOOR`` (0.80, under every published handbook baseline, 0.868+) and average precision ``AP_FLOOR``
(0.30, the bar the promotion gate sets for a first model: a champion below what a new model must clear is due
for retraining). A window with fewer than ``MIN_JUDGED_FRAUDS`` frauds is reported but not judged: its metrics
are noise. CP@100 is reported, not floored: it depends on the number of cards a day.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from jobs.features.definitions import FEATURE_COLUMNS, WINDOWS_DAYS
from jobs.training.maturity import (
    LABEL_DELAY_DAYS,
    first_ingested_day,
    immature_labels_message,
    missing_report_days,
    newest_report_day,
    warm_up_end,
)

if TYPE_CHECKING:
    import lightgbm
    import numpy as np
    import pandas as pd

    from jobs.platform.settings import Settings
    from jobs.registry.aliases import ModelRef
    from jobs.training.metrics import HoldoutMetrics

PSI_WARN = 0.10
PSI_ERROR = 0.25
PSI_BINS = 10
PSI_EPSILON = 1e-4
SCORE = "score"
CALENDAR_FEATURES = ("tx_during_weekend",)
REPORTED_FRAUD_FEATURES: tuple[str, ...] = tuple(
    f"terminal_id_nb_reported_frauds_{w}day_window" for w in WINDOWS_DAYS
)
DRIFT_FEATURES: tuple[str, ...] = tuple(c for c in FEATURE_COLUMNS if c not in CALENDAR_FEATURES)
REFERENCE_COLUMNS: tuple[str, ...] = (*FEATURE_COLUMNS, SCORE)
REFERENCE_SAMPLE_ROWS = 100_000
REFERENCE_DATASET = "monitoring/reference"
TRAINING_WINDOW_TAG = "training_window"

PERFORMANCE_WINDOW_DAYS = 7
TREND_DAYS = 30
AUC_FLOOR = 0.80
AP_FLOOR = 0.30
MIN_JUDGED_FRAUDS = 20

DriftLevel = Literal["ok", "warn", "error"]


class MonitoringError(ValueError):
    """Monitoring cannot be computed from the data given; the message names the source and the rule."""


# --- population stability index ------------------------------------------------------------------------


def quantile_cuts(reference: np.ndarray, bins: int = PSI_BINS) -> np.ndarray:
    """Interior bin edges at the reference's quantiles; repeated edges (few distinct values) merge."""
    import numpy as np

    values = np.asarray(reference, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise MonitoringError("PSI reference is empty")
    return np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1], method="inverted_cdf"))


def bin_shares(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each bin ``(-inf, c0], (c0, c1], ..., (c_last, inf)``."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise MonitoringError("PSI sample is empty")
    counts = np.bincount(np.searchsorted(cuts, values, side="left"), minlength=len(cuts) + 1)
    return counts / values.size


def psi_from_shares(expected: np.ndarray, actual: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """PSI between two binnings of the same bins; shares are floored at ``epsilon``."""
    import numpy as np

    e = np.maximum(np.asarray(expected, dtype=np.float64), epsilon)
    a = np.maximum(np.asarray(actual, dtype=np.float64), epsilon)
    if e.shape != a.shape:
        raise MonitoringError(f"PSI needs the same bins: {e.shape} vs {a.shape}")
    return float(np.sum((a - e) * np.log(a / e)))


def psi(reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> float:
    """PSI of ``current`` against ``reference``, binned at the reference's quantiles."""
    cuts = quantile_cuts(reference, bins)
    return psi_from_shares(bin_shares(reference, cuts), bin_shares(current, cuts))


def drift_level(value: float) -> DriftLevel:
    if value >= PSI_ERROR:
        return "error"
    if value >= PSI_WARN:
        return "warn"
    return "ok"


@dataclass(frozen=True)
class DriftReport:
    """PSI of each drift feature and of the score for one day, against one model version's reference."""

    day: dt.date
    model_version: int
    rows: int
    psi: dict[str, float]

    @property
    def worst(self) -> tuple[str, float]:
        name = max(self.psi, key=lambda k: self.psi[k])
        return name, self.psi[name]

    @property
    def level(self) -> DriftLevel:
        return drift_level(self.worst[1])

    def as_dict(self) -> dict[str, object]:
        name, value = self.worst
        return {
            "day": self.day.isoformat(),
            "model_version": self.model_version,
            "rows": self.rows,
            "level": self.level,
            "worst": name,
            "max_psi": round(value, 6),
            "psi": {k: round(v, 6) for k, v in self.psi.items()},
        }


def comparable_scores(
    reference: pd.DataFrame, current: pd.DataFrame, day: dt.date
) -> tuple[np.ndarray, np.ndarray]:
    """The scores of both frames that only move when the model's inputs do.

    Kept: rows whose terminal has no reported fraud in its windows (a day when compromised terminals light
    up many transactions raises their scores: the model working, not drift), and reference rows of the
    same calendar kind as the day (the score depends on ``tx_during_weekend``, so a weekend read against a
    mostly weekday reference would swing).
    """
    calendar = list(CALENDAR_FEATURES)

    def quiet(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[(frame[list(REPORTED_FRAUD_FEATURES)] == 0).all(axis=1)]

    today = quiet(current)
    same_kind = quiet(reference).merge(today[calendar].drop_duplicates(), on=calendar)
    if today.empty or same_kind.empty:
        raise MonitoringError(
            f"day {day}: no scores to compare ({len(today)} rows of the day and {len(same_kind)} of the "
            "reference with no reported terminal fraud, on the same kind of day)"
        )
    return same_kind[SCORE].to_numpy(), today[SCORE].to_numpy()


def drift_report(
    reference: pd.DataFrame, current: pd.DataFrame, day: dt.date, model_version: int
) -> DriftReport:
    """PSI per drift feature, and for ``score`` on ``comparable_scores``; both frames need
    ``REFERENCE_COLUMNS``."""
    for what, frame in (("reference", reference), (f"day {day}", current)):
        missing = [c for c in REFERENCE_COLUMNS if c not in frame.columns]
        if missing:
            raise MonitoringError(f"{what}: missing column(s) {', '.join(missing)} for drift")
    if current.empty:
        raise MonitoringError(f"day {day}: no rows to compare with the reference")
    values = {c: psi(reference[c].to_numpy(), current[c].to_numpy()) for c in DRIFT_FEATURES}
    values[SCORE] = psi(*comparable_scores(reference, current, day))
    return DriftReport(day=day, model_version=model_version, rows=len(current), psi=values)


# --- the reference sample ------------------------------------------------------------------------------


def reference_uri(lake: str, model_name: str, version: int) -> str:
    from jobs.platform.storage import join

    return join(lake, REFERENCE_DATASET, f"model={model_name}", f"version={version}", "data.parquet")


def training_window(model: ModelRef, tracking_uri: str) -> tuple[dt.date, dt.date]:
    """The days the version learned from, as the registry tagged them (``start..end``)."""
    from jobs.registry.client import open_client

    tags = open_client(tracking_uri).get_model_version(model.name, str(model.version)).tags
    value = tags.get(TRAINING_WINDOW_TAG, "")
    try:
        start, end = (dt.date.fromisoformat(part) for part in value.split(".."))
    except ValueError:
        raise MonitoringError(
            f"{model.name} version {model.version}: tag {TRAINING_WINDOW_TAG}={value!r} is not 'start..end'; "
            "the drift reference needs the training window"
        ) from None
    return start, end


def reference_sample(
    frame: pd.DataFrame, booster: lightgbm.Booster, seed: int, rows: int = REFERENCE_SAMPLE_ROWS
) -> pd.DataFrame:
    """A seeded sample of at most ``rows`` feature rows (``REFERENCE_COLUMNS``) with the model's scores."""
    from jobs.training.trainer import predict_scores

    if len(frame) > rows:
        frame = frame.sample(n=rows, random_state=seed).sort_values("transaction_id")
    sample = frame[list(FEATURE_COLUMNS)].reset_index(drop=True)
    sample[SCORE] = predict_scores(booster, frame)
    return sample


def build_reference(
    lake: str,
    model: ModelRef,
    booster: lightgbm.Booster,
    start: dt.date,
    end: dt.date,
    rows: int = REFERENCE_SAMPLE_ROWS,
) -> pd.DataFrame:
    """The reference sample of the window's feature rows in the lake, seeded with the model version."""
    from jobs.training.trainer import load_feature_rows

    frame = load_feature_rows(lake, start, end, feature_set_version=model.feature_set_version)
    return reference_sample(frame, booster, seed=model.version, rows=rows)


def load_reference(settings: Settings, model_name: str, version: int, judged_from: dt.date) -> pd.DataFrame:
    """The version's reference sample from the lake cache, built from the registry and lake on first use.

    Only the training days from ``judged_from`` (the end of the warm-up) on are sampled: earlier days'
    features were built on a partial history. The frame is empty when the version learned from none.
    """
    import pandas as pd
    import pyarrow as pa

    from jobs.platform import storage
    from jobs.registry.aliases import model_ref
    from jobs.registry.tracking import load_verified_booster

    uri = reference_uri(settings.lake, model_name, version)
    if storage.exists(uri):
        cached = storage.read_parquet(uri).to_pandas()
        if tuple(cached.columns) == REFERENCE_COLUMNS:
            return cached
    model = model_ref(version, tracking_uri=settings.tracking_uri, name=model_name)
    start, end = training_window(model, settings.tracking_uri)
    start = max(start, judged_from)
    if start > end:
        return pd.DataFrame(columns=list(REFERENCE_COLUMNS))
    booster = load_verified_booster(model, tracking_uri=settings.tracking_uri)
    sample = build_reference(settings.lake, model, booster, start, end)
    storage.write_parquet_atomic(pa.Table.from_pandas(sample, preserve_index=False), uri)
    return sample


def read_scored(snapshot: Path, start: dt.date, end: dt.date) -> pd.DataFrame:
    """Scores of ``[start, end]`` from the analysts' snapshot (never the writer's lock); none if absent."""
    import pandas as pd

    from jobs.scoring.store import SCORE_COLUMNS, read_scores

    if not snapshot.exists():
        return pd.DataFrame(columns=list(SCORE_COLUMNS))
    return read_scores(snapshot, start, end)


@dataclass(frozen=True)
class Skipped:
    """A monitor that did not judge its day, and why; its check passes with the reason as description."""

    day: dt.date
    reason: str
    details: dict[str, str] = field(default_factory=dict)

    @property
    def description(self) -> str:
        return f"skipped: {self.reason}"

    def as_dict(self) -> dict[str, str]:
        return {"day": self.day.isoformat(), "skipped": self.reason, **self.details}


NO_HISTORY = "warm-up: the lake holds no transactions yet"


def warm_up_skip(day: dt.date, first_day: dt.date, judged_from: dt.date, rule: str) -> Skipped | None:
    """A ``Skipped`` while ``day`` is before ``judged_from``, the first day a monitor judges (``rule``)."""
    if day >= judged_from:
        return None
    end = warm_up_end(first_day)
    return Skipped(
        day,
        f"warm-up until {judged_from}: the lake starts on {first_day}, and its days before {end} fill the "
        f"feature windows and the first model's matured window; {rule}",
        {"warm_up_until": judged_from.isoformat(), "first_ingested_day": first_day.isoformat()},
    )


def measure_drift(settings: Settings, days: Sequence[dt.date]) -> list[DriftReport | Skipped]:
    """Each day's features (lake) and scores (snapshot) against the reference of the version scoring it;
    days of the warm-up are skipped (``jobs.training.maturity``)."""
    from jobs.platform.layout import TRANSACTION_FEATURES, partition_uri
    from jobs.training.trainer import load_feature_rows

    first = first_ingested_day(settings.lake)
    if first is None:
        return [Skipped(day, NO_HISTORY) for day in days]
    judged_from = warm_up_end(first)
    references: dict[int, pd.DataFrame] = {}
    reports: list[DriftReport | Skipped] = []
    for day in days:
        skipped = warm_up_skip(day, first, judged_from, "drift is judged from that day on")
        if skipped is not None:
            reports.append(skipped)
            continue
        scores = read_scored(settings.snapshot_path, day, day)
        if scores.empty:
            raise MonitoringError(
                f"{settings.snapshot_path}: no scores for {day}; drift is measured against the reference of "
                "the model that scored the day, so transaction_scores must be materialized first"
            )
        version = int(scores["model_version"].iloc[0])
        if version not in references:
            name = str(scores["model_name"].iloc[0])
            references[version] = load_reference(settings, name, version, judged_from)
        if references[version].empty:
            reports.append(
                Skipped(
                    day,
                    f"warm-up: model v{version} learned only from days before {judged_from}, whose features "
                    "were built on a partial history; drift is judged against a model that learned from "
                    "later days",
                    {"warm_up_until": judged_from.isoformat()},
                )
            )
            continue
        features = load_feature_rows(settings.lake, day, day)
        current = features.merge(scores[["transaction_id", SCORE]], on="transaction_id", how="inner")
        if len(current) != len(features):
            raise MonitoringError(
                f"{partition_uri(settings.lake, TRANSACTION_FEATURES, day)}: {len(features)} feature rows, "
                f"{len(current)} scored; rescore the day before measuring its drift"
            )
        reports.append(drift_report(references[version], current, day, version))
    return reports


# --- performance once labels have matured --------------------------------------------------------------


def judged_window(day: dt.date) -> tuple[dt.date, dt.date]:
    """The ``PERFORMANCE_WINDOW_DAYS`` scored days whose labels have matured by the end of ``day``."""
    end = day - dt.timedelta(days=LABEL_DELAY_DAYS)
    return end - dt.timedelta(days=PERFORMANCE_WINDOW_DAYS - 1), end


@dataclass(frozen=True)
class DailyPerformance:
    day: dt.date
    rows: int
    frauds: int
    roc_auc: float | None
    average_precision: float | None
    card_precision_at_100: float | None

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "day": self.day.isoformat()}


@dataclass(frozen=True)
class PerformanceReport:
    """The judged window's metrics (``None`` when undefined) and each matured day's, for the trend."""

    evaluated_on: dt.date
    window_start: dt.date
    window_end: dt.date
    rows: int
    frauds: int
    model_versions: tuple[int, ...]
    metrics: HoldoutMetrics | None
    daily: tuple[DailyPerformance, ...] = field(default_factory=tuple)
    note: str = ""

    @property
    def judged(self) -> bool:
        return self.metrics is not None and self.frauds >= MIN_JUDGED_FRAUDS

    def breaches(self) -> list[str]:
        """The floors the judged window falls below (none when it is not judged)."""
        if not self.judged or self.metrics is None:
            return []
        found = []
        if self.metrics.roc_auc < AUC_FLOOR:
            found.append(f"ROC AUC {self.metrics.roc_auc:.4f} < floor {AUC_FLOOR:.2f}")
        if self.metrics.average_precision < AP_FLOOR:
            found.append(f"average precision {self.metrics.average_precision:.4f} < floor {AP_FLOOR:.2f}")
        return found

    def summary(self) -> str:
        window = f"scored days {self.window_start}..{self.window_end}"
        if self.metrics is None or not self.judged:
            return f"{window}: not judged ({self.note or f'{self.frauds} frauds < {MIN_JUDGED_FRAUDS}'})"
        m = self.metrics
        numbers = (
            f"AUC {m.roc_auc:.4f}, AP {m.average_precision:.4f}, CP@100 {m.card_precision_at_100:.4f} "
            f"on {self.rows} rows, {self.frauds} frauds"
        )
        problems = self.breaches()
        return f"{window}: {numbers}; " + ("; ".join(problems) if problems else "above the floors")


def label_scored(scores: pd.DataFrame, fraud_ids: set[int]) -> pd.DataFrame:
    """Scored rows with ``label`` (a fraud report arrived for it) and ``day`` as datetime64[D]."""
    import numpy as np

    labelled = scores[["transaction_id", "customer_id", "day", SCORE, "model_version"]].copy()
    labelled["day"] = np.asarray(labelled["day"].astype(str), dtype="datetime64[D]")
    labelled["label"] = labelled["transaction_id"].isin(fraud_ids).astype(np.int8)
    return labelled


def _metrics_or_none(rows: pd.DataFrame) -> tuple[HoldoutMetrics | None, str]:
    from jobs.training.metrics import MetricError, holdout_metrics

    if rows.empty:
        return None, "no scored rows"
    try:
        return holdout_metrics(rows["customer_id"], rows["day"], rows["label"], rows[SCORE]), ""
    except MetricError as error:
        return None, str(error)


def performance_report(labelled: pd.DataFrame, evaluated_on: dt.date) -> PerformanceReport:
    """Metrics of the judged window and of every matured day in ``labelled`` (see ``label_scored``)."""
    import numpy as np

    start, end = judged_window(evaluated_on)
    matured = labelled[labelled["day"] <= np.datetime64(end, "D")]
    daily = []
    for day, rows in matured.groupby("day", sort=True):
        metrics, _ = _metrics_or_none(rows)
        daily.append(
            DailyPerformance(
                day=dt.date.fromisoformat(str(day)[:10]),
                rows=len(rows),
                frauds=int(rows["label"].sum()),
                roc_auc=metrics.roc_auc if metrics else None,
                average_precision=metrics.average_precision if metrics else None,
                card_precision_at_100=metrics.card_precision_at_100 if metrics else None,
            )
        )
    window = matured[matured["day"] >= np.datetime64(start, "D")]
    metrics, note = _metrics_or_none(window)
    return PerformanceReport(
        evaluated_on=evaluated_on,
        window_start=start,
        window_end=end,
        rows=len(window),
        frauds=int(window["label"].sum()),
        model_versions=tuple(sorted(int(v) for v in window["model_version"].unique())),
        metrics=metrics,
        daily=tuple(daily),
        note=note,
    )


def performance_judged_from(first_day: dt.date) -> dt.date:
    """The first day whose judged window starts after the warm-up."""
    return warm_up_end(first_day) + dt.timedelta(days=LABEL_DELAY_DAYS + PERFORMANCE_WINDOW_DAYS - 1)


def measure_performance(settings: Settings, evaluated_on: dt.date) -> PerformanceReport | Skipped:
    """What was scored in the trend window (snapshot), labelled by the reports up to ``evaluated_on``.

    Skipped during the warm-up, and while the lake lacks a report day that labels the judged window.
    """
    from jobs.training.trainer import end_of_day, load_fraud_labels

    history = first_ingested_day(settings.lake)
    if history is None:
        return Skipped(evaluated_on, NO_HISTORY)
    skipped = warm_up_skip(
        evaluated_on,
        history,
        performance_judged_from(history),
        f"performance is judged once its window (the {PERFORMANCE_WINDOW_DAYS} scored days ending "
        f"{LABEL_DELAY_DAYS} days back) is past the warm-up",
    )
    if skipped is not None:
        return skipped
    start, end = judged_window(evaluated_on)
    newest = newest_report_day(settings.lake)
    missing = missing_report_days(start, end, newest)
    if missing:
        return Skipped(
            evaluated_on,
            immature_labels_message(f"model_performance on {evaluated_on}", start, end, newest, missing),
            {"missing_report_days": ", ".join(d.isoformat() for d in missing)},
        )
    first = end - dt.timedelta(days=TREND_DAYS - 1)
    scores = read_scored(settings.snapshot_path, first, end)
    fraud_ids, _ = load_fraud_labels(settings.lake, first, end_of_day(evaluated_on))
    return performance_report(label_scored(scores, fraud_ids), evaluated_on)


# --- charts --------------------------------------------------------------------------------------------


def _png(figure) -> bytes:
    """The figure as a 64-colour PNG: charts sit in the event log on every partition's materialization, and
    a palette makes them much smaller than full colour."""
    from PIL import Image

    rendered = io.BytesIO()
    figure.savefig(rendered, format="png", dpi=80, bbox_inches="tight")
    rendered.seek(0)
    compact = io.BytesIO()
    Image.open(rendered).convert("RGB").quantize(64).save(compact, format="PNG", optimize=True)
    return compact.getvalue()


def drift_chart(reports: Sequence[DriftReport]) -> bytes:
    """PNG: PSI per feature on the last day (bars), and the worst PSI of each day when there are several."""
    from matplotlib.figure import Figure

    if not reports:
        raise MonitoringError("no drift reports to chart")
    last = reports[-1]
    names = sorted(last.psi, key=lambda k: last.psi[k])
    colours = {"ok": "#4c9a2a", "warn": "#e0a800", "error": "#c0392b"}
    several = len(reports) > 1
    figure = Figure(figsize=(11 if several else 7, 5))
    axes = figure.subplots(1, 2 if several else 1, squeeze=False)[0]
    bars = axes[0]
    bars.barh(names, [last.psi[n] for n in names], color=[colours[drift_level(last.psi[n])] for n in names])
    bars.set_title(f"PSI on {last.day} vs model v{last.model_version} reference")
    trend = axes[1] if several else None
    for axis in (bars, trend):
        if axis is None:
            continue
        line = axis.axvline if axis is bars else axis.axhline
        line(PSI_WARN, color=colours["warn"], linestyle="--", label=f"warn {PSI_WARN}")
        line(PSI_ERROR, color=colours["error"], linestyle="--", label=f"error {PSI_ERROR}")
    bars.set_xlabel("population stability index")
    bars.legend(loc="lower right")
    if trend is not None:
        trend.plot([r.day for r in reports], [r.worst[1] for r in reports], marker="o", color="#34495e")
        trend.set_title("worst PSI per day")
        trend.tick_params(axis="x", labelrotation=45)
    figure.tight_layout()
    return _png(figure)


def trend_chart(report: PerformanceReport) -> bytes:
    """PNG: daily AUC, AP and CP@100 of the matured days, the floors, and the judged window shaded."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 4.5))
    axis = figure.subplots()
    days = [d.day for d in report.daily]
    for attribute, label in (
        ("roc_auc", "ROC AUC"),
        ("average_precision", "average precision"),
        ("card_precision_at_100", "card precision@100"),
    ):
        values = [getattr(d, attribute) for d in report.daily]
        axis.plot(days, [math.nan if v is None else v for v in values], marker="o", label=label)
    axis.axhline(AUC_FLOOR, color="#1f77b4", linestyle=":", label=f"AUC floor {AUC_FLOOR}")
    axis.axhline(AP_FLOOR, color="#ff7f0e", linestyle=":", label=f"AP floor {AP_FLOOR}")
    axis.axvspan(report.window_start, report.window_end, color="#dddddd", alpha=0.5, label="judged window")
    axis.set_ylim(0, 1.02)
    axis.set_title(f"matured performance as of {report.evaluated_on}")
    axis.tick_params(axis="x", labelrotation=45)
    axis.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    return _png(figure)


# --- retraining decision -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrainingTrigger:
    """A failing monitoring check evaluation that asks for retraining."""

    check: str
    record_id: int
    summary: str


@dataclass(frozen=True)
class RetrainingDecision:
    request: bool
    reason: str
    state: dict[str, float | int]


def decide_retraining(
    state: Mapping[str, float | int], triggers: Sequence[RetrainingTrigger], now: float, cooldown_s: float
) -> RetrainingDecision:
    """Request retraining for a trigger newer than the last one acted on, at most once per cooldown.

    ``state`` is what the last request left (``requested_at`` epoch seconds, ``trigger_id``); it is
    returned unchanged unless a request is made.
    """
    last_id = int(state.get("trigger_id", -1))
    fresh = [t for t in triggers if t.record_id > last_id]
    if not fresh:
        return RetrainingDecision(False, "no new failing drift or performance check", dict(state))
    since = now - float(state.get("requested_at", -math.inf))
    if since < cooldown_s:
        wait = (cooldown_s - since) / 3600
        return RetrainingDecision(
            False,
            f"cooldown: last retraining requested {since / 3600:.1f} h ago, {wait:.1f} h left",
            dict(state),
        )
    reason = "; ".join(f"{t.check}: {t.summary}" for t in fresh)
    return RetrainingDecision(
        True, reason, {"requested_at": now, "trigger_id": max(t.record_id for t in fresh)}
    )
