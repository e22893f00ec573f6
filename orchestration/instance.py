"""Prepare the local Dagster home from the repository's ``dagster.yaml`` and point the process at it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from jobs.platform.settings import REPO_ROOT, Settings

INSTANCE_TEMPLATE = REPO_ROOT / "dagster.yaml"


def prepare_dagster_home(settings: Settings) -> Path:
    """Create ``DAGSTER_HOME`` with the instance configuration unless the caller chose another home, and
    its storage with the warehouse pool's slots."""
    home = Path(os.environ.get("DAGSTER_HOME") or settings.dagster_home)
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists() or target.read_bytes() != INSTANCE_TEMPLATE.read_bytes():
        shutil.copyfile(INSTANCE_TEMPLATE, target)
    os.environ["DAGSTER_HOME"] = str(home)
    _allocate_warehouse_pool()
    return home


def _allocate_warehouse_pool() -> None:
    """Give the warehouse and landing pools their default slots before any run needs them.

    Dagster allocates a pool's slots lazily, at the first step that claims one. On SQLite two runs that get
    there at the same moment can each allocate a slot, and then two writers open the DuckDB file together
    (or fraud reports are checked while the same run's transactions are still being written).
    """
    import dagster as dg

    from orchestration.defs.ingest import LANDING_POOL
    from orchestration.partitions import WAREHOUSE_POOL

    with dg.DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        allocated = {pool.name for pool in storage.get_pool_limits()}
        for name in (WAREHOUSE_POOL, LANDING_POOL):
            if name not in allocated:
                storage.initialize_concurrency_limit_to_default(name)
