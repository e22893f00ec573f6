"""The analysts' snapshot: consistent and never blocking under concurrent writes, and ``txguard sql`` on it.

The analyst is a real second process using the plain DuckDB call the README shows; the writes are the
scoring partition writes followed by the snapshot publication, as the asset does them.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from jobs.platform.catalog import publish, publish_snapshot
from jobs.platform.settings import REPO_ROOT, load_settings
from jobs.platform.warehouse import connect
from jobs.scoring.store import write_scores
from orchestration.cli.analyst import sql
from tests.support import scores_for

DAY, OTHER = dt.date(2018, 8, 1), dt.date(2018, 8, 2)
OLD = {DAY: 400, OTHER: 200}
NEW = {DAY: 650, OTHER: 90}

ANALYST = r"""
import json, sys, duckdb
from pathlib import Path
from jobs.platform.catalog import connect_snapshot

mode, snapshot, ready, stop = sys.argv[1], *(Path(p) for p in sys.argv[2:5])
query = "select strftime(day, '%Y-%m-%d'), count(*) from scoring.transaction_scores group by 1 order by 1"
held = duckdb.connect(str(snapshot), read_only=True) if mode == "held" else None
first = True
while True:
    stopping = stop.exists()
    if held is not None:
        seen = held.sql(query).fetchall()
    else:
        with connect_snapshot(snapshot) as fresh:
            seen = fresh.sql(query).fetchall()
    print(json.dumps(seen), flush=True)
    if first:
        ready.touch()
        first = False
    if stopping:
        break
