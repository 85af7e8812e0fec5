"""A small Vision Transformer whose feed-forward blocks are ``nashmoe.moe`` layers of any method.

ViT (Dosovitskiy et al., arXiv 2010.11929) at CIFAR scale: a convolutional patch embedding
(``patch_size`` × ``patch_size`` patches, 64 tokens for 32-pixel images and 4-pixel patches),
learned position embeddings, pre-norm blocks (bidirectional attention, then the FFN), a final
LayerNorm and a linear head on the mean of the patch tokens (``pool="mean"``, the default) or on a
class token (``pool="cls"``).

Every ``moe_every``-th block's FFN is a :class:`~nashmoe.moe.MoEFeedForward` of the chosen method;
the others are dense. Routing (spec section 4): the merging methods (SMEAR, CAMEx, EP-CAMEx, NAMEx)
route **one unit per image**, the mean of its patch tokens, so each image gets one merged expert
per MoE block; SMoE routes every token to its top-k experts. With ``pool="mean"`` every token is a
patch token and the layers use ``unit="image"``; with ``pool="cls"`` the class token must not enter
the routing mean, so the layers use the masked mean of ``unit="sequence"`` with the class token
masked out (the same unit: one merged expert per image, routed by its patch tokens, applied to all
its tokens). The propagation state of EP-CAMEx / NAMEx runs through the blocks explicitly; the
first MoE block owns the base expert.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nashmoe.moe import METHODS, MoEAux, MoEConfig, MoEFeedForward
from nashmoe.moe.config import config_with_used_options
from nashmoe.moe.state import PropagationState

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "ViT", "ViTConfig", "ViTOutput", "to_input"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class ViTConfig:
    """Shape and MoE settings of :class:`ViT`.

    ``moe_options`` holds further :class:`~nashmoe.moe.MoEConfig` fields (``gamma``, ``eta``,
    ``momentum``, ...); fields a method does not use are dropped for it, so one config describes
    every method of a comparison.
    """

    method: str = "namex-full-mom"
    image_size: int = 32
    patch_size: int = 4
    in_channels: int = 3
    num_classes: int = 10
    depth: int = 6
    n_head: int = 4
    d_model: int = 64
    d_ff: int = 128
    dropout: float = 0.0
    pool: str = "mean"
    moe_every: int = 1
    num_experts: int = 4
    top_k: int = 2
    balance_coef: float = 0.01
    moe_options: dict[str, Any] = field(default_factory=dict)
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        for name in (
            "image_size",
            "patch_size",
            "in_channels",
            "num_classes",
            "depth",
            "n_head",
            "d_model",
            "d_ff",
            "moe_every",
            "num_experts",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size={self.patch_size} must divide image_size={self.image_size}"
            )
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {self.pool!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        unknown = set(self.moe_options) - {f.name for f in fields(MoEConfig)}
        if unknown:
            raise ValueError(f"unknown MoE option(s) in moe_options: {', '.join(sorted(unknown))}")
        self.moe_config(self.moe_every - 1)  # validate the MoE settings now, with a clear error

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def is_moe_block(self, index: int) -> bool:
        return self.method != "dense" and (index + 1) % self.moe_every == 0

    @property
    def routing_unit(self) -> str | None:
        """The ``MoEConfig.unit`` of the merging methods (None for dense and SMoE)."""
        if self.method in ("dense", "smoe"):
            return None
        return "image" if self.pool == "mean" else "sequence"

    def moe_config(self, index: int) -> MoEConfig:
        """The FFN settings of block ``index`` (dense for non-MoE blocks)."""
        init = dict(init_std=self.init_std, out_init_std=self.init_std / math.sqrt(2 * self.depth))
        if not self.is_moe_block(index):
            return MoEConfig(method="dense", d_model=self.d_model, d_ff=self.d_ff, **init)
        base: dict[str, Any] = dict(
            method=self.method,
            d_model=self.d_model,
            d_ff=self.d_ff,
            num_experts=self.num_experts,
            balance_coef=self.balance_coef,
            **init,
        )
        if self.method == "smoe":
            base["top_k"] = self.top_k
        else:
            base["unit"] = self.routing_unit
        return config_with_used_options(base, self.moe_options)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ViTOutput:
    """``logits [B, num_classes]``; ``aux_loss`` (sum of the MoE layers' auxiliary losses, to add
    to the training loss); ``aux`` (one :class:`~nashmoe.moe.MoEAux` per MoE block)."""

    logits: Tensor
    aux_loss: Tensor
    aux: list[MoEAux]


def to_input(images: Tensor) -> Tensor:
    """uint8 ``[B, H, W, 3]`` images → normalised float ``[B, 3, H, W]`` (CIFAR-10 mean / std)."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CIFAR10_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class SelfAttention(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: Tensor) -> Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(b, s, self.n_head, d // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + ffn(ln(x))``."""

    def __init__(self, cfg: ViTConfig, index: int, owns_base: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.ffn = MoEFeedForward(cfg.moe_config(index), owns_base=owns_base)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, state: PropagationState | None, mask: Tensor | None
    ) -> tuple[Tensor, MoEAux]:
        x = x + self.dropout(self.attn(self.ln_1(x)))
        y, aux = self.ffn(self.ln_2(x), state=state, attention_mask=mask, return_aux=True)
        return x + self.dropout(y), aux


