"""Checkpoints: model and optimizer tensors in safetensors, everything else in JSON, written
atomically and verified.

Layout of ``<run>/checkpoints/``::

    latest.json                     {"step": 400, "dir": "step-00000400"}   (the pointer)
    step-00000400/
        model.safetensors           model weights and buffers (tied tensors stored once)
        optimizer.safetensors       AdamW moments, keyed by parameter name
        best_model.safetensors      the best-on-validation weights so far (when evaluated)
        state.json                  step, RNG states, data generator, schedule, configs,
                                    tokenizer, optimizer param groups, best-so-far, counters
        manifest.json               size and SHA-256 of every file above

A checkpoint directory is first written under a temporary name (tensors must be finite), its
files flushed to disk, then renamed into place (``os.replace``) and read back against its
manifest; only then is ``latest.json`` replaced (again through a temporary file and
``os.replace``), and only then are older checkpoints pruned. A crash or a full disk at any point
leaves ``latest.json`` pointing at a complete checkpoint.

Loading checks every file against the manifest. A damaged or incomplete checkpoint is skipped
for the newest intact one in the same ``checkpoints/`` directory, with a
:class:`CheckpointWarning` that names what was damaged; when none is intact,
:class:`CheckpointError` lists every problem. Safetensors is imported lazily
(``pip install 'nashmoe[train]'``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nashmoe._optional import require
from nashmoe._warnings import NashmoeWarning
from nashmoe.train._process import pid_alive

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointWarning",
    "find_checkpoint",
    "has_checkpoint",
    "load_checkpoint",
    "load_tensors",
    "optimizer_from_tensors",
    "optimizer_to_tensors",
    "read_json",
    "save_checkpoint",
    "save_tensors",
    "verify_checkpoint",
    "write_json_atomic",
]

POINTER = "latest.json"
STATE = "state.json"
MODEL = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
BEST_MODEL = "best_model.safetensors"
MANIFEST = "manifest.json"
#: Key of ``state.json`` that says the checkpoint was written with a manifest (so a missing
#: ``manifest.json`` is damage, not an older nashmoe's checkpoint).
FORMAT_KEY = "checkpoint_format"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_DIR = re.compile(r"^\.(?:tmp|stale)-step-\d+-(\d+)$")
_TMP_POINTER = re.compile(r"^\.latest\.json\.tmp-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, incomplete or holding non-finite tensors (the
    message names the file)."""


