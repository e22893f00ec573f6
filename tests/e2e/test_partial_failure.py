"""One bad day holds only itself: the rest of a range flows on, and the summary names the day, file, rule.

The real ``txguard run`` over a small simulated landing zone whose middle day is a truncated Parquet file.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.platform.settings import REPO_ROOT
from orchestration.runs import ranges_without

FIRST_DAY = dt.date(2018, 4, 1)
DAYS = 9
BAD_DAY = FIRST_DAY + dt.timedelta(days=4)


def test_held_days_split_a_range_into_the_stretches_around_them() -> None:
    assert ranges_without("2018-04-01", "2018-04-09", ["2018-04-05"]) == [
        ("2018-04-01", "2018-04-04"),
        ("2018-04-06", "2018-04-09"),
    ]
    assert ranges_without("2018-04-01", "2018-04-03", ["2018-04-01", "2018-04-03"]) == [
        ("2018-04-02", "2018-04-02")
    ]
    assert ranges_without("2018-04-01", "2018-04-02", ["2018-04-01", "2018-04-02"]) == []
    assert ranges_without("2018-04-01", "2018-04-02", []) == [("2018-04-01", "2018-04-02")]


@pytest.mark.slow
def test_a_truncated_file_holds_its_day_and_the_other_days_flow_through(tmp_path: Path) -> None:
    from jobs.platform.layout import TRANSACTION_FEATURES, partition_uri
    from jobs.platform.storage import exists
    from jobs.simulation.simulator import SimulationConfig, simulate, write_landing

    home = tmp_path / "txguard"
    env = {name: value for name, value in os.environ.items() if not name.startswith("TXGUARD_")}
    env.update(TXGUARD_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), TXGUARD_SPARK_MASTER="local[1]")
    config = SimulationConfig(customers=100, terminals=200, days=DAYS, start=FIRST_DAY, seed=0)
    write_landing(simulate(config), str(home / "landing"), "parquet")
    bad_file = home / "landing" / "transactions" / f"{BAD_DAY}.parquet"
    bad_file.write_bytes(bad_file.read_bytes()[: bad_file.stat().st_size // 2])

    last = FIRST_DAY + dt.timedelta(days=DAYS - 1)
    command = [str(Path(sys.executable).with_name("txguard")), "run"]
    command += ["--from", FIRST_DAY.isoformat(), "--to", last.isoformat()]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)

    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-4000:]
    assert f"held (ingestion failed its check): {BAD_DAY}" in output
    assert f"{BAD_DAY}: " in output and bad_file.name in output and "truncated_parquet" in output
    assert "Traceback" not in output
    lake = str(home / "lake")
    built = {
        FIRST_DAY + dt.timedelta(days=offset)
        for offset in range(DAYS)
        if exists(partition_uri(lake, TRANSACTION_FEATURES, FIRST_DAY + dt.timedelta(days=offset)))
    }
    assert built == {FIRST_DAY + dt.timedelta(days=offset) for offset in range(DAYS)} - {BAD_DAY}
