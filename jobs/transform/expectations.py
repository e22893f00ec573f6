"""Great Expectations suites (``expectations/*.json``) run against the staged rows of a partition window.

The suites are reviewable JSON files in the repository. GX runs in an ephemeral context built from them,
so nothing in the repository is rewritten; validation results and Data Docs are files under
``<home>/gx`` (``validations/``, ``data_docs/``). Build and open the docs with
``python -m jobs.transform.expectations docs --open``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import webbrowser
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.platform.settings import REPO_ROOT
from jobs.platform.warehouse import connect
from jobs.transform.dbt_windows import PartitionWindow, window_from_keys

if TYPE_CHECKING:
    import duckdb
    import pandas as pd

SUITES_DIR = REPO_ROOT / "expectations"
SUITES = ("transactions", "fraud_reports")
ID_COLUMN = "transaction_id"
SAMPLE_ROWS = 5

_TRANSACTIONS = "staging.stg_landing__transactions"
_FRAUD_REPORTS = "staging.stg_landing__fraud_reports"


class SuiteError(ValueError):
    """A suite file that GX cannot apply in full (GX itself would drop a bad expectation with a log line)."""


@dataclass(frozen=True)
class Batch:
    """Rows to validate, the values of the suite's ``$PARAMETER``s, and facts reported beside them."""

    frame: pd.DataFrame
    parameters: dict[str, Any]
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExpectationOutcome:
    name: str
    expectation_type: str
    column: str | None
    passed: bool
    observed: Any
    unexpected_ids: tuple[Any, ...] = ()


@dataclass(frozen=True)
class SuiteSummary:
    """What a suite found, in plain JSON-able values: enough to act on without opening the Data Docs."""

    suite: str
    success: bool
    row_count: int
    outcomes: tuple[ExpectationOutcome, ...]
    parameters: dict[str, Any]
    facts: dict[str, Any]
    unexpected_rows: tuple[dict[str, Any], ...]
    data_docs: str | None

    @property
    def passed(self) -> list[str]:
        return [outcome.name for outcome in self.outcomes if outcome.passed]

    @property
    def failed(self) -> list[str]:
        return [outcome.name for outcome in self.outcomes if not outcome.passed]

    @property
    def observed_values(self) -> dict[str, Any]:
        return {outcome.name: outcome.observed for outcome in self.outcomes}


def load_suite(name: str, suites_dir: Path = SUITES_DIR) -> dict[str, Any]:
    """A suite document, with every expectation named (``meta.name``) so failures can be named."""
    path = suites_dir / f"{name}.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    names = [expectation.get("meta", {}).get("name") for expectation in document.get("expectations", [])]
    if not names or not all(names) or len(set(names)) != len(names):
        raise SuiteError(f"{path}: every expectation needs a unique meta.name")
    if document.get("name") != name:
        raise SuiteError(f"{path}: the suite's name must be {name!r}")
    return document


