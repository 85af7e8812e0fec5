"""``nashmoe compare``: every method of the NAMEx family on the same footing.

Same corpus, tokens, model shape, steps, optimiser and seeds for every method; only the MoE layer
differs (spec section 6). For each (seed, method) a run is trained with :func:`~nashmoe.train.train`
into ``<out>/runs/<method>-s<seed>/``, selected on validation and evaluated once on test; then the
cosine similarity between expert outputs is measured per MoE layer on validation tokens.
Outputs in ``<out>``: ``results.json`` (every run and the per-method summary), ``results.md`` (the
table and a plain verdict) and the plots of :mod:`nashmoe.train.plots`.

Several seeds give mean ± std (sample std). ``jobs > 1`` runs that many trainings in parallel
processes (one thread each by default); step times are then measured under contention.

A run that diverges (a non-finite loss or gradient, :class:`~nashmoe.train.TrainingDiverged`)
is recorded as diverged (step and reason) and left out of the table; the other runs go on, and
``results.json`` / ``results.md`` list the diverged ones. An ``out`` that already holds runs needs
``resume`` (reuse and continue them) or ``overwrite`` (replace them); ``out/run.lock`` keeps a
second comparison out of the same ``out`` while one runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nashmoe._argtypes import parse_seeds as _parse_seeds
from nashmoe.data import Corpus, iter_eval_batches
from nashmoe.moe import METHODS, capture_moe_inputs, expert_output_similarity
from nashmoe.moe.analysis import mean_offdiagonal
from nashmoe.train.checkpoint import (
    CheckpointError,
    CheckpointWarning,
    read_json,
    write_json_atomic,
)
from nashmoe.train.config import TrainConfig, options_for_method, unused_options
from nashmoe.train.diagnostics import bargaining_summary
from nashmoe.train.divergence import TrainingDiverged
from nashmoe.train.loggers import read_metrics
from nashmoe.train.report import (
    format_bargaining,
    format_paired,
    format_table,
    paired_table,
    summarize,
    verdict,
)
from nashmoe.train.rundir import RunDirError, RunLock, check_writable_dir, is_existing_run
from nashmoe.train.trainer import corpus_for, git_state, numeric_settings, train

__all__ = [
    "CompareResult",
    "check_options_used",
    "compare",
    "expert_similarity",
    "parse_methods",
    "parse_seeds",
]


def parse_seeds(text: str | int | Sequence[int]) -> list[int]:
    """Seeds from ``"3"`` (a count: 0, 1, 2), ``"0,5,7"``, ``"0-4"`` or ``"5,"`` (a list), or ints
    (see :func:`nashmoe._argtypes.parse_seeds`, shared by every subcommand).

    Raises:
        ValueError: text that is neither a count nor a list of distinct seeds.
    """
    try:
        return _parse_seeds(text)
    except argparse.ArgumentTypeError as err:
        raise ValueError(f"--seeds: {err}") from None


def check_options_used(model: dict[str, Any], methods: Sequence[str]) -> dict[str, list[str]]:
    """Which methods use each model override; an override that none of ``methods`` uses is an
    error (it would be recorded and ignored). Returns ``{key: [methods that use it]}``.

    Raises:
        ValueError: naming the overrides no method uses.
    """
    keys = [k for k in model if k != "moe_options"] + list(model.get("moe_options") or {})
    unused = {m: unused_options(m, model) for m in methods}
    users = {k: [m for m in methods if k not in unused[m]] for k in keys}
    idle = [k for k, ms in users.items() if not ms]
    if idle:
        reasons = "; ".join(f"{k}: {unused[methods[0]][k]}" for k in idle)
        raise ValueError(
            f"no method of this comparison ({', '.join(methods)}) uses "
            f"{', '.join(idle)} ({reasons}); --set would be ignored"
        )
    return users


def parse_methods(text: str | Sequence[str] | None) -> list[str]:
    """Methods from ``"all"`` / None (every method), or a comma-separated list."""
    if text is None or text == "all":
        return list(METHODS)
    items = [m.strip() for m in text.split(",")] if isinstance(text, str) else list(text)
    items = [m for m in items if m]
    unknown = [m for m in items if m not in METHODS]
    if unknown:
        raise ValueError(
            f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}"
        )
    if not items or len(set(items)) != len(items):
        raise ValueError(f"--methods needs distinct methods, got {text!r}")
    return items


@torch.no_grad()
def expert_similarity(model: torch.nn.Module, corpus: Corpus, *, blocks: int = 8) -> dict:
    """Cosine similarity between expert outputs per MoE layer on the first ``blocks`` validation
    blocks: ``{"matrices": [[N, N] per layer], "mean_offdiag": [per layer]}``."""
    if not getattr(model, "moe_layers", None):
        return {"matrices": [], "mean_offdiag": []}
    device = next(model.parameters()).device
    x, _ = next(
        iter_eval_batches(
            corpus.validation, batch_size=blocks, block_size=model.config.block_size, device=device
        )
    )
    model.eval()
    inputs = capture_moe_inputs(model, lambda: model(x))
    mats = [expert_output_similarity(layer, h) for layer, h in zip(model.moe_layers, inputs)]
    return {
        "matrices": [m.double().cpu().tolist() for m in mats],
        "mean_offdiag": [mean_offdiagonal(m) for m in mats],
    }


@dataclass
class CompareResult:
    """Outcome of :func:`compare`: every run's record, the per-method summary (of the runs that
    finished), the runs that diverged, and the files."""

    runs: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    table: str
    verdict: str
    out: Path
    files: dict[str, str] = field(default_factory=dict)
    diverged: list[dict[str, Any]] = field(default_factory=list)


_CORPUS_CACHE: dict[tuple, Corpus] = {}


def _corpus_for(config: TrainConfig) -> Corpus:
    key = (
        config.corpus,
        config.tokenizer,
        config.data_dir,
        config.cache_dir,
        config.min_freq,
        config.bpe_vocab_size,
    )
    if key not in _CORPUS_CACHE:
        _CORPUS_CACHE.clear()
        _CORPUS_CACHE[key] = corpus_for(config)
    return _CORPUS_CACHE[key]


def _run_one(config_dict: dict[str, Any], resume: bool, overwrite: bool = False) -> dict[str, Any]:
    """Train (or reuse) one run and measure expert similarity; returns its record (with a
    ``diverged`` entry instead of results when the run diverged)."""
    config = TrainConfig.from_dict(config_dict)
    run_dir = Path(config.out_dir)
    record_path = run_dir / "record.json"
    if resume and record_path.is_file():
        try:
            record = read_json(record_path)
        except CheckpointError as e:  # the run is resumed from its checkpoint instead
            warnings.warn(f"{e}; the run is resumed instead", CheckpointWarning, stacklevel=2)
            record = None
        # runtime options (threads, progress, device, ...) may differ: the same run
        saved = record.get("config") if isinstance(record, dict) else None
        if isinstance(saved, dict) and numeric_settings(saved) == numeric_settings(config):
            record["reused"] = True
            return record
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    corpus = _corpus_for(config)
    t0 = time.perf_counter()
    try:
        result = train(
            config, corpus=corpus, resume="auto" if resume else False, overwrite=overwrite
        )
    except TrainingDiverged as e:
        record = {
            "method": config.method,
            "seed": config.seed,
            "run_dir": str(run_dir),
            "diverged": {
                "step": e.step,
                "what": e.what,
                "message": str(e),
                "checkpoint": None if e.checkpoint is None else str(e.checkpoint),
            },
            "config": config.to_dict(),
            "wall_time_s": time.perf_counter() - t0,
        }
        write_json_atomic(record_path, record)
        return record
    record = result.to_dict()
    record["similarity"] = expert_similarity(result.model, corpus)
    metrics_path = run_dir / "metrics.csv"
    if metrics_path.is_file():
        record["bargaining"] = bargaining_summary(read_metrics(metrics_path))
    # this process's, plus the earlier processes' of a resumed run (up to its checkpoint)
    record["wall_time_s"] = time.perf_counter() - t0 + result.timing["earlier_wall_time_s"]
    write_json_atomic(record_path, record)
    return record


def compare(
    base: TrainConfig,
    *,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] = (0,),
    out: str | os.PathLike[str] = "runs/compare",
    jobs: int = 1,
    resume: bool = False,
    overwrite: bool = False,
    plots: bool = True,
    model_overrides: dict[str, Any] | None = None,
    command: str | None = None,
    log=print,
) -> CompareResult:
    """Train ``methods`` × ``seeds`` with the settings of ``base`` and write the comparison.

    Args:
        base: the shared settings (its ``method``, ``seed``, ``out_dir`` and ``name`` are
            replaced per run).
        methods: default every method.
        seeds: the seeds (model initialisation and data order; equal across methods).
        out: output directory.
        jobs: parallel training processes.
        resume: reuse finished runs in ``out`` (same settings) and resume unfinished ones from
            their checkpoints (runs without a checkpoint start afresh).
        overwrite: replace the runs already in ``out``. Without ``resume`` or ``overwrite``, an
            ``out`` that holds any of the runs is an error (before anything is trained).
        plots: write the PNG plots (needs matplotlib).
        model_overrides: model overrides (as :func:`~nashmoe.train.parse_model_overrides`
            returns) applied to each method that uses them (``gamma`` to the propagating methods
            only, ``top_k`` to smoe only); each run's ``config`` records what it used. An
            override that no method uses is an error. Default: ``base.model``, applied to the
            methods that use it.
        command: the command line, recorded in the outputs.
        log: where progress messages go.
    """
    if resume and not overwrite:
        names = [f"{m}-s{int(s)}" for s in seeds for m in parse_methods(methods)]
        root = Path(out)
        if not root.is_file() and not any(is_existing_run(root / "runs" / n) for n in names):
            raise RunDirError(
                f"--resume: nothing to resume in {out} (none of the runs is under "
                f"{root / 'runs'}); start without --resume"
            )
    out = check_writable_dir(out, option="--out")
    with RunLock(out):  # one comparison per --out at a time (results.json, --overwrite)
        return _compare_locked(
            base,
            methods=methods,
            seeds=seeds,
            out=out,
            jobs=jobs,
            resume=resume,
            overwrite=overwrite,
            plots=plots,
            model_overrides=model_overrides,
            command=command,
            log=log,
        )


def _compare_locked(
    base: TrainConfig,
    *,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] = (0,),
    out: str | os.PathLike[str] = "runs/compare",
    jobs: int = 1,
    resume: bool = False,
    overwrite: bool = False,
    plots: bool = True,
    model_overrides: dict[str, Any] | None = None,
    command: str | None = None,
    log=print,
) -> CompareResult:
    """:func:`compare` under the lock of ``out``."""
    methods = parse_methods(list(methods) if methods is not None else None)
    seeds = [int(s) for s in seeds]
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    if model_overrides is None:  # base.model (valid for base.method), where each method uses it
        overrides = dict(base.model)
        users = check_options_used(overrides, [*methods, base.method])
    else:
        overrides = dict(model_overrides)
        users = check_options_used(overrides, methods)
    users = {k: [m for m in ms if m in methods] for k, ms in users.items()}
    out = check_writable_dir(out, option="--out")
    configs = [
        base.replace(
            method=m,
            model=options_for_method(overrides, m),
            seed=s,
            name=f"{m}-s{s}",
            out_dir=str(out / "runs" / f"{m}-s{s}"),
            progress=base.progress and jobs == 1,
        )
        for s in seeds
        for m in methods
    ]
    if not resume and not overwrite:
        existing = [c.out_dir for c in configs if is_existing_run(c.out_dir)]
        if existing:
            raise RunDirError(
                f"{out} already holds run(s) {', '.join(Path(e).name for e in existing)}; pass "
                "--resume to reuse and continue them or --overwrite to replace them"
            )
    t0 = time.perf_counter()
    git = git_state()  # the code the runs start with (later commits do not change them)
    if jobs == 1:
        _corpus_for(configs[0])  # load (and report a missing file) before the first run
    records: list[dict[str, Any]] = []

    def done(rec: dict[str, Any]) -> None:
        records.append(rec)
        tag = " (reused)" if rec.get("reused") else ""
        if rec.get("diverged"):
            log(
                f"[{len(records)}/{len(configs)}] {rec['method']} seed {rec['seed']}: DIVERGED: "
                f"{rec['diverged']['message']}{tag}"
            )
            return
        log(
            f"[{len(records)}/{len(configs)}] {rec['method']} seed {rec['seed']}: "
            f"validation ppl {rec.get('validation', rec.get('valid'))['ppl']:.3f}, "
            f"test ppl {rec['test']['ppl']:.3f}, "
            f"{rec['timing']['tokens_per_s']:.0f} tok/s{tag}"
        )

    if jobs == 1:
        for cfg in configs:
            done(_run_one(cfg.to_dict(), resume, overwrite))
    else:
        import multiprocessing as mp

        from nashmoe._workers import worker_initializer

        with ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=mp.get_context("spawn"),
            initializer=worker_initializer(),
        ) as pool:
            futures = [pool.submit(_run_one, cfg.to_dict(), resume, overwrite) for cfg in configs]
            for fut in as_completed(futures):
                done(fut.result())
    order = {(c.method, c.seed): i for i, c in enumerate(configs)}
    records.sort(key=lambda r: order[(r["method"], r["seed"])])
    finished = [r for r in records if not r.get("diverged")]
    diverged = [
        {"method": r["method"], "seed": r["seed"], "run_dir": r["run_dir"], **r["diverged"]}
        for r in records
        if r.get("diverged")
    ]
    summary = summarize(finished, methods)
    table = format_table(summary)
    text = verdict(summary, finished) if finished else "No run finished: every run diverged."
    paired = paired_table(finished, methods)
    if diverged:
        text += (
            " Diverged (left out of the table): "
            + "; ".join(
                f"{d['method']} seed {d['seed']} at step {d['step']} (non-finite {d['what']})"
                for d in diverged
            )
            + "."
        )
    wall = time.perf_counter() - t0
    files: dict[str, str] = {}
    if plots and finished:
        files.update(_write_plots(finished, summary, methods, out, paired))
    info = {
        "command": command,
        "methods": methods,
        "seeds": seeds,
        "settings": {
            **{
                k: v
                for k, v in base.to_dict().items()
                if k not in ("method", "seed", "name", "out_dir", "progress")
            },
            "model": overrides,
        },
        "overrides_used_by": users,
        "git": git,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "jobs": jobs,
        "wall_time_s": wall,
    }
    write_json_atomic(
        out / "results.json",
        {
            **info,
            "summary": summary,
            "verdict": text,
            "paired": paired,
            "diverged": diverged,
            "runs": [{k: v for k, v in r.items() if k != "reused"} for r in records],
            "files": files,
        },
    )
    _write_markdown(
        out / "results.md", info, table, text, files, paired, format_bargaining(summary)
    )
    files["results.json"] = str(out / "results.json")
    files["results.md"] = str(out / "results.md")
    return CompareResult(
        runs=records,
        summary=summary,
        table=table,
        verdict=text,
        out=out,
        files=files,
        diverged=diverged,
    )


def _write_plots(
    records: list[dict[str, Any]],
    summary: list[dict[str, Any]],
    methods: list[str],
    out: Path,
    paired: list[dict[str, Any]] | None = None,
) -> dict[str, str]:
    from nashmoe.train.plots import (
        plot_alpha,
        plot_bargaining,
        plot_efficiency,
        plot_loss_curves,
        plot_paired,
        plot_similarity,
    )

    metrics: dict[str, list] = {m: [] for m in methods}
    similarity: dict[str, list] = {m: [] for m in methods}
    for r in records:
        path = Path(r["run_dir"]) / "metrics.csv"
        if path.is_file():
            metrics[r["method"]].append(read_metrics(path))
        if r.get("similarity"):
            similarity[r["method"]].append(r["similarity"])
    files = {"loss_curves.png": str(plot_loss_curves(metrics, summary, out / "loss_curves.png"))}
    first = {m: runs[0] for m, runs in metrics.items() if runs}
    alpha = plot_alpha(first, out / "alpha.png")
    if alpha is not None:
        files["alpha.png"] = str(alpha)
    bargaining = plot_bargaining(first, out / "bargaining.png")
    if bargaining is not None:
        files["bargaining.png"] = str(bargaining)
    if paired:
        pp = plot_paired(paired, out / "paired.png")
        if pp is not None:
            files["paired.png"] = str(pp)
    eff = plot_efficiency(summary, out / "efficiency.png")
    if eff is not None:
        files["efficiency.png"] = str(eff)
    sim = plot_similarity(similarity, out / "similarity.png")
    if sim is not None:
        files["similarity.png"] = str(sim)
        files["similarity_matrices.png"] = str(sim.with_name(sim.stem + "_matrices.png"))
    return files


def _write_markdown(
    path: Path,
    info: dict[str, Any],
    table: str,
    text: str,
    files: dict[str, str],
    paired: list[dict[str, Any]] | None = None,
    bargaining: str = "",
) -> None:
    s = info["settings"]
    lines = [
        "# nashmoe compare",
        "",
        f"Command: `{info['command']}`" if info["command"] else "",
        "",
        f"Corpus `{s['corpus']}` (tokenizer {s['tokenizer'] or 'default'}), preset "
        f"`{s['preset']}`{' with ' + json.dumps(s['model']) if s['model'] else ''}, "
        f"{s['steps']} steps of "
        f"{s['batch_size']} sequences, AdamW lr {s['lr']} (warm-up {s['warmup']}, cosine to "
        f"{s['min_lr']}), seeds {', '.join(map(str, info['seeds']))}; git "
        f"{(info['git']['commit'] or 'unknown')[:12]}"
        f"{' (with uncommitted changes in src/)' if info['git']['dirty'] else ''}; "
        f"wall time {info['wall_time_s'] / 60:.1f} min "
        f"({info['jobs']} job(s)).",
        "",
        "Perplexities are of the best-on-validation weights (test evaluated once); mean ± sample "
        "std over seeds. Step time is relative to dense (mean over timed steps). Nash residual: "
        "largest relative residual of any logged solve; fallbacks: solves that fell back to "
        "uniform weights (degenerate or infeasible) / solves that hit the iteration budget, of "
        "all solves. ‖∂L/∂E_m‖: the last logged gradient norm of the first layer's base expert. "
        "Expert cos sim: mean off-diagonal cosine similarity between expert outputs, averaged "
        "over MoE layers.",
        "",
        table,
        "",
        text,
        "",
    ]
    partial = {
        k: ms for k, ms in (info.get("overrides_used_by") or {}).items() if ms != info["methods"]
    }
    if partial:
        lines += [
            "Options applied only to the methods that use them: "
            + "; ".join(f"`{k}` to {', '.join(ms)}" for k, ms in partial.items())
            + ".",
            "",
        ]
    if paired:
        lines += [
            "Paired test-perplexity differences (same seed across methods; negative: the method "
            "is better than the reference; 95% t-interval, ddof = 1):",
            "",
            format_paired(paired),
            "",
        ]
    if bargaining:
        lines += [
            "What the bargaining changes, per propagating layer (mean over seeds of the mean "
            "over the last quarter of the logged intervals): α spread = max_i |N α_i / Σ_j α_j "
            "− 1| (0: uniform weights, EP-CAMEx's); cos(Σατ, Στ): the Nash direction against "
            "the plain sum (1: the same direction); step / ‖E_m‖: the propagation step's norm "
            "relative to the base expert; mean cos(τ_i, τ_j): 0 for orthogonal domain vectors.",
            "",
            bargaining,
            "",
        ]
    if files:
        lines += ["Plots: " + ", ".join(f"`{Path(p).name}`" for p in files.values()), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
