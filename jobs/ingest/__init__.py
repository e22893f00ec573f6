"""Ingest: landing files to typed lake partitions under the pandera contract, bad rows to quarantine."""
