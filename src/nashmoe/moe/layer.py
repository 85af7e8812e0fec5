"""``MoEFeedForward``: one drop-in feed-forward module for every method of the family.

Methods (spec section 2; papers cited in :mod:`nashmoe.moe`):

| method | merged expert on unit u | base expert of the next MoE layer |
|---|---|---|
| dense | one FFN | — |
| smoe | none: Σ_{top-k} s_i f(x; E_i) per token | — |
| smear | Σ_i s_i E_i | — |
| camex | E_m + η Σ_i s_i M_i(τ_i), E_m a parameter of the layer | — |
| ep-camex | as camex, E_m propagated | E_m + (γ/N) Σ_i M_i(τ_i) |
| namex(-full) | as camex, E_m propagated | E_m + γ Σ_i α_i τ_i, α the Nash solution |
| namex(-full)-mom | as namex | μ' = β μ + ΔE, E_m + Re(γ μ'), β = r e^{iφ} |

with τ_i = E_i − E_m. α depends on parameters only, so one solve per layer serves the batch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nashmoe.bargaining import NashSolution, NashStatus, nash_bargaining
from nashmoe.moe.aux import MoEAux, router_z_loss, switch_balance_loss
from nashmoe.moe.bargain_stats import propagation_stats
from nashmoe.moe.cache import InferenceCache, parameter_key
from nashmoe.moe.config import MoEConfig
from nashmoe.moe.curvature import KroneckerCurvature
from nashmoe.moe.ffn import activation_fn, dense_ffn, merged_ffn, mixed_ffn, topk_ffn
from nashmoe.moe.fused import _DomainSum, merge_and_apply
from nashmoe.moe.gating import merge_selection, topk_route, update_bias
from nashmoe.moe.layout import ExpertLayout
from nashmoe.moe.routing import masked_mean, num_segments, segment_means, split_segments
from nashmoe.moe.state import PropagationState

if TYPE_CHECKING:  # the chain module sits above the layer and imports it
    from collections.abc import Callable

    from nashmoe.moe.chain import PropagationChain

__all__ = ["MoEFeedForward", "SegmentCache", "set_bargaining_stats"]


@dataclass
class _ParameterPart:
    """Everything a merging layer derives from parameters alone (input-independent)."""

    base: dict[str, Tensor] | None  # E_m {name: [*shape]} (None for smear)
    vectors: dict[str, Tensor]  # {name: [N, *shape]}: E_i (smear) or D_i = M_i(mask ⊙ τ_i)
    next_state: PropagationState | None
    alpha: Tensor | None = None
    residual: Tensor | None = None
    status: Tensor | None = None
    solved: bool = False
    bargaining: dict[str, Tensor] | None = None  # diagnostics (bargain_stats), detached
    # identity curvature and no mask, where nothing else needs the N domain vectors (CAMEx,
    # EP-CAMEx, a chain's last layer) or with merge_top_k: ``vectors`` are the raw experts E_i
    # and the merge is E_m + Σ_j c_j (E_j − E_m) = (1 − Σ_j c_j) E_m + Σ_j c_j E_j (no N·P τ,
    # no pass over them forward and backward)
    raw: bool = False
    # NAMEx with the direction computed by the merge: finish(delta) sets next_state (and is
    # then cleared); None once next_state is final
    finish: Callable[[dict[str, Tensor]], None] | None = None


@dataclass
class SegmentCache:
    """Per-layer state for incremental decoding with segment routing (spec section 4).

    Holds the running sum of the current segment's inputs and the merged expert of the current
    segment; when a segment completes, the next one is routed by its mean. ``length`` counts the
    tokens seen, so a call at any other position than the next one fails loudly.
    """

    segment_sum: Tensor | None = None  # [B, d]
    weights: dict[str, Tensor] | None = None  # merged expert of the current segment, [B, ...]
    scores: Tensor | None = None  # [B, N]
    length: int = 0


class MoEFeedForward(nn.Module):
    """A feed-forward block of any method of the NAMEx family.

    Args:
        config: a :class:`MoEConfig` (or pass its fields as keyword arguments).
        owns_base: for the propagating methods, whether this layer is the first MoE layer of its
            chain and owns E_m^{(1)}; later layers receive the base through the propagation state.
            Ignored by the other methods (CAMEx owns a base in every layer).

    Attribute ``bargaining_stats`` (default False): compute the bargaining diagnostics of
    :mod:`nashmoe.moe.bargain_stats` in ``aux.bargaining`` (a few detached passes over the N·P
    domain vectors, 5–12 % of a layer's step on the CPU; :func:`set_bargaining_stats` toggles it
    for a whole model; the trainer turns it on for the last step of each logging interval).

    Attribute ``last_in_chain`` (default False): the layer is the last propagating layer of its
    model, so nothing uses its propagation step; it then skips the step and its Nash solve
    (``aux.state`` is None; ``aux.alpha`` is the incoming α). :func:`link_moe_layers` and
    :class:`~nashmoe.models.GPT` set it. The incoming state is moved to the device and dtype of
    the layer's parameters (a differentiable move; α keeps its dtype).

    Real-family routing (``smoe``), shared experts and ``merge_top_k`` are configured in
    :class:`MoEConfig`; with ``bias_balancing`` call :meth:`update_router_bias` once per
    optimizer step. Weights of transformers 5 blocks: :mod:`nashmoe.moe.families`.

    Call: ``out = layer(x)`` with ``x [B, S, d]``; ``out, aux = layer(x, return_aux=True)``.
    Keyword arguments: ``state`` (the :class:`PropagationState` from the previous MoE layer),
    ``attention_mask [B, S]`` (``unit="sequence"``: routing by the non-padding tokens; ``smoe``:
    padding left out of the router losses and load counts), ``cache`` and ``start_pos`` (incremental
    decoding). Every forward also overwrites :attr:`last_aux` (except a recomputation by
    activation checkpointing, which reproduces it).
    """

    def __init__(self, config: MoEConfig | None = None, *, owns_base: bool = True, **kwargs):
        super().__init__()
        if config is None:
            config = MoEConfig(**kwargs)
        elif kwargs:
            raise ValueError("pass either a MoEConfig or keyword fields, not both")
        cfg = self.config = config
        self.owns_base = bool(owns_base) if cfg.propagates else cfg.is_curved
        self.layout = ExpertLayout(cfg.d_model, cfg.d_ff, glu=cfg.glu, bias=cfg.bias)
        self.act = activation_fn(cfg.activation)
        n = cfg.num_experts
        lead = () if cfg.method == "dense" else (n,)
        for name, shape in self.layout.shapes.items():
            self.register_parameter(name, nn.Parameter(torch.empty(*lead, *shape)))
        if cfg.method != "dense":
            self.router = nn.Parameter(torch.empty(n, cfg.d_model))
            self._init_routing_extras()
        if cfg.is_merging and cfg.unit == "segment" and cfg.first_segment == "prior":
            self.prior_logits = nn.Parameter(torch.zeros(n))
        if self.owns_base:
            for name, shape in self.layout.shapes.items():
                self.register_parameter("base_" + name, nn.Parameter(torch.empty(*shape)))
        if cfg.is_curved:
            if cfg.curvature_rank > 0:
                self.curvature = KroneckerCurvature(
                    self.layout,
                    num_experts=n,
                    rank=cfg.curvature_rank,
                    init_scale=cfg.curvature_init,
                )
            eta = torch.tensor(float(cfg.eta))
            if cfg.learn_eta:
                self.eta = nn.Parameter(eta)
            else:
                self.register_buffer("eta", eta)
        if cfg.uses_nash:
            # Warm start of the solver across steps (0 = none yet).
            self.register_buffer("alpha_prev", torch.zeros(n, dtype=torch.float64))
        self.last_aux: MoEAux | None = None
        self.last_in_chain = False
        self.bargaining_stats = False
        self._chain: PropagationChain | None = None
        self._chain_index = 0  # position in the chain
        # (α, residual, status) of the last solve, reused when checkpointing recomputes the layer
        self._solve_record: tuple[Tensor, Tensor | None, Tensor | None] | None = None
        self._inference_cache = InferenceCache()
        self.reset_parameters()

    # ------------------------------------------------------------------ parameters
    def reset_parameters(self) -> None:
        cfg = self.config
        with torch.no_grad():
            for prefix in ("", "base_"):
                for name in self.layout.names:
                    p = getattr(self, prefix + name, None)
                    if p is None:
                        continue
                    if name.startswith("b_"):
                        p.zero_()
                    else:
                        std = cfg.out_init_std if name == "w_out" else cfg.init_std
                        p.normal_(0.0, std)
            if hasattr(self, "router"):
                self.router.normal_(0.0, cfg.init_std)
            if hasattr(self, "alpha_prev"):
                self.alpha_prev.zero_()
            self._reset_routing_extras()
        self.clear_cache()

    def _init_routing_extras(self) -> None:
        """Router bias, aux-loss-free selection bias and shared experts (real families)."""
        cfg = self.config
        n = cfg.num_experts
        if cfg.router_bias:
            self.router_bias = nn.Parameter(torch.zeros(n))
        if cfg.method == "smoe" and cfg.bias_balancing:
            # selection-only bias (kept in float32 like HF's e_score_correction_bias) and the
            # token counts since the last update_router_bias()
            self.register_buffer("expert_bias", torch.zeros(n, dtype=torch.float32))
            self.register_buffer("expert_load", torch.zeros(n, dtype=torch.float32))
        if cfg.shared_experts:
            width = cfg.shared_experts * cfg.shared_d_ff
            self.shared_layout = ExpertLayout(cfg.d_model, width, glu=cfg.glu, bias=cfg.bias)
            for name, shape in self.shared_layout.shapes.items():
                self.register_parameter("shared_" + name, nn.Parameter(torch.empty(*shape)))
            if cfg.shared_gate:
                self.shared_gate_weight = nn.Parameter(torch.empty(1, cfg.d_model))

    def _reset_routing_extras(self) -> None:
        cfg = self.config
        for name in ("router_bias", "expert_bias", "expert_load"):
            t = getattr(self, name, None)
            if t is not None:
                t.zero_()
        if hasattr(self, "shared_layout"):
            for name in self.shared_layout.names:
                p = getattr(self, "shared_" + name)
                if name.startswith("b_"):
                    p.zero_()
                else:
                    p.normal_(0.0, cfg.out_init_std if name == "w_out" else cfg.init_std)
        if hasattr(self, "shared_gate_weight"):
            self.shared_gate_weight.normal_(0.0, cfg.init_std)

    def shared_tensors(self) -> dict[str, Tensor] | None:
        """The shared experts as one FFN ``{name: [*shape]}`` (width shared_experts·shared_d_ff),
        or None."""
        if not hasattr(self, "shared_layout"):
            return None
        return {name: getattr(self, "shared_" + name) for name in self.shared_layout.names}

    def _shared_output(self, x: Tensor) -> Tensor:
        """Shared experts on every token, gated per token by a sigmoid where configured."""
        y = dense_ffn(x, self.shared_tensors(), self.act)
        if hasattr(self, "shared_gate_weight"):
            y = torch.sigmoid(F.linear(x, self.shared_gate_weight.to(x.dtype))) * y
        return y

    @torch.no_grad()
    def update_router_bias(self, rate: float | None = None) -> Tensor:
        """Aux-loss-free balancing step (``bias_balancing``): ``expert_bias_i += u ·
        sign(mean load − load_i)`` from the tokens counted by the training forwards since the
        last call (centred; u = ``rate`` or ``bias_update_rate``), then reset the counts.
        Returns the change. A call without counted tokens changes nothing."""
        if not hasattr(self, "expert_bias"):
            raise ValueError("update_router_bias needs method='smoe' with bias_balancing=True")
        if not bool(self.expert_load.sum() > 0):
            return torch.zeros_like(self.expert_bias)
        u = self.config.bias_update_rate if rate is None else rate
        return update_bias(self.expert_bias, self.expert_load, u)

    def expert_tensors(self) -> dict[str, Tensor]:
        """The fused expert tensors ``{name: [N, *shape]}`` (``[*shape]`` for dense)."""
        return {name: getattr(self, name) for name in self.layout.names}

    def base_tensors(self) -> dict[str, Tensor] | None:
        """The owned base expert ``{name: [*shape]}``, or None."""
        if not self.owns_base:
            return None
        return {name: getattr(self, "base_" + name) for name in self.layout.names}

    # ------------------------------------------------------------------ caching
    def clear_cache(self) -> None:
        """Drop the inference cache (α, propagated bases, curved domain vectors).

        The cache is used only in eval mode under ``torch.no_grad()``/``inference_mode`` and is
        keyed by the parameters' version counters, their storage, every optimizer step and the
        incoming state, so ordinary updates invalidate it by themselves. Call this after changing
        parameters through ``.data`` (which bypasses version counting).
        """
        self._inference_cache.clear()

    def train(self, mode: bool = True) -> MoEFeedForward:
        self.clear_cache()
        return super().train(mode)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,
        *,
        state: PropagationState | None = None,
        attention_mask: Tensor | None = None,
        return_aux: bool = False,
        cache: SegmentCache | None = None,
        start_pos: int = 0,
    ):
        cfg = self.config
        if x.ndim != 3 or x.shape[-1] != cfg.d_model:
            raise ValueError(
                f"expected input [batch, seq, d_model={cfg.d_model}], got {tuple(x.shape)}"
            )
        if attention_mask is not None:
            if not (cfg.method == "smoe" or (cfg.is_merging and cfg.unit == "sequence")):
                raise ValueError(
                    "attention_mask is only used with unit='sequence' (merging methods) or by "
                    f"smoe, not by {cfg.method!r}"
                    + ("" if cfg.method == "dense" else f" with unit={cfg.unit!r}")
                )
            if attention_mask.shape != x.shape[:2]:
                raise ValueError(
                    f"attention_mask must have shape [batch, seq] = {tuple(x.shape[:2])}, "
                    f"got {tuple(attention_mask.shape)}"
                )
        chain = self._chain
        recompute = _in_backward()  # activation checkpointing re-running this forward
        if chain is not None:
            if state is None:
                state = chain.incoming(self, recompute)
            if cache is None and start_pos == 0:
                cache, start_pos = chain.segment_cache(self)
        if cfg.method == "dense":
            out = dense_ffn(x, self.expert_tensors(), self.act)
            zero = x.new_zeros((), dtype=torch.float32)
            aux = MoEAux(loss=zero, balance_loss=zero, z_loss=zero, state=state)
        elif cfg.method == "smoe":
            out, aux = self._forward_topk(x, attention_mask)
            aux.state = state
        else:
            merges = x.shape[0] > 0 and x.shape[1] > 0 and cache is None
            part = self._parameter_part(
                state, reuse_solve=recompute, defer_direction=merges and _fusable()
            )
            if x.shape[0] == 0 or x.shape[1] == 0:  # no routing unit: nothing to merge
                out, aux = self._forward_empty(x, part)
            elif cache is not None:
                out, aux = self._forward_cached(x, part, cache, start_pos)
            else:
                out, aux = self._forward_merged(x, part, attention_mask)
        if cfg.shared_experts:
            out = out + self._shared_output(x).to(out.dtype)
        if not recompute:
            if chain is not None:
                chain.outgoing(self, aux.state)
            self.last_aux = aux
        return (out, aux) if return_aux else out

    # ------------------------------------------------------------------ routing
    def _logits(self, pooled: Tensor) -> Tensor:
        bias = getattr(self, "router_bias", None)
        logits = F.linear(
            pooled, self.router.to(pooled.dtype), None if bias is None else bias.to(pooled.dtype)
        )
        if self.training and self.config.router_noise > 0:
            logits = logits + self.config.router_noise * torch.randn_like(logits)
        return logits

    def _losses(
        self, logits: Tensor, probs: Tensor, assignments: Tensor, mask: Tensor | None = None
    ) -> MoEAux:
        cfg = self.config
        balance, load, importance = switch_balance_loss(
            _at_least_float32(probs), assignments, cfg.num_experts, mask
        )
        if cfg.balance_loss_scale == "transformers":  # HF's load_balancing_loss_func: k × ours
            balance = cfg.balance_k * balance
        z = router_z_loss(logits, mask)
        loss = cfg.balance_coef * balance + cfg.z_loss_coef * z
        return MoEAux(loss=loss, balance_loss=balance, z_loss=z, load=load, importance=importance)

    def _forward_topk(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, MoEAux]:
        """Top-k dispatch of every token. With ``mask [B, S]`` (false = padding) the padding
        tokens still pass through the experts (their outputs are whatever the experts give, to
        be ignored by the caller, as attention ignores them), but they are left out of the
        balance loss, the z-loss and the ``expert_load`` counts."""
        b, s, d = x.shape
        keep = None if mask is None else mask.reshape(b * s).to(torch.bool)
        tokens = x.reshape(b * s, d)
        logits = self._logits(tokens)
        cfg = self.config
        scores, top_idx, top_w = topk_route(
            _at_least_float32(logits),
            cfg.top_k,
            score_func=cfg.score_func,
            norm_topk=cfg.norm_topk,
            routed_scaling=cfg.routed_scaling,
            n_group=cfg.n_group,
            topk_group=cfg.topk_group,
            selection_bias=getattr(self, "expert_bias", None),
        )
        if self.training and hasattr(self, "expert_load") and not _in_backward():
            with torch.no_grad():  # (a checkpointed recomputation does not count twice)
                counted = torch.ones_like(top_idx, dtype=self.expert_load.dtype)
                if keep is not None:
                    counted = counted * keep[:, None]
                # a static-size scatter (no bincount: data-dependent size under torch.compile)
                self.expert_load.scatter_add_(0, top_idx.reshape(-1), counted.reshape(-1))
        out = topk_ffn(tokens, self.expert_tensors(), top_idx, top_w.to(x.dtype), self.act)
        probs = scores if cfg.score_func == "softmax" else scores / scores.sum(-1, keepdim=True)
        return out.view(b, s, d), self._losses(logits, probs, top_idx, keep)

    def _unit_scores(self, x: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Router logits and scores of every routing unit: ``[B, nseg, N]`` for segments,
        ``[B, N]`` for sequences and images, ``[B, S, N]`` for tokens."""
        cfg = self.config
        if cfg.unit == "segment":
            segments = split_segments(x, cfg.segment_len)
            means = segment_means(segments, x.shape[1])
            logits_next = self._logits(means[:, :-1])  # segment j routed by segment j − 1
            if cfg.first_segment == "prior":
                first = self.prior_logits.to(x.dtype).expand(x.shape[0], 1, -1)
            else:  # the public CAMEx/Lory code: segment 0's own mean, stop-gradient (non-causal)
                first = self._logits(means[:, :1].detach())
            logits = torch.cat([first, logits_next], dim=1)
        elif cfg.unit in ("sequence", "image"):
            logits = self._logits(masked_mean(x, attention_mask))
        else:
            logits = self._logits(x)
        return logits, torch.softmax(_at_least_float32(logits), dim=-1)

    # ------------------------------------------------------------------ merging
    def _coefficients(self, scores: Tensor, dtype: torch.dtype) -> Tensor:
        if self.config.is_curved:
            # η in its own (the parameters') dtype: a float32 cast would cost ~1e-7 in float64.
            wide = torch.promote_types(self.eta.dtype, scores.dtype)
            return (self.eta.to(wide) * scores.to(wide)).to(dtype)
        return scores.to(dtype)

    def _merge(
        self, part: _ParameterPart, coeff: Tensor, index: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Merged experts of all units, one matrix product per tensor: ``E_m + coeff @ D``
        (with ``index [U, k]``: ``E_m + Σ_j coeff[:, j] D[index[:, j]]``, merge_top_k)."""
        out = {}
        for name, v in part.vectors.items():
            flat = v.reshape(v.shape[0], -1).to(coeff.dtype)
            if index is not None:
                w = F.embedding_bag(index, flat, per_sample_weights=coeff, mode="sum")
                if part.base is not None:
                    b = part.base[name].reshape(1, -1).to(coeff.dtype)
                    w = w + (1 - coeff.sum(dim=-1, keepdim=True)) * b if part.raw else w + b
            elif part.base is None:
                w = coeff @ flat
            elif part.raw:
                b = part.base[name].reshape(1, -1).to(coeff.dtype)
                w = torch.addmm((1 - coeff.sum(dim=-1, keepdim=True)) * b, coeff, flat)
            else:
                w = torch.addmm(part.base[name].reshape(1, -1).to(coeff.dtype), coeff, flat)
            out[name] = w.view(coeff.shape[0], *v.shape[1:])
        return out

    def _merge_weights(self, scores: Tensor, part: _ParameterPart) -> Tensor:
        """The weights of the merge line (``MoEConfig.merge_weights``): the router scores
        ``[U, N]``, the normalised Nash weights, or their renormalised product."""
        mode = self.config.merge_weights
        if mode is None or mode == "router":
            return scores
        alpha = part.alpha.to(scores.dtype)
        if mode == "nash":
            return (alpha / alpha.sum()).expand_as(scores)
        w = scores * alpha
        return w / w.sum(dim=-1, keepdim=True)

    def _selection(self, scores: Tensor) -> tuple[Tensor, Tensor | None]:
        """The scores the merge uses, and the selected experts with ``merge_top_k``."""
        if self.config.merge_top_k is None:
            return scores, None
        return merge_selection(scores, self.config.merge_top_k)

    def _forward_merged(
        self, x: Tensor, part: _ParameterPart, attention_mask: Tensor | None
    ) -> tuple[Tensor, MoEAux]:
        cfg = self.config
        b, s, d = x.shape
        logits, scores = self._unit_scores(x, attention_mask)
        flat_scores = scores.reshape(-1, cfg.num_experts)
        compute_dtype = (
            torch.get_autocast_dtype(x.device.type)
            if torch.is_autocast_enabled(x.device.type)
            else x.dtype
        )
        merge_scores, index = self._selection(self._merge_weights(flat_scores, part))
        coeff = self._coefficients(merge_scores, compute_dtype)
        if index is None and cfg.unit == "token":  # per-token mix, no merged weights
            vectors = {k: v.to(compute_dtype) for k, v in part.vectors.items()}
            base = (
                None
                if part.base is None
                else {k: v.to(compute_dtype) for k, v in part.base.items()}
            )
            out = mixed_ffn(x.reshape(b * s, d), coeff, base, vectors, self.act).view(b, s, -1)
        else:  # one merged expert per unit (merge_top_k: of the k selected vectors); a
            # deferred NAMEx direction (part.finish) always comes this way (it needs raw
            # vectors: merge_top_k or segment/sequence units)
            units = x.reshape(b * s, 1, d) if cfg.unit == "token" else x
            if cfg.unit == "segment":
                units = split_segments(x, cfg.segment_len).reshape(-1, cfg.segment_len, d)
            out = merge_and_apply(
                units,
                coeff,
                part.base,
                part.vectors,
                activation=cfg.activation,
                index=index,
                base_coeff=1 - coeff.sum(dim=-1) if part.raw else None,
                direction=None if part.finish is None else part.alpha,
            )
            if part.finish is not None:
                out, delta = out
                part.finish(delta)
                part.finish = None
            out = out.reshape(b, -1, d)[:, :s]
        assignments = flat_scores.argmax(dim=-1, keepdim=True) if index is None else index
        aux = self._losses(logits, flat_scores, assignments)
        self._fill_aux(aux, part)
        return out, aux

    def _forward_empty(self, x: Tensor, part: _ParameterPart) -> tuple[Tensor, MoEAux]:
        """Batch 0 or length 0: an empty output, zero losses, and the propagation state (it
        depends on parameters only, so the next layer still gets its base expert)."""
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        zero = x.new_zeros((), dtype=torch.float32)
        none = x.new_zeros(self.config.num_experts, dtype=torch.float32)
        aux = MoEAux(loss=zero, balance_loss=zero, z_loss=zero, load=none, importance=none.clone())
        self._fill_aux(aux, part)
        return x.new_zeros(x.shape, dtype=dtype), aux

    def _fill_aux(self, aux: MoEAux, part: _ParameterPart) -> None:
        aux.state = part.next_state
        aux.alpha = part.alpha
        aux.bargaining = part.bargaining
        aux.eta = getattr(self, "eta", None)
        if part.solved:
            aux.solved = True
            aux.residual = part.residual
            aux.status = part.status
            # Compare with int codes, not the IntEnum (dynamo cannot compare a tensor with it).
            fallback = (part.status == _DEGENERATE) | (part.status == _INFEASIBLE)
            aux.fallbacks = fallback.to(torch.int64)
            aux.not_converged = (part.status == _NOT_CONVERGED).to(torch.int64)

    # ------------------------------------------------------------------ parameter part
    def _parameter_part(
        self,
        incoming: PropagationState | None,
        reuse_solve: bool = False,
        defer_direction: bool = False,
    ) -> _ParameterPart:
        cfg = self.config
        if cfg.propagates:
            if self.owns_base:
                incoming = None  # the chain starts here
            elif incoming is None:
                raise ValueError(
                    f"this {cfg.method!r} layer is not the first of its propagation chain "
                    "(owns_base=False) and received no state: pass state=aux.state from the "
                    "previous MoE layer, or link the model's layers with "
                    "nashmoe.moe.link_moe_layers(model)"
                )
            if incoming is not None:
                incoming = self._adopt(incoming)
        use_cache = (
            not self.training
            and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()  # the key reads version counters
        )
        if not use_cache:
            return self._compute_parameter_part(incoming, reuse_solve, defer_direction)
        key = (
            parameter_key(self, exclude_buffers=("alpha_prev",)),
            None if incoming is None else incoming.key,
            torch.is_autocast_enabled(),
            self.last_in_chain,
        )
        part = self._inference_cache.get(key)
        if part is None:
            part = self._compute_parameter_part(incoming)
            if part.next_state is not None and cfg.is_curved:
                part.next_state.key = key
            self._inference_cache.put(key, part)
        return part

    def _adopt(self, state: PropagationState) -> PropagationState:
        """The state on this layer's parameter device and dtype (differentiable moves)."""
        ref = next(iter(self.expert_tensors().values()))
        device, dtype = ref.device, ref.dtype
        first = next(iter(state.base.values()))
        if first.device == device and first.dtype == dtype:
            return state

        def move(d: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
            return None if d is None else {k: v.to(device, dtype) for k, v in d.items()}

        def to_device(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            state,
            base=move(state.base),
            momentum_re=move(state.momentum_re),
            momentum_im=move(state.momentum_im),
            alpha=to_device(state.alpha),
            status=to_device(state.status),
            residual=to_device(state.residual),
        )

    def _compute_parameter_part(
        self,
        incoming: PropagationState | None,
        reuse_solve: bool = False,
        defer_direction: bool = False,
    ) -> _ParameterPart:
        cfg = self.config
        experts = self.expert_tensors()  # {name: [N, *shape]}
        if not cfg.is_curved:  # smear
            return _ParameterPart(base=None, vectors=experts, next_state=incoming)
        if cfg.propagates and not self.owns_base:
            base, layer_index = incoming.base, incoming.layer
        else:
            base, layer_index = self.base_tensors(), 0
        # raw experts in the merge (see _ParameterPart.raw); token units mix per token
        # (mixed_ffn), which takes domain vectors
        plain = cfg.curvature_rank == 0 and cfg.merge_mask == "none"
        raw = plain and cfg.merge_top_k is not None
        # the merge line needs this layer's α (merge_weights): the last layer still gets it
        skip = self.last_in_chain and cfg.merge_weights in (None, "router")
        raw_only = (raw or (plain and cfg.unit != "token")) and (
            cfg.method in ("camex", "ep-camex") or skip
        )
        if raw_only:
            # the merge uses the raw experts and nothing else needs the N domain vectors
            part = _ParameterPart(base=base, vectors=experts, next_state=incoming, raw=True)
            if cfg.propagates and self.last_in_chain:  # nothing uses the next base
                part.next_state = None
                part.alpha = None if incoming is None else incoming.alpha
            elif cfg.method == "ep-camex":  # (γ/N) Σ_i τ_i = γ (mean_i E_i − E_m)
                step = {name: e.mean(dim=0) - base[name] for name, e in experts.items()}
                step = self._ep_step(step)
                part.next_state = PropagationState(
                    base=_axpy(base, cfg.gamma, step), layer=layer_index + 1
                )
                if self.bargaining_stats:  # τ_i formed for the diagnostics only
                    with torch.no_grad():
                        tau = {name: e - base[name] for name, e in experts.items()}
                    part.bargaining = propagation_stats(tau, None, None, step, base, cfg.gamma)
            return part
        # NAMEx on plain τ with a non-differentiable α and the Nash step length: τ_i feeds only
        # the (detached) Gram matrix and the direction Σ α_i τ_i, whose gradient is analytic
        # (_DomainSum): τ is formed without autograd and the merge takes the raw experts
        nash_raw = (
            plain
            and cfg.propagates
            and cfg.method != "ep-camex"
            and (raw or cfg.unit != "token")
            and cfg.bargain_on == "tau"
            and not cfg.differentiable_alpha
            and cfg.step_norm != "mean"
        )
        solve = layer_index == 0 if cfg.nash_every is None else layer_index % cfg.nash_every == 0
        reuse = solve and reuse_solve and self._solve_record is not None
        reuse = reuse and not cfg.differentiable_alpha
        if nash_raw:
            # τ only where a Gram matrix is formed (a solve) or the diagnostics read it
            tau = None
            gram_here = solve and not reuse and not skip
            if self.bargaining_stats or (gram_here and not _chunked_gram(experts)):
                with torch.no_grad():
                    tau = {name: e - base[name] for name, e in experts.items()}
            raw = True
        else:
            tau = {name: e - base[name] for name, e in experts.items()}
        if cfg.merge_mask == "ties":
            masked = {name: t * _ties_mask(t) for name, t in tau.items()}
        else:
            masked = tau
        curved = self.curvature(masked) if cfg.curvature_rank > 0 else masked
        part = _ParameterPart(
            base=base, vectors=experts if raw else curved, next_state=incoming, raw=raw
        )
        if not cfg.propagates:
            return part
        if skip:  # nothing uses the next base: skip the step and the solve
            part.next_state = None
            part.alpha = None if incoming is None else incoming.alpha
            return part
        if cfg.method == "ep-camex":
            step = self._ep_step({name: d.mean(dim=0) for name, d in curved.items()})
            part.next_state = PropagationState(
                base=_axpy(base, cfg.gamma, step), layer=layer_index + 1
            )
            if self.bargaining_stats:
                part.bargaining = propagation_stats(curved, None, None, step, base, cfg.gamma)
            return part
        players = tau if cfg.bargain_on == "tau" else curved
        if reuse:
            part.alpha, part.residual, part.status = self._solve_record  # recomputation: same α
            part.solved = True
        elif solve:
            if players is None:  # nash_raw on the CPU: the Gram matrix without τ
                self._bargain(None, part, gram=_difference_gram(experts, base))
            else:
                self._bargain(players, part)
            self._solve_record = (part.alpha.detach(), part.residual, part.status)
        elif incoming is None or incoming.alpha is None:
            raise ValueError("no Nash weights to reuse: the previous MoE layer did not pass α")
        else:
            part.alpha = incoming.alpha
        if self.last_in_chain:  # α was needed by the merge line only (merge_weights)
            part.next_state = None  # no step taken: no diagnostics of it
            return part
        finish = functools.partial(
            self._propagate,
            part,
            incoming=incoming,
            base=base,
            players=players,
            layer_index=layer_index,
        )
        if nash_raw and defer_direction and players is None and not self.bargaining_stats:
            # the merge computes Σ α_i (E_i − E_m) with its tiles (merge_and_apply(direction=)):
            # no separate pass over the experts, and their gradient from the step is added
            # in the merge's backward pass; _forward_merged calls finish with it
            part.finish = finish
            return part
        if nash_raw:  # Σ α_i (E_i − E_m) (from the detached τ if formed), gradients to E, E_m
            delta = {
                name: _DomainSum.apply(
                    part.alpha, None if players is None else players[name], e, base[name]
                )
                for name, e in experts.items()
            }
        else:
            delta = {
                name: (part.alpha.to(p.dtype) @ p.reshape(p.shape[0], -1)).view(p.shape[1:])
                for name, p in players.items()
            }
        finish(delta)
        return part

    def _propagate(
        self,
        part: _ParameterPart,
        delta: dict[str, Tensor],
        *,
        incoming: PropagationState | None,
        base: dict[str, Tensor],
        players: dict[str, Tensor] | None,
        layer_index: int,
    ) -> None:
        """The propagation step from the direction ``delta = Σ_i α_i τ_i``: the step length,
        complex momentum, the next base ``E_m + γ step`` and ``part.next_state``."""
        cfg = self.config
        direction = delta
        if cfg.step_norm == "mean":
            target = _norm({name: p.mean(dim=0) for name, p in players.items()})
            scale = target / _norm(delta).clamp_min(torch.finfo(target.dtype).tiny)
            delta = {name: dl * scale for name, dl in delta.items()}
        mom_re = mom_im = None
        if cfg.uses_momentum:
            r, phi = cfg.momentum, cfg.momentum_angle
            if incoming is not None and incoming.momentum_re is not None:
                a, b = r * math.cos(phi), r * math.sin(phi)
                prev_re, prev_im = incoming.momentum_re, incoming.momentum_im
                # μ ← (a + ib) μ + Δ, two fused multiply-adds per part (P-sized passes)
                mom_re = {
                    n: torch.add(delta[n], prev_re[n], alpha=a).sub_(prev_im[n], alpha=b)
                    for n in delta
                }
                mom_im = {n: torch.mul(prev_re[n], b).add_(prev_im[n], alpha=a) for n in delta}
            else:  # μ starts at 0 at the first MoE layer of every forward pass
                mom_re = delta
                mom_im = {n: torch.zeros_like(dl) for n, dl in delta.items()}
            step = mom_re
        else:
            step = delta
        if part.solved:
            status, residual = part.status, part.residual
        else:
            status, residual = incoming.status, incoming.residual
        if self.bargaining_stats:
            part.bargaining = propagation_stats(
                players, part.alpha, direction, step, base, cfg.gamma
            )
        part.next_state = PropagationState(
            base=_axpy(base, cfg.gamma, step),
            momentum_re=mom_re,
            momentum_im=mom_im,
            alpha=part.alpha,
            status=status,
            residual=residual,
            layer=layer_index + 1,
        )

    def _ep_step(self, mean: dict[str, Tensor]) -> dict[str, Tensor]:
        """EP-CAMEx's step: the mean m of the domain vectors, or with ``step_norm="nash"`` the
        same direction with NAMEx's step length, √N · m / ‖m‖ (the norm of Σ_i α_i τ_i,
        whatever the scale of the τ_i; NAMEx paper, ICLR 2026, section 3 of the spec)."""
        if self.config.step_norm != "nash":
            return mean
        norm = _norm(mean)
        scale = math.sqrt(self.config.num_experts) / norm.clamp_min(torch.finfo(norm.dtype).tiny)
        return {name: m * scale for name, m in mean.items()}

    def _bargain(
        self, players: dict[str, Tensor] | None, part: _ParameterPart, gram: Tensor | None = None
    ) -> None:
        """Solve the Nash bargaining problem among the experts' domain vectors (warm-started);
        ``gram``: their Gram matrix, given instead of ``players``."""
        cfg = self.config
        if gram is None:
            gram = self._gram(players)
        with torch.no_grad():
            default = gram.diagonal().detach().double().clamp_min(1e-300).rsqrt()
            init = torch.where(self.alpha_prev > 0, self.alpha_prev, default)
        solution = _solve_nash(
            gram,
            max_iter=cfg.nash_max_iter,
            tol=cfg.nash_tol,
            init=init,
            differentiable=cfg.differentiable_alpha,
        )
        with torch.no_grad():
            usable = (solution.status == _OK) | (solution.status == _NOT_CONVERGED)
            self.alpha_prev.copy_(torch.where(usable, solution.alpha.double(), self.alpha_prev))
        part.alpha = solution.alpha
        part.residual = solution.residual
        part.status = solution.status
        part.solved = True

    def _gram(self, players: dict[str, Tensor]) -> Tensor:
        """``G_ij = Σ_tensors <P_i, P_j>`` in float32 at least (detached unless α is
        differentiable)."""
        with torch.autocast(next(iter(players.values())).device.type, enabled=False):
            gram = None
            for p in players.values():
                v = p.reshape(p.shape[0], -1)
                v = v if v.dtype in (torch.float32, torch.float64) else v.float()
                if not self.config.differentiable_alpha:
                    v = v.detach()
                gram = v @ v.T if gram is None else gram + v @ v.T
        return gram

    # ------------------------------------------------------------------ incremental decoding
    def _forward_cached(
        self, x: Tensor, part: _ParameterPart, cache: SegmentCache, start_pos: int
    ) -> tuple[Tensor, MoEAux]:
        cfg = self.config
        if cfg.unit != "segment" or cfg.first_segment != "prior":
            raise ValueError(
                "incremental decoding needs causal segment routing (unit='segment', "
                "first_segment='prior'); 'self' routes segment 0 by its own (future) tokens"
            )
        t = cfg.segment_len
        if start_pos == 0:
            out, aux = self._forward_merged(x, part, None)
            _b, s, _ = x.shape
            cache.length = s
            last = num_segments(s, t) - 1
            cache.segment_sum = x[:, last * t :].sum(dim=1)
            _, scores = self._unit_scores(x, None)
            cache.scores = scores[:, last]
            merge_scores, index = self._selection(self._merge_weights(cache.scores, part))
            cache.weights = self._merge(part, self._coefficients(merge_scores, out.dtype), index)
            return out, aux
        if cache.segment_sum is None:
            raise ValueError(
                "empty decoding cache: start with start_pos=0 (the prompt; in a model linked "
                "with link_moe_layers, run the prompt with use_cache=True)"
            )
        if start_pos != cache.length:
            raise ValueError(
                f"the decoding cache holds {cache.length} tokens but the new tokens start at "
                f"position {start_pos}: segment routing decodes contiguously from a prompt at "
                "position 0 (rewinding or reordering the cache is not supported)"
            )
        cache.length += x.shape[1]
        outs = []
        for i in range(x.shape[1]):  # new tokens, usually one
            pos = start_pos + i
            token = x[:, i : i + 1]
            if pos % t == 0:  # the previous segment is complete: route the new one by its mean
                logits = self._logits(cache.segment_sum / t)
                cache.scores = torch.softmax(_at_least_float32(logits), dim=-1)
                merge_scores, index = self._selection(self._merge_weights(cache.scores, part))
                cache.weights = self._merge(part, self._coefficients(merge_scores, x.dtype), index)
                cache.segment_sum = torch.zeros_like(cache.segment_sum)
            outs.append(merged_ffn(token, cache.weights, self.act))
            cache.segment_sum = cache.segment_sum + token[:, 0]
        zero = x.new_zeros((), dtype=torch.float32)
        aux = MoEAux(loss=zero, balance_loss=zero, z_loss=zero)
        self._fill_aux(aux, part)
        return torch.cat(outs, dim=1), aux

    def extra_repr(self) -> str:
        cfg = self.config
        parts = [f"method={cfg.method!r}", f"d_model={cfg.d_model}", f"d_ff={cfg.d_ff}"]
        if cfg.method != "dense":
            parts.append(f"num_experts={cfg.num_experts}")
        if cfg.is_merging:
            parts.append(f"unit={cfg.unit!r}")
            if cfg.merge_top_k is not None:
                parts.append(f"merge_top_k={cfg.merge_top_k}")
        if cfg.shared_experts:
            parts.append(f"shared_experts={cfg.shared_experts}")
        if cfg.propagates:
            parts.append(f"owns_base={self.owns_base}")
        return ", ".join(parts)


_OK = int(NashStatus.OK)
_NOT_CONVERGED = int(NashStatus.NOT_CONVERGED)
_DEGENERATE = int(NashStatus.DEGENERATE)
_INFEASIBLE = int(NashStatus.INFEASIBLE)


@torch.library.custom_op("nashmoe::nash_solve", mutates_args=())
def _nash_solve_op(
    gram: Tensor, init: Tensor, max_iter: int, tol: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    sol = nash_bargaining(gram, max_iter=max_iter, tol=tol, init=init, validate=False)
    # Fresh outputs (a custom op may not return views of its inputs).
    return sol.alpha.clone(), sol.residual.clone(), sol.iterations.clone(), sol.status.clone()


@_nash_solve_op.register_fake
def _(gram: Tensor, init: Tensor, max_iter: int, tol: float):
    dtype = gram.dtype if gram.dtype in (torch.float32, torch.float64) else torch.float32
    batch = gram.shape[:-1]
    return (
        gram.new_empty(batch, dtype=dtype),
        gram.new_empty(batch[:-1], dtype=dtype),
        gram.new_empty(batch[:-1], dtype=torch.int64),
        gram.new_empty(batch[:-1], dtype=torch.int64),
    )


@torch.compiler.disable
def _solve_nash_differentiable(gram: Tensor, **kwargs) -> NashSolution:
    return nash_bargaining(gram, validate=False, differentiable=True, **kwargs)


def _solve_nash(
    gram: Tensor, *, max_iter: int, tol: float, init: Tensor, differentiable: bool
) -> NashSolution:
    """The Nash solve of a layer, traceable by ``torch.compile``.

    Its Newton loop stops early on the CPU (a data-dependent branch) and runs a fixed number of
    masked iterations on CUDA (no host synchronisation); either way it is a tiny ``[N, N]``
    problem, so compiling it gains nothing. Under ``torch.compile`` it is called as an opaque
    custom op (``nashmoe::nash_solve``), so the layer still compiles to one graph
    (``fullgraph=True``). With ``differentiable_alpha`` (implicit differentiation) the solve
    stays outside the graph instead: a deliberate ``torch.compiler.disable`` boundary, i.e. one
    graph break.
    """
    if differentiable and gram.requires_grad:
        return _solve_nash_differentiable(gram, max_iter=max_iter, tol=tol, init=init)
    if not torch.compiler.is_compiling():
        return nash_bargaining(gram, max_iter=max_iter, tol=tol, init=init, validate=False)
    alpha, residual, iterations, status = _nash_solve_op(gram.detach(), init, max_iter, tol)
    return NashSolution(alpha=alpha, residual=residual, iterations=iterations, status=status)


# Columns per chunk of the Gram matrix of E_i − E_m: [N, 16384] float32 is 512 KiB per chunk
# (it stays in L2 between the subtraction and its product).
_GRAM_CHUNK = 16384


def _fusable() -> bool:
    """Whether NAMEx's direction may be left to the merge (``merge_and_apply(direction=)``):
    in eager mode (under ``torch.compile`` the layer keeps one plain graph)."""
    return not torch.compiler.is_compiling()


def _chunked_gram(experts: dict[str, Tensor]) -> bool:
    """Whether :func:`_difference_gram` is used: eager CPU (under ``torch.compile`` its loop
    would unroll; off the CPU one subtraction and one product are as fast)."""
    first = next(iter(experts.values()))
    return first.device.type == "cpu" and not torch.compiler.is_compiling()


def _difference_gram(experts: dict[str, Tensor], base: dict[str, Tensor]) -> Tensor:
    """``G_ij = Σ_tensors <E_i − E_m, E_j − E_m>`` (detached, float32 at least) in chunks of
    columns, so the N·P differences τ are never written out: one read of the experts."""
    with torch.no_grad():
        gram = None
        for name, e in experts.items():
            v = e.reshape(e.shape[0], -1)
            b = base[name].reshape(-1)
            dtype = v.dtype if v.dtype in (torch.float32, torch.float64) else torch.float32
            if gram is None:
                gram = torch.zeros(v.shape[0], v.shape[0], dtype=dtype, device=v.device)
            width = v.shape[1]
            buf = torch.empty(v.shape[0], min(_GRAM_CHUNK, width), dtype=dtype, device=v.device)
            for s in range(0, width, _GRAM_CHUNK):
                w = min(_GRAM_CHUNK, width - s)
                t = buf[:, :w]
                torch.sub(v[:, s : s + w].to(dtype), b[s : s + w].to(dtype), out=t)
                gram.addmm_(t, t.T)
    return gram


def _in_backward() -> bool:
    """Whether autograd is running a backward pass on this thread: activation checkpointing
    (reentrant or not) recomputes a layer's forward there."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    if task is None or torch.compiler.is_compiling():
        return False
    return task() != -1


def _at_least_float32(x: Tensor) -> Tensor:
    """Routing probabilities in float32 at least (float64 stays float64), even under autocast."""
    return x if x.dtype == torch.float64 else x.float()


def _axpy(x: dict[str, Tensor], a: float, y: dict[str, Tensor]) -> dict[str, Tensor]:
    """``x + a y`` per tensor, one fused pass each."""
    return {name: torch.add(x[name], y[name], alpha=a) for name in x}


def _norm(tensors: dict[str, Tensor]) -> Tensor:
    """Euclidean norm of a set of tensors seen as one vector."""
    return torch.sqrt(sum(t.square().sum() for t in tensors.values()))


def _ties_mask(tau: Tensor) -> Tensor:
    """TIES sign agreement: keep τ_i where its sign matches the sign of Σ_j τ_j (elementwise)."""
    return (torch.sign(tau) == torch.sign(tau.sum(dim=0, keepdim=True))).to(tau.dtype)


def set_bargaining_stats(model: nn.Module, enabled: bool) -> None:
    """Turn the bargaining diagnostics (``aux.bargaining``, :mod:`nashmoe.moe.bargain_stats`) of
    every MoE layer of ``model`` on or off (off by default: they cost a few passes over the
    domain vectors). Under ``torch.compile`` each setting is its own graph."""
    for module in model.modules():
        if isinstance(module, MoEFeedForward):
            module.bargaining_stats = bool(enabled)
