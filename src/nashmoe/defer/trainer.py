"""A multi-expert L2D trainer with the conventions of clinicalml/human_ai_deferral.

:class:`MultiExpertL2D` wraps a model with K + J outputs and one surrogate from
:mod:`nashmoe.defer.losses`. As in human_ai_deferral (Mozannar et al., AISTATS 2023):
``fit(dataloader_train, dataloader_val, dataloader_test, epochs=..., optimizer=..., lr=...)`` keeps
the checkpoint with the best *validation* ``system_acc`` and reports test metrics once;
``fit_hyperparam`` defaults to ``fit``; ``test(dataloader)`` returns ``defers``, ``preds``,
``labels``, ``hum_preds``, ``rej_score``, ``class_probs`` plus the multi-expert ``defer_to`` and
``expert_preds``; ``surrogate_loss_function(outputs, hum_preds, data_y)`` is the training loss.

Batches are tuples ``(x, y, expert_preds)`` or ``(x, y, expert_preds, expert_mask)``;
:class:`TensorBatches` makes them from in-memory tensors. ``expert_mask`` only affects training: at
test time every expert must have a prediction (set a missing one to −1, which is never correct).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nashmoe.defer.decision import deferral_outputs
from nashmoe.defer.losses import LOSSES, loss_family
from nashmoe.defer.metrics import compute_multi_expert_metrics

__all__ = ["MultiExpertL2D", "TensorBatches"]

Batch = tuple[Tensor, ...]


class TensorBatches:
    """Re-iterable mini-batches ``(x, y, expert_preds[, expert_mask])`` over in-memory tensors.

    With ``shuffle`` the order is a fresh seeded permutation at every pass (pass e uses seed + e).
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        expert_preds: Tensor,
        expert_mask: Tensor | None = None,
        *,
        batch_size: int = 128,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        n = len(y)
        tensors = [x, y, expert_preds] + ([] if expert_mask is None else [expert_mask])
        if any(len(t) != n for t in tensors):
            raise ValueError(f"tensors differ in length: {[len(t) for t in tensors]}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.tensors = tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self._epoch = 0

    def __len__(self) -> int:
        n = len(self.tensors[1])
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.tensors[1])
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self._epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        self._epoch += 1
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield tuple(t[idx] for t in self.tensors)