class CheckpointWarning(NashmoeWarning):
    """A damaged checkpoint was skipped for an older intact one."""


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


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON value in ``path``.

    Raises:
        CheckpointError: the file is not valid JSON (or not UTF-8); the message names it.
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _check_finite(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    for name, t in tensors.items():
        if (
            isinstance(t, torch.Tensor)
            and t.is_floating_point()
            and not bool(torch.isfinite(t).all())
        ):
            raise CheckpointError(f"{what}: tensor {name!r} holds NaN or infinite values")


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Save tensors to a safetensors file; tensors that share storage (tied embeddings) are
    stored once and restored as aliases by :func:`load_tensors`.

    Returns:
        The SHA-256 (hex) of the bytes written.
    """
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
    data = st.save(unique, metadata=meta)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def _header_metadata(data: bytes) -> dict[str, str]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]).get("__metadata__") or {}


def load_tensors(
    path: str | os.PathLike[str], *, sha256: str | None = None
) -> dict[str, torch.Tensor]:
    """Tensors saved by :func:`save_tensors` (aliases restored as the same tensor).

    Args:
        sha256: the expected checksum of the file (None: not checked).

    Raises:
        CheckpointError: the file is unreadable as safetensors, or its checksum differs.
    """
    st = _safetensors()
    path = Path(path)
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(f"{path} is damaged: its SHA-256 differs from the manifest's")
    try:
        tensors = st.load(data)
        meta = _header_metadata(data)
        aliases = json.loads(meta.get("aliases", "{}"))
    except Exception as e:  # SafetensorError, struct.error, JSON errors: a damaged file
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    for alias, target in aliases.items():
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
    """A verified checkpoint directory on disk; tensors are read on demand (checked against the
    manifest again, and for finiteness)."""

    path: Path
    state: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def has_best(self) -> bool:
        return (self.path / BEST_MODEL).exists()

    @property
    def has_optimizer(self) -> bool:
        return (self.path / OPTIMIZER).exists() and "optimizer" in self.state

    def _load(self, name: str) -> dict[str, torch.Tensor]:
        files = (self.manifest or {}).get("files", {})
        tensors = load_tensors(self.path / name, sha256=(files.get(name) or {}).get("sha256"))
        _check_finite(tensors, str(self.path / name))
        return tensors

    def model_state(self) -> dict[str, torch.Tensor]:
        return self._load(MODEL)

    def best_model_state(self) -> dict[str, torch.Tensor] | None:
        return self._load(BEST_MODEL) if self.has_best else None

    def optimizer_state(self) -> dict | None:
        if not self.has_optimizer:
            return None
        return optimizer_from_tensors(self._load(OPTIMIZER), self.state["optimizer"])


def _write_files(
    tmp: Path,
    *,
    model_state: Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, Any] | None,
    meta: dict[str, Any],
    best_model: Mapping[str, torch.Tensor] | str | os.PathLike[str] | None,
) -> dict[str, str]:
    """Write a checkpoint's files into ``tmp``; their SHA-256 by name."""
    hashes = {MODEL: save_tensors(tmp / MODEL, model_state)}
    if optimizer_state is not None:
        tensors, meta["optimizer"] = optimizer_to_tensors(optimizer_state)
        hashes[OPTIMIZER] = save_tensors(tmp / OPTIMIZER, tensors)
    if best_model is not None:
        if isinstance(best_model, (str, os.PathLike)):
            source = Path(best_model)
            expected = _manifest_sha(source.parent, source.name)
            try:
                os.link(source, tmp / BEST_MODEL)
            except OSError:
                shutil.copyfile(source, tmp / BEST_MODEL)
            hashes[BEST_MODEL] = _sha256_file(tmp / BEST_MODEL)
            if expected is not None and expected != hashes[BEST_MODEL]:
                raise CheckpointError(
                    f"{source} is damaged: its SHA-256 differs from the manifest's"
                )
        else:
            hashes[BEST_MODEL] = save_tensors(tmp / BEST_MODEL, best_model)
    meta[FORMAT_KEY] = 1
    with open(tmp / STATE, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    hashes[STATE] = _sha256_file(tmp / STATE)
    for fname in hashes:
        _fsync_file(tmp / fname)
    manifest = {
        "format": 1,
        "step": meta["step"],
        "files": {n: {"bytes": (tmp / n).stat().st_size, "sha256": h} for n, h in hashes.items()},
    }
    with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    return hashes


def _manifest_sha(directory: Path, name: str) -> str | None:
    try:
        return read_json(directory / MANIFEST)["files"][name]["sha256"]
    except (OSError, CheckpointError, KeyError, TypeError):
        return None


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
    """Write checkpoint ``step`` under ``root`` atomically, verify it, point ``latest.json`` at
    it, then prune older checkpoints.

    Args:
        model_state: full model state dict (CPU or device tensors).
        optimizer_state: optimizer state dict keyed by parameter name, or None.
        state: JSON-serialisable run state; ``step`` and the optimizer's param groups are added.
        best_model: the best weights so far: a state dict to write, or the path of an existing
            ``best_model.safetensors`` to link (unchanged since an earlier checkpoint), or None.
        keep: how many step checkpoints to keep (older ones are deleted after the commit).

    Returns:
        The checkpoint directory.

    Raises:
        CheckpointError: a tensor is not finite (nothing is written).
        OSError: the write failed (e.g. a full disk: ``errno.ENOSPC``); the message names the
            checkpoint, its temporary files are removed and ``latest.json`` is unchanged.
    """
    root = Path(root)
    name = f"step-{step:08d}"
    _check_finite(model_state, f"checkpoint {name}: model state")
    if optimizer_state is not None:
        _check_finite(optimizer_to_tensors(optimizer_state)[0], f"checkpoint {name}: optimizer")
    if isinstance(best_model, Mapping):
        _check_finite(best_model, f"checkpoint {name}: best model")
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    meta = dict(state)
    meta["step"] = int(step)
    moved = False
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _write_files(
            tmp,
            model_state=model_state,
            optimizer_state=optimizer_state,
            meta=meta,
            best_model=best_model,
        )
        if final.exists():  # left over from a run that crashed before pointing at it
            stale = root / f".stale-{name}-{os.getpid()}"
            os.replace(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, final)
        moved = True
        _fsync_dir(root)
        problems = verify_checkpoint(final, need_optimizer=optimizer_state is not None)
        if problems:
            raise OSError(errno.EIO, f"read-back of {final} failed: {'; '.join(problems)}")
        write_json_atomic(root / POINTER, {"step": int(step), "dir": name})
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved:  # renamed into place but never pointed at: not a checkpoint
            shutil.rmtree(final, ignore_errors=True)
        message = f"cannot write checkpoint {final}: {e.strerror or e}"
        if e.errno is None:
            raise OSError(message) from e
        raise OSError(e.errno, message, e.filename) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep=keep, current=name)
    return final


def _prune(root: Path, *, keep: int, current: str) -> None:
    """Keep the newest ``keep`` step checkpoints up to ``current`` (which ``latest.json`` points
    at); delete older ones, newer ones (left by an earlier attempt that was abandoned, e.g. a
    damaged checkpoint the run fell back from), and the temporary directories (and pointer files)
    of this process or of dead processes (never another live writer's)."""
    current_step = int(current.split("-")[1])
    steps = sorted(
        (int(m.group(1)), p.name)
        for p in root.iterdir()
        if p.is_dir() and (m := _STEP_DIR.match(p.name))
    )
    keep_names = {n for s, n in steps if s <= current_step}
    keep_names = set(sorted(keep_names)[-keep:]) | {current}
    for _, n in steps:
        if n not in keep_names:
            shutil.rmtree(root / n, ignore_errors=True)
    for p in root.iterdir():
        m = _TMP_DIR.match(p.name)
        if m and p.is_dir():
            pid = int(m.group(1))
            if pid == os.getpid() or not pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)
        elif (m := _TMP_POINTER.match(p.name)) and not pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)  # a pointer write cut short by a killed process


