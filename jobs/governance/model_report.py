"""Technical documentation of a model version, shaped like the EU AI Act's Annex IV, generated from records.

Nothing in the document is written by hand for one model: every number, window, digest, check, decision and
monitoring verdict comes from the audit records (and the MLflow run's plots when the tracking store is
reachable; otherwise the plots are drawn from the records), so the document can be regenerated at any time and
says the same thing. The HTML page is drawn from ``templates/model_report.html.j2``.

    write_model_report(connection, version, out_dir, model_name=None, tracking_uri=None, links=None)
        -> ReportFiles
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.features.definitions import FEATURE_COLUMNS, FORMULAS, TERMINAL_DELAY_DAYS, WINDOWS_DAYS
from jobs.governance.audit import SCHEMA, MonitoringResult, verify_chain
from jobs.governance.lineage import (
    UiLinks,
    dagster_run_url,
    fetch_records,
    model_lineage,
    relation_exists,
    render_page,
)

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)

INTENDED_PURPOSE = (
    "Scores each card transaction of a business day with a fraud risk, in a daily batch, so that fraud "
    "analysts review the riskiest cards first. It is decision support: the score, the decision band and "
    "the three main reasons go to a person; the model does not block cards or payments by itself. It is "
    "meant for card-present and card-not-present payments of the issuer's own portfolio, in the conditions "
    "of its training data (see Data); it is not meant for credit decisions or for judging individuals."
)
PROVENANCE = (
    "Transactions and confirmed fraud reports arrive as daily files from the card processor in the landing "
    "zone. Ingestion validates each file against a pandera contract and quarantines bad rows with a reason; "
    "dbt builds staging and marts in the DuckDB warehouse; Great Expectations suites gate each partition; "
    "a PySpark job computes point-in-time features. Every check's outcome is an audit record (below)."
)
METHOD = (
    "LightGBM gradient-boosted trees (parameters below) on the feature set above. Labels: a transaction "
    "is fraud when a fraud report for it arrived by the label cutoff; training uses only days old enough "
    "for labels to mature "
    f"(a {TERMINAL_DELAY_DAYS}-day delay). Metrics are measured on a later holdout window, with cards "
    "already known to be compromised removed (Fraud Detection Handbook protocol): ROC AUC, average "
    "precision and card precision@100. A challenger replaces the champion only if it beats it on the same "
    "holdout (the promotion gate), and every such decision is recorded."
)
OVERSIGHT = (
    'People act on the model with `txguard promote --version N --reason "..."`, `txguard rollback '
    '--reason "..."` and `txguard rescore --from D --to D`; each action is recorded with its actor and '
    "reason. Scored rows carry the model name and version, and "
    "`txguard lineage transaction <id>` explains any single decision from the records."
)
MONITORING = (
    "Feature drift (PSI per feature against the training reference) and model performance (as labels "
    "mature) are computed daily; each verdict is an audit record, drift at error level or a performance "
    "drop requests retraining, and a run-failure sensor alerts. Every scored partition is recorded with the "
    "checks that gated it."
)


@dataclass(frozen=True)
class Table:
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


Block = str | Table | Figure | dict


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    figures: tuple[Path, ...]


def _short(value: Any, length: int = 12) -> str:
    return str(value)[:length] if value else "-"


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def feature_table() -> Table:
    """Each model input with its definition, the windowed templates spelled out for each window."""
    definitions = {}
    for template, formula in FORMULAS.items():
        formula = formula.replace("delay", f"{TERMINAL_DELAY_DAYS} days")
        if "{w}" in template:
            definitions |= {
                template.format(w=w): formula.replace("w days", f"{w} days") for w in WINDOWS_DAYS
            }
        else:
            definitions[template] = formula
    rows = [(column, definitions.get(column, "(no definition recorded)")) for column in FEATURE_COLUMNS]
    return Table(("feature", "definition (t = the transaction's time, UTC)"), rows)


def _mlflow_figures(tracking_uri: str, run_id: str, dest: Path) -> list[Path]:
    """The PNG artifacts of the MLflow run, downloaded; raises when the store or the run is unreachable."""
    if tracking_uri.startswith("sqlite:///"):
        store = Path(tracking_uri.removeprefix("sqlite:///"))
        if not store.exists():
            raise FileNotFoundError(f"no MLflow store at {store}")
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    pending, pngs = [""], []
    while pending:
        for item in client.list_artifacts(run_id, pending.pop() or None):
            if item.is_dir:
                pending.append(item.path)
            elif item.path.lower().endswith(".png"):
                pngs.append(item.path)
    dest.mkdir(parents=True, exist_ok=True)
    return [
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, dst_path=str(dest), tracking_uri=tracking_uri
            )
        )
        for path in sorted(pngs)
    ]


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metrics as one level (``holdout.roc_auc``), for tables and plots."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _record_figures(metrics: dict[str, Any], scored_days: list[dict[str, Any]], dest: Path) -> list[Path]:
    """Plots drawn from the records: the training metrics, and the rows scored per day."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dest.mkdir(parents=True, exist_ok=True)
    figures = []
    numbers = {
        k: v for k, v in flatten(metrics).items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    if numbers:
        fig, ax = plt.subplots(figsize=(6, max(3, 0.3 * len(numbers))))
        ax.barh(list(numbers), list(numbers.values()), color="#0b3d62")
        ax.set_xlabel("value")
        ax.set_title("Training metrics (audit record)")
        fig.tight_layout()
        figures.append(dest / "metrics.png")
        fig.savefig(figures[-1], dpi=100)
        plt.close(fig)
    if scored_days:
        fig, ax = plt.subplots(figsize=(6, 3))
        days = [dt.date.fromisoformat(row["day"]) for row in scored_days]
        ax.bar(days, [row["row_count"] for row in scored_days], color="#2f7d32")
        ax.set_ylabel("rows scored")
        ax.set_title("Rows scored per day (audit records)")
        fig.autofmt_xdate()
        fig.tight_layout()
        figures.append(dest / "rows_scored.png")
        fig.savefig(figures[-1], dpi=100)
        plt.close(fig)
    return figures


def _figures(
    lineage: dict[str, Any], scored_days: list[dict[str, Any]], tracking_uri: str | None, dest: Path
) -> tuple[list[Path], str]:
    run_id = lineage["model"].get("mlflow_run_id")
    if tracking_uri and run_id:
        try:
            found = _mlflow_figures(tracking_uri, run_id, dest)
        except Exception as error:  # any failure of the store means: fall back to the records
            reason = f"MLflow run {run_id} not reachable ({type(error).__name__}: {error})"
        else:
            if found:
                return found, f"Plots logged with MLflow run {run_id}."
            reason = f"MLflow run {run_id} has no PNG artifacts"
    else:
        reason = "no MLflow run or tracking store given"
    metrics = (lineage["training"] or {}).get("metrics") or {}
    return _record_figures(metrics, scored_days, dest), f"{reason}; plots drawn from the records."


def scored_days(connection: duckdb.DuckDBPyConnection, model_name: str, version: str) -> list[dict[str, Any]]:
    """Each day the version scored, with the rows of its latest scoring of that day."""
    rows = fetch_records(
        connection,
        f"select day, arg_max(row_count, seq) as row_count from {SCHEMA}.scoring_runs"
        " where model_name = ? and model_version = ? group by day order by day",
        [model_name, version],
    )
    return [{"day": row["day"], "row_count": row["row_count"]} for row in rows]


def _run_step(lineage: dict[str, Any], step: str) -> str | None:
    return next((row["dagster_run_id"] for row in lineage["runs"] if row["step"] == step), None)


def build_model_report(
    connection: duckdb.DuckDBPyConnection,
    lineage: dict[str, Any],
    figures_dir: Path,
    tracking_uri: str | None = None,
) -> tuple[str, list[Section]]:
    """The document's title and sections, from a model's lineage answer and the records around it."""
    name = lineage["subject"]["model_name"]
    model, training = lineage["model"], lineage["training"] or {}
    links = lineage["links"]
    periods = lineage["champion_periods"]
    status = "never champion"
    if periods:
        current = periods[-1]
        status = f"champion since {current['since']}" if current["until"] is None else "former champion"
    days = scored_days(connection, name, model["model_version"])
    figures, figure_note = _figures(lineage, days, tracking_uri, figures_dir)
    feature_set = model.get("feature_set_version") or training.get("feature_set_version")
    sections = [
        Section(
            "1. General description and intended purpose",
            [
                lineage["summary"],
                INTENDED_PURPOSE,
                {
                    "model": name,
                    "version": model["model_version"],
                    "status": status,
                    "decision threshold": model.get("threshold"),
                    "alert budget": _budget(training),
                    "registered at": model.get("registered_at"),
                    "artifact SHA-256": model.get("artifact_sha256"),
                    "artifact URI": model.get("artifact_uri"),
                    "MLflow run": model.get("mlflow_run_id"),
                    "MLflow run page": links["mlflow_run"],
                    "MLflow model version page": links["mlflow_model_version"],
                    "Dagster run (training)": dagster_run_url(links, _run_step(lineage, "training")),
                    "code (git commit, training)": lineage["code"]["training"],
                    "code (git commit, registration)": lineage["code"]["registration"],
                },
            ],
        ),
        _data_section(connection, training),
        Section(
            "3. Features",
            [
                f"Feature-set version `{feature_set}`"
                " (a content hash of the definitions below; scoring refuses features of another version). "
                "Features are point in time: a transaction at time t sees only transactions with time <= t "
                "and fraud reports with reported_at <= t.",
                feature_table(),
            ],
        ),
        Section(
            "4. Training and validation method",
            [
                METHOD,
                {"device": training.get("device"), "evaluation": training.get("evaluation")},
                Table(("parameter", "value"), sorted(_params(connection, model).items())),
            ],
        ),
        Section(
            "5. Metrics",
            [
                Table(("metric", "value"), sorted(flatten(training.get("metrics") or {}).items())),
                budget_note(training),
                figure_note,
                *(Figure(path, path.stem.replace("_", " ")) for path in figures),
            ],
        ),
        _oversight_section(connection, name, periods),
        _monitoring_section(connection, lineage, days),
        _history_section(connection, name),
        _integrity_section(connection, lineage),
    ]
    return f"Technical documentation: {name} version {model['model_version']}", sections


def _budget(training: dict[str, Any]) -> str:
    return str((training.get("evaluation") or {}).get("alert_budget") or "not recorded")


def budget_note(training: dict[str, Any]) -> str:
    """The budgets behind card precision and the threshold, which a reader would otherwise take as one."""
    return (
        "Card precision@100 (card_precision_at_100) counts the frauds among the 100 cards with the highest "
        "scores each day, the Fraud Detection Handbook's fixed budget, so that it compares with the "
        f"published table. The decision threshold was chosen on the validation days for the alert budget "
        f"{_budget(training)}; `txguard backtest` reports card precision with k set to that budget."
    )


def _params(connection: duckdb.DuckDBPyConnection, model: dict[str, Any]) -> dict[str, Any]:
    found = fetch_records(
        connection,
        f"select params from {SCHEMA}.training_runs where mlflow_run_id = ? order by seq desc limit 1",
        [model.get("mlflow_run_id")],
    )
    return found[0]["params"] if found else {}


def _data_section(connection: duckdb.DuckDBPyConnection, training: dict[str, Any]) -> Section:
    blocks: list[Block] = [
        PROVENANCE,
        {
            "training window": f"{training.get('train_start')} to {training.get('train_end')}",
            "label cutoff": training.get("label_cutoff"),
            "rows": training.get("row_count"),
            "content digest (SHA-256)": training.get("data_digest"),
        },
    ]
    if training.get("train_start"):
        checks = fetch_records(
            connection,
            "select tool, count(*) filter (where passed) as passed,"
            " count(*) filter (where not passed) as failed"
            f" from {SCHEMA}.validation_results where day between ? and ? group by tool order by tool",
            [training["train_start"], training["train_end"]],
        )
        blocks += [
            "Data checks recorded for the training window:",
            Table(("tool", "passed", "failed"), [(r["tool"], r["passed"], r["failed"]) for r in checks]),
        ]
    return Section("2. Data and provenance", blocks)


def _oversight_section(
    connection: duckdb.DuckDBPyConnection, name: str, periods: list[dict[str, Any]]
) -> Section:
    promotions = fetch_records(
        connection, f"select * from {SCHEMA}.promotions where model_name = ? order by seq", [name]
    )
    return Section(
        "6. Human oversight",
        [
            OVERSIGHT,
            "Promotions, rollbacks and refusals of this model (all versions):",
            Table(
                ("when", "action", "version", "previous", "actor", "reason", "numbers"),
                [
                    (
                        p["recorded_at"],
                        p["action"],
                        p["model_version"],
                        p["previous_version"],
                        p["actor"],
                        p["reason"],
                        p["metrics"],
                    )
                    for p in promotions
                ],
            ),
            "Periods during which this version was champion:",
            Table(
                ("since", "until", "became champion by", "reason", "ended by"),
                [
                    (p["since"], p["until"], p["became_champion_by"], p["reason"], p["ended_by"])
                    for p in periods
                ],
            ),
        ],
    )


def monitoring_records(
    connection: duckdb.DuckDBPyConnection, model_name: str, version: str, days: set[str]
) -> list[dict[str, Any]]:
    """The latest verdict of each monitoring check on each day about this version.

    A verdict is about the version when it judged the version's scores (the day's for drift, the judged
    window's for performance), or when it skipped a day the version scored.
    """
    if not relation_exists(connection, SCHEMA, MonitoringResult.KIND):
        return []
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in fetch_records(
        connection,
        f"select * from {SCHEMA}.{MonitoringResult.KIND} where model_name = ? order by seq",
        [model_name],
    ):
        versions = row["model_versions"]
        if version in versions or (not versions and row["day"] in days):
            latest[(row["day"], row["asset"], row["check_name"])] = row
    return sorted(latest.values(), key=lambda row: (row["day"], row["asset"], row["check_name"]))


def _monitoring_section(
    connection: duckdb.DuckDBPyConnection, lineage: dict[str, Any], days: list[dict[str, Any]]
) -> Section:
    scored = lineage["scored"]
    version = lineage["model"]["model_version"]
    results = monitoring_records(
        connection, lineage["subject"]["model_name"], version, {row["day"] for row in days}
    )
    by_check: dict[str, dict[str, int]] = {}
    for row in results:
        levels = by_check.setdefault(f"{row['asset']}:{row['check_name']}", {})
        levels[row["level"]] = levels.get(row["level"], 0) + 1
    return Section(
        "7. Monitoring",
        [
            MONITORING,
            {
                "partitions scored": scored["partitions"],
                "rows scored": scored["rows"],
                "first day": scored["first_day"],
                "last day": scored["last_day"],
            },
            f"Monitoring results recorded for version {version} (the latest verdict of each check on each "
            "day), by check:",
            Table(
                ("check", "days", "levels"),
                [
                    (
                        check,
                        sum(levels.values()),
                        ", ".join(f"{level} {n}" for level, n in sorted(levels.items())),
                    )
                    for check, levels in sorted(by_check.items())
                ],
            ),
            "Each verdict:",
            Table(
                ("day", "check", "level", "passed", "versions judged", "result", "Dagster run"),
                [
                    (
                        row["day"],
                        f"{row['asset']}:{row['check_name']}",
                        row["level"],
                        row["passed"],
                        ", ".join(row["model_versions"]) or "-",
                        row["description"],
                        row["dagster_run_id"],
                    )
                    for row in results
                ],
            ),
        ],
    )


def _history_section(connection: duckdb.DuckDBPyConnection, name: str) -> Section:
    versions = fetch_records(
        connection,
        f"select v.*, t.train_start, t.train_end from {SCHEMA}.model_versions v"
        f" left join {SCHEMA}.training_runs t using (mlflow_run_id) where v.model_name = ? order by v.seq",
        [name],
    )
    return Section(
        "8. Change history",
        [
            Table(
                ("version", "registered", "training window", "feature set", "artifact", "git commit"),
                [
                    (
                        v["model_version"],
                        v["recorded_at"],
                        f"{v['train_start']} to {v['train_end']}" if v["train_start"] else "-",
                        v["feature_set_version"],
                        _short(v["artifact_sha256"]),
                        _short(v["git_commit"]),
                    )
                    for v in versions
                ],
            )
        ],
    )


def _integrity_section(connection: duckdb.DuckDBPyConnection, lineage: dict[str, Any]) -> Section:
    report = verify_chain(connection)
    blocks: list[Block] = [report.describe()]
    if lineage["gaps"]:
        blocks += ["Gaps in the record for this model:", Table(("gap",), [(gap,) for gap in lineage["gaps"]])]
    return Section("9. Record integrity", blocks)


def to_markdown(title: str, sections: Sequence[Section], base: Path) -> str:
    lines = [f"# {title}", "", f"Generated {_now()} by `txguard report model` from the audit records.", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, str):
                lines += [block, ""]
            elif isinstance(block, dict):
                lines += ["| | |", "| --- | --- |"]
                lines += [f"| {key} | {_md(value)} |" for key, value in block.items()] + [""]
            elif isinstance(block, Table):
                lines += [_md_table(block), ""]
            else:
                lines += [f"![{block.caption}]({block.path.relative_to(base).as_posix()})", ""]
    return "\n".join(lines)


def _md(value: Any) -> str:
    return _text(value).replace("<", "&lt;").replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    if not table.rows:
        return "_none recorded_"
    head = "| " + " | ".join(table.columns) + " |"
    rule = "|" + " --- |" * len(table.columns)
    return "\n".join([head, rule, *("| " + " | ".join(_md(v) for v in row) + " |" for row in table.rows)])


def _block_kind(block: Block) -> str:
    if isinstance(block, str):
        return "text"
    if isinstance(block, dict):
        return "facts"
    return "table" if isinstance(block, Table) else "figure"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def to_html(title: str, sections: Sequence[Section], links: dict[str, Any]) -> str:
    """The same document as one self-contained page: inline CSS, figures embedded as data URIs."""
    return render_page(
        "model_report.html.j2",
        title,
        sections=sections,
        links=links,
        block_kind=_block_kind,
        data_uri=_data_uri,
        text=_text,
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def write_model_report(
    connection: duckdb.DuckDBPyConnection,
    version: str,
    out_dir: Path,
    model_name: str | None = None,
    tracking_uri: str | None = None,
    links: UiLinks | None = None,
) -> ReportFiles:
    """Write ``<model>-v<version>.md`` (figures beside it) and a self-contained ``.html`` into ``out_dir``.

    Raises ``LineageNotFound`` for a version the records do not know.
    """
    lineage = model_lineage(connection, version, model_name, links=links)
    stem = f"{lineage['subject']['model_name']}-v{lineage['subject']['model_version']}".replace("/", "_")
    out_dir = out_dir.resolve()  # the figures' links are relative to it, whatever the caller's folder
    out_dir.mkdir(parents=True, exist_ok=True)
    title, sections = build_model_report(connection, lineage, out_dir / f"{stem}-figures", tracking_uri)
    markdown = out_dir / f"{stem}.md"
    markdown.write_text(to_markdown(title, sections, out_dir), encoding="utf-8")
    page = out_dir / f"{stem}.html"
    page.write_text(to_html(title, sections, lineage["links"]), encoding="utf-8")
    figures = tuple(b.path for s in sections for b in s.blocks if isinstance(b, Figure))
    return ReportFiles(markdown, page, figures)
