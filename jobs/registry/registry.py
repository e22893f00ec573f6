"""The MLflow side of a model's life: log a training run, register it, gate it, promote it, roll it back.

Registered model ``txguard-fraud``; aliases only (``challenger`` for every new version, ``champion`` for the
one scoring), never stages. Every call takes the tracking URI and builds its own ``MlflowClient`` so that
no global MLflow state leaks between pipelines or tests. Each promotion decision, either way, is written on
the model version as tags (numbers included) and returned as a ``RegistryRecord`` for the audit trail.

Promotion gate (``gate``): the challenger must beat the champion's average precision on the same holdout
and may not lose more than ``CP_TOLERANCE`` (0.01) of card precision@100; the first model has no champion
to beat and must reach ``AP_FLOOR`` (0.30) average precision on the holdout.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from jobs.features.definitions import FEATURE_COLUMNS, FEATURE_SET_VERSION, require_feature_set
from jobs.registry.model_card import ModelCard, diagnostic_plots, render_model_card
from jobs.training.metrics import HoldoutMetrics
from jobs.training.trainer import (
    LABEL,
    Holdout,
    TrainedModel,
    TrainingParams,
    TrainingSet,
    assemble_training_set,
    evaluate_holdout,
    feature_days,
    matured_window,
    predict_scores,
    train_model,
)

if TYPE_CHECKING:
    import lightgbm
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models.model import ModelInfo

    from jobs.platform.settings import Settings

MODEL_NAME = "txguard-fraud"
EXPERIMENT_NAME = "txguard-fraud"
CHALLENGER = "challenger"
CHAMPION = "champion"
AP_FLOOR = 0.30
CP_TOLERANCE = 0.01

TAG_SHA256 = "artifact_sha256"
TAG_THRESHOLD = "threshold"
TAG_FEATURE_SET = "feature_set_version"
TAG_PREVIOUS_CHAMPION = "previous_champion"
TAG_LAST_DECISION = "last_decision"


class RegistryError(RuntimeError):
    """A registry operation was refused; the registry is as it was before the call."""


class RegistryUnavailable(RegistryError):
    """The MLflow tracking or registry store cannot be reached."""


class UnknownModelVersion(RegistryError):
    """The named version or alias does not exist."""


class ModelIntegrityError(RegistryError):
    """A model artifact's bytes differ from the SHA-256 recorded when it was registered."""


@dataclass(frozen=True)
class ModelRef:
    """One registered version, pinned: what scoring needs to load, verify and label its output."""

    name: str
    version: int
    run_id: str
    artifact_sha256: str
    threshold: float
    feature_set_version: str
    model_uri: str


@dataclass(frozen=True)
class TrainingRun:
    ref: ModelRef
    holdout: HoldoutMetrics
    validation: HoldoutMetrics
    device: str
    device_reason: str
    data_digest: str
    window: dict[str, str]
    training_rows: int
    params: dict[str, object]


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    challenger_version: int
    champion_version: int | None
    challenger_metrics: HoldoutMetrics
    champion_metrics: HoldoutMetrics | None
    holdout: dict[str, str | int]
    ap_floor: float = AP_FLOOR
    cp_tolerance: float = CP_TOLERANCE

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class RegistryRecord:
    """One decision on the registry, as it is tagged on the version and mirrored into the audit trail."""

    action: Literal["promote", "reject", "rollback"]
    name: str
    version: int
    previous_champion: int | None
    champion_after: int | None
    reason: str
    actor: str
    decided_at: str
    metrics: dict[str, float]
    decision: dict[str, object] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)


def open_client(tracking_uri: str) -> MlflowClient:
    """A client bound to ``tracking_uri`` (tracking and registry), checked to answer before it is used."""
    from mlflow import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        client.search_experiments(max_results=1)
    except Exception as error:
        raise RegistryUnavailable(f"MLflow store {tracking_uri} is unreachable: {error}") from error
    return client


