"""txguard's Dagster code location: thin assets, checks, resources, schedules and sensors over ``jobs/``."""
