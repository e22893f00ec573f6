"""The backtest: how the scores in the warehouse did, week by week, once every label is in.

Only out-of-time scores count: a row is read only when its day is after the label cutoff of the model that
scored it (recorded in the audit chain when the model was trained); rows of a model that saw its day, or
whose training is not on record, are left out and counted. Labels are every fraud report in the lake, and
the backtest refuses a range whose reports have not all arrived (``jobs.training.maturity``): a fraud still
to be reported would read as a genuine transaction.

Per ISO week (Monday to Sunday): ROC AUC and average precision over the week's transactions, card
precision@k with k the alert budget of each day (the handbook's definition: a card's daily score is its
best transaction's, cards already caught on an earlier day of the backtest are left out), the alerted cards
a day, and the frauds and fraud amount the alerts caught and missed. ``compute_backtest`` is the whole
computation; ``render_table``, ``render_html`` and ``log_backtest`` present it.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from jobs.platform import storage
from jobs.platform.layout import SCORES_TABLE, TRANSACTION_FEATURES, partition_uri
from jobs.platform.warehouse import connect
from jobs.training.budget import AlertBudget
from jobs.training.maturity import require_mature_labels
from jobs.training.metrics import MetricError, average_precision, roc_auc
from jobs.training.trainer import end_of_day, load_fraud_labels

if TYPE_CHECKING:
    from matplotlib.figure import Figure

EXPERIMENT_NAME = "txguard-backtest"


class BacktestError(ValueError):
    """Nothing to backtest in the range: no out-of-time score, or none of its transactions in the lake."""


@dataclass(frozen=True)
class WeekResult:
    """One ISO week of out-of-time scores, judged on matured labels."""

    week_start: dt.date
    days: int
    transactions: int
    roc_auc: float | None
    """None when the week has a single class (no fraud, or nothing else)."""
    average_precision: float | None
    card_precision: float
    alerted_cards_per_day: float
    frauds_caught: int
    frauds_missed: int
    amount_caught: float
    amount_missed: float
    models: str
    """The model versions that scored the week, e.g. ``v2, v3``."""

    @property
    def week(self) -> str:
        iso = self.week_start.isocalendar()
        return f"{iso.year}-W{iso.week:02d}"


@dataclass(frozen=True)
class Backtest:
    start: dt.date
    end: dt.date
    budget: str
    newest_report: dt.date
    weeks: list[WeekResult]
    excluded_rows: int
    """Rows left out: scored by a model whose labels reach the day, or whose training is not on record."""
    unscored_days: list[dt.date]
    """Days of the range with no out-of-time score at all."""

    def totals(self) -> dict[str, float]:
        """The whole range's counts and amounts, for the headline and MLflow."""
        weeks = self.weeks
        return {
            "transactions": sum(w.transactions for w in weeks),
            "frauds_caught": sum(w.frauds_caught for w in weeks),
            "frauds_missed": sum(w.frauds_missed for w in weeks),
            "amount_caught": round(sum(w.amount_caught for w in weeks), 2),
            "amount_missed": round(sum(w.amount_missed for w in weeks), 2),
            "excluded_rows": self.excluded_rows,
        }


def read_out_of_time_scores(warehouse: Path, start: dt.date, end: dt.date) -> tuple[pd.DataFrame, int]:
    """The rows of ``[start, end]`` whose day is after their model's label cutoff, and how many were not."""
    with connect(warehouse, read_only=True) as connection:
        frame = connection.execute(
            f"""
            with cutoffs as (
                select v.model_name, v.model_version, max(t.label_cutoff) as label_cutoff
                from audit.model_versions v join audit.training_runs t using (mlflow_run_id)
                group by all
            )
            select s.transaction_id, s.customer_id, s.day, s.score, s.decision, s.model_version,
                c.label_cutoff is not null and s.day > c.label_cutoff as out_of_time
            from {SCORES_TABLE} s
            left join cutoffs c
                on c.model_name = s.model_name and c.model_version = cast(s.model_version as varchar)
            where s.day between ? and ?
            order by s.day, s.transaction_id
            """,
            [start, end],
        ).df()
    kept = frame[frame.pop("out_of_time").astype(bool)]
    kept = kept.assign(day=pd.to_datetime(kept["day"]).dt.date).reset_index(drop=True)
    return kept, len(frame) - len(kept)


