"""Settings: one declaration of every ``TXGUARD_*`` variable, the Dagster resource generated from it, the
README's table checked against it, and every bad value refused up front with one line that names it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from jobs.features.spark_job import _parse_args
from jobs.platform.settings import (
    REPO_ROOT,
    Settings,
    SettingsError,
    cron_problem,
    fields_in_scope,
    load_settings,
    variable,
)
from orchestration.cli import main
from orchestration.partitions import scoring_cron, sensor_interval
from orchestration.resources import TxguardSettings


def test_defaults_derive_from_home(txguard_home: Path) -> None:
    settings = load_settings()
    assert settings.landing == str(txguard_home / "landing")
    assert settings.lake == str(txguard_home / "lake")
    assert settings.warehouse_path == txguard_home / "warehouse" / "txguard.duckdb"
    assert settings.tracking_uri == f"sqlite:///{txguard_home / 'mlflow' / 'mlflow.db'}"
    assert settings.spark_master == "local[*]"
    assert settings.training_device == "auto"
    assert settings.spark_driver_memory == "4g"
    assert settings.scoring_cron == "0 6 * * *"
    assert settings.retraining_cooldown_hours == 24
    assert settings.openlineage_url is settings.alert_webhook() is settings.fault_injection is None


def test_s3_roots_are_accepted(txguard_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXGUARD_LANDING_ROOT", "s3://bucket/landing/")
    assert load_settings().landing == "s3://bucket/landing"


def test_an_empty_variable_counts_as_unset(txguard_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXGUARD_OPENLINEAGE_URL", "")
    monkeypatch.setenv("TXGUARD_SENSOR_INTERVAL_SECONDS", "")
    assert load_settings().openlineage_url is None
    assert sensor_interval(30) == 30


INVALID = [
    ("TXGUARD_SENSOR_INTERVAL_SECONDS", "abc", "a whole number of seconds"),
    ("TXGUARD_SENSOR_INTERVAL_SECONDS", "0", "a whole number of seconds ≥ 1"),
    ("TXGUARD_SCORING_CRON", "99 99 * * *", "minute '99' is not within 0-59"),
    ("TXGUARD_SCORING_CRON", "0 6 * *", "4 fields instead of 5"),
    ("TXGUARD_OPENLINEAGE_URL", "notaurl", "http(s)://host[:port][/path]"),
    ("TXGUARD_S3_ENDPOINT_URL", "127.0.0.1:9000", "http(s)://host[:port]"),
    ("TXGUARD_SPARK_DRIVER_MEMORY", "lots", "a JVM memory size"),
    ("TXGUARD_RETRAINING_COOLDOWN_HOURS", "soon", "a number of hours"),
    ("TXGUARD_FAULT_INJECTION", "kill_eventually", "kill_between_delete_and_insert, kill_mid_swap"),
    ("TXGUARD_TRAINING_DEVICE", "tpu", "auto, cpu, gpu or cuda"),
    ("TXGUARD_SPARK_MASTER", "mesos://x", "spark://host:port"),
    ("TXGUARD_LAKE_ROOT", "gs://bucket/lake", "s3://bucket/prefix"),
    ("TXGUARD_QUARANTINE_THRESHOLD", "2", "a share between 0 and 1"),
]


@pytest.mark.parametrize(("name", "value", "form"), INVALID, ids=[f"{n}={v}" for n, v, _ in INVALID])
def test_an_invalid_value_is_refused_in_one_line_naming_the_variable_and_the_form(
    txguard_home: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, form: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{name}={value!r}: expected ")
    assert form in message


def test_every_bad_value_is_named_at_once(txguard_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXGUARD_SENSOR_INTERVAL_SECONDS", "abc")
    monkeypatch.setenv("TXGUARD_OPENLINEAGE_URL", "notaurl")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert "\n" not in str(refused.value)
    assert "TXGUARD_SENSOR_INTERVAL_SECONDS='abc'" in str(refused.value)
    assert "TXGUARD_OPENLINEAGE_URL='notaurl'" in str(refused.value)


def test_a_secret_is_never_shown(txguard_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "token-5f0e3a"
    monkeypatch.setenv("TXGUARD_ALERT_WEBHOOK_URL", f"hooks.example/{secret}")
    with pytest.raises(SettingsError, match=r"TXGUARD_ALERT_WEBHOOK_URL \(secret, not shown\)") as refused:
        load_settings()
    assert secret not in str(refused.value)
    monkeypatch.setenv("TXGUARD_ALERT_WEBHOOK_URL", f"https://hooks.example/{secret}")
    settings = load_settings()
    assert settings.alert_webhook() == f"https://hooks.example/{secret}"
    assert secret not in repr(settings) and secret not in str(settings.model_dump())


def test_the_sensor_pace_and_the_scoring_cron_come_from_the_settings(
    txguard_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (sensor_interval(30), sensor_interval(60), scoring_cron()) == (30, 60, "0 6 * * *")
    monkeypatch.setenv("TXGUARD_SENSOR_INTERVAL_SECONDS", "5")
    monkeypatch.setenv("TXGUARD_SCORING_CRON", "  */5  0-23 * JAN-dec mon-FRI ")
    assert (sensor_interval(30), sensor_interval(60), scoring_cron()) == (5, 5, "*/5 0-23 * JAN-dec mon-FRI")


CRONS = [
    "0 6 * * *",
    "* * * * *",
    "*/5 0-23 1 1-12 MON-FRI",
    "0 0 1,15 * *",
    "0 0 * jan,jul sun",
    "5-10/2 * * * *",
    "10-5 * * * *",
    "0 0 * * 7",
    "0 0 * * 7-1",
    "5/15 * * * *",
    "0 6 * *",
    "0 6 * * * *",
    "60 * * * *",
    "0 24 * * *",
    "0 0 0 * *",
    "0 0 32 * *",
    "0 0 * 13 *",
    "0 0 * * 8",
    "*/0 * * * *",
    "a * * * *",
    "-1 * * * *",
    "1,2,99 * * * *",
    "0 0 * FOO *",
    "0-60 * * * *",
]


@pytest.mark.parametrize("cron", CRONS)
def test_the_cron_check_agrees_with_dagsters_schedules(cron: str) -> None:
    try:
        dg.ScheduleDefinition(name="probe", cron_schedule=cron, job_name="probe")
        dagster_accepts = True
    except dg.DagsterInvalidDefinitionError:
        dagster_accepts = False
    assert (cron_problem(cron) is None) == dagster_accepts


def test_the_resource_has_exactly_the_run_settings_and_no_secret() -> None:
    run = set(fields_in_scope("run"))
    assert set(TxguardSettings.model_fields) == run
    assert not run & set(fields_in_scope("secret"))
    assert "alert_webhook_url" in fields_in_scope("secret")
    assert set(Settings.model_fields) == run | set(fields_in_scope("process")) | set(
        fields_in_scope("secret")
    )
    for name, info in TxguardSettings.model_fields.items():
        assert info.default is None and info.description.startswith(f"{variable(name)}: ")


RUN_VALUES = {
    "home": "/data/txguard",
    "landing_root": "s3://bucket/landing",
    "lake_root": "s3://bucket/lake",
    "warehouse": "/data/w.duckdb",
    "mlflow_uri": "http://mlflow:5000",
    "spark_master": "spark://master:7077",
    "training_device": "cpu",
    "alert_budget": "50",
    "asof_cadence_days": 14,
    "quarantine_threshold": 0.2,
    "openlineage_url": "http://marquez:5000",
}


def test_each_resource_field_reaches_the_settings_and_an_empty_one_falls_back_to_its_variable(
    txguard_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert set(RUN_VALUES) == set(TxguardSettings.model_fields)
    loaded = TxguardSettings(**RUN_VALUES).load()
    for name, value in RUN_VALUES.items():
        assert str(getattr(loaded, name)) == str(value), name
    monkeypatch.setenv("TXGUARD_SPARK_MASTER", "local[3]")
    monkeypatch.setenv("TXGUARD_QUARANTINE_THRESHOLD", "0.3")
    loaded = TxguardSettings(lake_root="/lake").load()
    assert (loaded.lake, loaded.spark_master, loaded.quarantine_threshold) == ("/lake", "local[3]", 0.3)
    assert loaded.home == txguard_home
    with pytest.raises(SettingsError, match="TXGUARD_TRAINING_DEVICE='tpu'"):
        TxguardSettings(training_device="tpu").load()


def test_the_readme_table_lists_every_setting_and_only_those() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(TXGUARD_[A-Z0-9_]+)` \|.*\| (yes|no) \|$", section, re.MULTILINE))
    assert sorted(rows) == sorted(variable(name) for name in Settings.model_fields)
    assert {name for name, per_run in rows.items() if per_run == "yes"} == {
        variable(name) for name in fields_in_scope("run")
    }


BAD_AT_START = [
    ("TXGUARD_SENSOR_INTERVAL_SECONDS", "abc"),
    ("TXGUARD_SCORING_CRON", "99 99 * * *"),
    ("TXGUARD_OPENLINEAGE_URL", "notaurl"),
]


@pytest.mark.parametrize(("name", "value"), BAD_AT_START)
def test_a_command_stops_at_once_with_the_line(
    txguard_home: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["sql", "select 1"])
    assert result.exit_code == 1
    assert result.output.splitlines()[0].startswith(f"Error: {name}={value!r}: expected ")
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("name", "value"), BAD_AT_START)
def test_the_code_location_does_not_load_and_names_the_variable(
    txguard_home: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    loading = subprocess.run(
        [sys.executable, "-c", "import orchestration.definitions"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert loading.returncode != 0
    last = loading.stderr.strip().splitlines()[-1]
    assert last.startswith(f"jobs.platform.settings.SettingsError: {name}={value!r}: expected ")


def test_the_spark_job_takes_its_driver_memory_from_the_settings_and_refuses_a_bad_one(
    txguard_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    days = ["--start", "2018-04-01", "--end", "2018-04-01"]
    assert _parse_args(days).driver_memory == "4g"
    monkeypatch.setenv("TXGUARD_SPARK_DRIVER_MEMORY", "1g")
    assert _parse_args(days).driver_memory == "1g"
    monkeypatch.setenv("TXGUARD_SPARK_DRIVER_MEMORY", "lots")
    with pytest.raises(SystemExit) as stopped:
        _parse_args(days)
    assert stopped.value.code == 2
    assert "error: TXGUARD_SPARK_DRIVER_MEMORY='lots': expected a JVM memory size" in capsys.readouterr().err
