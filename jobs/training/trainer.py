"""LightGBM training on the lake's feature table: matured window, time-ordered split, deterministic model.

Why the choices:

- Only days whose labels have matured (``TERMINAL_DELAY_DAYS`` old at the label cutoff) are used; labels are
  the fraud reports with ``reported_at <= cutoff``. The newest matured days form the holdout, the days before
  it the validation set (early stopping, threshold), the days before that the training set, so every
  split is later in time than the one it is judged against.
- Same data and parameters give the same model bytes on CPU (``deterministic``, ``force_col_wise``, fixed
  ``num_threads`` and seed), which is what makes a registered version reproducible.
- Class imbalance: no re-weighting (``imbalance="none"``). On validation days (never a test week) neither
  ``balanced`` nor ``sqrt`` ranked frauds better (AP is what the gate uses); they needed more rounds and
  distort the scores as probabilities. The alert budget, not the class weight, sets the operating point.
  ``python -m jobs.training.evaluate --lake PATH --protocol imbalance`` reruns the comparison.
- The decision threshold is the lowest score at which the validation days would have raised at most
  ``alert_budget`` card alerts (investigators review cards, not transactions): a count a day, or a share of
  each day's active cards (``jobs.training.budget``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from jobs.features.definitions import (
    FEATURE_COLUMNS,
    FEATURE_SET_VERSION,
    KEY_COLUMNS,
    TERMINAL_DELAY_DAYS,
    require_feature_set,
)
from jobs.platform import storage
from jobs.platform.layout import RAW_FRAUD_REPORTS, TRANSACTION_FEATURES, dataset_uri, partition_uri
from jobs.training.budget import DEFAULT_ALERT_BUDGET, AlertBudget
from jobs.training.maturity import partition_days
from jobs.training.metrics import HoldoutMetrics, MetricError, holdout_metrics

if TYPE_CHECKING:
    import lightgbm

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "gpu", "cuda"]
Imbalance = Literal["none", "balanced", "sqrt"]

LABEL = "label"
DAY = "day"
VERSION_COLUMN = "feature_set_version"


class TrainingDataError(ValueError):
    """The training data cannot make a trustworthy model; the message names the file, row and rule."""


class DeviceUnavailable(RuntimeError):
    """The requested training device cannot be used on this machine or with this LightGBM build."""


@dataclass(frozen=True)
class TrainingWindow:
    """Day ranges (inclusive) of each split and the instant up to which fraud reports count as labels."""

    train_start: dt.date
    train_end: dt.date
    validation_start: dt.date
    validation_end: dt.date
    holdout_start: dt.date | None
    holdout_end: dt.date | None
    label_cutoff: dt.datetime

    @property
    def first_day(self) -> dt.date:
        return self.train_start

    @property
    def last_day(self) -> dt.date:
        return self.holdout_end or self.validation_end

    def as_dict(self) -> dict[str, str]:
        return {k: (v.isoformat() if v is not None else "") for k, v in asdict(self).items()}


def end_of_day(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.max, tzinfo=dt.UTC)


def matured_window(
    latest_day: dt.date,
    *,
    train_days: int = 28,
    validation_days: int = 7,
    holdout_days: int = 7,
    delay_days: int = TERMINAL_DELAY_DAYS,
    earliest_day: dt.date | None = None,
) -> TrainingWindow:
    """Splits ending at the newest day whose labels have matured by the end of ``latest_day``.

    The training split is clipped at ``earliest_day`` (the first feature partition); the validation and
    holdout splits never are, so a lake too young for them is refused rather than silently shrunk.
    """
    last_matured = latest_day - dt.timedelta(days=delay_days)
    holdout_start = last_matured - dt.timedelta(days=holdout_days - 1) if holdout_days else None
    validation_end = (holdout_start or last_matured + dt.timedelta(days=1)) - dt.timedelta(days=1)
    validation_start = validation_end - dt.timedelta(days=validation_days - 1)
    train_end = validation_start - dt.timedelta(days=1)
    train_start = train_end - dt.timedelta(days=train_days - 1)
    if earliest_day is not None:
        train_start = max(train_start, earliest_day)
    if train_start > train_end:
        raise TrainingDataError(
            f"not enough matured history: latest feature day {latest_day}, first {earliest_day}; need "
            f"{delay_days} days of label delay + {holdout_days} holdout + {validation_days} validation "
            "+ at least 1 training day"
        )
    return TrainingWindow(
        train_start=train_start,
        train_end=train_end,
        validation_start=validation_start,
        validation_end=validation_end,
        holdout_start=holdout_start,
        holdout_end=last_matured if holdout_days else None,
        label_cutoff=end_of_day(latest_day),
    )


def feature_days(lake: str) -> list[dt.date]:
    """The days that have a feature partition in the lake, in order."""
    return partition_days(lake, TRANSACTION_FEATURES)


def _days(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def with_day(frame: pd.DataFrame) -> pd.DataFrame:
    """Add the UTC calendar day of each transaction as ``datetime64[D]`` (cheap to compare and group)."""
    stamps = pd.to_datetime(frame["tx_datetime"], utc=True).dt.tz_localize(None)
    return frame.assign(**{DAY: stamps.to_numpy().astype("datetime64[D]")})


def validate_feature_frame(
    frame: pd.DataFrame, what: str, *, feature_set_version: str = FEATURE_SET_VERSION
) -> None:
    """Refuse rows the model must never learn from: missing columns, another feature set, or NaN."""
    required = [*KEY_COLUMNS, *FEATURE_COLUMNS, VERSION_COLUMN]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise TrainingDataError(f"{what}: missing column(s) {', '.join(missing)}")
    versions = frame[VERSION_COLUMN]
    wrong = versions.ne(feature_set_version).to_numpy()
    if wrong.any():
        row = int(np.flatnonzero(wrong)[0])
        require_feature_set(feature_set_version, str(versions.iloc[row]), f"{what}, row {row + 1}")
    values = frame[[*KEY_COLUMNS, *FEATURE_COLUMNS]]
    null = values.isna().to_numpy()
    if null.any():
        row, column = (int(i) for i in np.argwhere(null)[0])
        raise TrainingDataError(
            f"{what}, row {row + 1}: {values.columns[column]} is null; rule: features and keys may not be "
            f"null or NaN ({int(null.any(axis=1).sum())} row(s) affected)"
        )


def load_feature_rows(
    lake: str, start: dt.date, end: dt.date, *, feature_set_version: str = FEATURE_SET_VERSION
) -> pd.DataFrame:
    """Every feature partition from ``start`` to ``end``; a missing partition is an error, not a gap."""
    frames = []
    for day in _days(start, end):
        uri = partition_uri(lake, TRANSACTION_FEATURES, day)
        if not storage.exists(uri):
            raise TrainingDataError(f"{uri}: feature partition for {day} is missing")
        frame = storage.read_parquet(uri).to_pandas()
        validate_feature_frame(frame, uri, feature_set_version=feature_set_version)
        frame = with_day(frame)
        outside = frame[DAY].to_numpy() != np.datetime64(day, "D")
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            raise TrainingDataError(f"{uri}, row {row + 1}: tx_datetime is not on the partition day {day}")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_fraud_labels(lake: str, first_day: dt.date, cutoff: dt.datetime) -> tuple[set[int], list[dt.date]]:
    """Transaction ids with a fraud report at or before ``cutoff``, and the report days with no file."""
    fraud: set[int] = set()
    missing: list[dt.date] = []
    for day in _days(first_day, cutoff.date()):
        uri = partition_uri(lake, RAW_FRAUD_REPORTS, day)
        if not storage.exists(uri):
            missing.append(day)
            continue
        reports = storage.read_parquet(uri).to_pandas()
        reported_at = pd.to_datetime(reports["reported_at"], utc=True)
        fraud.update(int(t) for t in reports.loc[reported_at <= pd.Timestamp(cutoff), "transaction_id"])
    if missing:
        log.warning(
            "no fraud-report partition for %d day(s), first %s: read as no reports", len(missing), missing[0]
        )
    return fraud, missing


def data_digest(frame: pd.DataFrame) -> str:
    """SHA-256 of the labelled rows in transaction order: equal digests mean equal training data."""
    columns = [*KEY_COLUMNS, *FEATURE_COLUMNS, LABEL]
    ordered = frame[columns].sort_values("transaction_id", kind="mergesort")
    digest = hashlib.sha256(",".join(columns).encode())
    digest.update(pd.util.hash_pandas_object(ordered, index=False).to_numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Holdout:
    """Test rows: the holdout days, minus the cards already known compromised before each day."""

    frame: pd.DataFrame
    start: dt.date
    end: dt.date
    digest: str

    def as_dict(self) -> dict[str, str | int]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "rows": len(self.frame),
            "digest": self.digest,
        }


def build_holdout(
    history: pd.DataFrame, start: dt.date, end: dt.date, *, delay_days: int = TERMINAL_DELAY_DAYS
) -> Holdout:
    """Handbook test set: for test day t, drop cards with a fraud on any day up to t - delay - 1.

    ``history`` holds labelled rows from the start of training up to ``end``.
    """
    known: set[int] = set()
    days = history[DAY].to_numpy()
    frauds = history.loc[history[LABEL] == 1, ["customer_id", DAY]]
    kept = []
    for day in _days(start, end):
        horizon = np.datetime64(day - dt.timedelta(days=delay_days + 1), "D")
        known.update(int(c) for c in frauds.loc[frauds[DAY] <= horizon, "customer_id"])
        rows = history[days == np.datetime64(day, "D")]
        kept.append(rows[~rows["customer_id"].isin(known)])
    frame = pd.concat(kept, ignore_index=True)
    return Holdout(frame=frame, start=start, end=end, digest=data_digest(frame))


@dataclass(frozen=True)
class TrainingSet:
    window: TrainingWindow
    train: pd.DataFrame
    validation: pd.DataFrame
    holdout: Holdout | None
    digest: str
    source: str
    feature_set_version: str = FEATURE_SET_VERSION
    missing_report_days: tuple[dt.date, ...] = ()


def split_labelled(
    frame: pd.DataFrame,
    window: TrainingWindow,
    *,
    source: str,
    delay_days: int = TERMINAL_DELAY_DAYS,
    missing_report_days: tuple[dt.date, ...] = (),
) -> TrainingSet:
    """Cut labelled rows (with ``day`` and ``label``) into the window's splits, in time order."""
    days = frame[DAY].to_numpy()

    def between(start: dt.date, end: dt.date) -> pd.DataFrame:
        mask = (days >= np.datetime64(start, "D")) & (days <= np.datetime64(end, "D"))
        return frame[mask].reset_index(drop=True)

    train = between(window.train_start, window.train_end)
    validation = between(window.validation_start, window.validation_end)
    holdout = None
    if window.holdout_start is not None and window.holdout_end is not None:
        history = between(window.train_start, window.holdout_end)
        holdout = build_holdout(history, window.holdout_start, window.holdout_end, delay_days=delay_days)
    used = pd.concat([train, validation], ignore_index=True)
    return TrainingSet(
        window=window,
        train=train,
        validation=validation,
        holdout=holdout,
        digest=data_digest(used) if len(used) else hashlib.sha256(b"").hexdigest(),
        source=source,
        missing_report_days=missing_report_days,
    )


