"""``nashmoe ablate``: what the bargaining of NAMEx contributes, measured by paired ablations.

The NAMEx paper (Nguyen et al., "Expert Merging in Sparse Mixture of Experts with Nash
Bargaining", ICLR 2026, arXiv 2510.16138) propagates the base expert along Σ_i α_i τ_i, the Nash
bargaining solution among the experts' domain vectors. Its reviewers asked what the bargaining
itself contributes. A comparison of NAMEx with EP-CAMEx changes two things at once: the
direction, and the step length (‖Σ α_i τ_i‖ = √N whatever the scale of the τ_i, against
≈ ‖τ‖/√N for EP-CAMEx's mean). This module trains the same model, data and seeds under a list of
named **settings** (a method plus option overrides) and reports, per setting, mean ± sample std
over seeds and the paired differences against a reference setting (the same seed for both:
the same initialisation and data order).

The groups (:data:`GROUPS`; reference first):

1. ``step-norm``: ``namex-full`` (step_norm="nash", the reference), ``namex-full-mean``
   (step_norm="mean": Nash direction, the mean's step length), ``ep-camex`` and
   ``ep-camex-nash-step`` (EP-CAMEx's mean direction with NAMEx's step length). All four take a
   step at every layer (Δl = 1) with that layer's own τ_i; the paper's ``namex`` (Δl = L) would
   not do: its later layers reuse the first layer's α on their own τ_i, so their step norm is
   not √N (measured: 9.5 at layer 1 against 2.0 for namex-full and ep-camex-nash-step). The
   pairs: *step length at a fixed direction*: namex-full − namex-full-mean (Nash direction),
   ep-camex-nash-step − ep-camex (mean direction); *direction at a fixed step length*:
   namex-full − ep-camex-nash-step (√N), namex-full-mean − ep-camex (the mean's). The table
   reports every setting against namex-full; the other two differences follow from the
   per-seed records in ``results.json`` (or ``--setting`` / ``--reference``). The rescaling:
   EP-CAMEx with ``step_norm="nash"`` propagates E_m + γ √N m/‖m‖ with m = (1/N) Σ_i M_i(τ_i),
   i.e. γ is rescaled by √N/‖m‖ at every step, so that its step has exactly the norm γ√N of
   NAMEx's (without curvature; with curvature NAMEx bargains on the uncurved τ_i, and its step
   is still γ√N). A constant rescaling of γ could only match the step length at one point of
   training.
2. ``budget``: ``namex-full`` with ``nash_max_iter`` 1, 2, 5 and 20 (the paper's budget, the
   reference); the residual, the perplexity and the step time are reported (the solver warm
   starts from the previous step's α, so a small budget still tracks α over training).
3. ``nash-every``: Δl = 1 (``namex-full``), 2 (``namex-dl2``) and L (``namex``, the
   reference: one solve at the first MoE layer). The last MoE layer skips its step, so Δl = 2
   differs from Δl = L only with at least four MoE layers (``--set n_layer=6`` with the small
   preset, or the medium preset); a setting whose Δl (its own or a ``--set nash_every``)
   equals Δl = L is noted in the log, ``results.json`` (``notes``) and ``results.md``.
4. ``momentum``: ``namex-full-mom`` with φ ∈ {0, ±π/12, ±π/6} and r ∈ {0.3, 0.8}, against
   ``namex-full`` (no momentum, the reference). φ and −φ train bit-identical models (only
   Re μ enters the step; docs/design.md), so the −φ settings only confirm the +φ ones; a
   custom ``--setting`` list can leave them out.
5. ``bargain-on``: bargaining on τ_i (the paper, the reference) against curved τ_i, with
   ``curvature_rank=1`` (with the default rank 0 the two coincide).
6. ``merge-weights``: the merge line weighted by the router scores (the paper, reference), by
   the Nash weights, or by their renormalised product (``MoEConfig.merge_weights``).
7. ``compute``: SMoE top-1 (the active expert parameters of the merging methods, which apply
   one merged expert per unit) and top-2, SMEAR, CAMEx, EP-CAMEx against NAMEx at equal steps;
   and the same methods plus NAMEx-Full, NAMEx-Mom and NAMEx-Full-Mom (``-time``) trained for
   the same wall-clock time as NAMEx: each one's steps are ``budget / step time``, with its
   step time measured by a short probe (``probe_steps`` steps, one run at a time, before the
   trainings; the step that samples the bargaining diagnostics is not timed) and ``budget``
   the probed step time × ``steps`` of its group's first setting (``namex``; ``reference``
   does not change it), or ``seconds``. The warm-up is scaled with the steps and the cosine
   schedule completes, so every time-matched run is an ordinary run of fewer or more steps.

Outputs in ``out``: ``runs/<setting>-s<seed>/`` (each a :func:`~nashmoe.train.train` run with
its ``record.json``), ``calibration.json`` (the time-matched steps, reused on resume),
``results.json`` (every run: setting, seed, validation and test perplexity, wall time, steps,
Nash residual, bargaining diagnostics; the per-setting summary; the paired differences) and
``results.md``; ``bargaining.png`` with matplotlib. ``resume`` reuses every finished run (same
settings) and resumes the others from their checkpoints, so an interrupted ablation never
re-trains a finished (setting, seed). Runtime options (``--jobs``, ``--threads``, progress,
device, paths, logging back-ends: the trainer's resumable changes) may differ on resume: they
re-train nothing and re-probe nothing. A run's ``wall_time_s`` adds, for a resumed run, its
earlier processes' wall time up to the checkpoint it resumed from.
"""

