"""The implicit propagation chain, for models whose blocks call the FFN with the hidden states only.

:func:`link_moe_layers` attaches one :class:`PropagationChain` to every
:class:`~nashmoe.moe.MoEFeedForward` of a model (Hugging Face models, or any model whose forward
we cannot change). The chain

- hands the :class:`~nashmoe.moe.PropagationState` of EP-CAMEx / NAMEx from one MoE layer to the
  next, and tells the last propagating layer that nothing uses its step;
- keeps it correct under activation checkpointing (``torch.utils.checkpoint``, reentrant or not,
  e.g. ``model.gradient_checkpointing_enable()`` in transformers): a recomputed layer sees the
  state its original forward saw, and, where the original forward ran without a graph (reentrant
  checkpointing), the state is rebuilt from the parameters so that gradients reach E_m^{(1)};
- gives every merging layer exact incremental decoding with segment routing when the model is
  called on new tokens only with a key/value cache (``model.generate(use_cache=True)``): a forward
  pre-hook reads the cache length (or ``cache_position``) from the model call's keyword arguments,
  and each layer keeps a :class:`~nashmoe.moe.SegmentCache` in the chain.

This module sits above the layer (it imports :mod:`nashmoe.moe.layer`; the layer never imports
it), together with :func:`collect_aux`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from nashmoe.moe.aux import MoEAux
from nashmoe.moe.layer import MoEFeedForward, SegmentCache
from nashmoe.moe.state import PropagationState

__all__ = ["PropagationChain", "collect_aux", "link_moe_layers"]


@dataclass
class _Record:
    """What one layer received in its last original (not recomputed) forward."""

    state: PropagationState | None
    grad: bool  # grad mode of that call: False inside reentrant checkpointing


class PropagationChain:
    """Carries the propagation state between the MoE layers of one model.

    Create it with :func:`link_moe_layers`; ``chain.unlink()`` undoes it.

    Activation checkpointing is supported. The chain records, for every layer, the state it
    received in its last original forward pass. A layer called again while autograd runs a
    backward pass is a recomputation: it reads its recorded state instead of the chain's current
    one (which a later layer has overwritten) and reuses its recorded Nash weights (no new solve,
    no warm-start update), so it reproduces its original forward exactly. Where that original
    forward ran without a graph (reentrant checkpointing runs it under ``no_grad``), the incoming
    state is rebuilt from the parameters of the layers before it (their parameter parts only,
    with their recorded α, no tokens), so that the recomputation's gradients reach E_m^{(1)} and
    the earlier experts; a layer called with grad enabled after such a layer is treated the same
    way. The propagation state depends on parameters only, so a recorded state stays valid for
    every forward pass until the parameters change (several forward passes before one backward
    are fine). The records hold references to the states of the last pass (one base, and the
    momentum buffers, per layer) until the next pass replaces them; ``clear()`` drops them.
    Rebuilding reads the parameters of the earlier layers, so with sharded parameters (FSDP)
    use non-reentrant checkpointing, which reuses the recorded states instead (it rebuilds only
    if a ``no_grad`` pass of the same model ran between a forward and its backward).

    Attributes:
        state: the state handed to the next layer in the current forward pass.
        layers: the linked layers, in call order.
        decoding_start: in a cached decoding call (the model was called with a key/value cache,
            ``cache_position`` or ``use_cache=True``, or without gradients and with
            ``config.use_cache`` true, as transformers models build a cache then), the absolute
            position of the call's first token (0: a new prompt); None in an ordinary pass.
    """

    def __init__(self) -> None:
        self.state: PropagationState | None = None
        self.layers: list[MoEFeedForward] = []
        self.decoding_start: int | None = None
        self._records: dict[int, _Record] = {}
        self._segment_caches: dict[int, SegmentCache] = {}
        self._last_flags: list[tuple[MoEFeedForward, bool]] = []
        self._handle = None
        self._model: nn.Module | None = None  # set where a beam-search hook was installed

    def reset(self) -> None:
        """Start a new forward pass (the model's pre-hook calls this)."""
        self.state = None
        self.decoding_start = None

    def clear(self) -> None:
        """Drop the recorded states and the decoding caches."""
        self.reset()
        self._records.clear()
        self._segment_caches.clear()

    def unlink(self) -> None:
        """Detach the chain from its layers and remove the model's pre-hook."""
        for layer in self.layers:
            if getattr(layer, "_chain", None) is self:
                layer._chain = None
        for layer, previous in self._last_flags:
            layer.last_in_chain = previous
        self._last_flags = []
        self.layers = []
        self.clear()
        model, self._model = self._model, None
        if model is not None and isinstance(model.__dict__.get("_reorder_cache"), _BeamReorder):
            del model._reorder_cache
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    # ------------------------------------------------------------------ called by the layers
    def incoming(self, layer: MoEFeedForward, recompute: bool) -> PropagationState | None:
        """The state ``layer`` receives (see the class docstring)."""
        i = layer._chain_index
        record = self._records.get(i)
        if recompute:
            if record is None:
                return self.state
            if record.grad:  # non-reentrant: the same values, hence the same saved tensors
                return record.state
            return self._rebuild(i)  # reentrant: a fresh graph down to the parameters
        state = self.state
        if (
            state is not None
            and torch.is_grad_enabled()
            and not any(t.requires_grad for t in state.base.values())
            and self._upstream_requires_grad(i)
        ):  # the previous layer ran under no_grad (reentrant checkpointing): reconnect
            state = self._rebuild(i)
        self._records[i] = _Record(state, torch.is_grad_enabled())
        return state

    def outgoing(self, layer: MoEFeedForward, state: PropagationState | None) -> None:
        self.state = state

    def segment_cache(self, layer: MoEFeedForward) -> tuple[SegmentCache | None, int]:
        """``(cache, start position)`` for ``layer`` in a cached decoding call, else ``(None, 0)``.

        A merging layer with segment routing gets its :class:`SegmentCache` (a new prompt,
        position 0, starts it afresh); token routing needs none; sequence or image units cannot
        decode incrementally (the layer raises a clear error).
        """
        start, cfg = self.decoding_start, layer.config
        if start is None or not cfg.is_merging:
            return None, 0
        if cfg.unit == "token" or (cfg.unit != "segment" and start == 0):
            return None, 0
        i = layer._chain_index
        if start == 0 or i not in self._segment_caches:
            self._segment_caches[i] = SegmentCache()
        return self._segment_caches[i], start

    def reorder(self, index: Tensor) -> None:
        """Reorder the sequences of every decoding cache (beam search: ``index`` holds, for each
        new row, the row it continues)."""
        for cache in self._segment_caches.values():
            if cache.segment_sum is None:
                continue
            idx = index.to(cache.segment_sum.device)
            cache.segment_sum = cache.segment_sum.index_select(0, idx)
            cache.scores = cache.scores.index_select(0, idx)
            cache.weights = {k: w.index_select(0, idx) for k, w in cache.weights.items()}

    # ------------------------------------------------------------------ internals
    def _upstream_requires_grad(self, index: int) -> bool:
        return any(
            p.requires_grad
            for layer in self.layers[:index]
            if layer.config.propagates
            for p in layer.parameters()
        )

    def _rebuild(self, index: int) -> PropagationState | None:
        """The state entering layer ``index``, recomputed from the parameters of the layers
        before it with their recorded Nash weights (a fresh graph; no tokens involved)."""
        state = None
        # Identity hooks: inside a non-reentrant recomputation these extra operations must not
        # take part in the matching of saved tensors against the original forward.
        with torch.autograd.graph.saved_tensors_hooks(_identity, _identity):
            for layer in self.layers[:index]:
                if layer.config.propagates:
                    state = layer._parameter_part(state, reuse_solve=True).next_state
        return state

    def _pre_forward(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self.reset()
        if len(args) > 1:  # e.g. model(input_ids, past_key_values): name the positional ones
            try:
                bound = inspect.signature(module.forward).bind_partial(*args, **kwargs)
                kwargs = {**bound.arguments, **bound.arguments.get("kwargs", {})}
            except (TypeError, ValueError):
                pass
        # A call without a cache argument builds one when the model's config says so (the
        # transformers default): then it is a prompt, as long as no gradient is taken (training
        # passes keep no decoding state).
        default = bool(getattr(getattr(module, "config", None), "use_cache", False))
        self.decoding_start = _decoding_start(kwargs, default and not torch.is_grad_enabled())
        if self.decoding_start is None:
            self._segment_caches.clear()  # a later incremental call must not find stale sums


def _identity(t: Tensor) -> Tensor:
    return t


def _cache_length(past: Any) -> int | None:
    """Tokens held by a key/value cache: a transformers ``Cache`` or a legacy tuple."""
    get = getattr(past, "get_seq_length", None)
    if callable(get):
        return int(get())
    if isinstance(past, (tuple, list)) and past and isinstance(past[0], (tuple, list)):
        first = past[0][0] if past[0] else None
        if isinstance(first, Tensor):
            return int(first.shape[-2])
    return None


def _decoding_start(kwargs: dict[str, Any], default_use_cache: bool = False) -> int | None:
    """Absolute position of the first new token of a cached decoding call, else None."""
    position = kwargs.get("cache_position")
    if isinstance(position, Tensor) and position.numel():
        return int(position.reshape(-1)[0])
    for name in ("cache", "past_key_values"):
        past = kwargs.get(name)
        if past is not None:
            length = _cache_length(past)
            if length is not None:
                return length
    use_cache = kwargs.get("use_cache")
    if use_cache is True or (use_cache is None and default_use_cache):
        return 0  # the model creates its cache in this call: a new prompt
    return None


def link_moe_layers(model: nn.Module) -> PropagationChain:
    """Thread the propagation state through every :class:`~nashmoe.moe.MoEFeedForward` of
    ``model`` without changing how its blocks are called.

    The layers are taken in module-registration order, which must be the order in which the
    forward pass calls them. The first propagating layer must own the base expert
    (``owns_base=True``) and the others must not; the last one is told that nothing uses its
    propagation step (``last_in_chain``), which it then skips. A forward pre-hook on ``model``
    starts every pass afresh and reads the cached-decoding position from the call's keyword
    arguments (``cache`` / ``past_key_values``, ``cache_position``, ``use_cache``), see
    :class:`PropagationChain`. For transformers' beam search, link the model whose
    ``generate`` you call: the chain then installs ``model._reorder_cache``, which reorders its
    decoding caches with the model's (unlinking removes it). Cropping the cache (assisted
    decoding) is refused with an error.

    Returns:
        The :class:`PropagationChain`; call ``chain.unlink()`` to undo.
    """
    layers = [m for m in model.modules() if isinstance(m, MoEFeedForward)]
    if not layers:
        raise ValueError("the model has no MoEFeedForward layer to link")
    propagating = [m for m in layers if m.config.propagates]
    if propagating:
        owners = [i for i, m in enumerate(propagating) if m.owns_base]
        if owners != [0]:
            raise ValueError(
                "the first propagating MoE layer (in registration order) must own the base "
                f"expert and no other may; owners found at positions {owners}"
            )
    for layer in layers:
        if getattr(layer, "_chain", None) is not None:
            raise ValueError("a layer of this model is already linked to a chain; unlink it first")
    chain = PropagationChain()
    for i, layer in enumerate(layers):
        layer._chain, layer._chain_index = chain, i
    chain.layers = layers
    if propagating:
        last = propagating[-1]
        chain._last_flags = [(last, last.last_in_chain)]
        last.last_in_chain = True
    chain._handle = model.register_forward_pre_hook(chain._pre_forward, with_kwargs=True)
    if hasattr(model, "_beam_search"):  # transformers: beam search reorders through this hook
        chain._model = model
        model._reorder_cache = _BeamReorder(chain, getattr(model, "_reorder_cache", None))
    return chain


class _BeamReorder:
    """``model._reorder_cache(cache, beam_idx)``: transformers' beam search calls it after every
    step (when the model has it); reorders the chain's decoding caches along with the model's."""

    def __init__(self, chain: PropagationChain, previous) -> None:
        self.chain, self.previous = chain, previous

    def __call__(self, cache, beam_idx: Tensor):
        self.chain.reorder(beam_idx)
        if self.previous is not None:
            return self.previous(cache, beam_idx)
        cache.reorder_cache(beam_idx)
        return cache


def collect_aux(model: nn.Module) -> list[MoEAux]:
    """The ``last_aux`` of every MoE layer of ``model`` (registration order) from its last
    forward pass."""
    return [
        m.last_aux
        for m in model.modules()
        if isinstance(m, MoEFeedForward) and m.last_aux is not None
    ]
