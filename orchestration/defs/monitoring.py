"""Dagster definitions for the monitoring domain."""

import dagster as dg

defs = dg.Definitions()
