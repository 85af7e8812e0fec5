"""What the trainer logs about the MoE layers (conventions: log what the analyses need).

- :class:`MoEMonitor` accumulates, without a host synchronisation per step, the Nash bargaining
  statuses, fallback and non-convergence counts (cumulative over the run) and the largest
  residual per layer (per logging interval), and keeps the last step's α, per-expert load and η
  per layer, and the means over the logging interval of the bargaining diagnostics of every
  propagating layer (:mod:`nashmoe.moe.bargain_stats`: ``alpha_spread``,
  ``nash_vs_mean_cosine``, ``step_rel_norm``, ``tau_cosine``); :meth:`MoEMonitor.snapshot`
  turns them into flat ``{name: float}`` metrics (``bargain/<stat>/l<layer>``).
- :func:`bargaining_summary`: the per-layer summary of those metrics over a run (its last
  logged value, and the mean over the last quarter of the logged rows), read from
  ``metrics.csv``.
- :func:`base_grad_norm`: ‖∂L/∂E_m^{(1)}‖, the gradient norm of the first MoE layer's owned base
  expert (EP-CAMEx, NAMEx*, CAMEx). Zero would mean the merge collapsed to SMEAR and the base
  (with the whole propagation) has no effect (spec section 2).

The bargaining problem depends on parameters only, so every DDP rank solves the same problem and
rank 0's counts are the run's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from nashmoe.bargaining import NashStatus
from nashmoe.moe import MoEAux

__all__ = ["MoEMonitor", "bargaining_summary", "base_grad_norm"]

_STATUS_NAMES = [s.name.lower() for s in NashStatus]


class MoEMonitor:
    """Running MoE diagnostics of one run (see the module docstring)."""

    def __init__(self) -> None:
        self.solves = 0
        self.fallbacks: Tensor | None = None
        self.not_converged: Tensor | None = None
        self.status_counts: Tensor | None = None
        self._residual: dict[int, Tensor] = {}
        # (layer, stat) -> (sum over the interval's forwards, count): interval means
        self._bargain: dict[tuple[int, str], tuple[Tensor, int]] = {}
        self._residual_max_run = float("-inf")
        self._last: list[MoEAux] = []
        self._offset = {"fallbacks": 0, "not_converged": 0, "status": [0] * len(_STATUS_NAMES)}

    def update(self, auxes: list[MoEAux]) -> None:
        """Record the MoE outputs of one forward pass."""
        self._last = auxes
        for layer, a in enumerate(auxes):
            for name, value in (a.bargaining or {}).items():
                v = value.detach().double()
                prev = self._bargain.get((layer, name))
                self._bargain[(layer, name)] = (
                    (v, 1) if prev is None else (prev[0] + v, prev[1] + 1)
                )
            if not a.solved or a.status is None:
                continue
            self.solves += 1
            status = a.status.detach().reshape(-1).long()
            counts = torch.bincount(status, minlength=len(_STATUS_NAMES))[: len(_STATUS_NAMES)]
            self.status_counts = (
                counts if self.status_counts is None else self.status_counts + counts
            )
            fb = a.fallbacks.detach().sum() if a.fallbacks is not None else status.new_zeros(())
            nc = (
                a.not_converged.detach().sum()
                if a.not_converged is not None
                else status.new_zeros(())
            )
            self.fallbacks = fb if self.fallbacks is None else self.fallbacks + fb
            self.not_converged = nc if self.not_converged is None else self.not_converged + nc
            if a.residual is not None:
                r = a.residual.detach().float().reshape(-1).max()
                prev = self._residual.get(layer)
                self._residual[layer] = r if prev is None else torch.fmax(prev, r)

    def snapshot(self) -> dict[str, float]:
        """Flat metrics (host values): per layer α, load, η, balance loss, the interval's largest
        residual and mean bargaining diagnostics; cumulative solves, statuses, fallbacks and
        non-converged solves. Resets the interval maxima and means."""
        out: dict[str, float] = {}
        for layer, a in enumerate(self._last):
            if a.alpha is not None:
                for i, v in enumerate(a.alpha.detach().double().reshape(-1).tolist()):
                    out[f"alpha/l{layer}/e{i}"] = v
            if a.load is not None:
                for i, v in enumerate(a.load.detach().double().reshape(-1).tolist()):
                    out[f"load/l{layer}/e{i}"] = v
            if a.eta is not None:
                out[f"eta/l{layer}"] = float(a.eta.detach().float())
            out[f"balance/l{layer}"] = float(a.balance_loss.detach().float())
        for (layer, name), (total, count) in sorted(self._bargain.items()):
            out[f"bargain/{name}/l{layer}"] = float(total) / count
        self._bargain = {}
        for layer, r in sorted(self._residual.items()):
            value = float(r)
            out[f"nash/residual/l{layer}"] = value
            if value == value:
                self._residual_max_run = max(self._residual_max_run, value)
        self._residual = {}
        if self.solves or any(self._offset["status"]):
            totals = self.totals()
            out["nash/solves"] = float(totals["solves"])
            out["nash/fallbacks"] = float(totals["fallbacks"])
            out["nash/not_converged"] = float(totals["not_converged"])
            for name, c in totals["status_counts"].items():
                out[f"nash/status/{name}"] = float(c)
        return out

    def totals(self) -> dict[str, Any]:
        """Cumulative counts over the run (host values)."""
        status = [0] * len(_STATUS_NAMES)
        if self.status_counts is not None:
            status = [int(c) for c in self.status_counts.tolist()]
        status = [s + o for s, o in zip(status, self._offset["status"])]
        fb = int(self.fallbacks) if self.fallbacks is not None else 0
        nc = int(self.not_converged) if self.not_converged is not None else 0
        return {
            "solves": self.solves,
            "fallbacks": fb + self._offset["fallbacks"],
            "not_converged": nc + self._offset["not_converged"],
            "status_counts": dict(zip(_STATUS_NAMES, status)),
            "residual_max": (
                self._residual_max_run if self._residual_max_run > float("-inf") else None
            ),
        }

    def state_dict(self) -> dict[str, Any]:
        t = self.totals()
        return {
            "solves": t["solves"],
            "fallbacks": t["fallbacks"],
            "not_converged": t["not_converged"],
            "status": [t["status_counts"][n] for n in _STATUS_NAMES],
            "residual_max": t["residual_max"],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.solves = int(state["solves"])
        self.fallbacks = self.not_converged = self.status_counts = None
        self._offset = {
            "fallbacks": int(state["fallbacks"]),
            "not_converged": int(state["not_converged"]),
            "status": [int(s) for s in state["status"]],
        }
        rmax = state.get("residual_max")
        self._residual_max_run = float("-inf") if rmax is None else float(rmax)


def base_grad_norm(model: nn.Module) -> Tensor | None:
    """‖∂L/∂E_m^{(1)}‖ of ``model`` (a :class:`~nashmoe.models.GPT`, unwrapped) after
    ``backward``; None when the method has no owned base expert."""
    layers = getattr(model, "moe_layers", [])
    base = layers[0].base_tensors() if layers else None
    if not base:
        return None
    total = None
    for p in base.values():
        g = p.grad
        if g is None:
            continue
        if hasattr(g, "full_tensor"):  # an FSDP2 (DTensor) shard: gather it on every rank
            g = g.full_tensor()
        sq = g.detach().float().square().sum()
        total = sq if total is None else total + sq
    if total is None:
        return torch.zeros((), device=next(iter(base.values())).device)
    return total.sqrt()


def bargaining_summary(
    metrics: dict[str, list], *, tail: float = 0.25
) -> dict[str, dict[str, list[float | None]]]:
    """Per-layer summary of the bargaining diagnostics of one run from its ``metrics.csv``
    columns (:func:`nashmoe.train.loggers.read_metrics`): ``{stat: {"final": [per layer],
    "tail_mean": [per layer]}}``, the last logged value and the mean over the last ``tail``
    fraction of the logged values (at least one). Layers that did not log a stat get None;
    an empty dict when the run logged none (methods without propagation)."""
    from nashmoe.moe.bargain_stats import BARGAIN_STATS

    out: dict[str, dict[str, list[float | None]]] = {}
    for stat in BARGAIN_STATS:
        prefix = f"bargain/{stat}/l"
        layers = sorted(int(k[len(prefix) :]) for k in metrics if k.startswith(prefix))
        if not layers:
            continue
        final: list[float | None] = [None] * (layers[-1] + 1)
        tail_mean: list[float | None] = [None] * (layers[-1] + 1)
        for layer in layers:
            values = [float(v) for v in metrics[f"{prefix}{layer}"] if v is not None and v == v]
            if not values:
                continue
            k = max(1, round(tail * len(values)))
            final[layer] = values[-1]
            tail_mean[layer] = sum(values[-k:]) / k
        out[stat] = {"final": final, "tail_mean": tail_mean}
    return out
