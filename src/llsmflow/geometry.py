"""The old name of :mod:`llsmflow.deskew`: re-exports its public names.

Kept because docs, bench scripts and the workflow snapshots recorded in older provenance crates import
``llsmflow.geometry``. New code imports ``llsmflow.deskew`` (or one of its submodules). Each name is looked
up on first use, so importing this module costs no more than importing the package.
"""

from __future__ import annotations

import llsmflow.deskew as _deskew

__all__ = list(_deskew.__all__)


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_deskew, name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