def transaction_amounts(lake: str, days: Sequence[dt.date]) -> pd.DataFrame:
    """``transaction_id`` and ``tx_amount`` of the days' feature partitions."""
    frames = [
        storage.read_parquet(partition_uri(lake, TRANSACTION_FEATURES, day)).to_pandas()[
            ["transaction_id", "tx_amount"]
        ]
        for day in days
        if storage.exists(partition_uri(lake, TRANSACTION_FEATURES, day))
    ]
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["transaction_id", "tx_amount"])
    )


def _metric(metric, labels: np.ndarray, scores: np.ndarray) -> float | None:
    try:
        return metric(labels, scores)
    except MetricError:
        return None


def weekly_results(rows: pd.DataFrame, budget: AlertBudget) -> list[WeekResult]:
    """Judge labelled rows (``label``, ``tx_amount`` added to the scores) one ISO week at a time."""
    detected: set[int] = set()
    precision_by_day: dict[dt.date, float] = {}
    alerted_by_day: dict[dt.date, int] = {}
    for day, today in rows.groupby("day", sort=True):
        cards = today.groupby("customer_id").agg(
            score=("score", "max"), label=("label", "max"), alert=("decision", "max")
        )
        alerted_by_day[day] = int(cards["alert"].sum())
        k = budget.cards_on(len(cards))
        fresh = cards[~cards.index.isin(list(detected))].reset_index()
        top = fresh.sort_values(["score", "customer_id"], ascending=[False, True], kind="mergesort").head(k)
        hits = top.loc[top["label"] == 1, "customer_id"]
        precision_by_day[day] = len(hits) / k if k else 0.0
        detected.update(int(c) for c in hits)
    weeks = []
    week_of = rows["day"].map(lambda d: d - dt.timedelta(days=d.weekday()))
    for week_start, week in rows.groupby(week_of, sort=True):
        days = sorted(set(week["day"]))
        labels, scores = week["label"].to_numpy(), week["score"].to_numpy()
        fraud = week["label"] == 1
        caught, missed = fraud & week["decision"], fraud & ~week["decision"]
        weeks.append(
            WeekResult(
                week_start=week_start,
                days=len(days),
                transactions=len(week),
                roc_auc=_metric(roc_auc, labels, scores),
                average_precision=_metric(average_precision, labels, scores),
                card_precision=float(np.mean([precision_by_day[d] for d in days])),
                alerted_cards_per_day=float(np.mean([alerted_by_day[d] for d in days])),
                frauds_caught=int(caught.sum()),
                frauds_missed=int(missed.sum()),
                amount_caught=round(float(week.loc[caught, "tx_amount"].sum()), 2),
                amount_missed=round(float(week.loc[missed, "tx_amount"].sum()), 2),
                models=", ".join(f"v{v}" for v in sorted(set(week["model_version"]))),
            )
        )
    return weeks


