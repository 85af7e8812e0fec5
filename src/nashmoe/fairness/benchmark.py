"""Benchmark: every method on every data set over several seeds; table (mean ± std) and plot.

Used by ``nashmoe fair --benchmark`` and ``benchmarks/bench_fairness.py``. Each run
(task, method, seed) writes its full :class:`~nashmoe.fairness.trainer.FairRunResult` as JSON under
``<out>/runs/<dataset>-<sensitive>/<method>/seed<k>.json`` (existing files are reused, so an
interrupted benchmark resumes). Per seed the split, the initialisation and the batch order are
shared by all methods, so comparisons are paired.

Reported numbers are **test** metrics at the epoch chosen on **validation**
(``selection_metric``), mean ± sample std (ddof = 1) over seeds. The reference protocol (the epoch
maximising the seed-averaged *test* balanced accuracy, which the paper calls "AUC") is available
from :func:`aggregate` with ``protocol="test_seed_mean"`` and is always labelled
"test-selected (reference protocol)".
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from nashmoe._optional import pyplot

__all__ = [
    "BENCHMARK_TASKS",
    "TABLE_METRICS",
    "aggregate",
    "compare_two_stage",
    "format_comparison",
    "format_diagnostics",
    "format_paired",
    "format_table",
    "paired_differences",
    "plot_tradeoff",
    "run_benchmark",
    "write_report",
]

BENCHMARK_TASKS = ("adult/sex", "adult/race", "compas/race", "german/age")
TABLE_METRICS = (
    "roc_auc",
    "balanced_accuracy",
    "balanced_accuracy_group_gap",
    "balanced_accuracy_worst_group",
    "roc_auc_group_gap",
    "demographic_parity_difference",
    "equalized_odds_difference",
)
_SHORT = {
    "roc_auc": "ROC-AUC",
    "balanced_accuracy": "bal. acc.",
    "balanced_accuracy_group_gap": "bal. acc. gap",
    "balanced_accuracy_worst_group": "bal. acc. worst",
    "roc_auc_group_gap": "ROC-AUC gap",
    "roc_auc_worst_group": "ROC-AUC worst",
    "demographic_parity_difference": "DP diff.",
    "equalized_odds_difference": "EO diff.",
    "equal_opportunity_difference": "EOpp diff.",
}
_REFERENCE_LABEL = "test-selected (reference protocol)"


def _split_task(task: str) -> tuple[str, str]:
    if "/" not in task:
        raise ValueError(f"task must look like 'dataset/sensitive', got {task!r}")
    dataset, sensitive = task.split("/", 1)
    return dataset, sensitive


@functools.lru_cache(maxsize=8)
def _dataset(dataset: str, sensitive: str, seed: int, data_dir: str | None, meta_per_cell: int):
    from nashmoe.fairness.datasets import load_fair_dataset

    return load_fair_dataset(
        dataset, sensitive, seed=seed, data_dir=data_dir, meta_per_cell=meta_per_cell
    )


def _run_path(out_dir: Path, task: str, method: str, seed: int) -> Path:
    dataset, sensitive = _split_task(task)
    return out_dir / "runs" / f"{dataset}-{sensitive}" / method / f"seed{seed}.json"


def _run_job(job: dict) -> dict:
    """Worker: one (task, method, seed) run; writes its JSON and returns it."""
    import torch

    from nashmoe.fairness.trainer import config_for, train_fair

    torch.set_num_threads(job["threads"])
    dataset, sensitive = _split_task(job["task"])
    ds = _dataset(dataset, sensitive, job["seed"], job["data_dir"], job["meta_per_cell"])
    config = config_for(dataset, sensitive, job["method"], seed=job["seed"], **job["overrides"])
    # per-epoch test metrics feed only the labelled reference-protocol table (aggregate)
    result = train_fair(ds, config, test_every_epoch=True).to_dict()
    result["task"] = job["task"]
    path = Path(job["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, allow_nan=True))
    os.replace(tmp, path)
    return result


def run_benchmark(
    *,
    out_dir: str | os.PathLike[str],
    tasks: Sequence[str] = BENCHMARK_TASKS,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    data_dir: str | os.PathLike[str] | None = None,
    overrides: dict | None = None,
    meta_per_cell: int = 3,
    jobs: int = 1,
    threads: int = 1,
    resume: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run every (task, method, seed) and return the run results (dicts, see module docstring).

    Args:
        out_dir: output folder.
        tasks: ``"dataset/sensitive"`` strings.
        methods: method names (default: all of :data:`~nashmoe.fairness.trainer.METHODS`).
        seeds: seeds; each draws its own split and initialisation.
        data_dir: data folder (default ``$NASHMOE_DATA``).
        overrides: :class:`~nashmoe.fairness.trainer.FairTrainConfig` fields applied to every run
            (e.g. ``{"epochs": 30}``); None values are ignored.
        meta_per_cell: meta examples per (group × label) cell.
        jobs: worker processes (each uses ``threads`` torch threads).
        resume: reuse run files that already exist.
    """
    from nashmoe.fairness.trainer import DATASET_DEFAULTS, METHODS

    methods = list(METHODS) if methods is None else list(methods)
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {list(METHODS)}")
    for t in tasks:
        if _split_task(t) not in DATASET_DEFAULTS:
            known = sorted("/".join(k) for k in DATASET_DEFAULTS)
            raise ValueError(f"unknown task {t!r}; known: {known}")
    out = Path(out_dir)
    data_dir = None if data_dir is None else str(data_dir)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    results, todo = [], []
    for task in tasks:
        for seed in seeds:
            for method in methods:
                path = _run_path(out, task, method, seed)
                if resume and path.exists():
                    results.append(json.loads(path.read_text()))
                    continue
                todo.append(
                    {
                        "task": task,
                        "method": method,
                        "seed": int(seed),
                        "data_dir": data_dir,
                        "meta_per_cell": meta_per_cell,
                        "overrides": overrides,
                        "threads": threads,
                        "path": str(path),
                    }
                )
    # Longest first (meta methods on Adult), for better packing over workers.
    todo.sort(key=lambda j: (not j["task"].startswith("adult"), j["method"] in ("erm", "dro")))
    log(f"{len(results)} runs reused, {len(todo)} to run with {jobs} worker(s)")
    start = time.perf_counter()

    def done(res: dict, k: int) -> None:
        sel = res["selected"]["test"]
        log(
            f"[{k}/{len(todo)} {time.perf_counter() - start:7.0f}s] {res['task']:12s} "
            f"{res['config']['method']:15s} seed {res['config']['seed']}: "
            f"epoch {res['selected_epoch']:3d} roc_auc {sel['roc_auc']:.4f} "
            f"bal_acc {sel['balanced_accuracy']:.4f} ({res['seconds']:.0f}s)"
        )

    if jobs <= 1:
        for k, job in enumerate(todo, 1):
            res = _run_job(job)
            results.append(res)
            done(res, k)
    else:
        from nashmoe._workers import worker_initializer

        with ProcessPoolExecutor(max_workers=jobs, initializer=worker_initializer()) as pool:
            futures = [pool.submit(_run_job, j) for j in todo]
            for k, fut in enumerate(as_completed(futures), 1):
                res = fut.result()
                results.append(res)
                done(res, k)
    return results


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if len(v) == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def aggregate(
    results: Sequence[dict],
    *,
    metrics: Sequence[str] = TABLE_METRICS,
    protocol: str = "validation",
) -> list[dict]:
    """Mean ± std over seeds of the test metrics, per (task, method).

    ``protocol="validation"`` (default): per seed, the epoch chosen on validation;
    ``"last"``: the last epoch; ``"test_seed_mean"``: the reference protocol, the epoch that
    maximises the seed-averaged test balanced accuracy (rows labelled accordingly).
    Rows also carry stage-1 diagnostics (Nash methods) and the conflict fraction over all epochs.
    """
    if protocol not in ("validation", "last", "test_seed_mean"):
        raise ValueError(f"unknown protocol {protocol!r}")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        task = r.get("task") or f"{r['dataset']['name']}/{r['dataset']['sensitive']}"
        groups.setdefault((task, r["config"]["method"]), []).append(r)
    rows = []
    for (task, method), runs in groups.items():
        runs = sorted(runs, key=lambda r: r["config"]["seed"])
        if protocol == "validation":
            picked = [r["selected"]["test"] for r in runs]
            epochs = [r["selected_epoch"] for r in runs]
        elif protocol == "last":
            picked = [r["last"]["test"] for r in runs]
            epochs = [len(r["history"]) for r in runs]
        else:
            n_ep = min(len(r["history"]) for r in runs)
            curve = [
                np.nanmean([r["history"][e]["test"]["balanced_accuracy"] for r in runs])
                for e in range(n_ep)
            ]
            best = int(np.nanargmax(curve))
            picked = [r["history"][best]["test"] for r in runs]
            epochs = [best + 1] * len(runs)
        row: dict = {
            "task": task,
            "method": method,
            "protocol": _REFERENCE_LABEL if protocol == "test_seed_mean" else protocol,
            "seeds": [r["config"]["seed"] for r in runs],
            "epochs": epochs,
            "seconds": float(np.mean([r["seconds"] for r in runs])),
        }
        for m in metrics:
            row[m] = _mean_std([p.get(m, math.nan) for p in picked])
        stage1 = [r["stage1"] for r in runs if r.get("stage1")]
        if stage1:
            row["bargain_success_rate"] = _mean_std([s["bargain_success_rate"] for s in stage1])
            for key in (
                "conflict_fraction",
                "pairwise_conflict_fraction",
                "clipped_improvement_fraction",
            ):
                row[f"stage1_{key}"] = _mean_std([s.get(key, math.nan) for s in stage1])
            counts: dict[str, int] = {}
            for s in stage1:
                for k, v in s["status_counts"].items():
                    counts[k] = counts.get(k, 0) + v
            row["status_counts"] = counts
        conflict = []
        for r in runs:
            per_epoch = [h["diagnostics"].get("conflict_fraction") for h in r["history"]]
            per_epoch = [c for c in per_epoch if c is not None]
            if per_epoch:
                conflict.append(float(np.mean(per_epoch)))
        if conflict:
            row["conflict_fraction"] = _mean_std([float(c) for c in conflict])
        test_sizes = runs[0]["dataset"]["sizes"]["test"]
        row["test_sizes"] = {g: sum(v) for g, v in test_sizes.items()}
        rows.append(row)
    from nashmoe.fairness.trainer import METHODS

    order = {m: i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: (r["task"], order.get(r["method"], 99)))
    return rows


