"""The ``txguard`` command as people run it: the installed entry point in a subprocess, against a fresh home.

A mistake in the arguments is refused at once, in one line that names the option and the fix, with the
usage exit code and no Dagster run recorded; errors people cause end in a line or two with the fix and no
traceback unless ``--debug``; libraries print no progress bars; our own run shows one on a terminal.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
import pty
import re
import shlex
import struct
import subprocess
import sys
import termios
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from jobs.platform.settings import REPO_ROOT, load_settings
from orchestration.cli.arguments import FIRST_DAY, Refusal, require_landing_files

TXGUARD = Path(sys.executable).parent / "txguard"
ARGUMENT_SECONDS = 2.0
"""An argument error must come back faster than this: the command line imports no engine to refuse it."""

LIBRARY_BARS = ("Downloading artifacts", "%|", "it/s]")


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def txguard(
    *args: str, stdin: str = "", env: dict[str, str] | None = None, unset: tuple[str, ...] = ()
) -> Finished:
    """Run the installed ``txguard`` with ``args``; the environment is this process's, less the variables
    whose names start with one of ``unset``, plus ``env``."""
    inherited = {name: value for name, value in os.environ.items() if not unset or not name.startswith(unset)}
    started = time.monotonic()
    done = subprocess.run(
        [str(TXGUARD), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**inherited, **(env or {})},
        cwd=REPO_ROOT,
        timeout=300,
    )
    return Finished(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def txguard_on_a_terminal(*args: str, timeout: float = 300) -> Finished:
    """Run ``txguard`` with its stderr on a pseudo-terminal (120 columns), as in a person's shell."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    started = time.monotonic()
    process = subprocess.Popen(
        [str(TXGUARD), *args], stdout=subprocess.PIPE, stderr=terminal, cwd=REPO_ROOT, text=True
    )
    os.close(terminal)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stdout, _ = process.communicate(timeout=timeout)
    reader.join(timeout=10)
    os.close(controller)
    stderr = b"".join(chunks).decode(errors="replace")
    return Finished(process.returncode, stdout, stderr, time.monotonic() - started)


def recorded_runs() -> int:
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        return instance.get_runs_count()


def land(home: Path, *names: str) -> None:
    folder = home / "landing" / "transactions"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("transaction_id,tx_datetime,customer_id,terminal_id,tx_amount\n")