def assemble_training_set(lake: str, window: TrainingWindow) -> TrainingSet:
    """Feature rows of the whole window from the lake, labelled with the reports known at the cutoff."""
    frame = load_feature_rows(lake, window.first_day, window.last_day)
    if frame.empty:
        raise TrainingDataError(
            f"{dataset_uri(lake, TRANSACTION_FEATURES)}: no feature rows from {window.first_day} to "
            f"{window.last_day}"
        )
    fraud, missing = load_fraud_labels(lake, window.first_day, window.label_cutoff)
    frame[LABEL] = frame["transaction_id"].isin(fraud).astype(np.int8)
    return split_labelled(
        frame, window, source=dataset_uri(lake, TRANSACTION_FEATURES), missing_report_days=tuple(missing)
    )


PROBE_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class DeviceChoice:
    device: Literal["cpu", "gpu", "cuda"]
    reason: str


_PROBE = """
import sys

for optional in ("sklearn", "pandas", "pyarrow", "dask", "matplotlib", "graphviz"):
    sys.modules[optional] = None  # LightGBM imports these when present; the probe starts faster without
import lightgbm as lgb
import numpy as np

rng = np.random.default_rng(0)
features = rng.random((2000, 4))
labels = (features[:, 0] > 0.5).astype(int)
params = {"device_type": sys.argv[1], "verbose": -1, "num_threads": 1}
try:
    lgb.train(params, lgb.Dataset(features, labels, params=params), num_boost_round=2)
except lgb.basic.LightGBMError as error:
    print(str(error).strip().splitlines()[0])
    sys.exit(1)
"""


