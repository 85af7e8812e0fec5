"""A decoder-only transformer whose feed-forward blocks are ``nashmoe.moe`` layers.

In the spirit of nanoGPT (Karpathy): pre-norm blocks, causal attention through
``scaled_dot_product_attention``, learned absolute positions, optionally tied embeddings. Every
``moe_every``-th block's FFN is a :class:`~nashmoe.moe.MoEFeedForward` of the chosen method (the
others are dense), and the propagation state of EP-CAMEx / NAMEx is threaded through the blocks
explicitly: the first MoE block owns the base expert E_m^{(1)}, and the last one skips its
propagation step (nothing uses it). ``gradient_checkpointing_enable()`` (the transformers name)
recomputes every block in the backward pass; the state then travels through a
:class:`~nashmoe.moe.PropagationChain`, which keeps gradients exact with reentrant and
non-reentrant ``torch.utils.checkpoint``.

Presets (``GPTConfig.preset``): ``tiny`` (the CPU demo), ``small`` and ``medium`` (the MomentumSMoE
WikiText-103 shapes, arXiv 2410.14574: 3 layers / d 128 / 8 heads / 16 experts top-2 / block 256,
and 6 layers / d 352 / 8 heads / 16 experts top-2 / block 512), with the chosen corpus' vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from nashmoe.moe import (
    METHODS,
    MoEAux,
    MoEConfig,
    MoEFeedForward,
    PropagationChain,
    SegmentCache,
    link_moe_layers,
)
from nashmoe.moe.config import config_with_used_options
from nashmoe.moe.state import PropagationState

__all__ = ["GPT", "PRESETS", "GPTConfig", "GPTOutput"]

PRESETS: dict[str, dict[str, Any]] = {
    # Finishes all nine methods of `nashmoe compare` in minutes on a 2-core CPU.
    "tiny": dict(
        n_layer=4,
        n_head=4,
        d_model=64,
        d_ff=256,
        num_experts=4,
        top_k=2,
        block_size=128,
        segment_len=32,
    ),
    # MomentumSMoE WikiText-103 "small": 3 layers, d = 128, 8 heads, 16 experts top-2, block 256.
    "small": dict(
        n_layer=3,
        n_head=8,
        d_model=128,
        d_ff=512,
        num_experts=16,
        top_k=2,
        block_size=256,
        segment_len=64,
    ),
    # MomentumSMoE "medium": 6 layers, d = 352, 8 heads, 16 experts top-2, block 512.
    "medium": dict(
        n_layer=6,
        n_head=8,
        d_model=352,
        d_ff=1408,
        num_experts=16,
        top_k=2,
        block_size=512,
        segment_len=128,
    ),
}


@dataclass(frozen=True)
class GPTConfig:
    """Shape and MoE settings of :class:`GPT`.

    ``moe_options`` holds any further :class:`~nashmoe.moe.MoEConfig` field (``gamma``, ``eta``,
    ``curvature_rank``, ``momentum``, ...); fields a method does not use are dropped for it, so
    one config can describe every method of a comparison.
    """

    vocab_size: int
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 64
    d_ff: int = 256
    dropout: float = 0.0
    bias: bool = False
    tie_embeddings: bool = True
    method: str = "namex-full-mom"
    moe_every: int = 1
    num_experts: int = 4
    top_k: int = 2
    segment_len: int = 32
    first_segment: str = "prior"
    balance_coef: float = 0.01
    moe_options: dict[str, Any] = field(default_factory=dict)
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if not isinstance(self.moe_every, int) or self.moe_every < 1:
            raise ValueError(f"moe_every must be a positive integer, got {self.moe_every!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        merging = self.method not in ("dense", "smoe")
        if merging and self.block_size % self.segment_len:
            raise ValueError(
                f"segment_len={self.segment_len} must divide block_size={self.block_size} for "
                f"method {self.method!r}: training sequences are then made of whole segments, "
                "so every merged expert serves exactly segment_len tokens"
            )
        unknown = set(self.moe_options) - {f.name for f in fields(MoEConfig)}
        if unknown:
            raise ValueError(f"unknown MoE option(s) in moe_options: {', '.join(sorted(unknown))}")
        self.moe_config(0)  # validate the MoE settings now, with a clear error

    @classmethod
    def preset(cls, name: str, *, vocab_size: int, **overrides: Any) -> GPTConfig:
        """A preset shape (``tiny``, ``small``, ``medium``) with a given vocabulary."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        return cls(vocab_size=vocab_size, **{**PRESETS[name], **overrides})

    def is_moe_block(self, index: int) -> bool:
        return self.method != "dense" and (index + 1) % self.moe_every == 0

    def moe_config(self, index: int) -> MoEConfig:
        """The FFN settings of block ``index`` (dense for non-MoE blocks)."""
        ffn_init = dict(
            init_std=self.init_std, out_init_std=self.init_std / math.sqrt(2 * self.n_layer)
        )
        if not self.is_moe_block(index):
            return MoEConfig(
                method="dense", d_model=self.d_model, d_ff=self.d_ff, bias=self.bias, **ffn_init
            )
        base = dict(
            method=self.method,
            d_model=self.d_model,
            d_ff=self.d_ff,
            num_experts=self.num_experts,
            bias=self.bias,
            balance_coef=self.balance_coef,
            **ffn_init,
        )
        if self.method == "smoe":
            base["top_k"] = self.top_k
        else:
            base.update(
                unit="segment", segment_len=self.segment_len, first_segment=self.first_segment
            )
        return config_with_used_options(base, self.moe_options)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GPTOutput:
    """``logits [B, S, V]``; ``loss`` (mean cross-entropy, when targets are given);
    ``aux_loss`` (sum of the MoE layers' auxiliary losses, to add to ``loss`` for training);
    ``aux`` (one :class:`~nashmoe.moe.MoEAux` per MoE block)."""

    logits: Tensor
    loss: Tensor | None
    aux_loss: Tensor
    aux: list[MoEAux]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, cache: dict | None = None) -> Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(b, s, self.n_head, d // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:  # incremental decoding: attend to everything cached so far
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        past = k.shape[2] - s
        if past == 0:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        else:  # query i (absolute position past + i) sees keys 0 .. past + i
            mask = torch.ones(s, k.shape[2], dtype=torch.bool, device=x.device).tril(past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, index: int, owns_base: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.ffn = MoEFeedForward(cfg.moe_config(index), owns_base=owns_base)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, state, cache=None, start_pos=0, return_aux=False):
        """``(x, state)``: the block's output and the propagation state for the next MoE block
        (``(x, aux)`` with ``return_aux``, the MoE layer's :class:`~nashmoe.moe.MoEAux`).

        The state (a pytree: the propagated base expert and momentum) is an output of the block,
        so that per-block FSDP sees the gradients flowing into it. The MoE diagnostics and the
        auxiliary loss are read from ``self.ffn.last_aux``: returned as outputs, the loss would
        make FSDP unshard every block as soon as the backward pass starts (its gradient is
        ready first); its backward runs after the block's output gradient arrives anyway.
        """
        x = x + self.dropout(self.attn(self.ln_1(x), None if cache is None else cache["attn"]))
        y, aux = self.ffn(
            self.ln_2(x),
            state=state,
            return_aux=True,
            cache=None if cache is None else cache.get("ffn"),
            start_pos=start_pos,
        )
        return x + self.dropout(y), (aux if return_aux else aux.state)

    def checkpointed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The block for ``torch.utils.checkpoint``: the state comes from the model's chain;
        tensors only out (the aux loss too, so that reentrant checkpointing differentiates it)."""
        x, aux = self(x, None, return_aux=True)  # the recomputed aux (last_aux is not updated)
        return x, aux.loss


class GPT(nn.Module):
    """Decoder-only language model with MoE feed-forward blocks (see the module docstring)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.block_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        first_moe = next((i for i in range(cfg.n_layer) if cfg.is_moe_block(i)), None)
        self.blocks = nn.ModuleList(
            Block(cfg, i, owns_base=(i == first_moe)) for i in range(cfg.n_layer)
        )
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._init_weights()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        if self.moe_layers:  # nothing uses the last MoE layer's propagation step
            self.moe_layers[-1].last_in_chain = True
        self._checkpoint_kwargs: dict[str, Any] | None = None
        self._chain: PropagationChain | None = None

    def _init_weights(self) -> None:
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
        for block in self.blocks:  # GPT-2: scale residual projections by 1/√(2L)
            nn.init.normal_(block.attn.proj.weight, 0.0, std / math.sqrt(2 * self.config.n_layer))

    @property
    def moe_layers(self) -> list[MoEFeedForward]:
        return [b.ffn for b in self.blocks if b.ffn.config.method != "dense"]

    def num_parameters(self) -> dict[str, int]:
        """Total parameters and active parameters per token.

        Active: a token uses one merged expert per merging layer (SMEAR, CAMEx, NAMEx: the N
        experts are combined into one of the same size), ``top_k`` experts per SMoE layer, and
        every other parameter (router, base expert, curvature and momentum settings included).
        Position embeddings are counted; tied embeddings once.
        """
        total = sum(p.numel() for p in self.parameters())
        active = total
        for layer in self.moe_layers:
            per_expert = sum(p[0].numel() for p in layer.expert_tensors().values())
            n = layer.config.num_experts
            used = layer.config.top_k if layer.config.method == "smoe" else 1
            active -= (n - used) * per_expert
        return {"total": total, "active": active}

    # ------------------------------------------------------------------ activation checkpointing
    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None
    ) -> None:
        """Recompute every block in the backward pass (training with grad enabled only).

        ``gradient_checkpointing_kwargs`` go to ``torch.utils.checkpoint.checkpoint``, as in
        transformers; the default is ``{"use_reentrant": False}``. Gradients are the same as
        without checkpointing for every method, reentrant or not: the propagation state then
        travels through a :class:`~nashmoe.moe.PropagationChain` linked to this model.
        """
        self._checkpoint_kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        if self._chain is None and self.moe_layers:
            self._chain = link_moe_layers(self)

    def gradient_checkpointing_disable(self) -> None:
        self._checkpoint_kwargs = None
        if self._chain is not None:
            self._chain.unlink()
            self._chain = None

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self._checkpoint_kwargs is not None

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        cache: list[dict] | None = None,
        start_pos: int = 0,
    ) -> GPTOutput:
        """Logits of ``idx [B, S]`` (and the loss when ``targets [B, S]`` are given).

        An empty batch (B = 0) or an empty sequence (S = 0) gives empty logits ``[B, S, V]`` and
        a zero auxiliary loss for every method. The mean cross-entropy of no tokens is undefined,
        so ``targets`` with no element raise ``ValueError`` rather than return NaN.
        """
        s = idx.shape[1]
        if targets is not None and targets.numel() == 0:
            raise ValueError(
                f"targets of shape {tuple(targets.shape)} hold no token: the mean cross-entropy "
                "of an empty batch or sequence is undefined (call without targets to get the "
                "empty logits)"
            )
        if start_pos + s > self.config.block_size:
            raise ValueError(
                f"sequence of {start_pos + s} tokens exceeds block_size={self.config.block_size}"
            )
        pos = torch.arange(start_pos, start_pos + s, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        state: PropagationState | None = None
        auxes: list[MoEAux] = []
        checkpointing = (
            self._checkpoint_kwargs is not None
            and self.training
            and torch.is_grad_enabled()
            and cache is None
        )
        for i, block in enumerate(self.blocks):
            if checkpointing:
                x, aux_loss = checkpoint(block.checkpointed, x, **self._checkpoint_kwargs)
                aux = replace(block.ffn.last_aux, loss=aux_loss)
            else:
                x, state = block(x, state, None if cache is None else cache[i], start_pos)
                aux = block.ffn.last_aux
            if block.ffn.config.method != "dense":
                auxes.append(aux)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
            )
        aux_loss = sum((a.loss for a in auxes), start=logits.new_zeros((), dtype=torch.float32))
        return GPTOutput(logits=logits, loss=loss, aux_loss=aux_loss, aux=auxes)

    def new_cache(self) -> list[dict]:
        """An empty decoding cache: attention keys/values and the MoE segment state per block."""
        cache = []
        for block in self.blocks:
            entry: dict = {"attn": {}}
            cfg = block.ffn.config
            if cfg.is_merging and cfg.unit == "segment":
                entry["ffn"] = SegmentCache()
            cache.append(entry)
        return cache

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Continue ``idx [B, S]`` by ``max_new_tokens`` tokens (greedy when ``temperature=0``).

        With ``use_cache`` the keys/values and the MoE segment state are cached, exact for causal
        segment routing: the tokens equal those of repeated full forward passes. Once the context
        would exceed ``block_size``, generation continues without the cache on the last
        ``block_size`` tokens (as nanoGPT does). A prompt longer than ``block_size`` is therefore
        accepted and returned whole, but only its last ``block_size`` tokens are seen.

        Args:
            idx: ``[B, S]`` token ids with ``S >= 1``.
            max_new_tokens: >= 0 (0 returns ``idx``).
            temperature: >= 0 and finite; 0 means greedy (argmax).
            top_k: sample among the ``top_k >= 1`` likeliest tokens (None: all).

        Raises:
            ValueError: an argument out of range (the message names it).
        """
        if idx.dim() != 2 or idx.shape[1] < 1:
            raise ValueError(
                f"idx must be [batch, length] with length >= 1 (a non-empty prompt), "
                f"got shape {tuple(idx.shape)}"
            )
        if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens:
            raise ValueError(f"max_new_tokens must be an integer, got {max_new_tokens!r}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be finite and >= 0 (0: greedy), got {temperature}")
        if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
        was_training = self.training
        self.eval()
        try:
            cache = self.new_cache() if use_cache else None
            pos = 0
            for _ in range(max_new_tokens):
                if cache is not None and idx.shape[1] <= self.config.block_size:
                    logits = self(idx[:, pos:], cache=cache, start_pos=pos).logits[:, -1]
                    pos = idx.shape[1]
                else:
                    cache = None
                    logits = self(idx[:, -self.config.block_size :]).logits[:, -1]
                idx = torch.cat([idx, self._sample(logits, temperature, top_k, generator)], dim=1)
            return idx
        finally:
            self.train(was_training)

    @staticmethod
    def _sample(logits, temperature, top_k, generator):
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits.float() / temperature
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.shape[-1]))
            logits = logits.masked_fill(logits < v[:, [-1]], -math.inf)
        return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
