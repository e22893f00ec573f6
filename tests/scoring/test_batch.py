"""Scoring: the pure scorer (scores, decisions, reason codes), then the Dagster asset on a real registry.

Unit tests use a LightGBM model trained here on synthetic rows. The asset tests (marked slow) use a real
MLflow SQLite store with versions registered through ``jobs.registry.tracking``, a lake of simulated feature
partitions, and real ``dagster`` runs.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from jobs.features.definitions import FEATURE_COLUMNS, FEATURE_SET_VERSION, KEY_COLUMNS, FeatureSetMismatch
from jobs.platform.settings import REPO_ROOT, load_settings
from jobs.registry.aliases import ModelRef
from jobs.scoring.batch import (
    REVIEW_TOP_CARDS,
    MissingFeatures,
    ScoringInputError,
    score_days,
    score_features,
)
from jobs.scoring.store import (
    BATCH_COLUMNS,
    PROVENANCE_COLUMNS,
    REASON_COLUMNS,
    SCORE_COLUMNS,
    read_partitions,
    read_scores,
)
from tests.support import (
    FAST,
    handbook_features,
    handbook_transactions,
    small_booster,
    use_world,
    with_settings,
    write_feature_lake,
    write_feature_partition,
)

RUN_CREATED_AT = dt.datetime(2018, 8, 2, 6, 0, tzinfo=dt.UTC)


def synthetic_features(n: int, seed: int, day: dt.date = dt.date(2018, 8, 1)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    midnight = pd.Timestamp(day.isoformat(), tz="UTC")
    frame = pd.DataFrame(
        {
            "transaction_id": np.arange(n, dtype=np.int64) + seed * 1_000_000,
            "tx_datetime": midnight + pd.to_timedelta(np.sort(rng.integers(0, 86_399, n)), unit="s"),
            "customer_id": rng.integers(0, n // 4, n),
            "terminal_id": rng.integers(0, n // 2, n),
        }
    )
    for column in FEATURE_COLUMNS:
        frame[column] = rng.gamma(2.0, 30.0, n) if "amount" in column else rng.uniform(0, 1, n)
    frame["feature_set_version"] = FEATURE_SET_VERSION
    return frame


@pytest.fixture(scope="module")
def booster():
    train = synthetic_features(4000, seed=1)
    rng = np.random.default_rng(2)
    logit = 0.04 * (train["tx_amount"] - 120) + 4 * train["terminal_id_risk_7day_window"] - 3
    label = rng.uniform(0, 1, len(train)) < 1 / (1 + np.exp(-logit))
    return small_booster(train, label, rounds=40)


@pytest.fixture(scope="module")
def model(booster) -> ModelRef:
    scores = booster.predict(synthetic_features(2000, seed=3)[list(FEATURE_COLUMNS)].to_numpy())
    return ModelRef(
        name="txguard-fraud",
        version=3,
        run_id="mlflow-run",
        artifact_sha256="0" * 64,
        threshold=float(np.quantile(scores, 0.97)),
        feature_set_version=FEATURE_SET_VERSION,
        model_uri="file:///unused",
    )


def test_scores_decisions_and_provenance(booster, model) -> None:
    features = synthetic_features(1500, seed=4)
    scored = score_features(features, booster, model, "run-1", RUN_CREATED_AT)
    assert list(scored.columns) == list(BATCH_COLUMNS)
    expected = booster.predict(features[list(FEATURE_COLUMNS)].to_numpy())
    np.testing.assert_array_equal(scored["score"].to_numpy(), expected)
    np.testing.assert_array_equal(scored["decision"].to_numpy(), expected >= model.threshold)
    assert 0 < scored["decision"].sum() < len(scored)
    for column in KEY_COLUMNS:
        assert scored[column].tolist() == features[column].tolist()
    assert set(scored["day"]) == {dt.date(2018, 8, 1)}
    labels = scored[["model_name", "model_version", "feature_set_version"]].drop_duplicates()
    assert labels.values.tolist() == [["txguard-fraud", 3, FEATURE_SET_VERSION]]
    assert set(scored["dagster_run_id"]) == {"run-1"} and set(scored["run_created_at"]) == {
        pd.Timestamp(RUN_CREATED_AT)
    }


def expected_reasons(booster, row: np.ndarray) -> list[str | None]:
    """Row by row, the plain way: sort one row's contributions and keep the positive top three."""
    contributions = booster.predict(row.reshape(1, -1), pred_contrib=True)[0][:-1]
    order = sorted(range(len(FEATURE_COLUMNS)), key=lambda i: (-contributions[i], i))[:3]
    return [FEATURE_COLUMNS[i] if contributions[i] > 0 else None for i in order]