from __future__ import annotations

import importlib
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nashmoe._stats import paired_by_seed
from nashmoe._workers import run_in_pool
from nashmoe.data import Corpus
from nashmoe.models.gpt import GPTConfig
from nashmoe.moe import METHODS
from nashmoe.train.checkpoint import CheckpointError, read_json, write_json_atomic
from nashmoe.train.config import TrainConfig, options_for_method, parse_model_overrides
from nashmoe.train.loggers import read_metrics
from nashmoe.train.report import format_bargaining, mean_std, summarize_bargaining
from nashmoe.train.rundir import RunDirError, RunLock, check_writable_dir, is_existing_run
from nashmoe.train.trainer import Trainer, git_state, numeric_settings

# the module (the package ``nashmoe.train`` exports the function ``compare`` under that name);
# its ``_run_one`` and ``_corpus_for`` are shared with ``nashmoe compare``
_compare = importlib.import_module("nashmoe.train.compare")

__all__ = [
    "GROUPS",
    "AblationResult",
    "Setting",
    "ablate",
    "group_settings",
    "measure_step_time",
    "paired_stats",
    "paired_table",
    "parse_setting",
    "summarize_settings",
]


@dataclass(frozen=True)
class Setting:
    """One arm of an ablation.

    Attributes:
        name: a unique name (also the run directories' prefix): letters, digits, ``.+-_``.
        method: one of :data:`nashmoe.moe.METHODS`.
        options: model overrides as :func:`~nashmoe.train.parse_model_overrides` returns them
            (GPTConfig fields, MoE options under ``moe_options``); they win over the shared
            ``--set`` options.
        time_matched: train for the ablation's time budget instead of its steps.
        group: the group it came from (``"custom"`` for ``--setting``).
    """

    name: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    time_matched: bool = False
    group: str = "custom"

    def __post_init__(self) -> None:
        ok = self.name and all(c.isalnum() or c in ".+-_" for c in self.name)
        if not ok:
            raise ValueError(
                f"setting name {self.name!r} must be non-empty and use only letters, digits "
                "and . + - _"
            )
        if self.method not in METHODS:
            raise ValueError(
                f"setting {self.name!r}: unknown method {self.method!r}; choose from "
                f"{', '.join(METHODS)}"
            )

    def describe(self) -> str:
        """``method key=value ...`` (and ``[time-matched]``)."""
        opts = {k: v for k, v in self.options.items() if k != "moe_options"}
        opts.update(self.options.get("moe_options") or {})
        text = " ".join([self.method, *(f"{k}={v}" for k, v in opts.items())])
        return text + (" [time-matched]" if self.time_matched else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": self.method,
            "options": self.options,
            "time_matched": self.time_matched,
            "group": self.group,
        }


def parse_setting(text: str) -> Setting:
    """A setting from ``NAME:method,key=value,...`` (keys as ``--set``; ``time_matched=true``
    trains it for the time budget).

    Raises:
        ValueError: a malformed text, an unknown method or option, a value of the wrong type.
    """
    name, sep, rest = text.partition(":")
    if not sep or not rest.strip():
        raise ValueError(f"--setting {text!r} is not of the form NAME:method,key=value,...")
    method, *pairs = [p.strip() for p in rest.split(",")]
    time_matched = False
    kept = []
    for pair in pairs:
        if not pair:
            continue
        key, _, value = pair.partition("=")
        if key.strip() == "time_matched":
            if value.strip().lower() not in ("true", "false"):
                raise ValueError(f"--setting {name}: time_matched must be true or false")
            time_matched = value.strip().lower() == "true"
        else:
            kept.append(pair)
    try:
        options = parse_model_overrides(kept)
    except ValueError as err:
        raise ValueError(f"--setting {name}: {err}") from None
    return Setting(name.strip(), method, options, time_matched=time_matched)


def _moe(**options: Any) -> dict[str, Any]:
    return {"moe_options": options}


def _momentum_settings() -> list[Setting]:
    out = [Setting("namex-full", "namex-full", group="momentum")]
    for r in (0.3, 0.8):
        for k in (0, 1, -1, 2, -2):  # φ = k π/12: 0, ±π/12, ±π/6 (the paper's values)
            phi, deg = k * math.pi / 12, 15 * k
            out.append(
                Setting(
                    f"namex-full-mom-r{r}-phi{deg:+d}" if deg else f"namex-full-mom-r{r}-phi0",
                    "namex-full-mom",
                    _moe(momentum=r, momentum_angle=phi),
                    group="momentum",
                )
            )
    return out


