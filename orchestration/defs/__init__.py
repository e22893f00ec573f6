"""One module per domain, each exporting ``defs``."""