def test_reason_codes_are_the_top_positive_contributions(booster, model) -> None:
    features = synthetic_features(300, seed=5)
    scored = score_features(features, booster, model, "run-1", RUN_CREATED_AT, explain="all")
    matrix = features[list(FEATURE_COLUMNS)].to_numpy()
    for i in range(len(features)):
        assert scored.loc[i, list(REASON_COLUMNS)].tolist() == expected_reasons(booster, matrix[i]), i
    assert scored["reason_1"].notna().all()
    risky = scored.loc[scored["score"].idxmax()]
    assert {"tx_amount", "terminal_id_risk_7day_window"} & set(risky[list(REASON_COLUMNS)])


def test_review_explains_alerts_and_each_top_cards_best_transaction(booster, model) -> None:
    features = synthetic_features(2500, seed=6)
    scored = score_features(features, booster, model, "run-1", RUN_CREATED_AT)
    ranked = scored.sort_values(["score", "transaction_id"], ascending=[False, True])
    best_of_card = ranked.drop_duplicates("customer_id").head(REVIEW_TOP_CARDS)
    expected = set(scored.loc[scored["decision"], "transaction_id"]) | set(best_of_card["transaction_id"])
    assert set(scored.loc[scored["reason_1"].notna(), "transaction_id"]) == expected
    assert len(expected) < len(scored) / 2
    full = score_features(features, booster, model, "run-1", RUN_CREATED_AT, explain="all")
    explained = scored["reason_1"].notna()
    pd.testing.assert_frame_equal(scored[explained], full[explained])
    none = score_features(features, booster, model, "run-1", RUN_CREATED_AT, explain="none")
    assert none[list(REASON_COLUMNS)].isna().all().all()


def test_scoring_is_deterministic_and_independent_of_row_order(booster, model) -> None:
    features = synthetic_features(1200, seed=7)
    first = score_features(features, booster, model, "run-1", RUN_CREATED_AT)
    shuffled = features.sample(frac=1, random_state=1)
    shuffled = score_features(shuffled, booster, model, "run-2", RUN_CREATED_AT)
    key = ["transaction_id"]
    same = [c for c in BATCH_COLUMNS if c not in PROVENANCE_COLUMNS]
    pd.testing.assert_frame_equal(
        first[same].sort_values(key).reset_index(drop=True),
        shuffled[same].sort_values(key).reset_index(drop=True),
    )


def test_a_feature_set_mismatch_is_refused(booster, model) -> None:
    features = synthetic_features(50, seed=8)
    features.loc[10:, "feature_set_version"] = "fs-000000000000"
    with pytest.raises(FeatureSetMismatch, match=r"lake/day\.parquet for txguard-fraud v3.*fs-000000000000"):
        score_features(features, booster, model, "run-1", RUN_CREATED_AT, source="lake/day.parquet")


def test_null_features_and_naive_times_are_refused(booster, model) -> None:
    features = synthetic_features(50, seed=9)
    features.loc[7, "terminal_id_risk_7day_window"] = np.nan
    with pytest.raises(ScoringInputError, match=r"d\.parquet, row 8: terminal_id_risk_7day_window is null"):
        score_features(features, booster, model, "run-1", RUN_CREATED_AT, source="d.parquet")
    with pytest.raises(ScoringInputError, match="missing column"):
        score_features(features.drop(columns=["tx_amount"]), booster, model, "run-1", RUN_CREATED_AT)
    with pytest.raises(ValueError, match="timezone-aware"):
        score_features(synthetic_features(5, seed=9), booster, model, "run-1", dt.datetime(2018, 8, 2))


def test_an_empty_day_scores_to_an_empty_partition(booster, model) -> None:
    scored = score_features(synthetic_features(10, seed=9).head(0), booster, model, "run-1", RUN_CREATED_AT)
    assert list(scored.columns) == list(BATCH_COLUMNS) and scored.empty


def test_score_days_refuses_a_range_with_a_missing_partition(booster, model, txguard_home) -> None:
    settings = load_settings()
    present = dt.date(2018, 8, 1)
    frame = synthetic_features(100, seed=10, day=present)
    write_feature_partition(settings.lake, frame, present)
    days = [present, dt.date(2018, 8, 2)]
    with pytest.raises(MissingFeatures, match=r"missing for 2018-08-02 \(.*date=2018-08-02/data\.parquet\)"):
        score_days(settings, days, model, booster, run_id="run-1", run_created_at=RUN_CREATED_AT)
    assert not settings.warehouse_path.exists()
    written = score_days(settings, days[:1], model, booster, run_id="run-1", run_created_at=RUN_CREATED_AT)
    assert written[0].write.rows == 100 and written[0].explained_rows >= frame["customer_id"].nunique()
    assert len(read_scores(settings.warehouse_path)) == 100