def _safetensors_problem(file: Path) -> str | None:
    """What is wrong with the structure of a safetensors file that no manifest describes: its
    header must parse and its size must match the header's data offsets (a truncated or
    overwritten file)."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError("header length beyond the end of the file")
            header = json.loads(f.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        if 8 + n + max(ends, default=0) != size:
            raise ValueError(f"{size} bytes, the header describes {8 + n + max(ends, default=0)}")
    except OSError as e:
        return f"{file} is unreadable ({e.strerror or e})"
    except Exception as e:  # struct.error, JSON errors, odd header values
        return f"{file} is not a readable safetensors file ({e})"
    return None


def verify_checkpoint(path: str | os.PathLike[str], *, need_optimizer: bool = False) -> list[str]:
    """What is wrong with the checkpoint directory ``path`` (an empty list: intact).

    Every file in ``manifest.json`` must exist with its recorded size and SHA-256, and
    ``state.json`` must be valid JSON. A checkpoint written before manifests existed is accepted
    when its model file and state are present. ``need_optimizer``: a missing optimizer state is
    a problem too.
    """
    path = Path(path)
    problems: list[str] = []
    try:
        state = read_json(path / STATE)
        if not isinstance(state, dict) or "step" not in state:
            problems.append(f"{path / STATE} has no step")
    except FileNotFoundError:
        problems.append(f"{path / STATE} is missing")
        state = {}
    except (OSError, CheckpointError) as e:
        problems.append(str(e))
        state = {}
    files: dict[str, Any] = {MODEL: None, OPTIMIZER: None}  # unless a manifest says more
    if (path / MANIFEST).exists():
        try:
            files = read_json(path / MANIFEST)["files"]
            if not isinstance(files, dict) or MODEL not in files:
                raise KeyError(MODEL)
        except (OSError, CheckpointError) as e:
            return [*problems, str(e)]
        except (KeyError, TypeError):
            return [*problems, f"{path / MANIFEST} does not list {MODEL}"]
    elif isinstance(state, dict) and FORMAT_KEY in state:
        return [*problems, f"{path / MANIFEST} is missing"]
    elif not problems:
        warnings.warn(
            f"checkpoint {path} has no {MANIFEST} (written by an older nashmoe); its files "
            "cannot be verified",
            CheckpointWarning,
            stacklevel=2,
        )
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            if name == OPTIMIZER and not need_optimizer:
                continue
            problems.append(f"{file} is missing")
            continue
        if entry is None:
            if name.endswith(".safetensors") and (bad := _safetensors_problem(file)):
                problems.append(bad)
            continue
        if not isinstance(entry, dict):
            problems.append(f"{path / MANIFEST} is malformed (its entry for {name})")
            continue
        size = file.stat().st_size
        if size != entry.get("bytes"):
            problems.append(
                f"{file} is damaged: {size} bytes, the manifest says {entry.get('bytes')}"
            )
        elif _sha256_file(file) != entry.get("sha256"):
            problems.append(f"{file} is damaged: its SHA-256 differs from the manifest's")
    if need_optimizer and OPTIMIZER not in files and not problems:
        problems.append(f"{path / OPTIMIZER} is missing (the checkpoint has no optimizer state)")
    if need_optimizer and state and "optimizer" not in state and not problems:
        problems.append(f"{path / STATE} has no optimizer parameter groups")
    return problems


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    """The step directories under ``root``, newest first."""
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if p.is_dir() and (m := _STEP_DIR.match(p.name))
    ]
    return sorted(found, reverse=True)


def _checkpoints_root(path: Path) -> Path | None:
    """The ``checkpoints/`` directory ``path`` designates (itself or ``path/checkpoints``)."""
    for root in (path, path / "checkpoints"):
        if (root / POINTER).exists() or _step_dirs(root):
            return root
    return None


def has_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds anything that looks like a checkpoint (intact or not)."""
    path = Path(path)
    return (path / STATE).exists() or _checkpoints_root(path) is not None


