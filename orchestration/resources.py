"""Typed resources that hand ``jobs/`` its settings; nothing here reads the environment at import time."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from jobs.platform.settings import Settings, load_settings


class TxguardSettings(dg.ConfigurableResource):
    """Where txguard's data lives and which compute it uses.

    Each field left empty falls back to its ``TXGUARD_*`` environment variable (DESIGN.md §9), read when a
    run starts, so a deployment sets variables (or ``EnvVar`` values in the launchpad) and the code location
    still loads with none set.
    """

    home: str | None = Field(default=None, description="TXGUARD_HOME")
    landing_root: str | None = Field(default=None, description="TXGUARD_LANDING_ROOT")
    lake_root: str | None = Field(default=None, description="TXGUARD_LAKE_ROOT")
    warehouse: str | None = Field(default=None, description="TXGUARD_WAREHOUSE")
    mlflow_uri: str | None = Field(default=None, description="TXGUARD_MLFLOW_URI")
    spark_master: str | None = Field(default=None, description="TXGUARD_SPARK_MASTER")
    training_device: str | None = Field(default=None, description="TXGUARD_TRAINING_DEVICE")
    quarantine_threshold: float | None = Field(default=None, description="TXGUARD_QUARANTINE_THRESHOLD")

    def load(self) -> Settings:
        return load_settings(
            home=self.home,
            landing_root=self.landing_root,
            lake_root=self.lake_root,
            warehouse=self.warehouse,
            mlflow_uri=self.mlflow_uri,
            spark_master=self.spark_master,
            training_device=self.training_device,
            quarantine_threshold=self.quarantine_threshold,
        )
