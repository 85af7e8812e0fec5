"""Training and comparing MoE language models.

- :func:`train` runs one :class:`TrainConfig` (one process or ``torchrun`` DDP/FSDP): AdamW with
  warm-up and cosine decay, clipping, accumulation, bf16 autocast on CUDA, exact validation and
  test perplexity (best on validation, test reported once), atomic, verified safetensors
  checkpoints with exact ``resume``, CSV/TensorBoard logs and MoE diagnostics under
  ``runs/<name>/``; a locked run directory; a stop on divergence (:class:`TrainingDiverged`).
  :class:`Trainer` is that loop in named, overridable steps (``setup``, ``train_step``,
  ``evaluate``, ``log``, ``save_checkpoint``, ``finish``, ``fit``).
- :func:`compare` trains every method of the NAMEx family on the same data, shape, steps,
  optimiser and seeds and writes ``results.json``, ``results.md`` and plots (``nashmoe compare``).
- :func:`load_model` restores a trained model and its tokenizer from a checkpoint (``nashmoe
  eval``, ``nashmoe generate``).
"""

from nashmoe.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointWarning,
    find_checkpoint,
    load_checkpoint,
    load_tensors,
    save_checkpoint,
    save_tensors,
    write_json_atomic,
)
from nashmoe.train.compare import CompareResult, compare, parse_seeds
from nashmoe.train.config import TrainConfig, build_model_config, parse_model_overrides
from nashmoe.train.diagnostics import MoEMonitor, base_grad_norm
from nashmoe.train.distributed import DistContext, init_distributed
from nashmoe.train.divergence import TrainingDiverged
from nashmoe.train.evaluate import evaluate
from nashmoe.train.loggers import CSVLogger, MetricsLogger, read_metrics
from nashmoe.train.optim import build_optimizer, lr_at, param_groups
from nashmoe.train.restore import load_model
from nashmoe.train.rundir import RunDirError, RunLock
from nashmoe.train.trainer import Trainer, TrainResult, train

__all__ = [
    "CSVLogger",
    "Checkpoint",
    "CheckpointError",
    "CheckpointWarning",
    "CompareResult",
    "DistContext",
    "MetricsLogger",
    "MoEMonitor",
    "RunDirError",
    "RunLock",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "base_grad_norm",
    "build_model_config",
    "build_optimizer",
    "compare",
    "evaluate",
    "find_checkpoint",
    "init_distributed",
    "load_checkpoint",
    "load_model",
    "load_tensors",
    "lr_at",
    "param_groups",
    "parse_model_overrides",
    "parse_seeds",
    "read_metrics",
    "save_checkpoint",
    "save_tensors",
    "train",
    "write_json_atomic",
]
