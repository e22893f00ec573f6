"""Shared plumbing: settings, storage (local or s3://), the lake layout, the warehouse, Spark and Java."""
