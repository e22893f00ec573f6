"""``txguard lineage``, ``audit verify``, ``report model`` on a published snapshot, as reviewers run them."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import shutil
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from jobs.features.definitions import FEATURE_COLUMNS
from jobs.governance import audit
from jobs.platform import storage
from jobs.platform.catalog import publish
from jobs.platform.layout import TRANSACTION_FEATURES, partition_uri
from jobs.platform.settings import Settings, load_settings
from jobs.platform.warehouse import connect
from orchestration.cli import lineage as lineage_cli
from tests.support import (
    LINEAGE_MODEL,
    PNG_PIXEL,
    build_lineage_warehouse,
    build_scored_world,
    materialize,
    score_partition,
    version_with_plots,
)

VOID = {"meta", "br", "img", "hr", "input", "link", "col", "source", "wbr", "area", "base", "embed", "track"}


@click.group()
def txguard() -> None:
    """The commands under test, grouped as ``orchestration.cli.main`` groups them."""


for command in lineage_cli.commands:
    txguard.add_command(command)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(txguard, list(args), catch_exceptions=False)


def fails_cleanly(result: Result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.fixture
def published(txguard_home: Path) -> dict:
    settings = load_settings()
    truth = build_lineage_warehouse(settings.warehouse_path)
    publish(settings)
    return truth


class StrictPage(HTMLParser):
    """Parses a page and checks its tags are balanced and that nothing is loaded from outside it; the links
    it offers (``<a href>``, followed only if the reader clicks) are collected in ``links``."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.text: list[str] = []
        self.external: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if tag == "a" and name == "href" and value:
                self.links.append(value)
            elif name in ("src", "href") and value and not value.startswith(("data:", "#")):
                self.external.append(value)
            if tag == "img" and name == "src" and value:
                self.images.append(value)
        if tag in ("script", "link", "iframe"):
            self.external.append(tag)
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def check_page(path: Path, title: str, browser, screenshots: Path) -> StrictPage:
    """The page parses, is self-contained, and renders in headless Chromium with every figure decoded."""
    page = StrictPage()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.open == [] and page.external == []
    assert title in "".join(page.text)
    tab = browser.new_page()
    requested: list[str] = []
    tab.on("request", lambda request: requested.append(request.url))
    tab.goto(path.as_uri())
    assert title in tab.inner_text("body")
    decoded = "images => images.map(image => image.complete && image.naturalWidth)"
    figures = tab.eval_on_selector_all("img", decoded)
    assert all(width and width > 0 for width in figures), f"undecoded figures in {path.name}: {figures}"
    assert [url for url in requested if not url.startswith(("file:", "data:"))] == []
    tab.screenshot(path=screenshots / f"{path.stem}.png", full_page=True)
    tab.close()
    return page


def test_without_a_snapshot_every_command_says_what_to_do(txguard_home: Path) -> None:
    for args in (("lineage", "transaction", "1"), ("report", "model", "1")):
        fails_cleanly(invoke(*args), "no warehouse snapshot at")
    fails_cleanly(invoke("audit", "verify"), "no warehouse at")


def test_lineage_answers_in_three_formats(published: dict, tmp_path: Path, chromium, test_artifacts) -> None:
    digest = published["models"]["1"]["artifact_sha256"]
    text = invoke("lineage", "transaction", "102")
    assert text.exit_code == 0, text.output
    assert text.output.startswith("Lineage of transaction 102") and digest in text.output
    answer = json.loads(invoke("lineage", "model", "2", "--format", "json").output)
    assert answer["subject"] == {"model_name": LINEAGE_MODEL, "model_version": "2"}
    out = tmp_path / "archive" / "tx-102.html"
    written = invoke("lineage", "transaction", "102", "--format", "html", "--output", str(out))
    assert written.exit_code == 0 and str(out) in written.output
    page = check_page(out, "Lineage of transaction 102", chromium, test_artifacts)
    assert digest in "".join(page.text)
    partition = invoke("lineage", "partition", "2018-04-03", "-o", str(tmp_path / "p.txt"))
    assert partition.exit_code == 0
    assert "txguard-fraud v2" in (tmp_path / "p.txt").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("lineage", "transaction", "999999"), "transaction 999999 was never scored"),
        (("lineage", "partition", "2018-04-04"), "partition 2018-04-04 was never scored"),
        (("lineage", "partition", "04/02/2018"), "partition key '04/02/2018' is not a YYYY-MM-DD date"),
        (("lineage", "model", "9"), "model version 9 is not registered"),
        (("report", "model", "9"), "model version 9 is not registered"),
    ],
)
def test_unknown_subjects_exit_non_zero_with_a_message(published: dict, args: tuple, message: str) -> None:
    fails_cleanly(invoke(*args), message)


