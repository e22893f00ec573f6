"""The warehouse: dbt models as daily-partitioned assets, with a quality gate between staging and marts.

``dbt_staging`` builds the staging models (and runs their dbt tests), the Great Expectations suites then
check the staged window, and only then ``dbt_marts`` builds everything above staging. An error-severity dbt
test and a failing suite are blocking checks: their step fails, so nothing downstream runs in that run.
The marts tagged ``scoring`` read the scores, so ``dbt_scoring_marts`` builds them after
``transaction_scores`` (itself downstream of the features, so of staging): one step apart, no cycle.
Every step that touches the DuckDB file runs in the warehouse pool (one at a time) and the analysts'
snapshot is published after each successful write.

The dbt manifest is made at prepare time (``dagster-dbt project prepare-and-package --file`` on this
module); a load only parses when the manifest is missing or older than the project, under ``dagster dev``
too. A step's dbt parses only once per code version and home: the run's window reaches dbt through the
environment, so every step runs the same command line and starts from the parse the first one saved
(``parse_cache``). The models are incremental by day, so a step never rebuilds history.
"""

import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from dagster_dbt import (
    DagsterDbtCliRuntimeError,
    DagsterDbtTranslator,
    DagsterDbtTranslatorSettings,
    DbtCliResource,
    DbtProject,
    dbt_assets,
)
from packaging.version import Version

from jobs.platform.catalog import publish
from jobs.platform.layout import parse_day
from jobs.platform.settings import REPO_ROOT, Settings
from jobs.platform.warehouse import connect, rows_per_day, table_rows
from jobs.transform.dbt_windows import (
    PartitionWindow,
    dbt_environment,
    dbt_target,
    dbt_vars,
    rebuilt_days,
    window_from_keys,
)
from orchestration.defs.conventions import DATA_PLATFORM, ROW_COUNT
from orchestration.partitions import (
    WAREHOUSE_POOL,
    daily_partitions,
    on_upstream_update,
    single_run_backfill,
)
from orchestration.processes import bound_launcher
from orchestration.resources import TxguardSettings

if TYPE_CHECKING:
    from jobs.transform.expectations import SuiteSummary

DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"
_VENV_DBT = Path(sys.executable).with_name("dbt")
DBT_EXECUTABLE = str(_VENV_DBT) if _VENV_DBT.exists() else "dbt"
STAGING_SELECTION = "path:models/staging"
SCORING_SELECTION = "tag:scoring"
SOURCE_ASSET_KEYS = {
    ("landing", "transactions"): dg.AssetKey("raw_transactions"),
    ("landing", "fraud_reports"): dg.AssetKey("raw_fraud_reports"),
}
SUITE_ASSETS = {
    "transactions": dg.AssetKey("stg_landing__transactions"),
    "fraud_reports": dg.AssetKey("stg_landing__fraud_reports"),
}
GX_CHECK_NAME = "gx_suite"
DAY_COLUMN = "partition_column"
"""The model config naming a model's day column: its incremental window and its per-day row counts."""


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for a block (dbt reads its settings from them); restore them after."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _manifest_is_stale(project: DbtProject) -> bool:
    """Missing, or older than a file dbt parses: a few stat calls, no dbt import."""
    if not project.manifest_path.exists():
        return True
    built = project.manifest_path.stat().st_mtime
    sources = [project.project_dir / "dbt_project.yml", project.project_dir / "profiles.yml"]
    for folder in ("models", "macros", "tests"):
        sources.extend(path for path in (project.project_dir / folder).rglob("*") if path.is_file())
    return any(path.stat().st_mtime > built for path in sources)


def prepared_project() -> DbtProject:
    """The dbt project with a current manifest, parsed here only when it is missing or stale.

    Not ``prepare_if_dev``: under ``dagster dev`` every process that loads the location (the code server,
    then each run) would parse the project again, several seconds per run for an unchanged manifest.
    """
    project = DbtProject(project_dir=DBT_PROJECT_DIR)
    dbt_on_path = f"{Path(DBT_EXECUTABLE).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with _environment({"PATH": dbt_on_path}):
        if _manifest_is_stale(project):
            project.preparer.prepare(project)
    return project


