"""Ingestion of clean landing files: rows per second through ``ingest_days``, CSV and Parquet.

Goal: at least 200,000 rows/s for clean files on 2 cores. Set-up (not timed): ``TXGUARD_BENCH_INGEST_DAYS``
days (default 10) simulated at the handbook's size (5,000 customers, 10,000 terminals) with
``jobs.simulation.simulator`` and written as a CSV and as a Parquet landing zone. Timed: a range run's
ingestion, ``ingest_days`` over every day for transactions then for fraud reports, into a fresh lake (best
of ``TXGUARD_BENCH_INGEST_REPEATS``, default 3): reading, the contract, the cross-file index, the lake and
quarantine Parquet writes. Reference, same run: the same days taken row by row (``columnar=False``), once;
both paths must write the same lake and quarantine. Ingestion runs on one core, so its CPU seconds are what
a quiet machine's wall clock would show; both are printed, as on a shared machine the wall clock also counts
other processes.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from jobs.ingest.contract import FRAUD_REPORTS, TRANSACTIONS
from jobs.ingest.day import DayResult, ingest_days
from jobs.simulation.simulator import SimulationConfig, simulate, write_landing

GOAL_ROWS_PER_SECOND = 200_000
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@dataclass
class Timed:
    """One source's range run: its results and the seconds it took."""

    results: list[DayResult]
    wall: float
    cpu: float

    @property
    def rows(self) -> int:
        return sum(result.rows_in for result in self.results)


def _setting(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _run(landing: str, lake: str, days: list[dt.date], columnar: bool) -> dict[str, Timed]:
    timed = {}
    for source in (TRANSACTIONS, FRAUD_REPORTS):
        wall, cpu = time.perf_counter(), time.process_time()
        results = ingest_days(landing, lake, source, days, "bench", NOW, columnar=columnar)
        timed[source] = Timed(results, time.perf_counter() - wall, time.process_time() - cpu)
    return timed


def _tables(run: dict[str, Timed]) -> list[tuple[pa.Table, pa.Table]]:
    return [(result.accepted, result.quarantine) for timed in run.values() for result in timed.results]


def _line(label: str, rows: int, wall: float, cpu: float, note: str = "") -> None:
    print(f"{label:42} {rows:9,} {wall:8.2f} {cpu:8.2f} {rows / wall:12,.0f} {rows / cpu:12,.0f}   {note}")


def _verdict(rows: int, seconds: float) -> str:
    return "MET" if rows / seconds >= GOAL_ROWS_PER_SECOND else "MISSED"


def main() -> None:
    config = SimulationConfig(days=_setting("TXGUARD_BENCH_INGEST_DAYS", 10))
    repeats = _setting("TXGUARD_BENCH_INGEST_REPEATS", 3)
    days = [config.start + dt.timedelta(days=i) for i in range(config.days)]
    data = simulate(config)
    print(
        f"{config.days} days at handbook size ({config.customers:,} customers, {config.terminals:,} "
        f"terminals): {data.transactions.num_rows:,} transactions, {data.fraud_reports.num_rows:,} fraud "
        f"reports; best of {repeats}"
    )
    print(f"{'':42} {'rows':>9} {'wall s':>8} {'CPU s':>8} {'rows/s wall':>12} {'rows/s CPU':>12}")
    with tempfile.TemporaryDirectory(prefix="txguard-bench-") as folder:
        for fmt in ("csv", "parquet"):
            landing = f"{folder}/{fmt}/landing"
            write_landing(data, landing, fmt)
            runs = [_run(landing, f"{folder}/{fmt}/lake-{i}", days, columnar=True) for i in range(repeats)]
            best = min(runs, key=lambda run: sum(timed.wall for timed in run.values()))
            reference = _run(landing, f"{folder}/{fmt}/lake-row-by-row", days, columnar=False)

            rows = sum(timed.rows for timed in best.values())
            wall = sum(timed.wall for timed in best.values())
            cpu = sum(timed.cpu for timed in best.values())
            ref_wall = sum(timed.wall for timed in reference.values())
            ref_cpu = sum(timed.cpu for timed in reference.values())
            goal = f"goal >= {GOAL_ROWS_PER_SECOND:,}: wall {_verdict(rows, wall)}, CPU {_verdict(rows, cpu)}"
            _line(f"{fmt} range run, vectorised", rows, wall, cpu, goal)
            for source, timed in best.items():
                _line(f"  of which {source}", timed.rows, timed.wall, timed.cpu)
            _line(
                f"{fmt} range run, row by row (reference)",
                rows,
                ref_wall,
                ref_cpu,
                f"vectorised x{ref_wall / wall:.1f} wall, x{ref_cpu / cpu:.1f} CPU",
            )
            rules = Counter()
            for timed in best.values():
                for result in timed.results:
                    rules.update(result.rules)
            same = _tables(best) == _tables(reference)
            print(f"{'':42} quarantine {dict(rules)}; both paths wrote the same lake and quarantine: {same}")


if __name__ == "__main__":
    main()
