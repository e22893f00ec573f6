"""Registry: MLflow runs, registered versions, aliases, the promotion gate and the model card."""
