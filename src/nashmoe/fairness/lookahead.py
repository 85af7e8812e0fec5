"""One-step look-ahead hypergradients of validation losses with respect to example weights.

Learning to Reweight (Ren, Zeng, Yang, Urtasun, ICML 2018), as used by fairness-aware
meta-learning (Zeng et al., NeurIPS 2024, arXiv 2406.07029; fairness.md, section 2). For a
training batch with per-example losses ℓ_j(θ) and weights ε ∈ R^B (ε = 0):

    θ'(ε) = OptStep(θ, ∇_θ Σ_j ε_j ℓ_j(θ))                    (a virtual, differentiable step)
    J[v, j] = ∂ ℓ^val_v(θ'(ε)) / ∂ε_j  at ε = 0                (one row per meta example v)

Every validation objective L(ℓ^val) then has hypergradient ``∂L/∂ℓ^val @ J`` (chain rule), so one
Jacobian serves all players and objectives. OptStep is :class:`VirtualSGD`, a functional copy of
``torch.optim.SGD`` with momentum and weight decay that reads the real optimizer's momentum buffers
and never modifies them (the reference uses the ``higher`` package for this; we use
``torch.func``).

Two backends compute the same J:

- ``"func"``: the literal definition with ``torch.func``: ``functional_call`` of the model,
  ``torch.func.grad`` for the inner gradient, the functional SGD step, and ``torch.func.jacrev``
  with respect to ε. Works for any module whose examples are processed independently.
- ``"ghost"``: an exact shortcut for models whose parameters all live in ``nn.Linear`` layers,
  each applied once to a ``[B, in]`` input (the MLP of the reference). The SGD step is affine in
  ε with ∂θ'/∂ε_j = −η ∇ℓ_j(θ), so J[v, j] = −η ⟨∇ℓ_j(θ), ∇ℓ^val_v(θ'(0))⟩, and for a linear
  layer the per-example gradients are outer products δ aᵀ, so each inner product is
  (δ_j·δ'_v)(a_j·a'_v + 1) summed over layers. Cost: a forward and backward on the batch and on
  the meta set, instead of one per meta example.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev

from nashmoe.fairness.objectives import per_example_cross_entropy, validation_losses

__all__ = [
    "BACKENDS",
    "Lookahead",
    "MetaJacobian",
    "VirtualSGD",
    "ghost_supported",
    "meta_jacobian",
    "momentum_buffers",
]

BACKENDS = ("auto", "func", "ghost")
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class VirtualSGD:
    """Functional ``torch.optim.SGD(lr, momentum, weight_decay)`` step (no dampening, no Nesterov).

    d = g + λθ;  b = μ·buf + d (b = d when there is no buffer yet, as on SGD's first step);
    θ' = θ − η·b. Differentiable in ``grads``; the buffers are read, never modified.
    """

    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay}")

    def step(
        self,
        params: Mapping[str, Tensor],
        grads: Mapping[str, Tensor],
        buffers: Mapping[str, Tensor | None] | None = None,
    ) -> dict[str, Tensor]:
        """θ' for every parameter name in ``params``."""
        out = {}
        for name, p in params.items():
            d = grads[name]
            if self.weight_decay:
                d = d + self.weight_decay * p
            buf = None if buffers is None else buffers.get(name)
            if self.momentum and buf is not None:
                d = self.momentum * buf + d
            out[name] = p - self.lr * d
        return out


@dataclass(frozen=True)
class MetaJacobian:
    """Validation losses at θ'(0) ``[V]`` and their Jacobian ``[V, B]`` with respect to ε.

    ``train_losses`` are the batch's per-example training losses at θ (detached). The ghost
    backend also keeps, per ``nn.Linear`` layer, the batch's inputs a and output gradients δ
    (``batch_terms``), from which :meth:`Lookahead.weighted_gradients` forms the real update's
    gradient without a second forward pass.
    """

    val_losses: Tensor
    jacobian: Tensor
    train_losses: Tensor
    batch_terms: tuple[tuple[Tensor, Tensor], ...] | None = None

    def hypergradient(self, coefficients: Tensor) -> Tensor:
        """``coefficients [..., V] @ J``: the hypergradient of Σ_v c_v ℓ^val_v, ``[..., B]``."""
        return coefficients.to(self.jacobian.dtype) @ self.jacobian


def ghost_supported(model: nn.Module) -> bool:
    """True when every trainable parameter belongs to an ``nn.Linear`` layer."""
    linear_params = {
        id(p) for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters()
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    return bool(trainable) and all(id(p) in linear_params for p in trainable)


def _val_fn(val_loss: str | LossFn) -> LossFn:
    if not isinstance(val_loss, str):
        return val_loss
    kind = val_loss
    validation_losses(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), kind)  # validates

    def fn(logits: Tensor, labels: Tensor) -> Tensor:
        return validation_losses(logits, labels, kind)

    return fn


class Lookahead:
    """One-step look-ahead hypergradients for a fixed model (its structure is cached).

    Args:
        model: the classifier (logits ``[N, C]``); it runs in its current mode, so
            ``model.train()`` makes dropout active in the look-ahead, as in the reference code.
        step: the virtual optimizer step (match the real optimizer).
        val_loss: ``"ce+soft_f1"``, ``"ce"`` or a callable ``(logits, y) -> [N]``.
        train_loss: per-example training loss ``(logits, y) -> [N]``.
        backend: ``"func"``, ``"ghost"`` or ``"auto"`` (ghost when :func:`ghost_supported`).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        step: VirtualSGD,
        val_loss: str | LossFn = "ce+soft_f1",
        train_loss: LossFn = per_example_cross_entropy,
        backend: str = "auto",
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {list(BACKENDS)}")
        supported = ghost_supported(model)
        if backend == "ghost" and not supported:
            raise ValueError(
                "ghost backend needs every trainable parameter in an nn.Linear layer; "
                "use backend='func'"
            )
        self.model = model
        self.step = step
        self.val_loss = _val_fn(val_loss)
        self.train_loss = train_loss
        self.backend = ("ghost" if supported else "func") if backend == "auto" else backend
        self._named = [(n, p) for n, p in model.named_parameters()]
        self._buffers = dict(model.named_buffers())
        self._linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        by_id = {id(p): n for n, p in self._named}
        self._linear_names = [
            (by_id[id(m.weight)], by_id[id(m.bias)] if m.bias is not None else None)
            for m in self._linears
        ]
        self._records: list[tuple[nn.Module, Tensor, Tensor]] = []

    def momentum_buffers(self, optimizer: torch.optim.Optimizer) -> dict[str, Tensor | None]:
        """The optimizer's ``momentum_buffer`` per parameter name (None before its first step)."""
        out: dict[str, Tensor | None] = {}
        for name, p in self._named:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            out[name] = None if buf is None else buf.detach()
        return out

    def __call__(
        self,
        x: Tensor,
        y: Tensor,
        x_meta: Tensor,
        y_meta: Tensor,
        buffers: Mapping[str, Tensor | None] | None = None,
    ) -> MetaJacobian:
        """:class:`MetaJacobian` of the meta set's losses for the training batch ``(x, y)``."""
        if (
            x.ndim < 2
            or y.shape != x.shape[:1]
            or x_meta.ndim < 2
            or y_meta.shape != x_meta.shape[:1]
        ):
            raise ValueError(
                f"expected x [B, ...] with y [B] and x_meta [V, ...] with y_meta [V], got "
                f"{tuple(x.shape)}, {tuple(y.shape)}, {tuple(x_meta.shape)}, {tuple(y_meta.shape)}"
            )
        if x.shape[0] == 0 or x_meta.shape[0] == 0:
            raise ValueError("the training batch and the meta set must be non-empty")
        if self.backend == "ghost":
            return self._ghost(x, y, x_meta, y_meta, buffers)
        return self._func(x, y, x_meta, y_meta, buffers)

    def _func(self, x, y, x_meta, y_meta, buffers) -> MetaJacobian:
        params = {k: v.detach() for k, v in self._named}

        def forward(p: dict[str, Tensor], inputs: Tensor) -> Tensor:
            return functional_call(self.model, {**p, **self._buffers}, (inputs,))

        def val_of_eps(eps: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
            def weighted_train_loss(p: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
                losses = self.train_loss(forward(p, x), y)
                return (eps * losses).sum(), losses.detach()

            g, train_losses = grad(weighted_train_loss, has_aux=True)(params)
            lv = self.val_loss(forward(self.step.step(params, g, buffers), x_meta), y_meta)
            return lv, (lv.detach(), train_losses)

        eps0 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        jac, (lv, train_losses) = jacrev(val_of_eps, has_aux=True)(eps0)
        return MetaJacobian(val_losses=lv, jacobian=jac.detach(), train_losses=train_losses)

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self._records.append((module, inputs[0], output))

    def _take(self, batch: int, where: str) -> list[tuple[nn.Module, Tensor, Tensor]]:
        records, self._records = self._records, []
        if len(records) != len(self._linears) or any(
            r[0] is not m for r, m in zip(records, self._linears)
        ):
            raise ValueError(
                f"ghost backend: each nn.Linear must run exactly once per forward, in module "
                f"order ({where}); use backend='func'"
            )
        for m, a, _ in records:
            if a.ndim != 2 or a.shape[0] != batch:
                raise ValueError(
                    f"ghost backend: nn.Linear inputs must be [batch, features], got "
                    f"{tuple(a.shape)} in {m} ({where}); use backend='func'"
                )
        return records

    def _ghost(self, x, y, x_meta, y_meta, buffers) -> MetaJacobian:
        handles = [m.register_forward_hook(self._hook) for m in self._linears]
        self._records = []
        try:
            with torch.enable_grad():
                # Per-example output gradients δ_j at θ on the training batch: examples are
                # independent, so the gradient of the summed loss w.r.t. a layer output is δ_j.
                out = self.model(x)
                rec = self._take(x.shape[0], "training batch")
                train_losses = self.train_loss(out, y)
                deltas = torch.autograd.grad(train_losses.sum(), [z for _, _, z in rec])
                # The same at θ'(0) on the meta set.
                with torch.no_grad():
                    params = {k: v.detach() for k, v in self._named}
                    zeros = {k: torch.zeros_like(v) for k, v in params.items()}
                    p0 = self.step.step(params, zeros, buffers)
                p0 = {k: v.requires_grad_() for k, v in p0.items()}
                out_meta = functional_call(self.model, {**p0, **self._buffers}, (x_meta,))
                rec_meta = self._take(x_meta.shape[0], "meta set")
                lv = self.val_loss(out_meta, y_meta)
                deltas_meta = torch.autograd.grad(lv.sum(), [z for _, _, z in rec_meta])
        finally:
            for h in handles:
                h.remove()
            self._records = []
        inner = torch.zeros(x.shape[0], x_meta.shape[0], dtype=x.dtype, device=x.device)
        terms = []
        for (m, a, _), d, (_, a_meta, _), d_meta in zip(rec, deltas, rec_meta, deltas_meta):
            a = a.detach()
            act_inner = a @ a_meta.detach().T
            if m.bias is not None:
                act_inner = act_inner + 1
            inner += (d @ d_meta.T) * act_inner
            terms.append((a, d))
        return MetaJacobian(
            val_losses=lv.detach(),
            jacobian=(-self.step.lr) * inner.T,
            train_losses=train_losses.detach(),
            batch_terms=tuple(terms),
        )

    def weighted_gradients(self, mj: MetaJacobian, weights: Tensor) -> dict[str, Tensor]:
        """∇_θ Σ_j w_j ℓ_j(θ) from the ghost terms of ``mj`` (same forward pass and dropout mask).

        For a linear layer the gradient is Σ_j w_j δ_j a_jᵀ (weight) and Σ_j w_j δ_j (bias).
        """
        if mj.batch_terms is None:
            raise ValueError("weighted_gradients needs a MetaJacobian from the ghost backend")
        w = weights.detach().to(mj.train_losses.dtype)[:, None]
        out = {}
        for (w_name, b_name), (a, d) in zip(self._linear_names, mj.batch_terms):
            wd = d * w
            out[w_name] = wd.T @ a
            if b_name is not None:
                out[b_name] = wd.sum(0)
        return out


def momentum_buffers(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Tensor | None]:
    """The ``momentum_buffer`` of each named parameter in ``optimizer`` (None before step 1)."""
    out: dict[str, Tensor | None] = {}
    for name, p in model.named_parameters():
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        out[name] = None if buf is None else buf.detach()
    return out


def meta_jacobian(
    model: nn.Module,
    *,
    x: Tensor,
    y: Tensor,
    x_meta: Tensor,
    y_meta: Tensor,
    step: VirtualSGD,
    buffers: Mapping[str, Tensor | None] | None = None,
    val_loss: str | LossFn = "ce+soft_f1",
    train_loss: LossFn = per_example_cross_entropy,
    backend: str = "auto",
) -> MetaJacobian:
    """Jacobian of the per-example validation losses after a virtual step w.r.t. example weights.

    A one-off :class:`Lookahead` (see it for the arguments); the model's parameters and the
    optimizer's buffers are not modified.

    Returns:
        :class:`MetaJacobian` with ``val_losses [V]`` (at θ'(0)) and ``jacobian [V, B]``.
    """
    lookahead = Lookahead(
        model, step=step, val_loss=val_loss, train_loss=train_loss, backend=backend
    )
    return lookahead(x, y, x_meta, y_meta, buffers)
