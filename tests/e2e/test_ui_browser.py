"""The Dagster UI in headless Chromium, served by the real webserver on the repository's workspace.

Before the servers start, one recorded run takes three simulated days through ingest, dbt staging and the
Great Expectations gate, so the pages show materializations and check verdicts, not an empty instance (the
whole chain needs weeks of data and over a minute; the UI needs no more than this to show its pages).
``txguard ui --read-only`` (``make ui-readonly``) is started through the CLI users run. The compliance pages
that ``txguard lineage`` and ``txguard report model`` write for people are opened in the same browser, from a
real model scoring real feature partitions in that data home. Screenshots of every page go to
``test_artifacts``.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from jobs.platform.settings import REPO_ROOT
from tests.e2e.dagster_server import graphql, location_loaded, stop_group
from tests.support import build_scored_world, free_port, score_around_cutoff

pytestmark = pytest.mark.slow

GROUPS = ("ingest", "transform", "features", "training", "scoring", "monitoring")
"""The asset groups of the code location; the data-quality gate is asset checks on staging, not a group."""

FIRST_DAY = dt.date(2018, 4, 1)
DAYS = 3
MATERIALIZED = (
    "raw_transactions",
    "raw_fraud_reports",
    "stg_landing__transactions",
    "stg_landing__fraud_reports",
)
SCHEDULES = ("daily_scoring_schedule", "weekly_retraining_schedule")
SENSORS = ("landing_sensor", "retraining_sensor")

UI_WAIT_MS = 60_000
"""How long a page may take to show something: the first GraphQL queries of a fresh server are slow."""
SERVER_START_S = 240
"""How long a server may take to load the code location before the test gives up on it."""
VIEWPORT = {"width": 1920, "height": 1080}
WIDE_VIEWPORT = {"width": 2400, "height": 1300}
"""The asset graph only draws nodes inside the viewport: the upstream chain needs the wide one."""


@dataclass(frozen=True)
class RecordedRun:
    """The data home the UI servers read, and the one run recorded in its Dagster instance."""

    home: Path
    run_id: str


@pytest.fixture(scope="module")
def ui_run(module_home: Path) -> RecordedRun:
    """A data home whose Dagster instance holds one run over ``MATERIALIZED`` for three simulated days."""
    import dagster as dg

    from jobs.platform.settings import load_settings
    from jobs.simulation.simulator import SimulationConfig, simulate, write_landing
    from orchestration.definitions import defs
    from orchestration.instance import prepare_dagster_home
    from orchestration.runs import PIPELINE_JOB, partition_range_tags

    settings = load_settings()
    prepare_dagster_home(settings)
    config = SimulationConfig(customers=50, terminals=100, days=DAYS, start=FIRST_DAY, seed=7)
    write_landing(simulate(config), settings.landing, "csv")
    last_day = FIRST_DAY + dt.timedelta(days=DAYS - 1)
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def(PIPELINE_JOB).execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey(name) for name in MATERIALIZED],
            tags=partition_range_tags(FIRST_DAY.isoformat(), last_day.isoformat()),
            raise_on_error=False,
        )
    failed = [event.step_key for event in result.all_events if event.is_step_failure]
    assert result.success, f"the run the UI should show failed: {failed}"
    return RecordedRun(module_home, result.run_id)


@pytest.fixture(scope="module")
def assets_by_group() -> dict[str, list[str]]:
    """Every asset of the code location under its group, as the definitions declare them."""
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    groups: dict[str, list[str]] = {}
    for key in graph.get_all_asset_keys():
        groups.setdefault(graph.get(key).group_name, []).append(key.to_user_string())
    return groups


@contextmanager
def serving(argv: list[str], port: int, log_path: Path) -> Iterator[str]:
    """Run a UI server in its own process group until its code location is loaded; stop it on exit."""
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"{argv[0]} exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            if location_loaded(base):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"no UI on {base} after {SERVER_START_S} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield base
    finally:
        stop_group(process)


def venv_command(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@pytest.fixture(scope="module")
def webserver(ui_run: RecordedRun) -> Iterator[str]:
    """``dagster-webserver`` on the workspace (as ``make ui`` serves it, without the daemon)."""
    port = free_port()
    argv = [venv_command("dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with serving(argv, port, ui_run.home / "webserver.log") as base:
        yield base


class Tab:
    """One browser tab on a UI server; remembers uncaught page errors so a test can assert there were none."""

    def __init__(self, browser: Browser, base: str, screenshots: Path, prefix: str) -> None:
        self.context = browser.new_context(viewport=VIEWPORT)
        # The "join the community" dialog opens on localhost origins until dismissed; it would cover pages.
        self.context.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.base, self.screenshots, self.prefix = base, screenshots, prefix

    def open(self, path: str) -> Page:
        self.page.goto(self.base + path)
        return self.page

    def shot(self, name: str) -> None:
        """Screenshot the whole page once its queries are answered (no node still says "Loading")."""
        self.page.wait_for_load_state("networkidle", timeout=UI_WAIT_MS)
        expect(self.page.get_by_text(re.compile(r"^Loading"))).to_have_count(0, timeout=UI_WAIT_MS)
        self.page.screenshot(path=self.screenshots / f"{self.prefix}-{name}.png", full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def ui(webserver: str, chromium: Browser, test_artifacts: Path) -> Iterator[Tab]:
    """A fresh tab on the writable webserver; the UI must not have raised in it by the end of the test."""
    tab = Tab(chromium, webserver, test_artifacts, "dagster-ui")
    yield tab
    tab.close()
    assert tab.errors == [], f"the UI raised in the browser: {tab.errors}"


def shown(locator: Locator) -> None:
    expect(locator).to_be_visible(timeout=UI_WAIT_MS)


def test_asset_graph_shows_every_group_and_its_assets(ui: Tab, assets_by_group: dict[str, list[str]]) -> None:
    assert sorted(assets_by_group) == sorted(GROUPS)
    page = ui.open("/asset-groups")
    expect(page).to_have_title("Global asset lineage", timeout=UI_WAIT_MS)
    for group in GROUPS:
        shown(page.get_by_role("button", name=re.compile(rf"\b{group}\b")))
    ui.shot("asset-graph")

    for group in GROUPS:
        page = ui.open(f"/locations/txguard/asset-groups/{group}")
        expect(page).to_have_title(f"Asset groups | {group}", timeout=UI_WAIT_MS)
        for asset in assets_by_group[group]:
            shown(page.get_by_text(asset, exact=True).first)
        ui.shot(f"group-{group}")


def test_transaction_scores_page_and_its_lineage(ui: Tab) -> None:
    page = ui.open("/assets/transaction_scores")
    expect(page).to_have_title("Assets | transaction_scores", timeout=UI_WAIT_MS)
    shown(page.get_by_text("by the champion pinned per run", exact=False))
    shown(page.get_by_role("link", name="scoring", exact=True))
    for upstream in ("transaction_features", "model_promotion"):
        link = page.get_by_role("link", name=re.compile(rf"\b{upstream}\b"))
        expect(link).to_have_attribute("href", f"/assets/{upstream}")
    expect(page.get_by_role("button", name=re.compile(r"Materialize…$"))).to_be_enabled()
    ui.shot("transaction_scores")

    page.get_by_role("tab", name="Lineage").click()
    expect(page).to_have_url(re.compile(r"view=lineage"))
    for neighbour in ("transaction_features", "model_promotion", "fct_transaction_scores", "feature_drift"):
        shown(page.get_by_text(neighbour, exact=True).first)
    ui.shot("transaction_scores-lineage")

    page.set_viewport_size(WIDE_VIEWPORT)
    page.get_by_role("button", name=re.compile(r"Upstream$")).click()
    page.get_by_role("button", name="All", exact=True).click()
    expect(page).to_have_url(re.compile(r"lineageScope=upstream"))
    for ancestor in ("raw_transactions", "stg_landing__transactions", "fraud_model", "transaction_features"):
        shown(page.get_by_text(ancestor, exact=True).first)
    expect(page.get_by_text("feature_drift", exact=True)).to_have_count(0)
    ui.shot("transaction_scores-upstream")


def test_recorded_run_and_quality_gate_verdict_are_shown(ui: Tab, ui_run: RecordedRun) -> None:
    page = ui.open("/assets/raw_transactions?view=partitions")
    shown(page.get_by_text(f"Materialized ({DAYS})", exact=True))
    page.get_by_text(re.compile(r"^Missing \(")).click()
    shown(page.get_by_text(f"{DAYS} Partitions Selected", exact=True))
    days = [(FIRST_DAY + dt.timedelta(days=offset)).isoformat() for offset in range(DAYS)]
    for day in days:
        shown(page.get_by_text(day, exact=True).first)
    page.get_by_text(days[1], exact=True).first.click()
    run_link = page.get_by_role("link", name=ui_run.run_id[:8], exact=True)
    expect(run_link).to_have_attribute("href", re.compile(rf"^/runs/{ui_run.run_id}\b"))
    shown(page.get_by_role("link", name="daily_pipeline", exact=True))
    expect(page.get_by_role("row", name=re.compile(r"^source_file "))).to_contain_text(
        f"transactions/{days[1]}.csv"
    )
    ui.shot("raw_transactions-partitions")

    page = ui.open("/assets/stg_landing__transactions?view=checks&checkDetail=gx_suite")
    shown(page.get_by_text("Great Expectations suite expectations/transactions.json", exact=False))
    shown(page.get_by_text("This is a blocking asset check."))
    shown(page.get_by_text("Passed", exact=True))
    shown(page.get_by_text("expectations_failed", exact=True).first)
    ui.shot("quality-gate")


def test_automation_page_lists_schedules_and_sensors(ui: Tab) -> None:
    page = ui.open("/automation")
    expect(page).to_have_title("Automation", timeout=UI_WAIT_MS)
    for kind, names in (("schedules", SCHEDULES), ("sensors", SENSORS)):
        for name in names:
            link = page.locator(f'a[href$="/locations/txguard/{kind}/{name}"]')
            shown(link)
            expect(link).to_contain_text(name)
    ui.shot("automation")


LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchPipelineExecution(executionParams: $params) { __typename ... on UnauthorizedError { message } }
  launchRun(executionParams: $params) { __typename ... on UnauthorizedError { message } }
}
"""
PERMISSIONS = "{ permissions { permission value } }"
RUN_COUNT = "{ runsOrError { ... on Runs { count } } }"


