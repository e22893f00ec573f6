"""txguard engine code: plain Python, no Dagster import, each job runnable on its own."""