class ViT(nn.Module):
    """Vision Transformer with MoE feed-forward blocks (see the module docstring).

    Call: ``model(x)`` with normalised float images ``[B, C, H, W]`` (:func:`to_input` makes them
    from uint8 ``[B, H, W, C]``); returns a :class:`ViTOutput`.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.patch_embed = nn.Conv2d(
            cfg.in_channels, cfg.d_model, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )
        n_tokens = cfg.num_patches + (cfg.pool == "cls")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model)) if cfg.pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)
        first_moe = next((i for i in range(cfg.depth) if cfg.is_moe_block(i)), None)
        self.blocks = nn.ModuleList(
            Block(cfg, i, owns_base=(i == first_moe)) for i in range(cfg.depth)
        )
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.num_classes)
        self._init_weights()
        if self.moe_layers:  # nothing uses the last MoE layer's propagation step
            self.moe_layers[-1].last_in_chain = True

    def _init_weights(self) -> None:
        std = self.config.init_std
        nn.init.trunc_normal_(self.pos_embed, std=std)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=std)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, 0.0, std / math.sqrt(2 * self.config.depth))
        nn.init.zeros_(self.head.weight)

    @property
    def moe_layers(self) -> list[MoEFeedForward]:
        return [b.ffn for b in self.blocks if b.ffn.config.method != "dense"]

    def num_parameters(self) -> dict[str, int]:
        """Total parameters and active parameters per image token (one merged expert per merging
        layer, ``top_k`` experts per SMoE layer, everything else counted once)."""
        total = sum(p.numel() for p in self.parameters())
        active = total
        for layer in self.moe_layers:
            per_expert = sum(p[0].numel() for p in layer.expert_tensors().values())
            used = layer.config.top_k if layer.config.method == "smoe" else 1
            active -= (layer.config.num_experts - used) * per_expert
        return {"total": total, "active": active}

    def forward(self, x: Tensor) -> ViTOutput:
        cfg = self.config
        if x.ndim != 4 or x.shape[1:] != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"expected images [B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}], "
                f"got {tuple(x.shape)}"
            )
        h = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, P, d]
        mask = None
        if self.cls_token is not None:
            h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
            if cfg.routing_unit == "sequence":  # route by the patch tokens only
                mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
                mask[:, 0] = False
        h = self.drop(h + self.pos_embed)
        state: PropagationState | None = None
        auxes: list[MoEAux] = []
        for block in self.blocks:
            block_mask = mask if block.ffn.config.is_merging else None
            h, aux = block(h, state, block_mask)
            state = aux.state
            if block.ffn.config.method != "dense":
                auxes.append(aux)
        h = self.ln_f(h)
        pooled = h[:, 0] if cfg.pool == "cls" else h.mean(dim=1)
        logits = self.head(pooled)
        aux_loss = sum((a.loss for a in auxes), start=logits.new_zeros((), dtype=torch.float32))
        return ViTOutput(logits=logits, aux_loss=aux_loss, aux=auxes)
