"""``txguard backtest`` on a real warehouse: a model registered in MLflow and recorded in the audit chain
scores the handbook lake's days around its label cutoff; the backtest keeps only the days after it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs.platform.settings import load_settings
from orchestration.cli import main
from tests.support import score_around_cutoff

pytestmark = pytest.mark.slow
"""The module trains a model and scores two weeks: out of ``make test-fast``."""


@pytest.fixture(scope="module")
def scored(module_home: Path, handbook_lake: str) -> Iterator[dict[str, object]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TXGUARD_LAKE_ROOT", handbook_lake)
        yield score_around_cutoff(load_settings())


def test_the_backtest_reports_each_week_from_out_of_time_scores_only(scored, tmp_path: Path) -> None:
    import duckdb
    from mlflow import MlflowClient

    from jobs.monitoring.backtest import EXPERIMENT_NAME
    from jobs.training.trainer import end_of_day, load_fraud_labels

    settings = load_settings()
    start, end, cutoff = scored["start"], scored["end"], scored["cutoff"]
    output = tmp_path / "backtest.html"
    result = CliRunner().invoke(
        main, ["backtest", "--from", str(start), "--to", str(end), "--output", str(output)]
    )
    assert result.exit_code == 0, result.output
    with duckdb.connect(str(settings.snapshot_path), read_only=True) as snapshot:
        in_sample = snapshot.execute(
            "select count(*) from scoring.transaction_scores where day <= ?", [cutoff]
        ).fetchone()[0]
        judged = snapshot.execute(
            "select transaction_id, decision from scoring.transaction_scores where day > ?", [cutoff]
        ).fetchall()
    fraud, _ = load_fraud_labels(settings.lake, start, end_of_day(end + dt.timedelta(days=7)))
    caught = sum(1 for tid, decision in judged if tid in fraud and decision)
    missed = sum(1 for tid, decision in judged if tid in fraud and not decision)
    assert in_sample > 0 and caught > 0
    lines = result.output.splitlines()
    assert lines[0].startswith(f"Backtest {start}..{end}, alert budget 1% of the day's active cards")
    assert f"caught {caught:,} of {caught + missed:,} frauds" in lines[0]
    header = next(line for line in lines if "CP@k" in line)
    assert header.split() == [
        "week",
        "days",
        "rows",
        "AUC",
        "AP",
        "CP@k",
        "alerts/day",
        "caught",
        "missed",
        "amount",
        "caught",
        "amount",
        "missed",
        "models",
    ]
    weeks = [line.split()[0] for line in lines[lines.index(header) + 1 :] if line.startswith("2018-W")]
    assert weeks == ["2018-W19", "2018-W20"]
    assert f"{in_sample:,} row(s) scored by a model whose labels reach their day" in result.output
    page = output.read_text()
    assert page.count("<svg") == 3 and "2018-W20" in page
    client = MlflowClient(settings.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id])
    assert (
        run.data.metrics["total_frauds_caught"] == caught
        and run.data.metrics["total_frauds_missed"] == missed
    )
    assert run.data.params["alert_budget"] == "1% of the day's active cards"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"backtest.html", "weeks.json"}


def test_the_backtest_refuses_a_range_whose_fraud_reports_are_still_due(scored) -> None:
    from jobs.training.trainer import feature_days

    last = feature_days(load_settings().lake)[-1]
    result = CliRunner().invoke(main, ["backtest", "--from", str(scored["start"]), "--to", str(last)])
    assert result.exit_code == 1
    assert "the backtest: the labels of" in result.output and "missing report days" in result.output
    assert "AUC" not in result.output


def test_the_model_report_states_the_budget_behind_card_precision(scored, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["report", "model", "1", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "txguard-fraud-v1.md").read_text()
    assert "| alert budget | 1% of the day's active cards |" in markdown
    assert "the 100 cards with the highest scores each day" in markdown
    assert "for the alert budget 1% of the day's active cards" in markdown