def _fmt(ms: tuple[float, float, int], digits: int = 3) -> str:
    mean, std, _ = ms
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_table(rows: Sequence[dict], *, metrics: Sequence[str] = TABLE_METRICS) -> str:
    """A Markdown table, one line per (task, method)."""
    head = ["task", "method", *(_SHORT.get(m, m) for m in metrics), "bargain ok", "conflict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["task"], r["method"], *(_fmt(r[m]) for m in metrics)]
        cells.append(_fmt(r["bargain_success_rate"], 2) if "bargain_success_rate" in r else "")
        cells.append(_fmt(r["conflict_fraction"], 2) if "conflict_fraction" in r else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_diagnostics(rows: Sequence[dict]) -> str:
    """Markdown table of the meta methods' hypergradient diagnostics (fractions of batches)."""
    head = [
        "task",
        "method",
        "conflict (all epochs)",
        "stage-1 bargain ok",
        "stage-1 statuses",
        "stage-1 pairwise conflict",
        "stage-1 improves all after clipping",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "conflict_fraction" not in r:
            continue
        cells = [r["task"], r["method"], _fmt(r["conflict_fraction"], 2)]
        if "bargain_success_rate" in r:
            counts = ", ".join(f"{k} {v}" for k, v in r["status_counts"].items() if v)
            cells += [
                _fmt(r["bargain_success_rate"], 3),
                counts,
                _fmt(r["stage1_pairwise_conflict_fraction"], 2),
                _fmt(r["stage1_clipped_improvement_fraction"], 2),
            ]
        else:
            cells += ["", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_two_stage(
    rows: Sequence[dict],
    *,
    performance: Sequence[str] = ("roc_auc", "balanced_accuracy"),
    disparity: Sequence[str] = (
        "balanced_accuracy_group_gap",
        "demographic_parity_difference",
        "equalized_odds_difference",
    ),
) -> list[dict]:
    """Relative change (in %) of each Nash method over its one-stage counterpart, per task.

    Positive performance changes and negative disparity changes favour the two-stage method.
    """
    by = {(r["task"], r["method"]): r for r in rows}
    out = []
    for (task, method), r in by.items():
        if not method.startswith("nash-") or (task, method[5:]) not in by:
            continue
        base = by[(task, method[5:])]
        entry = {"task": task, "method": method, "baseline": method[5:]}
        for m in (*performance, *disparity):
            a, b = r[m][0], base[m][0]
            defined = b != 0 and not (math.isnan(a) or math.isnan(b))
            entry[m] = 100 * (a - b) / abs(b) if defined else math.nan
        out.append(entry)
    return out


_HIGHER_IS_BETTER = {
    "roc_auc",
    "balanced_accuracy",
    "balanced_accuracy_worst_group",
    "roc_auc_worst_group",
}


def paired_differences(
    results: Sequence[dict],
    *,
    metrics: Sequence[str] = (
        "roc_auc",
        "balanced_accuracy",
        "balanced_accuracy_group_gap",
        "equalized_odds_difference",
    ),
) -> list[dict]:
    """Per-seed differences (Nash method − one-stage method) of the validation-selected test
    metrics: mean ± std over seeds and the number of seeds where the Nash method is better
    (higher for performance metrics, lower for gaps and differences). Seeds share the split and
    the initialisation, so the comparison is paired."""
    by: dict[tuple[str, str, int], dict] = {}
    for r in results:
        task = r.get("task") or f"{r['dataset']['name']}/{r['dataset']['sensitive']}"
        by[(task, r["config"]["method"], r["config"]["seed"])] = r["selected"]["test"]
    out = []
    tasks = sorted({k[0] for k in by})
    for task in tasks:
        for method in ("nash-ltr", "nash-forml", "nash-meta-gdro"):
            base = method[5:]
            seeds = sorted(
                s for (t, m, s) in by if t == task and m == method and (t, base, s) in by
            )
            if not seeds:
                continue
            entry: dict = {"task": task, "method": method, "baseline": base, "seeds": seeds}
            for m in metrics:
                d = [by[(task, method, s)][m] - by[(task, base, s)][m] for s in seeds]
                d = [x for x in d if not math.isnan(x)]
                better = sum((x > 0) if m in _HIGHER_IS_BETTER else (x < 0) for x in d)
                entry[m] = (*_mean_std(d), better)
            out.append(entry)
    return out


def format_paired(entries: Sequence[dict]) -> str:
    """Markdown table of :func:`paired_differences`: mean ± std (wins/seeds)."""
    if not entries:
        return ""
    keys = [k for k in entries[0] if k not in ("task", "method", "baseline", "seeds")]
    head = ["task", "Nash − one-stage", *(f"Δ{_SHORT.get(k, k)}" for k in keys)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        cells = [e["task"], f"{e['method']} − {e['baseline']}"]
        for k in keys:
            mean, std, n, better = e[k]
            cells.append("n/a" if n == 0 else f"{mean:+.3f} ± {std:.3f} ({better}/{n})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_comparison(entries: Sequence[dict]) -> str:
    """Markdown table of :func:`compare_two_stage`."""
    if not entries:
        return ""
    keys = [k for k in entries[0] if k not in ("task", "method", "baseline")]
    head = ["task", "two-stage vs one-stage", *(f"Δ{_SHORT.get(k, k)} %" for k in keys)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        cells = [e["task"], f"{e['method']} vs {e['baseline']}"]
        cells += ["n/a" if math.isnan(e[k]) else f"{e[k]:+.1f}" for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_tradeoff(
    rows: Sequence[dict],
    path: str | os.PathLike[str],
    *,
    accuracy: str = "balanced_accuracy",
    disparities: Sequence[str] = ("balanced_accuracy_group_gap", "equalized_odds_difference"),
) -> None:
    """Accuracy vs disparity per method (mean ± std over seeds), one panel per task and
    disparity metric. Needs matplotlib (``pip install nashmoe[plot]``)."""
    plt = pyplot("the fairness plot")
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    markers = "osD^v<>P*X"
    size = (4 * len(tasks), 3.6 * len(disparities))
    fig, axes = plt.subplots(len(disparities), len(tasks), figsize=size, squeeze=False)
    from nashmoe.palette import color as method_color

    for j, task in enumerate(tasks):
        for i, disp in enumerate(disparities):
            ax = axes[i][j]
            for k, method in enumerate(methods):
                r = next((r for r in rows if r["task"] == task and r["method"] == method), None)
                if r is None:
                    continue
                (xm, xs, _), (ym, ys, _) = r[disp], r[accuracy]
                ax.errorbar(
                    xm,
                    ym,
                    xerr=xs,
                    yerr=ys,
                    fmt=markers[k % len(markers)],
                    color=method_color(method),
                    label=method,
                    capsize=2,
                    markerfacecolor="none" if not method.startswith("nash-") else None,
                )
            ax.set_xlabel(f"{_SHORT.get(disp, disp)} (test, lower is fairer)")
            ax.set_ylabel(f"{_SHORT.get(accuracy, accuracy)} (test)")
            ax.set_title(task)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    ncol = min(len(methods), 4)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False)
    rows_of_legend = -(-len(methods) // ncol)
    fig.suptitle(
        "test metrics at the validation-selected epoch, mean ± sample std (ddof = 1) over seeds"
    )
    fig.tight_layout(rect=(0, 0.035 * rows_of_legend + 0.02, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    results: Sequence[dict], out_dir: str | os.PathLike[str], *, plot: bool = True
) -> dict:
    """Write ``summary.json``, ``table.md`` and (optionally) ``tradeoff.png``; return the rows."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(results)
    ref_rows = aggregate(results, protocol="test_seed_mean")
    last_rows = aggregate(results, protocol="last")
    comparison = compare_two_stage(rows)
    paired = paired_differences(results)
    summary = {
        "validation_selected": rows,
        "last_epoch": last_rows,
        "reference_protocol": ref_rows,
        "two_stage_vs_one_stage_percent": comparison,
        "paired_differences": paired,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=True))
    text = [
        "Test metrics at the epoch selected on validation (roc_auc), mean ± std over seeds.",
        "",
        format_table(rows),
        "",
        "Two-stage (Nash) vs one-stage, relative change of the means (%):",
        "",
        format_comparison(comparison),
        "",
        "Paired per-seed differences, Nash − one-stage: mean ± std (seeds where Nash is better):",
        "",
        format_paired(paired),
        "",
        "Hypergradient diagnostics (fractions of batches, mean ± std over seeds):",
        "",
        format_diagnostics(rows),
        "",
        f"Test metrics, {_REFERENCE_LABEL}: epoch maximising the seed-mean test balanced accuracy.",
        "",
        format_table(ref_rows),
        "",
    ]
    (out / "table.md").write_text("\n".join(text))
    if plot:
        plot_tradeoff(rows, out / "tradeoff.png")
    return summary
