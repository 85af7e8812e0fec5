"""Hugging Face transformers 5 models with NAMEx-family MoE layers (extra ``hf``).

- :func:`convert`: replace the sparse MoE blocks of Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE and
  DeepSeek-V3 models by :class:`~nashmoe.moe.MoEFeedForward` layers of any method
  (``smoe`` computes the same function).
- :func:`upcycle`: turn the dense FFNs of BERT, Llama (Mistral, Qwen2) and GPT-2 models into
  MoE layers whose experts start from the dense weights.

Importing this module registers the converted classes with the transformers Auto classes, so
``AutoModelForCausalLM.from_pretrained`` (``AutoModelForSequenceClassification`` ... for BERT)
reloads a saved converted model. transformers is imported only here.
"""

from nashmoe._optional import require

require("transformers", extra="hf", purpose="nashmoe.hf")

from nashmoe.hf._core import (  # noqa: E402
    CONVERT_FAMILIES,
    UPCYCLE_ARCHITECTURES,
    NashMoEModelMixin,
    convert,
    load_checkpoint,
    moe_layers,
    register,
    upcycle,
)
from nashmoe.hf._layers import AnchoredMoEFeedForward, MaskContext  # noqa: E402

register()

__all__ = [
    "CONVERT_FAMILIES",
    "UPCYCLE_ARCHITECTURES",
    "AnchoredMoEFeedForward",
    "MaskContext",
    "NashMoEModelMixin",
    "convert",
    "load_checkpoint",
    "moe_layers",
    "register",
    "upcycle",
]
