"""``python -m llsmflow.cli``: the same as the ``llsmflow`` command."""

import sys

from llsmflow.cli import main

sys.exit(main())
