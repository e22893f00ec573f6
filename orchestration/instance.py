"""Prepare the local Dagster home from the repository's ``dagster.yaml`` and point the process at it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from jobs.settings import REPO_ROOT, Settings

INSTANCE_TEMPLATE = REPO_ROOT / "dagster.yaml"


def prepare_dagster_home(settings: Settings) -> Path:
    """Create ``DAGSTER_HOME`` with the instance configuration unless the caller chose another home."""
    home = Path(os.environ.get("DAGSTER_HOME") or settings.dagster_home)
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists() or target.read_bytes() != INSTANCE_TEMPLATE.read_bytes():
        shutil.copyfile(INSTANCE_TEMPLATE, target)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