def probe_device(device_type: str) -> str | None:
    """None when LightGBM can train on ``device_type`` here, else why not.

    The probe trains a tiny model in a child process: a broken GPU build or driver can crash the process
    (a CUDA build has been seen to segfault), and that must cost a fallback, not the training run.
    """
    import subprocess
    import sys

    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE, device_type],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"probe did not finish in {PROBE_TIMEOUT_SECONDS} s"
    if probe.returncode == 0:
        return None
    if probe.returncode < 0:
        return f"probe crashed with signal {-probe.returncode}"
    lines = (probe.stdout.strip() or probe.stderr.strip() or f"probe exited {probe.returncode}").splitlines()
    return lines[-1]


def resolve_device(requested: Device) -> DeviceChoice:
    """``auto``: CUDA if this build has it and sees a GPU, else an OpenCL GPU, else CPU; says why."""
    if requested == "cpu":
        return DeviceChoice("cpu", "cpu requested")
    if requested in ("gpu", "cuda"):
        problem = probe_device(requested)
        if problem:
            hint = " (NVIDIA needs /etc/OpenCL/vendors/nvidia.icd naming libnvidia-opencl.so.1)"
            raise DeviceUnavailable(
                f"training device {requested!r} requested but unusable: {problem}"
                + (hint if requested == "gpu" else "")
            )
        return DeviceChoice(requested, f"{requested} requested and available")
    if requested != "auto":
        raise DeviceUnavailable(f"unknown training device {requested!r}: expected auto, cpu, gpu or cuda")
    cuda_problem = probe_device("cuda")
    if cuda_problem is None:
        choice = DeviceChoice("cuda", "auto: CUDA learner built in and a GPU is visible")
    else:
        gpu_problem = probe_device("gpu")
        if gpu_problem is None:
            choice = DeviceChoice("gpu", f"auto: OpenCL device found; cuda unusable ({cuda_problem})")
        else:
            choice = DeviceChoice(
                "cpu", f"auto: cuda unusable ({cuda_problem}); gpu unusable ({gpu_problem})"
            )
    log.info("training device %s: %s", choice.device, choice.reason)
    return choice


