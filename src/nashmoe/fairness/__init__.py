"""Fairness-aware meta-learning via Nash bargaining.

Zeng, Yang, Chen, Canton Ferrer, Jin, Jordan, Jia, "Fairness-Aware Meta-Learning via Nash
Bargaining", NeurIPS 2024, arXiv 2406.07029. Training reweights each mini-batch by one-step
look-ahead hypergradients of a small (group × label)-balanced meta set (Learning to Reweight,
Ren et al., ICML 2018); stage 1 bargains among the (group × label) players with the Nash
bargaining solution (:mod:`nashmoe.bargaining`), stage 2 optimises a fairness objective (LtR,
FORML, Meta-gDRO).

- Data: :func:`load_fair_dataset` (Adult, COMPAS, German) → :class:`FairDataset`.
- Hypergradients: :func:`meta_jacobian`, :class:`VirtualSGD`.
- Bargaining: :func:`nash_bargain` → :class:`BargainResult`; :func:`reweight_step`.
- Training: :func:`train_fair` with :class:`FairTrainConfig` (``METHODS``), :func:`config_for`.
- Metrics: :func:`fairness_report` and the scalar fairlearn-named functions.
- Benchmark: :func:`run_benchmark`, :func:`aggregate`, :func:`plot_tradeoff`.
"""

from nashmoe.fairness.bargain import BARGAIN_STATUSES, BargainResult, min_norm_point, nash_bargain
from nashmoe.fairness.benchmark import (
    BENCHMARK_TASKS,
    aggregate,
    compare_two_stage,
    format_table,
    plot_tradeoff,
    run_benchmark,
    write_report,
)
from nashmoe.fairness.datasets import (
    DATASETS,
    FairDataset,
    FairSplit,
    load_fair_dataset,
    read_adult,
    read_compas,
    read_german,
    sensitive_groups,
)
from nashmoe.fairness.lookahead import (
    Lookahead,
    MetaJacobian,
    VirtualSGD,
    meta_jacobian,
    momentum_buffers,
)
from nashmoe.fairness.metrics import (
    FairnessReport,
    UndefinedMetricWarning,
    balanced_accuracy,
    demographic_parity_difference,
    equal_opportunity_difference,
    equalized_odds_difference,
    fairness_report,
    roc_auc,
)
from nashmoe.fairness.model import fair_mlp
from nashmoe.fairness.objectives import cvar_loss, objective_value, validation_losses
from nashmoe.fairness.players import PlayerSet, build_players
from nashmoe.fairness.reweight import ReweightStep, normalise_weights, reweight_step
from nashmoe.fairness.trainer import (
    DATASET_DEFAULTS,
    METHODS,
    FairRunResult,
    FairTrainConfig,
    config_for,
    select_epoch,
    train_fair,
)

__all__ = [
    "BARGAIN_STATUSES",
    "BENCHMARK_TASKS",
    "DATASETS",
    "DATASET_DEFAULTS",
    "METHODS",
    "BargainResult",
    "FairDataset",
    "FairRunResult",
    "FairSplit",
    "FairTrainConfig",
    "FairnessReport",
    "Lookahead",
    "MetaJacobian",
    "PlayerSet",
    "ReweightStep",
    "UndefinedMetricWarning",
    "VirtualSGD",
    "aggregate",
    "balanced_accuracy",
    "build_players",
    "compare_two_stage",
    "config_for",
    "cvar_loss",
    "demographic_parity_difference",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "fair_mlp",
    "fairness_report",
    "format_table",
    "load_fair_dataset",
    "meta_jacobian",
    "min_norm_point",
    "momentum_buffers",
    "nash_bargain",
    "normalise_weights",
    "objective_value",
    "plot_tradeoff",
    "read_adult",
    "read_compas",
    "read_german",
    "reweight_step",
    "roc_auc",
    "run_benchmark",
    "select_epoch",
    "sensitive_groups",
    "train_fair",
    "validation_losses",
    "write_report",
]
