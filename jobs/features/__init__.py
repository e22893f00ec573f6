"""Features: the point-in-time feature set, the Spark job that builds it, and its contract."""
