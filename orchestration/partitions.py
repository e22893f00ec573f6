"""The one daily partitioning every dated asset shares (a business day of the card processor, in UTC), and
how often the automation around it looks for work.

The partitions run from the data home's first day (jobs/platform/days.py: the day ``txguard demo`` recorded,
else 2018-04-01) to yesterday: a day's file lands once the day is over, so today has no partition yet and a
demo simulated up to yesterday fills every one.

``TXGUARD_SENSOR_INTERVAL_SECONDS`` and ``TXGUARD_SCORING_CRON`` are read when the code location loads, so a
test or a demo can make sensors and the scoring schedule tick quickly; unset, each keeps its own default.
Reading them loads every setting, so an invalid ``TXGUARD_*`` value stops the code location from loading with
one line that names it.
"""

import dagster as dg

from jobs.platform.days import first_day
from jobs.platform.settings import load_settings

FIRST_DAY = first_day(load_settings().home)
"""The first partition, read once as the code location loads."""

daily_partitions = dg.DailyPartitionsDefinition(
    start_date=FIRST_DAY.isoformat(), timezone="UTC", end_offset=0
)

single_run_backfill = dg.BackfillPolicy.single_run()

WAREHOUSE_POOL = "warehouse"
"""Every asset that writes the DuckDB warehouse runs in this pool (limit 1 in dagster.yaml)."""


def sensor_interval(default: int) -> int:
    """Seconds between two evaluations of a sensor: ``TXGUARD_SENSOR_INTERVAL_SECONDS``, else ``default``."""
    return load_settings().sensor_interval_seconds or default


def scoring_cron() -> str:
    """When the scoring schedule ticks: ``TXGUARD_SCORING_CRON``, else 06:00 UTC daily."""
    return load_settings().scoring_cron


def on_upstream_update() -> dg.AutomationCondition:
    """Declarative automation of the chain below ingestion: ``eager`` on every day, not only the newest.

    ``eager()`` looks at the latest time window only (today's wall-clock partition), but a file may land for
    any day: a late delivery, a re-delivery or simulated history. A partition is requested once an upstream
    partition updated and nothing upstream is missing or in progress; the latest evaluation of every
    blocking check upstream must have passed, so a gate that failed in one run stops the next runs too.
    """
    eager = dg.AutomationCondition.eager().without(dg.AutomationCondition.in_latest_time_window())
    return (eager & dg.AutomationCondition.all_deps_blocking_checks_passed()).with_label("on_upstream_update")


def with_its_asset(asset: str) -> dg.AutomationCondition:
    """Declarative automation of a check built into an automated asset: requested with that asset.

    The check runs in the asset's op, so automation requests it with the asset in any case (this condition
    never fires on its own: an unpartitioned check does not see its daily asset as ``will_be_requested``).
    What it changes is the rest of the run: when a check of the run's assets has a condition, the automation
    sensor adds every other check of those assets (dbt tests, the Great Expectations suites); when none
    has, the run lists only the built-in checks, and the quality gate would silently not run.
    """
    will_run = dg.AutomationCondition.any_deps_match(dg.AutomationCondition.will_be_requested())
    return will_run.allow(dg.AssetSelection.assets(asset)).with_label("with_its_asset")
