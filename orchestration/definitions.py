"""The one ``Definitions`` of the txguard code location, assembled from one small module per domain.

Loading this module imports Dagster and the domain modules only: Spark, Great Expectations, MLflow and
LightGBM are imported inside asset bodies so that the UI and the daemon load the location quickly.
"""

import dagster as dg

from orchestration.defs import features, governance, ingest, monitoring, scoring, training, transform
from orchestration.partitions import daily_partitions
from orchestration.resources import TxguardSettings
from orchestration.runs import PIPELINE_JOB

daily_pipeline = dg.define_asset_job(
    PIPELINE_JOB,
    selection=dg.AssetSelection.all() - dg.AssetSelection.assets("landing_file_rejects"),
    partitions_def=daily_partitions,
    description="The whole chain for a partition range: ingest, dbt, checks, features, training, scoring.",
)

defs = dg.Definitions.merge(
    ingest.defs,
    transform.defs,
    features.defs,
    training.defs,
    scoring.defs,
    monitoring.defs,
    governance.defs,
    dg.Definitions(jobs=[daily_pipeline], resources={"settings": TxguardSettings()}),
)
