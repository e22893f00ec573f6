"""The one ``Definitions`` of the txguard code location, assembled from one small module per domain.

Loading this module imports Dagster and the domain modules only: Spark, Great Expectations, MLflow and
LightGBM are imported inside asset bodies so that the UI and the daemon load the location quickly.
"""

import dagster as dg

from orchestration.defs import features, ingest, lineage, monitoring, scoring, training, warehouse
from orchestration.resources import TxguardSettings

defs = dg.Definitions.merge(
    ingest.defs,
    warehouse.defs,
    features.defs,
    training.defs,
    scoring.defs,
    monitoring.defs,
    lineage.defs,
    dg.Definitions(resources={"settings": TxguardSettings()}),
)