def _compute_settings() -> list[Setting]:
    arms = [
        ("smoe-top1", "smoe", {"top_k": 1}),
        ("smoe", "smoe", {}),
        ("smear", "smear", {}),
        ("camex", "camex", {}),
        ("ep-camex", "ep-camex", {}),
    ]
    # the other NAMEx variants at the same wall-clock time as NAMEx (equal steps: other groups)
    timed = [*arms, *((m, m, {}) for m in ("namex-full", "namex-mom", "namex-full-mom"))]
    out = [Setting("namex", "namex", group="compute")]
    out += [Setting(n, m, o, group="compute") for n, m, o in arms]
    out += [Setting(f"{n}-time", m, o, time_matched=True, group="compute") for n, m, o in timed]
    return out


def _group(name: str, arms: list[tuple[str, str, dict[str, Any]]]) -> list[Setting]:
    return [Setting(n, m, o, group=name) for n, m, o in arms]


GROUPS: dict[str, Callable[[], list[Setting]]] = {
    "step-norm": lambda: _group(
        "step-norm",
        [  # every layer steps (Δl = 1) in all four: see the module docstring
            ("namex-full", "namex-full", {}),
            ("namex-full-mean", "namex-full", _moe(step_norm="mean")),
            ("ep-camex", "ep-camex", {}),
            ("ep-camex-nash-step", "ep-camex", _moe(step_norm="nash")),
        ],
    ),
    "budget": lambda: _group(
        "budget",
        [("namex-full", "namex-full", {})]
        + [(f"namex-full-it{k}", "namex-full", _moe(nash_max_iter=k)) for k in (1, 2, 5)],
    ),
    "nash-every": lambda: _group(
        "nash-every",
        [
            ("namex", "namex", {}),
            ("namex-full", "namex-full", {}),
            ("namex-dl2", "namex", _moe(nash_every=2)),
        ],
    ),
    "momentum": _momentum_settings,
    "bargain-on": lambda: _group(
        "bargain-on",
        [
            ("namex-full-curv1", "namex-full", _moe(curvature_rank=1)),
            (
                "namex-full-curv1-curved",
                "namex-full",
                _moe(curvature_rank=1, bargain_on="curved_tau"),
            ),
        ],
    ),
    "merge-weights": lambda: _group(
        "merge-weights",
        [
            ("namex", "namex", {}),
            ("namex-merge-nash", "namex", _moe(merge_weights="nash")),
            ("namex-merge-product", "namex", _moe(merge_weights="product")),
        ],
    ),
    "compute": _compute_settings,
}
"""Group name -> its settings, the reference first (see the module docstring)."""


def group_settings(names: Sequence[str]) -> list[Setting]:
    """The settings of the groups ``names`` (``"all"``: every group), in order."""
    if "all" in names:
        names = list(GROUPS)
    unknown = [n for n in names if n not in GROUPS]
    if unknown:
        raise ValueError(
            f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)} or all"
        )
    return [s for n in dict.fromkeys(names) for s in GROUPS[n]()]


def _nested_options(setting: Setting) -> dict[str, Any]:
    return {
        **{k: v for k, v in setting.options.items() if k != "moe_options"},
        **(setting.options.get("moe_options") or {}),
    }


def _merge_settings(
    settings: Sequence[Setting],
) -> tuple[list[Setting], dict[str, list[str]], dict[str, str]]:
    """Settings with the same name shared by several groups are trained once; the same name
    for different definitions is an error. Returns the unique settings, ``{name: groups}`` and
    each group's reference, ``{group: its first setting}`` (in the order given)."""
    unique: dict[str, Setting] = {}
    groups: dict[str, list[str]] = {}
    firsts: dict[str, str] = {}
    for s in settings:
        firsts.setdefault(s.group, s.name)
        prev = unique.get(s.name)
        if prev is None:
            unique[s.name] = s
        elif (prev.method, _nested_options(prev), prev.time_matched) != (
            s.method,
            _nested_options(s),
            s.time_matched,
        ):
            raise ValueError(
                f"two different settings are named {s.name!r}: {prev.describe()} and {s.describe()}"
            )
        if s.group not in groups.setdefault(s.name, []):
            groups[s.name].append(s.group)
    return list(unique.values()), groups, firsts


def _merged_model(shared: dict[str, Any], setting: Setting) -> dict[str, Any]:
    """The shared overrides (those ``setting.method`` uses), then the setting's own."""
    model = options_for_method(shared, setting.method)
    own = setting.options
    moe = {**(model.get("moe_options") or {}), **(own.get("moe_options") or {})}
    out = {**model, **{k: v for k, v in own.items() if k != "moe_options"}}
    out.pop("moe_options", None)
    if moe:
        out["moe_options"] = moe
    return out