@contextlib.contextmanager
def _fluent_tracking(tracking_uri: str) -> Iterator[None]:
    """MLflow logs models and datasets only through fluent calls: point them at our store, then restore."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    saved_uri, saved_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_uri)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def _experiment_id(client: MlflowClient, artifact_root: str | Path) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is not None:
        return experiment.experiment_id
    root = str(artifact_root)
    location = root if "://" in root else Path(root).resolve().as_uri()
    return client.create_experiment(EXPERIMENT_NAME, artifact_location=location)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _model_file(model_dir: Path) -> Path:
    """The native LightGBM file inside an MLflow model directory, as its MLmodel file names it."""
    from mlflow.models import Model

    flavor = Model.load(str(model_dir / "MLmodel")).flavors.get("lightgbm")
    if not flavor:
        raise ModelIntegrityError(f"{model_dir}: not a LightGBM model (no lightgbm flavor in MLmodel)")
    return model_dir / flavor["data"]


def _download(model_uri: str, tracking_uri: str | None, into: str) -> Path:
    import mlflow

    return Path(
        mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=into, tracking_uri=tracking_uri)
    )


def _log_run_contents(
    client: MlflowClient,
    run_id: str,
    data: TrainingSet,
    holdout_rows: Holdout,
    model: TrainedModel,
    holdout: HoldoutMetrics,
) -> None:
    from mlflow.entities import Metric, Param

    now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    params = {
        **{f"lgb.{k}": v for k, v in model.lightgbm_params.items()},
        **{f"train.{k}": v for k, v in model.params.as_dict().items()},
        **{f"window.{k}": v for k, v in data.window.as_dict().items()},
        "feature_set_version": data.feature_set_version,
        "data_sha256": data.digest,
        "best_iteration": model.best_iteration,
        "threshold": repr(model.threshold),
        "device": model.device.device,
        "train_rows": len(data.train),
        "validation_rows": len(data.validation),
        "missing_report_days": len(data.missing_report_days),
    }
    metrics = {
        **holdout.as_dict(),
        **{f"validation_{k}": v for k, v in model.validation_metrics.as_dict().items()},
        "validation_alerts_per_day": model.validation_alerts_per_day,
    }
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in params.items()],
    )
    plots = diagnostic_plots(
        holdout_rows.frame[LABEL].to_numpy(),
        predict_scores(model.booster, holdout_rows.frame),
        list(FEATURE_COLUMNS),
        model.booster.feature_importance(importance_type="gain"),
        model.threshold,
    )
    for file_name, figure in plots.items():
        client.log_figure(run_id, figure, f"plots/{file_name}")


def _log_inputs(data: TrainingSet, holdout_rows: Holdout) -> None:
    """Training and holdout rows as metadata-only datasets: our digest, source and schema, no copy of rows."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, DataType, Schema

    schema = Schema(
        [*(ColSpec(DataType.double, c) for c in FEATURE_COLUMNS), ColSpec(DataType.integer, LABEL)]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(data.source)
    w = data.window
    splits = (
        ("training", data.digest, len(data.train) + len(data.validation), w.train_start, w.validation_end),
        ("holdout", holdout_rows.digest, len(holdout_rows.frame), holdout_rows.start, holdout_rows.end),
    )
    for context, digest, rows, start, end in splits:
        dataset = MetaDataset(
            source, name=f"transaction_features:{context}", digest=digest[:32], schema=schema
        )
        tags = {"sha256": digest, "rows": str(rows), "days": f"{start}..{end}"}
        mlflow.log_input(dataset, context=context, tags=tags)


def _log_model_and_inputs(
    data: TrainingSet, holdout_rows: Holdout, model: TrainedModel, run_id: str, tracking_uri: str
) -> ModelInfo:
    import lightgbm as lgb
    import mlflow
    import mlflow.lightgbm
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature

    example = data.validation[list(FEATURE_COLUMNS)].head(5).astype("float64")
    signature = infer_signature(example, predict_scores(model.booster, example))
    requirements = [f"lightgbm=={lgb.__version__}", f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]
    with _fluent_tracking(tracking_uri), mlflow.start_run(run_id=run_id):
        _log_inputs(data, holdout_rows)
        return mlflow.lightgbm.log_model(
            model.booster,
            name="model",
            signature=signature,
            input_example=example,
            pip_requirements=requirements,
        )


def _register_version(
    client: MlflowClient,
    name: str,
    info: ModelInfo,
    run_id: str,
    sha: str,
    data: TrainingSet,
    model: TrainedModel,
    tracking_uri: str,
) -> ModelVersion:
    tags = {
        TAG_SHA256: sha,
        TAG_THRESHOLD: repr(model.threshold),
        TAG_FEATURE_SET: data.feature_set_version,
        "data_sha256": data.digest,
        "training_window": f"{data.window.train_start}..{data.window.validation_end}",
        "device": model.device.device,
    }
    with _fluent_tracking(tracking_uri):
        return client.create_model_version(
            name, info.model_uri, run_id=run_id, tags=tags, model_id=info.model_id
        )


def _card(
    name: str,
    version: ModelVersion,
    data: TrainingSet,
    holdout_rows: Holdout,
    model: TrainedModel,
    holdout: HoldoutMetrics,
    sha: str,
) -> ModelCard:
    return ModelCard(
        name=name,
        version=int(version.version),
        run_id=version.run_id,
        window=data.window.as_dict(),
        data_digest=data.digest,
        holdout_digest=holdout_rows.digest,
        feature_set_version=data.feature_set_version,
        holdout=holdout,
        validation=model.validation_metrics,
        threshold=model.threshold,
        alert_budget=model.params.alert_budget,
        validation_alerts_per_day=model.validation_alerts_per_day,
        device=model.device.device,
        device_reason=model.device.reason,
        artifact_sha256=sha,
        params=model.lightgbm_params,
        class_counts=model.class_counts,
        missing_report_days=tuple(d.isoformat() for d in data.missing_report_days),
    )


def log_training_run(
    data: TrainingSet,
    model: TrainedModel,
    *,
    tracking_uri: str,
    artifact_root: str | Path,
    name: str = MODEL_NAME,
) -> TrainingRun:
    """Log everything about one training run, register it and give it the ``challenger`` alias.

    Any failure marks the run FAILED and removes what this call registered, so a version either exists
    complete with its alias, digest and card, or not at all.
    """
    if data.holdout is None:
        raise RegistryError("a registered model needs holdout metrics: the training set has no holdout")
    holdout_rows = data.holdout
    holdout = evaluate_holdout(model.booster, holdout_rows)
    client = open_client(tracking_uri)
    run_id = client.create_run(
        _experiment_id(client, artifact_root),
        run_name=f"train {data.window.train_start}..{data.window.validation_end}",
        tags={"feature_set_version": data.feature_set_version, "device": model.device.device},
    ).info.run_id
    version: ModelVersion | None = None
    created_model = False
    try:
        _log_run_contents(client, run_id, data, holdout_rows, model, holdout)
        info = _log_model_and_inputs(data, holdout_rows, model, run_id, tracking_uri)
        with tempfile.TemporaryDirectory() as tmp:
            sha = _sha256(_model_file(_download(info.artifact_path, tracking_uri, tmp)))
        client.set_tag(run_id, "model_sha256", sha)
        created_model = _ensure_registered_model(client, name)
        version = _register_version(client, name, info, run_id, sha, data, model, tracking_uri)
        card = _card(name, version, data, holdout_rows, model, holdout, sha)
        client.log_text(run_id, render_model_card(card), "model_card.md")
        client.update_model_version(name, version.version, description=_summary(card))
        client.set_registered_model_alias(name, CHALLENGER, version.version)
    except BaseException:
        with contextlib.suppress(Exception):
            if version is not None:
                client.delete_model_version(name, version.version)
            if created_model:
                client.delete_registered_model(name)
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return TrainingRun(
        ref=_ref(client, client.get_model_version(name, version.version)),
        holdout=holdout,
        validation=model.validation_metrics,
        device=model.device.device,
        device_reason=model.device.reason,
        data_digest=data.digest,
        window=data.window.as_dict(),
        training_rows=len(data.train) + len(data.validation),
        params=dict(model.lightgbm_params),
    )


def _ensure_registered_model(client: MlflowClient, name: str) -> bool:
    """Create the registered model on first use; True when this call created it."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, description="Card-transaction fraud scores (txguard).")
        return True
    return False


def _summary(card: ModelCard) -> str:
    h = card.holdout
    return (
        f"Trained on {card.window['train_start']}..{card.window['validation_end']} "
        f"(feature set {card.feature_set_version}); holdout AUC {h.roc_auc:.4f}, "
        f"AP {h.average_precision:.4f}, "
        f"CP@100 {h.card_precision_at_100:.4f}; threshold {card.threshold:.6f}. Model card: model_card.md "
        f"in run {card.run_id}."
    )


def _ref(client: MlflowClient, version: ModelVersion) -> ModelRef:
    tags = version.tags
    missing = [t for t in (TAG_SHA256, TAG_THRESHOLD, TAG_FEATURE_SET) if t not in tags]
    if missing:
        raise ModelIntegrityError(
            f"{version.name} version {version.version} lacks tag(s) {', '.join(missing)}"
        )
    return ModelRef(
        name=version.name,
        version=int(version.version),
        run_id=version.run_id,
        artifact_sha256=tags[TAG_SHA256],
        threshold=float(tags[TAG_THRESHOLD]),
        feature_set_version=tags[TAG_FEATURE_SET],
        model_uri=client.get_model_version_download_uri(version.name, version.version),
    )


def _version(client: MlflowClient, name: str, version: int) -> ModelVersion:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise UnknownModelVersion(f"{name} has no version {version}") from None
        raise


def _alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def resolve_alias(alias: str, *, tracking_uri: str, name: str = MODEL_NAME) -> ModelRef:
    """Pin an alias to the version it names now; raise ``UnknownModelVersion`` when nothing has it."""
    client = open_client(tracking_uri)
    version = _alias(client, name, alias)
    if version is None:
        raise UnknownModelVersion(f"no version of {name} has the alias @{alias}")
    return _ref(client, version)


def model_ref(version: int, *, tracking_uri: str, name: str = MODEL_NAME) -> ModelRef:
    client = open_client(tracking_uri)
    return _ref(client, _version(client, name, version))


def load_verified_booster(ref: ModelRef, *, tracking_uri: str | None = None) -> lightgbm.Booster:
    """Load the version's native LightGBM file only if its bytes hash to the registered SHA-256."""
    import lightgbm as lgb

    with tempfile.TemporaryDirectory() as tmp:
        path = _model_file(_download(ref.model_uri, tracking_uri, tmp))
        content = path.read_bytes()
    found = hashlib.sha256(content).hexdigest()
    if found != ref.artifact_sha256:
        raise ModelIntegrityError(
            f"{ref.name} version {ref.version}: artifact {ref.model_uri} has SHA-256 {found}, registered "
            f"{ref.artifact_sha256}; refusing to load it"
        )
    booster = lgb.Booster(model_str=content.decode())
    if booster.feature_name() != list(FEATURE_COLUMNS):
        raise ModelIntegrityError(
            f"{ref.name} version {ref.version}: model features {booster.feature_name()} are not the feature "
            f"set's {list(FEATURE_COLUMNS)}"
        )
    return booster


def gate(challenger: HoldoutMetrics, champion: HoldoutMetrics | None) -> tuple[bool, str]:
    """The promotion rule, on metrics measured on one holdout (see the module docstring)."""
    if champion is None:
        if challenger.average_precision >= AP_FLOOR:
            return True, f"first model: AP {challenger.average_precision:.4f} ≥ floor {AP_FLOOR:.2f}"
        return False, f"first model: AP {challenger.average_precision:.4f} below floor {AP_FLOOR:.2f}"
    ap_gain = challenger.average_precision - champion.average_precision
    cp_change = challenger.card_precision_at_100 - champion.card_precision_at_100
    numbers = f"AP {ap_gain:+.4f}, CP@100 {cp_change:+.4f} (tolerance -{CP_TOLERANCE:.2f})"
    if ap_gain <= 0:
        return False, f"challenger does not beat champion on AP: {numbers}"
    if cp_change < -CP_TOLERANCE:
        return False, f"challenger loses CP@100 beyond tolerance: {numbers}"
    return True, f"challenger beats champion: {numbers}"


def decide_promotion(
    challenger: ModelRef, champion: ModelRef | None, holdout: Holdout, *, tracking_uri: str | None = None
) -> PromotionDecision:
    """Score both verified models on the same holdout and apply ``gate``.

    A champion built on another feature-set version cannot be scored on today's features; the challenger
    then has to clear the floor, as a first model does, and the reason says so.
    """
    require_feature_set(
        FEATURE_SET_VERSION, challenger.feature_set_version, f"challenger v{challenger.version}"
    )
    challenger_metrics = evaluate_holdout(
        load_verified_booster(challenger, tracking_uri=tracking_uri), holdout
    )
    comparable = champion is not None and champion.feature_set_version == FEATURE_SET_VERSION
    champion_metrics = (
        evaluate_holdout(load_verified_booster(champion, tracking_uri=tracking_uri), holdout)
        if comparable and champion is not None
        else None
    )
    promote_it, reason = gate(challenger_metrics, champion_metrics)
    if champion is not None and not comparable:
        reason = f"champion v{champion.version} uses feature set {champion.feature_set_version}; {reason}"
    return PromotionDecision(
        promote=promote_it,
        reason=reason,
        challenger_version=challenger.version,
        champion_version=champion.version if champion else None,
        challenger_metrics=challenger_metrics,
        champion_metrics=champion_metrics,
        holdout=holdout.as_dict(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_record(client: MlflowClient, record: RegistryRecord, on_versions: tuple[int, ...]) -> None:
    key = f"decision.{record.decided_at.replace(':', '').replace('+0000', 'Z')}"
    for version in on_versions:
        client.set_model_version_tag(record.name, str(version), key, record.to_json())
        client.set_model_version_tag(record.name, str(version), TAG_LAST_DECISION, record.to_json())


def _logged_metrics(client: MlflowClient, version: ModelVersion) -> dict[str, float]:
    metrics = client.get_run(version.run_id).data.metrics
    return {k: metrics[k] for k in ("roc_auc", "average_precision", "card_precision_at_100") if k in metrics}


def _restore_tags(client: MlflowClient, name: str, before: dict[int, dict[str, str]]) -> None:
    for number, tags in before.items():
        now = client.get_model_version(name, str(number)).tags
        for key in now.keys() - tags.keys():
            client.delete_model_version_tag(name, str(number), key)
        for key, value in tags.items():
            if now.get(key) != value:
                client.set_model_version_tag(name, str(number), key, value)


def _move_champion(
    client: MlflowClient, name: str, target: ModelVersion, record: RegistryRecord, previous: int | None
) -> None:
    """Switch the alias, then write the record; if writing fails, put alias and tags back as they were."""
    touched = [target, *([_version(client, name, previous)] if previous else [])]
    before = {int(v.version): dict(v.tags) for v in touched}
    client.set_registered_model_alias(name, CHAMPION, target.version)
    try:
        if record.action == "promote":
            client.set_model_version_tag(name, target.version, TAG_PREVIOUS_CHAMPION, str(previous or ""))
        _write_record(client, record, tuple(before))
    except BaseException:
        with contextlib.suppress(Exception):
            if previous is None:
                client.delete_registered_model_alias(name, CHAMPION)
            else:
                client.set_registered_model_alias(name, CHAMPION, str(previous))
            _restore_tags(client, name, before)
        raise


def promote(
    version: int,
    reason: str,
    actor: str,
    *,
    tracking_uri: str,
    name: str = MODEL_NAME,
    decision: PromotionDecision | None = None,
) -> RegistryRecord:
    """Make ``version`` the champion, remembering the one it replaces for ``rollback``."""
    client = open_client(tracking_uri)
    target = _version(client, name, version)
    current = _alias(client, name, CHAMPION)
    previous = int(current.version) if current else None
    if previous == version:
        raise RegistryError(f"{name} version {version} is already the champion")
    metrics = decision.challenger_metrics.as_dict() if decision else _logged_metrics(client, target)
    record = RegistryRecord(
        action="promote",
        name=name,
        version=version,
        previous_champion=previous,
        champion_after=version,
        reason=reason,
        actor=actor,
        decided_at=_now().isoformat(timespec="microseconds"),
        metrics=metrics,
        decision=decision.as_dict() if decision else None,
    )
    _move_champion(client, name, target, record, previous)
    return record


def reject(
    decision: PromotionDecision, actor: str, *, tracking_uri: str, name: str = MODEL_NAME
) -> RegistryRecord:
    """Record on the challenger why it stays a challenger; the champion is not touched."""
    client = open_client(tracking_uri)
    _version(client, name, decision.challenger_version)
    record = RegistryRecord(
        action="reject",
        name=name,
        version=decision.challenger_version,
        previous_champion=decision.champion_version,
        champion_after=decision.champion_version,
        reason=decision.reason,
        actor=actor,
        decided_at=_now().isoformat(timespec="microseconds"),
        metrics=decision.challenger_metrics.as_dict(),
        decision=decision.as_dict(),
    )
    _write_record(client, record, (decision.challenger_version,))
    return record


def rollback(reason: str, actor: str, *, tracking_uri: str, name: str = MODEL_NAME) -> RegistryRecord:
    """Give ``champion`` back to the version it replaced; refuse when there is none."""
    client = open_client(tracking_uri)
    current = _alias(client, name, CHAMPION)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back")
    previous = current.tags.get(TAG_PREVIOUS_CHAMPION, "")
    if not previous:
        raise RegistryError(
            f"{name} version {current.version} replaced no earlier champion; nothing to roll back to"
        )
    target = _version(client, name, int(previous))
    record = RegistryRecord(
        action="rollback",
        name=name,
        version=int(current.version),
        previous_champion=int(current.version),
        champion_after=int(target.version),
        reason=reason,
        actor=actor,
        decided_at=_now().isoformat(timespec="microseconds"),
        metrics=_logged_metrics(client, target),
    )
    _move_champion(client, name, target, record, int(current.version))
    return record


def train_and_register(
    settings: Settings, *, params: TrainingParams | None = None, train_days: int = 28
) -> TrainingRun:
    """Train on the matured window ending at the lake's newest feature partition and register the result."""
    from jobs.training.trainer import TrainingDataError

    open_client(settings.tracking_uri)
    days = feature_days(settings.lake)
    if not days:
        raise TrainingDataError(f"{settings.lake}: no feature partitions to train on")
    window = matured_window(days[-1], earliest_day=days[0], train_days=train_days)
    data = assemble_training_set(settings.lake, window)
    model = train_model(data, params, device=settings.training_device)
    return log_training_run(
        data, model, tracking_uri=settings.tracking_uri, artifact_root=settings.mlflow_artifact_root
    )


def latest_holdout(lake: str) -> Holdout:
    """The newest matured holdout in the lake: the days both models are judged on."""
    from jobs.training.trainer import TrainingDataError

    days = feature_days(lake)
    if not days:
        raise TrainingDataError(f"{lake}: no feature partitions for a holdout")
    holdout = assemble_training_set(lake, matured_window(days[-1], earliest_day=days[0])).holdout
    if holdout is None:
        raise TrainingDataError(f"{lake}: the matured window has no holdout days")
    return holdout


@dataclass(frozen=True)
class GateOutcome:
    """What ``model_promotion`` did: a decision and its record, or why there was nothing to decide."""

    decision: PromotionDecision | None
    record: RegistryRecord | None
    summary: str


def run_promotion_gate(settings: Settings, actor: str) -> GateOutcome:
    """Compare ``challenger`` with ``champion`` on the latest matured holdout, then promote or reject."""
    challenger = resolve_alias(CHALLENGER, tracking_uri=settings.tracking_uri)
    try:
        champion: ModelRef | None = resolve_alias(CHAMPION, tracking_uri=settings.tracking_uri)
    except UnknownModelVersion:
        champion = None
    if champion is not None and champion.version == challenger.version:
        return GateOutcome(None, None, f"challenger v{challenger.version} is already the champion")
    holdout = latest_holdout(settings.lake)
    decision = decide_promotion(challenger, champion, holdout, tracking_uri=settings.tracking_uri)
    if decision.promote:
        record = promote(
            challenger.version, decision.reason, actor, tracking_uri=settings.tracking_uri, decision=decision
        )
    else:
        record = reject(decision, actor, tracking_uri=settings.tracking_uri)
    verdict = "promoted" if decision.promote else "kept as challenger"
    return GateOutcome(decision, record, f"v{challenger.version} {verdict}: {decision.reason}")
