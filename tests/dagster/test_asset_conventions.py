"""Dagster's conventions on every asset of the code location, and the metadata, links and checks they carry.

The definitions test loads the real ``Definitions``. The materialization tests train and promote a model
through ``fraud_model`` and ``model_promotion`` on a handbook lake with a real MLflow store (marked slow),
score two days with ``transaction_scores`` into a real DuckDB warehouse, and build the staging models with
dbt and the Great Expectations suites on a small raw lake.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from urllib.parse import unquote, urlparse

import dagster as dg
import pandas as pd
import pytest

from jobs.features.definitions import FEATURE_SET_VERSION
from jobs.platform.layout import RAW_FRAUD_REPORTS, RAW_TRANSACTIONS, SCORES_TABLE
from jobs.platform.settings import DEFAULT_MLFLOW_UI_URL, SettingsError, load_settings
from jobs.platform.warehouse import connect
from jobs.scoring.store import SCORE_COLUMNS, read_scores
from orchestration.defs import conventions, scoring
from orchestration.runs import partition_range_tags
from tests.support import (
    materialize,
    report_rows,
    transaction_rows,
    use_world,
    with_settings,
    write_raw_partition,
)

MLFLOW_UI = "http://mlflow.internal:8080/mlflow"
TEAMS = {conventions.DATA_PLATFORM, conventions.FRAUD_ML}


# --- every asset's owners, kinds, code version and description --------------------------------------------


def test_every_asset_has_owners_kinds_a_code_version_and_a_one_line_description() -> None:
    from orchestration.definitions import defs

    specs = {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}
    assert {"raw_transactions", "stg_landing__transactions", "transaction_scores", "rpt_daily_alerts"} <= set(
        specs
    )
    for name, spec in specs.items():
        assert spec.owners and set(spec.owners) <= TEAMS, name
        assert spec.kinds, name
        assert spec.code_version, name
        assert spec.description and "\n" not in spec.description.strip(), name
    assert specs["raw_transactions"].owners == [conventions.DATA_PLATFORM]
    assert specs["fct_transactions"].owners == [conventions.DATA_PLATFORM]
    assert specs["transaction_scores"].owners == [conventions.FRAUD_ML]
    assert specs["transaction_features"].code_version == FEATURE_SET_VERSION
    assert specs["transaction_scores"].code_version == conventions.source_version("jobs.scoring")
    assert specs["stg_landing__transactions"].kinds == {"dbt", "duckdb"}
    assert specs["transaction_scores"].metadata[conventions.TABLE_NAME] == SCORES_TABLE


def test_dbt_code_versions_are_dagster_dbts_hash_of_each_models_sql() -> None:
    import hashlib
    import json

    from orchestration.defs import transform

    manifest = json.loads(transform.dbt_project.manifest_path.read_text())
    sql = {n["name"]: n["raw_code"] for n in manifest["nodes"].values() if n["resource_type"] == "model"}
    specs = {
        key.to_user_string(): spec
        for asset in (transform.dbt_staging, transform.dbt_marts, transform.dbt_scoring_marts)
        for key, spec in asset.specs_by_key.items()
    }
    assert set(specs) == set(sql)
    for name, spec in specs.items():
        assert spec.code_version == hashlib.sha1(sql[name].encode()).hexdigest(), name


def test_a_source_version_changes_with_the_source_and_only_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "engine" / "stage"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""A stage."""\n')
    (package / "compute.py").write_text("RATE = 1\n")
    monkeypatch.setattr(conventions, "REPO_ROOT", tmp_path)
    first = conventions.source_version("engine.stage")
    assert conventions.source_version("engine.stage") == first
    assert conventions.source_version("engine.stage.compute") != first
    (package / "compute.py").write_text("RATE = 2\n")
    assert conventions.source_version("engine.stage") != first
    with pytest.raises(FileNotFoundError):
        conventions.source_version("engine.renamed")


