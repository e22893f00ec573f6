"""The transaction simulator: reproducible, the handbook's rates and scenarios, the landing-zone contract."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from jobs.simulation.simulator import (
    FORMATS,
    HANDBOOK,
    REPORT_DELAY_DAYS,
    SimulationConfig,
    simulate,
    write_landing,
)

SMALL = SimulationConfig(customers=500, terminals=1_000, days=60, seed=3)
TRANSACTION_SCHEMA = pa.schema(
    [
        ("transaction_id", pa.int64()),
        ("tx_datetime", pa.timestamp("us", tz="UTC")),
        ("customer_id", pa.int64()),
        ("terminal_id", pa.int64()),
        ("tx_amount", pa.float64()),
    ]
)
REPORT_SCHEMA = pa.schema([("transaction_id", pa.int64()), ("reported_at", pa.timestamp("us", tz="UTC"))])


@pytest.fixture(scope="module")
def small():
    return simulate(SMALL)


@pytest.fixture
def s3_landing(moto_s3):
    """A ``landing`` bucket on the moto S3 server."""
    moto_s3.create_bucket(Bucket="landing")
    return moto_s3


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _day_of(timestamps: pd.Series) -> pd.Series:
    return timestamps.dt.tz_convert("UTC").dt.date


def _psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    shares = [
        np.clip(
            np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1) / len(v), 1e-4, 1
        )
        for v in (reference, current)
    ]
    return float(((shares[1] - shares[0]) * np.log(shares[1] / shares[0])).sum())


def _binary_psi(reference: np.ndarray, current: np.ndarray) -> float:
    p, q = reference.mean(), current.mean()
    return float((q - p) * np.log(q / p) + (p - q) * np.log((1 - q) / (1 - p)))


def test_same_seed_gives_identical_frames_and_files(tmp_path: Path, small) -> None:
    again = simulate(SMALL)
    assert again.transactions.equals(small.transactions)
    assert again.fraud_reports.equals(small.fraud_reports)
    for fmt in FORMATS:
        write_landing(small, str(tmp_path / f"first-{fmt}"), fmt)
        write_landing(again, str(tmp_path / f"second-{fmt}"), fmt)
        first, second = _files(tmp_path / f"first-{fmt}"), _files(tmp_path / f"second-{fmt}")
        assert len(first) == 2 * SMALL.days
        assert first == second
    assert not simulate(dataclasses.replace(SMALL, seed=4)).transactions.equals(small.transactions)


def test_small_dataset_has_a_handbook_like_fraud_rate_and_all_three_scenarios(small) -> None:
    assert 0.004 < small.fraud_rate < 0.015
    mix = small.frauds_by_scenario
    assert set(mix) == {1, 2, 3}
    shares = {k: v / small.frauds for k, v in mix.items()}
    assert 0.02 < shares[1] < 0.2 and 0.35 < shares[2] < 0.85 and 0.15 < shares[3] < 0.55
    tx = small.transactions.to_pandas()
    assert tx.tx_fraud.sum() == small.frauds
    assert (tx.tx_amount[~tx.tx_fraud] <= 220).all()
    assert (tx.tx_fraud_scenario[tx.tx_fraud] > 0).all()


def test_handbook_size_matches_the_published_rates_and_mix_within_10_percent() -> None:
    data = simulate(SimulationConfig())
    assert data.transactions.num_rows == pytest.approx(HANDBOOK.transactions, rel=0.10)
    assert data.fraud_rate == pytest.approx(HANDBOOK.fraud_rate, rel=0.10)
    for scenario, published in HANDBOOK.frauds_by_scenario.items():
        share = data.frauds_by_scenario[scenario] / data.frauds
        assert share == pytest.approx(published / HANDBOOK.frauds, rel=0.10), scenario


def test_transactions_are_ordered_with_unique_increasing_ids_and_cents(small) -> None:
    tx = small.transactions.to_pandas()
    assert (tx.transaction_id.to_numpy() == np.arange(len(tx))).all()
    assert tx.tx_datetime.is_monotonic_increasing
    assert tx.customer_id.between(0, SMALL.customers - 1).all()
    assert tx.terminal_id.between(0, SMALL.terminals - 1).all()
    assert (tx.tx_amount >= 0).all()
    assert np.allclose(tx.tx_amount.round(2), tx.tx_amount, rtol=0, atol=1e-9)
    assert _day_of(tx.tx_datetime).between(SMALL.start, SMALL.end).all()


def test_fraud_reports_arrive_after_their_transaction_within_7_days(small) -> None:
    tx = small.transactions.to_pandas().set_index("transaction_id")
    reports = small.fraud_reports.to_pandas()
    assert reports.transaction_id.is_unique
    reported = tx.loc[reports.transaction_id]
    assert reported.tx_fraud.all()
    delay = reports.reported_at.to_numpy() - reported.tx_datetime.to_numpy()
    assert (delay > np.timedelta64(0, "s")).all()
    assert (delay <= np.timedelta64(REPORT_DELAY_DAYS, "D")).all()
    assert (_day_of(reports.reported_at).to_numpy() > _day_of(reported.tx_datetime).to_numpy()).all()
    assert (_day_of(reports.reported_at) <= SMALL.end).all()
    settled = tx.tx_fraud & (_day_of(tx.tx_datetime) < SMALL.end - dt.timedelta(days=REPORT_DELAY_DAYS))
    assert set(tx.index[settled]) <= set(reports.transaction_id)


def test_every_landing_row_lies_inside_its_file_day(tmp_path: Path, small) -> None:
    summary = write_landing(small, str(tmp_path), "parquet")
    assert summary.files_written == 2 * SMALL.days
    assert summary.fraud_reports + summary.reports_pending == summary.frauds
    seen = 0
    for source, column in (("transactions", "tx_datetime"), ("fraud_reports", "reported_at")):
        files = sorted((tmp_path / source).glob("*.parquet"))
        assert [f.stem for f in files] == [
            (SMALL.start + dt.timedelta(days=i)).isoformat() for i in range(SMALL.days)
        ]
        for file in files:
            frame = pq.read_table(file).to_pandas()
            assert (_day_of(frame[column]) == dt.date.fromisoformat(file.stem)).all(), file
            seen += len(frame) if source == "transactions" else 0
    assert seen == small.transactions.num_rows


def test_csv_and_parquet_files_round_trip_the_landing_contract(tmp_path: Path, small) -> None:
    write_landing(small, str(tmp_path / "parquet"), "parquet")
    write_landing(small, str(tmp_path / "csv"), "csv")
    for source, schema in (("transactions", TRANSACTION_SCHEMA), ("fraud_reports", REPORT_SCHEMA)):
        parquet = pa.concat_tables(
            pq.read_table(f) for f in sorted((tmp_path / "parquet" / source).iterdir())
        )
        assert parquet.schema.remove_metadata() == schema
        expected = small.transactions if source == "transactions" else small.fraud_reports
        assert parquet.equals(expected.select(schema.names))

        frames = []
        for file in sorted((tmp_path / "csv" / source).iterdir()):
            text = file.read_text(encoding="utf-8")
            assert text.splitlines()[0] == ",".join(schema.names)
            frames.append(pd.read_csv(file, dtype=str))
        csv = pd.concat(frames, ignore_index=True)
        time_column = schema.names[1]
        assert csv[time_column].str.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z").all()
        parsed = pd.DataFrame(
            {
                name: pd.to_datetime(csv[name], utc=True).astype("datetime64[us, UTC]")
                if name == time_column
                else csv[name].astype("float64" if name == "tx_amount" else "int64")
                for name in schema.names
            }
        )
        if source == "transactions":
            assert csv.tx_amount.str.fullmatch(r"\d+\.\d{2}").all()
        pd.testing.assert_frame_equal(parsed, parquet.to_pandas())


def test_writes_the_landing_zone_to_s3(s3_landing, tmp_path: Path) -> None:
    from jobs.platform.storage import read_parquet
    from jobs.simulation.bad_files import write_bad_file_catalogue

    config = SimulationConfig(customers=100, terminals=200, days=5, seed=1)
    data = simulate(config)
    summary = write_landing(data, "s3://landing/zone", "parquet")
    keys = sorted(o["Key"] for o in s3_landing.list_objects_v2(Bucket="landing")["Contents"])
    assert len(keys) == summary.files_written == 10
    assert "zone/transactions/2018-04-01.parquet" in keys and "zone/fraud_reports/2018-04-05.parquet" in keys
    first = read_parquet("s3://landing/zone/transactions/2018-04-01.parquet")
    local = write_landing(data, str(tmp_path), "parquet")
    assert local.files_written == 10
    assert first.equals(pq.read_table(tmp_path / "transactions" / "2018-04-01.parquet"))

    catalogue = write_bad_file_catalogue("s3://landing/zone", config.end + dt.timedelta(days=1))
    listed = {o["Key"] for o in s3_landing.list_objects_v2(Bucket="landing")["Contents"]}
    assert {b.path.removeprefix("s3://landing/") for b in catalogue} <= listed


def test_refuses_to_mix_formats_for_the_same_day(tmp_path: Path) -> None:
    data = simulate(SimulationConfig(customers=50, terminals=100, days=3))
    write_landing(data, str(tmp_path), "parquet")
    with pytest.raises(FileExistsError, match=r"2018-04-01\.parquet"):
        write_landing(data, str(tmp_path), "csv")


@pytest.mark.parametrize(
    "change",
    [{"customers": 0}, {"days": 0}, {"radius": 0.0}, {"seed": -1}, {"drift_from": dt.date(2018, 3, 1)}],
)
def test_invalid_configuration_is_refused(change: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(change))):
        dataclasses.replace(SMALL, **change)


def test_drift_keeps_the_past_and_shifts_amounts_night_share_and_fraud(small) -> None:
    drift_day = SMALL.start + dt.timedelta(days=30)
    drifted = simulate(dataclasses.replace(SMALL, drift_from=drift_day))
    assert drifted.frauds_by_scenario[4] > 0

    boundary = pd.Timestamp(drift_day, tz="UTC")
    for table, column in (("transactions", "tx_datetime"), ("fraud_reports", "reported_at")):
        base, shifted = getattr(small, table).to_pandas(), getattr(drifted, table).to_pandas()
        pd.testing.assert_frame_equal(base[base[column] < boundary], shifted[shifted[column] < boundary])

    for data, drifts in ((small, False), (drifted, True)):
        tx = data.transactions.to_pandas()
        before, after = tx[tx.tx_datetime < boundary], tx[tx.tx_datetime >= boundary]
        amount_psi = _psi(before.tx_amount.to_numpy(), after.tx_amount.to_numpy())
        night_psi = _binary_psi(
            (before.tx_datetime.dt.hour < 6).to_numpy(), (after.tx_datetime.dt.hour < 6).to_numpy()
        )
        if drifts:
            assert amount_psi > 0.2 and night_psi > 0.2
            testing = after[after.tx_fraud_scenario == 4]
            assert (testing.tx_amount <= 5).all() and (testing.tx_datetime.dt.hour < 6).all()
        else:
            assert amount_psi < 0.05 and night_psi < 0.05


def test_cli_help_documents_every_flag() -> None:
    from orchestration.cli import main

    result = CliRunner().invoke(main, ["simulate", "--help"])
    assert result.exit_code == 0, result.output
    flags = [
        "--customers", "--terminals", "--days", "--start", "--seed", "--landing", "--format", "--radius",
        "--drift-from", "--bad-files", "--no-progress",
    ]  # fmt: skip
    for flag in flags:
        line = next(line for line in result.output.splitlines() if line.strip().startswith(flag))
        assert len(line.split(maxsplit=2)) == 3, f"{flag} has no help text"


def test_cli_writes_the_default_landing_zone_and_the_bad_file_catalogue(txguard_home: Path) -> None:
    from orchestration.cli import main

    args = ["simulate", "--customers", "80", "--terminals", "150", "--days", "4", "--start", "2019-01-01"]
    result = CliRunner().invoke(main, [*args, "--format", "csv", "--bad-files", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert re.search(r"simulated [\d,]+ transactions 2019-01-01\.\.2019-01-04", result.output)
    assert "bad-file catalogue: 14 files from 2019-01-05" in result.output
    landing = txguard_home / "landing"
    assert (landing / "transactions" / "2019-01-04.csv").exists()
    assert (landing / "transactions" / "latest.csv").exists()
    assert (landing / "fraud_reports" / "2019-01-18.csv").exists()

    refused = CliRunner().invoke(main, [*args, "--format", "parquet"])
    assert refused.exit_code != 0 and "ambiguous" in refused.output


def test_each_terminal_is_drawn_uniformly_among_its_customers_terminals_within_the_radius(small) -> None:
    """The grid of radius-sized cells agrees with the handbook's all-pairs definition of nearby terminals."""
    from scipy.stats import kstest

    customers, terminals = small.customers.to_pandas(), small.terminals.to_pandas()
    gap = customers[["x", "y"]].to_numpy()[:, None, :] - terminals[["x", "y"]].to_numpy()[None, :, :]
    near = np.hypot(gap[..., 0], gap[..., 1]) < SMALL.radius
    assert (customers.nb_terminals.to_numpy() == near.sum(axis=1)).all()

    tx = small.transactions.to_pandas()
    customer, terminal = tx.customer_id.to_numpy(), tx.terminal_id.to_numpy()
    assert near[customer, terminal].all()
    assert set(np.unique(customer)) <= set(np.flatnonzero(near.sum(axis=1) > 0))
    rank = np.cumsum(near, axis=1)[customer, terminal] - 1
    count = near.sum(axis=1)[customer]
    spread = (rank + np.random.default_rng(0).random(len(rank))) / count
    assert kstest(spread, "uniform").pvalue > 0.001
