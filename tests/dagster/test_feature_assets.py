"""The feature asset in Dagster: a range built by one Pipes job, its metadata, and its blocking contract."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import dagster as dg
import pytest

from jobs.features.definitions import FEATURE_SET_VERSION
from jobs.platform.layout import TRANSACTION_FEATURES, dataset_uri, partition_uri
from jobs.platform.settings import REPO_ROOT
from jobs.platform.storage import read_parquet
from jobs.testing.reference_features import random_raw, write_raw_lake
from orchestration.defs import features as feature_defs
from orchestration.partitions import daily_partitions, single_run_backfill
from orchestration.runs import partition_range_tags
from tests.support import materialize, with_settings

FIRST, LAST = dt.date(2018, 4, 11), dt.date(2018, 4, 12)
FEATURES = dg.AssetKey("transaction_features")
CHECK = dg.AssetCheckKey(FEATURES, "feature_contract")


@dg.asset(deps=[FEATURES], partitions_def=daily_partitions, backfill_policy=single_run_backfill)
def model_input_probe() -> None:
    """Stands in for training and scoring: it must not run when the contract fails."""


def test_job_command_standalone_and_spark_submit() -> None:
    python = feature_defs.feature_job_command(FIRST, LAST, "/lake", "local[*]")
    assert python == [
        sys.executable, "-m", "jobs.features.spark_job",
        "--start", "2018-04-11", "--end", "2018-04-12", "--lake", "/lake", "--master", "local[*]",
    ]  # fmt: skip
    submit = feature_defs.feature_job_command(
        FIRST, LAST, "s3://b/lake", "yarn", "/opt/spark/bin/spark-submit"
    )
    assert submit[:7] == [
        sys.executable,
        "-m",
        "orchestration.processes",
        "/opt/spark/bin/spark-submit",
        "--master",
        "yarn",
        str(REPO_ROOT / "jobs" / "features" / "spark_job.py"),
    ]
    assert Path(submit[6]).is_file()
    assert submit[-4:] == ["--lake", "s3://b/lake", "--master", "yarn"]


def test_asset_wiring() -> None:
    graph = with_settings(feature_defs.defs).resolve_asset_graph()
    node = graph.get(FEATURES)
    assert node.group_name == "features"
    assert node.parent_keys == {
        dg.AssetKey("stg_landing__transactions"),
        dg.AssetKey("stg_landing__fraud_reports"),
    }
    assert node.backfill_policy == dg.BackfillPolicy.single_run()
    assert node.partitions_def == daily_partitions
    (spec,) = feature_defs.transaction_features.check_specs
    assert spec.blocking and spec.key == CHECK
    assert "pipes_subprocess_client" in feature_defs.defs.resources


@pytest.mark.slow
def test_range_materializes_in_one_pipes_job_and_a_broken_day_blocks_downstream(txguard_home: Path) -> None:
    tx, reports = random_raw(3, customers=6, terminals=4, days=12, tx_per_day=8)
    tx.loc[tx.index[tx["tx_datetime"].dt.date == LAST][0], "tx_amount"] = -5.0
    lake = str(txguard_home / "lake")
    write_raw_lake(lake, tx, reports)
    expected = {d.isoformat(): int((tx["tx_datetime"].dt.date == d).sum()) for d in (FIRST, LAST)}
    assert all(expected.values())

    result = materialize(
        [feature_defs.transaction_features, model_input_probe],
        resources={"pipes_subprocess_client": dg.PipesSubprocessClient()},
        tags=partition_range_tags(FIRST.isoformat(), LAST.isoformat()),
    )

    materializations = result.asset_materializations_for_node("transaction_features")
    assert sorted(m.partition for m in materializations) == sorted(expected)
    for materialization in materializations:
        metadata = {key: value.value for key, value in materialization.metadata.items()}
        assert metadata["dagster/row_count"] == expected[materialization.partition]
        assert metadata["dagster/table_name"] == dataset_uri(lake, TRANSACTION_FEATURES)
        assert "terminal_id_risk_30day_window" in {c.name for c in metadata["dagster/column_schema"].columns}
        assert metadata["run_rows"] == sum(expected.values())
        assert metadata["feature_set_version"] == FEATURE_SET_VERSION
        assert metadata["run_null_rates"]["terminal_id_risk_30day_window"] == 0.0
        assert metadata["run_input_partitions"]["raw/transactions"] == 12
    for day, rows in expected.items():
        assert read_parquet(partition_uri(lake, TRANSACTION_FEATURES, day)).num_rows == rows

    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.asset_check_key == CHECK and not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert f"date={LAST.isoformat()}/data.parquet, row " in evaluation.description
    assert "column tx_amount: rule greater_than_or_equal_to(0) failed (value -5.0)" in evaluation.description
    assert f"date={FIRST.isoformat()}" not in evaluation.description
    assert result.get_failed_step_keys() == {"transaction_features"}  # the blocking check fails the step
    assert "model_input_probe" not in {event.step_key for event in result.get_step_success_events()}
    assert not result.asset_materializations_for_node("model_input_probe")
