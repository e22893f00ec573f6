"""Lineage answers rebuilt from the warehouse's records: from a scored row back to model, data, checks, code.

Every answer is a plain JSON-able dict (``title`` first, then one section per key) so that one set of
renderers (text, JSON, a self-contained HTML page to archive) serves all three questions. A hole in the
trail (a score without its scoring record, a digest that changed) is never papered over: it is listed under
``gaps``.

    transaction_lineage(connection, transaction_id)  partition_lineage(connection, day)
    model_lineage(connection, version, model_name=None)  render(answer, "text" | "json" | "html")
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from jobs.governance.audit import SCHEMA, has_ledger
from jobs.platform.layout import SCORES_TABLE, parse_day

if TYPE_CHECKING:
    import duckdb

FORMATS = ("text", "json", "html")
_JSON_COLUMNS = {"metrics", "params", "evaluation", "checks", "upstream_runs", "details"}
_TITLES = {
    "subject": "Question",
    "decision": "Score and decision",
    "champion": "Champion when scored",
    "champion_periods": "Periods as champion",
    "gating_checks": "Checks that gated scoring",
    "validation": "Validation results of the partition",
    "runs": "Dagster runs of each step",
    "code": "Code (git commits)",
    "audit_records": "Audit records used",
    "scoring_runs": "Scoring runs",
    "gaps": "Gaps in the record",
}


class LineageNotFound(LookupError):
    """The question names something the records do not know (a transaction, a day, a model version)."""


def _iso(value: dt.datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.isoformat() + "Z"


def _jsonable(column: str, value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return _iso(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if column in _JSON_COLUMNS and isinstance(value, str):
        return json.loads(value)
    return value


def fetch_records(
    connection: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()
) -> list[dict[str, Any]]:
    cursor = connection.execute(sql, list(params))
    names = [column[0] for column in cursor.description or []]
    return [{n: _jsonable(n, v) for n, v in zip(names, row, strict=True)} for row in cursor.fetchall()]


def _relation_exists(connection: duckdb.DuckDBPyConnection, schema: str, name: str) -> bool:
    row = connection.execute(
        "select count(*) from (select schema_name, table_name as name from duckdb_tables()"
        " union all select schema_name, view_name from duckdb_views()) where schema_name = ? and name = ?",
        [schema, name],
    ).fetchone()
    return bool(row and row[0])


class _Trail:
    """Reads audit records for one answer and remembers which records it used and what it could not find."""

    def __init__(self, connection: duckdb.DuckDBPyConnection) -> None:
        self.connection = connection
        self.ledger = has_ledger(connection)
        self.used: dict[int, dict[str, Any]] = {}
        self.gaps: list[str] = []
        if not self.ledger:
            self.gaps.append("this warehouse holds no audit records (schema audit is missing)")

    def find(self, kind: str, where: str, params: Sequence[Any], order: str = "seq desc") -> list[dict]:
        if not self.ledger:
            return []
        return fetch_records(
            self.connection, f"select * from {SCHEMA}.{kind} where {where} order by {order}", params
        )

    def use(self, kind: str, row: dict[str, Any] | None, missing: str = "") -> dict[str, Any] | None:
        """Cite ``row`` in the answer, or note ``missing`` as a gap when there is no such record."""
        if row is None:
            if self.ledger:
                self.gaps.append(missing)
            return None
        self.used[row["seq"]] = {"seq": row["seq"], "kind": kind, "record_hash": row["record_hash"]}
        return row

    def latest(self, kind: str, where: str, params: Sequence[Any], missing: str) -> dict[str, Any] | None:
        found = self.find(kind, where, params)
        return self.use(kind, found[0] if found else None, missing)

    def records(self) -> list[dict[str, Any]]:
        return [self.used[seq] for seq in sorted(self.used)]


def champion_periods(promotions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """When each version was champion, from promotion and rollback records in chain order."""
    periods: list[dict[str, Any]] = []
    for record in sorted(promotions, key=lambda row: row["seq"]):
        if record["action"] == "reject" or (
            periods and periods[-1]["model_version"] == record["model_version"]
        ):
            continue
        if periods:
            periods[-1]["until"] = record["recorded_at"]
            periods[-1]["ended_by"] = f"{record['action']} to {record['model_version']} by {record['actor']}"
        periods.append(
            {
                "model_version": record["model_version"],
                "since": record["recorded_at"],
                "until": None,
                "became_champion_by": f"{record['action']} by {record['actor']}",
                "reason": record["reason"],
                "ended_by": None,
            }
        )
    return periods


def _model_section(
    trail: _Trail, model_name: str, version: str, scored_digest: str | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    registered = trail.latest(
        "model_versions",
        "model_name = ? and model_version = ?",
        [model_name, version],
        f"no model_versions record for {model_name} version {version}",
    )
    section: dict[str, Any] = {"model_name": model_name, "model_version": version}
    if registered:
        keys = ("artifact_sha256", "artifact_uri", "mlflow_run_id", "feature_set_version")
        section |= {key: registered[key] for key in keys} | {"registered_at": registered["recorded_at"]}
        if scored_digest and scored_digest != registered["artifact_sha256"]:
            trail.gaps.append(
                f"the artifact scored (sha256 {scored_digest}) is not the artifact registered as "
                f"{model_name} version {version} (sha256 {registered['artifact_sha256']})"
            )
    elif scored_digest:
        section["artifact_sha256"] = scored_digest
    return section, registered


def _training_record(trail: _Trail, mlflow_run_id: str | None) -> dict[str, Any] | None:
    if not mlflow_run_id:
        return None
    return trail.latest(
        "training_runs",
        "mlflow_run_id = ?",
        [mlflow_run_id],
        f"no training_runs record for MLflow run {mlflow_run_id}",
    )


def _training_section(training: dict[str, Any] | None) -> dict[str, Any] | None:
    if training is None:
        return None
    keys = ("mlflow_run_id", "train_start", "train_end", "label_cutoff", "data_digest", "row_count")
    more = ("feature_set_version", "device", "metrics", "evaluation", "recorded_at")
    return {key: training[key] for key in (*keys, *more)}


def _champion_record(trail: _Trail, model_name: str, before_seq: int | None) -> dict[str, Any] | None:
    """The promotion or rollback in force when the scoring record was written."""
    where, params = "model_name = ? and action <> 'reject'", [model_name]
    if before_seq is not None:
        where, params = f"{where} and seq < ?", [*params, before_seq]
    found = trail.find("promotions", where, params)
    return trail.use(
        "promotions", found[0] if found else None, f"no promotion of {model_name} recorded before it scored"
    )


def _champion_section(promotion: dict[str, Any] | None, version: str) -> dict[str, Any] | None:
    if promotion is None:
        return None
    return {
        "champion_version": promotion["model_version"],
        "scored_by_champion": promotion["model_version"] == version,
        "since": promotion["recorded_at"],
        "action": promotion["action"],
        "actor": promotion["actor"],
        "reason": promotion["reason"],
        "metrics": promotion["metrics"],
    }


def _validation(trail: _Trail, day: str, before_seq: int | None) -> list[dict[str, Any]]:
    """The latest result of each check on the partition recorded before scoring: what gated it."""
    where, params = "day = ?", [day]
    if before_seq is not None:
        where, params = f"{where} and seq < ?", [*params, before_seq]
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in trail.find("validation_results", where, params):
        latest.setdefault((row["tool"], row["asset"], row["check_name"]), row)
    results = []
    for row in sorted(latest.values(), key=lambda r: r["seq"]):
        trail.use("validation_results", row)
        keys = ("tool", "asset", "check_name", "passed", "details", "dagster_run_id", "recorded_at")
        results.append({key: row[key] for key in keys})
    if trail.ledger and not results:
        trail.gaps.append(f"no validation result recorded for partition {day} before it was scored")
    failed = [f"{r['tool']}:{r['check_name']}" for r in results if not r["passed"]]
    if failed:
        trail.gaps.append(f"partition {day} was scored although these checks had failed: {', '.join(failed)}")
    return results


def _runs(steps: Sequence[tuple[str, str | None]]) -> list[dict[str, str]]:
    """Each (step, Dagster run id) once, in the order the pipeline ran them."""
    seen: set[tuple[str, str]] = set()
    runs = []
    for step, run_id in steps:
        if run_id and (step, run_id) not in seen:
            seen.add((step, run_id))
            runs.append({"step": step, "dagster_run_id": run_id})
    return runs


def _commit(row: dict[str, Any] | None) -> str | None:
    return row["git_commit"] if row else None


def _scored_trail(
    trail: _Trail, scoring: dict | None, model_name: str, version: str, day: str
) -> dict[str, Any]:
    """The sections every scored answer shares: model, training, features, champion, checks, runs, code."""
    scoring_seq = scoring["seq"] if scoring else None
    model, registered = _model_section(trail, model_name, version, scoring and scoring["artifact_sha256"])
    training = _training_record(trail, model.get("mlflow_run_id") or (scoring or {}).get("mlflow_run_id"))
    promotion = _champion_record(trail, model_name, scoring_seq)
    validation = _validation(trail, day, scoring_seq)
    features = {
        "scored_with": scoring["feature_set_version"] if scoring else None,
        "model_trained_on": model.get("feature_set_version"),
    }
    if features["scored_with"] and features["model_trained_on"] not in (None, features["scored_with"]):
        trail.gaps.append(
            f"features {features['scored_with']} were scored by a model trained on "
            f"{features['model_trained_on']}"
        )
    steps = list((scoring or {}).get("upstream_runs", {}).items())
    steps += [(f"{row['tool']}: {row['asset']}", row["dagster_run_id"]) for row in validation]
    steps += [
        ("training", training and training["dagster_run_id"]),
        ("registration", registered and registered["dagster_run_id"]),
        ("promotion", promotion and promotion["dagster_run_id"]),
        ("scoring", scoring and scoring["dagster_run_id"]),
    ]
    return {
        "model": model,
        "training": _training_section(training),
        "features": features,
        "champion": _champion_section(promotion, version),
        "gating_checks": scoring["checks"] if scoring else [],
        "validation": validation,
        "runs": _runs(steps),
        "code": {
            "scoring": _commit(scoring),
            "training": _commit(training),
            "registration": _commit(registered),
        },
    }


def transaction_lineage(connection: duckdb.DuckDBPyConnection, transaction_id: int) -> dict[str, Any]:
    """Which model scored this transaction, trained on what, gated by which checks, from which code."""
    schema, table = SCORES_TABLE.split(".")
    if not _relation_exists(connection, schema, table):
        raise LineageNotFound(f"no transaction has been scored yet: {SCORES_TABLE} does not exist")
    found = fetch_records(
        connection,
        f"select * from {SCORES_TABLE} where transaction_id = ? order by scored_at desc limit 1",
        [transaction_id],
    )
    if not found:
        raise LineageNotFound(f"transaction {transaction_id} was never scored: it is not in {SCORES_TABLE}")
    row = found[0]
    version = str(row["model_version"])
    trail = _Trail(connection)
    scoring = trail.latest(
        "scoring_runs",
        "day = ? and dagster_run_id = ? and model_name = ? and model_version = ?",
        [row["day"], row["dagster_run_id"], row["model_name"], version],
        f"no scoring_runs record for partition {row['day']} written by run {row['dagster_run_id']}",
    )
    shared = _scored_trail(trail, scoring, row["model_name"], version, row["day"])
    shared["features"]["scored_with"] = row["feature_set_version"]
    if scoring and row["feature_set_version"] != scoring["feature_set_version"]:
        trail.gaps.append(
            f"the row carries feature set {row['feature_set_version']}, "
            f"its scoring record {scoring['feature_set_version']}"
        )
    return {
        "title": f"Lineage of transaction {transaction_id}",
        "subject": {"transaction_id": transaction_id},
        "transaction": {
            key: row[key] for key in ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "day")
        },
        "decision": {
            "score": row["score"],
            "decision": _decision(row["decision"]),
            "reasons": [row[f"reason_{i}"] for i in (1, 2, 3) if row.get(f"reason_{i}")],
            "scored_at": row["scored_at"],
            "dagster_run_id": row["dagster_run_id"],
        },
        **shared,
        "audit_records": trail.records(),
        "gaps": trail.gaps,
    }


def _decision(value: Any) -> str:
    """A decision as a label: the scores table stores ``decision`` as a boolean (True = alert)."""
    if isinstance(value, bool):
        return "alert" if value else "no alert"
    return str(value)


def partition_lineage(connection: duckdb.DuckDBPyConnection, day: str | dt.date) -> dict[str, Any]:
    """How one business day was scored: every scoring run of it, the current one's model and its gates."""
    key = day.isoformat() if isinstance(day, dt.date) else parse_day(day).isoformat()
    trail = _Trail(connection)
    history = trail.find("scoring_runs", "day = ?", [key], order="seq")
    schema, table = SCORES_TABLE.split(".")
    scores: dict[str, Any] = {"rows": 0}
    if _relation_exists(connection, schema, table):
        summary = fetch_records(
            connection,
            f"select count(*) as rows, min(scored_at) as first_scored_at, max(scored_at) as last_scored_at,"
            f" list(distinct model_name || ' v' || model_version) as model_versions,"
            f" list(distinct dagster_run_id) as dagster_run_ids from {SCORES_TABLE} where day = ?",
            [key],
        )[0]
        decisions = fetch_records(
            connection,
            f"select decision, count(*) as n from {SCORES_TABLE} where day = ? group by 1 order by 1",
            [key],
        )
        scores = summary | {"decisions": {_decision(row["decision"]): row["n"] for row in decisions}}
    if not history and not scores["rows"]:
        raise LineageNotFound(
            f"partition {key} was never scored: no scoring record and no scores for that day"
        )
    current = trail.use("scoring_runs", history[-1] if history else None, f"no scoring_runs record for {key}")
    if current and scores["rows"] != current["row_count"]:
        trail.gaps.append(
            f"{SCORES_TABLE} holds {scores['rows']} rows for {key}; "
            f"its scoring record says {current['row_count']}"
        )
    if current:
        model_name, version = current["model_name"], current["model_version"]
    else:
        model_name, version = scores["model_versions"][0].rsplit(" v", 1)
    shared = _scored_trail(trail, current, model_name, version, key)
    for row in history:
        trail.use("scoring_runs", row)
    return {
        "title": f"Lineage of partition {key}",
        "subject": {"day": key},
        "scores": scores,
        "scoring_runs": [
            {
                "seq": row["seq"],
                "recorded_at": row["recorded_at"],
                "model": f"{row['model_name']} v{row['model_version']}",
                "row_count": row["row_count"],
                "checks_passed": all(check.get("passed", False) for check in row["checks"]),
                "dagster_run_id": row["dagster_run_id"],
                "current": row is current,
            }
            for row in history
        ],
        **shared,
        "audit_records": trail.records(),
        "gaps": trail.gaps,
    }