dbt_project = prepared_project()


class TxguardDbtTranslator(DagsterDbtTranslator):
    """The landing sources are the ingest assets (other sources keep dagster-dbt's key, which honours
    ``meta.dagster.asset_key``); a model's key is its name, not schema/name; models are in ``transform``,
    owned by the data platform, and follow their upstream by declarative automation. Kinds, code versions
    (a hash of each model's SQL), table names and column schemas are dagster-dbt's own."""

    def get_owners(self, dbt_resource_props: Mapping[str, Any]) -> Sequence[str]:
        return [DATA_PLATFORM]

    def get_description(self, dbt_resource_props: Mapping[str, Any]) -> str:
        """The first sentence of the model's dbt description (its grain), on one line; the rest of the
        description and the SQL stay in the dbt docs."""
        text = " ".join(str(dbt_resource_props.get("description") or "").split())
        first = text.split(". ", 1)[0].rstrip(".")
        if first:
            return f"{first}."
        return f"dbt {dbt_resource_props['resource_type']} {dbt_resource_props['name']}"

    def get_automation_condition(
        self, dbt_resource_props: Mapping[str, Any]
    ) -> dg.AutomationCondition | None:
        if dbt_resource_props["resource_type"] != "model":
            return None
        return on_upstream_update()

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None):
        spec = super().get_asset_spec(manifest, unique_id, project)
        props = self.get_resource_props(manifest, unique_id)
        if props["resource_type"] == "source":
            return spec.replace_attributes(
                key=SOURCE_ASSET_KEYS.get((props["source_name"], props["name"]), spec.key)
            )
        return spec.replace_attributes(key=dg.AssetKey(props["name"]), group_name="transform")


translator = TxguardDbtTranslator(DagsterDbtTranslatorSettings(enable_asset_checks=True))