# --------------------------------------------------------------------------- statistics
paired_stats = paired_by_seed
"""``values`` minus ``reference`` paired by seed (:func:`nashmoe._stats.paired_by_seed`)."""


_METRICS: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "test_ppl": lambda r: r["test"]["ppl"],
    "validation_ppl": lambda r: (r.get("validation") or r.get("valid"))["ppl"],
    "step_time_s": lambda r: r["timing"]["step_time_s"],
    "wall_time_s": lambda r: r.get("wall_time_s"),
}
"""What the paired differences and the summary report, from a run record."""


def _by_seed(runs: Sequence[dict[str, Any]], setting: str, metric: str) -> dict[int, float]:
    out = {}
    for r in runs:
        if r["setting"] == setting and not r.get("diverged"):
            v = _METRICS[metric](r)
            if v is not None:
                out[int(r["seed"])] = float(v)
    return out


def paired_table(
    runs: Sequence[dict[str, Any]],
    settings: Sequence[str],
    reference: str,
    metrics: Sequence[str] = ("test_ppl", "validation_ppl", "step_time_s"),
) -> list[dict[str, Any]]:
    """Every setting but ``reference`` minus ``reference``, paired by seed, per metric
    (:func:`paired_stats`): ``[{"setting", "reference", "metric", ...}]``."""
    out = []
    for name in settings:
        if name == reference:
            continue
        for metric in metrics:
            entry = paired_stats(_by_seed(runs, name, metric), _by_seed(runs, reference, metric))
            if entry is not None:
                out.append({"setting": name, "reference": reference, "metric": metric, **entry})
    return out


def summarize_settings(
    runs: Sequence[dict[str, Any]], settings: Sequence[Setting]
) -> list[dict[str, Any]]:
    """One row per setting with finished runs: mean and sample std over seeds of the
    validation and test perplexity, step time and wall time; the steps trained; the largest
    Nash residual; the bargaining diagnostics (mean over seeds, per layer)."""
    rows = []
    for s in settings:
        rs = sorted(
            (r for r in runs if r["setting"] == s.name and not r.get("diverged")),
            key=lambda r: r["seed"],
        )
        if not rs:
            continue
        residuals = [
            r["nash"]["residual_max"]
            for r in rs
            if (r.get("nash") or {}).get("residual_max") is not None
        ]
        row: dict[str, Any] = {
            "setting": s.name,
            "description": s.describe(),
            "seeds": [r["seed"] for r in rs],
            "steps": sorted({int(r["steps"]) for r in rs}),
            "nash_residual_max": max(residuals) if residuals else None,
            "bargaining": summarize_bargaining(rs),
        }
        for metric, get in _METRICS.items():
            vals = [get(r) for r in rs]
            row[metric] = mean_std([v for v in vals if v is not None])
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- time matching
def measure_step_time(config: TrainConfig, corpus: Corpus, *, steps: int = 10) -> float:
    """Mean seconds per optimiser step of ``config`` over ``steps`` steps (after one untimed
    step), through the trainer's own step in a temporary directory (no evaluation). The probe's
    one logged step, its last, samples the bargaining diagnostics and is not timed (as in
    training, where those steps are left out of ``step_time_s``)."""
    from nashmoe.train.distributed import init_distributed, shutdown_distributed

    with tempfile.TemporaryDirectory(prefix="nashmoe-probe-") as tmp:
        cfg = config.replace(
            steps=steps + 2,  # untimed: the first (set-up) and the last (diagnostics sampled)
            warmup=1,
            out_dir=tmp,
            name="probe",
            log_interval=steps + 2,
            eval_interval=None,
            ckpt_interval=None,
            tensorboard="off",
            progress=False,
        )
        trainer = Trainer(cfg, corpus=corpus)
        trainer.ctx = init_distributed(cfg.device, cfg.distributed)
        try:
            trainer.setup()
            for step in range(cfg.steps):
                trainer.train_step(step)
            trainer.logger.close()
        finally:
            shutdown_distributed(trainer.ctx)
    return trainer.timing["train_time_s"] / max(trainer.timing["steps_timed"], 1)


