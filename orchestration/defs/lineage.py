"""Dagster definitions for the lineage domain."""

import dagster as dg

defs = dg.Definitions()
