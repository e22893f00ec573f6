"""GPU training: the same LightGBM model on CPU, OpenCL ``gpu`` and (when built in) ``cuda``, side by side.

Goal: a speedup at ≥ 10 M rows with the AUC within 0.005 of CPU. Run on the GPU machine with
``python -m benchmarks.gpu_training`` (``--rows N`` to change the size). On an NVIDIA machine it first makes
the OpenCL learner see the GPU: the PyPI wheel carries an OpenCL ICD loader that looks for vendor files in
/etc/OpenCL/vendors, so it writes ``nvidia.icd`` naming ``libnvidia-opencl.so.1`` there (or, without write
access, in a temporary folder named by ``OCL_ICD_VENDORS``), before LightGBM is imported. On a machine with no
GPU it says so and trains on CPU only, on a smaller dataset.

Data: 15 features shaped like the handbook's (amounts, counts, rates, flags); frauds from the three handbook
scenarios (large amounts, compromised terminals, stolen cards spending 5x) plus label noise, about 1.5 %
positive; 10 % of the rows are held out for the AUC. Every device gets the same rows, the same parameters
and a fixed number of rounds, with binning timed apart, so the times compare learners. Each device bins its
own ``Dataset`` with its ``device_type``, as LightGBM's CUDA learner requires (LightGBM PR #7265). Devices
run in the order given and each prints as it finishes, so a learner that crashes leaves the others' numbers.
"""

from __future__ import annotations

import argparse
import ctypes
import faulthandler
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

GPU_ROWS = 10_000_000
CPU_ONLY_ROWS = 1_000_000
ROUNDS = 100
AUC_TOLERANCE = 0.005
ICD_LIBRARY = "libnvidia-opencl.so.1"
ICD_DIR = Path("/etc/OpenCL/vendors")


def nvidia_gpu() -> str | None:
    """The GPU's name from nvidia-smi, or None when there is no NVIDIA GPU here."""
    if not shutil.which("nvidia-smi"):
        return None
    probe = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stdout.strip().splitlines()[0] if probe.returncode == 0 and probe.stdout.strip() else None


def setup_opencl_icd() -> str:
    """Point the OpenCL ICD loader at NVIDIA's OpenCL driver; returns what was done."""
    try:
        ctypes.CDLL(ICD_LIBRARY)
    except OSError:
        return f"{ICD_LIBRARY} cannot be loaded (driver without OpenCL, or not mounted): OpenCL gpu will fail"
    icd = ICD_DIR / "nvidia.icd"
    if icd.exists() and ICD_LIBRARY in icd.read_text():
        return f"{icd} already names {ICD_LIBRARY}"
    try:
        ICD_DIR.mkdir(parents=True, exist_ok=True)
        icd.write_text(ICD_LIBRARY + "\n")
        return f"wrote {icd}"
    except OSError:
        folder = Path(tempfile.mkdtemp(prefix="opencl-vendors-"))
        (folder / "nvidia.icd").write_text(ICD_LIBRARY + "\n")
        os.environ["OCL_ICD_VENDORS"] = str(folder)
        return f"no write access to {ICD_DIR}: OCL_ICD_VENDORS={folder}"