def _unpack(batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    if len(batch) == 3:
        x, y, m = batch
        return x, y, m, None
    if len(batch) == 4:
        x, y, m, mask = batch
        return x, y, m, mask
    raise ValueError(f"a batch must be (x, y, expert_preds[, expert_mask]), got {len(batch)} items")


class MultiExpertL2D:
    """A K + J output model trained with one multi-expert surrogate.

    Args:
        model: maps a batch ``x`` to scores [B, K + J].
        num_classes, num_experts: K and J.
        loss: ``"ce"``, ``"ova"``, ``"picce_ce"`` or ``"picce_ova"`` (see :data:`LOSSES`).
        device: where the model runs.
        train_transform: optional augmentation applied to ``x`` of training batches,
            ``f(x, generator) -> x``.
        seed: seeds the augmentation generator.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int,
        num_experts: int,
        loss: str = "picce_ce",
        device: str | torch.device = "cpu",
        train_transform: Callable[[Tensor, torch.Generator], Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        if num_classes < 2 or num_experts < 1:
            raise ValueError(f"need K >= 2 and J >= 1, got K={num_classes}, J={num_experts}")
        self.loss_name = loss
        self.family = loss_family(loss)
        self.loss_fn = LOSSES[loss]
        self.model = model.to(device)
        self.num_classes = num_classes
        self.num_experts = num_experts
        self.device = torch.device(device)
        self.train_transform = train_transform
        self.generator = torch.Generator().manual_seed(seed)
        self.history: list[dict[str, float]] = []
        self.final_outputs: dict[str, np.ndarray] | None = None  # test() of the selected model

    def surrogate_loss_function(
        self,
        outputs: Tensor,
        hum_preds: Tensor,
        data_y: Tensor,
        expert_mask: Tensor | None = None,
    ) -> Tensor:
        """The surrogate on scores [B, K + J] with expert predictions ``hum_preds`` [B, J]."""
        if outputs.shape[1] != self.num_classes + self.num_experts:
            raise ValueError(
                f"model gives {outputs.shape[1]} scores, expected K + J = "
                f"{self.num_classes + self.num_experts}"
            )
        return self.loss_fn(outputs, data_y, hum_preds, expert_mask=expert_mask)

    def fit_epoch(
        self,
        dataloader: Iterable[Batch],
        optimizer: torch.optim.Optimizer,
        scheduler: Any | None = None,
    ) -> float:
        """One pass over ``dataloader``; returns the mean training loss."""
        self.model.train()
        total, count = 0.0, 0
        for batch in dataloader:
            x, y, m, mask = _unpack(batch)
            if self.train_transform is not None:
                x = self.train_transform(x, self.generator)
            x, y, m = x.to(self.device), y.to(self.device), m.to(self.device)
            mask = None if mask is None else mask.to(self.device)
            loss = self.surrogate_loss_function(self.model(x), m, y, mask)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.item() * len(y)
            count += len(y)
        return total / max(count, 1)

    def fit(
        self,
        dataloader_train: Iterable[Batch],
        dataloader_val: Iterable[Batch],
        dataloader_test: Iterable[Batch] | None = None,
        *,
        epochs: int,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        schedule: str = "cosine",
        verbose: bool = False,
        log: Callable[[str], None] = print,
    ) -> dict[str, Any]:
        """Train for ``epochs``; keep the best validation ``system_acc`` checkpoint.

        ``optimizer`` is called as ``optimizer(params, lr=lr, weight_decay=weight_decay)``;
        ``schedule`` is ``"cosine"`` (per-step cosine decay to 0) or ``"constant"``. Returns the
        multi-expert metrics of the selected checkpoint on ``dataloader_test`` (on the validation
        data when no test loader is given), with ``best_epoch`` and ``best_val_system_acc``.
        """
        if epochs < 1:
            raise ValueError(f"epochs must be positive, got {epochs}")
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
        opt = optimizer(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        scheduler = None
        if schedule == "cosine":
            steps = epochs * len(dataloader_train)  # type: ignore[arg-type]
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / steps))
            )
        best_acc, best_state, best_epoch = -1.0, None, -1
        self.history = []
        for epoch in range(epochs):
            start = time.perf_counter()
            train_loss = self.fit_epoch(dataloader_train, opt, scheduler)
            val = compute_multi_expert_metrics(self.test(dataloader_val))
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_system_acc": float(val["system_acc"]),
                "val_classifier_all_acc": float(val["classifier_all_acc"]),
                "val_coverage": float(val["coverage"]),
                "seconds": time.perf_counter() - start,
            }
            self.history.append(row)
            if verbose:
                log(
                    f"epoch {epoch + 1}/{epochs} loss {train_loss:.4f} "
                    f"val system_acc {row['val_system_acc']:.4f} "
                    f"classifier_all_acc {row['val_classifier_all_acc']:.4f} "
                    f"coverage {row['val_coverage']:.3f} ({row['seconds']:.1f}s)"
                )
            if row["val_system_acc"] > best_acc:
                best_acc, best_epoch = row["val_system_acc"], epoch
                best_state = copy.deepcopy(self.model.state_dict())
        if best_state is not None:
            self.model.load_state_dict(best_state)
        final = dataloader_test if dataloader_test is not None else dataloader_val
        self.final_outputs = self.test(final)
        metrics = compute_multi_expert_metrics(self.final_outputs)
        metrics["best_epoch"] = best_epoch
        metrics["best_val_system_acc"] = best_acc
        return metrics

    def fit_hyperparam(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """No hyper-parameter search by default: same as :meth:`fit`."""
        return self.fit(*args, **kwargs)

    @torch.no_grad()
    def scores(self, dataloader: Iterable[Batch]) -> tuple[Tensor, Tensor, Tensor]:
        """Concatenated (scores, labels, expert_preds) over a loader, in eval mode."""
        self.model.eval()
        outs, ys, ms = [], [], []
        for batch in dataloader:
            x, y, m, _ = _unpack(batch)
            outs.append(self.model(x.to(self.device)).float().cpu())
            ys.append(y.cpu())
            ms.append(m.cpu())
        if not outs:
            raise ValueError("empty dataloader")
        return torch.cat(outs), torch.cat(ys), torch.cat(ms)

    def test(self, dataloader: Iterable[Batch]) -> dict[str, np.ndarray]:
        """The human_ai_deferral ``test()`` dict plus ``defer_to`` and ``expert_preds``."""
        scores, y, m = self.scores(dataloader)
        return deferral_outputs(scores, y, m, num_classes=self.num_classes, family=self.family)