def test_answers_come_from_the_last_published_state_while_a_run_holds_the_warehouse(published: dict) -> None:
    settings = load_settings()
    with connect(settings.warehouse_path) as live:
        score_partition(
            live, "2018-04-05", "1", published["models"]["1"]["artifact_sha256"], "run-s5", 501, 3
        )
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time, duckdb
                connection = duckdb.connect({str(settings.warehouse_path)!r})
                connection.execute("begin transaction")
                connection.execute("delete from scoring.transaction_scores where day = '2018-04-02'")
                print("locked", flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "locked"
        fails_cleanly(invoke("lineage", "partition", "2018-04-05"), "partition 2018-04-05 was never scored")
        assert invoke("lineage", "transaction", "1").exit_code == 0
        fails_cleanly(invoke("audit", "verify", "--wait", "0.2"), "still locked by a writer after 0.2 s")
    finally:
        writer.kill()
        writer.wait()
    publish(settings)
    assert invoke("lineage", "partition", "2018-04-05").exit_code == 0


def test_audit_verify_passes_and_catches_a_planted_edit(published: dict, tmp_path: Path) -> None:
    with connect(load_settings().snapshot_path, read_only=True) as snapshot:
        records = snapshot.execute("select count(*) from audit.records").fetchone()[0]
    ok = invoke("audit", "verify")
    assert ok.exit_code == 0 and f"audit chain OK: {records} records" in ok.output
    tampered = tmp_path / "tampered.duckdb"
    shutil.copyfile(load_settings().snapshot_path, tampered)
    with connect(tampered) as connection:
        seq = connection.execute("select min(seq) from audit.promotions where actor = 'alice'").fetchone()[0]
        edited = "replace(payload, 'alice', 'pipeline:model_promotion')"
        connection.execute(
            f"update audit.records set payload = {edited}, record_hash = sha256(prev_hash || chr(10)"
            f" || CAST(seq AS VARCHAR) || chr(10) || kind || chr(10) || strftime(recorded_at,"
            f" '{audit.TIME_FORMAT}') || chr(10) || {edited}) where seq = {seq}"
        )
    caught = invoke("audit", "verify", "--database", str(tampered))
    fails_cleanly(caught, f"BROKEN at seq {seq + 1} (scoring_runs)")
    assert f"hash of record {seq}" in caught.output


def test_report_model_from_the_records(published: dict, tmp_path: Path, chromium, test_artifacts) -> None:
    result = invoke("report", "model", "1", "--output", str(tmp_path / "docs"))
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "docs" / f"{LINEAGE_MODEL}-v1.md").read_text()
    for heading in (
        "1. General description and intended purpose",
        "2. Data and provenance",
        "3. Features",
        "4. Training and validation method",
        "5. Metrics",
        "6. Human oversight",
        "7. Monitoring",
        "8. Change history",
        "9. Record integrity",
    ):
        assert f"## {heading}" in markdown
    assert all(f"| {column} |" in markdown for column in FEATURE_COLUMNS)
    assert published["models"]["1"]["data_digest"] in markdown
    assert "| rollback | 1 | 2 | alice |" in markdown
    assert "plots drawn from the records" in markdown
    figures = [line.split("](")[1].rstrip(")") for line in markdown.splitlines() if line.startswith("![")]
    assert figures and all((tmp_path / "docs" / figure).is_file() for figure in figures)
    page = check_page(
        tmp_path / "docs" / f"{LINEAGE_MODEL}-v1.html",
        f"Technical documentation: {LINEAGE_MODEL} version 1",
        chromium,
        test_artifacts,
    )
    assert len(page.images) == len(figures) and all(
        src.startswith("data:image/png;base64,") for src in page.images
    )
    assert "audit chain OK" in "".join(page.text)


