"""Package front doors that cost nothing until a name is used.

Each processing package (``llsmflow.decon``, ``llsmflow.stitch`` …) re-exports its public names so that
``from llsmflow.stitch import fuse_to_zarr`` keeps working, but a workflow job that needs one seam
(``llsmflow.stitch.transforms``) must not pay for the imports of all the others (dask, zarr, scikit-image).
Importing a submodule runs its package's ``__init__`` first, so that ``__init__`` may not import its
submodules eagerly: it maps each public name to the submodule that defines it, and the submodule is
imported on first attribute access (PEP 562 module ``__getattr__``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list]]:
    """Module-level ``__getattr__`` and ``__dir__`` that import ``package.<submodule>`` on first use.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    names : mapping
        Public name -> name of the submodule (relative to ``package``) that defines it, or an absolute
        ``llsmflow.…`` module for a name that moved to another package and is still answered here.

    Examples
    --------
    In ``llsmflow/stitch/__init__.py``::

        __getattr__, __dir__ = lazy_exports(__name__, {"fuse_to_zarr": "fusion", "Tile": "tiles"})
        __all__ = ["fuse_to_zarr", "Tile"]
    """

    def __getattr__(name: str):
        try:
            submodule = names[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        module = submodule if submodule.startswith("llsmflow.") else f"{package}.{submodule}"
        value = getattr(importlib.import_module(module), name)
        globals_of_package = importlib.import_module(package).__dict__
        globals_of_package[name] = value  # later lookups do not come back here
        return value

    def __dir__() -> list:
        return sorted(set(importlib.import_module(package).__dict__) | set(names))

    return __getattr__, __dir__
