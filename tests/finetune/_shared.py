"""``require_data`` from ``tests/conftest.py``, loaded by path.

``conftest`` is not a unique module name in this tree (tests/data and tests/fairness have their
own), so ``from conftest import require_data`` could pick the wrong file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"
_spec = importlib.util.spec_from_file_location("_nashmoe_tests_root_conftest", _ROOT_CONFTEST)
assert _spec is not None and _spec.loader is not None
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)

require_data = _module.require_data

__all__ = ["require_data"]
