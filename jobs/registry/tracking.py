"""MLflow tracking: log a training run, register it as ``@challenger``, verify artifacts by their SHA-256.

A run holds the parameters, metrics, diagnostic plots, model card and the training and holdout datasets
(as metadata, no copy of the rows), and tags that say what made it: the git commit, and the Dagster run
and partition range when Dagster launched it, shown by the MLflow UI as the run's Source. The experiment is
marked as custom model development, so the UI opens on its training runs, not on the GenAI overview.
A registered version records the SHA-256 of its LightGBM file; ``load_verified_booster`` refuses any bytes
that do not hash to it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.features.definitions import FEATURE_COLUMNS
from jobs.registry.aliases import (
    AS_OF,
    CHALLENGER,
    TAG_FEATURE_SET,
    TAG_LABEL_CUTOFF,
    TAG_PURPOSE,
    TAG_SHA256,
    TAG_THRESHOLD,
    ModelRef,
    ref_of,
)
from jobs.registry.client import MODEL_NAME, ModelIntegrityError, RegistryError, open_client
from jobs.registry.model_card import GitRevision, ModelCard, diagnostic_plots, git_revision, render_model_card
from jobs.training.metrics import HoldoutMetrics
from jobs.training.trainer import (
    LABEL,
    Holdout,
    TrainedModel,
    TrainingSet,
    evaluate_holdout,
    predict_scores,
)

if TYPE_CHECKING:
    import lightgbm
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models.model import ModelInfo

EXPERIMENT_NAME = "txguard-fraud"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""The experiment tag the MLflow 3 UI reads to choose between its GenAI and model-training layouts."""
CUSTOM_MODEL_DEVELOPMENT = "custom_model_development"

TAG_DAGSTER_RUN = "dagster_run_id"
TAG_PARTITION_RANGE = "partition_range"


@dataclass(frozen=True)
class RunOrigin:
    """Who launched a training run; the defaults describe a run outside Dagster."""

    dagster_run_id: str | None = None
    dagster_job: str | None = None
    partition_range: tuple[str, str] | None = None

    def tags(self) -> dict[str, str]:
        """MLflow's Source tags (a Dagster job, or the local program), the Dagster run and its partitions."""
        from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE

        if self.dagster_run_id is None:
            tags = {MLFLOW_SOURCE_TYPE: "LOCAL", MLFLOW_SOURCE_NAME: Path(sys.argv[0]).name or "python"}
        else:
            tags = {
                MLFLOW_SOURCE_TYPE: "JOB",
                MLFLOW_SOURCE_NAME: f"dagster:{self.dagster_job or 'unknown job'}",
                TAG_DAGSTER_RUN: self.dagster_run_id,
            }
        if self.partition_range is not None:
            tags[TAG_PARTITION_RANGE] = "..".join(self.partition_range)
        return tags


@dataclass(frozen=True)
class TrainingRun:
    """A logged and registered training run: the pinned version and what the audit trail keeps of it."""

    ref: ModelRef
    holdout: HoldoutMetrics
    validation: HoldoutMetrics
    device: str
    device_reason: str
    data_digest: str
    window: dict[str, str]
    training_rows: int
    params: dict[str, object]
    alert_budget: str = ""
    """The alert budget the threshold was chosen for, as people read it."""


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


def experiment_id(client: MlflowClient, artifact_root: str | Path) -> str:
    """The training experiment, created on first use and marked as model training for the UI."""
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    kind = {EXPERIMENT_KIND_TAG: CUSTOM_MODEL_DEVELOPMENT}
    if experiment is None:
        root = str(artifact_root)
        location = root if "://" in root else Path(root).resolve().as_uri()
        return client.create_experiment(EXPERIMENT_NAME, artifact_location=location, tags=kind)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != CUSTOM_MODEL_DEVELOPMENT:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, CUSTOM_MODEL_DEVELOPMENT)
    return experiment.experiment_id