def run_window(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> PartitionWindow:
    """The run's partition range as a window; a key that is not a plain date is refused here."""
    keys = context.partition_key_range
    return window_from_keys(keys.start, keys.end)


@cache
def model_tables() -> dict[dg.AssetKey, tuple[str, str | None]]:
    """Each model's asset key → its relation (``schema.alias``) and its day column (the incremental
    ``partition_column``; none for a table that is not by day), read once from the prepared manifest."""
    manifest = json.loads(dbt_project.manifest_path.read_text())
    return {
        dg.AssetKey(node["name"]): (f"{node['schema']}.{node['alias']}", node["config"].get(DAY_COLUMN))
        for node in manifest["nodes"].values()
        if node["resource_type"] == "model"
    }


def with_day_row_counts(
    context: dg.AssetExecutionContext, events: Sequence[Any], warehouse: Path
) -> Iterator[Any]:
    """The build's events, each model's materializations carrying their own day's ``dagster/row_count``.

    dagster-dbt would count the whole relation, the same number on every day of a range. A model by day
    records the rows of each day (partition-scoped metadata, set before its output is yielded); a table that
    is not by day (a dimension) records its whole row count, which is what each day's build left.
    """
    days = [parse_day(key) for key in context.partition_keys]
    outputs = [event for event in events if isinstance(event, dg.Output)]
    whole_table: dict[int, int] = {}
    if outputs:
        with connect(warehouse, read_only=True) as connection:
            for event in outputs:
                key = context.asset_key_for_output(event.output_name)
                relation, day_column = model_tables()[key]
                if day_column is None:
                    whole_table[id(event)] = table_rows(connection, relation)
                    continue
                for day, rows in rows_per_day(connection, relation, day_column, days).items():
                    context.add_asset_metadata({ROW_COUNT: rows}, asset_key=key, partition_key=str(day))
    for event in events:
        if id(event) in whole_table:
            event = event.with_metadata({**event.metadata, ROW_COUNT: whole_table[id(event)]})
        yield event


def window_environment(window: PartitionWindow, settings: Settings) -> dict[str, str]:
    """What a step's dbt reads from the environment: the warehouse, and the window, lake and target that a
    command line would give as ``--vars`` and ``--target``. The command line is then ``dbt build`` on every
    run, so a step can start from the parse an earlier step saved (``parse_cache``) instead of re-parsing
    the project, which dbt does whenever ``--vars`` change (see macros/partition_window.sql)."""
    window_vars = {f"DBT_{name.upper()}": value for name, value in dbt_vars(window, settings.lake).items()}
    return {
        **dbt_environment(settings.warehouse_path, settings.s3_endpoint_url),
        **window_vars,
        "DBT_TARGET_NAME": dbt_target(settings.lake),
    }


PARSE_FILE = "partial_parse.msgpack"


def parse_cache(settings: Settings) -> Path:
    """Where this home keeps dbt's parse for this code version, warehouse and target.

    dbt re-parses the whole project (seconds) unless the saved parse was made with the same command-line
    vars, target and profile, the warehouse path included; the manifest prepared at install time was made
    with none of this home's, so the first step of a code version parses once and saves its parse here, and
    every later step starts from it. dbt still checks the saved parse itself, so a stale one only costs a
    parse.
    """
    prepared = dbt_project.manifest_path.with_name(PARSE_FILE)
    digest = hashlib.sha256(prepared.read_bytes() if prepared.exists() else b"")
    digest.update(f"\0{settings.warehouse_path.absolute()}\0{dbt_target(settings.lake)}".encode())
    return settings.home / "dbt" / "parse" / digest.hexdigest()[:16] / PARSE_FILE


def keep_parse(step_target: Path, cache: Path) -> None:
    """Save the step's parse for the next steps (atomically), dropping those of older code versions."""
    parsed = step_target / PARSE_FILE
    if cache.exists() or not parsed.exists():
        return
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = cache.with_name(f".{uuid.uuid4().hex}.tmp")
    shutil.copyfile(parsed, staging)
    os.replace(staging, cache)
    for older in cache.parent.parent.iterdir():
        if older != cache.parent:
            shutil.rmtree(older, ignore_errors=True)


def build_window(context: dg.AssetExecutionContext, dbt: DbtCliResource, settings: Settings) -> Iterator[Any]:
    """``dbt build`` of the selected models for the run's window, then publish the analysts' snapshot.

    The events are held until dbt exits, so the day counts read the warehouse once dbt has released it; a
    failed build still reports what it built before the failure, then fails the step.
    """
    window = run_window(context)
    target = settings.home / "dbt" / f"{context.op_execution_context.op.name}-{context.run.run_id}"
    settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    cache = parse_cache(settings)
    if cache.exists():  # dagster-dbt copies the prepared parse only into a target that has none
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cache, target / PARSE_FILE)
    events: list[Any] = []
    failure: DagsterDbtCliRuntimeError | None = None
    cwd = os.getcwd()
    try:
        with _environment(window_environment(window, settings)):
            invocation = dbt.cli(["build"], context=context, target_path=target)
            events.extend(invocation.stream().fetch_column_metadata(with_column_lineage=False))
    except DagsterDbtCliRuntimeError as error:
        failure = error
    finally:
        os.chdir(cwd)  # dagster-dbt's metadata threads chdir into the project concurrently and may stay there
    keep_parse(target, cache)
    yield from with_day_row_counts(context, events, settings.warehouse_path)
    if failure is not None:
        raise failure
    shutil.rmtree(target, ignore_errors=True)  # a failed build keeps its dbt.log and compiled SQL
    publish(settings, rebuilt_days(window))
    context.log.info(f"dbt built {window}; snapshot published at {settings.snapshot_path}")


class EnvironmentDbtCliResource(DbtCliResource):
    """dagster-dbt's resource, running the dbt-core installed in this environment (``DBT_EXECUTABLE``).

    dagster-dbt learns which dbt it drives (Core or Fusion) by running ``dbt --version`` once per process
    that invokes dbt: a Python start and dbt's imports, about 2 s of every run and, under the daemon, of
    every dbt step. The version of the dbt-core package beside this interpreter is the same answer.
    """

    @cached_property
    def _cli_version(self) -> Version:
        return Version(importlib.metadata.version("dbt-core"))