def _json_safe(value: Any) -> Any:
    """Plain JSON values for Dagster metadata: numpy scalars unwrapped, times as ISO text, NaN/NaT as None."""
    import pandas as pd

    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        return _json_safe(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _context(gx_root: Path):
    """An ephemeral GX context whose validation results and Data Docs are files under ``gx_root``."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import DataContextConfig, ProgressBarsConfig

    def on_disk(folder: str) -> dict[str, str]:
        return {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(gx_root / folder)}

    in_memory = {"class_name": "InMemoryStoreBackend"}
    config = DataContextConfig(
        stores={
            "expectations_store": {"class_name": "ExpectationsStore", "store_backend": in_memory},
            "validation_results_store": {
                "class_name": "ValidationResultsStore",
                "store_backend": on_disk("validations"),
            },
            "checkpoint_store": {"class_name": "CheckpointStore", "store_backend": in_memory},
            "validation_definition_store": {
                "class_name": "ValidationDefinitionStore",
                "store_backend": in_memory,
            },
        },
        expectations_store_name="expectations_store",
        validation_results_store_name="validation_results_store",
        checkpoint_store_name="checkpoint_store",
        data_docs_sites={
            "txguard": {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": on_disk("data_docs"),
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        },
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _add_suite(context, name: str, suites_dir: Path):
    """Add the suite to the context, or name the file GX refused (it can drop a bad expectation silently)."""
    import great_expectations as gx
    from great_expectations.exceptions import GreatExpectationsError

    path = suites_dir / f"{name}.json"
    document = load_suite(name, suites_dir)
    try:
        suite = gx.ExpectationSuite(
            name=name,
            expectations=document["expectations"],
            meta=document.get("meta"),
            notes=document.get("notes"),
        )
    except (ValueError, TypeError, GreatExpectationsError) as error:
        raise SuiteError(f"{path}: {error}") from error
    if len(suite.expectations) != len(document["expectations"]):
        raise SuiteError(f"{path}: GX rejected an expectation (see the log above)")
    return context.suites.add(suite)


def _outcome(result) -> ExpectationOutcome:
    config = result.expectation_config
    details = result.result or {}
    if "observed_value" in details:
        observed = details["observed_value"]
    else:
        observed = {
            "element_count": details.get("element_count"),
            "unexpected_count": details.get("unexpected_count"),
            "unexpected_percent": details.get("unexpected_percent"),
        }
    ids = tuple(
        row[ID_COLUMN] for row in details.get("partial_unexpected_index_list") or [] if ID_COLUMN in row
    )
    return ExpectationOutcome(
        name=config.meta["name"],
        expectation_type=config.type,
        column=config.kwargs.get("column") or config.kwargs.get("column_A"),
        passed=bool(result.success),
        observed=_json_safe(observed),
        unexpected_ids=tuple(_json_safe(list(dict.fromkeys(ids)))),
    )


def validate_frames(
    batches: Mapping[str, Batch], gx_root: Path, run_name: str, suites_dir: Path = SUITES_DIR
) -> dict[str, SuiteSummary]:
    """Run each named suite on its batch; store the results and update the Data Docs under ``gx_root``."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.core.run_identifier import RunIdentifier

    context = _context(gx_root)
    source = context.data_sources.add_pandas("txguard")
    summaries: dict[str, SuiteSummary] = {}
    for name, batch in batches.items():
        suite = _add_suite(context, name, suites_dir)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(
                name=name,
                data=source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("window"),
                suite=suite,
            )
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=name,
                validation_definitions=[definition],
                actions=[UpdateDataDocsAction(name="data_docs")],
                result_format={
                    "result_format": "SUMMARY",
                    "unexpected_index_column_names": [ID_COLUMN],
                    "partial_unexpected_count": SAMPLE_ROWS,
                },
            )
        )
        result = checkpoint.run(
            batch_parameters={"dataframe": batch.frame},
            expectation_parameters=batch.parameters,
            run_id=RunIdentifier(run_name=run_name),
        )
        (identifier, validation), *_ = result.run_results.items()
        outcomes = tuple(_outcome(item) for item in validation.results)
        sample_ids = list(dict.fromkeys(i for outcome in outcomes for i in outcome.unexpected_ids))
        sample = batch.frame[batch.frame[ID_COLUMN].isin(sample_ids[:SAMPLE_ROWS])].head(SAMPLE_ROWS)
        urls = context.get_docs_sites_urls(resource_identifier=identifier)
        summaries[name] = SuiteSummary(
            suite=name,
            success=bool(validation.success),
            row_count=len(batch.frame),
            outcomes=outcomes,
            parameters=_json_safe(batch.parameters),
            facts=_json_safe(batch.facts),
            unexpected_rows=tuple(_json_safe(sample.to_dict(orient="records"))),
            data_docs=urls[0]["site_url"] if urls else None,
        )
    return summaries


def _count(connection: duckdb.DuckDBPyConnection, sql: str, *params: object) -> int:
    return int(connection.execute(sql, list(params)).fetchone()[0])


def transactions_batch(connection: duckdb.DuckDBPyConnection, window: PartitionWindow) -> Batch:
    """The window's staged transactions, and a row-count band from the trailing week's daily mean."""
    band = load_suite("transactions")["meta"]["row_count_band"]
    frame = connection.execute(
        f"""
        select transaction_id, tx_datetime, tx_date, customer_id, terminal_id, tx_amount
        from {_TRANSACTIONS}
        where tx_date >= ? and tx_date < ?
        order by tx_datetime, transaction_id
        """,
        [window.start, window.end],
    ).df()
    trailing_start = window.start - dt.timedelta(days=int(band["trailing_days"]))
    rows, days = connection.execute(
        f"select count(*), count(distinct tx_date) from {_TRANSACTIONS} where tx_date >= ? and tx_date < ?",
        [trailing_start, window.start],
    ).fetchone()
    daily_mean = rows / days if days else None
    if daily_mean is None:
        min_rows, max_rows = 1, None
    else:
        min_rows = max(1, math.floor(band["low"] * daily_mean * window.days))
        max_rows = math.ceil(band["high"] * daily_mean * window.days)
    return Batch(
        frame=frame,
        parameters={
            "window_start": _utc_midnight(window.start),
            "window_end": _utc_midnight(window.end),
            "min_row_count": min_rows,
            "max_row_count": max_rows,
        },
        facts={"trailing_daily_mean": daily_mean, "trailing_days_with_data": days},
    )


