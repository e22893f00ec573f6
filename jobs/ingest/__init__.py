"""Ingest: landing files to typed lake partitions under the pandera contract, bad rows and files quarantined.

``landing`` lists and names what producers dropped, ``boundary`` decides what below the landing root may be
read (regular files only, links never followed), ``reading`` turns bytes into raw rows, ``typing_rules``
parses values to the contract's types, ``validation`` applies the contract (``contract``) to one file,
``columnar`` takes a clean file through all of that a column at a time, ``lake_index`` checks a file against
what the lake already accepted, ``day`` ingests, reconciles and writes one partition, and ``misnamed`` sets
aside entries whose name maps to no partition.
"""
