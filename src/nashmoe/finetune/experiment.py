"""Fine-tune one upcycled encoder on a sentence-classification task and score it.

Protocol (per method and seed): AdamW, linear warm-up then linear decay to 0 (the BERT recipe,
Devlin et al. 2019), the pretrained weights at ``lr`` and the new parameters (head, routers,
propagation parameters) at ``head_lr``; loss = cross-entropy + the MoE layers' balance loss.
After every epoch the model is scored on the dev split; the epoch with the best dev accuracy is
scored once on the test split (the test split never picks anything).

Batches group sentences of similar length (shuffled groups of ``50 × batch_size`` sentences,
sorted by length inside each group, then the batches shuffled), which saves padding; padding
never changes a prediction (sentence routing and mean pooling both use the attention mask).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nashmoe.finetune.data import TextSplit
from nashmoe.finetune.model import SentenceClassifier, build_classifier, count_parameters

__all__ = ["FinetuneSettings", "encode", "evaluate_accuracy", "length_grouped_batches", "run_one"]

Progress = Callable[[int], None]  # called with a number of sentences just processed


@dataclass(frozen=True)
class FinetuneSettings:
    """Model and optimisation settings of one fine-tuning run."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    max_length: int = 64
    eval_batch_size: int = 128
    num_experts: int = 8
    noise: float = 0.01
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_length", "eval_batch_size", "num_experts"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive and finite, got {value!r}")
        for name in ("weight_decay", "grad_clip", "noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be non-negative and finite, got {value!r}")
        for name in ("warmup_frac", "dropout"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if self.max_length < 3:
            raise ValueError(
                f"max_length must be at least 3 (CLS, a token, SEP), got {self.max_length}"
            )


def encode(tokenizer: Any, sentences: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each sentence with the tokenizer's special tokens, truncated to
    ``max_length``."""
    out = tokenizer(list(sentences), truncation=True, max_length=max_length)
    return [list(ids) for ids in out["input_ids"]]


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` ``[B, longest]``, right-padded with ``pad_id``."""
    longest = max(len(s) for s in ids)
    input_ids = torch.full((len(ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for i, s in enumerate(ids):
        input_ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return input_ids, mask


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, *, rng: np.random.Generator, group: int = 50
) -> list[np.ndarray]:
    """Index batches covering every item once: shuffled, cut into groups of
    ``group · batch_size``, sorted by length inside a group, batched, batches shuffled."""
    order = rng.permutation(len(lengths))
    lengths = np.asarray(lengths)
    batches = []
    span = group * batch_size
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


@torch.no_grad()
def evaluate_accuracy(
    model: SentenceClassifier,
    ids: Sequence[Sequence[int]],
    labels: np.ndarray,
    *,
    pad_id: int,
    batch_size: int = 128,
    progress: Progress | None = None,
) -> float:
    """Accuracy in eval mode (batches of similar length; the order does not matter)."""
    was_training = model.training
    model.eval()
    order = np.argsort([len(s) for s in ids], kind="stable")
    correct = 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        input_ids, mask = pad_batch([ids[i] for i in idx], pad_id)
        pred = model(input_ids, mask).argmax(-1).numpy()
        correct += int((pred == labels[idx]).sum())
        if progress:
            progress(len(idx))
    model.train(was_training)
    return correct / len(order)


def _schedule(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def run_one(
    method: str,
    splits: dict[str, TextSplit],
    settings: FinetuneSettings,
    *,
    seed: int,
    encoder: str | None = None,
    moe_options: dict[str, Any] | None = None,
    num_labels: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fine-tune ``method`` with ``seed`` on ``splits["train"]``, pick the epoch on
    ``splits["dev"]``, score ``splits["test"]``; the run's record (JSON-serialisable)."""
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    if num_labels is None:  # from the training labels (the test split decides nothing)
        num_labels = max(int(splits["train"].labels.max()) + 1, 2)
    model, tokenizer = build_classifier(
        method,
        num_labels=num_labels,
        num_experts=settings.num_experts,
        noise=settings.noise,
        seed=seed,
        dropout=settings.dropout,
        encoder=encoder,
        **(moe_options or {}),
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = {k: encode(tokenizer, s.sentences, settings.max_length) for k, s in splits.items()}
    labels = {k: s.labels for k, s in splits.items()}
    pretrained, new = model.parameter_groups()

    decays = model.decay_mask()

    def groups(params: list, lr: float) -> list[dict[str, Any]]:
        decay = [p for p in params if decays[id(p)]]
        rest = [p for p in params if not decays[id(p)]]
        return [
            {"params": decay, "lr": lr, "weight_decay": settings.weight_decay, "base_lr": lr},
            {"params": rest, "lr": lr, "weight_decay": 0.0, "base_lr": lr},
        ]

    optimizer = torch.optim.AdamW(
        [g for g in groups(pretrained, settings.lr) + groups(new, settings.head_lr) if g["params"]]
    )
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # dropout
    train_lengths = [len(s) for s in ids["train"]]
    steps_per_epoch = math.ceil(len(train_lengths) / settings.batch_size)
    total = settings.epochs * steps_per_epoch
    warmup = int(settings.warmup_frac * total)
    step = 0
    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    train_seconds = 0.0
    tokens = 0
    model.train()
    for epoch in range(1, settings.epochs + 1):
        t0 = time.perf_counter()
        loss_sum, aux_sum, correct, seen = 0.0, 0.0, 0, 0
        for batch in length_grouped_batches(train_lengths, settings.batch_size, rng=rng):
            input_ids, mask = pad_batch([ids["train"][i] for i in batch], pad_id)
            target = torch.as_tensor(labels["train"][batch])
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * _schedule(step, total, warmup)
            logits = model(input_ids, mask)
            loss = F.cross_entropy(logits, target)
            aux = model.aux_loss()
            full = loss if aux is None else loss + _balance_coef(model) * aux
            if not torch.isfinite(full):
                raise FloatingPointError(
                    f"{method} seed {seed}: non-finite loss at step {step} (epoch {epoch})"
                )
            optimizer.zero_grad(set_to_none=True)
            full.backward()
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            step += 1
            loss_sum += float(loss.detach()) * len(batch)
            aux_sum += 0.0 if aux is None else float(aux.detach()) * len(batch)
            correct += int((logits.argmax(-1) == target).sum())
            seen += len(batch)
            tokens += int(mask.sum())
            if progress:
                progress(len(batch))
        train_seconds += time.perf_counter() - t0
        dev_acc = evaluate_accuracy(
            model,
            ids["dev"],
            labels["dev"],
            pad_id=pad_id,
            batch_size=settings.eval_batch_size,
            progress=progress,
        )
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / seen,
                "aux_loss": aux_sum / seen,
                "train_accuracy": correct / seen,
                "dev_accuracy": dev_acc,
                "seconds": time.perf_counter() - t0,
            }
        )
        if best is None or dev_acc > best[0]:
            best = (dev_acc, epoch, copy.deepcopy(model.state_dict()))
    assert best is not None
    model.load_state_dict(best[2])
    t_test = time.perf_counter()
    test_acc = evaluate_accuracy(
        model,
        ids["test"],
        labels["test"],
        pad_id=pad_id,
        batch_size=settings.eval_batch_size,
        progress=progress,
    )
    return {
        "method": method,
        "seed": seed,
        "dev_accuracy": best[0],
        "test_accuracy": test_acc,
        "selected_epoch": best[1],
        "history": history,
        "parameters": count_parameters(model),
        "train_seconds": train_seconds,
        "train_sentences_per_s": settings.epochs * len(train_lengths) / max(train_seconds, 1e-9),
        "train_tokens": tokens,
        "test_seconds": time.perf_counter() - t_test,
        "seconds": time.perf_counter() - t_start,
        "cpu_seconds": time.process_time() - cpu_start,
        "threads": torch.get_num_threads(),
        "settings": asdict(settings),
        "moe_options": dict(moe_options or {}),
        "sizes": {k: len(v) for k, v in splits.items()},
    }


def _balance_coef(model: SentenceClassifier) -> float:
    """The balance-loss weight: the upcycled config's ``router_aux_loss_coef`` (0 when dense)."""
    return float(getattr(model.encoder.config, "router_aux_loss_coef", 0.0) or 0.0)
