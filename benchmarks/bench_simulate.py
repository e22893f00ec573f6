"""Simulator at the handbook size: time to write the landing zone, and rates next to the handbook's run.

Goal: 5,000 customers, 10,000 terminals, 183 days written as Parquet in under 30 s on 2 cores, with the fraud
rate and scenario mix within 10 % of the handbook's published run. CSV is timed on the same data. Wall and CPU
seconds are both shown: on a shared machine the wall clock also counts other processes.
"""

from __future__ import annotations

import tempfile
import time

from jobs.simulation.simulator import HANDBOOK, SimulationConfig, simulate, write_landing

GOAL_SECONDS = 30.0


def _timed(action):
    wall, cpu = time.perf_counter(), time.process_time()
    result = action()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    config = SimulationConfig()
    data, sim_wall, sim_cpu = _timed(lambda: simulate(config))
    with tempfile.TemporaryDirectory(prefix="txguard-bench-") as folder:
        parquet, parquet_wall, parquet_cpu = _timed(
            lambda: write_landing(data, f"{folder}/parquet", "parquet")
        )
        _, csv_wall, csv_cpu = _timed(lambda: write_landing(data, f"{folder}/csv", "csv"))

    total = sim_wall + parquet_wall
    verdict = "OK" if total < GOAL_SECONDS else "MISSED"
    print(
        f"handbook size: {config.customers:,} customers, {config.terminals:,} terminals, {config.days} days, "
        f"{parquet.files_written} files"
    )
    print(f"simulate               {sim_wall:6.2f} s wall  {sim_cpu:6.2f} s CPU")
    print(f"write parquet          {parquet_wall:6.2f} s wall  {parquet_cpu:6.2f} s CPU")
    print(f"write csv              {csv_wall:6.2f} s wall  {csv_cpu:6.2f} s CPU")
    print(f"simulate + parquet     {total:6.2f} s wall   goal < {GOAL_SECONDS:.0f} s   {verdict}")

    print(f"{'':22} {'txguard':>12} {'handbook':>12} {'ratio':>7}")
    rows = [("transactions", data.transactions.num_rows, HANDBOOK.transactions)]
    rows += [("frauds", data.frauds, HANDBOOK.frauds)]
    for name, ours, theirs in rows:
        print(f"{name:22} {ours:12,} {theirs:12,} {ours / theirs:7.3f}")
    print(
        f"{'fraud rate':22} {data.fraud_rate:12.4%} {HANDBOOK.fraud_rate:12.4%} "
        f"{data.fraud_rate / HANDBOOK.fraud_rate:7.3f}"
    )
    for scenario, published in HANDBOOK.frauds_by_scenario.items():
        ours = data.frauds_by_scenario[scenario] / data.frauds
        theirs = published / HANDBOOK.frauds
        print(f"{f'scenario {scenario} share':22} {ours:12.2%} {theirs:12.2%} {ours / theirs:7.3f}")


if __name__ == "__main__":
    main()
