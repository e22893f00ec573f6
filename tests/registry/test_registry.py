"""Registry: a real MLflow SQLite store per test (copied from one migrated template), real models.

Covers what a run logs, alias resolution and integrity checks, the promotion gate both ways, rollback, and
the faults that must leave the registry as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from jobs.features.definitions import FeatureSetMismatch
from jobs.platform.settings import REPO_ROOT, load_settings
from jobs.registry.aliases import CHALLENGER, CHAMPION, resolve_alias
from jobs.registry.client import (
    MODEL_NAME,
    ModelIntegrityError,
    RegistryError,
    RegistryUnavailable,
    UnknownModelVersion,
    open_client,
)
from jobs.registry.policy import AP_FLOOR, CP_TOLERANCE, decide_promotion, gate
from jobs.registry.promotion import DECISION_TAGS, promote, reject, rollback
from jobs.registry.release import train_and_register
from jobs.registry.tracking import EXPERIMENT_NAME, experiment_id, load_verified_booster, log_training_run
from jobs.training.metrics import HoldoutMetrics
from jobs.training.trainer import (
    LABEL,
    TrainingDataError,
    predict_scores,
    train_model,
)
from tests.support import FAST, free_port


@pytest.fixture(scope="module")
def template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated, empty MLflow database; each test gets a copy (migrations take seconds)."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    open_client(f"sqlite:///{path}")
    return path


@pytest.fixture
def store(template_store: Path, tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "mlflow" / "mlflow.db"
    path.parent.mkdir()
    shutil.copy(template_store, path)
    return f"sqlite:///{path}", tmp_path / "mlflow" / "artifacts"


@pytest.fixture(scope="module")
def weak(training_set):
    """A model that learnt from shuffled labels: no better than chance, below the floor."""
    rng = np.random.default_rng(5)
    shuffled = replace(
        training_set,
        train=training_set.train.assign(**{LABEL: rng.permutation(training_set.train[LABEL].to_numpy())}),
    )
    return train_model(shuffled, FAST, device="cpu")


def versions(tracking_uri: str) -> list[tuple[int, dict[str, str], list[str]]]:
    client = open_client(tracking_uri)
    found = [client.get_model_version(MODEL_NAME, v.version) for v in client.search_model_versions()]
    return sorted((int(v.version), dict(v.tags), sorted(v.aliases)) for v in found)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout


def decision_tags(tracking_uri: str, version: int) -> dict[str, str]:
    tags = dict(open_client(tracking_uri).get_model_version(MODEL_NAME, str(version)).tags)
    return {key: value for key, value in tags.items() if key in DECISION_TAGS}


def stored_record(tracking_uri: str, version: int, tmp_path: Path) -> dict[str, object]:
    """The full record that the version's ``decision_record`` tag names, read back from the version's run."""
    client = open_client(tracking_uri)
    found = client.get_model_version(MODEL_NAME, str(version))
    into = tempfile.mkdtemp(dir=tmp_path)
    return json.loads(
        Path(client.download_artifacts(found.run_id, found.tags["decision_record"], into)).read_text()
    )


def record_files(tracking_uri: str, run_id: str) -> list[str]:
    return sorted(a.path for a in open_client(tracking_uri).list_artifacts(run_id, "decisions"))


@pytest.fixture(scope="module")
def registered(template_store: Path, tmp_path_factory: pytest.TempPathFactory, training_set, trained):
    """A store holding one registered version, shared by the tests that must leave it unchanged."""
    root = tmp_path_factory.mktemp("registered")
    shutil.copy(template_store, root / "mlflow.db")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    before = os.environ.get("MLFLOW_TRACKING_URI")
    run = log_training_run(training_set, trained, tracking_uri=tracking_uri, artifact_root=root / "artifacts")
    assert os.environ.get("MLFLOW_TRACKING_URI") == before, "MLflow's global tracking URI leaked"
    return tracking_uri, run


def test_a_training_run_logs_everything_and_registers_a_challenger(
    registered, training_set, trained, tmp_path
) -> None:
    tracking_uri, run = registered
    client = open_client(tracking_uri)
    logged = client.get_run(run.ref.run_id)
    assert logged.info.status == "FINISHED"
    for metric in ("roc_auc", "average_precision", "card_precision_at_100"):
        assert logged.data.metrics[metric] == pytest.approx(getattr(run.holdout, metric))
    assert logged.data.params["feature_set_version"] == training_set.feature_set_version
    assert logged.data.params["window.train_start"] == training_set.window.train_start.isoformat()
    assert logged.data.params["lgb.deterministic"] == "True"
    assert logged.data.params["device"] == "cpu"
    inputs = {i.dataset.name: i for i in logged.inputs.dataset_inputs}
    training = inputs["transaction_features:training"]
    assert training.dataset.digest == training_set.digest[:32]
    assert {t.key: t.value for t in training.tags}["sha256"] == training_set.digest
    assert inputs["transaction_features:holdout"].dataset.digest == training_set.holdout.digest[:32]
    files = {a.path for a in client.list_artifacts(run.ref.run_id, "plots")}
    assert files == {
        f"plots/{n}"
        for n in ("roc_curve.png", "pr_curve.png", "feature_importance.png", "score_distribution.png")
    }
    card = Path(client.download_artifacts(run.ref.run_id, "model_card.md", str(tmp_path))).read_text()
    assert (
        f"version {run.ref.version}" in card
        and training_set.digest in card
        and run.ref.artifact_sha256 in card
    )
    assert "## Limitations" in card and "Code version (git)" in card
    head = git("rev-parse", "HEAD").strip()
    dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    assert f"Code version (git): `{head}{'+dirty' if dirty else ''}`" in card

    tags = logged.data.tags
    assert tags["mlflow.source.git.commit"] == head
    assert tags["mlflow.source.git.dirty"] == str(dirty).lower()
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.name"] == Path(sys.argv[0]).name
    assert "dagster_run_id" not in tags and "partition_range" not in tags
    experiment = client.get_experiment(logged.info.experiment_id)
    assert experiment.name == EXPERIMENT_NAME
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    ref = resolve_alias(CHALLENGER, tracking_uri=tracking_uri)
    assert ref == run.ref and ref.version == 1 and ref.name == MODEL_NAME
    assert ref.threshold == trained.threshold and ref.feature_set_version == training_set.feature_set_version
    assert logged.data.tags["model_sha256"] == ref.artifact_sha256
    booster = load_verified_booster(ref)
    frame = training_set.holdout.frame
    np.testing.assert_array_equal(predict_scores(booster, frame), predict_scores(trained.booster, frame))
    with pytest.raises(UnknownModelVersion, match="@champion"):
        resolve_alias(CHAMPION, tracking_uri=tracking_uri)


def test_an_experiment_made_before_is_marked_as_model_training(store) -> None:
    """The MLflow 3 UI opens an experiment without the kind tag on its GenAI overview."""
    tracking_uri, artifacts = store
    client = open_client(tracking_uri)
    made = client.create_experiment(EXPERIMENT_NAME, artifact_location=artifacts.resolve().as_uri())
    assert "mlflow.experimentKind" not in client.get_experiment(made).tags
    assert experiment_id(client, artifacts) == made
    assert client.get_experiment(made).tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_tampered_artifact_is_refused(registered, tmp_path) -> None:
    _, run = registered
    copy = tmp_path / "artifacts"
    shutil.copytree(run.ref.model_uri.removeprefix("file://"), copy)
    model_file = copy / "model.lgb"
    model_file.write_bytes(model_file.read_bytes().replace(b"leaf_value=", b"leaf_value=1", 1))
    tampered = replace(run.ref, model_uri=copy.as_uri())
    with pytest.raises(ModelIntegrityError, match=f"version {run.ref.version}.*refusing to load"):
        load_verified_booster(tampered)


def test_promoting_a_missing_version_changes_nothing(registered) -> None:
    tracking_uri, _ = registered
    state = versions(tracking_uri)
    with pytest.raises(UnknownModelVersion, match=f"{MODEL_NAME} has no version 7"):
        promote(7, "typo", "alice", tracking_uri=tracking_uri)
    assert versions(tracking_uri) == state


def test_a_promotion_that_fails_half_way_is_undone(registered, monkeypatch) -> None:
    import jobs.registry.promotion

    tracking_uri, run = registered
    state = versions(tracking_uri)
    real_write = jobs.registry.promotion._write_record

    def write_then_fail(client, record, on_versions):
        real_write(client, record, on_versions)
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(jobs.registry.promotion, "_write_record", write_then_fail)
    files = record_files(tracking_uri, run.ref.run_id)
    with pytest.raises(ConnectionError):
        promote(run.ref.version, "flaky network", "alice", tracking_uri=tracking_uri)
    assert versions(tracking_uri) == state
    assert record_files(tracking_uri, run.ref.run_id) == files, "the undone decision's record stayed"


def test_feature_set_mismatch_at_the_gate_changes_nothing(registered, training_set) -> None:
    tracking_uri, run = registered
    state = versions(tracking_uri)
    with pytest.raises(FeatureSetMismatch, match="challenger v1: feature-set version fs-old"):
        decide_promotion(replace(run.ref, feature_set_version="fs-old"), None, training_set.holdout)
    assert versions(tracking_uri) == state


def test_gate_rules_both_ways() -> None:
    champion = HoldoutMetrics(0.9, 0.60, 0.30)
    assert gate(HoldoutMetrics(0.9, 0.61, 0.30 - CP_TOLERANCE / 2), champion)[0]
    refused, why = gate(HoldoutMetrics(0.9, 0.60, 0.35), champion)
    assert not refused and "does not beat champion on AP" in why
    refused, why = gate(HoldoutMetrics(0.9, 0.70, 0.30 - 2 * CP_TOLERANCE), champion)
    assert not refused and "loses CP@100 beyond tolerance" in why
    assert gate(HoldoutMetrics(0.9, AP_FLOOR, 0.0), None)[0]
    assert not gate(HoldoutMetrics(0.9, AP_FLOOR - 0.01, 0.5), None)[0]


GATE_TAGS = {"decision", "decision_reason", "decided_by", "decided_at", "champion_before", "champion_after"}
GATE_TAGS |= {"decision_record", *(f"challenger_{m}" for m in ("ap", "cp_at_100", "roc_auc"))}


@pytest.mark.slow
def test_promotion_gate_both_ways_then_rollback(store, training_set, trained, weak, tmp_path) -> None:
    tracking_uri, artifacts = store
    first = log_training_run(training_set, weak, tracking_uri=tracking_uri, artifact_root=artifacts).ref
    below_floor = decide_promotion(first, None, training_set.holdout)
    assert not below_floor.promote and "below floor" in below_floor.reason
    first_reject = reject(below_floor, "dagster", tracking_uri=tracking_uri)
    assert versions(tracking_uri)[0][2] == [CHALLENGER]
    tags = decision_tags(tracking_uri, first.version)
    assert set(tags) == GATE_TAGS, "a first model has no champion metrics to show"
    assert (tags["decision"], tags["decided_by"], tags["decision_reason"]) == (
        "reject",
        "dagster",
        below_floor.reason,
    )
    assert (tags["champion_before"], tags["champion_after"]) == ("none", "none")
    assert tags["decided_at"] == first_reject.decided_at
    assert float(tags["challenger_ap"]) == pytest.approx(
        below_floor.challenger_metrics.average_precision, abs=1e-4
    )
    assert stored_record(tracking_uri, first.version, tmp_path) == json.loads(first_reject.to_json())

    manual = promote(first.version, "bootstrap by hand", "alice", tracking_uri=tracking_uri)
    assert manual.action == "promote" and manual.previous_champion is None and manual.actor == "alice"
    assert "average_precision" in manual.metrics
    tags = decision_tags(tracking_uri, first.version)
    assert not any(key.startswith("challenger_") for key in tags), "the reject's metrics outlived it"
    assert (tags["decision"], tags["decided_by"], tags["champion_after"]) == (
        "promote",
        "alice",
        str(first.version),
    )
    assert float(tags["champion_after_ap"]) == pytest.approx(manual.metrics["average_precision"], abs=1e-4)

    better = log_training_run(training_set, trained, tracking_uri=tracking_uri, artifact_root=artifacts).ref
    champion = resolve_alias(CHAMPION, tracking_uri=tracking_uri)
    decision = decide_promotion(better, champion, training_set.holdout)
    assert decision.promote, decision.reason
    assert decision.challenger_metrics.average_precision > decision.champion_metrics.average_precision
    record = promote(better.version, decision.reason, "dagster", tracking_uri=tracking_uri, decision=decision)
    assert record.previous_champion == first.version and record.champion_after == better.version
    assert resolve_alias(CHAMPION, tracking_uri=tracking_uri).version == better.version
    for touched in (first.version, better.version):
        tags = decision_tags(tracking_uri, touched)
        assert set(tags) == GATE_TAGS | {f"champion_{m}" for m in ("ap", "cp_at_100", "roc_auc")}
        assert (tags["champion_before"], tags["champion_after"]) == (str(first.version), str(better.version))
        assert float(tags["champion_ap"]) == pytest.approx(
            decision.champion_metrics.average_precision, abs=1e-4
        )
        assert stored_record(tracking_uri, touched, tmp_path) == json.loads(record.to_json())
    with pytest.raises(RegistryError, match="already the champion"):
        promote(better.version, "twice", "alice", tracking_uri=tracking_uri)

    worse = log_training_run(training_set, weak, tracking_uri=tracking_uri, artifact_root=artifacts).ref
    assert worse.artifact_sha256 == first.artifact_sha256, "same data and params must give the same bytes"
    refused = decide_promotion(
        worse, resolve_alias(CHAMPION, tracking_uri=tracking_uri), training_set.holdout
    )
    assert not refused.promote and "does not beat champion on AP" in refused.reason
    record = reject(refused, "dagster", tracking_uri=tracking_uri)
    tags = decision_tags(tracking_uri, worse.version)
    assert (tags["decision"], tags["decision_reason"]) == ("reject", refused.reason)
    assert (tags["champion_before"], tags["champion_after"]) == (str(better.version), str(better.version))
    assert float(tags["challenger_cp_at_100"]) == pytest.approx(
        refused.challenger_metrics.card_precision_at_100, abs=1e-4
    )
    assert float(tags["champion_ap"]) == pytest.approx(refused.champion_metrics.average_precision, abs=1e-4)
    stored = stored_record(tracking_uri, worse.version, tmp_path)
    assert stored == json.loads(record.to_json())
    assert stored["decision"]["champion_metrics"]["average_precision"] == pytest.approx(
        refused.champion_metrics.average_precision
    )
    assert resolve_alias(CHAMPION, tracking_uri=tracking_uri).version == better.version

    back = rollback("alerts doubled overnight", "bob", tracking_uri=tracking_uri)
    assert (back.action, back.version, back.champion_after) == ("rollback", better.version, first.version)
    assert resolve_alias(CHAMPION, tracking_uri=tracking_uri).version == first.version
    tags = decision_tags(tracking_uri, first.version)
    assert not any(key.startswith(("challenger_", "champion_ap")) for key in tags)
    assert (tags["decision"], tags["decided_by"]) == ("rollback", "bob")
    assert tags["decision_reason"] == "alerts doubled overnight"
    assert (tags["champion_before"], tags["champion_after"]) == (str(better.version), str(first.version))
    assert float(tags["champion_after_ap"]) == pytest.approx(back.metrics["average_precision"], abs=1e-4)
    assert stored_record(tracking_uri, first.version, tmp_path)["reason"] == "alerts doubled overnight"
    assert len(record_files(tracking_uri, first.run_id)) == 4, (
        "reject, promote, promote, rollback: one file each"
    )

    state = versions(tracking_uri)
    with pytest.raises(RegistryError, match="replaced no earlier champion"):
        rollback("again", "bob", tracking_uri=tracking_uri)
    assert versions(tracking_uri) == state


@pytest.mark.slow
def test_people_promote_and_roll_back_from_the_command_line(registered, txguard_home, monkeypatch) -> None:
    from click.testing import CliRunner

    from orchestration.cli.models import evaluate
    from orchestration.cli.models import promote as promote_command
    from orchestration.cli.models import rollback as rollback_command

    tracking_uri, run = registered
    monkeypatch.setenv("TXGUARD_MLFLOW_URI", tracking_uri)
    runner = CliRunner()
    missing = runner.invoke(promote_command, ["--version", "9", "--reason", "typo"])
    assert missing.exit_code == 1 and f"{MODEL_NAME} has no version 9" in missing.output
    done = runner.invoke(promote_command, ["--version", str(run.ref.version), "--reason", "first by hand"])
    assert done.exit_code == 0, done.output
    assert "promote: txguard-fraud champion vNone -> v1" in done.output and "by cli:" in done.output
    assert resolve_alias(CHAMPION, tracking_uri=tracking_uri).version == run.ref.version
    refused = runner.invoke(rollback_command, ["--reason", "nothing before"])
    assert refused.exit_code == 1 and "nothing to roll back to" in refused.output
    empty_lake = runner.invoke(evaluate, ["--lake", str(txguard_home / "no-lake"), "--device", "cpu"])
    assert empty_lake.exit_code == 1 and "feature partition for 2018-07-25 is missing" in empty_lake.output


def test_a_failure_mid_registration_leaves_no_version(store, training_set, trained, monkeypatch) -> None:
    import jobs.registry.tracking

    tracking_uri, artifacts = store

    def broken(card):
        raise OSError("disk full while writing the model card")

    monkeypatch.setattr(jobs.registry.tracking, "render_model_card", broken)
    with pytest.raises(OSError, match="disk full"):
        log_training_run(training_set, trained, tracking_uri=tracking_uri, artifact_root=artifacts)
    client = open_client(tracking_uri)
    assert client.search_registered_models() == []
    runs = client.search_runs([client.get_experiment_by_name(MODEL_NAME).experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_an_unreachable_store_is_a_clear_error(monkeypatch, training_set, trained, tmp_path) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RegistryUnavailable, match=rf"MLflow store {uri} is unreachable"):
        log_training_run(training_set, trained, tracking_uri=uri, artifact_root=tmp_path)
    with pytest.raises(RegistryUnavailable):
        rollback("server down", "bob", tracking_uri=uri)


@pytest.mark.parametrize("fault", ["empty", "single_class"])
def test_training_faults_leave_the_registry_as_it_was(
    store, handbook_lake, txguard_home, tmp_path, fault
) -> None:
    tracking_uri, _ = store
    if fault == "empty":
        target = tmp_path / "empty-lake"
    else:
        target = tmp_path / "no-reports"
        shutil.copytree(handbook_lake, target, ignore=shutil.ignore_patterns("fraud_reports"))
    settings = load_settings(lake_root=str(target), mlflow_uri=tracking_uri, training_device="cpu")
    with pytest.raises(
        TrainingDataError, match="no feature partitions" if fault == "empty" else "single class"
    ):
        train_and_register(settings, params=FAST)
    assert versions(tracking_uri) == []


@pytest.mark.slow
def test_dagster_assets_train_register_and_promote(
    handbook_lake, template_store, txguard_home, tmp_path
) -> None:
    import dagster as dg

    from orchestration.defs.training import defs, fraud_model, model_promotion
    from orchestration.resources import TxguardSettings
    from orchestration.runs import partition_range_tags

    shutil.copy(template_store, tmp_path / "mlflow.db")
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = TxguardSettings(lake_root=handbook_lake, mlflow_uri=tracking_uri, training_device="auto")
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [fraud_model, model_promotion],
            resources={"settings": settings},
            instance=instance,
            tags=partition_range_tags("2018-04-01", "2018-05-30"),
        )
    assert result.success
    trained = result.asset_materializations_for_node("fraud_model")[0].metadata
    assert trained["model_version"].value == 1
    assert trained["device"].value == "cpu" and "No OpenCL device found" in trained["device_reason"].value
    assert trained["holdout_average_precision"].value > AP_FLOOR
    gated = result.asset_materializations_for_node("model_promotion")[0].metadata
    assert gated["action"].value == "promote" and gated["champion_after"].value == 1
    assert resolve_alias(CHAMPION, tracking_uri=tracking_uri).run_id == trained["mlflow_run_id"].value
    tags = open_client(tracking_uri).get_run(trained["mlflow_run_id"].value).data.tags
    assert tags["dagster_run_id"] == result.run_id
    assert tags["partition_range"] == "2018-04-01..2018-05-30"
    assert tags["mlflow.source.type"] == "JOB"
    assert tags["mlflow.source.name"] == f"dagster:{result.job_def.name}"
    assert tags["mlflow.source.git.commit"] == git("rev-parse", "HEAD").strip()
    promoted = decision_tags(tracking_uri, 1)
    assert (promoted["decision"], promoted["decided_by"]) == ("promote", "pipeline:model_promotion")
    assert float(promoted["challenger_ap"]) == pytest.approx(
        trained["holdout_average_precision"].value, abs=1e-4
    )
    loaded = dg.Definitions.merge(defs, dg.Definitions(resources={"settings": TxguardSettings()}))
    job = loaded.resolve_job_def("weekly_retraining")
    assert {n.name for n in job.graph.node_defs} == {"fraud_model", "model_promotion"}
    assert loaded.resolve_schedule_def("weekly_retraining_schedule").cron_schedule == "0 4 * * 1"