def synthetic(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Handbook-like features; frauds from the handbook's three scenarios plus label noise (~1.5 %)."""
    rng = np.random.default_rng(seed)
    x = np.empty((rows, 15), dtype=np.float32)
    x[:, 0] = rng.lognormal(3.5, 0.8, rows)  # amount
    x[:, 1] = rng.random(rows) < 2 / 7  # weekend
    x[:, 2] = rng.random(rows) < 0.1  # night
    for i, mean in enumerate((1.5, 9, 38)):  # customer counts over 1, 7, 30 days
        x[:, 3 + i] = rng.poisson(mean, rows)
    for i in range(3):  # customer mean amounts
        x[:, 6 + i] = x[:, 0] * rng.lognormal(0, 0.3 / (i + 1), rows)
    for i, mean in enumerate((1, 7, 30)):  # terminal counts
        x[:, 9 + i] = rng.poisson(mean, rows)
    compromised = rng.random(rows) < 0.004
    for i in range(3):  # terminal risks: high on compromised terminals, noisy
        x[:, 12 + i] = np.where(compromised, rng.beta(2, 3, rows), rng.beta(0.05, 40, rows))
    stolen_card = rng.random(rows) < 0.003
    x[stolen_card, 0] *= 5
    y = (
        ((x[:, 0] > 220) & (rng.random(rows) < 0.9))
        | (compromised & (rng.random(rows) < 0.6))
        | stolen_card
        | (rng.random(rows) < 0.001)
    ).astype(np.int8)
    return x, y


def params(device: str, threads: int) -> dict[str, object]:
    return {
        "objective": "binary",
        "num_leaves": 63,
        "learning_rate": 0.1,
        "min_data_in_leaf": 100,
        "feature_fraction": 0.9,
        "max_bin": 63,
        "seed": 42,
        "num_threads": threads,
        "device_type": device,
        "verbosity": -1,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="LightGBM CPU vs GPU training")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument(
        "--devices",
        default="cpu,gpu,cuda",
        help="comma-separated, run in this order; the table compares against cpu when it ran",
    )
    args = parser.parse_args(argv)
    faulthandler.enable()

    gpu = nvidia_gpu()
    if gpu:
        print(f"NVIDIA GPU: {gpu}; OpenCL ICD: {setup_opencl_icd()}")
    else:
        print("no NVIDIA GPU on this machine: CPU only, on a smaller dataset")
    rows = args.rows or (GPU_ROWS if gpu else CPU_ONLY_ROWS)

    import lightgbm as lgb

    print(f"LightGBM {lgb.__version__} from {Path(lgb.__file__).parent}")
    from jobs.training.metrics import roc_auc
    from jobs.training.trainer import probe_device

    threads = os.cpu_count() or 1
    started = time.perf_counter()
    x, y = synthetic(int(rows / 0.9))
    split = rows
    print(
        f"data: {rows:,} training rows x 15 features, {len(y) - split:,} test rows, {y.mean():.2%} positive"
    )
    print(f"generated in {time.perf_counter() - started:.1f} s ({threads} CPU threads)")

    devices = []
    for device in args.devices.split(","):
        problem = None if device == "cpu" else probe_device(device)
        if problem is None:
            devices.append(device)
        else:
            print(f"{device}: skipped ({problem})")

    results: dict[str, tuple[float, float]] = {}
    for device in devices:
        started = time.perf_counter()
        dataset = lgb.Dataset(x[:split], y[:split], params=params(device, threads), free_raw_data=False)
        dataset.construct()
        print(f"{device}: binned in {time.perf_counter() - started:.1f} s", flush=True)
        started = time.perf_counter()
        booster = lgb.train(params(device, threads), dataset, num_boost_round=args.rounds)
        seconds = time.perf_counter() - started
        print(f"{device}: trained in {seconds:.1f} s", flush=True)
        results[device] = (seconds, roc_auc(y[split:], booster.predict(x[split:], num_threads=threads)))
        print(f"{device}: AUC {results[device][1]:.4f}", flush=True)

    reference = "cpu" if "cpu" in results else next(iter(results))
    base_seconds, base_auc = results[reference]
    header = f"{'device':<6} {'train s':>8} {'speedup':>8} {'AUC':>8} {'ΔAUC':>8}"
    print(f"\n{header}  ({args.rounds} rounds, {rows:,} rows, against {reference})")
    for device, (seconds, auc) in results.items():
        verdict = "OK" if abs(auc - base_auc) <= AUC_TOLERANCE else f"MISSED (> {AUC_TOLERANCE})"
        speedup = base_seconds / seconds
        print(f"{device:<6} {seconds:8.1f} {speedup:7.2f}x {auc:8.4f} {auc - base_auc:+8.4f}  {verdict}")


if __name__ == "__main__":
    main()
