"""Models built from ``nashmoe.moe`` layers: a decoder-only language model (:class:`GPT`)."""

from nashmoe.models.gpt import GPT, PRESETS, GPTConfig, GPTOutput

__all__ = ["GPT", "PRESETS", "GPTConfig", "GPTOutput"]
