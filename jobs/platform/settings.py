"""One typed settings object for every txguard process: each ``TXGUARD_*`` variable is declared and read here.

Every root may be a local path or an ``s3://`` URI. Defaults derive from ``TXGUARD_HOME`` so that a fresh
checkout works with no configuration at all. Each field says who may set it (its scope):

- ``run``: a run may choose it; the Dagster ``settings`` resource carries it (``orchestration.resources``).
- ``process``: read from the environment by the process that needs it (every file access, the Spark driver,
  the code location as it loads, the retraining sensor); a run cannot change it.
- ``secret``: read from the environment when it is used, never a resource field, never printed.

``load_settings`` validates every field at once, so a command or the code location that calls it first stops
on a bad value with one line naming the variable and the form it expects.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs.training.budget import BUDGET_FORM, DEFAULT_ALERT_BUDGET, AlertBudget, BudgetError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_HOME = REPO_ROOT / ".txguard"
PREFIX = "TXGUARD_"

TrainingDevice = Literal["auto", "cpu", "gpu", "cuda"]
FAULT_POINTS = ("kill_between_delete_and_insert", "kill_mid_swap")
FaultPoint = Literal[FAULT_POINTS]
Scope = Literal["run", "process", "secret"]
DEFAULT_SPARK_DRIVER_MEMORY = "4g"
DEFAULT_MLFLOW_UI_URL = "http://127.0.0.1:5000"

_JVM_MEMORY = re.compile(r"\d+[kmgt]", re.IGNORECASE)
_CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day of week", 0, 7, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)


class SettingsError(ValueError):
    """Raised with a one-line message that names each bad variable and the form it expects."""


class _WrongForm(ValueError):
    """A validator's refusal that adds nothing to the field's expected form."""


def variable(field: str) -> str:
    """The environment variable of a settings field: ``TXGUARD_`` and the field's name in capitals."""
    return f"{PREFIX}{field.upper()}"


def _setting(default: object, form: str, description: str, scope: Scope = "run", **limits: float) -> Any:
    """A settings field that carries the form its variable expects (for messages) and its scope."""
    return Field(
        default=default, description=description, json_schema_extra={"form": form, "scope": scope}, **limits
    )


def _is_uri_or_path(value: str) -> bool:
    if "://" in value:
        return value.startswith(("s3://", "file://"))
    return bool(value.strip())


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _in_range(text: str, low: int, high: int, names: tuple[str, ...]) -> bool:
    return text.upper() in names or (text.isdigit() and low <= int(text) <= high)


def cron_problem(expression: str) -> str | None:
    """Why a five-field cron expression is invalid (a field out of range, a bad step), or None if it is valid.

    Numbers, month and weekday names, ``*``, ranges (a reversed one wraps), lists and steps, as the scoring
    schedule accepts them (not croniter's ``?``, ``L`` or ``#``). Checked here so that a bad value stops a
    command before anything runs, not the code location as it loads.
    """
    parts = expression.split()
    if len(parts) != 5:
        return f"{len(parts)} fields instead of 5"
    for text, (name, low, high, names) in zip(parts, _CRON_FIELDS, strict=True):
        for item in text.split(","):
            span, slash, step = item.partition("/")
            if slash and not (step.isdigit() and int(step) >= 1):
                return f"{name} {item!r}: the step must be a whole number ≥ 1"
            if span != "*" and not all(_in_range(bound, low, high, names) for bound in span.split("-", 1)):
                return f"{name} {item!r} is not within {low}-{high}"
    return None


