"""Players of the bargaining game: (sensitive group × label) cells of the meta set, via masks.

Player i's loss is the mean validation loss over the meta examples of cell i (Zeng et al.,
NeurIPS 2024, arXiv 2406.07029; fairness.md, section 3). The reference reshapes the meta-set loss
vector into equal blocks, which needs a meta set sorted by group then label in equal blocks; we use
masks, so any order and any cell sizes work. A cell without meta examples is dropped with a
warning; a *group* without meta examples is an error (the stage-2 objectives need every group).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PLAYER_MODES", "PlayerSet", "build_players"]

PLAYER_MODES = ("group_label", "group")


@dataclass(frozen=True)
class PlayerSet:
    """Averaging coefficients over the meta set.

    Attributes:
        coefficients: ``[n_players, V]``; row i is 1/|cell i| on cell i's meta examples, else 0,
            so ``coefficients @ val_losses`` are the player losses.
        names: player names, e.g. ``"(Female, y=1)"``.
        group_coefficients: ``[G, V]``, the same for the sensitive groups (stage-2 objectives).
        dropped: names of the empty cells left out.
    """

    coefficients: Tensor
    names: tuple[str, ...]
    group_coefficients: Tensor
    dropped: tuple[str, ...]

    @property
    def n_players(self) -> int:
        return len(self.names)

    @property
    def can_bargain(self) -> bool:
        """Bargaining needs at least two players."""
        return self.n_players >= 2


def _mean_rows(masks: Tensor) -> Tensor:
    m = masks.to(torch.float32)
    return m / m.sum(1, keepdim=True)


def build_players(
    group: Tensor,
    y: Tensor,
    group_names: Sequence[str],
    *,
    mode: str = "group_label",
) -> PlayerSet:
    """Players from the meta set's group ids and labels.

    Args:
        group: group id of each meta example ``[V]`` (in ``[0, len(group_names))``).
        y: label of each meta example ``[V]`` (0/1).
        group_names: names of the groups.
        mode: ``"group_label"`` (default, 2G players) or ``"group"`` (G players).

    Raises:
        ValueError: unknown mode, mismatched shapes, ids out of range, or a group with no meta
            example (named in the message).
    """
    if mode not in PLAYER_MODES:
        raise ValueError(f"unknown players mode {mode!r}; choose from {list(PLAYER_MODES)}")
    group = torch.as_tensor(group).long()
    y = torch.as_tensor(y).long()
    if group.ndim != 1 or group.shape != y.shape:
        raise ValueError(
            f"group and y must be 1-D of equal length, got {tuple(group.shape)}, {tuple(y.shape)}"
        )
    n_groups = len(group_names)
    if group.numel() and (int(group.min()) < 0 or int(group.max()) >= n_groups):
        raise ValueError(f"group ids must lie in [0, {n_groups}), got {group.unique().tolist()}")
    if bool(((y != 0) & (y != 1)).any()):
        raise ValueError("y must be binary (0/1)")
    gmask = torch.stack([group == g for g in range(n_groups)]) if n_groups else group[None] < 0
    empty = [group_names[g] for g in range(n_groups) if not bool(gmask[g].any())]
    if empty:
        raise ValueError(
            f"group(s) {empty} have no example in the meta (validation) set: every sensitive "
            "group needs meta examples"
        )
    if mode == "group":
        masks, names = gmask, [str(n) for n in group_names]
    else:
        masks = torch.stack([gmask[g] & (y == lab) for g in range(n_groups) for lab in (0, 1)])
        names = [f"({g}, y={lab})" for g in group_names for lab in (0, 1)]
    keep = masks.any(1)
    dropped = tuple(n for n, k in zip(names, keep.tolist()) if not k)
    if dropped:
        warnings.warn(
            f"player cell(s) {list(dropped)} have no meta example and are dropped from bargaining",
            stacklevel=2,
        )
    masks = masks[keep]
    names = [n for n, k in zip(names, keep.tolist()) if k]
    return PlayerSet(
        coefficients=_mean_rows(masks),
        names=tuple(names),
        group_coefficients=_mean_rows(gmask),
        dropped=dropped,
    )
