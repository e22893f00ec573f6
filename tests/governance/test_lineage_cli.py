"""``txguard lineage``, ``audit verify``, ``report model`` on a published snapshot, as reviewers run them."""

from __future__ import annotations

import base64
import json
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
from jobs.platform.settings import load_settings
from jobs.platform.warehouse import connect, publish_snapshot
from orchestration.cli import lineage as lineage_cli
from tests.governance.test_lineage_queries import MODEL, build_warehouse, score_partition

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
    truth = build_warehouse(settings.warehouse_path)
    publish_snapshot(settings.warehouse_path, settings.snapshot_path)
    return truth


class StrictPage(HTMLParser):
    """Parses a page and checks its tags are balanced and that nothing is loaded from outside it."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.text: list[str] = []
        self.external: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith(("data:", "#")):
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
    for args in (("lineage", "transaction", "1"), ("audit", "verify"), ("report", "model", "1")):
        fails_cleanly(invoke(*args), "no warehouse snapshot at")


def test_lineage_answers_in_three_formats(published: dict, tmp_path: Path, chromium, test_artifacts) -> None:
    digest = published["models"]["1"]["artifact_sha256"]
    text = invoke("lineage", "transaction", "102")
    assert text.exit_code == 0, text.output
    assert text.output.startswith("Lineage of transaction 102") and digest in text.output
    answer = json.loads(invoke("lineage", "model", "2", "--format", "json").output)
    assert answer["subject"] == {"model_name": MODEL, "model_version": "2"}
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
        assert invoke("audit", "verify").exit_code == 0
    finally:
        writer.kill()
        writer.wait()
    publish_snapshot(settings.warehouse_path, settings.snapshot_path)
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
    markdown = (tmp_path / "docs" / f"{MODEL}-v1.md").read_text()
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
        tmp_path / "docs" / f"{MODEL}-v1.html",
        f"Technical documentation: {MODEL} version 1",
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
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("TXGUARD_MLFLOW_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("txguard", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    plot = tmp_path / "pr_curve.png"
    plot.write_bytes(
        base64.b64decode(
            "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
        )
    )
    client.log_artifact(run.info.run_id, str(plot), artifact_path="plots")
    client.set_terminated(run.info.run_id)
    with connect(load_settings().warehouse_path) as live:
        audit.record(
            live,
            audit.ModelVersion(
                model_name=MODEL,
                model_version="3",
                mlflow_run_id=run.info.run_id,
                artifact_uri=f"runs:/{run.info.run_id}/model",
                artifact_sha256="e" * 64,
                feature_set_version="fs-0123456789ab",
                dagster_run_id="run-train-3",
            ),
        )
    publish_snapshot(load_settings().warehouse_path, load_settings().snapshot_path)
    result = invoke("report", "model", "3", "--output", str(tmp_path / "docs"))
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "docs" / f"{MODEL}-v3.md").read_text()
    assert f"Plots logged with MLflow run {run.info.run_id}." in markdown
    assert "pr_curve.png" in markdown
    page = check_page(tmp_path / "docs" / f"{MODEL}-v3.html", f"{MODEL} version 3", chromium, test_artifacts)
    assert page.images == [f"data:image/png;base64,{base64.b64encode(plot.read_bytes()).decode()}"]
    assert "no training_runs record for MLflow run" in "".join(page.text)
