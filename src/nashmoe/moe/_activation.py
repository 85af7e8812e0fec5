"""Activations by name, their backward and an in-place variant, for the hand-written
backward passes of :mod:`nashmoe.moe.fused` and :mod:`nashmoe.moe.tiled`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["act", "act_backward_", "act_into", "hidden_backward_"]


def act(name: str, x: Tensor) -> Tensor:
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu(x)
    if name == "silu":
        return F.silu(x)
    raise ValueError(f"unknown activation {name!r}")


def act_backward_(name: str, grad: Tensor, x: Tensor) -> Tensor:
    """The activation's backward, ``grad · act'(x)``, written into ``grad``."""
    if name == "gelu":
        return torch.ops.aten.gelu_backward.grad_input(grad, x, grad_input=grad)
    if name == "gelu_tanh":
        return torch.ops.aten.gelu_backward.grad_input(grad, x, approximate="tanh", grad_input=grad)
    if name == "relu":
        return grad.mul_(x > 0)
    if name == "silu":
        return torch.ops.aten.silu_backward.grad_input(grad, x, grad_input=grad)
    raise ValueError(f"unknown activation {name!r}")


def act_into(name: str, x: Tensor, out: Tensor) -> Tensor:
    """``out = act(x)`` without a temporary."""
    if name == "gelu":
        return torch.ops.aten.gelu.out(x, out=out)
    if name == "gelu_tanh":
        return torch.ops.aten.gelu.out(x, approximate="tanh", out=out)
    if name == "silu":
        return torch.ops.aten.silu.out(x, out=out)
    return torch.clamp_min(x, 0, out=out)  # relu


def hidden_backward_(
    name: str, dh: Tensor, pre: Tensor, gate: Tensor | None, spare: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """Gradients of the pre-activation and the gate from ``dh``, the gradient of the hidden
    activation ``h = act(pre)``, or ``h = act(gate) · pre`` with a GLU: ``(dpre, dgate)``, in
    place: ``dpre`` overwrites ``dh``; with a GLU, ``dgate`` is written into ``spare`` (same
    shape)."""
    if gate is None:
        return act_backward_(name, dh, pre), None
    act_backward_(name, torch.mul(dh, pre, out=spare), gate)
    return dh.mul_(act(name, gate)), spare
