"""Per-run result files of the experiment commands (``vision``, ``finetune-cls``): one JSON file
per finished (method, seed) run, written atomically and reused by ``--resume`` only when the
settings that produced it (its ``key``) are the same."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["plan_runs", "save_run"]


def _normalised(key: dict[str, Any]) -> Any:
    return json.loads(json.dumps(key))  # tuples → lists, as a file read back has them


def plan_runs(
    folder: Path, items: Iterable[tuple[str, int, dict[str, Any]]], *, resume: bool
) -> tuple[dict[tuple[str, int], dict[str, Any]], list[tuple[str, int, dict[str, Any], Path]]]:
    """``(finished, todo)`` for ``items`` = ``(method, seed, key)``: with ``resume``, runs whose
    file ``folder/<method>-seed<seed>.json`` holds the same ``key`` are finished (an unreadable
    or damaged file is run again); the rest, with their file path, are to do."""
    finished: dict[tuple[str, int], dict[str, Any]] = {}
    todo = []
    for method, seed, key in items:
        key = _normalised(key)
        path = folder / f"{method}-seed{seed}.json"
        if resume and path.exists():
            try:
                saved = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                saved = None
            if isinstance(saved, dict) and saved.get("key") == key:
                finished[(method, seed)] = saved
                continue
        todo.append((method, seed, key, path))
    return finished, todo


def save_run(path: Path, result: dict[str, Any], key: dict[str, Any]) -> None:
    """Write ``result`` with its ``key`` to ``path`` atomically (a temporary file, then a
    rename: a killed process never leaves half a file)."""
    result["key"] = key
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