def fraud_reports_batch(connection: duckdb.DuckDBPyConnection, window: PartitionWindow) -> Batch:
    """Reports that arrived in the window with their transactions' times, and the fraud-rate bound."""
    band = load_suite("fraud_reports")["meta"]["fraud_rate_band"]
    frame = connection.execute(
        f"""
        select reports.transaction_id, reports.reported_at, reports.report_date, transactions.tx_datetime
        from {_FRAUD_REPORTS} as reports
        left join {_TRANSACTIONS} as transactions
            on reports.transaction_id = transactions.transaction_id
        where reports.report_date >= ? and reports.report_date < ?
        order by reports.reported_at, reports.transaction_id
        """,
        [window.start, window.end],
    ).df()
    volume = _count(
        connection,
        f"select count(*) from {_TRANSACTIONS} where tx_date >= ? and tx_date < ?",
        window.start,
        window.end,
    )
    return Batch(
        frame=frame,
        parameters={
            "window_start": _utc_midnight(window.start),
            "window_end": _utc_midnight(window.end),
            "max_fraud_reports": math.floor(band["max"] * volume) if volume else None,
        },
        facts={
            "transactions_in_window": volume,
            "fraud_rate": len(frame) / volume if volume else None,
            "fraud_rate_max": band["max"],
        },
    )


def _utc_midnight(day: dt.date) -> pd.Timestamp:
    import pandas as pd

    return pd.Timestamp(day.isoformat(), tz="UTC")


def staged_batches(
    warehouse: Path, window: PartitionWindow, suites: Collection[str] = SUITES
) -> dict[str, Batch]:
    """Read the suites' batches in one short read-only session on the warehouse."""
    readers = {"transactions": transactions_batch, "fraud_reports": fraud_reports_batch}
    with connect(warehouse, read_only=True) as connection:
        connection.execute("set TimeZone = 'UTC'")
        return {name: readers[name](connection, window) for name in suites}


def validate_staged(
    warehouse: Path, window: PartitionWindow, gx_root: Path, run_name: str, suites: Collection[str] = SUITES
) -> dict[str, SuiteSummary]:
    """The suites (both by default) on the staged rows of ``window``."""
    return validate_frames(staged_batches(warehouse, window, suites), gx_root, f"{run_name}:{window}")


def build_data_docs(gx_root: Path) -> Path:
    """Rebuild the whole Data Docs site from the stored validation results; return its index page."""
    context = _context(gx_root)
    for name in SUITES:
        _add_suite(context, name, SUITES_DIR)
    context.build_data_docs()
    return gx_root / "data_docs" / "index.html"


def main(argv: list[str] | None = None) -> int:
    from jobs.platform.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m jobs.transform.expectations", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    docs = commands.add_parser("docs", help="build the GX Data Docs under <home>/gx/data_docs")
    docs.add_argument("--open", action="store_true", help="open the index page in a browser")
    validate = commands.add_parser("validate", help="run the suites on the warehouse's staged window")
    validate.add_argument("--from", dest="first", required=True, help="first partition day, YYYY-MM-DD")
    validate.add_argument("--to", dest="last", required=True, help="last partition day, YYYY-MM-DD")
    args = parser.parse_args(argv)

    settings = load_settings()
    gx_root = settings.home / "gx"
    if args.command == "docs":
        index = build_data_docs(gx_root)
        print(index)
        if args.open:
            webbrowser.open(index.as_uri())
        return 0
    window = window_from_keys(args.first, args.last)
    summaries = validate_staged(settings.warehouse_path, window, gx_root, "cli")
    for summary in summaries.values():
        print(f"{summary.suite}: {'passed' if summary.success else 'FAILED ' + ', '.join(summary.failed)}")
    return 0 if all(summary.success for summary in summaries.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