def compute_backtest(
    warehouse: Path, lake: str, start: dt.date, end: dt.date, budget: AlertBudget
) -> Backtest:
    """The weekly backtest of ``[start, end]``; ``ImmatureLabels`` while its fraud reports are still due."""
    newest = require_mature_labels(lake, start, end, "the backtest")
    scores, excluded = read_out_of_time_scores(warehouse, start, end)
    if scores.empty:
        raise BacktestError(
            f"no out-of-time score from {start} to {end} in {warehouse} ({excluded} row(s) scored by a model "
            "whose labels reach their day, or whose training is not on record): score the range first "
            "(txguard run or txguard rescore)"
        )
    fraud, _ = load_fraud_labels(lake, start, end_of_day(newest))
    days = sorted(set(scores["day"]))
    rows = scores.merge(transaction_amounts(lake, days), on="transaction_id", how="left")
    if rows["tx_amount"].isna().any():
        raise BacktestError(
            f"{int(rows['tx_amount'].isna().sum())} scored transaction(s) have no feature row in {lake}"
        )
    rows["label"] = rows["transaction_id"].isin(fraud).astype(np.int8)
    every_day = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
    return Backtest(
        start=start,
        end=end,
        budget=str(budget),
        newest_report=newest,
        weeks=weekly_results(rows, budget),
        excluded_rows=excluded,
        unscored_days=[d for d in every_day if d not in set(days)],
    )


# --- presenting it ----------------------------------------------------------------------------------------

TABLE_COLUMNS = (
    ("week", 8),
    ("days", 4),
    ("rows", 7),
    ("AUC", 6),
    ("AP", 6),
    ("CP@k", 6),
    ("alerts/day", 10),
    ("caught", 6),
    ("missed", 6),
    ("amount caught", 13),
    ("amount missed", 13),
    ("models", 12),
)


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_rows(backtest: Backtest) -> list[list[str]]:
    """Each week's cells as text, in ``TABLE_COLUMNS`` order: the stdout table and the HTML table."""
    return [
        [
            w.week,
            str(w.days),
            f"{w.transactions:,}",
            _number(w.roc_auc),
            _number(w.average_precision),
            _number(w.card_precision),
            f"{w.alerted_cards_per_day:.1f}",
            str(w.frauds_caught),
            str(w.frauds_missed),
            f"{w.amount_caught:,.2f}",
            f"{w.amount_missed:,.2f}",
            w.models,
        ]
        for w in backtest.weeks
    ]


def headline(backtest: Backtest) -> str:
    """One sentence: the range, the budget, and the fraud the alerts caught against what they missed."""
    t = backtest.totals()
    frauds = t["frauds_caught"] + t["frauds_missed"]
    share = t["amount_caught"] / (t["amount_caught"] + t["amount_missed"]) if frauds else math.nan
    return (
        f"Backtest {backtest.start}..{backtest.end}, alert budget {backtest.budget}: the alerts caught "
        f"{t['frauds_caught']:,} of {frauds:,} frauds, {t['amount_caught']:,.2f} of "
        f"{t['amount_caught'] + t['amount_missed']:,.2f} in fraud amount ({share:.0%})."
    )


