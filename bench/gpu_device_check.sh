#!/usr/bin/env bash
# One call of the device tool (a lent GPU, <= 8 minutes): the GPU benchmark and the GPU-only tests.
#
#   run(command="bash bench/gpu_device_check.sh", timeout_s=540)     # nothing to carry: src/ is tracked
#
# Writes to $OUT (comes back to the session): bench_gpu.txt (the table), bench_gpu.json, pytest_gpu.txt,
# nvidia-smi.txt. Exit status: the benchmark's (1 when a correctness check failed).
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" -c "import cupy, numpy, scipy; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'scipy', scipy.__version__, 'devices', cupy.cuda.runtime.getDeviceCount())"
# the benchmark first (it is what the issue asks for); at most 6 minutes
timeout 360 "$PY" bench/bench_gpu.py --backend cupy --repeats 3 --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.txt"
status=${PIPESTATUS[0]}
# the tests that need a GPU (skipped elsewhere); conftest imports llsmflow.synth, which the GPU machine can import
timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu_path.py "tests/test_decon.py::test_cupy_matches_numpy" \
    tests/faults/test_gpu_memory.py 2>&1 | tail -30 | tee "$OUT/pytest_gpu.txt"
exit "$status"
