"""Where derived artefacts (trained BPE tokenizers) are cached on disk.

The cache directory is, in order: the ``cache_dir`` argument, ``$NASHMOE_CACHE``, or
``~/.cache/nashmoe``. Files are written atomically (a temporary file in the same folder, then
``os.replace``), so concurrent writers, e.g. several DDP ranks, never leave a half-written file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["CACHE_ENV_VAR", "atomic_write_text", "resolve_cache_dir"]

CACHE_ENV_VAR = "NASHMOE_CACHE"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory (created if needed): ``cache_dir``, ``$NASHMOE_CACHE`` or
    ``~/.cache/nashmoe``."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "nashmoe"
    path = Path(cache_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
