"""Train one MoE language model: :func:`train` (one process or ``torchrun``).

The loop is nanoGPT's (Karpathy): random blocks, AdamW, warm-up plus cosine, gradient clipping and
accumulation, bf16 autocast on CUDA. Around it: the MoE balance loss is added (``out.loss +
out.aux_loss``); the validation split is evaluated exactly every ``eval_interval`` steps and at
the end; the best validation weights are the ones reported on test, once; checkpoints resume
exactly; rank 0 logs MoE diagnostics (α per layer, per-expert load, Nash residuals, statuses and
fallbacks, ‖∂L/∂E_m^{(1)}‖) and throughput to ``runs/<name>/metrics.csv`` (and TensorBoard).

Order of work in an optimiser step (it matters for exact resumption): train step → log (and
evaluate) → checkpoint. Evaluation runs the Nash solve, which updates the solver's warm start;
the checkpoint is written after it, so a resumed run starts from exactly the same state.

Commands (see also ``nashmoe train --help``)::

    nashmoe train --corpus shakespeare --preset tiny --method namex-full-mom --steps 2000
    nashmoe train --out runs/my-run --resume                  # continue after a crash
    nashmoe train --out runs/my-run --overwrite               # replace an earlier run
    torchrun --standalone --nproc_per_node=2 -m nashmoe.cli train --batch-size 32 ...

Safety: a run directory is locked (``run.lock``) while a run writes it; a new run over an
existing one needs ``overwrite``, ``resume=True`` needs a checkpoint; a non-finite loss or
gradient stops the run (:class:`~nashmoe.train.divergence.TrainingDiverged`) before the update
and keeps the last good checkpoint; checkpoints are verified when written and when resumed from.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import platform
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import nashmoe
from nashmoe.data import Corpus, get_batch, load_corpus
from nashmoe.models import GPT, GPTConfig
from nashmoe.moe import set_bargaining_stats
from nashmoe.train.checkpoint import (
    BEST_MODEL,
    Checkpoint,
    CheckpointError,
    CheckpointWarning,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_json_atomic,
)
from nashmoe.train.config import TrainConfig, build_model_config
from nashmoe.train.diagnostics import MoEMonitor, base_grad_norm
from nashmoe.train.distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_sum,
    average_gradients,
    barrier,
    init_distributed,
    shutdown_distributed,
    unwrap,
    wrap_model,
)
from nashmoe.train.divergence import TrainingDiverged, nonfinite_report
from nashmoe.train.evaluate import evaluate
from nashmoe.train.loggers import MetricsLogger
from nashmoe.train.optim import build_optimizer, lr_at
from nashmoe.train.progress import Progress
from nashmoe.train.rundir import RunDirError, RunLock, check_writable_dir, prepare_run_dir

__all__ = [
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "git_state",
    "numeric_settings",
    "resolve_dtype",
    "resume_checkpoint",
    "train",
]

# Fields that may differ between a run and its resumption (they do not change the numbers).
_RESUMABLE_CHANGES = {
    "data_dir",
    "cache_dir",
    "out_dir",
    "name",
    "tensorboard",
    "progress",
    "threads",
    "device",
    "keep_checkpoints",
}


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        validation, test: ``{"loss", "ppl", "tokens"}`` of the selected (best validation)
            weights (``valid``: a deprecated alias).
        final_validation: validation of the last step's weights (``final_valid``: alias).
        best_step: the step of the selected weights.
        params: ``{"total", "active"}`` parameters.
        timing: ``tokens_per_s``, ``step_time_s`` (mean over timed steps), ``train_time_s``,
            ``eval_time_s``, ``steps_timed``, ``steps_sampled``, ``earlier_wall_time_s``. The
            timed steps leave out the first step of each process (set-up costs) and the steps
            that sample the bargaining diagnostics (``steps_sampled``: the last step of each
            logging interval, which costs the propagating methods more), unless every step
            samples them (``log_interval`` 1). ``earlier_wall_time_s``: for a resumed run, the
            wall time of its earlier processes from their set-up up to the checkpoint resumed
            from (0 for a run trained in one process).
        nash: cumulative bargaining counts (``solves``, ``fallbacks``, ``not_converged``,
            ``status_counts``, ``residual_max``).
        base_grad_norm: the last logged ‖∂L/∂E_m^{(1)}‖ (None without an owned base).
        model: the selected model (unwrapped, in eval mode); not serialised.
    """

    config: TrainConfig
    model_config: GPTConfig
    run_dir: Path
    validation: dict[str, float]
    test: dict[str, float]
    final_validation: dict[str, float]
    best_step: int
    params: dict[str, int]
    timing: dict[str, float]
    nash: dict[str, Any]
    base_grad_norm: float | None = None
    model: GPT | None = field(default=None, repr=False)
    corpus: Corpus | None = field(default=None, repr=False)

    @property
    def valid(self) -> dict[str, float]:
        """Deprecated alias of :attr:`validation`."""
        return self.validation

    @property
    def final_valid(self) -> dict[str, float]:
        """Deprecated alias of :attr:`final_validation`."""
        return self.final_validation

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.config.method,
            "seed": self.config.seed,
            "corpus": self.config.corpus,
            "preset": self.config.preset,
            "steps": self.config.steps,
            "run_dir": str(self.run_dir),
            "validation": self.validation,
            "test": self.test,
            "final_validation": self.final_validation,
            "best_step": self.best_step,
            "params": self.params,
            "timing": self.timing,
            "nash": self.nash,
            "base_grad_norm": self.base_grad_norm,
            "config": self.config.to_dict(),
            "model_config": self.model_config.to_dict(),
        }


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` → bfloat16 on CUDA devices that support it, float32 elsewhere."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def git_state() -> dict[str, Any]:
    """The commit of the source tree the package runs from, and whether ``src/`` has uncommitted
    changes (None when it is not a git checkout)."""
    root = Path(nashmoe.__file__).resolve().parents[2]

    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None

    head = git("rev-parse", "HEAD")
    if head is None or head.returncode != 0:
        return {"commit": None, "dirty": None}
    diff = git("status", "--porcelain", "--", "src")
    dirty = None if diff is None else bool(diff.stdout.strip())
    return {"commit": head.stdout.strip(), "dirty": dirty}


def _full_model_state(model: nn.Module, ctx: DistContext) -> dict[str, torch.Tensor]:
    """A CPU copy of the full model state dict (FSDP: gathered, on rank 0 only)."""
    if ctx.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        return get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return {k: v.detach().to("cpu", copy=True) for k, v in unwrap(model).state_dict().items()}


def _load_full_model_state(
    model: nn.Module, state: dict[str, torch.Tensor], ctx: DistContext
) -> None:
    if ctx.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
        )

        set_model_state_dict(
            model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        )
        return
    unwrap(model).load_state_dict(state)


def _optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, ctx: DistContext) -> dict:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    target = model if ctx.strategy == "fsdp" else unwrap(model)
    return get_optimizer_state_dict(
        target,
        opt,
        options=StateDictOptions(full_state_dict=True, cpu_offload=ctx.strategy == "fsdp"),
    )


def _load_optimizer_state(
    model: nn.Module, opt: torch.optim.Optimizer, state: dict, ctx: DistContext
) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    target = model if ctx.strategy == "fsdp" else unwrap(model)
    set_optimizer_state_dict(target, opt, state, options=StateDictOptions(full_state_dict=True))


def _rng_state(device: torch.device) -> dict[str, str]:
    out = {"torch": _b64(torch.get_rng_state())}
    if device.type == "cuda":
        out["cuda"] = _b64(torch.cuda.get_rng_state(device))
    return out


def _set_rng_state(state: dict[str, str], device: torch.device) -> None:
    torch.set_rng_state(_unb64(state["torch"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(_unb64(state["cuda"]), device)


def numeric_settings(config: TrainConfig | dict[str, Any]) -> dict[str, Any]:
    """``config`` (a :class:`TrainConfig` or its ``to_dict()``) without the fields that may
    change between a run and its resumption (paths, names, threads, device, progress, logging
    back-ends: they do not change the numbers). Two runs with equal numeric settings are the
    same run (``nashmoe compare``/``ablate`` reuse a finished one)."""
    d = config.to_dict() if isinstance(config, TrainConfig) else config
    return {k: v for k, v in d.items() if k not in _RESUMABLE_CHANGES}


def _check_resumable(saved: dict[str, Any], config: TrainConfig) -> None:
    current = config.to_dict()
    diffs = [
        f"{k} (checkpoint {saved.get(k)!r}, now {current[k]!r})"
        for k in current
        if k not in _RESUMABLE_CHANGES and saved.get(k) != current[k]
    ]
    if diffs:
        raise ValueError(
            "cannot resume: the run's settings differ from the checkpoint's in " + "; ".join(diffs)
        )


def resume_checkpoint(
    config: TrainConfig,
    *,
    world_size: int = 1,
    required: bool = False,
    allow_missing_optimizer: bool = False,
) -> Checkpoint | None:
    """The newest intact checkpoint a resumed run of ``config`` continues from (None: start
    afresh).

    Args:
        required: no checkpoint at all is an error (``--resume`` with nothing to resume).
        allow_missing_optimizer: a checkpoint without its optimizer state is usable (the
            optimizer then starts afresh); otherwise such a checkpoint is skipped for an older
            complete one, and an error when there is none.

    Raises:
        RunDirError: ``required`` and the run directory holds no checkpoint.
        CheckpointError: no intact checkpoint (each problem named).
        ValueError: the checkpoint was written with different settings or process count.
    """
    if not has_checkpoint(Path(config.out_dir) / "checkpoints"):
        if required:
            raise RunDirError(
                f"--resume: nothing to resume in {config.out_dir} (no checkpoints/latest.json); "
                "start without --resume"
            )
        return None
    checkpoint = load_checkpoint(
        Path(config.out_dir) / "checkpoints", need_optimizer=not allow_missing_optimizer
    )
    _check_resumable(checkpoint.state["config"], config)
    if checkpoint.state.get("world_size", 1) != world_size:
        raise ValueError(
            f"cannot resume: the checkpoint was written by "
            f"{checkpoint.state.get('world_size')} process(es), this run has {world_size}"
        )
    return checkpoint


def corpus_for(config: TrainConfig) -> Corpus:
    """Load the corpus a training configuration names (corpus, tokenizer, paths, vocabulary)."""
    return load_corpus(
        config.corpus,
        tokenizer=config.tokenizer,
        data_dir=config.data_dir,
        cache_dir=config.cache_dir,
        min_freq=config.min_freq,
        bpe_vocab_size=config.bpe_vocab_size,
    )


def train(
    config: TrainConfig,
    *,
    corpus: Corpus | None = None,
    resume: bool | str = False,
    overwrite: bool = False,
    allow_missing_optimizer: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    progress_stream=None,
) -> TrainResult:
    """Train one model as ``config`` describes and evaluate it (see the module docstring):
    ``Trainer(config, ...).fit()``.

    Args:
        config: the run's settings.
        corpus: an already loaded corpus (``nashmoe compare`` loads it once); default: loaded
            from ``config``.
        resume: ``True``: continue from the run directory's newest intact checkpoint (an error
            when there is none); ``"auto"``: the same when there is one, else a fresh start;
            ``False``: a fresh start, in an empty directory unless ``overwrite``. The settings
            must match the checkpoint's, except the output, data location, logging and device
            fields.
        overwrite: start afresh over an earlier run in ``config.out_dir`` (its checkpoints,
            logs and results are deleted first).
        allow_missing_optimizer: resume from a checkpoint whose optimizer state is missing,
            with a fresh optimizer (otherwise an older complete checkpoint is used, or it is an
            error).
        on_step: called on every rank after every optimiser step (before its checkpoint is
            written) with the step number and the metrics logged at that step (empty when none).
        progress_stream: where the plain progress fallback writes (default stderr).

    Returns:
        A :class:`TrainResult` with the selected model.

    Raises:
        RunDirError: the run directory is locked by another process, holds an earlier run
            (without ``resume``/``overwrite``), has nothing to resume, or cannot be written.
        TrainingDiverged: a non-finite loss or gradient (the last good checkpoint is kept).
        OSError: a checkpoint could not be written (``latest.json`` still points at the last
            intact one).
    """
    return Trainer(
        config,
        corpus=corpus,
        resume=resume,
        overwrite=overwrite,
        allow_missing_optimizer=allow_missing_optimizer,
        on_step=on_step,
        progress_stream=progress_stream,
    ).fit()


def _claim_run_dir(
    config: TrainConfig, ctx: DistContext, *, resume: bool | str, overwrite: bool
) -> RunLock | None:
    """Rank 0 checks and locks the run directory; every rank learns the outcome (so that an
    error stops all of them instead of leaving the others waiting in a collective)."""
    lock: RunLock | None = None
    error: Exception | None = None
    if ctx.is_main:
        try:
            check_writable_dir(config.out_dir, option="--out")
            lock = RunLock(config.out_dir).acquire()
            prepare_run_dir(config.out_dir, resume=resume, overwrite=overwrite)
        except (RunDirError, OSError) as e:
            error = e
            if lock is not None:
                lock.release()
                lock = None
    messages = all_gather_objects(None if error is None else str(error), ctx)
    if error is not None:
        raise error
    if messages[0] is not None:
        raise RunDirError(messages[0])
    return lock


class Trainer:
    """The training loop of :func:`train`, in named steps that a reader can follow and a
    subclass can override (as torchtitan's and Lightning's loops are laid out).

    :meth:`fit` runs, in this order::

        setup()                                  # data, model, optimiser, resume, logs
        for step in range(start_step, steps):
            metrics = train_step(step)           # one optimiser step (+ training metrics)
            if should_evaluate(step + 1):
                metrics |= evaluate(step + 1)    # validation; keeps the best weights
            log(step + 1, metrics)               # metrics.csv / TensorBoard, progress bar
            if should_checkpoint(step + 1):
                save_checkpoint(step + 1)        # verified, atomic
        return finish()                          # select on validation, test once

    The order inside a step matters for exact resumption (evaluation runs the Nash solve, which
    updates the solver's warm start, so the checkpoint is written after it). Distributed runs
    (DDP, FSDP2 under ``torchrun``) go through the same methods; every collective is reached
    on every rank. A subclass that overrides a step should call ``super()`` unless it replaces
    the step entirely (e.g. ``log`` to add a logger, ``evaluate`` to add a metric).

    Attributes set by :meth:`setup` (among others): ``ctx`` (the process group and device),
    ``corpus``, ``model`` (unwrapped) and ``wrapped`` (DDP / FSDP), ``optimizer``,
    ``generator`` (the data order), ``monitor`` (MoE diagnostics), ``logger``, ``start_step``,
    ``best`` (``{"step", "val_loss", "valid"}``), ``last_valid``, ``timing``.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        corpus: Corpus | None = None,
        resume: bool | str = False,
        overwrite: bool = False,
        allow_missing_optimizer: bool = False,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
        progress_stream=None,
    ) -> None:
        if resume not in (True, False, "auto"):
            raise ValueError(f"resume must be True, False or 'auto', got {resume!r}")
        self.config = config
        self.corpus = corpus
        self.resume = resume
        self.overwrite = overwrite
        self.allow_missing_optimizer = allow_missing_optimizer
        self.on_step = on_step
        self.progress_stream = progress_stream
        self.run_dir = Path(config.out_dir)
        self.ckpt_root = self.run_dir / "checkpoints"

    # ------------------------------------------------------------------------------- the loop
    def fit(self) -> TrainResult:
        """Set up, train every remaining step, select on validation and evaluate test once."""
        self.ctx = init_distributed(self.config.device, self.config.distributed)
        lock = None
        try:
            lock = _claim_run_dir(
                self.config, self.ctx, resume=self.resume, overwrite=self.overwrite
            )
            self.setup()
            try:
                for step in range(self.start_step, self.config.steps):
                    done = step + 1
                    metrics = self.train_step(step)
                    if self.should_evaluate(done):
                        metrics.update(self.evaluate(done))
                    self.log(done, metrics)
                    if self.on_step is not None:
                        self.on_step(done, metrics)
                    if self.should_checkpoint(done):
                        self.save_checkpoint(done)
            finally:
                self.progress.close()
            return self.finish()
        finally:
            if lock is not None:
                lock.release()
            shutdown_distributed(self.ctx)

    def should_evaluate(self, done: int) -> bool:
        """Every ``eval_interval`` steps, and after the last step."""
        c = self.config
        return bool(c.eval_interval and done % c.eval_interval == 0) or done == c.steps

    def should_checkpoint(self, done: int) -> bool:
        """Every ``ckpt_interval`` steps, and after the last step."""
        c = self.config
        return bool(c.ckpt_interval and done % c.ckpt_interval == 0) or done == c.steps

    def should_log(self, done: int) -> bool:
        """Every ``log_interval`` steps, and after the last step."""
        return done % self.config.log_interval == 0 or done == self.config.steps

    # ------------------------------------------------------------------------------- set-up
    def setup(self) -> None:
        """Load the data, build the model and optimiser (identically seeded on every rank),
        restore a checkpoint when resuming, and open the logs and ``config.json``."""
        self._process_t0 = time.perf_counter()
        config, ctx = self.config, self.ctx
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.device = device = ctx.device
        micro, rem = divmod(config.batch_size, config.grad_accum * ctx.world_size)
        if rem or micro < 1:
            raise ValueError(
                f"batch_size={config.batch_size} must be a multiple of grad_accum × world_size "
                f"= {config.grad_accum} × {ctx.world_size}"
            )
        self.micro_batch_size = micro
        checkpoint = (
            resume_checkpoint(
                config,
                world_size=ctx.world_size,
                required=self.resume is True,
                allow_missing_optimizer=self.allow_missing_optimizer,
            )
            if self.resume
            else None
        )
        if self.corpus is None:
            self.corpus = corpus_for(config)
        corpus = self.corpus
        self.model_config = mcfg = build_model_config(config, vocab_size=corpus.vocab_size)
        for split in ("train", "validation", "test"):
            n = corpus.split(split).numel()
            if n < mcfg.block_size + 1:
                raise ValueError(
                    f"the {split} split has {n} tokens, fewer than block_size + 1 = "
                    f"{mcfg.block_size + 1}"
                )

        torch.manual_seed(config.seed)  # identical initialisation on every rank
        self.model = model = GPT(mcfg).to(device)
        self.params = model.num_parameters()
        # Dropout / router noise: a per-rank stream; data order: one generator, equal on all ranks.
        torch.manual_seed(config.seed + 1 + ctx.rank)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.wrapped, self.replicated = wrap_model(
            model, ctx, find_unused_parameters=(config.method == "smoe")
        )
        self.optimizer = build_optimizer(
            model,
            lr=config.lr,
            weight_decay=config.weight_decay,
            betas=(config.beta1, config.beta2),
        )
        self.amp_dtype = resolve_dtype(config.dtype, device)
        self.monitor = MoEMonitor()
        self.start_step = 0
        self.best: dict[str, Any] = {"step": None, "val_loss": math.inf, "valid": None}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_file: Path | None = None  # best weights already on disk (unchanged since)
        self.timing = {
            "train_time_s": 0.0,
            "eval_time_s": 0.0,
            "steps_timed": 0,
            "tokens_timed": 0,
            "sampled_time_s": 0.0,
            "steps_sampled": 0,
        }
        # the wall time of the earlier processes of a resumed run, up to its checkpoint
        self.earlier_wall_time_s = 0.0
        self.last_valid: dict[str, float] | None = None
        self.last_base_norm: float | None = None
        self.last_checkpoint: Path | None = None
        if checkpoint is not None:
            self.restore(checkpoint)

        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed = checkpoint is not None
        self.logger = MetricsLogger(
            self.run_dir,
            tensorboard=config.tensorboard,
            resume_step=self.start_step if resumed else None,
            enabled=ctx.is_main,
        )
        if ctx.is_main:
            write_json_atomic(self.run_dir / "config.json", self._config_record(resumed))
        self.progress = Progress(
            config.steps,
            start=self.start_step,
            desc=f"{config.method} s{config.seed}",
            enabled=ctx.is_main and config.progress,
            stream=self.progress_stream,
        )
        self.is_ddp = ctx.distributed and ctx.strategy == "ddp"
        self.tokens_per_step = config.batch_size * mcfg.block_size
        self._pending_loss = torch.zeros((), dtype=torch.float64, device=device)
        self._pending_aux = torch.zeros((), dtype=torch.float64, device=device)
        self._pending_steps = 0
        self._interval_time = 0.0
        self._interval_tokens = 0
        self._interval_timed_steps = 0
        self.eval_kwargs = dict(
            block_size=mcfg.block_size,
            batch_size=config.eval_batch_size,
            device=device,
            ctx=ctx,
            autocast=self.autocast,
        )
        self.eval_model = self.wrapped if ctx.strategy == "fsdp" else model
        self.wrapped.train()

    def autocast(self):
        """bf16 autocast when ``dtype`` resolves to bfloat16; nothing in float32."""
        if self.amp_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue exactly from ``checkpoint``: weights, optimiser, RNG streams, data order,
        diagnostics, the best weights so far and the timers."""
        st, ctx = checkpoint.state, self.ctx
        _load_full_model_state(self.wrapped, checkpoint.model_state(), ctx)
        opt_state = checkpoint.optimizer_state()
        if opt_state is not None:
            _load_optimizer_state(self.wrapped, self.optimizer, opt_state, ctx)
        elif ctx.is_main:
            warnings.warn(
                f"resuming from {checkpoint.path} without its optimizer state "
                "(allow_missing_optimizer): AdamW starts afresh, so the run is not an exact "
                "continuation",
                CheckpointWarning,
                stacklevel=2,
            )
        _set_rng_state(st["rng"][ctx.rank], self.device)
        self.generator.set_state(_unb64(st["data_generator"]))
        self.monitor.load_state_dict(st["monitor"])
        self.best = st["best"]
        self.timing = {**self.timing, **st["timing"]}  # older checkpoints: no sampled_*
        self.earlier_wall_time_s = float(self.timing.pop("wall_time_s", 0.0))
        self.last_valid = st.get("last_valid")
        self.last_base_norm = st.get("base_grad_norm")
        if checkpoint.has_best:
            self.best_state = checkpoint.best_model_state()
            self.best_file = checkpoint.path / BEST_MODEL
        self.start_step = checkpoint.step
        self.last_checkpoint = checkpoint.path

    def _config_record(self, resumed: bool) -> dict[str, Any]:
        """What ``config.json`` holds: the resolved settings and the environment."""
        ctx = self.ctx
        return {
            "train": self.config.to_dict(),
            "model": self.model_config.to_dict(),
            "params": self.params,
            "corpus": self.corpus.info,
            "world_size": ctx.world_size,
            "micro_batch_size": self.micro_batch_size,
            "device": str(self.device),
            "autocast_dtype": str(self.amp_dtype).replace("torch.", ""),
            "nashmoe_version": nashmoe.__version__,
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "git": git_state(),
            "resumed_from_step": self.start_step if resumed else None,
        }

    # ---------------------------------------------------------------------- one optimiser step
    def train_step(self, step: int) -> dict[str, float]:
        """One optimiser step (``grad_accum`` micro-batches, gradient clipping, a divergence
        check before the update); returns the training metrics when ``step + 1`` is a logging
        step, else ``{}``.

        Raises:
            TrainingDiverged: a non-finite loss or gradient norm (the weights stay those of the
                last step).
        """
        config, ctx, device = self.config, self.ctx, self.device
        wrapped, opt = self.wrapped, self.optimizer
        t0 = time.perf_counter()
        lr = lr_at(
            step, lr=config.lr, min_lr=config.min_lr, warmup=config.warmup, total=config.steps
        )
        for group in opt.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), dtype=torch.float64, device=device)
        # the bargaining diagnostics: sampled at the last step of each logging interval
        # (their extra cost is kept out of the step-time statistics, see below)
        sample_stats = self.should_log(step + 1)
        set_bargaining_stats(self.model, sample_stats)
        try:
            for m in range(config.grad_accum):
                x, y = get_batch(
                    self.corpus.train,
                    batch_size=self.micro_batch_size,
                    block_size=self.model_config.block_size,
                    generator=self.generator,
                    device=device,
                    rank=ctx.rank,
                    world_size=ctx.world_size,
                )
                sync = (
                    wrapped.no_sync()
                    if self.is_ddp and m < config.grad_accum - 1
                    else contextlib.nullcontext()
                )
                with sync:
                    with self.autocast():
                        out = wrapped(x, y)
                    loss = (out.loss + out.aux_loss) / config.grad_accum
                    loss.backward()
                step_loss += loss.detach().double()
                self._pending_loss += out.loss.detach().double() / config.grad_accum
                self._pending_aux += out.aux_loss.detach().double() / config.grad_accum
                self.monitor.update(out.aux)
        finally:
            if sample_stats:  # evaluation and other callers: off, whatever happened
                set_bargaining_stats(self.model, False)
        average_gradients(self.replicated, ctx)  # FSDP: the parameters it leaves unsharded
        done = step + 1
        log_now = self.should_log(done)
        base_norm = base_grad_norm(self.model) if log_now else None
        if config.grad_clip > 0:
            grad_norm = nn.utils.clip_grad_norm_(wrapped.parameters(), config.grad_clip)
            check_norm = grad_norm
        else:
            grad_norm = None
            grads = [p.grad for p in wrapped.parameters() if p.grad is not None]
            check_norm = nn.utils.get_total_norm(grads) if grads else None
        bad = nonfinite_report(step_loss, check_norm, ctx)
        if bad is not None:  # before the update: the weights stay those of the last step
            raise TrainingDiverged(done, bad, self.last_checkpoint)
        opt.step()
        opt.zero_grad(set_to_none=True)
        self._pending_steps += 1
        if device.type == "cuda" and log_now:
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t0
        # The steps that sample the bargaining diagnostics cost more for the propagating
        # methods only: they are timed apart ("sampled_time_s"), and the step-time statistics
        # use them only when no other step was timed (log_interval 1).
        if step > self.start_step:  # the first step of a process includes one-off set-up costs
            if sample_stats:
                self.timing["sampled_time_s"] += elapsed
                self.timing["steps_sampled"] += 1
            else:
                self.timing["train_time_s"] += elapsed
                self.timing["steps_timed"] += 1
                self.timing["tokens_timed"] += self.tokens_per_step
        if not (sample_stats and self._interval_timed_steps):  # the interval's own step_ms
            self._interval_time += elapsed
            self._interval_tokens += self.tokens_per_step
            self._interval_timed_steps += 1
        if not log_now:
            return {}
        return self._training_metrics(lr, grad_norm, base_norm)

    def _training_metrics(
        self, lr: float, grad_norm: torch.Tensor | None, base_norm: torch.Tensor | None
    ) -> dict[str, float]:
        """The metrics of the steps since the last log (averaged over ranks), then reset."""
        sums = torch.stack([self._pending_loss, self._pending_aux])
        all_reduce_sum(sums, self.ctx)
        sums = (sums / (self.ctx.world_size * self._pending_steps)).tolist()
        metrics = {
            "train/loss": sums[0],
            "train/aux_loss": sums[1],
            "train/lr": lr,
            "train/tokens_per_s": self._interval_tokens / max(self._interval_time, 1e-9),
            "train/step_ms": 1000.0 * self._interval_time / max(self._interval_timed_steps, 1),
        }
        if grad_norm is not None:
            metrics["train/grad_norm"] = float(grad_norm)
        if base_norm is not None:
            self.last_base_norm = float(base_norm)
            metrics["grad/base_norm"] = self.last_base_norm
        metrics.update(self.monitor.snapshot())
        self._pending_loss.zero_()
        self._pending_aux.zero_()
        self._pending_steps = 0
        self._interval_time, self._interval_tokens, self._interval_timed_steps = 0.0, 0, 0
        return metrics

    # ------------------------------------------------------------------------------- evaluation
    def evaluate(self, done: int) -> dict[str, float]:
        """Exact validation loss and perplexity after step ``done``; keeps the weights when they
        are the best so far (the selection is on validation only). Returns the metrics to log.

        Raises:
            TrainingDiverged: a non-finite validation loss.
        """
        te = time.perf_counter()
        valid = evaluate(self.eval_model, self.corpus.validation, **self.eval_kwargs)
        self.timing["eval_time_s"] += time.perf_counter() - te
        self.last_valid = valid
        if not math.isfinite(valid["loss"]):
            raise TrainingDiverged(done, f"validation loss ({valid['loss']})", self.last_checkpoint)
        if valid["loss"] < self.best["val_loss"]:
            self.best = {"step": done, "val_loss": valid["loss"], "valid": valid}
            self.best_state = _full_model_state(self.wrapped, self.ctx)
            self.best_file = None
        return {"validation/loss": valid["loss"], "validation/ppl": valid["ppl"]}

    # ------------------------------------------------------------------------------- logging
    def log(self, done: int, metrics: dict[str, float]) -> None:
        """Write ``metrics`` (rank 0: ``metrics.csv`` and TensorBoard) and move the progress bar."""
        if not metrics:
            self.progress.update(done)
            return
        self.logger.log(done, metrics)
        extra = {"val": metrics["validation/loss"]} if "validation/loss" in metrics else {}
        self.progress.update(
            done,
            loss=metrics.get("train/loss", float("nan")),
            tok_s=metrics.get("train/tokens_per_s", float("nan")),
            **extra,
        )

    # ------------------------------------------------------------------------------- checkpoint
    def save_checkpoint(self, done: int) -> None:
        """Write a verified checkpoint of step ``done`` (collectives on every rank, files on
        rank 0; the best weights are linked when unchanged since the last checkpoint).

        Raises:
            OSError: on every rank, when rank 0 could not write it.
        """
        self.best_file, self.last_checkpoint = _write_checkpoint(
            self.ckpt_root,
            done,
            ctx=self.ctx,
            wrapped=self.wrapped,
            opt=self.optimizer,
            generator=self.generator,
            config=self.config,
            mcfg=self.model_config,
            corpus=self.corpus,
            monitor=self.monitor,
            best=self.best,
            best_state=self.best_state,
            best_file=self.best_file,
            timing={**self.timing, "wall_time_s": self.wall_time_s()},
            last_valid=self.last_valid,
            base_norm=self.last_base_norm,
        )

    def wall_time_s(self) -> float:
        """The run's wall time so far: the earlier processes' (up to the checkpoint resumed
        from) and this one's since :meth:`setup` began."""
        return self.earlier_wall_time_s + time.perf_counter() - self._process_t0

    # ------------------------------------------------------------------------------- the end
    def finish(self) -> TrainResult:
        """Load the weights selected on validation, evaluate test once, write ``result.json``."""
        config, ctx, timing = self.config, self.ctx, self.timing
        if self.best["step"] != config.steps and self.best_state is not None:
            _load_full_model_state(self.wrapped, self.best_state, ctx)
        te = time.perf_counter()
        test = evaluate(self.eval_model, self.corpus.test, **self.eval_kwargs)
        timing["eval_time_s"] += time.perf_counter() - te
        valid = self.best["valid"]
        if timing["steps_timed"]:
            train_time, steps, tokens = (
                timing["train_time_s"],
                timing["steps_timed"],
                timing["tokens_timed"],
            )
        else:  # every timed step sampled the diagnostics (log_interval 1)
            train_time, steps = timing["sampled_time_s"], timing["steps_sampled"]
            tokens = steps * self.tokens_per_step
        timing_out = {
            "tokens_per_s": tokens / max(train_time, 1e-9),
            "step_time_s": train_time / max(steps, 1),
            "train_time_s": train_time,
            "eval_time_s": timing["eval_time_s"],
            "steps_timed": steps,
            "steps_sampled": timing["steps_sampled"],
            "earlier_wall_time_s": self.earlier_wall_time_s,
        }
        result = TrainResult(
            config=config,
            model_config=self.model_config,
            run_dir=self.run_dir,
            validation=valid,
            test=test,
            final_validation=self.last_valid,
            best_step=self.best["step"],
            params=self.params,
            timing=timing_out,
            nash=self.monitor.totals(),
            base_grad_norm=self.last_base_norm,
            model=self.model.eval(),
            corpus=self.corpus,
        )
        if ctx.is_main:
            self.logger.log(
                config.steps,
                {
                    "test/loss": test["loss"],
                    "test/ppl": test["ppl"],
                    "selected/validation_loss": valid["loss"],
                    "selected/step": float(self.best["step"]),
                },
            )
            self.logger.close()
            write_json_atomic(self.run_dir / "result.json", result.to_dict())
        barrier(ctx)
        return result


def _write_checkpoint(
    root: Path,
    step: int,
    *,
    ctx: DistContext,
    wrapped: nn.Module,
    opt: torch.optim.Optimizer,
    generator: torch.Generator,
    config: TrainConfig,
    mcfg: GPTConfig,
    corpus: Corpus,
    monitor: MoEMonitor,
    best: dict[str, Any],
    best_state: dict[str, torch.Tensor] | None,
    best_file: Path | None,
    timing: dict[str, Any],
    last_valid: dict[str, float] | None,
    base_norm: float | None,
) -> tuple[Path | None, Path]:
    """Gather the state on every rank (collectives), write it on rank 0; returns the path of
    the best weights file now on disk and the checkpoint directory.

    Raises:
        OSError: on every rank, when rank 0 could not write the checkpoint.
    """
    model_state = _full_model_state(wrapped, ctx)
    opt_state = _optimizer_state(wrapped, opt, ctx)
    rng = all_gather_objects(_rng_state(ctx.device), ctx)
    error: Exception | None = None
    if ctx.is_main:
        state = {
            "config": config.to_dict(),
            "model_config": mcfg.to_dict(),
            "tokenizer": corpus.tokenizer.to_dict(),
            "corpus": {k: corpus.info.get(k) for k in ("corpus", "tokenizer", "vocab_size")},
            "world_size": ctx.world_size,
            "rng": rng,
            "data_generator": _b64(generator.get_state()),
            "schedule": {
                "lr": lr_at(
                    step - 1,
                    lr=config.lr,
                    min_lr=config.min_lr,
                    warmup=config.warmup,
                    total=config.steps,
                ),
                "warmup": config.warmup,
                "min_lr": config.min_lr,
                "total": config.steps,
            },
            "monitor": monitor.state_dict(),
            "best": best,
            "timing": timing,
            "last_valid": last_valid,
            "base_grad_norm": base_norm,
        }
        best_arg: Any = best_file if best_file is not None else best_state
        try:
            save_checkpoint(
                root,
                step,
                model_state=model_state,
                optimizer_state=opt_state,
                state=json.loads(json.dumps(state)),
                best_model=best_arg,
                keep=config.keep_checkpoints,
            )
        except (OSError, CheckpointError) as e:  # rank 0 only: tell the others, then stop
            error = e
    messages = all_gather_objects(None if error is None else str(error), ctx)
    if error is not None:
        raise error
    if messages[0] is not None:
        raise OSError(messages[0])
    final = root / f"step-{step:08d}"
    best_path = final / BEST_MODEL if best_state is not None else None
    return best_path, final