def window_dbt_assets(
    name: str, description: str, *, select: str = "fqn:*", exclude: str | None = None
) -> dg.AssetsDefinition:
    """A daily-partitioned slice of the dbt project, built one run window at a time in the warehouse pool."""

    def build(context: dg.AssetExecutionContext, dbt: DbtCliResource, settings: TxguardSettings):
        yield from build_window(context, dbt, settings.load())

    build.__doc__ = description
    return dbt_assets(
        manifest=dbt_project.manifest_path,
        project=dbt_project,
        select=select,
        exclude=exclude,
        name=name,
        dagster_dbt_translator=translator,
        partitions_def=daily_partitions,
        backfill_policy=single_run_backfill,
        pool=WAREHOUSE_POOL,
    )(build)


dbt_staging = window_dbt_assets(
    "dbt_staging",
    "The staging models: the run's lake partitions replace their window, one transaction per model.",
    select=STAGING_SELECTION,
)
dbt_marts = window_dbt_assets(
    "dbt_marts",
    "Everything above staging; it starts only once staging's blocking checks (dbt and GX) passed.",
    exclude=f"{STAGING_SELECTION} {SCORING_SELECTION}",
)
dbt_scoring_marts = window_dbt_assets(
    "dbt_scoring_marts",
    "The marts on the scores: apart from ``dbt_marts`` because they wait for ``transaction_scores``, "
    "which itself waits for the features built from staging.",
    select=SCORING_SELECTION,
)


def check_metadata(summary: "SuiteSummary", docs_index: Path) -> dict[str, dg.MetadataValue]:
    """What failed, what was observed, sample rows and the Data Docs (this validation's page and the site's
    index, ``file://`` URLs): enough to act on in the UI."""
    metadata: dict[str, dg.MetadataValue] = {
        "expectations_passed": dg.MetadataValue.int(len(summary.passed)),
        "expectations_failed": dg.MetadataValue.int(len(summary.failed)),
        "failed_expectations": dg.MetadataValue.text(", ".join(summary.failed) or "none"),
        "observed_values": dg.MetadataValue.json(summary.observed_values),
        "parameters": dg.MetadataValue.json({**summary.parameters, **summary.facts}),
        "row_count": dg.MetadataValue.int(summary.row_count),
        "unexpected_rows_sample": dg.MetadataValue.json(list(summary.unexpected_rows)),
    }
    if summary.data_docs:
        metadata["data_docs"] = dg.MetadataValue.url(summary.data_docs)
    if docs_index.is_file():
        metadata["data_docs_index"] = dg.MetadataValue.url(docs_index.as_uri())
    return metadata


@dg.multi_asset_check(
    name="gx_staged_suites",
    specs=[
        dg.AssetCheckSpec(
            GX_CHECK_NAME,
            asset=key,
            blocking=True,
            description=f"Great Expectations suite expectations/{suite}.json on the run's staged window",
        )
        for suite, key in SUITE_ASSETS.items()
    ],
    can_subset=True,
    pool=WAREHOUSE_POOL,
)
def gx_staged_suites(
    context: dg.AssetCheckExecutionContext, settings: TxguardSettings
) -> Iterator[dg.AssetCheckResult]:
    """The suites in one step: one GX import and one read of the warehouse per run. A run that stages one
    source only (automation, or one asset picked in the UI) validates and reports that source only."""
    from jobs.transform.expectations import validate_staged

    loaded = settings.load()
    selected = context.selected_asset_check_keys
    suites = [s for s, key in SUITE_ASSETS.items() if dg.AssetCheckKey(key, GX_CHECK_NAME) in selected]
    gx_root = loaded.home / "gx"
    summaries = validate_staged(
        loaded.warehouse_path, run_window(context), gx_root, context.run.run_id, suites
    )
    for suite in suites:
        key = SUITE_ASSETS[suite]
        yield dg.AssetCheckResult(
            asset_key=key,
            check_name=GX_CHECK_NAME,
            passed=summaries[suite].success,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata=check_metadata(summaries[suite], gx_root / "data_docs" / "index.html"),
        )


defs = dg.Definitions(
    assets=[dbt_staging, dbt_marts, dbt_scoring_marts],
    asset_checks=[gx_staged_suites],
    resources={
        "dbt": EnvironmentDbtCliResource(
            project_dir=dbt_project,
            dbt_executable=bound_launcher(DBT_EXECUTABLE, dbt_project.manifest_path.parent),
        )
    },
)
