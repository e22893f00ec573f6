"""Dagster definitions for the training domain."""

import dagster as dg

defs = dg.Definitions()
