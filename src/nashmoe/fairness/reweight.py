"""The per-batch reweighting decision of two-stage fairness-aware meta-learning.

Zeng et al., NeurIPS 2024, arXiv 2406.07029 (fairness.md, sections 2, 5 and 6). Given the players'
hypergradients G ``[n, B]`` and the stage-2 objective's hypergradient h_obj ``[B]``:

    stage 1 (bargain=True):  h = Σ α_i g_i if bargaining succeeds, else h = h_obj (fallback)
    stage 2:                 h = h_obj
    w = max(−h, 0), normalised by its L2 norm (reference) or its sum; w = 0 stays 0.

The fallback is the *current* batch's stage-2 hypergradient for every Nash method. (The reference
code has no fallback for Nash + LtR and silently reuses the previous batch's hypergradient.)

Moving ε along w changes player i's loss by ⟨g_i, w⟩ to first order, so a player improves when
⟨g_i, w⟩ < 0. The NBS direction improves every player before clipping; clipping can break it,
which :attr:`ReweightStep.clipped_improves_all` measures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from nashmoe.fairness.bargain import BargainResult, nash_bargain

__all__ = ["WEIGHT_NORMS", "ReweightStep", "normalise_weights", "reweight_step"]

WEIGHT_NORMS = ("l2", "sum")
Bargainer = Callable[[Tensor], BargainResult]


def normalise_weights(hypergradient: Tensor, norm: str = "l2") -> Tensor:
    """w = max(−h, 0) / ‖·‖ with ``norm`` ``"l2"`` (reference) or ``"sum"`` (Ren et al.)."""
    if norm not in WEIGHT_NORMS:
        raise ValueError(f"unknown weight_norm {norm!r}; choose from {list(WEIGHT_NORMS)}")
    w = torch.clamp(-hypergradient, min=0)
    total = w.norm() if norm == "l2" else w.sum()
    return w / total if bool(total > 0) else w


@dataclass(frozen=True)
class ReweightStep:
    """One batch's decision.

    Attributes:
        weights: example weights ``[B]`` (detached).
        hypergradient: the hypergradient h that produced them ``[B]``.
        bargain: the bargaining result, or None when the batch did not bargain.
        used_nash: whether h is the Nash direction.
        utilities: ⟨g_i, h⟩ per player ``[n]`` (positive: h's descent improves player i).
        conflict: some player has ⟨g_i, h⟩ ≤ 0 (the reference's "negotiation failure" test).
        pairwise_conflict: some pair of players has ⟨g_i, g_k⟩ < 0.
        clipped_improves_all: every player has ⟨g_i, w⟩ < 0 after clipping and normalising.
    """

    weights: Tensor
    hypergradient: Tensor
    bargain: BargainResult | None
    used_nash: bool
    utilities: Tensor
    conflict: bool
    pairwise_conflict: bool
    clipped_improves_all: bool

    @property
    def fallback(self) -> bool:
        """Bargaining was attempted and failed, so h is the stage-2 hypergradient."""
        return self.bargain is not None and not self.bargain.ok


def reweight_step(
    player_hypergradients: Tensor,
    objective_hypergradient: Tensor,
    *,
    bargain: bool,
    weight_norm: str = "l2",
    bargainer: Bargainer | None = None,
) -> ReweightStep:
    """Weights of one training batch (see the module docstring).

    Args:
        player_hypergradients: G ``[n, B]`` (may be ``[0, B]`` when there are no players).
        objective_hypergradient: h_obj ``[B]`` of the stage-2 objective (LtR, FORML, Meta-gDRO).
        bargain: stage 1 (bargain, fall back to h_obj on failure) or stage 2 (use h_obj).
        weight_norm: ``"l2"`` or ``"sum"``.
        bargainer: ``G -> BargainResult``; default :func:`nash_bargain` with its defaults.
    """
    g = player_hypergradients.detach()
    h_obj = objective_hypergradient.detach()
    if g.ndim != 2 or h_obj.ndim != 1 or g.shape[1] != h_obj.shape[0]:
        raise ValueError(
            f"expected G [n, B] and h_obj [B], got {tuple(g.shape)} and {tuple(h_obj.shape)}"
        )
    result = None
    h = h_obj
    used_nash = False
    if bargain:
        result = (bargainer or nash_bargain)(g)
        if result.ok:
            h = (result.alpha.to(device=g.device, dtype=torch.float64) @ g.double()).to(h_obj.dtype)
            used_nash = True
    w = normalise_weights(h, weight_norm)
    g64 = g.double()
    utilities = g64 @ h.double()
    n = g.shape[0]
    if n:
        gram = g64 @ g64.T
        pairwise = bool((gram < 0).any())
        conflict = bool((utilities <= 0).any())
        clipped = bool(((g64 @ w.double()) < 0).all())
    else:
        pairwise = conflict = False
        clipped = True
    return ReweightStep(
        weights=w,
        hypergradient=h,
        bargain=result,
        used_nash=used_nash,
        utilities=utilities,
        conflict=conflict,
        pairwise_conflict=pairwise,
        clipped_improves_all=clipped,
    )
