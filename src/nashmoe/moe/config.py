"""Configuration of one MoE feed-forward layer: a small frozen dataclass, validated on creation.

Method-specific fields default to ``None`` and resolve to the method's documented default, so a
field given to a method that does not use it (``gamma`` for CAMEx, ``top_k`` for NAMEx) is an
error rather than silently ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

__all__ = [
    "MERGE_WEIGHTS",
    "MERGING_METHODS",
    "METHODS",
    "MOMENTUM_METHODS",
    "NASH_METHODS",
    "PROPAGATING_METHODS",
    "MoEConfig",
    "UnusedOptionError",
    "config_with_used_options",
]

METHODS = (
    "dense",
    "smoe",
    "smear",
    "camex",
    "ep-camex",
    "namex",
    "namex-full",
    "namex-mom",
    "namex-full-mom",
)
"""Every method, in the order tables list them."""

MERGING_METHODS = (
    "smear",
    "camex",
    "ep-camex",
    "namex",
    "namex-full",
    "namex-mom",
    "namex-full-mom",
)
"""Methods that merge the experts into one expert per routing unit."""

CURVED_METHODS = ("camex", "ep-camex", "namex", "namex-full", "namex-mom", "namex-full-mom")
"""Methods with a base expert, domain vectors τ_i = E_i − E_m and the curvature-aware merge."""

PROPAGATING_METHODS = ("ep-camex", "namex", "namex-full", "namex-mom", "namex-full-mom")
"""Methods that propagate the base expert from one MoE layer to the next."""

NASH_METHODS = ("namex", "namex-full", "namex-mom", "namex-full-mom")
"""Methods whose propagation direction is the Nash bargaining solution among the experts."""

MOMENTUM_METHODS = ("namex-mom", "namex-full-mom")
"""Methods with complex momentum across layers."""

MERGE_WEIGHTS = ("router", "nash", "product")
"""What weights the merge line of the NAMEx methods uses (``MoEConfig.merge_weights``)."""

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
UNITS = ("token", "segment", "sequence", "image")

# Defaults chosen by the sweep documented in docs/design.md ("Defaults").
DEFAULT_TOP_K = 2
DEFAULT_ETA = 2.0
DEFAULT_GAMMA = 1.0
DEFAULT_MOMENTUM = 0.3
DEFAULT_MOMENTUM_ANGLE = math.pi / 6
DEFAULT_CURVATURE_RANK = 0
DEFAULT_CURVATURE_INIT = 1.0


class UnusedOptionError(ValueError):
    """A field was set that the chosen method does not use (``field``, ``used_by``)."""

    def __init__(self, field: str, used_by: str, method: str) -> None:
        super().__init__(f"{field} is only used by {used_by}, not by method {method!r}")
        self.field, self.used_by, self.method = field, used_by, method


@dataclass(frozen=True)
class MoEConfig:
    """Settings of :class:`nashmoe.moe.MoEFeedForward`.

    Attributes:
        method: one of :data:`METHODS`.
        d_model, d_ff: model width and expert (FFN) width.
        num_experts: N (ignored by ``dense``).
        top_k: experts per token for ``smoe`` (default 2).
        activation: ``gelu``, ``gelu_tanh``, ``relu`` or ``silu``.
        glu: gated expert ``act(x W_gateᵀ) ⊙ (x W_inᵀ)`` (HF's gate/up convention).
        bias: expert biases.
        eta: initial merge step η (CAMEx family), learnable when ``learn_eta``. Default 2.0: with
            η = 1, identity curvature and softmax scores the merge collapses to SMEAR and the
            base expert has no effect (spec section 2).
        gamma: propagation step γ (EP-CAMEx and NAMEx variants).
        momentum: r ∈ [0, 1) of the complex momentum β = r e^{iφ} (-mom variants).
        momentum_angle: φ ∈ (−π, π] (-mom variants).
        nash_every: Δl, re-solve α every Δl MoE layers (1 for the -full variants; ``None`` = only
            at the first MoE layer, the plain NAMEx).
        nash_max_iter, nash_tol: the bargaining budget per solve (warm-started across steps).
            The default tolerance is tight (Newton converges quadratically, so it costs about
            one iteration more than 1e-6) so that α does not depend on the warm start.
        curvature_rank: R, rank of the Kronecker curvature operator M_i (0 = identity).
        curvature_init: initial scale c of M_i (M_i = c·I at initialisation).
        step_norm: the length of the propagation step ΔE (propagating methods). NAMEx:
            ``"nash"`` (default, the paper: ΔE = Σ α_i τ_i, whose norm is √N whatever the
            scale of the τ_i) or ``"mean"`` (ΔE rescaled to the norm of the plain mean of the
            τ_i, which makes γ comparable to EP-CAMEx). EP-CAMEx: ``"mean"`` (default, its
            own step ΔE = (1/N) Σ_i D_i) or ``"nash"`` (the direction of that mean with
            NAMEx's step length: ΔE = √N · m / ‖m‖, m = (1/N) Σ_i D_i). With ``"nash"``
            EP-CAMEx is "EP-CAMEx with γ rescaled to NAMEx's step length", at every step and
            whatever the scale of the τ_i, so that a comparison with NAMEx changes the
            direction only (the ablation of the NAMEx paper's bargaining, ICLR 2026).
        merge_weights: the weights of the merge line Ê(u) = E_m + η Σ_i w_i(u) M_i(τ_i)
            (NAMEx methods; an ablation reviewers of the NAMEx paper asked for):
            ``"router"`` (default, the paper: w = s(u), the router scores), ``"nash"``
            (w_i = α_i / Σ_j α_j, the layer's Nash weights normalised to sum one, the same
            for every unit: the router then only gets gradients from the balance loss) or
            ``"product"`` (w_i(u) = s_i(u) α_i / Σ_j s_j(u) α_j). With ``merge_top_k`` the
            top-k experts are chosen by w and w is renormalised over them. The balance
            loss keeps the router scores.
        bargain_on: ``"tau"`` (the paper) or ``"curved_tau"`` (bargain on M_i(τ_i)).
        differentiable_alpha: implicit differentiation through α (default: α is a constant).
        router_noise: std of Gaussian noise added to router logits in training.
        balance_coef: coefficient of the load-balancing loss (Switch-style; 0.01 as MomentumSMoE).
        z_loss_coef: coefficient of the router z-loss (ST-MoE; off by default).
        merge_mask: ``"none"`` or ``"ties"`` (TIES sign-agreement mask on the τ_i, as CAMEx's
            best GLUE variant). Where it applies: to the domain vectors before the curvature,
            D_i = M_i(mask_i ⊙ τ_i), so in the merge line and also in EP-CAMEx's propagation
            (E_m + (γ/N) Σ_i D_i). NAMEx bargains on the unmasked τ_i with
            ``bargain_on="tau"`` and on the masked, curved D_i with ``"curved_tau"``. The mask
            is computed over all N experts, also with ``merge_top_k``.
        unit: routing unit of the merging methods: ``"token"``, ``"segment"`` (causal LM),
            ``"sequence"`` (encoder; masked mean) or ``"image"``. Default ``"segment"``;
            ``smoe`` always routes per token.
        segment_len: T, tokens per segment.
        first_segment: ``"prior"`` (strictly causal: a learned prior routing distribution) or
            ``"self"`` (segment 0 routed by its own mean, as the public CAMEx/Lory code; leaks
            future tokens of segment 0 into its earlier positions).
        init_std: std of the normal initialisation of expert and base weights.
        out_init_std: std for the output projections (default ``init_std``).

    Routing of real MoE families (``smoe`` only; :mod:`nashmoe.moe.families` gives the settings
    of Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE and DeepSeek-V3 and copies their weights):

        score_func: ``"softmax"`` (default; Mixtral, Qwen, OLMoE) or ``"sigmoid"`` (DeepSeek-V3)
            scores of the router logits. (Softmax over the top-k logits, as GPT-OSS, equals
            softmax over all experts followed by ``norm_topk=True``.)
        norm_topk: renormalise the k chosen scores to sum to one (default True: Mixtral;
            HF's ``norm_topk_prob``, False in Qwen1.5/Qwen2-MoE and OLMoE).
        routed_scaling: factor multiplying the routed weights (default 1.0; DeepSeek-V3's
            ``routed_scaling_factor``, applied after the renormalisation).
        n_group, topk_group: group-limited top-k (DeepSeek-V3): the experts form ``n_group``
            equal groups, a group's score is the sum of its two best selection scores, only the
            ``topk_group`` best groups are eligible. Give both or neither.
        bias_balancing: aux-loss-free balancing (Wang et al., arXiv 2408.15664; DeepSeek-V3):
            a per-expert buffer ``expert_bias`` is added to the scores for the top-k selection
            only; the weights use the unbiased scores. Training forwards count the tokens sent
            to each expert (buffer ``expert_load``); :meth:`MoEFeedForward.update_router_bias`
            (or :func:`nashmoe.moe.update_router_biases` for a model) then applies
            ``b_i += u · sign(mean load − load_i)`` (centred to keep mean 0) and resets the
            counts. Call it once per optimizer step, e.g. from
            ``optimizer.register_step_pre_hook``.
        bias_update_rate: u above (default 1e-3, the rate of DeepSeek-V3 and torchtitan).

    Every method with a router:

        router_bias: a learnable bias on the router logits (GPT-OSS has one; the five families
            above do not).
        shared_experts: number of shared experts applied to every token beside the routed or
            merged expert (Qwen2-MoE: 1; DeepSeek-V3: ``n_shared_experts``). They are stored
            as one FFN of width ``shared_experts · shared_d_ff`` (``shared_w_in`` ...; the sum
            of several FFNs is one FFN with their hidden units concatenated), with the same
            activation, GLU and bias settings as the experts. For the merging methods they
            are added to the merged expert's output (y = merged(x) + shared(x)) and take no
            part in the merge or the propagation.
        shared_d_ff: width of one shared expert (default ``d_ff``).
        shared_gate: gate the shared output per token by ``sigmoid(x · shared_gate_weight)``
            (Qwen2-MoE's ``shared_expert_gate``; default False, ungated as DeepSeek).

    Sparse merging (merging methods):

        merge_top_k: the merged expert of a unit uses only its k highest-scoring experts, with
            the scores renormalised over them (CAMEx's sparse path, SMEAR's top-k variant):
            ``Ê = E_m + η Σ_{i∈topk} s̃_i M_i(τ_i)`` (SMEAR: ``Σ_{i∈topk} s̃_i E_i``),
            ``s̃_i = s_i / Σ_{j∈topk} s_j``. Only the k selected vectors are gathered per unit
            (cost ∝ k, not N). The propagation (EP-CAMEx's mean, NAMEx's bargaining) still
            involves all N experts. Default None: all N (the paper's soft merge).

    Loss convention:

        balance_loss_scale: ``"nashmoe"`` (default): ``N Σ_i f_i P_i`` with f_i the fraction of
            the M·k assignments (Σ f = 1); ``"transformers"``: k times that, the value of HF's
            ``load_balancing_loss_func`` (its f_i divides the counts by the M tokens, so Σ f = k),
            so that a converted model's ``router_aux_loss_coef`` keeps its meaning as
            ``balance_coef``. k is ``top_k`` (smoe), ``merge_top_k`` or 1 (merging methods).
            HF re-derives the top-k from a softmax of the logits; with sigmoid scores, a
            selection bias or group-limited routing the two use different assignments, and
            with sigmoid scores P_i uses the normalised scores ``s_i / Σ_j s_j``.
    """

    method: str
    d_model: int
    d_ff: int
    num_experts: int = 8
    top_k: int | None = None
    activation: str = "gelu"
    glu: bool = False
    bias: bool = False
    eta: float | None = None
    learn_eta: bool | None = None
    gamma: float | None = None
    momentum: float | None = None
    momentum_angle: float | None = None
    nash_every: int | None = None
    nash_max_iter: int = 20
    nash_tol: float = 1e-10
    curvature_rank: int | None = None
    curvature_init: float | None = None
    step_norm: str | None = None
    merge_weights: str | None = None
    bargain_on: str | None = None
    differentiable_alpha: bool | None = None
    router_noise: float = 0.0
    balance_coef: float = 0.01
    z_loss_coef: float = 0.0
    merge_mask: str | None = None
    unit: str | None = None
    segment_len: int | None = None
    first_segment: str | None = None
    init_std: float = 0.02
    out_init_std: float | None = None
    # routing of real families, shared experts, sparse merging, loss convention
    score_func: str | None = None
    norm_topk: bool | None = None
    routed_scaling: float | None = None
    n_group: int | None = None
    topk_group: int | None = None
    bias_balancing: bool | None = None
    bias_update_rate: float | None = None
    router_bias: bool = False
    shared_experts: int = 0
    shared_d_ff: int | None = None
    shared_gate: bool | None = None
    merge_top_k: int | None = None
    balance_loss_scale: str = "nashmoe"

    # ------------------------------------------------------------------ derived properties
    @property
    def is_merging(self) -> bool:
        return self.method in MERGING_METHODS

    @property
    def is_curved(self) -> bool:
        return self.method in CURVED_METHODS

    @property
    def propagates(self) -> bool:
        return self.method in PROPAGATING_METHODS

    @property
    def uses_nash(self) -> bool:
        return self.method in NASH_METHODS

    @property
    def uses_momentum(self) -> bool:
        return self.method in MOMENTUM_METHODS

    def replace(self, **changes) -> MoEConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        m = self.method
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
        for name in ("d_model", "d_ff", "num_experts"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}"
            )

        def only_for(field: str, methods: tuple[str, ...], what: str) -> bool:
            given = getattr(self, field) is not None
            if given and m not in methods:
                raise UnusedOptionError(field, what, m)
            return given

        def resolve(field: str, value) -> None:
            if getattr(self, field) is None:
                object.__setattr__(self, field, value)

        # smoe
        only_for("top_k", ("smoe",), "method 'smoe'")
        if m == "smoe":
            resolve("top_k", DEFAULT_TOP_K)
            if not isinstance(self.top_k, int) or not 1 <= self.top_k <= self.num_experts:
                raise ValueError(
                    f"top_k must be an integer in [1, num_experts={self.num_experts}], "
                    f"got {self.top_k!r}"
                )
        # curvature-aware merge (CAMEx family)
        curved = "the CAMEx family (camex, ep-camex, namex*)"
        for f in ("eta", "learn_eta", "curvature_rank", "curvature_init", "merge_mask"):
            only_for(f, CURVED_METHODS, curved)
        if self.is_curved:
            resolve("eta", DEFAULT_ETA)
            resolve("learn_eta", True)
            resolve("curvature_rank", DEFAULT_CURVATURE_RANK)
            resolve("curvature_init", DEFAULT_CURVATURE_INIT)
            resolve("merge_mask", "none")
            if not math.isfinite(self.eta):
                raise ValueError(f"eta must be finite, got {self.eta!r}")
            if not isinstance(self.curvature_rank, int) or self.curvature_rank < 0:
                raise ValueError(
                    f"curvature_rank must be a non-negative integer, got {self.curvature_rank!r}"
                )
            if not (math.isfinite(self.curvature_init) and self.curvature_init > 0):
                raise ValueError(f"curvature_init must be positive, got {self.curvature_init!r}")
            if self.merge_mask not in ("none", "ties"):
                raise ValueError(f"merge_mask must be 'none' or 'ties', got {self.merge_mask!r}")
        # propagation
        for f in ("gamma", "step_norm"):
            only_for(f, PROPAGATING_METHODS, "propagating methods (ep-camex, namex*)")
        if self.propagates:
            resolve("gamma", DEFAULT_GAMMA)
            resolve("step_norm", "mean" if m == "ep-camex" else "nash")
            if not math.isfinite(self.gamma):
                raise ValueError(f"gamma must be finite, got {self.gamma!r}")
            if self.step_norm not in ("nash", "mean"):
                raise ValueError(f"step_norm must be 'nash' or 'mean', got {self.step_norm!r}")
        # Nash bargaining
        nash = "the NAMEx methods (namex, namex-full, namex-mom, namex-full-mom)"
        for f in ("nash_every", "bargain_on", "differentiable_alpha", "merge_weights"):
            only_for(f, NASH_METHODS, nash)
        if self.uses_nash:
            full = m in ("namex-full", "namex-full-mom")
            if full and self.nash_every not in (None, 1):
                raise ValueError(
                    f"method {m!r} re-solves at every layer (nash_every=1); use 'namex' or "
                    f"'namex-mom' with nash_every={self.nash_every} for other intervals"
                )
            resolve("nash_every", 1 if full else None)
            if self.nash_every is not None and (
                not isinstance(self.nash_every, int) or self.nash_every < 1
            ):
                raise ValueError(
                    f"nash_every must be a positive integer or None, got {self.nash_every!r}"
                )
            resolve("bargain_on", "tau")
            resolve("differentiable_alpha", False)
            resolve("merge_weights", "router")
            if self.merge_weights not in MERGE_WEIGHTS:
                raise ValueError(
                    f"merge_weights must be one of {', '.join(MERGE_WEIGHTS)}, "
                    f"got {self.merge_weights!r}"
                )
            if self.bargain_on not in ("tau", "curved_tau"):
                raise ValueError(
                    f"bargain_on must be 'tau' or 'curved_tau', got {self.bargain_on!r}"
                )
            if not isinstance(self.nash_max_iter, int) or self.nash_max_iter < 1:
                raise ValueError(
                    f"nash_max_iter must be a positive integer, got {self.nash_max_iter!r}"
                )
            if not self.nash_tol > 0:
                raise ValueError(f"nash_tol must be positive, got {self.nash_tol!r}")
        # complex momentum
        mom = "the momentum methods (namex-mom, namex-full-mom)"
        only_for("momentum", MOMENTUM_METHODS, mom)
        only_for("momentum_angle", MOMENTUM_METHODS, mom)
        if self.uses_momentum:
            resolve("momentum", DEFAULT_MOMENTUM)
            resolve("momentum_angle", DEFAULT_MOMENTUM_ANGLE)
            if not 0 <= self.momentum < 1:
                raise ValueError(f"momentum r must be in [0, 1), got {self.momentum!r}")
            if not -math.pi < self.momentum_angle <= math.pi:
                raise ValueError(
                    f"momentum_angle phi must be in (-pi, pi], got {self.momentum_angle!r}"
                )
        # routing units
        merging = "the merging methods (smear, camex, ep-camex, namex*)"
        only_for("unit", MERGING_METHODS, merging + "; smoe always routes per token")
        only_for("first_segment", MERGING_METHODS, merging)
        only_for("segment_len", MERGING_METHODS, merging)
        if self.is_merging:
            resolve("unit", "segment")
            if self.unit not in UNITS:
                raise ValueError(f"unknown unit {self.unit!r}; choose from {', '.join(UNITS)}")
            if self.unit != "segment":
                if self.segment_len is not None or self.first_segment is not None:
                    raise ValueError("segment_len and first_segment apply to unit='segment' only")
            else:
                resolve("segment_len", 256)
                resolve("first_segment", "prior")
                if not isinstance(self.segment_len, int) or self.segment_len < 1:
                    raise ValueError(
                        f"segment_len must be a positive integer, got {self.segment_len!r}"
                    )
                if self.first_segment not in ("prior", "self"):
                    raise ValueError(
                        f"first_segment must be 'prior' or 'self', got {self.first_segment!r}"
                    )
        for name in ("router_noise", "balance_coef", "z_loss_coef"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be non-negative and finite, got {value!r}")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be positive, got {self.init_std!r}")
        resolve("out_init_std", self.init_std)
        self._validate_routing(only_for, resolve)

    def _validate_routing(self, only_for, resolve) -> None:
        """Routing of real families, shared experts, sparse merging, loss convention."""
        m, n = self.method, self.num_experts
        smoe = ("smoe",)
        for f in (
            "score_func",
            "norm_topk",
            "routed_scaling",
            "n_group",
            "topk_group",
            "bias_balancing",
            "bias_update_rate",
        ):
            only_for(f, smoe, "method 'smoe'")
        if m == "smoe":
            resolve("score_func", "softmax")
            resolve("norm_topk", True)
            resolve("routed_scaling", 1.0)
            resolve("bias_balancing", False)
            if self.score_func not in ("softmax", "sigmoid"):
                raise ValueError(
                    f"score_func must be 'softmax' or 'sigmoid', got {self.score_func!r}"
                )
            if not isinstance(self.norm_topk, bool):
                raise ValueError(f"norm_topk must be a bool, got {self.norm_topk!r}")
            if not (math.isfinite(self.routed_scaling) and self.routed_scaling > 0):
                raise ValueError(
                    f"routed_scaling must be positive and finite, got {self.routed_scaling!r}"
                )
            if (self.n_group is None) != (self.topk_group is None):
                raise ValueError("n_group and topk_group must be given together")
            if self.n_group is not None:
                if not isinstance(self.n_group, int) or self.n_group < 1 or n % self.n_group:
                    raise ValueError(
                        f"n_group must be a positive divisor of num_experts={n}, "
                        f"got {self.n_group!r}"
                    )
                if not isinstance(self.topk_group, int) or not (
                    1 <= self.topk_group <= self.n_group
                ):
                    raise ValueError(
                        f"topk_group must be an integer in [1, n_group={self.n_group}], "
                        f"got {self.topk_group!r}"
                    )
                if self.top_k > self.topk_group * (n // self.n_group):
                    raise ValueError(
                        f"top_k={self.top_k} exceeds the experts of topk_group={self.topk_group} "
                        f"groups of {n // self.n_group}"
                    )
            if not isinstance(self.bias_balancing, bool):
                raise ValueError(f"bias_balancing must be a bool, got {self.bias_balancing!r}")
            if self.bias_update_rate is not None and not self.bias_balancing:
                raise ValueError("bias_update_rate is only used with bias_balancing=True")
            if self.bias_balancing:
                resolve("bias_update_rate", 1e-3)
                if not (math.isfinite(self.bias_update_rate) and self.bias_update_rate > 0):
                    raise ValueError(
                        f"bias_update_rate must be positive and finite, "
                        f"got {self.bias_update_rate!r}"
                    )
        # every routed method
        routed = "methods with a router (not 'dense')"
        if m == "dense":
            if self.router_bias:
                raise UnusedOptionError("router_bias", routed, m)
            if self.shared_experts:
                raise UnusedOptionError("shared_experts", routed, m)
        if not isinstance(self.router_bias, bool):
            raise ValueError(f"router_bias must be a bool, got {self.router_bias!r}")
        if not isinstance(self.shared_experts, int) or self.shared_experts < 0:
            raise ValueError(
                f"shared_experts must be a non-negative integer, got {self.shared_experts!r}"
            )
        if not self.shared_experts:
            if self.shared_d_ff is not None or self.shared_gate is not None:
                raise ValueError("shared_d_ff and shared_gate need shared_experts >= 1")
        else:
            resolve("shared_d_ff", self.d_ff)
            resolve("shared_gate", False)
            if not isinstance(self.shared_d_ff, int) or self.shared_d_ff < 1:
                raise ValueError(
                    f"shared_d_ff must be a positive integer, got {self.shared_d_ff!r}"
                )
            if not isinstance(self.shared_gate, bool):
                raise ValueError(f"shared_gate must be a bool, got {self.shared_gate!r}")
        # sparse merging
        only_for(
            "merge_top_k", MERGING_METHODS, "the merging methods (smear, camex, ep-camex, namex*)"
        )
        if self.merge_top_k is not None and (
            not isinstance(self.merge_top_k, int) or not 1 <= self.merge_top_k <= n
        ):
            raise ValueError(
                f"merge_top_k must be None or an integer in [1, num_experts={n}], "
                f"got {self.merge_top_k!r}"
            )
        if self.balance_loss_scale not in ("nashmoe", "transformers"):
            raise ValueError(
                "balance_loss_scale must be 'nashmoe' or 'transformers', "
                f"got {self.balance_loss_scale!r}"
            )

    @property
    def balance_k(self) -> int:
        """k of the balance loss: assignments per routing decision."""
        if self.method == "smoe":
            return self.top_k
        return self.merge_top_k or 1

    def to_dict(self) -> dict:
        """The resolved settings as a JSON-serialisable dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def config_with_used_options(base: dict, options: dict) -> MoEConfig:
    """``MoEConfig(**base, **options)`` keeping only the ``options`` that ``base["method"]``
    uses: a model-wide option set (e.g. ``gamma``) applies to the methods that take it and is
    dropped for the others. Any other invalid option still raises."""
    kept = dict(options)
    for key, value in options.items():
        try:
            MoEConfig(**{**base, key: value})
        except UnusedOptionError:
            kept.pop(key)
    return MoEConfig(**{**base, **kept})
