"""The scale benchmark at a small factor: every run and step measured, the daily runs without training.

Factor 0.2 (the demo's 1,000 cards) and a first backfill of 44 days: the first model must clear the
promotion gate's AP floor, or no champion exists and the daily runs would train again.

Correctness only, no timing: the benchmark itself (``python -m benchmarks scale``) judges the targets.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_scale import DBT_STEPS, EARLY_DAY, TRAINING_STEPS, measure, report_lines

pytestmark = pytest.mark.slow

DAILY_STEPS = {
    "raw_transactions",
    "raw_fraud_reports",
    "dbt_staging",
    "gx_staged_suites",
    "dbt_marts",
    "transaction_features",
    "transaction_scores",
    "dbt_scoring_marts",
    "feature_drift",
    "model_performance",
}


def test_a_tiny_scale_run_measures_every_step_and_trains_only_in_the_first_backfill(
    txguard_home: Path,
) -> None:
    early = EARLY_DAY
    report = measure(0.2, days=early + 2, early=early, late=early + 2, seed=7)

    assert [run.name for run in report.runs] == [
        "backfill to early",
        "early day",
        "backfill to late",
        "late day",
    ]
    assert report.simulate.rows > 0 and report.simulate.peak_bytes > 0
    for run in report.runs:
        assert not [f for f in run.failed if not f.startswith(("feature_drift", "model_performance"))], run
        assert run.rows > 0 and run.peak_bytes > 0 and run.seconds > 0
        assert len(run.publication_seconds) >= len(DBT_STEPS) and all(s > 0 for s in run.publication_seconds)
        steps = {step.step: step for step in run.steps}
        assert set(steps) >= DAILY_STEPS, (run.name, sorted(steps))
        for step in run.steps:
            assert step.status == "ok", step
            assert step.rows == run.rows and step.seconds > 0 and step.peak_bytes > 0, step
    first, *later = report.runs
    assert set(TRAINING_STEPS) <= {step.step for step in first.steps}
    assert "fraud_model" in first.materialized
    for run in later:
        assert not set(TRAINING_STEPS) & {step.step for step in run.steps}, run.name
        assert "fraud_model" not in run.materialized

    printed = "\n".join(report_lines(report))
    assert "late/early" in printed and "targets" in printed
    assert "publication, day" in printed and "dbt steps, day" in printed
    for step in DAILY_STEPS:
        assert step in printed
