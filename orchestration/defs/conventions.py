"""What every asset of the code location carries, declared once: owners, code versions, table metadata, links.

Owners are teams by stage: ``DATA_PLATFORM`` owns what lands and what the warehouse models (ingest, dbt),
``FRAUD_ML`` owns what the model makes of it (features, training, scores, monitoring). A Python asset's code
version is ``source_version`` of the engine code that computes it, so the UI flags its materializations
once that code changes; dbt models get theirs from dagster-dbt (a hash of each model's SQL). Table assets
carry Dagster's standard keys; on a daily-partitioned table each day's materialization carries that day's
rows. No engine is imported here: the code location must load without them.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING
from urllib.parse import quote

import dagster as dg

from jobs.platform.settings import REPO_ROOT

if TYPE_CHECKING:
    import pyarrow as pa

DATA_PLATFORM = "team:data-platform"
FRAUD_ML = "team:fraud-ml"

ROW_COUNT = "dagster/row_count"
COLUMN_SCHEMA = "dagster/column_schema"
TABLE_NAME = "dagster/table_name"


def source_version(*modules: str) -> str:
    """A hash of the source files of ``modules`` (dotted names; a package counts each ``.py`` file in it).

    The files are read from the checkout, not imported, so hashing costs no engine import at load time; a
    name that matches no file stops the load, so a renamed module cannot silently freeze a version.
    """
    digest = hashlib.sha256()
    for name in modules:
        path = REPO_ROOT.joinpath(*name.split("."))
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
        for file in files:
            digest.update(file.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def table_schema(schema: pa.Schema) -> dg.TableSchema:
    """An Arrow schema as Dagster's column schema: names, Arrow types, and which columns may be null."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                field.name, str(field.type), constraints=dg.TableColumnConstraints(nullable=field.nullable)
            )
            for field in schema
        ]
    )


def table_metadata(table_name: str, rows: int, schema: dg.TableSchema) -> dict[str, dg.MetadataValue]:
    """Dagster's standard table keys for one materialization: which table, its columns, the rows written."""
    return {
        TABLE_NAME: dg.MetadataValue.text(table_name),
        ROW_COUNT: dg.MetadataValue.int(rows),
        COLUMN_SCHEMA: dg.MetadataValue.table_schema(schema),
    }


def mlflow_run_url(ui: str, run_id: str) -> dg.UrlMetadataValue:
    """The MLflow UI's page of a run (``#/runs/<id>`` finds its experiment)."""
    return dg.MetadataValue.url(f"{ui}/#/runs/{quote(run_id)}")


def mlflow_model_version_url(ui: str, name: str, version: int) -> dg.UrlMetadataValue:
    """The MLflow UI's page of a registered model version."""
    return dg.MetadataValue.url(f"{ui}/#/models/{quote(name)}/versions/{version}")
