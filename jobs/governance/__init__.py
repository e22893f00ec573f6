"""Governance: the hash-chained audit records, lineage answers, OpenLineage events and model reports."""