# --- the asset, on a real registry -------------------------------------------------------------------


CHAMPION_CUTOFF = dt.date(2018, 5, 1)
"""The label cutoff of the world's version 3: it may score only the days after it."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A lake of simulated feature partitions (2018-04-01..05-30) and an MLflow store with versions 1 and 2
    of the model, whose labels end before the lake's last three days, and version 3, whose labels end on
    ``CHAMPION_CUTOFF``."""
    from jobs.registry.client import open_client
    from jobs.registry.tracking import log_training_run
    from jobs.training.trainer import assemble_training_set, feature_days, matured_window, train_model

    root = tmp_path_factory.mktemp("scoring-world")
    tx = handbook_transactions(n_customers=300, n_terminals=500)
    lake = str(root / "lake")
    write_feature_lake(lake, tx, handbook_features(tx))
    days = feature_days(lake)
    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    open_client(uri)
    refs = []
    for latest in (days[-4], days[-4], CHAMPION_CUTOFF):
        data = assemble_training_set(lake, matured_window(latest, earliest_day=days[0]))
        trained = train_model(data, FAST, device="cpu")
        run = log_training_run(data, trained, tracking_uri=uri, artifact_root=root / "mlflow" / "artifacts")
        refs.append(run.ref)
    return {"lake": lake, "mlflow": uri, "days": days, "refs": refs}


@pytest.fixture
def env(world, txguard_home, monkeypatch: pytest.MonkeyPatch):
    use_world(world, monkeypatch)
    return load_settings()


def make_champion(world, version: int) -> None:
    from jobs.registry.aliases import CHAMPION, resolve_alias
    from jobs.registry.promotion import promote

    try:
        if resolve_alias(CHAMPION, tracking_uri=world["mlflow"]).version == version:
            return
    except Exception:
        pass
    promote(version, "test setup", "pytest", tracking_uri=world["mlflow"])


def scoring_defs() -> dg.Definitions:
    from orchestration.defs import scoring

    return with_settings(scoring.defs)


def run_range(start: dt.date, end: dt.date, instance: dg.DagsterInstance):
    from orchestration.defs.scoring import SCORING_JOB
    from orchestration.runs import partition_range_tags

    job = scoring_defs().resolve_job_def(SCORING_JOB)
    return job.execute_in_process(
        instance=instance,
        tags=partition_range_tags(start.isoformat(), end.isoformat()),
        raise_on_error=False,
    )


def failure_text(result) -> str:
    return "\n".join(e.step_failure_data.error.to_string() for e in result.get_step_failure_events())


