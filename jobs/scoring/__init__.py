"""Scoring: a day of features scored with one pinned model version, written to the warehouse atomically."""