BAD_ARGUMENTS = {
    "not a date": (["run", "--from", "2018-13-01", "--to", "2018-04-02"], "'--from'", "not a calendar date"),
    "no dashes": (["run", "--from", "20180401", "--to", "2018-04-02"], "'--from'", "write it as YYYY-MM-DD"),
    "reversed": (["run", "--from", "2018-05-01", "--to", "2018-04-01"], "'--to'", "swap the two days"),
    "before the first partition": (
        ["run", "--from", "2017-01-01", "--to", "2017-01-02"],
        "'--from'",
        f"before the first partition; use {FIRST_DAY} or later",
    ),
    "in the future": (
        ["run", "--from", "2999-01-01", "--to", "2999-01-01"],
        "'--from'",
        "has no partition yet; the last one is yesterday, ",
    ),
    "no landing data": (
        ["run", "--from", "2018-04-01", "--to", "2018-04-03"],
        "'--from' / '--to'",
        "for 2 of its days, first 2018-04-02; land the files",
    ),
    "rescore into the future": (
        ["rescore", "--from", "2018-04-01", "--to", "2999-01-01"],
        "'--to'",
        "has no partition yet",
    ),
    "rescore reversed": (["rescore", "--from", "2018-04-02", "--to", "2018-04-01"], "'--to'", "swap"),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_a_bad_range_is_refused_at_once_in_one_line_and_records_no_run(txguard_home: Path, case: str) -> None:
    args, option, fix = BAD_ARGUMENTS[case]
    land(txguard_home, "2018-04-01.csv")
    finished = txguard(*args)
    assert finished.code == 2, finished.output
    (line,) = finished.stderr.strip().splitlines()
    assert line.startswith(f"Error: Invalid value for {option}: ") and fix in line, line
    assert "Traceback" not in finished.output
    assert finished.seconds < ARGUMENT_SECONDS, f"{finished.seconds:.2f} s"
    assert recorded_runs() == 0


IMPORTED_BY = """
import sys
from orchestration.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    assert exit.code == 2, exit.code
print(" ".join(sorted({name.split(".")[0] for name in sys.modules} - set(sys.stdlib_module_names))))
"""
HEAVY = {"dagster", "mlflow", "pyspark", "great_expectations", "lightgbm", "pandas", "duckdb", "numpy"}


def test_a_bad_date_is_refused_with_click_and_the_standard_library_only(txguard_home: Path) -> None:
    """What keeps an argument error fast: nothing but click and our own modules is imported to refuse it,
    and the landing check adds only the settings and the filesystem layer, never an engine."""
    land(txguard_home, "2018-04-01.csv")

    def imported(*args: str) -> set[str]:
        done = subprocess.run(
            [sys.executable, "-c", IMPORTED_BY, *args], capture_output=True, text=True, cwd=REPO_ROOT
        )
        assert done.returncode == 0, done.stderr
        return {
            name for name in done.stdout.split() if name != "__main__" and not name.startswith("_sysconfig")
        }

    for case, (args, _, _) in BAD_ARGUMENTS.items():
        if case != "no landing data":
            assert imported(*args) == {"click", "jobs", "orchestration"}, case
    with_landing = imported("run", "--from", "2018-04-01", "--to", "2018-04-02")
    assert with_landing & HEAVY == set(), with_landing


def test_the_landing_check_lists_once_and_accepts_csv_and_parquet_days(txguard_home: Path) -> None:
    land(txguard_home, "2018-04-01.csv", "2018-04-02.parquet", "latest.csv", "..2018-04-03.csv")
    landing = str(txguard_home / "landing")
    days = [dt.date(2018, 4, 1), dt.date(2018, 4, 2)]
    require_landing_files(landing, days)
    with pytest.raises(Refusal, match="for 2018-04-03; land the files"):
        require_landing_files(landing, [*days, dt.date(2018, 4, 3)])


def test_invalid_settings_end_in_the_variable_and_the_fix_and_debug_shows_the_traceback(
    txguard_home: Path,
) -> None:
    land(txguard_home, "2018-04-01.csv")
    bad = {"TXGUARD_QUARANTINE_THRESHOLD": "lots"}
    for args in (["run", "--from", "2018-04-01", "--to", "2018-04-01"], ["simulate", "--days", "1"]):
        finished = txguard(*args, env=bad)
        assert finished.code == 1, finished.output
        lines = finished.stderr.strip().splitlines()
        assert len(lines) == 2, finished.stderr
        assert lines[0].startswith("Error: TXGUARD_QUARANTINE_THRESHOLD='lots'")
        assert lines[1].strip().startswith("fix: correct or unset the variable")
        assert "Traceback" not in finished.output
    debug = txguard("--debug", "run", "--from", "2018-04-01", "--to", "2018-04-01", env=bad)
    assert debug.code == 1
    assert "Traceback (most recent call last)" in debug.stderr and "SettingsError" in debug.stderr
    assert recorded_runs() == 0


def test_version_names_the_package_and_the_commit() -> None:
    from importlib.metadata import version

    finished = txguard("--version")
    assert finished.code == 0, finished.output
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert re.fullmatch(
        rf"txguard {re.escape(version('txguard'))} \(commit {head[:12]}(, with local changes)?\)\n",
        finished.stdout,
    ), finished.stdout


def test_sql_reads_the_query_from_stdin(txguard_home: Path) -> None:
    from jobs.platform.catalog import publish
    from jobs.platform.warehouse import connect

    settings = load_settings()
    with connect(settings.warehouse_path) as live:
        live.execute("create schema scoring")
        live.execute("create table scoring.transaction_scores as select * from range(3) t(transaction_id)")
    publish(settings)

    query = (
        "select count(*) as scored,\n       max(transaction_id) as last\nfrom scoring.transaction_scores\n"
    )
    finished = txguard("sql", "-", "--format", "csv", stdin=query)
    assert finished.code == 0, finished.output
    assert finished.stdout == "scored,last\n3,2\n"
    empty = txguard("sql", "-", stdin="  \n")
    assert empty.code == 2 and "Invalid value for 'QUERY': the query is empty" in empty.stderr


@pytest.mark.slow
def test_report_model_prints_no_library_progress_bars(txguard_home: Path, tmp_path: Path) -> None:
    """MLflow draws a bar per artifact download unless told not to; the CLI tells it (and tqdm), whatever the
    shell set. The control run, with both variables set the other way by hand, proves the bars would show."""
    from tests.support import LINEAGE_MODEL, build_lineage_warehouse, version_with_plots

    settings = load_settings()
    build_lineage_warehouse(settings.warehouse_path)
    version_with_plots(settings, tmp_path, ("roc_curve.png", "pr_curve.png"))

    args = ("report", "model", "3", "--output", str(tmp_path / "docs"))
    shell = ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "TQDM_")
    quiet = txguard(*args, unset=shell)
    control = txguard(
        *args, unset=shell, env={"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "true", "TQDM_DISABLE": ""}
    )
    assert quiet.code == 0, quiet.output
    assert "pr_curve.png" in (tmp_path / "docs" / f"{LINEAGE_MODEL}-v3.md").read_text()
    assert not [bar for bar in LIBRARY_BARS if bar in quiet.output], quiet.stderr
    assert control.code == 0 and "Downloading artifacts" in control.stderr, control.stderr


def tampered_champion(tracking_uri: str, artifacts: Path) -> str:
    """A registered @champion whose model file changed after registration; returns the registered SHA-256.

    Its labels end the day before ``FIRST_DAY``, so it is the model that may score that day."""
    from jobs.registry.aliases import CHAMPION, TAG_FEATURE_SET, TAG_LABEL_CUTOFF, TAG_SHA256, TAG_THRESHOLD
    from jobs.registry.client import MODEL_NAME, open_client

    client = open_client(tracking_uri)
    experiment = client.create_experiment("tampered", artifact_location=artifacts.as_uri())
    run = client.create_run(experiment)
    model = artifacts.parent / "model"
    model.mkdir()
    (model / "MLmodel").write_text("flavors:\n  lightgbm:\n    data: model.lgb\n")
    (model / "model.lgb").write_bytes(b"tree\nversion=v4\n")
    client.log_artifacts(run.info.run_id, str(model), artifact_path="model")
    client.set_terminated(run.info.run_id)
    registered = hashlib.sha256((model / "model.lgb").read_bytes()).hexdigest()
    client.create_registered_model(MODEL_NAME)
    version = client.create_model_version(
        MODEL_NAME,
        f"{run.info.artifact_uri}/model",
        run_id=run.info.run_id,
        tags={
            TAG_SHA256: registered,
            TAG_THRESHOLD: "0.5",
            TAG_FEATURE_SET: "fs-0123456789ab",
            TAG_LABEL_CUTOFF: (FIRST_DAY - dt.timedelta(days=1)).isoformat(),
        },
    )
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, version.version)
    stored = next(artifacts.rglob("model.lgb"))
    stored.write_bytes(stored.read_bytes().replace(b"v4", b"v5"))
    return registered