def model_lineage(
    connection: duckdb.DuckDBPyConnection, version: str, model_name: str | None = None
) -> dict[str, Any]:
    """What trained a model version, when it was champion, and what it scored."""
    trail = _Trail(connection)
    if not trail.ledger:
        raise LineageNotFound("no model version has been registered: this warehouse holds no audit records")
    where, params = "model_version = ?", [str(version)]
    if model_name:
        where, params = f"{where} and model_name = ?", [*params, model_name]
    found = trail.find("model_versions", where, params)
    if not found:
        known = fetch_records(
            connection,
            f"select distinct model_name || ' v' || model_version as v"
            f" from {SCHEMA}.model_versions order by 1",
        )
        listed = ", ".join(row["v"] for row in known) or "none"
        named = f"{model_name} " if model_name else ""
        raise LineageNotFound(f"model {named}version {version} is not registered; known versions: {listed}")
    names = sorted({row["model_name"] for row in found})
    if len(names) > 1:
        raise LineageNotFound(
            f"version {version} exists for several models ({', '.join(names)}): name one with --model-name"
        )
    name = names[0]
    model, registered = _model_section(trail, name, str(version), None)
    training = _training_record(trail, model.get("mlflow_run_id"))
    promotions = trail.find("promotions", "model_name = ?", [name], order="seq")
    involved = [p for p in promotions if str(version) in (p["model_version"], p["previous_version"])]
    for row in involved:
        trail.use("promotions", row)
    scoring = trail.find("scoring_runs", "model_name = ? and model_version = ?", [name, str(version)], "seq")
    for row in scoring:
        trail.use("scoring_runs", row)
    steps = [
        ("training", training and training["dagster_run_id"]),
        ("registration", registered and registered["dagster_run_id"]),
    ]
    steps += [(row["action"], row["dagster_run_id"]) for row in involved]
    steps += [(f"scoring {row['day']}", row["dagster_run_id"]) for row in scoring]
    days = sorted({row["day"] for row in scoring})
    promotion_keys = (
        "recorded_at",
        "action",
        "model_version",
        "previous_version",
        "actor",
        "reason",
        "metrics",
    )
    return {
        "title": f"Lineage of model {name} version {version}",
        "subject": {"model_name": name, "model_version": str(version)},
        "model": model,
        "training": _training_section(training),
        "champion_periods": [p for p in champion_periods(promotions) if p["model_version"] == str(version)],
        "promotions": [{key: row[key] for key in promotion_keys} for row in involved],
        "scored": {
            "partitions": len(days),
            "rows": sum(row["row_count"] for row in scoring),
            "first_day": days[0] if days else None,
            "last_day": days[-1] if days else None,
        },
        "scoring_runs": [
            {key: row[key] for key in ("day", "recorded_at", "row_count", "dagster_run_id")}
            for row in scoring
        ],
        "runs": _runs(steps),
        "code": {"training": _commit(training), "registration": _commit(registered)},
        "audit_records": trail.records(),
        "gaps": trail.gaps,
    }


