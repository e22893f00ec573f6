"""txguard's Dagster code location: thin assets, checks, resources, schedules and sensors over ``jobs/``."""

import warnings

warnings.filterwarnings("ignore", message=r".*is currently in (beta|preview)", module=r"dagster.*")
warnings.filterwarnings("ignore", message=r".*is currently in (beta|preview)", module=r"orchestration.*")
