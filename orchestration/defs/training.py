"""Training: ``fraud_model`` trains and registers a challenger, ``model_promotion`` gates it; weekly.

Both assets are thin over ``jobs.registry.release``; LightGBM and MLflow are imported inside the bodies so
that the code location loads fast. ``transaction_features`` carries a blocking contract check, so a run whose
features fail it never reaches training.
"""

import json

import dagster as dg

from orchestration.defs.conventions import FRAUD_ML, mlflow_model_version_url, mlflow_run_url, source_version
from orchestration.partitions import WAREHOUSE_POOL
from orchestration.resources import TxguardSettings
from orchestration.runs import partition_range_of

CODE_VERSION = source_version("jobs.training", "jobs.registry")
"""Both assets: training and the promotion gate are the trainer, its metrics and the registry."""


def _metrics(prefix: str, metrics) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in metrics.as_dict().items()} if metrics else {}


@dg.asset(
    group_name="training",
    deps=[dg.AssetKey("transaction_features")],
    kinds={"lightgbm", "mlflow"},
    owners=[FRAUD_ML],
    code_version=CODE_VERSION,
    pool=WAREHOUSE_POOL,
)
def fraud_model(context: dg.AssetExecutionContext, settings: TxguardSettings) -> dg.MaterializeResult:
    """LightGBM on the matured window ending at the newest feature partition, registered as @challenger."""
    from jobs.registry.decision_records import record_training
    from jobs.registry.release import train_and_register
    from jobs.registry.tracking import RunOrigin

    config = settings.load()
    origin = RunOrigin(
        dagster_run_id=context.run_id,
        dagster_job=context.job_name,
        partition_range=partition_range_of(context.run.tags),
    )
    run = train_and_register(config, origin=origin)
    record_training(config, run, context.run_id)
    context.log.info(f"{run.ref.name} v{run.ref.version} trained on {run.device}: {run.device_reason}")
    return dg.MaterializeResult(
        metadata={
            "mlflow_run_id": run.ref.run_id,
            "mlflow_run": mlflow_run_url(config.mlflow_ui_url, run.ref.run_id),
            "model_version": run.ref.version,
            "mlflow_model_version": mlflow_model_version_url(
                config.mlflow_ui_url, run.ref.name, run.ref.version
            ),
            "model_uri": run.ref.model_uri,
            "artifact_sha256": run.ref.artifact_sha256,
            "threshold": run.ref.threshold,
            "device": run.device,
            "device_reason": run.device_reason,
            "training_window": dg.MetadataValue.json(run.window),
            "data_sha256": run.data_digest,
            **_metrics("holdout_", run.holdout),
            **_metrics("validation_", run.validation),
        }
    )


@dg.asset(
    group_name="training",
    deps=[fraud_model],
    kinds={"mlflow"},
    owners=[FRAUD_ML],
    code_version=CODE_VERSION,
    pool=WAREHOUSE_POOL,
)
def model_promotion(context: dg.AssetExecutionContext, settings: TxguardSettings) -> dg.MaterializeResult:
    """Challenger vs champion on the newest matured holdout; @champion moves only if the challenger wins."""
    from jobs.registry.aliases import model_ref
    from jobs.registry.decision_records import record_decision
    from jobs.registry.release import run_promotion_gate

    config = settings.load()
    outcome = run_promotion_gate(config, actor="pipeline:model_promotion")
    context.log.info(outcome.summary)
    decision, record = outcome.decision, outcome.record
    if record is not None:
        record_decision(config, record, context.run_id)
    links: dict[str, dg.MetadataValue] = {}
    if decision is not None:
        challenger = model_ref(decision.challenger_version, tracking_uri=config.tracking_uri)
        links["mlflow_run"] = mlflow_run_url(config.mlflow_ui_url, challenger.run_id)
        links["mlflow_model_version"] = mlflow_model_version_url(
            config.mlflow_ui_url, challenger.name, challenger.version
        )
    if record is not None and record.champion_after is not None:
        links["mlflow_champion_version"] = mlflow_model_version_url(
            config.mlflow_ui_url, record.name, record.champion_after
        )
    return dg.MaterializeResult(
        metadata={
            **links,
            "summary": outcome.summary,
            "action": record.action if record else "none",
            "challenger_version": decision.challenger_version if decision else None,
            "champion_before": decision.champion_version if decision else None,
            "champion_after": record.champion_after if record else None,
            **_metrics("challenger_", decision.challenger_metrics if decision else None),
            **_metrics("champion_", decision.champion_metrics if decision else None),
            "record": dg.MetadataValue.json(json.loads(record.to_json()) if record else {}),
        }
    )


weekly_retraining_job = dg.define_asset_job(
    "weekly_retraining", selection=dg.AssetSelection.assets(fraud_model, model_promotion)
)

weekly_retraining_schedule = dg.ScheduleDefinition(
    name="weekly_retraining_schedule",
    job=weekly_retraining_job,
    cron_schedule="0 4 * * 1",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Mondays 04:00 UTC: retrain on the newest matured window, then run the promotion gate",
)

defs = dg.Definitions(
    assets=[fraud_model, model_promotion],
    jobs=[weekly_retraining_job],
    schedules=[weekly_retraining_schedule],
)