def _heading(key: str) -> str:
    return _TITLES.get(key, key.replace("_", " ").capitalize())


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_scalar(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return ", ".join(_scalar(item) for item in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def render_text(answer: dict[str, Any]) -> str:
    lines = [answer["title"], "=" * len(answer["title"])]
    if answer.get("gaps"):
        lines.append(f"WARNING: the record has {len(answer['gaps'])} gap(s), listed at the end.")
    for key, value in answer.items():
        if key == "title":
            continue
        count = f" ({len(value)})" if isinstance(value, list) else ""
        lines += ["", f"{_heading(key)}{count}"]
        if not value:
            lines.append("  (none)")
        elif isinstance(value, dict):
            width = max(len(k) for k in value)
            lines += [f"  {k.ljust(width)}  {_scalar(v)}" for k, v in value.items()]
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    lines.append("  - " + "; ".join(f"{k}: {_scalar(v)}" for k, v in item.items()))
                else:
                    lines.append(f"  - {_scalar(item)}")
        else:
            lines.append(f"  {_scalar(value)}")
    return "\n".join(lines) + "\n"


def render_json(answer: dict[str, Any]) -> str:
    return json.dumps(answer, indent=2, ensure_ascii=False) + "\n"


HTML_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:72rem;
color:#1b1f24;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;border-bottom:2px solid #1b1f24;padding-bottom:.3rem}
h2{font-size:1.15rem;margin-top:1.8rem;color:#0b3d62}
table{border-collapse:collapse;width:100%;font-size:.9rem;margin:.4rem 0}
th,td{border:1px solid #c9d1d9;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f1f4f8;font-weight:600}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem;word-break:break-all}
.warn{background:#fff4e5;border:1px solid #f0a030;padding:.6rem;border-radius:4px}
.none{color:#6a737d;font-style:italic}
footer{margin-top:2.5rem;color:#6a737d;font-size:.8rem}
"""


def _cell(value: Any) -> str:
    if isinstance(value, dict | list) or (isinstance(value, str) and len(value) >= 32):
        return f"<code>{html.escape(_scalar(value))}</code>"
    return html.escape(_scalar(value))


def html_table(value: Any) -> str:
    """One section as an HTML fragment: key/value table, table of records, or a list."""
    if not value:
        return '<p class="none">none</p>'
    if isinstance(value, dict):
        rows = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{_cell(v)}</td></tr>" for k, v in value.items()
        )
        return f"<table>{rows}</table>"
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        columns = list(dict.fromkeys(k for item in value for k in item))
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{_cell(item.get(c))}</td>" for c in columns) + "</tr>" for item in value
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(value, list):
        return "<ul>" + "".join(f"<li>{_cell(item)}</li>" for item in value) + "</ul>"
    return f"<p>{_cell(value)}</p>"


def html_page(title: str, body: str) -> str:
    """A self-contained page (inline CSS, no external assets) that a reviewer can archive as one file."""
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{HTML_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}\n"
        f"<footer>Generated {generated} by txguard from the audit records.</footer>\n</body>\n</html>\n"
    )


def render_html(answer: dict[str, Any]) -> str:
    parts = []
    if answer.get("gaps"):
        parts.append(f'<p class="warn">The record has {len(answer["gaps"])} gap(s), listed at the end.</p>')
    for key, value in answer.items():
        if key != "title":
            parts.append(f"<h2>{html.escape(_heading(key))}</h2>\n{html_table(value)}")
    return html_page(answer["title"], "\n".join(parts))


def render(answer: dict[str, Any], fmt: str) -> str:
    renderers = {"text": render_text, "json": render_json, "html": render_html}
    if fmt not in renderers:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return renderers[fmt](answer)