"""
"""One analyst: ``held`` keeps one connection (the README's plain call) for the whole loop, ``fresh``
reconnects for every query (as ``txguard sql`` does) and so follows each publication."""


def write_state(warehouse: Path, state: dict[dt.date, int], run_id: str) -> None:
    for day, rows in state.items():
        write_scores(warehouse, day, scores_for(day, rows, run_id, seed=rows))


def as_state(rows: list[list]) -> dict[dt.date, int]:
    return {dt.date.fromisoformat(day): count for day, count in rows}


@pytest.mark.slow
def test_an_analyst_querying_in_a_loop_sees_whole_partitions_while_runs_write(tmp_path: Path) -> None:
    warehouse, snapshot = tmp_path / "txguard.duckdb", tmp_path / "txguard_snapshot.duckdb"
    write_state(warehouse, OLD, "run-0")
    publish_snapshot(warehouse, snapshot, tables=str(tmp_path / "tables"))
    stop = tmp_path / "stop"
    analysts = {
        mode: subprocess.Popen(
            [sys.executable, "-c", ANALYST, mode, str(snapshot), str(tmp_path / mode), str(stop)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode in ("held", "fresh")
    }
    try:
        deadline = time.monotonic() + 90
        while not all((tmp_path / mode).exists() for mode in analysts):
            for process in analysts.values():
                assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "an analyst never answered"
            time.sleep(0.05)
        for cycle in range(1, 13):
            state = NEW if cycle % 2 else OLD
            for day, rows in state.items():
                write_scores(warehouse, day, scores_for(day, rows, f"run-{cycle}", seed=rows))
                publish_snapshot(warehouse, snapshot, tables=str(tmp_path / "tables"), days=[day])
    finally:
        stop.touch()
        outputs = {mode: process.communicate(timeout=60) for mode, process in analysts.items()}
    seen = {}
    for mode, (stdout, stderr) in outputs.items():
        assert analysts[mode].returncode == 0, stderr
        seen[mode] = [as_state(json.loads(line)) for line in stdout.splitlines()]
        assert len(seen[mode]) >= 2
    assert all(state == OLD for state in seen["held"])
    for state in seen["fresh"]:
        assert set(state) == {DAY, OTHER}
        for day, count in state.items():
            assert count in (OLD[day], NEW[day]), state
    assert any(state[DAY] == NEW[DAY] for state in seen["fresh"]), "the fresh analyst never saw a publication"
    assert seen["fresh"][-1] == OLD


def test_the_plain_duckdb_call_is_not_blocked_by_a_writer_holding_the_warehouse(tmp_path: Path) -> None:
    warehouse, snapshot = tmp_path / "txguard.duckdb", tmp_path / "txguard_snapshot.duckdb"
    write_state(warehouse, OLD, "run-0")
    publish_snapshot(warehouse, snapshot, tables=str(tmp_path / "tables"))
    readme_call = (
        "import duckdb, sys;"
        "con = duckdb.connect(sys.argv[1], read_only=True);"
        "con.sql('select day, count(*) from scoring.transaction_scores group by day order by day').show()"
    )
    with connect(warehouse) as writer:
        writer.execute("begin transaction")
        writer.execute("delete from scoring.transaction_scores")
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-c", readme_call, str(snapshot)], capture_output=True, text=True, timeout=60
        )
        writer.execute("rollback")
    assert result.returncode == 0, result.stderr
    assert "2018-08-01" in result.stdout and "400" in result.stdout and "200" in result.stdout
    assert time.monotonic() - started < 30


@pytest.fixture
def published(txguard_home: Path) -> Path:
    settings = load_settings()
    write_state(settings.warehouse_path, OLD, "run-0")
    publish(settings)
    return settings.snapshot_path


COUNTS = (
    "select day, count(*) n, max(model_version) v from scoring.transaction_scores group by day order by day"
)


def test_txguard_sql_prints_a_table_csv_and_json(published: Path) -> None:
    runner = CliRunner()
    table = runner.invoke(sql, [COUNTS])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split() == ["day", "n", "v"]
    assert lines[1].split() == ["2018-08-01", "400", "1"] and lines[2].split() == ["2018-08-02", "200", "1"]
    assert lines[-1] == "(2 rows)"

    csv = runner.invoke(sql, [COUNTS, "--format", "csv"])
    assert csv.exit_code == 0, csv.output
    frame = pd.read_csv(io.StringIO(csv.output))
    assert frame.to_dict("records") == [
        {"day": "2018-08-01", "n": 400, "v": 1},
        {"day": "2018-08-02", "n": 200, "v": 1},
    ]
    answer = runner.invoke(sql, [COUNTS, "--format", "json"])
    assert answer.exit_code == 0, answer.output
    assert [(r["day"][:10], r["n"]) for r in json.loads(answer.output)] == [
        ("2018-08-01", 400),
        ("2018-08-02", 200),
    ]

    truncated = runner.invoke(sql, ["select * from scoring.transaction_scores", "--max-rows", "5"])
    assert truncated.exit_code == 0 and truncated.output.splitlines()[-1] == "(600 rows, first 5 shown)"


def test_txguard_sql_cannot_write_or_reach_the_live_warehouse(published: Path) -> None:
    runner = CliRunner()
    before = published.read_bytes()
    deleted = runner.invoke(sql, ["delete from scoring.transaction_scores"])
    assert deleted.exit_code == 1 and "read-only" in deleted.output
    warehouse = load_settings().warehouse_path
    attached = runner.invoke(sql, [f"attach '{warehouse}' as live"])
    assert attached.exit_code == 1 and "disabled by configuration" in attached.output
    reopened = runner.invoke(sql, ["set enable_external_access = true"])
    assert reopened.exit_code == 1
    assert published.read_bytes() == before
    broken = runner.invoke(sql, ["select nope from scoring.transaction_scores"])
    assert broken.exit_code == 1 and "query failed on the read-only snapshot" in broken.output


def test_txguard_sql_without_a_snapshot_says_how_to_get_one(txguard_home: Path) -> None:
    outcome = CliRunner().invoke(sql, ["select 1"])
    assert outcome.exit_code == 1
    assert "no analysts' snapshot at" in outcome.output and "txguard run --from" in outcome.output