def _run_tags(
    data: TrainingSet, model: TrainedModel, origin: RunOrigin, revision: GitRevision | None
) -> dict[str, str]:
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_GIT_DIRTY

    tags = {"feature_set_version": data.feature_set_version, "device": model.device.device, **origin.tags()}
    if revision is not None:
        tags |= {MLFLOW_GIT_COMMIT: revision.commit, MLFLOW_GIT_DIRTY: str(revision.dirty).lower()}
    return tags


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
    as_of: bool,
) -> ModelVersion:
    tags = {
        TAG_LABEL_CUTOFF: data.window.label_cutoff.date().isoformat(),
        **({TAG_PURPOSE: AS_OF} if as_of else {}),
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


def _card(
    name: str,
    version: ModelVersion,
    data: TrainingSet,
    holdout_rows: Holdout,
    model: TrainedModel,
    holdout: HoldoutMetrics,
    sha: str,
    revision: GitRevision | None,
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
        alert_budget=str(model.params.alert_budget),
        validation_alerts_per_day=model.validation_alerts_per_day,
        device=model.device.device,
        device_reason=model.device.reason,
        artifact_sha256=sha,
        params=model.lightgbm_params,
        class_counts=model.class_counts,
        code_version=str(revision) if revision else "unknown",
        missing_report_days=tuple(d.isoformat() for d in data.missing_report_days),
    )


def _summary(card: ModelCard, as_of: bool) -> str:
    h = card.holdout
    role = (
        f"As-of model: scores only days after its label cutoff {card.window['label_cutoff'][:10]}, to score "
        "history out of time; never champion. "
        if as_of
        else ""
    )
    return role + (
        f"Trained on {card.window['train_start']}..{card.window['validation_end']} "
        f"(feature set {card.feature_set_version}); holdout AUC {h.roc_auc:.4f}, "
        f"AP {h.average_precision:.4f}, "
        f"CP@100 {h.card_precision_at_100:.4f}; threshold {card.threshold:.6f}. Model card: model_card.md "
        f"in run {card.run_id}."
    )


def log_training_run(
    data: TrainingSet,
    model: TrainedModel,
    *,
    tracking_uri: str,
    artifact_root: str | Path,
    name: str = MODEL_NAME,
    origin: RunOrigin | None = None,
    as_of: bool = False,
) -> TrainingRun:
    """Log everything about one training run, register it and give it the ``challenger`` alias.

    ``as_of``: a model that scores history out of time (``jobs.registry.asof``): tagged ``purpose=as_of``
    and given no alias, so the promotion gate never sees it and ``promote`` refuses it.

    Any failure marks the run FAILED and removes what this call registered, so a version either exists
    complete with its alias, digest and card, or not at all.
    """
    if data.holdout is None:
        raise RegistryError("a registered model needs holdout metrics: the training set has no holdout")
    holdout_rows = data.holdout
    holdout = evaluate_holdout(model.booster, holdout_rows)
    revision = git_revision()
    client = open_client(tracking_uri)
    run_id = client.create_run(
        experiment_id(client, artifact_root),
        run_name=f"{'as-of ' * as_of}train {data.window.train_start}..{data.window.validation_end}",
        tags=_run_tags(data, model, origin or RunOrigin(), revision)
        | ({TAG_PURPOSE: AS_OF} if as_of else {}),
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
        version = _register_version(client, name, info, run_id, sha, data, model, tracking_uri, as_of)
        card = _card(name, version, data, holdout_rows, model, holdout, sha, revision)
        client.log_text(run_id, render_model_card(card), "model_card.md")
        client.update_model_version(name, version.version, description=_summary(card, as_of))
        if not as_of:
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
        ref=ref_of(client, client.get_model_version(name, version.version)),
        holdout=holdout,
        validation=model.validation_metrics,
        device=model.device.device,
        device_reason=model.device.reason,
        data_digest=data.digest,
        window=data.window.as_dict(),
        training_rows=len(data.train) + len(data.validation),
        params=dict(model.lightgbm_params),
        alert_budget=str(model.params.alert_budget),
    )


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
