#!/usr/bin/env bash
# One call of the device tool (a lent GPU, <= 8 minutes): the GPU benchmark and the GPU-only tests.
#
#   run(command="bash bench/gpu_device_check.sh", timeout_s=540)     # nothing to carry: src/ is tracked
#
# Writes to $OUT (comes back to the session): env.txt (versions, device), cupy_config.txt, nvidia-smi.txt,
# bench_gpu.txt (the table; rows as they come), bench_gpu.json (rewritten after every row), pytest_gpu.txt
# (the whole pytest output). Exit status: the benchmark's (1 when a check failed or a case raised), else
# pytest's. Time: benchmark <= 360 s (its own budget 320 s: CPU references it cannot afford are skipped and
# said so), pytest <= 120 s; rehearsed without a GPU (NumPy mode, a venv with only what the device has):
# docs/gpu.md.
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" - > "$OUT/env.txt" 2>&1 <<'EOF'
import sys
import numpy, scipy
print("python", sys.version.split()[0], "numpy", numpy.__version__, "scipy", scipy.__version__)
import cupy
rt = cupy.cuda.runtime
print("cupy", cupy.__version__, "CUDA runtime", rt.runtimeGetVersion(), "driver", rt.driverGetVersion())
print("devices", rt.getDeviceCount(), rt.getDeviceProperties(0)["name"])
from llsmflow.decon.backends import available_backends
print("llsmflow backends", available_backends())
EOF
cat "$OUT/env.txt"
"$PY" -c "import cupy; cupy.show_config()" > "$OUT/cupy_config.txt" 2>&1 || true
# the benchmark first (it is what the issue asks for)
# BENCH_BACKEND=numpy: the rehearsal without a GPU (the same script, the GPU code paths with NumPy)
timeout -k 10 360 "$PY" bench/bench_gpu.py --backend "${BENCH_BACKEND:-cupy}" --repeats 3 --budget-s 320 --json "$OUT/bench_gpu.json" \
    2>&1 | tee "$OUT/bench_gpu.txt"
status=${PIPESTATUS[0]}
# the tests that need a GPU (skipped elsewhere; -ra says why one was skipped); conftest imports llsmflow.synth,
# which the GPU machine can import
timeout -k 10 120 "$PY" -m pytest -q -p no:cacheprovider --durations=10 tests/test_gpu_path.py \
    "tests/test_decon.py::test_cupy_matches_numpy" tests/faults/test_gpu_memory.py > "$OUT/pytest_gpu.txt" 2>&1
tests=$?
tail -40 "$OUT/pytest_gpu.txt"
if [ "$status" -eq 0 ]; then status=$tests; fi
exit "$status"
