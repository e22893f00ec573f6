"""Dagster definitions for the scoring domain."""

import dagster as dg

defs = dg.Definitions()
