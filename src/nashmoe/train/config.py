"""The settings of one training run: a frozen dataclass, resolved and validated on creation.

A run is fully described by a :class:`TrainConfig` (data, model shape, optimiser, evaluation,
logging, hardware); ``config.to_dict()`` is what ``runs/<name>/config.json`` holds, together with
the resolved model config. Model fields are given as overrides of a preset (``model``), checked
against :class:`~nashmoe.models.GPTConfig` and :class:`~nashmoe.moe.MoEConfig` by
:func:`parse_model_overrides` (``--set key=value`` on the command line, typed like the field's
default, as nanoGPT's configurator does but without ``exec``).
"""

from __future__ import annotations

import ast
import contextvars
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from nashmoe.data import CORPORA, TOKENIZERS, check_corpus_spec, corpus_label
from nashmoe.data._pretrained import is_tokenizer_path
from nashmoe.models import PRESETS, GPTConfig
from nashmoe.moe import METHODS, MoEConfig
from nashmoe.moe.config import MERGING_METHODS, NASH_METHODS, UnusedOptionError

__all__ = [
    "DISTRIBUTED",
    "DTYPES",
    "TrainConfig",
    "build_model_config",
    "options_for_method",
    "parse_model_overrides",
    "unused_options",
]

DTYPES = ("auto", "float32", "bfloat16")
"""``auto``: bfloat16 autocast on CUDA (when supported), float32 elsewhere."""
DISTRIBUTED = ("ddp", "fsdp")
"""Data-parallel strategy under ``torchrun`` (FSDP is meant for CUDA; it also runs on CPU)."""
TENSORBOARD = ("auto", "on", "off")

# GPTConfig fields a user may override (vocab_size comes from the corpus).
_MODEL_FIELDS = {f.name: f for f in fields(GPTConfig) if f.name not in ("vocab_size", "method")}
# MoEConfig fields that are per-layer settings (the rest come from GPTConfig).
_MOE_FIELDS = {
    f.name: f
    for f in fields(MoEConfig)
    if f.name
    not in (
        "method",
        "d_model",
        "d_ff",
        "num_experts",
        "top_k",
        "bias",
        "balance_coef",
        "unit",
        "segment_len",
        "first_segment",
        "init_std",
        "out_init_std",
    )
}


# True while TrainConfig.from_dict restores a saved config (its corpus files may be elsewhere).
_RESTORING: contextvars.ContextVar[bool] = contextvars.ContextVar("restoring", default=False)

_MOE = tuple(m for m in METHODS if m != "dense")
_MERGING_WHAT = "the merging methods (smear, camex, ep-camex, namex*)"
# GPTConfig fields (and MoEConfig fields with a non-None default) that only some methods use:
# field -> (methods, description).
_USED_BY: dict[str, tuple[tuple[str, ...], str]] = {
    "num_experts": (_MOE, "the MoE methods (every method but dense)"),
    "moe_every": (_MOE, "the MoE methods (every method but dense)"),
    "balance_coef": (_MOE, "the MoE methods (every method but dense)"),
    "top_k": (("smoe",), "method 'smoe'"),
    "segment_len": (MERGING_METHODS, _MERGING_WHAT),
    "first_segment": (MERGING_METHODS, _MERGING_WHAT),
    "nash_max_iter": (
        NASH_METHODS,
        "the NAMEx methods (namex, namex-full, namex-mom, namex-full-mom)",
    ),
    "nash_tol": (NASH_METHODS, "the NAMEx methods (namex, namex-full, namex-mom, namex-full-mom)"),
}


def _unused_reason(method: str, key: str, value: Any, *, moe: bool) -> str | None:
    """Why ``method`` would ignore the override ``key=value`` (None: it uses it)."""
    if key in _USED_BY:
        methods, what = _USED_BY[key]
        return None if method in methods else f"only used by {what}"
    if not moe:
        return None
    if method == "dense":
        return "a MoE option, and dense has no MoE layer"
    probe: dict[str, Any] = {"method": method, "d_model": 8, "d_ff": 8, "num_experts": 2}
    if method == "smoe":
        probe["top_k"] = 1
    try:
        MoEConfig(**probe, **{key: value})
    except UnusedOptionError as err:
        return f"only used by {err.used_by}"
    except (TypeError, ValueError):
        return None
    return None


def unused_options(method: str, model: dict[str, Any]) -> dict[str, str]:
    """The overrides in ``model`` (GPTConfig fields and ``moe_options``) that ``method`` does not
    use, with the reason: ``{key: "only used by ..."}``."""
    out: dict[str, str] = {}
    for key, value in model.items():
        if key == "moe_options":
            continue
        reason = _unused_reason(method, key, value, moe=False)
        if reason:
            out[key] = reason
    for key, value in (model.get("moe_options") or {}).items():
        reason = _unused_reason(method, key, value, moe=True)
        if reason:
            out[key] = reason
    return out


