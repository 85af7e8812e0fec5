"""Training loop of fairness-aware meta-learning via Nash bargaining, and its baselines.

Zeng, Yang, Chen, Canton Ferrer, Jin, Jordan, Jia, "Fairness-Aware Meta-Learning via Nash
Bargaining", NeurIPS 2024, arXiv 2406.07029 (fairness.md, sections 2, 5, 7, 8, 11).

Methods (:data:`METHODS`):

- ``erm``: uniform weights; ``erm_reduction="reference"`` gives 1/√B (the reference's
  L2-normalised uniform weights: the same step scale as the meta methods), ``"mean"`` 1/B.
- ``dro``: CVaR, the sum of the largest ``cvar_fraction`` of the batch's losses.
- ``ltr``, ``forml``, ``meta-gdro``: one-step look-ahead reweighting with that stage-2 objective.
- ``nash-ltr``, ``nash-forml``, ``nash-meta-gdro``: stage 1 (the first ``bargain_epochs``
  epochs) bargains over the (group × label) players and falls back to the current batch's
  stage-2 hypergradient when bargaining fails; stage 2 as the one-stage method.

After every epoch the model is evaluated on the validation split; the reported epoch is chosen on
**validation** (``selection_metric``), never on test. Test is evaluated once, at the end, on the
selected epoch's weights (and on the last epoch's, reported too). Per-epoch test metrics exist only
for the benchmark's labelled reference protocol (``test_every_epoch=True``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from nashmoe.fairness.bargain import BARGAIN_STATUSES, BargainResult, nash_bargain
from nashmoe.fairness.datasets import FairDataset, FairSplit
from nashmoe.fairness.lookahead import BACKENDS, Lookahead, VirtualSGD
from nashmoe.fairness.metrics import fairness_report
from nashmoe.fairness.model import fair_mlp
from nashmoe.fairness.objectives import (
    VAL_LOSSES,
    cvar_loss,
    objective_value,
    per_example_cross_entropy,
)
from nashmoe.fairness.players import PLAYER_MODES, build_players
from nashmoe.fairness.reweight import WEIGHT_NORMS, reweight_step

__all__ = [
    "DATASET_DEFAULTS",
    "METHODS",
    "SELECTION_METRICS",
    "FairRunResult",
    "FairTrainConfig",
    "MethodSpec",
    "config_for",
    "select_epoch",
    "train_fair",
]


@dataclass(frozen=True)
class MethodSpec:
    """``meta``: uses the look-ahead; ``objective``: stage-2 objective; ``nash``: has stage 1."""

    name: str
    meta: bool
    objective: str | None
    nash: bool


METHODS: dict[str, MethodSpec] = {
    "erm": MethodSpec("erm", False, None, False),
    "dro": MethodSpec("dro", False, None, False),
    "ltr": MethodSpec("ltr", True, "ltr", False),
    "forml": MethodSpec("forml", True, "forml", False),
    "meta-gdro": MethodSpec("meta-gdro", True, "meta-gdro", False),
    "nash-ltr": MethodSpec("nash-ltr", True, "ltr", True),
    "nash-forml": MethodSpec("nash-forml", True, "forml", True),
    "nash-meta-gdro": MethodSpec("nash-meta-gdro", True, "meta-gdro", True),
}

# selection name -> (validation metric, maximise?)
SELECTION_METRICS: dict[str, tuple[str, bool]] = {
    "roc_auc": ("roc_auc", True),
    "balanced_accuracy": ("balanced_accuracy", True),
    "worst_group": ("roc_auc_worst_group", True),
    "group_gap": ("roc_auc_group_gap", False),
}


# (data set, sensitive) -> hyperparameters: reference values for Adult (fairness.md, section 8),
# untuned starting points of the spec for COMPAS and German. bargain_epochs is the exact number of
# stage-1 epochs (the reference's T_bar = 15 bargains for 14).
def _defaults(lr: float, dropout: float, batch: int, epochs: int, bargain: int) -> dict:
    return {
        "lr": lr,
        "dropout": dropout,
        "batch_size": batch,
        "epochs": epochs,
        "bargain_epochs": bargain,
    }


DATASET_DEFAULTS: dict[tuple[str, str], dict[str, float | int]] = {
    ("adult", "sex"): _defaults(1e-3, 0.2, 512, 50, 15),
    ("adult", "race"): _defaults(5e-4, 0.4, 512, 50, 15),
    ("compas", "race"): _defaults(1e-3, 0.2, 128, 50, 15),
    ("compas", "sex"): _defaults(1e-3, 0.2, 128, 50, 15),
    ("german", "age"): _defaults(1e-3, 0.2, 32, 50, 10),
    ("german", "sex"): _defaults(1e-3, 0.2, 32, 50, 10),
}


@dataclass(frozen=True)
class FairTrainConfig:
    """Hyperparameters of one run (defaults: Adult / sex of the reference).

    Attributes:
        method: one of :data:`METHODS`.
        epochs: training epochs.
        bargain_epochs: exact number of stage-1 (bargaining) epochs of the Nash methods; epochs
            1..bargain_epochs bargain. To reproduce the reference's T_bar, pass T_bar − 1.
        lr, momentum, weight_decay: SGD, used by the real step and the virtual step.
        batch_size: training batch size (``drop_last``).
        dropout, hidden: the MLP.
        val_loss: ``"ce+soft_f1"`` (reference) or ``"ce"``.
        weight_norm: ``"l2"`` (reference) or ``"sum"``.
        players: ``"group_label"`` (2G players, reference) or ``"group"``.
        erm_reduction: ``"reference"`` (weights 1/√B) or ``"mean"``.
        cvar_fraction: share of the batch whose losses DRO sums.
        nash_max_iter, nash_tol, certificate_tol: bargaining (:func:`nash_bargain`).
        lookahead_dropout: run the look-ahead in training mode (dropout active, as in the
            reference). With the ghost backend the real update then reuses the look-ahead's
            forward pass on the batch (same dropout mask; the reference draws a new one).
        backend: hypergradient backend (``"auto"``, ``"func"``, ``"ghost"``).
        selection_metric: validation criterion for the reported epoch (:data:`SELECTION_METRICS`).
        seed: model initialisation, batch order and dropout.
    """

    method: str = "nash-meta-gdro"
    epochs: int = 50
    bargain_epochs: int = 15
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 512
    dropout: float = 0.2
    hidden: tuple[int, ...] = (128, 64)
    val_loss: str = "ce+soft_f1"
    weight_norm: str = "l2"
    players: str = "group_label"
    erm_reduction: str = "reference"
    cvar_fraction: float = 0.4
    nash_max_iter: int = 20
    nash_tol: float = 1e-6
    certificate_tol: float = 1e-6
    lookahead_dropout: bool = True
    backend: str = "auto"
    selection_metric: str = "roc_auc"
    seed: int = 0

    def __post_init__(self) -> None:
        choices = {
            "method": (self.method, METHODS),
            "val_loss": (self.val_loss, VAL_LOSSES),
            "weight_norm": (self.weight_norm, WEIGHT_NORMS),
            "players": (self.players, PLAYER_MODES),
            "erm_reduction": (self.erm_reduction, ("reference", "mean")),
            "backend": (self.backend, BACKENDS),
            "selection_metric": (self.selection_metric, SELECTION_METRICS),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose from {list(allowed)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"epochs and batch_size must be positive, got {self.epochs}, {self.batch_size}"
            )
        if not 0 <= self.bargain_epochs:
            raise ValueError(f"bargain_epochs must be non-negative, got {self.bargain_epochs}")
        if not 0 < self.cvar_fraction <= 1:
            raise ValueError(f"cvar_fraction must lie in (0, 1], got {self.cvar_fraction}")
        VirtualSGD(self.lr, self.momentum, self.weight_decay)  # validates the optimizer values

    @property
    def spec(self) -> MethodSpec:
        return METHODS[self.method]


def config_for(dataset: str, sensitive: str, method: str, **overrides) -> FairTrainConfig:
    """A config with the per-data-set defaults of :data:`DATASET_DEFAULTS` and ``overrides``."""
    if (dataset, sensitive) not in DATASET_DEFAULTS:
        raise ValueError(
            f"no defaults for {dataset}/{sensitive}; known: "
            f"{sorted(f'{d}/{s}' for d, s in DATASET_DEFAULTS)}"
        )
    values = {**DATASET_DEFAULTS[(dataset, sensitive)], "method": method}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return FairTrainConfig(**values)


@dataclass
class _EpochStats:
    batches: int = 0
    loss_sum: float = 0.0
    meta_batches: int = 0
    bargain_attempts: int = 0
    statuses: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    iterations: int = 0
    residual_sum: float = 0.0
    solver_runs: int = 0
    conflicts: int = 0
    pairwise_conflicts: int = 0
    clipped_improves: int = 0
    zero_weights: int = 0
    nash_used: int = 0

    def add(self, step) -> None:
        self.meta_batches += 1
        self.conflicts += step.conflict
        self.pairwise_conflicts += step.pairwise_conflict
        self.clipped_improves += step.clipped_improves_all
        self.zero_weights += not bool(step.weights.any())
        self.nash_used += step.used_nash
        b: BargainResult | None = step.bargain
        if b is not None:
            self.bargain_attempts += 1
            self.statuses[b.status] += 1
            if b.reason:
                self.reasons[b.reason.split(":")[0][:60]] += 1
            if b.iterations > 0:
                self.solver_runs += 1
                self.iterations += b.iterations
                if not math.isnan(b.residual):
                    self.residual_sum += b.residual

    def summary(self) -> dict:
        def frac(k: int, n: int) -> float:
            return k / n if n else math.nan

        out = {
            "train_loss": self.loss_sum / max(self.batches, 1),
            "batches": self.batches,
        }
        if self.meta_batches:
            out.update(
                {
                    "bargain_attempts": self.bargain_attempts,
                    "bargain_success_rate": frac(self.statuses["ok"], self.bargain_attempts),
                    "status_counts": {s: self.statuses[s] for s in BARGAIN_STATUSES},
                    "fallbacks": self.bargain_attempts - self.statuses["ok"],
                    "mean_iterations": frac(self.iterations, self.solver_runs),
                    "mean_residual": frac(self.residual_sum, self.solver_runs),
                    "conflict_fraction": frac(self.conflicts, self.meta_batches),
                    "pairwise_conflict_fraction": frac(self.pairwise_conflicts, self.meta_batches),
                    "clipped_improvement_fraction": frac(self.clipped_improves, self.meta_batches),
                    "zero_weight_fraction": frac(self.zero_weights, self.meta_batches),
                    "nash_fraction": frac(self.nash_used, self.meta_batches),
                    "failure_reasons": dict(self.reasons),
                }
            )
        return out


@dataclass(frozen=True)
class FairRunResult:
    """Everything one run produces (JSON-serialisable through :meth:`to_dict`).

    Attributes:
        config: the :class:`FairTrainConfig` as a dict.
        dataset: name, sensitive attribute, group names, split sizes per group and label.
        history: per epoch: ``epoch``, ``val`` metric dicts (overall and ``metric[group]``),
            ``diagnostics``, ``seconds`` (and ``test`` only with ``test_every_epoch``).
        selected_epoch: the epoch chosen on validation (1-based).
        selected: ``{"val": ..., "test": ...}`` metrics at that epoch.
        last: ``{"val": ..., "test": ...}`` at the last epoch.
        stage1: diagnostics aggregated over the stage-1 epochs (Nash methods), else ``{}``.
        notes: warnings such as skipped bargaining.
        seconds: wall time of training and evaluation.
    """

    config: dict
    dataset: dict
    history: list[dict]
    selected_epoch: int
    selected: dict
    last: dict
    stage1: dict
    notes: list[str]
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def select_epoch(history: list[dict], selection_metric: str = "roc_auc") -> int:
    """The epoch (1-based) with the best *validation* value; ties and NaN go to the earliest."""
    if selection_metric not in SELECTION_METRICS:
        raise ValueError(
            f"unknown selection_metric {selection_metric!r}; choose from {list(SELECTION_METRICS)}"
        )
    key, maximise = SELECTION_METRICS[selection_metric]
    best, best_value = history[0]["epoch"], math.nan
    for rec in history:
        v = rec["val"][key]
        if math.isnan(v):
            continue
        if math.isnan(best_value) or (v > best_value if maximise else v < best_value):
            best, best_value = rec["epoch"], v
    return best


@torch.no_grad()
def _evaluate(model: nn.Module, split: FairSplit, group_names: tuple[str, ...]) -> dict[str, float]:
    model.eval()
    logits = torch.cat([model(chunk) for chunk in split.x.split(8192)])
    scores = torch.softmax(logits.float(), dim=-1)[:, 1]
    report = fairness_report(split.y, scores, split.group, group_names=group_names)
    return report.flat()


def _to(split: FairSplit, device: torch.device) -> FairSplit:
    return FairSplit(split.x.to(device), split.y.to(device), split.group.to(device))


def train_fair(
    dataset: FairDataset,
    config: FairTrainConfig,
    *,
    device: str | torch.device = "cpu",
    bargainer: Callable[[Tensor], BargainResult] | None = None,
    progress: Callable[[dict], None] | None = None,
    test_every_epoch: bool = False,
) -> FairRunResult:
    """Train one model with ``config.method`` on ``dataset``, evaluate it on validation every
    epoch, select the epoch on validation and evaluate test once at the end.

    Args:
        dataset: a :class:`FairDataset` (its meta set drives the meta methods).
        config: hyperparameters and the method.
        device: where to train.
        bargainer: replaces the stage-1 bargaining function ``G [n, B] -> BargainResult``
            (default :func:`nash_bargain` with the config's tolerances); used to inject failures.
        progress: called with each epoch's record (validation metrics only).
        test_every_epoch: also evaluate test after every epoch (``history[i]["test"]``), for the
            benchmark's labelled reference protocol only; never used for selection here.

    Raises:
        ValueError: the training split is smaller than one batch, or the meta set lacks a group.
    """
    spec = config.spec
    device = torch.device(device)
    n_train = len(dataset.train)
    n_batches = n_train // config.batch_size
    if n_batches == 0:
        raise ValueError(
            f"training split has {n_train} rows, fewer than batch_size={config.batch_size}"
        )
    train = _to(dataset.train, device)
    meta = _to(dataset.meta, device)
    notes: list[str] = []
    players = build_players(meta.group, meta.y, dataset.group_names, mode=config.players)
    players_coef = players.coefficients.to(device)
    group_coef = players.group_coefficients.to(device)
    if players.dropped:
        notes.append(f"players dropped (no meta example): {list(players.dropped)}")
    can_bargain = spec.nash and players.can_bargain
    if spec.nash and not players.can_bargain:
        notes.append(
            f"bargaining skipped for the whole run: {players.n_players} player(s) left (need 2)"
        )
    if bargainer is None:

        def bargainer(g: Tensor) -> BargainResult:
            return nash_bargain(
                g,
                max_iter=config.nash_max_iter,
                tol=config.nash_tol,
                certificate_tol=config.certificate_tol,
            )

    torch.manual_seed(config.seed)
    model = fair_mlp(dataset.n_features, hidden=config.hidden, dropout=config.dropout).to(device)
    named = list(model.named_parameters())
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    lookahead = None
    if spec.meta:
        lookahead = Lookahead(
            model,
            step=VirtualSGD(config.lr, config.momentum, config.weight_decay),
            val_loss=config.val_loss,
            backend=config.backend,
        )
    gen = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    val_split, test_split = _to(dataset.val, device), _to(dataset.test, device)
    best_state: dict[str, Tensor] | None = None
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        stats = _EpochStats()
        in_stage1 = can_bargain and epoch <= config.bargain_epochs
        order = torch.randperm(n_train, generator=gen).to(device)
        model.train()
        for b in range(n_batches):
            idx = order[b * config.batch_size : (b + 1) * config.batch_size]
            x, y = train.x[idx], train.y[idx]
            if lookahead is not None:
                if not config.lookahead_dropout:
                    model.eval()
                mj = lookahead(x, y, meta.x, meta.y, lookahead.momentum_buffers(optimizer))
                lv = mj.val_losses.detach().requires_grad_()
                (coef,) = torch.autograd.grad(objective_value(spec.objective, lv, group_coef), lv)
                decision = reweight_step(
                    mj.hypergradient(players_coef),
                    mj.hypergradient(coef),
                    bargain=in_stage1,
                    weight_norm=config.weight_norm,
                    bargainer=bargainer,
                )
                stats.add(decision)
                if mj.batch_terms is not None and config.lookahead_dropout:
                    # Σ_j w_j ∇ℓ_j from the look-ahead's own forward pass: no second pass.
                    grads = lookahead.weighted_gradients(mj, decision.weights)
                    for name, p in named:
                        p.grad = grads[name]
                    losses = mj.train_losses
                else:
                    model.train()
                    losses = per_example_cross_entropy(model(x), y)
                    optimizer.zero_grad(set_to_none=False)
                    (decision.weights.to(losses.dtype) * losses).sum().backward()
            else:
                losses = per_example_cross_entropy(model(x), y)
                if config.method == "dro":
                    loss = cvar_loss(losses, config.cvar_fraction)
                elif config.erm_reduction == "mean":
                    loss = losses.mean()
                else:
                    loss = losses.sum() / math.sqrt(losses.shape[0])
                optimizer.zero_grad(set_to_none=False)
                loss.backward()
            optimizer.step()
            stats.batches += 1
            stats.loss_sum += float(losses.detach().mean())
        record = {
            "epoch": epoch,
            "stage": 1 if in_stage1 else 2,
            "val": _evaluate(model, val_split, dataset.group_names),
            "diagnostics": stats.summary(),
            "seconds": time.perf_counter() - t0,
        }
        history.append(record)
        if select_epoch(history, config.selection_metric) == epoch:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if progress is not None:
            progress(record)
        if test_every_epoch:
            record["test"] = _evaluate(model, test_split, dataset.group_names)
    best = select_epoch(history, config.selection_metric)
    sel, last = history[best - 1], history[-1]
    # test, once, at the end: the last epoch's weights, then the selected epoch's
    last_test = _evaluate(model, test_split, dataset.group_names)
    if best_state is not None and best != len(history):
        model.load_state_dict(best_state)
        sel_test = _evaluate(model, test_split, dataset.group_names)
    else:
        sel_test = last_test
    seconds = time.perf_counter() - start
    return FairRunResult(
        config=asdict(config),
        dataset={
            "name": dataset.name,
            "sensitive": dataset.sensitive,
            "group_names": list(dataset.group_names),
            "label": dataset.label_description,
            "seed": dataset.seed,
            "sizes": dataset.summary(),
            "players": list(players.names),
        },
        history=history,
        selected_epoch=best,
        selected={"val": sel["val"], "test": sel_test},
        last={"val": last["val"], "test": last_test},
        stage1=_stage1_summary(history) if spec.nash else {},
        notes=notes,
        seconds=seconds,
    )


def _stage1_summary(history: list[dict]) -> dict:
    """Bargaining diagnostics summed over the stage-1 epochs."""
    recs = [r["diagnostics"] for r in history if r["stage"] == 1]
    attempts = sum(r.get("bargain_attempts", 0) for r in recs)
    counts = Counter()
    for r in recs:
        counts.update(r.get("status_counts", {}))
    batches = sum(r["batches"] for r in recs)

    def weighted(key: str) -> float:
        return sum(r[key] * r["batches"] for r in recs if key in r)

    conflicts = weighted("conflict_fraction")
    pairwise = weighted("pairwise_conflict_fraction")
    clipped = weighted("clipped_improvement_fraction")
    return {
        "epochs": len(recs),
        "bargain_attempts": attempts,
        "bargain_success_rate": counts["ok"] / attempts if attempts else math.nan,
        "status_counts": {s: counts[s] for s in BARGAIN_STATUSES},
        "conflict_fraction": conflicts / batches if batches else math.nan,
        "pairwise_conflict_fraction": pairwise / batches if batches else math.nan,
        "clipped_improvement_fraction": clipped / batches if batches else math.nan,
    }
