"""Features: the point-in-time feature set, the Spark job that builds it, its tiles, and its contract."""
