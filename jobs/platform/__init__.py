"""Shared plumbing: settings, storage (local or s3://), the lake layout, the DuckDB warehouse, Spark and Java."""