def render_table(backtest: Backtest) -> str:
    """The weekly table for a terminal, under the headline and above what was left out."""
    widths = [width for _, width in TABLE_COLUMNS]
    lines = [headline(backtest), ""]
    lines.append("  ".join(name.rjust(width) for (name, _), width in zip(TABLE_COLUMNS, widths, strict=True)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in table_rows(backtest)]
    lines.append("")
    lines += notes(backtest)
    return "\n".join(lines)


def notes(backtest: Backtest) -> list[str]:
    """What the numbers rest on: out-of-time rows only, matured labels, what was left out."""
    lines = [
        f"CP@k: card precision with k = the alert budget ({backtest.budget}) of each day. Labels: every "
        f"fraud report through {backtest.newest_report} (all reports of the range are in).",
        f"Only out-of-time scores: {backtest.excluded_rows:,} row(s) scored by a model whose labels reach "
        "their day (or whose training is not on record) were left out.",
    ]
    if backtest.unscored_days:
        days = backtest.unscored_days
        lines.append(
            f"{len(days)} day(s) without an out-of-time score ({days[0]}..{days[-1]}) are not in the table."
        )
    return lines


def plots(backtest: Backtest) -> dict[str, Figure]:
    """Ranking quality, alerts and fraud amounts by week, as matplotlib figures."""
    from matplotlib.figure import Figure

    weeks = [w.week for w in backtest.weeks]
    x = np.arange(len(weeks))
    quality = Figure(figsize=(7, 3.2))
    ax = quality.subplots()
    for name, values in (
        ("ROC AUC", [w.roc_auc for w in backtest.weeks]),
        ("average precision", [w.average_precision for w in backtest.weeks]),
        ("card precision@k", [w.card_precision for w in backtest.weeks]),
    ):
        ax.plot(x, [np.nan if v is None else v for v in values], marker="o", label=name)
    ax.set(ylim=(0, 1.02), title="Ranking quality by week", xticks=x, xticklabels=weeks)
    ax.legend(loc="lower left", fontsize=8)
    amounts = Figure(figsize=(7, 3.2))
    ax = amounts.subplots()
    caught = [w.amount_caught for w in backtest.weeks]
    ax.bar(x, caught, label="caught by alerts", color="#1e6b2a")
    ax.bar(x, [w.amount_missed for w in backtest.weeks], bottom=caught, label="missed", color="#a3200f")
    ax.set(title="Fraud amount caught and missed", xticks=x, xticklabels=weeks)
    ax.legend(fontsize=8)
    alerts = Figure(figsize=(7, 3.2))
    ax = alerts.subplots()
    ax.bar(x, [w.alerted_cards_per_day for w in backtest.weeks], color="#0b3d62")
    ax.set(title="Alerted cards a day", xticks=x, xticklabels=weeks)
    for figure in (quality, amounts, alerts):
        figure.tight_layout()
    return {"ranking_quality.svg": quality, "fraud_amount.svg": amounts, "alerts_per_day.svg": alerts}


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def render_html(backtest: Backtest) -> str:
    """A self-contained page: headline, the plots as inline SVG, the weekly table and the notes."""
    from markupsafe import Markup

    from jobs.governance.lineage import render_page

    return render_page(
        "backtest.html.j2",
        f"Backtest {backtest.start}..{backtest.end}",
        headline=headline(backtest),
        budget=backtest.budget,
        plots={name.removesuffix(".svg"): Markup(_svg(figure)) for name, figure in plots(backtest).items()},
        columns=[name for name, _ in TABLE_COLUMNS],
        rows=table_rows(backtest),
        notes=notes(backtest),
    )


def log_backtest(backtest: Backtest, html: str, *, tracking_uri: str, artifact_root: Path) -> str:
    """One MLflow run in ``txguard-backtest``: the range and budget, each week's metrics as steps, the
    totals, the page and the weekly table; returns the run id."""
    from mlflow.entities import Metric, Param

    from jobs.registry.client import open_client

    client = open_client(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None:
        location = (
            Path(artifact_root).resolve().as_uri() if "://" not in str(artifact_root) else str(artifact_root)
        )
        experiment_id = client.create_experiment(EXPERIMENT_NAME, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    run_id = client.create_run(
        experiment_id, run_name=f"backtest {backtest.start}..{backtest.end}"
    ).info.run_id
    now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    metrics = [Metric(f"total_{k}", float(v), now, 0) for k, v in backtest.totals().items()]
    for step, week in enumerate(backtest.weeks):
        for name in (
            "roc_auc",
            "average_precision",
            "card_precision",
            "alerted_cards_per_day",
            "amount_caught",
        ):
            value = getattr(week, name)
            if value is not None:
                metrics.append(Metric(f"weekly_{name}", float(value), now, step))
    params = {
        "from": backtest.start,
        "to": backtest.end,
        "alert_budget": backtest.budget,
        "weeks": len(backtest.weeks),
    }
    client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
    client.log_text(run_id, html, "backtest.html")
    weeks = [asdict(w) | {"week": w.week, "week_start": w.week_start.isoformat()} for w in backtest.weeks]
    client.log_dict(run_id, weeks, "weeks.json")
    client.set_terminated(run_id, "FINISHED")
    return run_id
