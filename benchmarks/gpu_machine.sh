#!/usr/bin/env bash
# GPU training comparison on a bare NVIDIA machine with no network: CPU and OpenCL with LightGBM's PyPI
# wheel, then CPU and CUDA with a CUDA build made here from the sdist with nvcc.
#
#   bash benchmarks/gpu_machine.sh WHEEL_DIR [OUT_DIR]
#
# WHEEL_DIR holds lightgbm-<version>-py3-none-manylinux*.whl and lightgbm-<version>.tar.gz (fetched where
# there is network: `pip download --no-deps lightgbm==<version>` and the sdist from PyPI). The machine needs
# numpy, pandas and fsspec, nvcc, cmake, ninja and scikit-build-core; CUDA_ARCHS defaults to 90 (Hopper).
set -uo pipefail
wheels=$(realpath "$1")
out=${2:-/tmp/gpu-training}
mkdir -p "$out"
site=$(mktemp -d)
export PYTHONUNBUFFERED=1 PYTHONPATH="$site:$PWD"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheels"/lightgbm-*.whl || exit 1

echo "== PyPI wheel: cpu and OpenCL gpu"
python3 -m benchmarks.gpu_training --devices cpu,gpu 2>&1 | tee "$out/pypi_wheel.txt"

echo "== CUDA build from the sdist"
build=$(mktemp -d)
tar xzf "$wheels"/lightgbm-*.tar.gz -C "$build"
started=$SECONDS
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) timeout "${BUILD_TIMEOUT:-300}" python3 -m pip wheel -q --no-index \
    --no-build-isolation --no-deps -w "$build/dist" \
    -Ccmake.define.USE_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90}" \
    "$build"/lightgbm-*/ >"$out/cuda_build.log" 2>&1
status=$?
echo "build exit $status after $((SECONDS - started)) s"
[ "$status" -eq 0 ] || { tail -30 "$out/cuda_build.log"; exit "$status"; }
cuda_site=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --target "$cuda_site" "$build"/dist/*.whl || exit 1
echo "== CUDA build: cpu and cuda"
PYTHONPATH="$cuda_site:$PWD" python3 -m benchmarks.gpu_training --devices cpu,cuda 2>&1 | tee "$out/cuda_build.txt"
cp "$build"/dist/*.whl "$out/" 2>/dev/null || true