def test_read_only_ui_refuses_to_launch(ui_run: RecordedRun, chromium: Browser, test_artifacts: Path) -> None:
    port = free_port()
    argv = [venv_command("txguard"), "ui", "--read-only", "--port", str(port)]
    with serving(argv, port, ui_run.home / "read-only.log") as base:
        permissions = {row["permission"]: row["value"] for row in graphql(base, PERMISSIONS)["permissions"]}
        assert permissions["launch_pipeline_execution"] is False
        assert permissions["launch_partition_backfill"] is False
        runs_before = graphql(base, RUN_COUNT)["runsOrError"]["count"]
        selector = {
            "repositoryLocationName": "txguard",
            "repositoryName": "__repository__",
            "pipelineName": "daily_pipeline",
        }
        params = {
            "selector": selector,
            "runConfigData": {},
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": FIRST_DAY.isoformat()}]},
        }
        refused = graphql(base, LAUNCH, {"params": params})
        assert refused["launchPipelineExecution"]["__typename"] == "UnauthorizedError"
        assert refused["launchRun"]["__typename"] == "UnauthorizedError"
        assert graphql(base, RUN_COUNT)["runsOrError"]["count"] == runs_before == 1

        tab = Tab(chromium, base, test_artifacts, "dagster-ui-read-only")
        try:
            page = tab.open("/assets/transaction_scores")
            expect(page).to_have_title("Assets | transaction_scores", timeout=UI_WAIT_MS)
            expect(page.get_by_role("button", name=re.compile(r"Materialize…$"))).to_be_disabled()
            tab.shot("transaction_scores")
            page = tab.open("/asset-groups")
            shown(page.get_by_role("button", name=re.compile(r"\bingest\b")))
            expect(page.get_by_role("button", name=re.compile(r"Materialize all…$"))).to_be_disabled()
            expect(page.get_by_role("button", name=re.compile(r"Reload definitions$"))).to_be_disabled()
            tab.shot("asset-graph")
        finally:
            tab.close()
        assert tab.errors == [], f"the read-only UI raised in the browser: {tab.errors}"


