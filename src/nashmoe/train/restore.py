"""Restore a trained model and its tokenizer from a checkpoint (``nashmoe eval`` / ``generate``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nashmoe.data import Tokenizer, tokenizer_from_dict
from nashmoe.models import GPT, GPTConfig
from nashmoe.train.checkpoint import load_checkpoint
from nashmoe.train.config import TrainConfig

__all__ = ["LoadedModel", "load_model"]

WEIGHTS = ("best", "last")


@dataclass
class LoadedModel:
    """A model restored from a checkpoint, in eval mode."""

    model: GPT
    tokenizer: Tokenizer
    config: TrainConfig
    model_config: GPTConfig
    checkpoint: Path
    step: int
    weights: str
    state: dict[str, Any]


def load_model(
    path: str | os.PathLike[str],
    *,
    weights: str = "best",
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """The model of a run directory or checkpoint directory.

    Args:
        path: a run directory (``runs/<name>``), its ``checkpoints/`` directory or one
            checkpoint directory.
        weights: ``"best"`` (the best-on-validation weights, the ones reported on test; the last
            weights when the run was never evaluated) or ``"last"``.
        device: where to put the model.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: unknown ``weights``.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; choose from {', '.join(WEIGHTS)}")
    ckpt = load_checkpoint(path)
    st = ckpt.state
    mcfg = GPTConfig(**st["model_config"])
    model = GPT(mcfg)
    state = ckpt.best_model_state() if weights == "best" else None
    used = "best" if state is not None else "last"
    if state is None:
        state = ckpt.model_state()
    model.load_state_dict(state)
    model.to(device).eval()
    step = ckpt.step
    if used == "best" and (st.get("best") or {}).get("step"):
        step = int(st["best"]["step"])
    return LoadedModel(
        model=model,
        tokenizer=tokenizer_from_dict(st["tokenizer"]),
        config=TrainConfig.from_dict(st["config"]),
        model_config=mcfg,
        checkpoint=ckpt.path,
        step=step,
        weights=used,
        state=st,
    )