@pytest.mark.slow
def test_a_backfill_keeps_the_first_version_when_the_alias_moves_then_rescore_uses_the_new(
    world, env, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jobs.scoring.batch
    from jobs.platform.catalog import connect_snapshot
    from jobs.registry.aliases import CHAMPION, resolve_alias
    from jobs.registry.promotion import promote
    from orchestration.cli import analyst

    make_champion(world, 1)
    start, end = world["days"][-3], world["days"][-1]
    real_write = jobs.scoring.batch.write_partition
    moves: list[int] = []

    def write_then_move_alias(*args, **kwargs):
        written = real_write(*args, **kwargs)
        if not moves:
            moves.append(promote(2, "moved mid-run", "pytest", tracking_uri=world["mlflow"]).version)
        return written

    monkeypatch.setattr(jobs.scoring.batch, "write_partition", write_then_move_alias)
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_range(start, end, instance)
        assert result.success, failure_text(result)
        assert instance.get_run_by_id(result.run_id).tags["txguard/model_version"] == "1"
    assert moves == [2] and resolve_alias(CHAMPION, tracking_uri=world["mlflow"]).version == 2
    monkeypatch.setattr(jobs.scoring.batch, "write_partition", real_write)

    first = read_scores(env.warehouse_path)
    assert sorted(set(first["day"])) == [start, world["days"][-2], end]
    assert set(first["model_version"]) == {1} and set(first["dagster_run_id"]) == {result.run_id}
    assert first["run_created_at"].nunique() == 1 and (first.groupby("day")["scored_at"].nunique() == 1).all()
    materializations = result.asset_materializations_for_node("transaction_scores")
    assert sorted(m.partition for m in materializations) == [d.isoformat() for d in sorted(set(first["day"]))]
    for materialization in materializations:
        rows = first[first["day"] == dt.date.fromisoformat(materialization.partition)]
        assert materialization.metadata["dagster/row_count"].value == len(rows)
        assert materialization.metadata["model_version"].value == 1
        assert materialization.metadata["alerts"].value == int(rows["decision"].sum())
        assert materialization.metadata["run_rows"].value == len(first)
        assert materialization.metadata["run_alerts"].value == int(first["decision"].sum())
    with connect_snapshot(env.snapshot_path) as snapshot:
        assert snapshot.execute(
            "select count(*), min(model_version) from scoring.transaction_scores"
        ).fetchone() == (
            len(first),
            1,
        )
        audited = snapshot.execute(
            "select day, model_version, artifact_sha256 from audit.scoring_runs order by day"
        ).fetchall()
    assert [(d, v) for d, v, _ in audited] == [(d, "1") for d in (start, world["days"][-2], end)]
    assert {sha for *_, sha in audited} == {world["refs"][0].artifact_sha256}

    monkeypatch.setattr(analyst, "_definitions", scoring_defs)
    outcome = CliRunner().invoke(analyst.rescore, ["--from", start.isoformat(), "--to", end.isoformat()])
    assert outcome.exit_code == 0, outcome.output
    assert "succeeded" in outcome.output and "v2" in outcome.output
    again = read_scores(env.warehouse_path)
    assert set(again["model_version"]) == {2} and again["dagster_run_id"].nunique() == 1
    same = [c for c in SCORE_COLUMNS if c not in (*PROVENANCE_COLUMNS, "model_version")]
    pd.testing.assert_frame_equal(again[same], first[same])
    with dg.DagsterInstance.get() as instance:
        (record,) = instance.get_run_records()
        assert record.dagster_run.job_name == "scoring_job"
        assert record.dagster_run.tags["dagster/asset_partition_range_end"] == end.isoformat()


@pytest.mark.slow
def test_a_range_over_history_is_scored_out_of_time_by_as_of_models_never_champion(world, env) -> None:
    """2018-04-20..05-04 with the champion's labels ending 05-01: the days up to 04-22 precede the first
    possible model, the weeks after the Sundays 04-22 and 04-29 are scored by their as-of models, and only
    05-02..05-04 by the champion. No row is scored by a model whose labels reach its day."""
    from jobs.governance.lineage import transaction_lineage
    from jobs.platform.catalog import connect_snapshot
    from jobs.platform.warehouse import connect
    from jobs.registry.aliases import CHALLENGER, CHAMPION, model_ref, version_with_alias
    from jobs.registry.client import RegistryError, open_client
    from jobs.registry.promotion import promote

    make_champion(world, 3)
    assert world["refs"][2].label_cutoff == CHAMPION_CUTOFF
    start, end = dt.date(2018, 4, 20), dt.date(2018, 5, 4)
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_range(start, end, instance)
        assert result.success, failure_text(result)
        metadata = {
            m.partition: m.metadata for m in result.asset_materializations_for_node("transaction_scores")
        }
    with connect(env.warehouse_path, read_only=True) as warehouse:
        scored = warehouse.execute(
            "select model_version, min(day), max(day), count(*) from scoring.transaction_scores group by 1"
        ).fetchall()
        trail = dict(
            warehouse.execute(
                "select v.model_version, t.label_cutoff from audit.model_versions v"
                " join audit.training_runs t using (mlflow_run_id)"
            ).fetchall()
        )
    by_version = {int(v): (first, last) for v, first, last, _ in scored}
    refs = {v: model_ref(v, tracking_uri=world["mlflow"]) for v in by_version}
    assert all(first > refs[v].label_cutoff for v, (first, _) in by_version.items())
    assert by_version[3] == (dt.date(2018, 5, 2), end)
    as_of = sorted(v for v in by_version if v != 3)
    assert [by_version[v] for v in as_of] == [
        (dt.date(2018, 4, 23), dt.date(2018, 4, 29)),
        (dt.date(2018, 4, 30), dt.date(2018, 5, 1)),
    ]
    assert [refs[v].label_cutoff for v in as_of] == [dt.date(2018, 4, 22), dt.date(2018, 4, 29)]
    assert all(refs[v].as_of and trail[str(v)] == refs[v].label_cutoff for v in as_of)
    client = open_client(world["mlflow"])
    for alias in (CHAMPION, CHALLENGER):
        assert int(version_with_alias(client, "txguard-fraud", alias).version) not in as_of
    with pytest.raises(RegistryError, match="as-of model"):
        promote(as_of[0], "by accident", "pytest", tracking_uri=world["mlflow"])

    unscored = [start + dt.timedelta(days=i) for i in range(3)]
    for day in unscored:
        assert "before the first out-of-time model" in metadata[day.isoformat()]["unscored_reason"].value
    assert metadata["2018-04-23"]["trained_on_data_up_to"].value == "2018-04-22"
    assert metadata["2018-05-02"]["model_role"].value == "champion"
    assert not read_scores(env.warehouse_path, unscored[0], unscored[-1]).size

    with connect_snapshot(env.snapshot_path) as snapshot:
        (tid,) = snapshot.execute(
            "select min(transaction_id) from scoring.transaction_scores where day = '2018-04-23'"
        ).fetchone()
        summary = transaction_lineage(snapshot, tid)["summary"]
    assert "trained on data up to" in summary and "label cutoff 2018-04-22" in summary

    versions = len(client.search_model_versions("name = 'txguard-fraud'"))
    with dg.DagsterInstance.ephemeral() as instance:
        assert run_range(start, end, instance).success
    assert len(client.search_model_versions("name = 'txguard-fraud'")) == versions


@pytest.mark.slow
def test_a_tampered_artifact_is_refused_before_it_is_loaded(world, env, monkeypatch) -> None:
    import lightgbm

    make_champion(world, 1)
    model_file = Path(world["refs"][0].model_uri.removeprefix("file://")) / "model.lgb"
    original = model_file.read_bytes()
    loaded: list[object] = []
    monkeypatch.setattr(lightgbm, "Booster", lambda *a, **k: loaded.append(a) or pytest.fail("loaded"))
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0x01
    try:
        model_file.write_bytes(bytes(tampered))
        with dg.DagsterInstance.ephemeral() as instance:
            result = run_range(world["days"][-1], world["days"][-1], instance)
    finally:
        model_file.write_bytes(original)
    assert not result.success
    assert "ModelIntegrityError" in failure_text(result) and "refusing to load" in failure_text(result)
    assert loaded == []
    assert not env.warehouse_path.exists() or read_scores(env.warehouse_path).empty


@pytest.mark.slow
def test_missing_features_fail_the_run_naming_the_partition_and_write_nothing(world, env) -> None:
    make_champion(world, 1)
    last = world["days"][-1]
    with dg.DagsterInstance.ephemeral() as instance:
        assert run_range(last, last, instance).success
        before = read_scores(env.warehouse_path)
        result = run_range(last, last + dt.timedelta(days=1), instance)
    assert not result.success
    missing = last + dt.timedelta(days=1)
    assert f"missing for {missing} (" in failure_text(result)
    assert f"date={missing}/data.parquet" in failure_text(result)
    pd.testing.assert_frame_equal(read_scores(env.warehouse_path), before)
    assert read_partitions(env.warehouse_path)["day"].tolist() == [last]


RUN_ONE = """
import sys, dagster as dg
from orchestration.defs.scoring import transaction_scores
from orchestration.resources import TxguardSettings
with dg.DagsterInstance.get() as instance:
    result = dg.materialize([transaction_scores], partition_key=sys.argv[1], instance=instance,
                            resources={"settings": TxguardSettings()}, raise_on_error=False)
print(result.run_id)
sys.exit(0 if result.success else 1)
"""


@pytest.mark.slow
def test_two_scoring_runs_at_once_are_serialised_by_the_pool(world, env) -> None:
    from orchestration.instance import prepare_dagster_home

    make_champion(world, 1)
    prepare_dagster_home(env)
    first, second = world["days"][-2], world["days"][-1]
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", RUN_ONE, day.isoformat()],
            cwd=REPO_ROOT,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for day in (first, second)
    ]
    run_ids = []
    for process in runs:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        run_ids.append(stdout.strip().splitlines()[-1])
    assert sorted(set(read_scores(env.warehouse_path)["day"])) == [first, second]
    with dg.DagsterInstance.get() as instance:
        windows, messages = [], []
        for run_id in run_ids:
            events = {
                e.dagster_event.event_type_value: e.timestamp
                for e in instance.all_logs(run_id)
                if e.dagster_event and e.dagster_event.step_key == "transaction_scores"
            }
            windows.append((events["STEP_START"], events["STEP_SUCCESS"]))
            messages.extend(e.message for e in instance.all_logs(run_id))
    (_, first_end), (second_start, _) = sorted(windows)
    assert first_end <= second_start, f"steps overlapped: {windows}"
    assert "Step blocked by limit for pool warehouse" in messages
