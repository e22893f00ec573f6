"""Monitoring: drift and performance of the champion in production, and alerts to people."""
