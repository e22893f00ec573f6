"""Registry: MLflow runs and registered versions, aliases, the promotion policy and decisions, model cards."""
