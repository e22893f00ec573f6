"""The whole chain on the demo's simulated landing zone, through the Dagster definitions the UI shows.

One headless range run (the same path as ``txguard run``) must take landing files to scored rows, and a
randomly chosen scored row's lineage, rebuilt from the audit records, must agree with what the run did.
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import dagster as dg
import pytest

from orchestration.cli.demo import DEMO_CUSTOMERS, DEMO_DAYS, DEMO_TERMINALS

DEMO_START = dt.date(2018, 4, 1)
"""The handbook's first day: the default first partition of a data home."""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_run(module_home: Path):
    from jobs.platform.settings import load_settings
    from jobs.simulation.simulator import SimulationConfig, simulate, write_landing
    from orchestration.definitions import defs
    from orchestration.runs import run_partition_range

    settings = load_settings()
    config = SimulationConfig(
        customers=DEMO_CUSTOMERS, terminals=DEMO_TERMINALS, days=DEMO_DAYS, start=DEMO_START, seed=7
    )
    write_landing(simulate(config), settings.landing, "csv")
    last = DEMO_START + dt.timedelta(days=DEMO_DAYS - 1)
    with dg.DagsterInstance.ephemeral() as instance:
        outcome = run_partition_range(defs, DEMO_START.isoformat(), last.isoformat(), instance)
    return settings, outcome


def test_one_range_run_takes_landing_files_to_scores_every_one_out_of_time(pipeline_run) -> None:
    """History is scored by models that never saw it: each scored day is after its model's label cutoff,
    the days before the first possible model are left unscored, and everything after them is scored."""
    from jobs.platform.warehouse import connect
    from jobs.registry.aliases import model_ref

    settings, outcome = pipeline_run
    assert outcome.success, (outcome.failed_steps, outcome.failed_checks)
    for asset in ("raw_transactions", "stg_landing__transactions", "transaction_features", "fraud_model"):
        assert asset in outcome.materialized
    assert "transaction_scores" in outcome.materialized
    with connect(settings.snapshot_path, read_only=True) as connection:
        by_version = connection.execute(
            "select model_version, min(day), max(day) from scoring.transaction_scores group by all"
        ).fetchall()
        days = {
            row[0]
            for row in connection.execute("select distinct day from scoring.transaction_scores").fetchall()
        }
        runs = connection.execute("select distinct dagster_run_id from scoring.transaction_scores").fetchall()
    assert runs == [(outcome.run_id,)]
    assert len(by_version) > 1, "history is scored by as-of models, not by one model that saw it all"
    for version, first, _ in by_version:
        assert first > model_ref(int(version), tracking_uri=settings.tracking_uri).label_cutoff, version
    all_days = [DEMO_START + dt.timedelta(days=i) for i in range(DEMO_DAYS)]
    unscored = [day for day in all_days if day not in days]
    assert unscored and unscored == all_days[: len(unscored)], "only the days before the first model"
    assert len(days) == DEMO_DAYS - len(unscored)


def test_a_random_scored_rows_lineage_matches_what_the_run_did(pipeline_run) -> None:
    settings, outcome = pipeline_run
    from jobs.governance.audit import verify_chain
    from jobs.governance.lineage import transaction_lineage
    from jobs.platform.warehouse import connect
    from jobs.registry.aliases import model_ref

    with connect(settings.snapshot_path, read_only=True) as connection:
        ids = connection.execute("select transaction_id from scoring.transaction_scores").fetchall()
        chosen = random.Random(0).choice(ids)[0]
        row = connection.execute(
            "select model_name, model_version from scoring.transaction_scores where transaction_id = ?",
            [chosen],
        ).fetchone()
        trail = transaction_lineage(connection, chosen)
        assert verify_chain(connection).ok

    scorer = model_ref(int(row[1]), tracking_uri=settings.tracking_uri)
    assert row[0] == scorer.name
    assert trail["gaps"] == []
    assert trail["model"]["artifact_sha256"] == scorer.artifact_sha256
    assert trail["training"]["mlflow_run_id"] == scorer.run_id
    assert str(trail["training"]["label_cutoff"]) == str(scorer.label_cutoff)
    gating = {(c["asset"], c["name"]): c for c in trail["gating_checks"] if "asset" in c}
    assert gating, "the scoring record names the checks that gated it"
    assert all(c["passed"] for c in gating.values() if c["severity"] == "ERROR")
    assert outcome.run_id in {step["dagster_run_id"] for step in trail["runs"]}