@pytest.mark.slow
def test_a_tampered_model_fails_the_run_in_two_lines_with_the_fix_and_a_bar_on_a_terminal(
    txguard_home: Path,
) -> None:
    from tests.support import handbook_features, handbook_transactions, write_feature_partition

    settings = load_settings()
    registered = tampered_champion(settings.tracking_uri, txguard_home / "mlflow" / "artifacts")
    features = handbook_features(
        handbook_transactions(n_customers=20, n_terminals=40, n_days=1, start=FIRST_DAY)
    )
    write_feature_partition(settings.lake, features, FIRST_DAY)
    finished = txguard_on_a_terminal("rescore", "--from", "2018-04-01", "--to", "2018-04-01")
    assert finished.code == 1, finished.output
    assert "Traceback" not in finished.output
    failure = [line for line in finished.stdout.splitlines() if line.startswith("  transaction_scores:")]
    assert len(failure) == 1, finished.stdout
    assert f"registered {registered}; refusing to load it" in failure[0]
    after = finished.stdout.splitlines()[finished.stdout.splitlines().index(failure[0]) + 1 :]
    assert after[0].strip().startswith("fix: the model's artifact is not the one registered")
    assert "steps finished" in finished.stderr, finished.stderr


def test_a_step_failure_is_explained_from_the_first_cause_a_person_can_fix() -> None:
    from dagster._utils.error import serializable_error_info_from_exc_info

    from jobs.ingest.day import MissingLandingFile
    from orchestration.cli.pipeline import explain_failure

    def failed(error: Exception) -> object:
        try:
            try:
                raise error
            except Exception as cause:
                raise RuntimeError("Error occurred while executing op raw_transactions") from cause
        except RuntimeError:
            return serializable_error_info_from_exc_info(sys.exc_info())

    missing = MissingLandingFile("no transactions landing file for 1 day(s); expected\n  a.csv or a.parquet")
    assert explain_failure(failed(missing), "run-1") == (
        "no transactions landing file for 1 day(s); expected a.csv or a.parquet\n"
        "  fix: land the day's file (txguard simulate writes some), or choose days that have one"
    )
    bug = explain_failure(failed(KeyError("customer_id")), "run-2")
    assert bug == "KeyError: 'customer_id'\n  see the run's log: make ui, Runs, run-2"


