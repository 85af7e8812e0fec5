"""Conversion and upcycling of transformers 5 models, and their registration with the Auto classes.

A converted (or upcycled) model keeps its transformers class as a base: its class becomes a
registered subclass (``NashMoEMixtralForCausalLM`` for ``MixtralForCausalLM`` ...) whose config
class (``model_type = "nashmoe_<model_type>"``) records what was done in ``config.nashmoe``. The
subclass rebuilds the same modules from that record on construction, so ``from_pretrained``
loads it, and its ``forward`` surfaces the balance loss the way the MoE families surface theirs.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from nashmoe.hf._families import ALL_FAMILIES as FAMILIES
from nashmoe.hf._families import config_for, load_block
from nashmoe.hf._layers import (
    AnchoredMoEFeedForward,
    MaskContext,
    SequenceMoEIntermediate,
    install_mask_hook,
)
from nashmoe.moe.adapter import MoEMLP
from nashmoe.moe.chain import link_moe_layers
from nashmoe.moe.config import METHODS, MoEConfig
from nashmoe.moe.layer import MoEFeedForward

__all__ = [
    "CONVERT_FAMILIES",
    "UPCYCLE_ARCHITECTURES",
    "convert",
    "load_checkpoint",
    "moe_layers",
    "register",
    "upcycle",
]

CONVERT_FAMILIES = tuple(FAMILIES)
"""``model_type`` of the sparse families :func:`convert` supports."""


@dataclass(frozen=True)
class DenseLayout:
    """Where a dense feed-forward block keeps its weights (explicit, never guessed).

    Attributes:
        block: class name of the module holding the FFN (replaced, or edited for BERT).
        up, gate, down: attribute paths from the block to the weight of the up, gate (GLU)
            and down projections; None: absent.
        transposed: the weights are ``Conv1D`` ([in, out], ``x @ W``; GPT-2) rather than
            ``nn.Linear`` ([out, in]).
        act_attr: the config attribute naming the activation.
        unit: the default routing unit of the merging methods.
    """

    block: str
    up: str
    gate: str | None
    down: str
    transposed: bool
    act_attr: str
    unit: str


UPCYCLE_ARCHITECTURES: dict[str, DenseLayout] = {
    "llama": DenseLayout(
        "LlamaMLP", "up_proj", "gate_proj", "down_proj", False, "hidden_act", "segment"
    ),
    "mistral": DenseLayout(
        "MistralMLP", "up_proj", "gate_proj", "down_proj", False, "hidden_act", "segment"
    ),
    "qwen2": DenseLayout(
        "Qwen2MLP", "up_proj", "gate_proj", "down_proj", False, "hidden_act", "segment"
    ),
    "gpt2": DenseLayout("GPT2MLP", "c_fc", None, "c_proj", True, "activation_function", "segment"),
    "bert": DenseLayout(
        "BertLayer", "intermediate.dense", None, "output.dense", False, "hidden_act", "sequence"
    ),
}
"""Dense architectures :func:`upcycle` supports (``model_type`` → layout)."""

_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
}

# model_type -> (config class, [(Auto class, model class), ...]) registered by register()
_CLASSES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "mixtral": ("MixtralConfig", [("AutoModelForCausalLM", "MixtralForCausalLM")]),
    "qwen2_moe": ("Qwen2MoeConfig", [("AutoModelForCausalLM", "Qwen2MoeForCausalLM")]),
    "qwen3_moe": ("Qwen3MoeConfig", [("AutoModelForCausalLM", "Qwen3MoeForCausalLM")]),
    "olmoe": ("OlmoeConfig", [("AutoModelForCausalLM", "OlmoeForCausalLM")]),
    "deepseek_v3": ("DeepseekV3Config", [("AutoModelForCausalLM", "DeepseekV3ForCausalLM")]),
    "deepseek_v2": ("DeepseekV2Config", [("AutoModelForCausalLM", "DeepseekV2ForCausalLM")]),
    "qwen3_5_moe_text": (
        "Qwen3_5MoeTextConfig",
        [("AutoModelForCausalLM", "Qwen3_5MoeForCausalLM")],
    ),
    "llama": ("LlamaConfig", [("AutoModelForCausalLM", "LlamaForCausalLM")]),
    "mistral": ("MistralConfig", [("AutoModelForCausalLM", "MistralForCausalLM")]),
    "qwen2": ("Qwen2Config", [("AutoModelForCausalLM", "Qwen2ForCausalLM")]),
    "gpt2": ("GPT2Config", [("AutoModelForCausalLM", "GPT2LMHeadModel")]),
    "bert": (
        "BertConfig",
        [
            ("AutoModel", "BertModel"),
            ("AutoModelForSequenceClassification", "BertForSequenceClassification"),
            ("AutoModelForMaskedLM", "BertForMaskedLM"),
        ],
    ),
}

_SHAPE_FIELDS = ("method", "d_model", "d_ff", "num_experts", "glu", "bias", "activation")
_REGISTERED: dict[str, type] = {}  # original model class name -> subclass
_CONFIGS: dict[str, type] = {}  # model_type -> config subclass


# ---------------------------------------------------------------------------- helpers
def _tf():
    from nashmoe._optional import require

    return require("transformers", extra="hf", purpose="nashmoe.hf")


def _get(module: nn.Module, path: str):
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _set(root: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, value)


def moe_layers(model: nn.Module) -> list[MoEFeedForward]:
    """The MoE layers of a converted or upcycled model, in call order."""
    return [m for m in model.modules() if isinstance(m, MoEFeedForward)]


def _blocks(model: nn.Module, class_name: str) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if type(m).__name__ == class_name]


def _check_model(model) -> None:
    tf = _tf()
    if not isinstance(model, tf.PreTrainedModel):
        raise ValueError(f"expected a transformers PreTrainedModel, got {type(model).__name__}")
    if getattr(model.config, "nashmoe", None):
        spec = model.config.nashmoe
        raise ValueError(
            f"this model was already converted ({spec.get('kind')} to method "
            f"{spec.get('method')!r}); converting twice is not supported: start from the "
            "original model"
        )


def _options(method: str, moe_options: dict) -> dict:
    if method not in METHODS or method == "dense":
        raise ValueError(
            f"unknown method {method!r}; choose from "
            f"{', '.join(m for m in METHODS if m != 'dense')}"
        )
    known = {f.name for f in fields(MoEConfig)}
    for key in moe_options:
        if key not in known:
            raise ValueError(f"unknown MoE option {key!r} (MoEConfig has no such field)")
        if key in _SHAPE_FIELDS:
            raise ValueError(
                f"option {key!r} is fixed by the model (shapes and activation come from its "
                "weights and config)"
            )
    return dict(moe_options)


def _layer_like(layer: MoEFeedForward, ref: Tensor) -> MoEFeedForward:
    """``layer`` on ``ref``'s device and dtype; the solver's warm start stays float64 and the
    selection bias float32."""
    layer.to(device=ref.device, dtype=ref.dtype)
    for name, dtype in (
        ("alpha_prev", torch.float64),
        ("expert_bias", torch.float32),
        ("expert_load", torch.float32),
    ):
        t = getattr(layer, name, None)
        if t is not None:
            t.data = t.data.to(dtype)
    return layer


def _new_layer(cfg: MoEConfig, index: int, anchored: bool) -> MoEFeedForward:
    cls = AnchoredMoEFeedForward if anchored and cfg.propagates else MoEFeedForward
    return cls(cfg, owns_base=index == 0)


# ---------------------------------------------------------------------------- building
def _install(model: nn.Module, spec: dict, source: list[nn.Module] | None = None) -> list:
    """Replace the blocks named by ``spec`` with MoE modules (fresh ones; the caller copies
    weights). Returns the new MoE layers, paired with the replaced blocks."""
    cfg = MoEConfig(**spec["moe_config"])
    arch = spec["architecture"]
    pairs = []
    if spec["kind"] == "convert":
        found = _blocks(model, FAMILIES[arch].block)
        for i, (name, block) in enumerate(found):
            ref = next(block.parameters())
            layer = _layer_like(_new_layer(cfg, i, spec.get("anchored", False)), ref)
            _set(model, name, MoEMLP(layer))
            pairs.append((layer, block))
        return pairs
    layout = UPCYCLE_ARCHITECTURES[arch]
    found = _blocks(model, layout.block)
    context = None
    if arch == "bert":
        context = MaskContext()
        model._nashmoe_mask = context
        model._nashmoe_mask_handle = install_mask_hook(model, context)
    dropout = float(getattr(model.config, "resid_pdrop", 0.0) or 0.0) if arch == "gpt2" else 0.0
    for i, (name, block) in enumerate(found):
        ref = _get(block, layout.up + ".weight")
        layer = _layer_like(_new_layer(cfg, i, True), ref)
        if arch == "bert":
            block.intermediate = SequenceMoEIntermediate(layer, context)
            block.output.dense = nn.Identity()
        else:
            _set(model, name, MoEMLP(layer, dropout=dropout))
        pairs.append((layer, block))
    return pairs


def _finish(model, spec: dict) -> None:
    """Record ``spec`` in the config, swap in the registered classes, link the chain."""
    register()
    model_type = spec["model_type"]
    cls = _REGISTERED.get(type(model).__name__)
    model.config.__class__ = _CONFIGS[model_type]
    model.config.nashmoe = spec
    model.__class__ = cls
    model._nashmoe_chain = link_moe_layers(model)


def _subclass_for(model) -> None:
    register()
    name = type(model).__name__
    if name not in _REGISTERED:
        supported = sorted(_REGISTERED)
        raise ValueError(
            f"{name} has no registered nashmoe class (needed to save and reload it); "
            f"supported classes: {', '.join(supported)}"
        )


# ---------------------------------------------------------------------------- convert
def convert(
    model,
    method: str,
    *,
    base: str | int | None = None,
    anchored: bool = False,
    **moe_options,
):
    """Replace every sparse MoE block of a transformers 5 model by a
    :class:`~nashmoe.moe.MoEFeedForward` of ``method``, in place; returns the model.

    Families: ``mixtral``, ``qwen2_moe``, ``qwen3_moe``, ``olmoe``, ``deepseek_v3``,
    ``qwen3_5_moe_text`` (Qwen3.5-MoE's text model) and ``deepseek_v2`` (greedy top-k). The
    fused expert tensors are read through the layout tables
    :data:`nashmoe.moe.families.FAMILIES` and :mod:`nashmoe.hf._families`; the router weights
    are reused; shared experts (Qwen2-MoE and Qwen3.5-MoE with their gate, DeepSeek) are kept;
    dense layers (``first_k_dense_replace``, ``mlp_only_layers``, ``decoder_sparse_step``) stay
    dense. ``method="smoe"`` reproduces the family's routing and computes the same function.

    Args:
        model: a ``PreTrainedModel`` (``XxxForCausalLM``) of a supported family.
        method: ``smoe``, ``smear``, ``camex``, ``ep-camex``, ``namex``, ``namex-full``,
            ``namex-mom`` or ``namex-full-mom``.
        base: the base expert E_m of the CAMEx family (the first MoE layer's for the
            propagating methods, every layer's for ``camex``): ``"shared"`` the family's shared
            expert (its width must equal the experts'; the default where it does), ``"mean"``
            the mean of the layer's experts (the default otherwise), or an expert index.
        **moe_options: :class:`~nashmoe.moe.MoEConfig` fields (``unit``, ``segment_len``,
            ``eta``, ``gamma`` ...); an option the method does not use is an error.
        anchored: propagating methods only: anchor every layer's base to its own ``base``
            choice and propagate a displacement (as :func:`upcycle` does,
            :class:`~nashmoe.hf.AnchoredMoEFeedForward`), instead of deriving every base from
            the first layer's (the paper's propagation, default).

    With ``base="mean"`` the domain vectors of the base's own layer sum to zero, so no direction
    improves every expert: NAMEx's bargaining there is infeasible (in float32 the solver may
    return a large α from the rounding residue instead); hence ``"shared"`` is the default where
    the family has a shared expert of the experts' width.

    The propagation state is threaded through the decoder layers by
    :func:`~nashmoe.moe.link_moe_layers` (also under gradient checkpointing and cached
    generation). The balance loss is surfaced as the family surfaces its aux loss.
    """
    _check_model(model)
    model_type = getattr(model.config, "model_type", None)
    if model_type not in FAMILIES:
        hint = ""
        if model_type in UPCYCLE_ARCHITECTURES or not any(
            "Sparse" in type(m).__name__ or "MoE" in type(m).__name__ for m in model.modules()
        ):
            hint = "; it looks dense: use nashmoe.hf.upcycle(model, num_experts, method)"
        raise ValueError(
            f"unsupported architecture {model_type!r}: convert supports the sparse families "
            f"{', '.join(CONVERT_FAMILIES)}{hint}"
        )
    options = _options(method, moe_options)
    hf_config = model.config
    curved = method in ("camex", "ep-camex", "namex", "namex-full", "namex-mom", "namex-full-mom")
    if base is not None and not curved:
        raise ValueError(
            f"base is only used by the CAMEx family (camex, ep-camex, namex*), not by {method!r}"
        )
    layout = FAMILIES[model_type]
    cfg = config_for(model_type, hf_config, method=method, **options)
    if curved and base is None:  # the shared expert where it fits, else the mean
        fits = cfg.shared_experts and cfg.shared_experts * cfg.shared_d_ff == cfg.d_ff
        base = "shared" if fits else "mean"
    if base == "shared":
        if layout.shared is None:
            raise ValueError(f"base='shared': family {model_type!r} has no shared expert")
    elif curved and not (base == "mean" or (isinstance(base, int) and not isinstance(base, bool))):
        raise ValueError(f"base must be 'mean', 'shared' or an expert index, got {base!r}")
    if isinstance(base, int) and not 0 <= base < cfg.num_experts:
        raise ValueError(f"base expert index {base} is not in [0, {cfg.num_experts})")
    if base == "shared" and cfg.shared_experts * cfg.shared_d_ff != cfg.d_ff:
        raise ValueError(
            "base='shared' needs the shared experts' width "
            f"({cfg.shared_experts * cfg.shared_d_ff})"
            f" to equal the routed experts' ({cfg.d_ff}); use base='mean' or an expert index"
        )
    if anchored and method not in (
        "ep-camex",
        "namex",
        "namex-full",
        "namex-mom",
        "namex-full-mom",
    ):
        raise ValueError(f"anchored is only used by the propagating methods, not by {method!r}")
    if not _blocks(model, layout.block):
        raise ValueError(f"the model has no {layout.block} block to convert")
    _subclass_for(model)
    spec = {
        "kind": "convert",
        "architecture": model_type,
        "model_type": model_type,
        "method": method,
        "options": {
            **options,
            **({"base": base} if base is not None else {}),
            **({"anchored": True} if anchored else {}),
        },
        "anchored": bool(anchored),
        "moe_config": cfg.to_dict(),
    }
    with torch.no_grad():
        for layer, block in _install(model, spec):
            load_block(layer, block, model_type)
            target = None
            if layer.owns_base:
                target = "base_"
            elif hasattr(layer, "anchor_" + layer.layout.names[0]):
                target = "anchor_"
            if target is not None:
                if base == "shared":
                    shared = layer.shared_tensors()
                    src = {n: shared[n] for n in layer.layout.names}
                elif base == "mean":
                    src = {n: e.mean(dim=0) for n, e in layer.expert_tensors().items()}
                else:
                    src = {n: e[base] for n, e in layer.expert_tensors().items()}
                for n, t in src.items():
                    getattr(layer, target + n).copy_(t)
            layer.clear_cache()
    _finish(model, spec)
    return model


# ---------------------------------------------------------------------------- upcycle
def _dense_weights(block: nn.Module, layout: DenseLayout) -> dict[str, Tensor]:
    """The dense FFN in our layout (``w_in [f, d]``, ``w_gate``, ``w_out [d, f]``, biases)."""

    def weight(path: str) -> Tensor:
        w = _get(block, path).weight
        return w.t() if layout.transposed else w

    out = {"w_in": weight(layout.up)}
    if layout.gate is not None:
        out["w_gate"] = weight(layout.gate)
    out["w_out"] = weight(layout.down)
    b_up = getattr(_get(block, layout.up), "bias", None)
    b_down = getattr(_get(block, layout.down), "bias", None)
    if (b_up is None) != (b_down is None):
        raise ValueError("the dense FFN has a bias on one projection only")
    if b_up is not None:
        out["b_in"], out["b_out"] = b_up, b_down
    return out


def upcycle(
    model,
    num_experts: int,
    method: str,
    *,
    noise: float = 0.01,
    seed: int | None = 0,
    **moe_options,
):
    """Turn every dense feed-forward block into a MoE block whose experts start from the dense
    weights (sparse upcycling), in place; returns the model.

    Models: BERT-family encoders (``bert``; merging methods route each sequence by the mean of
    its non-padding tokens, ``unit="sequence"``: the call's ``attention_mask`` reaches the
    layers) and Llama- (``llama``, ``mistral``, ``qwen2``) and GPT-2-family decoders (causal
    segment routing).

    Every expert is the dense FFN plus noise: ``E_i = W + noise · rms(W) · ε_i``, ε_i standard
    normal, per tensor (``seed`` seeds it; None: the global generator). Each layer's base expert
    is its own dense FFN: every ``camex`` layer owns its base; the propagating methods anchor
    each layer's base to its dense FFN and propagate a displacement
    (:class:`~nashmoe.hf.AnchoredMoEFeedForward`). The router starts random (std ``init_std``).

    With ``noise=0`` the model computes the dense model's function for every method: smoe's
    k chosen experts are equal and renormalised (``norm_topk``), SMEAR's convex combination of
    equal experts is that expert, and τ_i = 0 makes every merged expert its base (any η) and
    every propagation step 0 (NAMEx's solver is degenerate and falls back to uniform α; the
    step Σ α_i τ_i is still 0). With noise the NAMEx methods default to ``step_norm="mean"``, so
    the propagation step scales with the noise (the Nash step ``"nash"`` has norm √N whatever the
    scale of τ, a jump at upcycling).

    Args:
        model: a ``PreTrainedModel`` of a supported dense architecture.
        num_experts: N ≥ 1.
        method: any method but ``dense``.
        noise: relative scale of the expert noise (default 0.01).
        **moe_options: :class:`~nashmoe.moe.MoEConfig` fields (``top_k``, ``unit``,
            ``segment_len``, ``gamma``, ``balance_coef`` ...).
    """
    _check_model(model)
    model_type = getattr(model.config, "model_type", None)
    if model_type not in UPCYCLE_ARCHITECTURES:
        hint = ""
        if model_type in FAMILIES:
            hint = f"; {model_type!r} is already sparse: use nashmoe.hf.convert(model, method)"
        raise ValueError(
            f"unsupported architecture {model_type!r}: upcycle supports "
            f"{', '.join(UPCYCLE_ARCHITECTURES)}{hint}"
        )
    if not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"num_experts must be a positive integer, got {num_experts!r}")
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be non-negative and finite, got {noise!r}")
    options = _options(method, moe_options)
    layout = UPCYCLE_ARCHITECTURES[model_type]
    c = model.config
    if model_type == "bert" and getattr(c, "chunk_size_feed_forward", 0):
        raise ValueError("chunk_size_feed_forward > 0 is not supported: set it to 0")
    blocks = _blocks(model, layout.block)
    if not blocks:
        raise ValueError(f"the model has no {layout.block} block to upcycle")
    act = getattr(c, layout.act_attr, None)
    if act not in _ACTIVATIONS:
        raise ValueError(f"activation {act!r} has no equivalent here")
    dense = _dense_weights(blocks[0][1], layout)
    fields_ = dict(
        method=method,
        d_model=dense["w_out"].shape[0],
        d_ff=dense["w_in"].shape[0],
        num_experts=num_experts,
        activation=_ACTIVATIONS[act],
        glu="w_gate" in dense,
        bias="b_in" in dense,
        z_loss_coef=0.0,
    )
    if method in ("smear", "camex", "ep-camex") or method.startswith("namex"):
        fields_["unit"] = layout.unit
    if method.startswith("namex"):
        fields_["step_norm"] = "mean"
    fields_.update(options)
    cfg = MoEConfig(**fields_)
    _subclass_for(model)
    spec = {
        "kind": "upcycle",
        "architecture": model_type,
        "model_type": model_type,
        "method": method,
        "options": {**options, "num_experts": num_experts, "noise": noise, "seed": seed},
        "moe_config": cfg.to_dict(),
    }
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    weights = [_dense_weights(block, layout) for _, block in blocks]  # before BERT's edit
    with torch.no_grad():
        for (layer, _), w in zip(_install(model, spec), weights, strict=True):
            for name, t in w.items():
                expert = getattr(layer, name)
                eps = torch.randn(expert.shape, generator=generator, dtype=torch.float32)
                scale = noise * float(t.float().square().mean().sqrt())
                expert.copy_(t.unsqueeze(0) + (scale * eps).to(t.dtype))
                if layer.owns_base:
                    getattr(layer, "base_" + name).copy_(t)
                if hasattr(layer, "anchor_" + name):
                    getattr(layer, "anchor_" + name).copy_(t)
            layer.clear_cache()
    if getattr(c, "router_aux_loss_coef", None) is None:
        c.router_aux_loss_coef = cfg.balance_coef
    _finish(model, spec)
    return model


def load_checkpoint(path: str, *, progress: bool = True):
    """A checkpoint directory loaded offline in the class its config names (``architectures``;
    else ``AutoModelForCausalLM``), nashmoe-converted or not. ``progress=False`` turns
    transformers' progress bars off (process-wide; the command line does)."""
    import os

    tf = _tf()
    register()
    if not progress:
        tf.utils.logging.disable_progress_bar()
    if not os.path.isdir(path):
        raise ValueError(f"{path} is not a checkpoint directory")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{path} has no config.json")
    config = tf.AutoConfig.from_pretrained(path, local_files_only=True)
    names = getattr(config, "architectures", None) or []
    cls = None
    if names:
        cls = getattr(tf, names[0], None) or globals().get(names[0])
    if cls is None:
        cls = tf.AutoModelForCausalLM
    return cls.from_pretrained(path, local_files_only=True)


# ---------------------------------------------------------------------------- model classes
class NashMoEModelMixin:
    """Mixed into the registered subclasses: rebuilds the MoE modules from ``config.nashmoe``
    and surfaces the balance loss.

    Loss convention (as the transformers MoE families): when ``output_router_logits`` (the
    call's argument, else ``config.output_router_logits``) is true, the output's ``aux_loss`` is
    the mean over the MoE layers of their balance loss (with converted families in
    transformers' scale, ``balance_loss_scale="transformers"``; transformers pools the router
    logits of all layers before computing it, we average the per-layer losses), and, when the
    model computed a loss, ``loss += config.router_aux_loss_coef · aux_loss`` (plus the
    layers' z-loss terms where ``z_loss_coef > 0``).
    """

    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        spec = getattr(config, "nashmoe", None)
        if spec:
            _install(self, spec)
            self._nashmoe_chain = link_moe_layers(self)

    def nashmoe_aux(self):
        """``(aux_loss, z_term)`` of the last forward pass (None without MoE layers)."""
        auxes = [m.last_aux for m in moe_layers(self) if m.last_aux is not None]
        if not auxes:
            return None, None
        balance = torch.stack([a.balance_loss.float() for a in auxes]).mean()
        z = sum(m.config.z_loss_coef * m.last_aux.z_loss.float() for m in moe_layers(self))
        return balance, z

    def _nashmoe_forward(self, base_forward, *args, **kwargs):
        want = kwargs.pop("output_router_logits", None)
        if want is None:
            want = bool(getattr(self.config, "output_router_logits", False))
        if _takes_router_flag(base_forward):  # the family's own router recording: off
            kwargs["output_router_logits"] = False
        out = base_forward(self, *args, **kwargs)
        if not want or isinstance(out, tuple):
            return out
        aux, z = self.nashmoe_aux()
        if aux is None:
            return out
        out["aux_loss"] = aux
        loss = out.get("loss") if hasattr(out, "get") else None
        if loss is not None:
            coef = float(getattr(self.config, "router_aux_loss_coef", 0.0) or 0.0)
            out["loss"] = loss + coef * aux.to(loss.device) + z
        return out


@functools.cache
def _takes_router_flag(forward) -> bool:
    import inspect

    return "output_router_logits" in inspect.signature(forward).parameters


def _forward_of(base: type):
    """``forward`` with the signature of ``base.forward`` (the Trainer keeps only the dataset
    columns that the signature names)."""
    base_forward = base.forward

    @functools.wraps(base_forward)
    def forward(self, *args, **kwargs):
        return self._nashmoe_forward(base_forward, *args, **kwargs)

    return forward


def register() -> None:
    """Register the nashmoe subclasses with the transformers Auto classes (idempotent;
    ``import nashmoe.hf`` calls it)."""
    if _REGISTERED:
        return
    tf = _tf()
    for model_type, (config_name, models) in _CLASSES.items():
        base_config = getattr(tf, config_name)
        cfg_cls = type(
            "NashMoE" + config_name,
            (base_config,),
            {"model_type": "nashmoe_" + model_type, "__module__": __name__},
        )
        globals()[cfg_cls.__name__] = cfg_cls
        tf.AutoConfig.register("nashmoe_" + model_type, cfg_cls, exist_ok=True)
        _CONFIGS[model_type] = cfg_cls
        for auto_name, model_name in models:
            base = getattr(tf, model_name)
            cls = type(
                "NashMoE" + model_name,
                (NashMoEModelMixin, base),
                {
                    "config_class": cfg_cls,
                    "__module__": __name__,
                    "forward": _forward_of(base),
                },
            )
            globals()[cls.__name__] = cls
            getattr(tf, auto_name).register(cfg_cls, cls, exist_ok=True)
            _REGISTERED[model_name] = cls