def test_the_mlflow_ui_url_is_a_setting(txguard_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().mlflow_ui_url == DEFAULT_MLFLOW_UI_URL == "http://127.0.0.1:5000"
    monkeypatch.setenv("TXGUARD_MLFLOW_UI_URL", f"{MLFLOW_UI}/")
    assert load_settings().mlflow_ui_url == MLFLOW_UI
    monkeypatch.setenv("TXGUARD_MLFLOW_UI_URL", "mlflow.internal:8080")
    with pytest.raises(SettingsError, match=r"TXGUARD_MLFLOW_UI_URL='mlflow\.internal:8080': expected http"):
        load_settings()


# --- the Great Expectations Data Docs link ------------------------------------------------------------------


@pytest.mark.slow
def test_the_gx_check_links_its_data_docs(txguard_home: Path) -> None:
    from orchestration.defs import transform

    lake = load_settings().lake
    rows = transaction_rows("2018-04-01", 20)
    write_raw_partition(lake, RAW_TRANSACTIONS, "2018-04-01", rows)
    write_raw_partition(
        lake, RAW_FRAUD_REPORTS, "2018-04-01", report_rows("2018-04-01", [rows[2]["transaction_id"]])
    )
    result = materialize(
        [transform.dbt_staging, transform.gx_staged_suites],
        resources={"dbt": transform.defs.resources["dbt"]},
        partition_key="2018-04-01",
    )
    assert result.success
    evaluations = [e for e in result.get_asset_check_evaluations() if e.check_name == transform.GX_CHECK_NAME]
    assert len(evaluations) == 2
    index = txguard_home / "gx" / "data_docs" / "index.html"
    assert index.is_file()
    for evaluation in evaluations:
        links = evaluation.metadata
        assert isinstance(links["data_docs_index"], dg.UrlMetadataValue)
        assert links["data_docs_index"].value == index.as_uri()
        page = urlparse(links["data_docs"].value)
        assert page.scheme == "file" and Path(unquote(page.path)).is_file()


# --- training, promotion and scoring on a real registry ---------------------------------------------------


@pytest.fixture(scope="module")
def world(handbook_lake: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One run that trains, promotes and scores the lake's last two days, as ``daily_pipeline`` does: the run
    exists before the model version it scores with. The new champion's labels cover those days, so an as-of
    model scores them, out of time. Its result, scores and run creation time."""
    from jobs.platform.settings import load_settings
    from jobs.training.trainer import feature_days
    from orchestration.defs.training import fraud_model, model_promotion
    from orchestration.resources import TxguardSettings

    home = tmp_path_factory.mktemp("conventions") / "txguard"
    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    settings = TxguardSettings(home=str(home), lake_root=handbook_lake, mlflow_uri=uri, training_device="cpu")
    days = feature_days(handbook_lake)
    with pytest.MonkeyPatch.context() as patch, dg.DagsterInstance.ephemeral() as instance:
        patch.setenv("TXGUARD_MLFLOW_UI_URL", f"{MLFLOW_UI}/")
        result = dg.materialize(
            [fraud_model, model_promotion, scoring.transaction_scores],
            resources={"settings": settings},
            instance=instance,
            tags=partition_range_tags(days[-2].isoformat(), days[-1].isoformat()),
            raise_on_error=False,
        )
        created = instance.get_run_record_by_id(result.run_id).create_timestamp
    assert result.success
    return {
        "lake": handbook_lake,
        "mlflow": uri,
        "days": days,
        "result": result,
        "run_created_at": pd.Timestamp(created),
        "scores": read_scores(load_settings(home=home).warehouse_path),
        "trained": result.asset_materializations_for_node("fraud_model")[0].metadata,
        "gated": result.asset_materializations_for_node("model_promotion")[0].metadata,
    }


@pytest.fixture
def env(world, txguard_home: Path, monkeypatch: pytest.MonkeyPatch):
    use_world(world, monkeypatch)
    return load_settings()


def score(instance: dg.DagsterInstance, first: dt.date, last: dt.date) -> dg.ExecuteInProcessResult:
    job = with_settings(scoring.defs).resolve_job_def(scoring.SCORING_JOB)
    return job.execute_in_process(
        instance=instance,
        tags=partition_range_tags(first.isoformat(), last.isoformat()),
        raise_on_error=False,
    )


def expected_preview(rows: pd.DataFrame) -> list[int]:
    """The transaction ids the preview must list, in order: the day's five best-scored alerts."""
    alerts = rows[rows["decision"]].sort_values(["score", "transaction_id"], ascending=[False, True])
    return alerts["transaction_id"].head(5).tolist()


@pytest.mark.slow
def test_training_and_promotion_link_their_mlflow_run_and_model_version(world) -> None:
    trained, gated = world["trained"], world["gated"]
    version = trained["model_version"].value
    run_page = f"{MLFLOW_UI}/#/runs/{trained['mlflow_run_id'].value}"
    version_page = f"{MLFLOW_UI}/#/models/txguard-fraud/versions/{version}"
    assert isinstance(trained["mlflow_run"], dg.UrlMetadataValue)
    assert (trained["mlflow_run"].value, trained["mlflow_model_version"].value) == (run_page, version_page)
    assert gated["action"].value == "promote" and gated["challenger_version"].value == version
    assert (gated["mlflow_run"].value, gated["mlflow_model_version"].value) == (run_page, version_page)
    assert gated["mlflow_champion_version"].value == version_page


@pytest.mark.slow
def test_scores_carry_the_standard_table_metadata_a_preview_links_and_checks(world) -> None:
    first, last = world["days"][-2], world["days"][-1]
    result, scores = world["result"], world["scores"]
    assert sorted(set(scores["day"])) == [first, last]
    metadata = {
        dt.date.fromisoformat(m.partition): m.metadata
        for m in result.asset_materializations_for_node("transaction_scores")
    }
    assert set(metadata) == {first, last}
    from jobs.registry.aliases import model_ref

    (version,) = {int(v) for v in scores["model_version"]}
    scorer = model_ref(version, tracking_uri=world["mlflow"])
    alerts = 0
    for day, values in metadata.items():
        rows = scores[scores["day"] == day]
        assert values["dagster/row_count"].value == len(rows) > 0
        assert values["dagster/table_name"].value == SCORES_TABLE
        assert [c.name for c in values["dagster/column_schema"].value.columns] == list(SCORE_COLUMNS)
        assert values["alerts"].value == int(rows["decision"].sum())
        alerts += values["alerts"].value
        preview = values["top_alerts"]
        assert isinstance(preview, dg.MarkdownMetadataValue)
        lines = preview.value.splitlines()
        expected = expected_preview(rows)
        if expected:
            assert lines[:2] == [
                "| transaction | time (UTC) | card | terminal | score | reasons |",
                "| ---: | --- | ---: | ---: | ---: | --- |",
            ]
            assert [int(line.split("|")[1]) for line in lines[2:]] == expected
        else:
            assert preview.value == "No alert this day."
        assert values["run_rows"].value == len(scores) and values["run_days"].value == 2
        assert values["model_version"].value == version
        assert values["mlflow_run"].value == f"{MLFLOW_UI}/#/runs/{scorer.run_id}"
        assert (
            values["mlflow_model_version"].value == f"{MLFLOW_UI}/#/models/txguard-fraud/versions/{version}"
        )
    assert alerts > 0

    checks = {
        e.check_name: e
        for e in result.get_asset_check_evaluations()
        if e.asset_key == dg.AssetKey("transaction_scores")
    }
    specs = {spec.name: spec for spec in scoring.transaction_scores.check_specs}
    assert set(checks) == set(specs) == {*scoring.BLOCKING_CHECKS, scoring.ALERT_SHARE_CHECK}
    for name in scoring.BLOCKING_CHECKS:
        assert specs[name].blocking and checks[name].passed, checks[name].description
        assert checks[name].severity == dg.AssetCheckSeverity.ERROR
    share = scores.groupby("day")["decision"].mean()
    in_band = bool(share.between(scoring.ALERT_SHARE_MIN, scoring.ALERT_SHARE_MAX).all())
    assert not specs[scoring.ALERT_SHARE_CHECK].blocking
    assert checks[scoring.ALERT_SHARE_CHECK].passed == in_band
    assert checks[scoring.ALERT_SHARE_CHECK].severity == dg.AssetCheckSeverity.WARN
    counted = checks[scoring.ROWS_CHECK].metadata["days"].value
    assert {day: counted[day.isoformat()]["rows"] for day in (first, last)} == {
        day: int((scores["day"] == day).sum()) for day in (first, last)
    }


@pytest.mark.slow
def test_scored_at_is_when_the_row_was_written_after_the_model_was_registered(world) -> None:
    from jobs.registry.client import open_client

    scores = world["scores"]
    version = str(world["trained"]["model_version"].value)
    registered = open_client(world["mlflow"]).get_model_version("txguard-fraud", version).creation_timestamp
    registered_at = pd.Timestamp(registered, unit="ms", tz="UTC")
    assert world["run_created_at"] < registered_at
    assert set(scores["run_created_at"]) == {world["run_created_at"]}
    assert (scores["scored_at"] > registered_at).all()
    assert scores.groupby("day")["scored_at"].nunique().eq(1).all()


@pytest.mark.slow
def test_a_day_that_lost_rows_fails_the_blocking_check_and_keeps_the_snapshot(
    world, env, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jobs.scoring.batch

    day = world["days"][-1]
    with dg.DagsterInstance.ephemeral() as instance:
        assert score(instance, day, day).success
        with connect(env.snapshot_path, read_only=True) as snapshot:
            published = snapshot.execute(f"select count(*) from {SCORES_TABLE}").fetchone()[0]
        real = jobs.scoring.batch.score_features
        monkeypatch.setattr(jobs.scoring.batch, "score_features", lambda *a, **k: real(*a, **k).iloc[:-1])
        result = score(instance, day, day)
    assert not result.success
    lost = {e.check_name: e for e in result.get_asset_check_evaluations()}[scoring.ROWS_CHECK]
    assert not lost.passed and lost.severity == dg.AssetCheckSeverity.ERROR
    assert (
        lost.description
        == f"{day}: {published - 1} rows ({published - 1} transactions) for {published} feature rows"
    )
    assert lost.metadata["failing_days"].value == [day.isoformat()]
    assert len(read_scores(env.warehouse_path)) == published - 1
    with connect(env.snapshot_path, read_only=True) as snapshot:
        assert snapshot.execute(f"select count(*) from {SCORES_TABLE}").fetchone()[0] == published


# --- per-day metadata of the monitors ----------------------------------------------------------------------


def test_each_drift_day_carries_its_own_verdict() -> None:
    """Two days of one run: each materialization gets its day's worst PSI, not the run's last day's."""
    from jobs.monitoring.monitors import DriftReport, Skipped
    from orchestration.defs.monitoring import drift_day_metadata

    calm = DriftReport(dt.date(2018, 5, 1), 2, 900, {"tx_amount": 0.02, "score": 0.05})
    drifted = DriftReport(dt.date(2018, 5, 2), 2, 950, {"tx_amount": 0.31, "score": 0.08})
    assert drift_day_metadata(calm) == {
        "max_psi": 0.05,
        "worst_feature": "score",
        "level": "ok",
        "rows": 900,
        "reference_model_version": 2,
    }
    assert (drift_day_metadata(drifted)["max_psi"], drift_day_metadata(drifted)["level"]) == (0.31, "error")
    warm_up = Skipped(dt.date(2018, 4, 3), "warm-up")
    assert drift_day_metadata(warm_up) == {"day": "2018-04-03", "skipped": "warm-up"}