def _candidates(root: Path) -> tuple[list[Path], list[str]]:
    """Checkpoint directories to try, newest first: the pointer's target, then older step
    directories; plus the problems of the pointer itself."""
    problems: list[str] = []
    pointer = root / POINTER
    dirs = _step_dirs(root)
    if pointer.exists():
        try:
            target = read_json(pointer)
            name = target["dir"]
            step = int(target["step"])
            if not isinstance(name, str) or not _STEP_DIR.match(name):
                raise ValueError(name)
        except (OSError, CheckpointError, KeyError, TypeError, ValueError) as e:
            problems.append(str(e) if isinstance(e, CheckpointError) else f"{pointer} is malformed")
        else:
            older = [p for s, p in dirs if s < step]
            return [root / name, *older], problems
    return [p for _, p in dirs], problems


def find_checkpoint(path: str | os.PathLike[str]) -> Path | None:
    """The checkpoint directory that ``path`` designates, unverified (None when it holds none).

    ``path`` may be a checkpoint directory (with ``state.json``), a ``checkpoints/`` directory
    (with ``latest.json``), or a run directory (with ``checkpoints/latest.json``).
    """
    path = Path(path)
    if (path / STATE).is_file():
        return path
    root = _checkpoints_root(path)
    if root is None:
        return None
    candidates, _ = _candidates(root)
    return candidates[0] if candidates else None


def load_checkpoint(path: str | os.PathLike[str], *, need_optimizer: bool = False) -> Checkpoint:
    """Open the newest intact checkpoint that ``path`` designates (see :func:`find_checkpoint`).

    A damaged or incomplete latest checkpoint (see :func:`verify_checkpoint`) is skipped for the
    newest intact older one in the same ``checkpoints/`` directory, with a
    :class:`CheckpointWarning` naming what was damaged. An explicitly named checkpoint directory
    is never replaced by another.

    Args:
        need_optimizer: a checkpoint without its optimizer state does not count as intact.

    Raises:
        FileNotFoundError: no checkpoint there (the message names what was looked for).
        CheckpointError: no intact checkpoint (the message lists every problem).
    """
    path = Path(path)
    if (path / STATE).exists() or (path / MANIFEST).exists():
        candidates, problems = [path], []
        explicit = True
    else:
        root = _checkpoints_root(path)
        if root is None:
            raise FileNotFoundError(
                f"no checkpoint found at {path} (looked for {STATE}, {POINTER} and "
                f"checkpoints/{POINTER})"
            )
        candidates, problems = _candidates(root)
        explicit = False
    for candidate in candidates:
        found = verify_checkpoint(candidate, need_optimizer=need_optimizer)
        if not found:
            if problems:
                warnings.warn(
                    f"skipped damaged checkpoint data ({'; '.join(problems)}); using {candidate}",
                    CheckpointWarning,
                    stacklevel=2,
                )
            state = read_json(candidate / STATE)
            manifest = read_json(candidate / MANIFEST) if (candidate / MANIFEST).exists() else None
            return Checkpoint(path=candidate, state=state, manifest=manifest)
        problems += found if candidate.exists() else [f"{candidate} is missing"]
    where = path if explicit else f"{path} (tried {', '.join(p.name for p in candidates)})"
    hint = ""
    if need_optimizer and any(OPTIMIZER in p or "optimizer" in p for p in problems):
        hint = "; pass --allow-missing-optimizer to continue with a fresh optimizer"
    raise CheckpointError(f"no intact checkpoint at {where}: {'; '.join(problems)}{hint}")