# --- the pages people read: lineage of a transaction, a partition and a model, and the model report -------


def txguard(*args: str) -> None:
    """One ``txguard`` command as people run it, in this test's environment."""
    done = subprocess.run([venv_command("txguard"), *args], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def open_page(browser: Browser, path: Path, screenshots: Path, name: str) -> tuple[Page, list[str]]:
    """``path`` in a fresh tab, screenshot whole; returns the tab and every URL it requested."""
    page = browser.new_context(viewport=VIEWPORT).new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(path.as_uri())
    page.screenshot(path=screenshots / f"{name}.png", full_page=True)
    return page, requested


def test_lineage_pages_and_model_report_explain_a_decision_to_people(
    ui_run: RecordedRun,
    handbook_lake: str,
    training_set,
    trained,
    chromium: Browser,
    test_artifacts: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import duckdb

    from jobs.features.definitions import FEATURE_COLUMNS
    from jobs.governance.audit import monitoring_results, record_monitoring
    from jobs.monitoring.monitors import measure_drift
    from jobs.platform import storage
    from jobs.platform.layout import TRANSACTION_FEATURES, partition_uri
    from jobs.platform.settings import load_settings
    from jobs.training.trainer import feature_days

    monkeypatch.setenv("TXGUARD_LAKE_ROOT", handbook_lake)
    settings = load_settings()
    days = feature_days(handbook_lake)[-2:]
    world = build_scored_world(settings, training_set, trained, days)
    drift = measure_drift(settings, days)
    record_monitoring(
        settings, monitoring_results("feature_drift", "drift_psi", drift, "run-drift"), "run-drift"
    )
    champion, version = world["champion"], str(world["champion"].version)
    train_end = world["training"].window["validation_end"][:10]
    with duckdb.connect(str(settings.snapshot_path), read_only=True) as snapshot:
        tid, score, day = snapshot.execute(
            "select transaction_id, score, day from scoring.transaction_scores where decision"
            " order by score desc, transaction_id limit 1"
        ).fetchone()
        rows, alerts = snapshot.execute(
            "select count(*), count(*) filter (where decision) from scoring.transaction_scores where day = ?",
            [day],
        ).fetchone()
        scored = snapshot.execute("select count(*) from scoring.transaction_scores").fetchone()[0]
    out = tmp_path / "pages"
    txguard("lineage", "transaction", str(tid), "--format", "html", "-o", str(out / "transaction.html"))
    txguard("lineage", "partition", day.isoformat(), "--format", "html", "-o", str(out / "partition.html"))
    txguard("lineage", "model", version, "--format", "html", "-o", str(out / "model.html"))
    txguard("report", "model", version, "-o", str(out / "report"))
    mlflow = settings.mlflow_ui_url
    data_docs = settings.home / "gx" / "data_docs" / "index.html"
    assert data_docs.is_file(), "the recorded run's Great Expectations gate builds the Data Docs"

    page, requested = open_page(chromium, out / "transaction.html", test_artifacts, "lineage-transaction")
    expect(page.locator(".summary")).to_contain_text(
        f"Transaction {tid} was scored {score:.4g} on {day} by txguard-fraud version {version}, trained on"
        f" data up to {train_end}; it was an alert because {score:.4g} ≥ threshold {champion.threshold:.4g}."
    )
    expect(page.locator(".fact", has_text="threshold")).to_contain_text(f"{champion.threshold:.6g}")
    features = storage.read_parquet(partition_uri(handbook_lake, TRANSACTION_FEATURES, day)).to_pandas()
    values = features[features["transaction_id"] == tid].iloc[0]
    reasons = page.locator("h2:text-is('Reasons') + table tbody tr")
    expect(reasons).to_have_count(3)
    for i in range(3):
        cells = reasons.nth(i).locator("td")
        feature = cells.nth(1).inner_text()
        assert feature in FEATURE_COLUMNS
        expect(cells.nth(2)).to_have_text(f"{float(values[feature]):.6g}")
        expect(cells.nth(3)).to_have_text(re.compile(r"^\+\d"))
    expect(page.get_by_role("link", name="model version in MLflow")).to_have_attribute(
        "href", f"{mlflow}/#/models/txguard-fraud/versions/{version}"
    )
    expect(page.get_by_role("link", name=champion.run_id, exact=True)).to_have_attribute(
        "href", f"{mlflow}/#/runs/{champion.run_id}"
    )
    expect(page.locator('a[href="http://127.0.0.1:3000/runs/run-scoring"]').first).to_be_visible()
    docs = page.get_by_role("link", name="Data Docs", exact=True)
    expect(docs).to_have_attribute("href", data_docs.as_uri())
    assert [url for url in requested if not url.startswith(("file:", "data:"))] == []
    docs.click()
    expect(page).to_have_title("Data Docs created by Great Expectations", timeout=UI_WAIT_MS)
    page.context.close()

    page, requested = open_page(chromium, out / "partition.html", test_artifacts, "lineage-partition")
    expect(page.locator(".summary")).to_contain_text(
        f"Partition {day} holds {rows:,} scores by txguard-fraud version {version} (threshold"
        f" {champion.threshold:.4g}, trained on data up to {train_end}), written by Dagster run run-scoring"
    )
    expect(page.locator(".fact", has_text="alerts")).to_contain_text(str(alerts))
    expect(page.locator('a[href="http://127.0.0.1:3000/runs/run-scoring"]').first).to_be_visible()
    assert [url for url in requested if not url.startswith(("file:", "data:"))] == []
    page.context.close()

    page, requested = open_page(chromium, out / "model.html", test_artifacts, "lineage-model")
    span = f"{days[0]}..{days[-1]}"
    expect(page.locator(".summary")).to_contain_text(
        f"It scored 2 days ({span}, {scored:,} rows) in 1 period of consecutive days."
    )
    period = page.locator("tr", has_text=span)
    expect(period).to_have_count(1)
    expect(period.locator("td").nth(2)).to_have_text(f"{scored:,}")
    expect(period.get_by_role("link", name="run-scoring", exact=True)).to_have_attribute(
        "href", "http://127.0.0.1:3000/runs/run-scoring"
    )
    expect(page.locator(".fact", has_text="threshold")).to_contain_text(f"{champion.threshold:.6g}")
    assert [url for url in requested if not url.startswith(("file:", "data:"))] == []
    page.context.close()

    page, requested = open_page(
        chromium, out / "report" / f"txguard-fraud-v{version}.html", test_artifacts, "model-report"
    )
    expect(page.locator(".summary")).to_contain_text(f"txguard-fraud version {version} was trained on")
    verdicts = page.locator("p:text-is('Each verdict:') + table")
    for report in drift:
        cells = verdicts.locator("tr", has_text=str(report.day)).locator("td")
        expect(cells.nth(1)).to_have_text("feature_drift:drift_psi")
        expect(cells.nth(2)).to_have_text(report.level)
        name, value = report.worst
        expect(cells.nth(5)).to_have_text(f"worst PSI {value:.3f} ({name}) is {report.level}")
        expect(cells.nth(6).get_by_role("link")).to_have_attribute(
            "href", "http://127.0.0.1:3000/runs/run-drift"
        )
    decoded = page.eval_on_selector_all(
        "img", "images => images.map(image => image.complete && image.naturalWidth)"
    )
    assert decoded and all(decoded), decoded
    expect(page.get_by_role("link", name=f"{mlflow}/#/runs/{champion.run_id}", exact=True)).to_be_visible()
    assert [url for url in requested if not url.startswith(("file:", "data:"))] == []
    page.context.close()


def test_the_backtest_report_shows_its_headline_and_plots(
    txguard_home: Path,
    handbook_lake: str,
    chromium: Browser,
    test_artifacts: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jobs.platform.settings import load_settings

    monkeypatch.setenv("TXGUARD_LAKE_ROOT", handbook_lake)
    scored = score_around_cutoff(load_settings())
    start, end = str(scored["start"]), str(scored["end"])
    txguard("backtest", "--from", start, "--to", end, "--output", str(tmp_path / "backtest.html"))

    page, requested = open_page(chromium, tmp_path / "backtest.html", test_artifacts, "backtest-report")
    expect(page.locator("h1")).to_have_text(f"Backtest {start}..{end}")
    expect(page.locator("#headline")).to_contain_text("the alerts caught")
    for plot in ("#plot-ranking-quality", "#plot-fraud-amount", "#plot-alerts"):
        expect(page.locator(f"{plot} svg")).to_be_visible()
    expect(page.locator("#weeks tr")).to_have_count(3)
    assert [url for url in requested if not url.startswith(("file:", "data:"))] == []
    page.context.close()