def _time_matched_steps(
    configs: dict[str, TrainConfig],
    settings: Sequence[Setting],
    firsts: dict[str, str],
    *,
    steps: int,
    seconds: float | None,
    probe_steps: int,
    corpus: Callable[[TrainConfig], Corpus],
    path: Path,
    log: Callable[[str], None],
) -> dict[str, dict[str, float]]:
    """``{setting: {"step_time_s", "budget_s", "budget_from", "steps"}}`` for the
    time-matched settings (and ``{"step_time_s", "budget_s"}`` for the settings that set a
    budget), from ``path`` when it holds them for the same budget definition and
    configurations, else measured. A time-matched setting's budget is ``seconds``, or the
    probed step time × ``steps`` of its own group's first setting (``firsts``), whatever the
    reference of the comparisons."""
    timed = [s for s in settings if s.time_matched]
    if not timed:
        return {}
    budget_from = {s.name: None if seconds is not None else firsts[s.group] for s in timed}
    probed = list(dict.fromkeys([s.name for s in timed] + [r for r in budget_from.values() if r]))
    key = {
        "seconds": seconds,
        "steps": steps,
        "budget_from": budget_from,
        "probe": probe_steps,
        # a changed shape re-probes; runtime options (threads, progress, ...) do not
        "configs": {n: numeric_settings(configs[n]) for n in probed},
    }
    cached: dict[str, Any] = {}
    if path.is_file():
        try:
            data = read_json(path)
        except CheckpointError:
            data = None
        if isinstance(data, dict) and data.get("key") == key:
            cached = data.get("settings") or {}
    step_times = {n: v["step_time_s"] for n, v in cached.items()}

    def probe(name: str) -> float:
        if name not in step_times:
            cfg = configs[name]
            step_times[name] = measure_step_time(cfg, corpus(cfg), steps=probe_steps)
            log(f"probe: {name} {1000 * step_times[name]:.1f} ms/step")
        return step_times[name]

    out: dict[str, dict[str, Any]] = {}
    for s in timed:
        ref = budget_from[s.name]
        budget = seconds if ref is None else probe(ref) * steps
        n = max(1, round(budget / probe(s.name)))
        out[s.name] = {
            "step_time_s": step_times[s.name],
            "budget_s": budget,
            "budget_from": ref or "--seconds",
            "steps": n,
        }
    for ref in dict.fromkeys(r for r in budget_from.values() if r):
        out.setdefault(ref, {"step_time_s": step_times[ref], "budget_s": step_times[ref] * steps})
    write_json_atomic(path, {"key": key, "settings": out})
    return out


# --------------------------------------------------------------------------- the runner
@dataclass
class AblationResult:
    """Outcome of :func:`ablate`."""

    runs: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    paired: list[dict[str, Any]]
    table: str
    out: Path
    files: dict[str, str] = field(default_factory=dict)
    diverged: list[dict[str, Any]] = field(default_factory=list)


