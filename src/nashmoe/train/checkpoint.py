"""Checkpoints: model and optimizer tensors in safetensors, everything else in JSON, written
atomically.

Layout of ``<run>/checkpoints/``::

    latest.json                     {"step": 400, "dir": "step-00000400"}   (the pointer)
    step-00000400/
        model.safetensors           model weights and buffers (tied tensors stored once)
        optimizer.safetensors       AdamW moments, keyed by parameter name
        best_model.safetensors      the best-on-validation weights so far (when evaluated)
        state.json                  step, RNG states, data generator, schedule, configs,
                                    tokenizer, optimizer param groups, best-so-far, counters

A checkpoint directory is first written under a temporary name, its files flushed to disk, then
renamed into place (``os.replace``); only then is ``latest.json`` replaced (again through a
temporary file and ``os.replace``). A crash at any point leaves ``latest.json`` pointing at a
complete checkpoint. Safetensors is imported lazily (``pip install 'nashmoe[train]'``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nashmoe._optional import require

__all__ = [
    "Checkpoint",
    "find_checkpoint",
    "load_checkpoint",
    "load_tensors",
    "optimizer_from_tensors",
    "optimizer_to_tensors",
    "save_checkpoint",
    "save_tensors",
    "write_json_atomic",
]

POINTER = "latest.json"
STATE = "state.json"
MODEL = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
BEST_MODEL = "best_model.safetensors"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _safetensors() -> Any:
    return require("safetensors.torch", extra="train", purpose="checkpoints")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Save tensors to a safetensors file; tensors that share storage (tied embeddings) are
    stored once and restored as aliases by :func:`load_tensors`."""
    st = _safetensors()
    seen: dict[tuple, str] = {}
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, t in tensors.items():
        t = t.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() > 0 and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        unique[name] = t.to("cpu").contiguous()
    meta = dict(metadata or {})
    if aliases:
        meta["aliases"] = json.dumps(aliases)
    st.save_file(unique, str(path), metadata=meta)


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors saved by :func:`save_tensors` (aliases restored as the same tensor)."""
    st = _safetensors()
    from safetensors import safe_open

    tensors = st.load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    for alias, target in json.loads(meta.get("aliases", "{}")).items():
        tensors[alias] = tensors[target]
    return tensors


def optimizer_to_tensors(osd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict (keyed by parameter name, as
    ``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict`` gives it) into tensors
    and a JSON-serialisable remainder."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pname, entry in osd["state"].items():
        for k, v in entry.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pname}/{k}"] = v
            else:
                scalars.setdefault(str(pname), {})[k] = v
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in osd["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_tensors(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict:
    """Inverse of :func:`optimizer_to_tensors`."""
    state: dict[str, dict[str, Any]] = {}
    for key, t in tensors.items():
        pname, k = key.rsplit("/", 1)
        state.setdefault(pname, {})[k] = t
    for pname, entry in meta.get("scalars", {}).items():
        state.setdefault(pname, {}).update(entry)
    groups = [
        {k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


@dataclass
class Checkpoint:
    """A checkpoint directory on disk; tensors are read on demand."""

    path: Path
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def has_best(self) -> bool:
        return (self.path / BEST_MODEL).exists()

    def model_state(self) -> dict[str, torch.Tensor]:
        return load_tensors(self.path / MODEL)

    def best_model_state(self) -> dict[str, torch.Tensor] | None:
        return load_tensors(self.path / BEST_MODEL) if self.has_best else None

    def optimizer_state(self) -> dict | None:
        if not (self.path / OPTIMIZER).exists():
            return None
        return optimizer_from_tensors(load_tensors(self.path / OPTIMIZER), self.state["optimizer"])


def save_checkpoint(
    root: str | os.PathLike[str],
    step: int,
    *,
    model_state: Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, Any] | None,
    state: Mapping[str, Any],
    best_model: Mapping[str, torch.Tensor] | str | os.PathLike[str] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and point ``latest.json`` at it.

    Args:
        model_state: full model state dict (CPU or device tensors).
        optimizer_state: optimizer state dict keyed by parameter name, or None.
        state: JSON-serialisable run state; ``step`` and the optimizer's param groups are added.
        best_model: the best weights so far: a state dict to write, or the path of an existing
            ``best_model.safetensors`` to link (unchanged since an earlier checkpoint), or None.
        keep: how many step checkpoints to keep (older ones are deleted after the commit).

    Returns:
        The checkpoint directory.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    meta = dict(state)
    meta["step"] = int(step)
    files = [MODEL, STATE]
    save_tensors(tmp / MODEL, model_state)
    if optimizer_state is not None:
        tensors, meta["optimizer"] = optimizer_to_tensors(optimizer_state)
        save_tensors(tmp / OPTIMIZER, tensors)
        files.append(OPTIMIZER)
    if best_model is not None:
        if isinstance(best_model, (str, os.PathLike)):
            try:
                os.link(best_model, tmp / BEST_MODEL)
            except OSError:
                shutil.copyfile(best_model, tmp / BEST_MODEL)
        else:
            save_tensors(tmp / BEST_MODEL, best_model)
        files.append(BEST_MODEL)
    with open(tmp / STATE, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    for fname in files:
        _fsync_file(tmp / fname)
    _fsync_dir(tmp)
    if final.exists():  # left over from a run that crashed before pointing at it
        stale = root / f".stale-{name}-{os.getpid()}"
        os.replace(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(root)
    write_json_atomic(root / POINTER, {"step": int(step), "dir": name})
    _prune(root, keep=keep, current=name)
    return final


def _prune(root: Path, *, keep: int, current: str) -> None:
    steps = sorted(
        (int(m.group(1)), p.name)
        for p in root.iterdir()
        if p.is_dir() and (m := _STEP_DIR.match(p.name))
    )
    keep_names = {n for _, n in steps[-keep:]} | {current}
    for _, n in steps:
        if n not in keep_names:
            shutil.rmtree(root / n, ignore_errors=True)
    for p in root.iterdir():  # temporary directories of crashed writers
        if p.name.startswith((".tmp-", ".stale-")) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def find_checkpoint(path: str | os.PathLike[str]) -> Path | None:
    """The checkpoint directory that ``path`` designates, or None when it holds none.

    ``path`` may be a checkpoint directory (with ``state.json``), a ``checkpoints/`` directory
    (with ``latest.json``), or a run directory (with ``checkpoints/latest.json``).
    """
    path = Path(path)
    if (path / STATE).is_file():
        return path
    for root in (path, path / "checkpoints"):
        pointer = root / POINTER
        if pointer.is_file():
            with open(pointer, encoding="utf-8") as f:
                target = root / json.load(f)["dir"]
            if not (target / STATE).is_file():
                raise FileNotFoundError(f"{pointer} points at {target}, which has no {STATE}")
            return target
    return None


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Open the checkpoint that ``path`` designates (see :func:`find_checkpoint`).

    Raises:
        FileNotFoundError: no checkpoint there (the message names what was looked for).
    """
    found = find_checkpoint(path)
    if found is None:
        raise FileNotFoundError(
            f"no checkpoint found at {path} (looked for {STATE}, {POINTER} and "
            f"checkpoints/{POINTER})"
        )
    with open(found / STATE, encoding="utf-8") as f:
        state = json.load(f)
    return Checkpoint(path=found, state=state)
