"""Optional dependencies, imported lazily with an error that names the extra providing them.

The core needs only torch and numpy; everything else lives in an extra of ``pyproject.toml``
(``plot``, ``ref``, ``train``, ``tensorboard``, ``vision``, ``torchjd``) and is imported where it
is used.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["pyplot", "require"]


def require(module: str, *, extra: str, purpose: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise an ``ImportError`` that says what needs it and how to get it.

    Args:
        module: dotted module name (``"safetensors.torch"``).
        extra: the ``nashmoe`` extra that installs it (``pip install 'nashmoe[extra]'``).
        purpose: what needs it, the start of the message (``"checkpoints"``).
        package: the distribution's name when it differs from the top-level module
            (``"Pillow"`` for ``PIL``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        name = package or module.split(".")[0]
        raise ImportError(f"{purpose} needs {name}: pip install 'nashmoe[{extra}]'") from err


def pyplot(purpose: str = "plots") -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (files only, no display)."""
    matplotlib = require("matplotlib", extra="plot", purpose=purpose)
    matplotlib.use("Agg", force=True)
    return importlib.import_module("matplotlib.pyplot")
