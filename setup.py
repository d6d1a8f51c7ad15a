"""Packs the workflow into the wheel: everything else about the build is in pyproject.toml.

The workflow (Snakefile, rules, scripts, report captions, config schema and default config, profiles, conda
env and Apptainer definitions) lives at the repository root, where ``make demo``, ``snakemake --lint`` and the
docs use it. setuptools' package data can only take files from inside a package directory and ``data-files``
installs outside the package (under ``sys.prefix``), so this build step copies those files into the wheel's
``llsmflow/_workflow/`` instead; :data:`llsmflow.run.config.SOURCE_TREE` finds that copy when llsmflow runs
without a checkout. The list is :data:`WORKFLOW_DATA` (``tests/test_pkg_wheel.py`` checks the wheel holds
every file a provenance crate's workflow snapshot takes). MANIFEST.in puts the same files in the sdist.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: Files copied into ``llsmflow/_workflow/`` (globs relative to the repository root).
WORKFLOW_DATA = (
    "Snakefile",
    "workflow/rules/*.smk",
    "workflow/scripts/*.py",
    "workflow/report/*.rst",
    "config/schema.yaml",
    "config/config.yaml",
    "config/README.md",
    "profiles/*/config.yaml",
    "envs/*.yaml",
    "envs/apptainer/*.def",
)
PACKAGED_DIR = "llsmflow/_workflow"


class BuildPyWithWorkflow(build_py):
    """``build_py`` that also copies the workflow into ``llsmflow/_workflow/`` of the build."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install runs from the checkout, which holds the workflow itself
        found = 0
        for pattern in WORKFLOW_DATA:
            for source in sorted(ROOT.glob(pattern)):
                if source.is_file():
                    relative = source.relative_to(ROOT)
                    target = Path(self.build_lib, PACKAGED_DIR, relative)
                    self.mkpath(str(target.parent))
                    self.copy_file(str(source), str(target))
                    found += 1
        if not (ROOT / "Snakefile").is_file() or found == 0:
            raise SystemExit(f"no Snakefile under {ROOT}: the wheel must be built from an llsmflow checkout or sdist")


setup(cmdclass={"build_py": BuildPyWithWorkflow})
