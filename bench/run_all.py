"""Run every benchmark and append the results to bench/RESULTS.md."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
for script in sorted(HERE.glob("bench_*.py")):
    print(f"== {script.name}", flush=True)
    subprocess.run([sys.executable, str(script)], check=True)
