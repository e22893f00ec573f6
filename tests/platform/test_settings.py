from pathlib import Path

import pytest

from jobs.platform.settings import SettingsError, load_settings


def test_defaults_derive_from_home(txguard_home: Path) -> None:
    settings = load_settings()
    assert settings.landing == str(txguard_home / "landing")
    assert settings.lake == str(txguard_home / "lake")
    assert settings.warehouse_path == txguard_home / "warehouse" / "txguard.duckdb"
    assert settings.tracking_uri == f"sqlite:///{txguard_home / 'mlflow' / 'mlflow.db'}"
    assert settings.spark_master == "local[*]"
    assert settings.training_device == "auto"


def test_s3_roots_are_accepted(txguard_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXGUARD_LANDING_ROOT", "s3://bucket/landing/")
    assert load_settings().landing == "s3://bucket/landing"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TXGUARD_TRAINING_DEVICE", "tpu"),
        ("TXGUARD_SPARK_MASTER", "mesos://x"),
        ("TXGUARD_LAKE_ROOT", "gs://bucket/lake"),
        ("TXGUARD_QUARANTINE_THRESHOLD", "2"),
    ],
)
def test_invalid_setting_names_the_variable(
    txguard_home: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()
