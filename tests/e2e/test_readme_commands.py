"""Every command the README shows, and every command the model report tells people to run, runs here.

The README's ``bash`` and ``python`` blocks are parsed, not copied, so a command added to the README is run
by this module (or fails it) without anyone editing it. They run in the README's order, as a reader would
type them, in one data home shared by the module: the README's own ``txguard simulate`` and ``txguard run``
build it. ``NOT_RUN`` lists, with the reason, the commands that cannot run inside a test; each must still be
in the README. Inputs the README leaves to the reader are prepared before the command that needs them
(``PREPARE``): the query file of ``txguard sql -``, a second model version to promote, and a lake with the
handbook protocol's 2018 weeks for ``txguard evaluate``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jobs.platform.settings import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

README = REPO_ROOT / "README.md"
TXGUARD = str(Path(sys.executable).with_name("txguard"))

NOT_RUN = {
    "make demo": "simulates 75 days of 1,000 cards and runs the whole chain (minutes); the same path runs "
    "here as the README's txguard simulate and txguard run",
    "make test": "runs this test suite, this module included",
    "make ui": "a long-running server on the fixed port 3000 (Dagster webserver and daemon); "
    "tests/e2e/test_daemon.py and tests/e2e/test_ui_browser.py start the same servers on free ports",
    "make mlflow": "a long-running server on the fixed port 5000 that other workers on the machine may hold",
    "make bench": "every benchmark at handbook size (many minutes); benchmarks are not tests",
}
"""README commands that are not run here, each with the reason."""


@dataclass(frozen=True)
class Command:
    """One command of a README code block: a shell command line, or a whole Python block."""

    language: str
    text: str

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text, comments=True)

    @property
    def key(self) -> str:
        """The shell command's words up to its first option or value, e.g. ``txguard lineage partition``;
        ``python`` for a Python block."""
        if self.language == "python":
            return "python"
        words = []
        for word in self.argv:
            if word.startswith("-") or not re.fullmatch(r"[a-z][a-z-]*", word):
                break
            words.append(word)
        return " ".join(words)


def readme_commands(text: str) -> list[Command]:
    """The commands of the README's ``bash`` blocks (a quoted argument may span lines; comments dropped) and
    its ``python`` blocks, in the README's order."""
    commands = []
    for language, body in re.findall(r"^```(bash|python)\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        if language == "python":
            commands.append(Command(language, body))
            continue
        pending = ""
        for line in body.splitlines():
            pending = f"{pending}\n{line}" if pending else line
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # a quote still open: the argument goes on on the next line
                continue
            if words:
                commands.append(Command(language, pending.strip()))
            pending = ""
        assert not pending, f"unbalanced quotes in a README bash block: {pending!r}"
    return commands


COMMANDS = readme_commands(README.read_text())


@dataclass
class Walk:
    """The module's data home and working folder, and what each command did there."""

    home: Path
    cwd: Path
    env: dict[str, str]
    done: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    retrained: int | None = None
    """The version ``second_version`` trained."""


def run(walk: Walk, command: Command, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``command`` as a reader runs it, in the walk's environment and ``env``: a shell line from the working
    folder, a Python block with ``python``; stdin from the file a ``<`` names. ``make`` runs in the checkout
    with the virtual environment as it is (``--old-file``): a test never reinstalls it."""
    if command.language == "python":
        argv, stdin, cwd = [sys.executable, "-c", command.text], None, walk.cwd
    else:
        argv, stdin = command.argv, None
        if "<" in argv:
            at = argv.index("<")
            stdin, argv = (walk.cwd / argv[at + 1]).read_text(), argv[:at] + argv[at + 2 :]
        cwd = REPO_ROOT if argv[0] == "make" else walk.cwd
        if argv[0] == "txguard":
            argv = [TXGUARD, *argv[1:]]
        elif argv[0] == "make":
            argv = ["make", "--old-file=.venv/.installed", *argv[1:]]
    return subprocess.run(
        argv,
        cwd=cwd,
        env={**walk.env, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )


def second_version(walk: Walk) -> dict[str, str]:
    """Another version trained by the pipeline's model (@challenger), for ``txguard promote`` to promote:
    ``fraud_model`` materialized again, as the weekly schedule does."""
    from orchestration.defs.training import fraud_model
    from tests.support import materialize

    (event,) = materialize([fraud_model], raise_on_error=True).get_asset_materialization_events()
    walk.retrained = int(event.step_materialization_data.materialization.metadata["model_version"].value)
    return {}


def handbook_lake(walk: Walk) -> dict[str, str]:
    """``txguard evaluate --protocol handbook`` trains on the week from 2018-07-25 and tests two weeks later:
    a lake with features and fraud reports through late August, which the walk's 60 days do not reach."""
    import datetime as dt

    from tests.support import handbook_features, handbook_transactions, write_feature_lake

    lake = walk.home.parent / "handbook-lake"
    tx = handbook_transactions(n_days=56, start=dt.date(2018, 7, 1))
    write_feature_lake(lake, tx, handbook_features(tx))
    return {"TXGUARD_LAKE_ROOT": str(lake)}


PREPARE: dict[str, Callable[[Walk], dict[str, str]]] = {
    "txguard promote": second_version,
    "txguard evaluate": handbook_lake,
}
"""What a command needs that the README leaves to the reader, done just before it; the variables it
returns are set for that command only."""


@pytest.fixture(scope="module")
def walk(module_home: Path) -> Walk:
    """Every README command not in ``NOT_RUN``, run once in README order on one fresh data home."""
    cwd = module_home.parent / "reader"
    cwd.mkdir()
    (cwd / ".txguard").symlink_to(module_home)
    (cwd / "alerts.sql").write_text("select count(*) filter (where decision) from scoring.transaction_scores")
    walk = Walk(module_home, cwd, dict(os.environ))
    for command in COMMANDS:
        if command.key in NOT_RUN or command.text in walk.done:
            continue
        env = PREPARE[command.key](walk) if command.key in PREPARE else {}
        walk.done[command.text] = run(walk, command, env)
    return walk


def test_every_readme_command_is_run_or_excluded_for_a_stated_reason() -> None:
    keys = {command.key for command in COMMANDS if command.language == "bash"}
    assert set(NOT_RUN) <= keys, f"NOT_RUN names commands the README no longer shows: {set(NOT_RUN) - keys}"
    assert all(reason.strip() for reason in NOT_RUN.values())
    assert {"txguard run", "txguard sql", "txguard lineage transaction", "txguard promote"} <= keys
    assert any(command.language == "python" for command in COMMANDS)


@pytest.mark.parametrize(
    "command",
    [command for command in COMMANDS if command.key not in NOT_RUN],
    ids=lambda command: command.key,
)
def test_the_readme_command_runs(walk: Walk, command: Command) -> None:
    succeeded(command.text, walk.done[command.text])


def succeeded(text: str, done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"{text}\nexit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr}"
    assert "Traceback" not in done.stdout + done.stderr


def test_the_readme_promotes_the_version_a_retraining_makes(walk: Walk) -> None:
    """The walk is deterministic (a seeded simulation, fixed days): the README names the real version."""
    (promote,) = [c for c in COMMANDS if c.key == "txguard promote"]
    named = int(promote.argv[promote.argv.index("--version") + 1])
    assert named == walk.retrained, (
        f"the README promotes v{named}; retraining after the walk makes v{walk.retrained}"
    )


def test_what_the_readme_commands_leave_for_people(walk: Walk) -> None:
    """The files the README's commands write, and the rows the analysts' examples print."""
    assert (walk.cwd / "2018-05-06.html").read_text().lstrip().lower().startswith("<!doctype html>")
    assert {path.suffix for path in (walk.cwd / "reports").iterdir()} >= {".html", ".md"}
    python = next(walk.done[c.text] for c in COMMANDS if c.language == "python")
    assert "model_version" in python.stdout
    verified = next(done for text, done in walk.done.items() if text.startswith("txguard audit verify"))
    assert verified.stdout.startswith("audit chain OK")


def report_commands(walk: Walk) -> tuple[list[str], list[str]]:
    """The ``txguard …`` commands the model report names: the instructions (with arguments), placeholders
    filled from the home (``N`` the retrained version, which the README rolled back, ``D`` the last scored
    day, ``<id>`` a scored transaction), and the bare mentions of a command (``txguard report model``)."""
    from jobs.platform.settings import load_settings
    from jobs.platform.warehouse import connect

    (report,) = (walk.cwd / "reports").glob("*.md")
    with connect(load_settings(home=walk.home).snapshot_path, read_only=True) as connection:
        day, transaction = connection.execute(
            "select max(day), max(transaction_id) from scoring.transaction_scores"
        ).fetchone()
    named = re.findall(r"`(txguard [^`]+)`", report.read_text())
    mentions = [text for text in named if Command("bash", text).key == text]
    return [
        text.replace(" N ", f" {walk.retrained} ").replace(" D", f" {day}").replace("<id>", str(transaction))
        for text in named
        if text not in mentions
    ], mentions


def test_the_commands_the_model_report_names_run(walk: Walk) -> None:
    instructions, mentions = report_commands(walk)
    assert {text.split()[1] for text in instructions} >= {"promote", "rollback", "rescore", "lineage"}
    for text in instructions:
        succeeded(text, run(walk, Command("bash", text)))
    walked = {command.key for command in COMMANDS if command.key not in NOT_RUN}
    assert set(mentions) <= walked, f"the report names commands the README's walk never runs: {mentions}"
