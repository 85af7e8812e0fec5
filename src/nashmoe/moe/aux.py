"""What every MoE forward hands back besides its output: losses and diagnostics.

Losses (named as their papers name them):

- Load balancing, Switch style (Fedus, Zoph, Shazeer, arXiv 2101.03961): ``N · Σ_i f_i · P_i`` with
  f_i the fraction of routing assignments sent to expert i and P_i the mean router probability of
  expert i. For ``smoe`` an assignment is one of the top-k choices of a token; for the merging
  methods (no discrete choice) f_i is the fraction of routing units whose highest score is expert i
  and P_i the mean score over units: the same quantity, minimised by uniform use.
- Router z-loss (Zoph et al., "ST-MoE", arXiv 2202.08906): mean over routing decisions of
  ``logsumexp(logits)²``.

Each layer overwrites (never appends) its ``last_aux`` on every forward, so activation
checkpointing cannot double count; :func:`nashmoe.moe.collect_aux` gathers them across a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nashmoe.moe.state import PropagationState

__all__ = ["MoEAux", "router_z_loss", "switch_balance_loss"]


@dataclass
class MoEAux:
    """Auxiliary outputs of one MoE layer for one forward pass.

    Attributes:
        loss: the term to add to the training loss: ``balance_coef · balance_loss +
            z_loss_coef · z_loss``.
        balance_loss, z_loss: the unscaled losses (0 for ``dense``).
        load: fraction of routing assignments per expert ``[N]`` (f_i above).
        importance: mean router probability per expert ``[N]`` (P_i above).
        alpha: the Nash weights used by this layer's propagation ``[N]`` (NAMEx), else None.
        residual, status: of this layer's own solve (None where α was reused or not used).
        solved: whether this layer solved the bargaining problem itself.
        fallbacks: 1 if this layer's solve was degenerate or infeasible and fell back to
            uniform weights, else 0 (a 0-dim tensor, no host synchronisation).
        not_converged: 1 if this layer's solve hit ``nash_max_iter`` without converging.
        bargaining: diagnostics of this layer's propagation step, ``{name: 0-dim tensor}``
            (detached; :mod:`nashmoe.moe.bargain_stats`): ``alpha_spread`` and
            ``nash_vs_mean_cosine`` (NAMEx), ``step_rel_norm`` and ``tau_cosine`` (EP-CAMEx
            and NAMEx); None for layers that do not propagate (and the last propagating
            layer, which skips its step).
        eta: the merge step η of this layer (CAMEx family), else None.
        state: the propagation state for the next MoE layer (None for non-propagating methods
            unless a state was passed through, and after the last propagating layer, which
            skips its step).
    """

    loss: Tensor
    balance_loss: Tensor
    z_loss: Tensor
    load: Tensor | None = None
    importance: Tensor | None = None
    alpha: Tensor | None = None
    residual: Tensor | None = None
    status: Tensor | None = None
    solved: bool = False
    fallbacks: Tensor | None = None
    not_converged: Tensor | None = None
    bargaining: dict[str, Tensor] | None = None
    eta: Tensor | None = None
    state: PropagationState | None = None


def switch_balance_loss(
    probs: Tensor, assignments: Tensor, num_experts: int, mask: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Switch load-balancing loss ``N · Σ f_i P_i``.

    Args:
        probs: router probabilities ``[M, N]`` (rows sum to 1).
        assignments: chosen expert indices ``[M, k]``.
        mask: ``[M]``, true for the routing decisions that count (padding tokens excluded);
            None counts all of them. f and P are then fractions and means over those only.

    Returns:
        ``(loss, load f [N], importance P [N])``.
    """
    flat = assignments.reshape(-1)
    # scatter_add with a static size, not bincount (whose output size depends on the data: a
    # host synchronisation on CUDA and a graph break under torch.compile).
    if mask is None:
        ones = probs.new_ones(flat.shape)
        load = probs.new_zeros(num_experts).scatter_add_(0, flat, ones) / max(flat.numel(), 1)
        importance = probs.sum(dim=0) / max(probs.shape[0], 1)  # 0 (not NaN) for no units
    else:
        keep = mask.reshape(-1).to(probs.dtype)
        per_assignment = keep[:, None].expand(assignments.shape).reshape(-1)
        counts = probs.new_zeros(num_experts).scatter_add_(0, flat, per_assignment)
        load = counts / per_assignment.sum().clamp_min(1)
        importance = (probs * keep[:, None]).sum(dim=0) / keep.sum().clamp_min(1)
    return num_experts * (load * importance).sum(), load, importance


def router_z_loss(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """ST-MoE router z-loss: mean of ``logsumexp(logits)²`` over routing decisions (those where
    ``mask [M]`` is true, if given)."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    z = torch.logsumexp(logits, dim=-1).square()
    if mask is not None:
        keep = mask.reshape(-1).to(z.dtype)
        return (z * keep).sum() / keep.sum().clamp_min(1)
    return z.sum() / max(z.numel(), 1)  # 0 (not NaN) for no routing decisions