def options_for_method(model: dict[str, Any], method: str) -> dict[str, Any]:
    """``model`` without the overrides that ``method`` does not use (``nashmoe compare`` applies
    an option to the methods that use it and records it for those runs only)."""
    unused = unused_options(method, model)
    out = {k: v for k, v in model.items() if k not in unused and k != "moe_options"}
    moe = {k: v for k, v in (model.get("moe_options") or {}).items() if k not in unused}
    if moe:
        out["moe_options"] = moe
    return out


def _positive_int(name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs.

    Attributes:
        corpus, tokenizer, data_dir, cache_dir, min_freq, bpe_vocab_size: passed to
            :func:`nashmoe.data.load_corpus` (``tokenizer=None``: the corpus default).
        preset: model shape (``tiny``, ``small``, ``medium``).
        method: the MoE method of every MoE block.
        model: overrides of :class:`~nashmoe.models.GPTConfig` fields (``moe_options`` included).
        steps: optimiser steps.
        batch_size: sequences per optimiser step, over all ranks and accumulation micro-steps.
        grad_accum: micro-steps per optimiser step (gradients are averaged).
        lr, min_lr: peak and final learning rate (``min_lr=None``: ``lr / 10``).
        warmup: linear warm-up steps (``None``: 5% of ``steps``), then cosine decay to ``min_lr``.
        weight_decay, beta1, beta2: AdamW (decoupled) settings; weight decay applies to weight
            matrices and expert tensors only (see :func:`nashmoe.train.optim.param_groups`).
        grad_clip: global gradient-norm clip (0 disables).
        seed: model initialisation and data order (the same for every method).
        eval_interval: evaluate the validation split every this many steps (``None``: only at
            the end); the best validation checkpoint is the one reported on test.
        eval_batch_size: blocks per evaluation batch.
        log_interval: log training metrics every this many steps.
        ckpt_interval: write a checkpoint every this many steps (``None``: only at the end);
            must be a multiple of ``log_interval`` so a resumed run logs exactly the same rows.
        keep_checkpoints: how many step checkpoints to keep.
        out_dir: the run directory (``None``: ``runs/<name>``).
        name: run name (``None``: ``<corpus>-<preset>-<method>-s<seed>``).
        tensorboard: ``auto`` (when installed), ``on`` or ``off``.
        progress: show a progress bar.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto``, ``float32`` or ``bfloat16`` (autocast).
        distributed: ``ddp`` or ``fsdp`` (FSDP2, meant for CUDA), used under ``torchrun``.
        threads: torch CPU threads (``None``: leave torch's default).
    """

    corpus: str = "shakespeare"
    tokenizer: str | None = None
    data_dir: str | None = None
    cache_dir: str | None = None
    min_freq: int | None = None
    bpe_vocab_size: int | None = None
    preset: str = "tiny"
    method: str = "namex-full-mom"
    model: dict[str, Any] = field(default_factory=dict)
    steps: int = 1000
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float | None = None
    warmup: int | None = None
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    eval_interval: int | None = None
    eval_batch_size: int = 32
    log_interval: int = 10
    ckpt_interval: int | None = None
    keep_checkpoints: int = 2
    out_dir: str | None = None
    name: str | None = None
    tensorboard: str = "auto"
    progress: bool = True
    device: str = "auto"
    dtype: str = "auto"
    distributed: str = "ddp"
    threads: int | None = None

    def __post_init__(self) -> None:
        # a name, or a path that exists (not checked for a restored config: generating from a
        # checkpoint does not need the training files)
        if not isinstance(self.corpus, str) or not self.corpus:
            raise ValueError(
                f"corpus must be one of {', '.join(CORPORA)} or a path, got {self.corpus!r}"
            )
        if not _RESTORING.get():
            check_corpus_spec(self.corpus)
        if self.tokenizer is not None and (
            not isinstance(self.tokenizer, str)
            or (self.tokenizer not in TOKENIZERS and not is_tokenizer_path(self.tokenizer))
        ):
            raise ValueError(
                f"unknown tokenizer {self.tokenizer!r}; choose from {', '.join(TOKENIZERS)} or "
                "give a tokenizer.json file or a tokenizer directory"
            )
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        for name in ("steps", "batch_size", "grad_accum", "eval_batch_size", "log_interval"):
            _positive_int(name, getattr(self, name))
        for name in ("eval_interval", "ckpt_interval", "warmup", "threads"):
            if name == "warmup":
                if self.warmup is not None and (
                    not isinstance(self.warmup, int) or self.warmup < 0
                ):
                    raise ValueError(f"warmup must be a non-negative integer, got {self.warmup!r}")
                continue
            _positive_int(name, getattr(self, name), allow_none=True)
        _positive_int("keep_checkpoints", self.keep_checkpoints)
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}"
            )
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 disables), got {self.grad_clip!r}")
        if self.ckpt_interval is not None and self.ckpt_interval % self.log_interval:
            raise ValueError(
                f"ckpt_interval={self.ckpt_interval} must be a multiple of "
                f"log_interval={self.log_interval} (so a resumed run logs the same rows)"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        if self.distributed not in DISTRIBUTED:
            raise ValueError(
                f"unknown distributed strategy {self.distributed!r}; "
                f"choose from {', '.join(DISTRIBUTED)}"
            )
        if self.tensorboard not in TENSORBOARD:
            raise ValueError(
                f"tensorboard must be one of {', '.join(TENSORBOARD)}, got {self.tensorboard!r}"
            )
        if not isinstance(self.model, dict):
            raise ValueError(f"model must be a dict of GPTConfig overrides, got {self.model!r}")
        unknown = set(self.model) - set(_MODEL_FIELDS)
        if unknown:
            raise ValueError(
                f"unknown model field(s) {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(sorted(_MODEL_FIELDS))}"
            )
        unused = unused_options(self.method, self.model)
        if unused:
            raise ValueError(
                "; ".join(
                    f"method {self.method!r} does not use {key} ({reason}); "
                    f"--set {key}=... would be ignored"
                    for key, reason in unused.items()
                )
            )
        if self.warmup is None:
            object.__setattr__(self, "warmup", max(1, round(0.05 * self.steps)))
        if self.min_lr is None:
            object.__setattr__(self, "min_lr", self.lr / 10)
        if self.name is None:
            object.__setattr__(
                self,
                "name",
                f"{corpus_label(self.corpus)}-{self.preset}-{self.method}-s{self.seed}",
            )
        if self.out_dir is None:
            object.__setattr__(self, "out_dir", os.path.join("runs", self.name))
        # Fail now (before loading data) on a bad model shape, e.g. a segment length that does
        # not divide the block size for a merging method.
        build_model_config(self, vocab_size=1)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (resolved and validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A config from :meth:`to_dict` output; also reads the ``config.json`` of older runs
        (overrides their method ignored are dropped: they never had an effect)."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if isinstance(d.get("model"), dict) and d.get("method") in METHODS:
            d["model"] = options_for_method(d["model"], d["method"])
        token = _RESTORING.set(True)
        try:
            return cls(**d)
        finally:
            _RESTORING.reset(token)


def build_model_config(config: TrainConfig, *, vocab_size: int) -> GPTConfig:
    """The :class:`~nashmoe.models.GPTConfig` of a run: the preset, the method, the overrides."""
    return GPTConfig.preset(
        config.preset, vocab_size=vocab_size, method=config.method, **config.model
    )


def _allowed_types(annotation: str) -> tuple[type, ...]:
    """Python types a dataclass field annotation (a string, PEP 563) accepts."""
    names = {part.strip() for part in str(annotation).split("|")}
    types: list[type] = []
    for name in names:
        if name == "int":
            types.append(int)
        elif name == "float":
            types += [float, int]
        elif name == "bool":
            types.append(bool)
        elif name == "str":
            types.append(str)
        elif name == "None":
            types.append(type(None))
    return tuple(types)


def _parse_value(key: str, text: str, annotation: str) -> Any:
    allowed = _allowed_types(annotation)
    if str in allowed and not text.strip().startswith(("'", '"')):
        if text in ("None", "none") and type(None) in allowed:
            return None
        return text
    lowered = text.strip().lower()
    if bool in allowed and lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null") and type(None) in allowed:
        return None
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        raise ValueError(f"cannot parse {key}={text!r}: expected {annotation}") from None
    if isinstance(value, bool) and bool not in allowed:
        raise ValueError(f"{key}={text!r} has the wrong type: expected {annotation}")
    if not isinstance(value, allowed):
        raise ValueError(
            f"{key}={text!r} has the wrong type {type(value).__name__}: expected {annotation}"
        )
    names = {part.strip() for part in str(annotation).split("|")}
    if "float" in names and "int" not in names and isinstance(value, int):
        value = float(value)
    return value


def parse_model_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Model overrides from ``key=value`` strings, typed like the field they set.

    Keys are :class:`~nashmoe.models.GPTConfig` fields (``n_layer=2``, ``dropout=0.1``) or
    per-layer :class:`~nashmoe.moe.MoEConfig` fields (``gamma=0.5``, ``curvature_rank=2``),
    which go into ``moe_options``. ``moe_options`` itself cannot be set directly.

    Raises:
        ValueError: a pair without ``=``, an unknown key, or a value of the wrong type.
    """
    model: dict[str, Any] = {}
    moe: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"override {pair!r} is not of the form key=value")
        key, text = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        if key in _MODEL_FIELDS and key != "moe_options":
            model[key] = _parse_value(key, text, _MODEL_FIELDS[key].type)
        elif key in _MOE_FIELDS:
            moe[key] = _parse_value(key, text, _MOE_FIELDS[key].type)
        else:
            model_keys = sorted(k for k in _MODEL_FIELDS if k != "moe_options")
            raise ValueError(
                f"unknown model option {key!r}; model fields: {', '.join(model_keys)}; "
                f"MoE options: {', '.join(sorted(_MOE_FIELDS))}"
            )
    if moe:
        model["moe_options"] = moe
    return model
