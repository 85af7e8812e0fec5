"""Nash-MTL on a two-task toy: both tasks improve until the Pareto front, at a balanced point.

Two conflicting quadratic losses on x ∈ R², the second ten times larger than the first (gradient
scales that differ across tasks are the usual case in multi-task learning):

    L1(x) = ½ (x − a)ᵀ A1 (x − a),        L2(x) = 10 · ½ (x − b)ᵀ A2 (x − b).

Their Pareto set is the curve x(w) = argmin w·L1 + (1 − w)·L2, w ∈ [0, 1], from b to a. Gradient
averaging converges to argmin L1 + L2, a Pareto point dominated by the larger task. Nash-MTL
(Navon et al., ICML 2022) steps along the Nash bargaining direction Σ α_t g_t, which improves every
task and is invariant to each task's scale, so it stops at a balanced point. Both runs use the
same decaying learning rate; the Nash direction has norm √2 whatever the scale. Should the
gradients become exactly opposite (on the front), the solver reports INFEASIBLE and NashMTL falls
back to its last weights, which is counted.

    python examples/nash_mtl_toy.py               # writes runs/nash_mtl_toy/nash_mtl_toy.png
    python examples/nash_mtl_toy.py --no-plots --steps 300
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from nashmoe.bargaining import NashMTL

A = torch.tensor([-1.0, 0.0], dtype=torch.float64)
B = torch.tensor([1.0, 0.0], dtype=torch.float64)
A1 = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
A2 = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
SCALE2 = 10.0
STARTS = ((-0.5, 2.0), (1.5, -1.5), (0.0, -2.0))


def losses(x: torch.Tensor) -> torch.Tensor:
    """The two task losses at x [2] -> [2]."""
    da, db = x - A, x - B
    return torch.stack((0.5 * da @ A1 @ da, SCALE2 * 0.5 * db @ A2 @ db))


def pareto_front(points: int = 4001) -> torch.Tensor:
    """Points x(w) = argmin w·L1 + (1 − w)·L2 of the Pareto set, [points, 2]."""
    out = []
    for w in torch.linspace(0.0, 1.0, points, dtype=torch.float64):
        h = w * A1 + (1 - w) * SCALE2 * A2
        out.append(torch.linalg.solve(h, w * A1 @ A + (1 - w) * SCALE2 * A2 @ B))
    return torch.stack(out)


def pareto_stationarity(x: torch.Tensor) -> float:
    """min over w ∈ [0, 1] of ‖w ĝ1 + (1 − w) ĝ2‖ for the normalised task gradients: 0 exactly
    at Pareto-stationary points (opposite gradients, or a zero one), scale-free."""
    x = x.detach().clone().requires_grad_(True)
    g = torch.stack([torch.autograd.grad(loss, x, retain_graph=True)[0] for loss in losses(x)])
    norms = g.norm(dim=1)
    if float(norms.min()) == 0.0:
        return 0.0
    u = g / norms[:, None]
    diff = u[0] - u[1]
    w = float((-(u[1] @ diff) / diff.dot(diff)).clamp(0.0, 1.0)) if float(diff.norm()) else 0.5
    return float((w * u[0] + (1 - w) * u[1]).norm())


@dataclass
class ToyRun:
    method: str
    path: torch.Tensor  # [steps + 1, 2]
    final_losses: torch.Tensor  # [2]
    stationarity: float
    fallbacks: int


def run_toy(
    method: str, *, start: tuple[float, float], steps: int = 400, lr: float = 0.05
) -> ToyRun:
    """Gradient descent from ``start`` with the tasks' gradients combined by ``method``:
    ``"nash"`` (NashMTL) or ``"mean"`` (plain averaging). The learning rate decays
    exponentially from ``lr`` to ``lr / 1000``: the Nash direction keeps norm √2 up to the front,
    so the step length must shrink for the iterates to settle."""
    if method not in ("nash", "mean"):
        raise ValueError(f"method must be 'nash' or 'mean', got {method!r}")
    x = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    aggregator = NashMTL()
    path = [x.detach().clone()]
    for t in range(steps):
        x.grad = None
        task_losses = losses(x)
        if method == "nash":
            aggregator.backward(list(task_losses), [x])
        else:
            task_losses.mean().backward()
        with torch.no_grad():
            x -= lr * 1e-3 ** (t / steps) * x.grad
        path.append(x.detach().clone())
    final = x.detach()
    return ToyRun(
        method=method,
        path=torch.stack(path),
        final_losses=losses(final),
        stationarity=pareto_stationarity(final),
        fallbacks=int(aggregator.num_fallbacks),
    )


def distance_to_front(x: torch.Tensor, front: torch.Tensor) -> float:
    return float((front - x).norm(dim=1).min())


def plot(runs: list[ToyRun], front: torch.Tensor, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install 'nashmoe[plot]'") from exc
    fig, ax = plt.subplots(figsize=(6, 5))
    grid = torch.linspace(-2.5, 2.5, 121, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    pts = torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1)
    total = torch.stack([losses(p).log1p() for p in pts]).sum(1).reshape(xx.shape)
    ax.contour(xx, yy, total, levels=20, colors="0.85", linewidths=0.6)
    ax.plot(front[:, 0], front[:, 1], color="k", lw=2.5, label="Pareto front")
    colours = {"nash": "tab:blue", "mean": "tab:orange"}
    seen = set()
    for run in runs:
        label = None if run.method in seen else {"nash": "NashMTL", "mean": "mean"}[run.method]
        seen.add(run.method)
        ax.plot(run.path[:, 0], run.path[:, 1], color=colours[run.method], lw=1.2, label=label)
        ax.plot(*run.path[-1], marker="o", color=colours[run.method], ms=6)
        ax.plot(*run.path[0], marker="x", color="k", ms=6)
    ax.plot(*A, marker="*", color="tab:green", ms=12, label="task 1 optimum")
    ax.plot(*B, marker="*", color="tab:red", ms=12, label="task 2 optimum (10x scale)")
    ax.set_xlim(-2.5, 2.5)
    ax.set_ylim(-2.5, 2.5)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Two conflicting tasks: NashMTL vs gradient averaging")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="NashMTL on a two-task toy")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--out", default="runs/nash_mtl_toy")
    parser.add_argument("--no-plots", action="store_true", help="skip the plot")
    parser.add_argument("--no-plot", dest="no_plots", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # Two-player problems: one thread avoids OpenMP wake-up stalls of tiny LAPACK calls.
    torch.set_num_threads(1)

    front = pareto_front()
    runs = []
    print(
        f"{'method':6} {'start':>14} {'final x':>18} {'L1':>7} {'L2':>7} "
        f"{'to front':>9} {'stationarity':>12} {'P-stat.':>7} {'fallbacks':>9}"
    )
    for start in STARTS:
        for method in ("nash", "mean"):
            run = run_toy(method, start=start, steps=args.steps, lr=args.lr)
            runs.append(run)
            final = run.path[-1]
            stationary = run.stationarity < 1e-3
            print(
                f"{method:6} ({start[0]:5.2f},{start[1]:5.2f}) "
                f"({float(final[0]):7.4f},{float(final[1]):7.4f}) "
                f"{float(run.final_losses[0]):7.4f} {float(run.final_losses[1]):7.4f} "
                f"{distance_to_front(final, front):9.1e} {run.stationarity:12.1e} "
                f"{'yes' if stationary else 'no':>7} {run.fallbacks:9d}"
            )
    if not args.no_plots:
        path = Path(args.out) / "nash_mtl_toy.png"
        plot(runs, front, path)
        print(f"wrote {path}")
    return 0 if all(math.isfinite(r.stationarity) for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
