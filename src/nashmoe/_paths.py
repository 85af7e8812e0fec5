"""Where the real data sets live: an explicit option or the ``NASHMOE_DATA`` variable.

The library never guesses a path. ``NASHMOE_DATA`` points at a folder laid out like the project's
shared data folder (``tinyshakespeare/input.txt``, ``brown/brown.zip``, ``fairness/adult.data``,
``cifar10/train.npz``, ...).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV_VAR", "data_file", "resolve_data_dir"]

DATA_ENV_VAR = "NASHMOE_DATA"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$NASHMOE_DATA``.

    Raises:
        FileNotFoundError: neither is set, or the folder does not exist (the message says which).
    """
    if data_dir is None:
        env = os.environ.get(DATA_ENV_VAR)
        if not env:
            raise FileNotFoundError(
                f"no data directory given: pass data_dir=... (or --data-dir) or set {DATA_ENV_VAR}"
            )
        data_dir, source = env, f"${DATA_ENV_VAR}"
    else:
        source = "data_dir"
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data directory {str(path)!r} (from {source}) does not exist")
    return path


def data_file(relative: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of ``relative`` inside the data directory; a clear error when it is missing."""
    root = resolve_data_dir(data_dir)
    path = root / relative
    if not path.exists():
        raise FileNotFoundError(f"missing data file {relative!r}: looked for {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} is a directory, not a file")
    return path