def test_report_embeds_the_mlflow_runs_plots_when_the_store_is_reachable(
    published: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chromium, test_artifacts
) -> None:
    monkeypatch.setenv("TXGUARD_MLFLOW_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = version_with_plots(load_settings(), tmp_path, ("pr_curve.png",))
    result = invoke("report", "model", "3", "--output", str(tmp_path / "docs"))
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "docs" / f"{LINEAGE_MODEL}-v3.md").read_text()
    assert f"Plots logged with MLflow run {run_id}." in markdown
    assert "pr_curve.png" in markdown
    page = check_page(
        tmp_path / "docs" / f"{LINEAGE_MODEL}-v3.html", f"{LINEAGE_MODEL} version 3", chromium, test_artifacts
    )
    assert page.images == [f"data:image/png;base64,{base64.b64encode(PNG_PIXEL).decode()}"]
    assert "no training_runs record for MLflow run" in "".join(page.text)


def json_answer(*question: str) -> dict:
    """``txguard lineage … --format json`` read as a dict (progress bars of libraries go to stderr)."""
    result = invoke("lineage", *question, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_answers_link_to_the_uis_and_say_when_values_cannot_be_recomputed(
    published: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings()
    answer = json_answer("transaction", "102")
    assert answer["links"] == {
        "mlflow_model_version": f"http://127.0.0.1:5000/#/models/{LINEAGE_MODEL}/versions/1",
        "mlflow_run": "http://127.0.0.1:5000/#/runs/mlf-1",
        "dagster_ui": "http://127.0.0.1:3000",
        "gx_data_docs": None,
    }
    assert [(r["feature"], r["value"]) for r in answer["reasons"]] == [
        ("terminal_id_risk_7day_window high", None),
        ("tx_amount high", None),
    ]
    assert (
        answer["explained"]["values"]
        == f"unavailable: no MLflow store at {settings.home / 'mlflow' / 'mlflow.db'}"
    )
    assert not (settings.home / "mlflow").exists(), "asking must not create a tracking store"
    assert answer["gaps"] == []

    monkeypatch.setenv("TXGUARD_MLFLOW_UI_URL", "https://mlflow.example.org/ui/")
    page = settings.home / "model-1.html"
    assert invoke("lineage", "model", "1", "--format", "html", "-o", str(page)).exit_code == 0
    parsed = StrictPage()
    parsed.feed(page.read_text())
    assert "https://mlflow.example.org/ui/#/models/txguard-fraud/versions/1" in parsed.links
    assert "https://mlflow.example.org/ui/#/runs/mlf-1" in parsed.links
    assert "http://127.0.0.1:3000/runs/run-train-1" in parsed.links
    assert parsed.external == []


# --- a real model scoring real feature partitions: reasons with their values, monitoring verdicts -------


@pytest.fixture(scope="module")
def scored_world(module_home: Path, handbook_lake: str, training_set, trained):
    """The handbook lake scored on its last three feature days by a trained, registered, promoted model."""
    from jobs.training.trainer import feature_days

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TXGUARD_LAKE_ROOT", handbook_lake)
        settings = load_settings()
        world = build_scored_world(settings, training_set, trained, feature_days(handbook_lake)[-3:])
        yield settings, world


def scored_rows(settings: Settings, where: str) -> list[dict]:
    with connect(settings.snapshot_path, read_only=True) as snapshot:
        cursor = snapshot.execute(
            f"select * from scoring.transaction_scores where {where} order by transaction_id"
        )
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def feature_row(lake: str, row: dict) -> dict:
    table = storage.read_parquet(partition_uri(lake, TRANSACTION_FEATURES, row["day"])).to_pandas()
    (found,) = table[table["transaction_id"] == row["transaction_id"]].to_dict(orient="records")
    return found


def test_reasons_carry_feature_values_and_contributions_recomputed_with_the_verified_model(
    scored_world, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, world = scored_world
    monkeypatch.setenv("TXGUARD_LAKE_ROOT", settings.lake)
    booster, champion = world["booster"], world["champion"]
    alert = scored_rows(settings, "decision")[0]
    quiet = scored_rows(settings, "not decision and reason_1 is null")[0]
    for row in (alert, quiet):
        answer = json_answer("transaction", str(row["transaction_id"]))
        assert answer["gaps"] == [], answer["gaps"]
        features = feature_row(settings.lake, row)
        values = [float(features[c]) for c in FEATURE_COLUMNS]
        contributions = booster.predict([values], pred_contrib=True)[0]
        expected = sorted(range(len(FEATURE_COLUMNS)), key=lambda i: -contributions[i])[:3]
        assert [(r["feature"], r["value"]) for r in answer["reasons"]] == [
            (FEATURE_COLUMNS[i], values[i]) for i in expected if contributions[i] > 0
        ]
        for reason in answer["reasons"]:
            i = FEATURE_COLUMNS.index(reason["feature"])
            assert reason["contribution"] == pytest.approx(contributions[i], abs=1e-12)
        explained = answer["explained"]
        assert explained["base_value"] == pytest.approx(contributions[-1], abs=1e-12)
        assert 1 / (1 + math.exp(-sum(contributions))) == pytest.approx(row["score"], abs=1e-12)
        assert explained["recomputed_score"] == pytest.approx(row["score"], abs=1e-12)
        assert "artifact verified against the registered SHA-256" in explained["values"]
        train_end = world["training"].window["validation_end"][:10]
        head = (
            f"Transaction {row['transaction_id']} was scored {row['score']:.4g} on {row['day']} by"
            f" {LINEAGE_MODEL} version {champion.version}, trained on data up to {train_end}; "
        )
        assert answer["summary"].startswith(head), answer["summary"]
        assert answer["decision"]["threshold"] == champion.threshold
        first = answer["reasons"][0]
        assert (
            f"Main reasons (value, contribution in log-odds): {first['feature']} = {first['value']:.6g}"
            in (answer["summary"])
        )
    alert_answer = json_answer("transaction", str(alert["transaction_id"]))
    assert [r["feature"] for r in alert_answer["reasons"]] == alert_answer["decision"]["reasons"]
    because = f"it was an alert because {alert['score']:.4g} ≥ threshold {champion.threshold:.4g}."
    assert because in alert_answer["summary"]
    assert alert_answer["explained"]["stored"] == "stored when the row was scored"
    quiet_answer = json_answer("transaction", str(quiet["transaction_id"]))
    assert quiet_answer["decision"]["reasons"] == []
    assert quiet_answer["explained"]["stored"].startswith("none stored")
    assert "it was not an alert because" in quiet_answer["summary"]
    text = invoke("lineage", "transaction", str(alert["transaction_id"])).output
    top = alert_answer["reasons"][0]
    assert f"  1. {top['feature']} = {top['value']:.6g} (contribution {top['contribution']:+.4g})" in text


def test_a_feature_partition_changed_after_scoring_is_a_gap(
    scored_world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa

    from jobs.features.definitions import FEATURE_COLUMNS

    settings, _ = scored_world
    row = scored_rows(settings, "decision")[0]
    calmest = min(scored_rows(settings, f"day = '{row['day']}'"), key=lambda other: other["score"])
    lake = tmp_path / "lake"
    shutil.copytree(settings.lake, lake)
    uri = partition_uri(str(lake), TRANSACTION_FEATURES, row["day"])
    frame = storage.read_parquet(uri).to_pandas()
    edited = frame["transaction_id"] == row["transaction_id"]
    donor = frame["transaction_id"] == calmest["transaction_id"]
    frame.loc[edited, list(FEATURE_COLUMNS)] = frame.loc[donor, list(FEATURE_COLUMNS)].to_numpy()
    storage.write_parquet_atomic(pa.Table.from_pandas(frame, preserve_index=False), uri)
    monkeypatch.setenv("TXGUARD_LAKE_ROOT", str(lake))
    answer = json_answer("transaction", str(row["transaction_id"]))
    assert any("the partition changed after it was scored" in gap for gap in answer["gaps"]), answer["gaps"]


def test_a_model_artifact_that_is_not_the_registered_one_is_a_gap(
    scored_world, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, world = scored_world
    monkeypatch.setenv("TXGUARD_LAKE_ROOT", settings.lake)
    row = scored_rows(settings, "decision")[0]
    model_file = Path(world["champion"].model_uri.removeprefix("file://")) / "model.lgb"
    original = model_file.read_bytes()
    model_file.write_bytes(original.replace(b"leaf_value=", b"leaf_value=1", 1))
    try:
        answer = json_answer("transaction", str(row["transaction_id"]))
    finally:
        model_file.write_bytes(original)
    assert [r["value"] for r in answer["reasons"]] == [None] * len(answer["reasons"])
    (gap,) = answer["gaps"]
    assert "refusing to load it" in gap and answer["explained"]["values"] == f"unavailable: {gap}"


def test_drift_verdicts_recorded_through_the_chain_appear_in_the_model_report(
    scored_world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobs.monitoring.monitors import measure_drift

    settings, world = scored_world
    monkeypatch.setenv("TXGUARD_LAKE_ROOT", settings.lake)
    reports = measure_drift(settings, world["days"])
    entries = audit.monitoring_results("feature_drift", "drift_psi", reports, "run-drift")
    written = audit.record_monitoring(settings, entries, "run-drift")
    assert [record.kind for record in written] == ["monitoring_results"] * len(world["days"])
    assert audit.MlflowHeads.of(settings).newest().seq == written[-1].seq
    assert invoke("audit", "verify").exit_code == 0
    result = invoke("report", "model", str(world["champion"].version), "--output", str(tmp_path / "docs"))
    assert result.exit_code == 0, result.output
    markdown = next((tmp_path / "docs").glob("*.md")).read_text()
    section = markdown.split("## 7. Monitoring")[1].split("## 8.")[0]
    for report, record in zip(reports, written, strict=True):
        name, value = report.worst
        line = (
            f"| {report.day} | feature_drift:drift_psi | {report.level} | {report.level == 'ok'} |"
            f" {report.model_version} | worst PSI {value:.3f} ({name}) is {report.level} | run-drift |"
        )
        assert line in section, section
        assert record.payload["values"]["max_psi"] == value
    assert "none recorded" not in section.split("Each verdict:")[1]


@pytest.mark.slow
def test_the_monitoring_assets_record_their_verdicts_in_the_audit_chain(
    txguard_home: Path, dagster_instance
) -> None:
    from jobs.monitoring.monitors import NO_HISTORY
    from orchestration.defs.monitoring import feature_drift, model_performance

    runs = {}
    for asset in (feature_drift, model_performance):
        result = materialize(
            [asset], partition_key="2018-05-02", instance=dagster_instance, raise_on_error=True
        )
        runs[asset.key.path[-1]] = result.run_id
    with connect(load_settings().snapshot_path, read_only=True) as snapshot:
        stored = snapshot.execute(
            "select day, asset, check_name, level, passed, dagster_run_id, values ->> '$.reason'"
            " from audit.monitoring_results order by seq"
        ).fetchall()
    day = dt.date(2018, 5, 2)
    assert stored == [
        (day, "feature_drift", "drift_psi", "skipped", True, runs["feature_drift"], NO_HISTORY),
        (
            day,
            "model_performance",
            "performance_floor",
            "skipped",
            True,
            runs["model_performance"],
            NO_HISTORY,
        ),
    ]