def test_the_model_report_names_commands_that_parse() -> None:
    """Every ``txguard ...`` the model report tells people to run parses with the real command line."""
    from jobs.governance.model_report import OVERSIGHT
    from orchestration.cli import main

    commands = re.findall(r"`(txguard [^`]+)`", OVERSIGHT)
    assert {c.split()[1] for c in commands} >= {"promote", "rollback", "rescore", "lineage"}
    for text in commands:
        filled = text.replace(" N ", " 1 ").replace(" D", f" {FIRST_DAY}").replace("<id>", "102")
        command: click.Command = main
        args = shlex.split(filled)[1:]
        parent = None
        while isinstance(command, click.Group):
            parent = click.Context(command, parent=parent)
            _, found, args = command.resolve_command(parent, args)
            assert found is not None, text
            command = found
        command.make_context(command.name or "", list(args), parent=parent)


def test_training_is_decided_by_the_option_else_by_whether_a_champion_exists(txguard_home: Path) -> None:
    from orchestration.cli.pipeline import decide_training

    settings = load_settings()
    assert decide_training(True, settings) is True
    assert decide_training(False, settings) is False
    assert decide_training(None, settings) is True, "a fresh home has no champion: its first run trains"
    finished = txguard("run", "--from", "2018-04-01", "--to", "2018-04-01", "--train", "--bogus")
    assert finished.code == 2 and finished.seconds < ARGUMENT_SECONDS, finished.output


@pytest.mark.slow
def test_no_train_leaves_training_out_of_the_run_and_says_what_scoring_needs(txguard_home: Path) -> None:
    from jobs.platform.settings import variable
    from jobs.simulation.simulator import SimulationConfig, simulate, write_landing

    config = SimulationConfig(customers=50, terminals=100, days=1, start=FIRST_DAY, seed=0)
    write_landing(simulate(config), str(txguard_home / "landing"), "parquet")
    day = FIRST_DAY.isoformat()
    one_core = {variable("spark_master"): "local[1]"}
    finished = txguard("run", "--from", day, "--to", day, "--no-train", env=one_core)
    assert finished.code == 1, finished.output
    assert "training: no" in finished.stdout
    (materialized,) = [line for line in finished.stdout.splitlines() if line.startswith("  materialized:")]
    assert "transaction_features" in materialized
    assert "fraud_model" not in materialized and "model_promotion" not in materialized
    (failure,) = [line for line in finished.stdout.splitlines() if line.startswith("  transaction_scores:")]
    assert "@champion" in failure, finished.stdout
    assert "Traceback" not in finished.output
