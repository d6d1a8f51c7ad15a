"""The old name of :mod:`llsmflow.deskew`: re-exports its public names.

Kept because docs, bench scripts and the workflow snapshots recorded in older provenance crates import
``llsmflow.geometry``. New code imports ``llsmflow.deskew`` (or one of its submodules). Each name is looked
up on first use, so importing this module costs no more than importing the package.
"""

from llsmflow._lazy import lazy_exports
from llsmflow.deskew import _EXPORTS

__getattr__, __dir__ = lazy_exports(__name__, {name: f"llsmflow.deskew.{module}" for name, module in _EXPORTS.items()})
__all__ = sorted(_EXPORTS)