class Settings(BaseSettings):
    """Where txguard keeps its data, which compute it uses, and how its automation is paced."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, extra="ignore", frozen=True)

    home: Path = _setting(DEFAULT_HOME, "a directory path", "data home: lake, warehouse, MLflow, Dagster")
    landing_root: str | None = _setting(
        None, "a local path or an s3://bucket/prefix URI", "where producers drop files (path or s3://)"
    )
    lake_root: str | None = _setting(None, "a local path or an s3://bucket/prefix URI", "Parquet lake")
    warehouse: Path | None = _setting(None, "a file path", "the DuckDB warehouse file")
    mlflow_uri: str | None = _setting(None, "an MLflow tracking URI", "MLflow tracking URI")
    spark_master: str = _setting(
        "local[*]", "local[*], local[N], spark://host:port, yarn or k8s://...", "Spark master URL"
    )
    training_device: TrainingDevice = _setting("auto", "auto, cpu, gpu or cuda", "where LightGBM trains")
    alert_budget: str = _setting(
        DEFAULT_ALERT_BUDGET,
        BUDGET_FORM,
        "cards investigators review a day: sets the decision threshold and the k of card precision",
    )
    asof_cadence_days: int = _setting(
        7,
        "a whole number of days ≥ 1",
        "days between two as-of models when a run scores history out of time (7: one model a week)",
        ge=1,
    )
    quarantine_threshold: float = _setting(
        0.05,
        "a share between 0 and 1",
        "rejected share of a file above which its partition fails",
        ge=0,
        le=1,
    )
    openlineage_url: str | None = _setting(
        None, "http(s)://host[:port][/path]", "OpenLineage HTTP endpoint (else a file under the home)"
    )
    s3_endpoint_url: str | None = _setting(
        None, "http(s)://host[:port]", "S3 API endpoint (MinIO, moto, ...)", scope="process"
    )
    spark_driver_memory: str = _setting(
        DEFAULT_SPARK_DRIVER_MEMORY,
        "a JVM memory size: a whole number and k, m, g or t (e.g. 4g)",
        "memory of the feature job's Spark driver",
        scope="process",
    )
    spark_remote: str | None = _setting(
        None,
        "a Spark Connect URL, sc://host:port",
        "a warm Spark Connect server for the feature job (txguard ui starts one); else a local JVM per job",
        scope="process",
    )
    sensor_interval_seconds: int | None = _setting(
        None,
        "a whole number of seconds ≥ 1",
        "seconds between two evaluations of each sensor (else each one's own); read when the location loads",
        scope="process",
        ge=1,
    )
    scoring_cron: str = _setting(
        "0 6 * * *",
        "a five-field cron expression in UTC: minute hour day-of-month month day-of-week, e.g. 0 6 * * *",
        "when the scoring schedule ticks; read when the code location loads",
        scope="process",
    )
    retraining_cooldown_hours: float = _setting(
        24.0, "a number of hours ≥ 0", "least time between two retraining requests", scope="process", ge=0
    )
    mlflow_ui_url: str = _setting(
        DEFAULT_MLFLOW_UI_URL,
        "http(s)://host[:port][/path]",
        "the MLflow UI that links in Dagster's metadata open (make mlflow serves it)",
        scope="process",
    )
    fault_injection: FaultPoint | None = _setting(
        None,
        f"one of {', '.join(FAULT_POINTS)} (tests only)",
        "tests only: the scores writer kills its own process at this point",
        scope="process",
    )
    alert_webhook_url: SecretStr | None = _setting(
        None, "http(s)://host[:port]/path", "where alerts are POSTed (a secret)", scope="secret"
    )

    @field_validator("landing_root", "lake_root")
    @classmethod
    def _root_form(cls, value: str | None) -> str | None:
        if value is not None and not _is_uri_or_path(value):
            raise _WrongForm
        return value.rstrip("/") if value else value

    @field_validator("spark_master")
    @classmethod
    def _spark_master_form(cls, value: str) -> str:
        if not value.startswith(("local", "spark://", "yarn", "k8s://")):
            raise _WrongForm
        return value

    @field_validator("spark_remote")
    @classmethod
    def _spark_remote_form(cls, value: str | None) -> str | None:
        if value is not None and not (value.startswith("sc://") and urlsplit(value).hostname):
            raise _WrongForm
        return value

    @field_validator("openlineage_url", "s3_endpoint_url")
    @classmethod
    def _url_form(cls, value: str | None) -> str | None:
        if value is not None and not _is_http_url(value):
            raise _WrongForm
        return value

    @field_validator("mlflow_ui_url")
    @classmethod
    def _base_url_form(cls, value: str) -> str:
        if not _is_http_url(value):
            raise _WrongForm
        return value.rstrip("/")

    @field_validator("alert_webhook_url")
    @classmethod
    def _secret_url_form(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _is_http_url(value.get_secret_value()):
            raise _WrongForm
        return value

    @field_validator("spark_driver_memory")
    @classmethod
    def _memory_form(cls, value: str) -> str:
        if not _JVM_MEMORY.fullmatch(value.strip()):
            raise _WrongForm
        return value.strip()

    @field_validator("alert_budget")
    @classmethod
    def _budget_form(cls, value: str) -> str:
        try:
            AlertBudget.parse(value)
        except BudgetError:
            raise _WrongForm from None
        return value.strip()

    @field_validator("scoring_cron")
    @classmethod
    def _cron_form(cls, value: str) -> str:
        problem = cron_problem(value)
        if problem:
            raise ValueError(problem)
        return " ".join(value.split())

    @cached_property
    def budget(self) -> AlertBudget:
        """The alert budget, parsed."""
        return AlertBudget.parse(self.alert_budget)

    @cached_property
    def landing(self) -> str:
        return self.landing_root or str(self.home / "landing")

    @cached_property
    def lake(self) -> str:
        return self.lake_root or str(self.home / "lake")

    @cached_property
    def warehouse_path(self) -> Path:
        return self.warehouse or self.home / "warehouse" / "txguard.duckdb"

    @cached_property
    def lake_tables(self) -> str:
        """Where the warehouse's tables are published as day-partitioned Parquet for analysts and Spark."""
        return f"{self.lake.rstrip('/')}/tables"

    @cached_property
    def snapshot_path(self) -> Path:
        """The analysts' read-only catalog over ``lake_tables``, published after each warehouse write."""
        return self.warehouse_path.with_name("txguard_snapshot.duckdb")

    @cached_property
    def tracking_uri(self) -> str:
        if self.mlflow_uri:
            return self.mlflow_uri
        return f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    @cached_property
    def mlflow_artifact_root(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @cached_property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @cached_property
    def lineage_dir(self) -> Path:
        return self.home / "lineage"

    def alert_webhook(self) -> str | None:
        """The webhook URL in clear, for the one call that posts to it."""
        return self.alert_webhook_url.get_secret_value() if self.alert_webhook_url else None


def _extra(field: str, key: str) -> str:
    """What ``_setting`` recorded on a field: its ``form`` or its ``scope``."""
    return cast(dict, Settings.model_fields[field].json_schema_extra)[key]


def scope_of(field: str) -> Scope:
    return cast(Scope, _extra(field, "scope"))


def fields_in_scope(scope: Scope) -> dict[str, FieldInfo]:
    """The settings fields of one scope, in declaration order (``run``: the Dagster resource's fields)."""
    return {name: info for name, info in Settings.model_fields.items() if scope_of(name) == scope}


def expected_form(field: str) -> str:
    return _extra(field, "form")


def _problem(item: Any) -> str:
    """One bad value as ``VARIABLE='value': expected FORM (why)``; a secret's value is never shown."""
    field = str(item["loc"][0])
    shown = " (secret, not shown)" if scope_of(field) == "secret" else f"={item['input']!r}"
    reason = item.get("ctx", {}).get("error")
    detail = f" ({reason})" if item["type"] == "value_error" and not isinstance(reason, _WrongForm) else ""
    return f"{variable(field)}{shown}: expected {expected_form(field)}{detail}"


def load_settings(**overrides: object) -> Settings:
    """Read the environment, apply explicit overrides, and fail with the variable's name on bad input.

    ``None`` overrides are dropped, so a caller passes its optional values as they are and an empty one falls
    back to the variable.
    """
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        raise SettingsError("; ".join(_problem(item) for item in error.errors())) from None
