"""The one ``Definitions`` of the txguard code location, assembled from one small module per domain.

Loading this module imports Dagster and the domain modules only: Spark, Great Expectations, MLflow and
LightGBM are imported inside asset bodies so that the UI and the daemon load the location quickly.
A run's steps are forked from a server that has loaded this module once (``step_processes``), so a step
process does not load the location again.
"""

import dagster as dg

from orchestration.defs import (
    features,
    governance,
    ingest,
    monitoring,
    recovery,
    scoring,
    training,
    transform,
)
from orchestration.partitions import daily_partitions
from orchestration.resources import TxguardSettings
from orchestration.runs import CHAIN_AFTER_INGEST_JOB, PIPELINE_JOB

step_processes = dg.multiprocess_executor.configured(
    {"start_method": {"forkserver": {"preload_modules": [__name__]}}},
    name="step_processes",
)
"""A process per step, as Dagster's default executor runs them, but forked from a forkserver that imported
the code location once per run, instead of spawned fresh: a spawned step process imports Dagster and the
location again (dagster-dbt, and the dbt it imports, most of it) before its step starts."""

daily_pipeline = dg.define_asset_job(
    PIPELINE_JOB,
    selection=dg.AssetSelection.all() - dg.AssetSelection.assets("landing_file_rejects"),
    partitions_def=daily_partitions,
    description="The whole chain for a partition range: ingest, dbt, checks, features, training, scoring.",
)

chain_after_ingest = dg.define_asset_job(
    CHAIN_AFTER_INGEST_JOB,
    selection=dg.AssetSelection.all() - dg.AssetSelection.groups("ingest"),
    partitions_def=daily_partitions,
    description="The chain below ingestion, for the days of a range whose ingestion passed its check.",
)

defs = dg.Definitions.merge(
    ingest.defs,
    transform.defs,
    features.defs,
    training.defs,
    scoring.defs,
    monitoring.defs,
    governance.defs,
    recovery.defs,
    dg.Definitions(
        jobs=[daily_pipeline, chain_after_ingest],
        resources={"settings": TxguardSettings()},
        executor=step_processes,
    ),
)
