"""Training: LightGBM on the matured window, the holdout metrics, and the handbook evaluation."""