@dataclass(frozen=True)
class TrainingParams:
    """Everything that, with the data, determines the model bytes (all of it is logged to MLflow)."""

    num_leaves: int = 31
    learning_rate: float = 0.05
    min_data_in_leaf: int = 50
    feature_fraction: float = 0.9
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    max_bin: int = 255
    max_rounds: int = 1000
    early_stopping_rounds: int = 50
    imbalance: Imbalance = "none"
    seed: int = 42
    num_threads: int = 2
    alert_budget: AlertBudget = field(default_factory=lambda: AlertBudget.parse(DEFAULT_ALERT_BUDGET))

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "alert_budget": str(self.alert_budget)}

    def lightgbm_params(self, device: str, positives: int, negatives: int) -> dict[str, object]:
        ratio = negatives / positives
        weight = {"none": 1.0, "balanced": ratio, "sqrt": math.sqrt(ratio)}[self.imbalance]
        return {
            "objective": "binary",
            "metric": ["average_precision", "auc"],
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "lambda_l2": self.lambda_l2,
            "max_bin": self.max_bin,
            "scale_pos_weight": weight,
            "seed": self.seed,
            "num_threads": self.num_threads,
            "deterministic": True,
            "force_col_wise": True,
            "device_type": device,
            "verbosity": -1,
        }


@dataclass(frozen=True)
class TrainedModel:
    booster: lightgbm.Booster
    threshold: float
    best_iteration: int
    device: DeviceChoice
    params: TrainingParams
    lightgbm_params: dict[str, object]
    validation_metrics: HoldoutMetrics
    validation_alerts_per_day: float
    class_counts: dict[str, int] = field(default_factory=dict)

    def model_bytes(self) -> bytes:
        return self.booster.model_to_string().encode()


def feature_matrix(frame: pd.DataFrame) -> np.ndarray:
    return frame[list(FEATURE_COLUMNS)].to_numpy(dtype=np.float64)


def predict_scores(booster: lightgbm.Booster, frame: pd.DataFrame) -> np.ndarray:
    if booster.feature_name() != list(FEATURE_COLUMNS):
        raise TrainingDataError(
            f"model features {booster.feature_name()} differ from {list(FEATURE_COLUMNS)}"
        )
    return np.asarray(booster.predict(feature_matrix(frame)), dtype=np.float64)


def _require_both_classes(frame: pd.DataFrame, split: str, source: str) -> tuple[int, int]:
    positives = int(frame[LABEL].sum()) if len(frame) else 0
    negatives = len(frame) - positives
    if len(frame) == 0:
        raise TrainingDataError(f"{source}: the {split} split is empty")
    if positives == 0 or negatives == 0:
        raise TrainingDataError(
            f"{source}: the {split} split has a single class ({positives} fraud, {negatives} genuine); "
            "rule: training needs both classes in training and validation"
        )
    return positives, negatives


