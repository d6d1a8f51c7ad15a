"""Run ``rocrate-validator`` offline on a machine without network access.

The validator resolves the crate's JSON-LD ``@context`` through its HTTP cache; ``--offline`` only reads that
cache. The cache, in a private ``XDG_CACHE_HOME``, is seeded by :func:`llsmflow.fair.workflowhub.seed_validator_cache`
(what ``llsmflow export validator-cache`` does for users) with a stand-in for the RO-Crate 1.1 context.
"""

import os
import subprocess
import sys
from pathlib import Path

from llsmflow.fair.workflowhub import RO_CRATE_1_1_BIOSCHEMAS, seed_validator_cache  # noqa: F401

VALIDATOR = Path(sys.executable).parent / "rocrate-validator"
VALIDATE = [str(VALIDATOR), "--no-interactive", "validate", "--offline", "-p", "provenance-run-crate-0.5"]


def validate(crate_dir: Path, cache_home: Path, *extra: str, profile: str = "provenance-run-crate-0.5"):
    """``rocrate-validator --no-interactive validate --offline -p PROFILE [EXTRA…] CRATE_DIR``."""
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_home), COLUMNS="200")
    command = [*VALIDATE[:-1], profile, *extra, str(crate_dir)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
