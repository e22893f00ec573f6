"""The one daily partitioning every dated asset shares: a business day of the card processor, in UTC."""

import dagster as dg

PARTITION_START = "2018-04-01"

daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITION_START, timezone="UTC", end_offset=1)

single_run_backfill = dg.BackfillPolicy.single_run()

WAREHOUSE_POOL = "warehouse"
"""Every asset that writes the DuckDB warehouse runs in this pool (limit 1 in dagster.yaml)."""
