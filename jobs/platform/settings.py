"""One typed settings object for every txguard process, read from ``TXGUARD_*`` environment variables.

Every root may be a local path or an ``s3://`` URI. Defaults derive from ``TXGUARD_HOME`` so that a fresh
checkout works with no configuration at all.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_HOME = REPO_ROOT / ".txguard"

TrainingDevice = Literal["auto", "cpu", "gpu", "cuda"]


class SettingsError(ValueError):
    """Raised with a message that names the variable and the expected form."""


def _is_uri_or_path(value: str) -> bool:
    if "://" in value:
        return value.startswith(("s3://", "file://"))
    return bool(value.strip())


class Settings(BaseSettings):
    """Where txguard keeps its data and which compute it uses (DESIGN.md §9)."""

    model_config = SettingsConfigDict(env_prefix="TXGUARD_", extra="ignore", frozen=True)

    home: Path = Field(default=DEFAULT_HOME, description="data home: lake, warehouse, MLflow, Dagster")
    landing_root: str | None = Field(default=None, description="where producers drop files (path or s3://)")
    lake_root: str | None = Field(default=None, description="Parquet lake (path or s3://)")
    warehouse: Path | None = Field(default=None, description="the DuckDB warehouse file")
    mlflow_uri: str | None = Field(default=None, description="MLflow tracking URI")
    spark_master: str = Field(default="local[*]", description="Spark master URL")
    training_device: TrainingDevice = Field(default="auto", description="auto, cpu, gpu or cuda")
    quarantine_threshold: float = Field(
        default=0.05, ge=0.0, le=1.0, description="rejected share of a file above which its partition fails"
    )
    s3_endpoint_url: str | None = Field(default=None, description="S3 API endpoint (MinIO, moto, ...)")

    @field_validator("landing_root", "lake_root")
    @classmethod
    def _root_form(cls, value: str | None) -> str | None:
        if value is not None and not _is_uri_or_path(value):
            raise ValueError("expected a local path or an s3://bucket/prefix URI")
        return value.rstrip("/") if value else value

    @field_validator("spark_master")
    @classmethod
    def _spark_master_form(cls, value: str) -> str:
        if not (value.startswith(("local", "spark://", "yarn", "k8s://"))):
            raise ValueError("expected local[*], local[N], spark://host:port, yarn or k8s://...")
        return value

    @cached_property
    def landing(self) -> str:
        return self.landing_root or str(self.home / "landing")

    @cached_property
    def lake(self) -> str:
        return self.lake_root or str(self.home / "lake")

    @cached_property
    def warehouse_path(self) -> Path:
        return self.warehouse or self.home / "warehouse" / "txguard.duckdb"

    @cached_property
    def snapshot_path(self) -> Path:
        """The analysts' read-only copy, published atomically after each warehouse write."""
        return self.warehouse_path.with_name("txguard_snapshot.duckdb")

    @cached_property
    def tracking_uri(self) -> str:
        if self.mlflow_uri:
            return self.mlflow_uri
        return f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    @cached_property
    def mlflow_artifact_root(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @cached_property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @cached_property
    def lineage_dir(self) -> Path:
        return self.home / "lineage"


def load_settings(**overrides: object) -> Settings:
    """Read the environment, apply explicit overrides, and fail with the variable's name on bad input."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        problems = []
        for item in error.errors():
            field = str(item["loc"][0]) if item["loc"] else "?"
            problems.append(f"TXGUARD_{field.upper()}={item.get('input')!r}: {item['msg']}")
        raise SettingsError("invalid txguard settings:\n  " + "\n  ".join(problems)) from None
