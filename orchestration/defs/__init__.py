"""One module per domain, each exporting ``defs``; ``conventions`` holds what every domain's assets share."""