def choose_threshold(
    frame: pd.DataFrame, scores: np.ndarray, alert_budget: AlertBudget | int
) -> tuple[float, float]:
    """Lowest score keeping the card alerts of the days within budget; returns it and the mean a day.

    An ``int`` budget is cards a day; a share allows each day its share of that day's active cards.
    """
    budget = alert_budget if isinstance(alert_budget, AlertBudget) else AlertBudget(alert_budget)
    cards = (
        pd.DataFrame(
            {"customer_id": frame["customer_id"].to_numpy(), DAY: frame[DAY].to_numpy(), "s": scores}
        )
        .groupby([DAY, "customer_id"])["s"]
        .max()
    )
    active = cards.groupby(level=DAY).size()
    n_days = len(active)
    allowed = sum(budget.cards_on(int(n)) for n in active)
    ordered = np.sort(cards.to_numpy())[::-1]
    if len(ordered) <= allowed:
        threshold = float(ordered[-1])
    else:
        above = ordered[ordered > ordered[allowed]]
        threshold = float(above[-1]) if len(above) else float(np.nextafter(ordered[0], np.inf))
    return threshold, float((ordered >= threshold).sum() / n_days)


def train_model(
    training_set: TrainingSet, params: TrainingParams | None = None, device: Device = "auto"
) -> TrainedModel:
    """Fit on the training split with early stopping on validation; keep only the best iterations."""
    import lightgbm as lgb

    params = params or TrainingParams()
    positives, negatives = _require_both_classes(training_set.train, "training", training_set.source)
    _require_both_classes(training_set.validation, "validation", training_set.source)
    choice = resolve_device(device)
    lgb_params = params.lightgbm_params(choice.device, positives, negatives)
    train = lgb.Dataset(
        feature_matrix(training_set.train),
        training_set.train[LABEL].to_numpy(),
        feature_name=list(FEATURE_COLUMNS),
        params={"max_bin": params.max_bin, "verbosity": -1},
    )
    validation = lgb.Dataset(
        feature_matrix(training_set.validation), training_set.validation[LABEL].to_numpy(), reference=train
    )
    fitted = lgb.train(
        lgb_params,
        train,
        num_boost_round=params.max_rounds,
        valid_sets=[validation],
        valid_names=["validation"],
        callbacks=[lgb.early_stopping(params.early_stopping_rounds, first_metric_only=True, verbose=False)],
    )
    best = fitted.best_iteration or fitted.current_iteration()
    booster = lgb.Booster(model_str=fitted.model_to_string(num_iteration=best))
    scores = predict_scores(booster, training_set.validation)
    threshold, alerts = choose_threshold(training_set.validation, scores, params.alert_budget)
    val = training_set.validation
    return TrainedModel(
        booster=booster,
        threshold=threshold,
        best_iteration=best,
        device=choice,
        params=params,
        lightgbm_params=lgb_params,
        validation_metrics=holdout_metrics(val["customer_id"], val[DAY], val[LABEL], scores),
        validation_alerts_per_day=alerts,
        class_counts={"train_fraud": positives, "train_genuine": negatives},
    )


def fit_fixed_rounds(
    frame: pd.DataFrame, params: TrainingParams, rounds: int, device: DeviceChoice
) -> lightgbm.Booster:
    """Refit on ``frame`` with a number of rounds found earlier by early stopping (no validation left)."""
    import lightgbm as lgb

    positives, negatives = _require_both_classes(frame, "refit", "refit")
    dataset = lgb.Dataset(
        feature_matrix(frame),
        frame[LABEL].to_numpy(),
        feature_name=list(FEATURE_COLUMNS),
        params={"max_bin": params.max_bin, "verbosity": -1},
    )
    lgb_params = params.lightgbm_params(device.device, positives, negatives)
    return lgb.train(lgb_params, dataset, num_boost_round=rounds)


def evaluate_holdout(booster: lightgbm.Booster, holdout: Holdout) -> HoldoutMetrics:
    """AUC, AP and CP@100 of ``booster`` on the holdout rows; a single-class holdout is an error."""
    frame = holdout.frame
    try:
        return holdout_metrics(frame["customer_id"], frame[DAY], frame[LABEL], predict_scores(booster, frame))
    except MetricError as error:
        raise TrainingDataError(f"holdout {holdout.start}..{holdout.end}: {error}") from None