def ablate(
    base: TrainConfig,
    settings: Sequence[Setting],
    *,
    reference: str | None = None,
    model_overrides: dict[str, Any] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    out: str | os.PathLike[str] = "runs/ablate",
    jobs: int = 1,
    resume: bool = False,
    overwrite: bool = False,
    seconds: float | None = None,
    probe_steps: int = 10,
    plots: bool = True,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> AblationResult:
    """Train every setting × seed with the shared settings of ``base`` and write the ablation.

    Args:
        base: the shared settings. Its ``method``, ``model``, ``seed``, ``name`` and
            ``out_dir`` are replaced per run (``steps`` too for time-matched settings).
        settings: the arms (:func:`group_settings`, :func:`parse_setting`); settings of the
            same name in several groups are trained once.
        reference: the setting every other is compared with; default: the first group's
            reference (per group: each group's first setting, unless ``reference`` is given).
        model_overrides: shared model overrides (as :func:`~nashmoe.train.parse_model_overrides`
            returns), applied to every setting whose method uses them (a setting's own options
            win); one that no setting uses is an error. Default: ``base.model``.
        seeds: the same seeds for every setting.
        out: output directory.
        jobs: parallel training processes (pool workers end with this process).
        resume: reuse finished runs (same settings) and resume unfinished ones.
        overwrite: replace the runs already in ``out``.
        seconds: the time budget of time-matched settings (default: the measured step time ×
            ``base.steps`` of each one's group's first setting).
        probe_steps: timed steps of the step-time probe of time-matched settings.
        plots: write ``bargaining.png`` (needs matplotlib).
        command: the command line, recorded in the outputs.
        log: where progress messages go.

    Raises:
        ValueError: no settings, an unknown reference, settings no method can take, bad seeds.
        RunDirError: ``out`` holds runs without ``resume``/``overwrite``, or nothing to resume.
    """
    settings, groups, firsts = _merge_settings(settings)
    if not settings:
        raise ValueError("no settings to train: give --group or --setting")
    names = [s.name for s in settings]
    explicit = reference is not None
    if reference is None:
        reference = settings[0].name
    if reference not in names:
        raise ValueError(f"reference {reference!r} is not a setting; settings: {', '.join(names)}")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and non-empty, got {seeds}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be positive, got {seconds}")
    if probe_steps < 1:
        raise ValueError(f"probe_steps must be >= 1, got {probe_steps}")
    root = Path(out)
    run_names = [f"{n}-s{s}" for s in seeds for n in names]
    if resume and not any(is_existing_run(root / "runs" / n) for n in run_names):
        raise RunDirError(
            f"--resume: nothing to resume in {out} (none of the runs is under {root / 'runs'}); "
            "start without --resume"
        )
    shared = dict(base.model if model_overrides is None else model_overrides)
    _compare.check_options_used(shared, list(dict.fromkeys(s.method for s in settings)))
    # Every setting's configuration is checked before anything runs.
    configs = {
        s.name: base.replace(
            method=s.method,
            model=_merged_model(shared, s),
            seed=seeds[0],
            name=s.name,
            out_dir=str(root / "runs" / s.name),
            progress=base.progress and jobs == 1,
        )
        for s in settings
    }
    notes = _nash_every_notes(settings, configs)
    for note in notes:
        log(f"note: {note}")
    out = check_writable_dir(out, option="--out")
    with RunLock(out):
        if not resume and not overwrite:
            existing = [n for n in run_names if is_existing_run(out / "runs" / n)]
            if existing:
                raise RunDirError(
                    f"{out} already holds run(s) {', '.join(existing)}; pass --resume to reuse "
                    "and continue them or --overwrite to replace them"
                )
        if overwrite and (out / "calibration.json").is_file():
            (out / "calibration.json").unlink()
        return _ablate_locked(
            base,
            shared,
            settings,
            groups,
            firsts,
            configs,
            reference=reference,
            explicit=explicit,
            seeds=seeds,
            out=out,
            jobs=jobs,
            resume=resume,
            overwrite=overwrite,
            seconds=seconds,
            probe_steps=probe_steps,
            plots=plots,
            command=command,
            notes=notes,
            log=log,
        )


def _nash_every_notes(settings: Sequence[Setting], configs: dict[str, TrainConfig]) -> list[str]:
    """A note per setting whose Δl = ``nash_every`` > 1 (its own or a shared ``--set``) equals
    Δl = L: with L MoE layers the last one skips its step, so Δl ≥ L − 1 solves only at the
    first layer."""
    notes = []
    for s in settings:
        mcfg = _model_config(configs[s.name])
        first = next((i for i in range(mcfg.n_layer) if mcfg.is_moe_block(i)), None)
        if first is None:
            continue
        every = mcfg.moe_config(first).nash_every
        layers = model_layers(configs[s.name])
        if every is not None and every > 1 and layers <= every + 1:
            notes.append(
                f"`{s.name}` (nash_every={every}) equals nash_every=L (one solve at the first "
                f"MoE layer) with {layers} MoE layers: the last one skips its step; Δl = "
                f"{every} differs from Δl = L from {every + 2} MoE layers on"
            )
    return notes


def _ablate_locked(
    base: TrainConfig,
    shared: dict[str, Any],
    settings: list[Setting],
    groups: dict[str, list[str]],
    firsts: dict[str, str],
    configs: dict[str, TrainConfig],
    *,
    reference: str,
    explicit: bool,
    seeds: list[int],
    out: Path,
    jobs: int,
    resume: bool,
    overwrite: bool,
    seconds: float | None,
    probe_steps: int,
    plots: bool,
    command: str | None,
    notes: list[str],
    log: Callable[[str], None],
) -> AblationResult:
    t0 = time.perf_counter()
    git = git_state()
    calibration = _time_matched_steps(
        configs,
        settings,
        firsts,
        steps=base.steps,
        seconds=seconds,
        probe_steps=probe_steps,
        corpus=_compare._corpus_for,
        path=out / "calibration.json",
        log=log,
    )
    per_setting: dict[str, TrainConfig] = {}
    for s in settings:
        cfg = configs[s.name]
        if s.time_matched:
            n = int(calibration[s.name]["steps"])
            warmup = min(n, max(0, round(base.warmup * n / base.steps)))
            cfg = cfg.replace(steps=n, warmup=warmup)
        per_setting[s.name] = cfg
    # seed-major: every setting of seed 0 first, so paired differences exist early
    runs_cfg: list[tuple[str, TrainConfig]] = []
    for seed in seeds:
        for s in settings:
            cfg = per_setting[s.name]
            runs_cfg.append(
                (
                    s.name,
                    cfg.replace(
                        seed=seed,
                        name=f"{s.name}-s{seed}",
                        out_dir=str(out / "runs" / f"{s.name}-s{seed}"),
                    ),
                )
            )
    records: list[dict[str, Any]] = []

    def done(name: str, rec: dict[str, Any]) -> None:
        rec = {**rec, "setting": name}
        records.append(rec)
        tag = " (reused)" if rec.get("reused") else ""
        head = f"[{len(records)}/{len(runs_cfg)}] {name} seed {rec['seed']}"
        if rec.get("diverged"):
            log(f"{head}: DIVERGED: {rec['diverged']['message']}{tag}")
        else:
            log(
                f"{head}: validation ppl {_METRICS['validation_ppl'](rec):.3f}, test ppl "
                f"{rec['test']['ppl']:.3f}, {rec['steps']} steps{tag}"
            )

    if jobs == 1:
        for name, cfg in runs_cfg:
            done(name, _compare._run_one(cfg.to_dict(), resume, overwrite))
    else:
        # A failed run (or Ctrl-C) cancels the queued runs; the runs that finished have their
        # record.json (written by each worker), which --resume reuses.
        tasks = [(name, (cfg.to_dict(), resume, overwrite)) for name, cfg in runs_cfg]
        try:
            run_in_pool(_pool_task, tasks, jobs=jobs, done=done)
        except BaseException:
            log(
                f"stopped after {len(records)} of {len(runs_cfg)} runs (a run failed or the "
                f"ablation was interrupted): the queued runs were cancelled; the finished ones "
                f"are in {out / 'runs'} and --resume reuses them"
            )
            raise
    order = {(n, c.seed): i for i, (n, c) in enumerate(runs_cfg)}
    records.sort(key=lambda r: order[(r["setting"], r["seed"])])
    for r in records:  # steps trained (diverged runs: the configured steps)
        r.setdefault("steps", r["config"]["steps"])
    finished = [r for r in records if not r.get("diverged")]
    diverged = [
        {"setting": r["setting"], "seed": r["seed"], "run_dir": r["run_dir"], **r["diverged"]}
        for r in records
        if r.get("diverged")
    ]
    summary = summarize_settings(finished, settings)
    references = _group_references(settings, groups, firsts, reference, explicit)
    paired = [
        entry
        for ref, members in references.items()
        for entry in paired_table(finished, members, ref)
    ]
    table = format_summary(summary, paired, references)
    files: dict[str, str] = {}
    if plots and finished:
        from nashmoe.train.plots import plot_bargaining

        first: dict[str, dict[str, list]] = {}
        for r in finished:
            path = Path(r["run_dir"]) / "metrics.csv"
            if r["setting"] not in first and path.is_file():
                first[r["setting"]] = read_metrics(path)
        png = plot_bargaining(first, out / "bargaining.png")
        if png is not None:
            files["bargaining.png"] = str(png)
    info = {
        "command": command,
        "reference": reference,
        "references": references,
        "seeds": seeds,
        "settings": [
            {**s.to_dict(), "groups": groups[s.name], "description": s.describe()} for s in settings
        ],
        "shared": {
            **{
                k: v
                for k, v in base.to_dict().items()
                if k not in ("method", "seed", "name", "out_dir", "progress")
            },
            "model": shared,
        },
        "calibration": calibration,
        "notes": notes,
        "git": git,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "jobs": jobs,
        "wall_time_s": time.perf_counter() - t0,
    }
    write_json_atomic(
        out / "results.json",
        {
            **info,
            "summary": summary,
            "paired": paired,
            "diverged": diverged,
            "runs": [_run_entry(r) for r in records],
            "files": files,
        },
    )
    _write_markdown(out / "results.md", info, table, summary, diverged, files)
    files["results.json"] = str(out / "results.json")
    files["results.md"] = str(out / "results.md")
    return AblationResult(
        runs=records,
        summary=summary,
        paired=paired,
        table=table,
        out=out,
        files=files,
        diverged=diverged,
    )


def _pool_task(task: tuple[dict[str, Any], bool, bool], report: Any) -> dict[str, Any]:
    """One run in a pool worker (:func:`nashmoe._workers.run_in_pool`)."""
    return _compare._run_one(*task)


def _group_references(
    settings: Sequence[Setting],
    groups: dict[str, list[str]],
    firsts: dict[str, str],
    reference: str,
    explicit: bool,
) -> dict[str, list[str]]:
    """``{reference: [settings compared with it]}``: each group's first setting (``firsts``)
    for its members (``reference`` for custom settings), unless the reference was given
    explicitly or there is one group (then every setting against ``reference``)."""
    if explicit or len(firsts) == 1:
        return {reference: [s.name for s in settings]}
    out: dict[str, list[str]] = {}
    for g, first in firsts.items():
        ref = reference if g == "custom" else first
        members = out.setdefault(ref, [])
        if ref not in members:
            members.append(ref)
        for s in settings:
            if g in groups[s.name] and s.name not in members:
                members.append(s.name)
    return out


def _run_entry(r: dict[str, Any]) -> dict[str, Any]:
    """A run of ``results.json``: the record, without the reuse marker."""
    return {k: v for k, v in r.items() if k != "reused"}


def _pm(ms: tuple[float, float | None], digits: int = 2, scale: float = 1.0) -> str:
    m, s = ms
    if m != m:
        return "—"
    if s is None:
        return f"{m * scale:.{digits}f}"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def _diff(entry: dict[str, Any] | None, scale: float = 1.0) -> str:
    if entry is None:
        return "—"
    text = f"{entry['mean'] * scale:+.3g}"
    if entry["status"] == "undefined":
        return text + " (undefined)"
    if entry["ci95"] is not None:
        lo, hi = entry["ci95"]
        text += f" ± {entry['std'] * scale:.2g} [{lo * scale:+.3g}, {hi * scale:+.3g}]"
        if entry["status"] == "within noise":
            text += " (noise)"
    return text


def format_summary(
    summary: Sequence[dict[str, Any]],
    paired: Sequence[dict[str, Any]],
    references: dict[str, list[str]],
) -> str:
    """Markdown tables, one per reference: each setting's perplexities and times (mean ± sample
    std over seeds) and its paired differences with the reference (mean ± std [95 %
    t-interval]; per-seed differences in ``results.json``)."""
    rows = {r["setting"]: r for r in summary}
    pairs = {(p["setting"], p["reference"], p["metric"]): p for p in paired}
    blocks = []
    for ref, members in references.items():
        lines = [
            f"Reference: `{ref}`.",
            "",
            "| setting | steps | validation ppl | test ppl | Δ test ppl vs ref | step ms | "
            "Δ step ms vs ref | wall s | Nash residual (max) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name in members:
            r = rows.get(name)
            if r is None:
                continue
            residual = r["nash_residual_max"]
            lines.append(
                "| "
                + " | ".join(
                    [
                        f"`{name}`" + (" (ref)" if name == ref else ""),
                        "/".join(map(str, r["steps"])),
                        _pm(r["validation_ppl"]),
                        _pm(r["test_ppl"]),
                        "—" if name == ref else _diff(pairs.get((name, ref, "test_ppl"))),
                        _pm(r["step_time_s"], 1, 1000.0),
                        "—"
                        if name == ref
                        else _diff(pairs.get((name, ref, "step_time_s")), 1000.0),
                        _pm(r["wall_time_s"], 0),
                        "—" if residual is None else f"{residual:.1e}",
                    ]
                )
                + " |"
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _write_markdown(
    path: Path,
    info: dict[str, Any],
    table: str,
    summary: Sequence[dict[str, Any]],
    diverged: Sequence[dict[str, Any]],
    files: dict[str, str],
) -> None:
    s = info["shared"]
    model = s["model"]
    lines = [
        "# nashmoe ablate",
        "",
        f"Command: `{info['command']}`" if info["command"] else "",
        "",
        f"Corpus `{s['corpus']}` (tokenizer {s['tokenizer'] or 'default'}), preset "
        f"`{s['preset']}`{' with ' + str(model) if model else ''}, {s['steps']} steps of "
        f"{s['batch_size']} sequences, AdamW lr {s['lr']}, seeds "
        f"{', '.join(map(str, info['seeds']))}; git {(info['git']['commit'] or 'unknown')[:12]}"
        f"{' (with uncommitted changes in src/)' if info['git']['dirty'] else ''}; wall time "
        f"{info['wall_time_s'] / 60:.1f} min ({info['jobs']} job(s)).",
        "",
        "Settings:",
        "",
        *(
            f"- `{d['name']}`: {d['description']} ({', '.join(d['groups'])})"
            for d in info["settings"]
        ),
        "",
        "Perplexities of the best-on-validation weights (test evaluated once); mean ± sample std "
        "(ddof = 1) over seeds. Δ: the setting minus the reference, paired by seed (the same "
        "initialisation and data order): mean ± std of the per-seed differences [95% "
        "t-interval]; (noise): the interval contains 0; (undefined): a non-finite difference. "
        "Step ms: mean training step time (the first step of each process and the steps that "
        "sample the bargaining diagnostics left out); wall s: training, evaluation and "
        "expert-similarity time of a run (a resumed run: its earlier processes up to the "
        "checkpoint it resumed from, plus the last; with several jobs, measured under "
        "contention).",
        "",
        table,
        "",
    ]
    if info["calibration"]:
        lines += [
            "Time-matched settings (steps = budget / probed step time, the warm-up scaled "
            "with the steps): "
            + "; ".join(
                f"`{n}` {c['steps']} steps at {1000 * c['step_time_s']:.1f} ms (budget "
                f"{c['budget_s']:.3g} s, from `{c['budget_from']}`)"
                for n, c in info["calibration"].items()
                if "steps" in c
            )
            + ". A budget is the probed step time × steps of the setting's group's first "
            "setting, or `--seconds`.",
            "",
        ]
    if info["notes"]:
        lines += ["Notes:", "", *(f"- {n}" for n in info["notes"]), ""]
    bargaining = format_bargaining(summary, key="setting")
    if bargaining:
        lines += [
            "Bargaining diagnostics per propagating layer (mean over seeds of the mean over "
            "the last quarter of the logged intervals; see `nashmoe compare`'s results.md):",
            "",
            bargaining,
            "",
        ]
    if diverged:
        lines += [
            "Diverged (left out of the tables): "
            + "; ".join(f"`{d['setting']}` seed {d['seed']} at step {d['step']}" for d in diverged)
            + ".",
            "",
        ]
    if files:
        lines += ["Plots: " + ", ".join(f"`{Path(p).name}`" for p in files.values()), ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def _model_config(config: TrainConfig) -> GPTConfig:
    return GPTConfig.preset(config.preset, vocab_size=1, method=config.method, **config.model)


def model_layers(config: TrainConfig) -> int:
    """The number of MoE layers of ``config``'s model (Δl = 2 equals Δl = L below four)."""
    cfg = _model_config(config)
    return sum(cfg.is_moe_block(i) for i in range(cfg.n_layer))
