"""J sweep: does adding experts make the classifier underfit, and does PiCCE remove it?

Reproduces the setting of Figure 2 of Liu et al., "When More Experts Hurt: Underfitting in
Multi-Expert Learning to Defer" (arXiv 2602.17144) on CIFAR-10: J ∈ {1, 2, 4, 8, 16} synthetic
experts with class-dependent accuracy (nashmoe.defer.experts, family "overlapped": each expert knows
3 classes, seeded round-robin, p_in = 0.9, p_out = 0), losses CE, OvA, PiCCE-CE, PiCCE-OvA, 3 seeds.

To make 4 × 5 × 3 = 60 trainings feasible on a CPU, the model is an MLP head (one shared hidden
layer) on frozen, *unsupervised* k-means patch features (Coates et al., AISTATS 2011) of the images,
computed once and cached. Train / val: 45,000 / 5,000 train images (stratified, seeded);
test: the 10,000 official test images. The checkpoint with the best validation system accuracy is
reported (human_ai_deferral convention).

Writes ``results.json`` (updated after every run; ``--resume`` skips finished runs), prints the
table of classifier accuracy (``classifier_all_acc``) and system accuracy against J, and saves
the plot ``defer_sweep.png`` in ``--out``.

    python benchmarks/bench_defer_sweep.py --out runs/bench-defer
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nashmoe._argtypes import HelpFormatter, add_seeds_argument
from nashmoe.defer.experiments import (
    cifar10_synthetic_data,
    cifar_kmeans_features,
    run_experiment,
)

LOSSES = ("ce", "ova", "picce_ce", "picce_ova")
LABELS = {"ce": "CE", "ova": "OvA", "picce_ce": "PiCCE-CE", "picce_ova": "PiCCE-OvA"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--out", default="runs/bench-defer")
    p.add_argument("--num-experts", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    add_seeds_argument(p, default=3)
    p.add_argument(
        "--model",
        choices=["kmeans-mlp", "cnn"],
        default="kmeans-mlp",
        help="MLP head on frozen features (default) or SmallCNN trained end to end",
    )
    p.add_argument("--width", type=int, default=16, help="SmallCNN width (--model cnn)")
    p.add_argument(
        "--optimizer",
        choices=["adam", "sgd"],
        default=None,
        help="default adam (kmeans-mlp), sgd (cnn)",
    )
    p.add_argument(
        "--weight-decay", type=float, default=None, help="default 0 (kmeans-mlp), 5e-4 (cnn)"
    )
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--lr", type=float, default=None, help="default 1e-3 (adam), 0.05 (sgd)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--specialty-size", type=int, default=3)
    p.add_argument("--p-in", type=float, default=0.9)
    p.add_argument("--p-out", type=float, default=0.0)
    p.add_argument("--centroids", type=int, default=256, help="k-means features: 4k dimensions")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy CPU)"
    )
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--resume", action="store_true", help="skip runs already in results.json")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plot")
    p.add_argument("--no-plot", dest="no_plots", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def summarise(runs: list[dict[str, Any]], losses: list[str], js: list[int]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for loss in losses:
        for j in js:
            rows = [r for r in runs if r["loss"] == loss and r["num_experts"] == j]
            if not rows:
                continue
            entry = {"n": len(rows)}
            for key in ("classifier_all_acc", "system_acc", "coverage"):
                vals = np.array([r["test"][key] for r in rows], dtype=float)
                # sample std over seeds (ddof = 1); 0 for a single seed
                std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
                entry[key] = [float(vals.mean()), std]
            table[f"{loss}/J={j}"] = entry
    return table


def print_table(table: dict[str, Any], losses: list[str], js: list[int]) -> str:
    lines = []
    for key, title in (
        ("classifier_all_acc", "classifier accuracy (all test points), %"),
        ("system_acc", "system accuracy, %"),
        ("coverage", "coverage, %"),
    ):
        lines.append(f"\n{title}")
        lines.append(f"{'J':>4} " + " ".join(f"{LABELS[loss]:>16}" for loss in losses))
        for j in js:
            cells = []
            for loss in losses:
                e = table.get(f"{loss}/J={j}")
                cells.append(
                    f"{100 * e[key][0]:8.2f} ± {100 * e[key][1]:4.2f}" if e else f"{'-':>16}"
                )
            lines.append(f"{j:>4} " + " ".join(f"{c:>16}" for c in cells))
    text = "\n".join(lines)
    print(text, flush=True)
    return text


MODEL_TITLES = {
    "kmeans-mlp": "MLP head on frozen k-means features",
    "cnn": "SmallCNN trained end to end",
}


def plot(
    table: dict[str, Any],
    losses: list[str],
    js: list[int],
    path: Path,
    *,
    model: str = "kmeans-mlp",
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover
        raise ImportError("plotting needs matplotlib: pip install 'nashmoe[plot]'") from err
    from nashmoe.palette import color as method_color

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    styles = {
        "ce": ("o", "--"),
        "ova": ("s", "--"),
        "picce_ce": ("o", "-"),
        "picce_ova": ("s", "-"),
    }
    seeds = max((e["n"] for e in table.values()), default=0)
    for ax, key, title in (
        (axes[0], "classifier_all_acc", "classifier accuracy"),
        (axes[1], "system_acc", "system accuracy"),
    ):
        for loss in losses:
            pts = [(j, table[f"{loss}/J={j}"][key]) for j in js if f"{loss}/J={j}" in table]
            if not pts:
                continue
            marker, ls = styles[loss]
            color = method_color(loss)
            ax.errorbar(
                [p[0] for p in pts],
                [100 * p[1][0] for p in pts],
                yerr=[100 * p[1][1] for p in pts],
                color=color,
                marker=marker,
                linestyle=ls,
                capsize=3,
                label=LABELS[loss],
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(js, [str(j) for j in js])
        ax.set_xlabel("number of experts J")
        ax.set_ylabel(f"{title} (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(
        f"CIFAR-10, J synthetic experts, {MODEL_TITLES.get(model, model)}: mean ± sample std "
        f"(ddof = 1) over {seeds} seed(s)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.no_plots:
        from nashmoe._argtypes import check_installed, report_error

        try:
            check_installed("matplotlib", extra="plot", purpose="the plot", hint="or --no-plots")
        except ImportError as err:
            return report_error("bench_defer_sweep", err)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    runs: list[dict[str, Any]] = []
    if args.resume and path.exists():
        runs = json.loads(path.read_text())["runs"]
    done = {(r["loss"], r["num_experts"], r["seed"]) for r in runs}
    start = time.perf_counter()
    cnn = args.model == "cnn"
    optimizer = args.optimizer or ("sgd" if cnn else "adam")
    lr = args.lr if args.lr is not None else (0.05 if optimizer == "sgd" else 1e-3)
    weight_decay = args.weight_decay if args.weight_decay is not None else (5e-4 if cnn else 0.0)
    features = None
    if not cnn:
        features = cifar_kmeans_features(
            data_dir=args.data_dir,
            cache_dir=args.cache_dir,
            num_centroids=args.centroids,
            log=lambda s: print(s, flush=True),
        )
        print(f"features {tuple(features[0].shape)} after {time.perf_counter() - start:.0f}s")
    for seed in args.seeds:
        for j in args.num_experts:
            todo = [loss for loss in args.losses if (loss, j, seed) not in done]
            if not todo:
                continue
            data = cifar10_synthetic_data(
                j,
                data_dir=args.data_dir,
                cache_dir=args.cache_dir,
                seed=seed,
                specialty_size=min(args.specialty_size, 10),
                p_in=args.p_in,
                p_out=args.p_out,
                train_limit=args.train_limit,
                inputs="image" if cnn else "features",
                features=features,
            )
            s = data.info["test"]
            print(
                f"seed {seed} J={j:2d}: expert acc mean {np.mean(s['expert_acc']):.3f}, "
                f"A={s['sum_acc']:.2f}, V={s['union_coverage']:.3f}, best single "
                f"{s['best_expert_acc']:.3f}",
                flush=True,
            )
            for loss in todo:
                res = run_experiment(
                    data,
                    loss=loss,
                    seed=seed,
                    epochs=args.epochs,
                    lr=lr,
                    weight_decay=weight_decay,
                    optimizer=optimizer,
                    batch_size=args.batch_size,
                    hidden=args.hidden,
                    width=args.width,
                    curve=False,
                )
                res["experts_info"] = {"test": s, "specialties": data.info["specialties"]}
                t = res["test"]
                print(
                    f"  {LABELS[loss]:10s} clf {100 * t['classifier_all_acc']:.2f} "
                    f"sys {100 * t['system_acc']:.2f} cov {100 * t['coverage']:.1f} "
                    f"experts used {t['num_experts_used']}/{j} "
                    f"best epoch {t['best_epoch'] + 1} ({res['seconds']:.0f}s)",
                    flush=True,
                )
                runs.append(res)
                payload = {"argv": sys.argv, "args": vars(args), "runs": runs}
                path.write_text(json.dumps(payload, indent=1, default=float))
    table = summarise(runs, args.losses, args.num_experts)
    text = print_table(table, args.losses, args.num_experts)
    payload = {"argv": sys.argv, "args": vars(args), "summary": table, "runs": runs}
    path.write_text(json.dumps(payload, indent=1, default=float))
    (out / "table.txt").write_text(text + "\n")
    print(f"wrote {path}")
    if not args.no_plots:
        name = "defer_sweep_cnn.png" if cnn else "defer_sweep.png"
        plot(table, args.losses, args.num_experts, out / name, model=args.model)
        print(f"wrote {out / name}")
    total = time.perf_counter() - start
    print(f"total {total:.0f}s ({math.floor(total / 60)} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
