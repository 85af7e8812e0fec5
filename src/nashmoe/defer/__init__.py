"""Multi-expert learning to defer (L2D) and PiCCE.

Liu, Cao, Feng, An, Ong, "When More Experts Hurt: Underfitting in Multi-Expert Learning to Defer",
arXiv 2602.17144: with the usual multi-expert surrogates the classifier part underfits more as
experts are added; PiCCE ("Pick the Confident and Correct Expert") trains against only the
highest-scoring correct expert and removes the effect.

- Losses over K + J scores (:mod:`~nashmoe.defer.losses`): :func:`multi_expert_ce`,
  :func:`multi_expert_ova`, :func:`picce_ce`, :func:`picce_ova`.
- Decision rule and outputs (:mod:`~nashmoe.defer.decision`), metrics with the names of
  clinicalml/human_ai_deferral (:mod:`~nashmoe.defer.metrics`).
- Experts (:mod:`~nashmoe.defer.experts`), loaders (:mod:`~nashmoe.defer.data`), models, the trainer
  :class:`MultiExpertL2D`, population theory (:mod:`~nashmoe.defer.theory`), experiments and the
  ``nashmoe defer`` command.
"""

from nashmoe.defer.decision import class_probabilities, decide, deferral_outputs, rejection_score
from nashmoe.defer.experts import (
    ExpertSpec,
    sample_synthetic_experts,
    sample_vote_annotators,
    synthetic_expert_specs,
)
from nashmoe.defer.losses import (
    LOSSES,
    correct_mask,
    loss_family,
    multi_expert_ce,
    multi_expert_ova,
    picce_ce,
    picce_ova,
)
from nashmoe.defer.metrics import (
    compute_coverage_v_acc_curve,
    compute_deferral_metrics,
    compute_multi_expert_metrics,
    expert_summary,
)
from nashmoe.defer.models import BagOfWordsClassifier, MLPHead, SmallCNN
from nashmoe.defer.trainer import MultiExpertL2D, TensorBatches

__all__ = [
    "LOSSES",
    "BagOfWordsClassifier",
    "ExpertSpec",
    "MLPHead",
    "MultiExpertL2D",
    "SmallCNN",
    "TensorBatches",
    "class_probabilities",
    "compute_coverage_v_acc_curve",
    "compute_deferral_metrics",
    "compute_multi_expert_metrics",
    "correct_mask",
    "decide",
    "deferral_outputs",
    "expert_summary",
    "loss_family",
    "multi_expert_ce",
    "multi_expert_ova",
    "picce_ce",
    "picce_ova",
    "rejection_score",
    "sample_synthetic_experts",
    "sample_vote_annotators",
    "synthetic_expert_specs",
]
