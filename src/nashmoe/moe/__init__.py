"""The MoE layer family: SMoE, SMEAR, CAMEx, EP-CAMEx and NAMEx (-Full, -Mom).

Papers:
- NAMEx: Nguyen et al., "Expert Merging in Sparse Mixture of Experts with Nash Bargaining",
  ICLR 2026, arXiv 2510.16138.
- CAMEx: Nguyen et al., "CAMEx: Curvature-aware Merging of Experts", ICLR 2025, arXiv 2502.18821.
- SMEAR: Muqeeth, Liu, Raffel, "Soft Merging of Experts with Adaptive Routing", arXiv 2306.03745.
- Lory (segment routing): Zhong et al., arXiv 2405.03133.
- Complex momentum: Lorraine et al., "Complex Momentum for Optimization in Games", arXiv 2102.08431.
- Switch load balancing: Fedus, Zoph, Shazeer, arXiv 2101.03961.
- Router z-loss: Zoph et al., "ST-MoE", arXiv 2202.08906.
"""

from nashmoe.moe.adapter import MoEMLP
from nashmoe.moe.analysis import capture_moe_inputs, expert_output_similarity
from nashmoe.moe.aux import MoEAux, router_z_loss, switch_balance_loss
from nashmoe.moe.chain import PropagationChain, collect_aux, link_moe_layers
from nashmoe.moe.config import (
    MERGING_METHODS,
    METHODS,
    MOMENTUM_METHODS,
    NASH_METHODS,
    PROPAGATING_METHODS,
    MoEConfig,
    UnusedOptionError,
    config_with_used_options,
)
from nashmoe.moe.curvature import KroneckerCurvature
from nashmoe.moe.gating import update_router_biases
from nashmoe.moe.layer import MoEFeedForward, SegmentCache, set_bargaining_stats
from nashmoe.moe.layout import ExpertLayout
from nashmoe.moe.state import PropagationState

__all__ = [
    "MERGING_METHODS",
    "METHODS",
    "MOMENTUM_METHODS",
    "NASH_METHODS",
    "PROPAGATING_METHODS",
    "ExpertLayout",
    "KroneckerCurvature",
    "MoEAux",
    "MoEConfig",
    "MoEFeedForward",
    "MoEMLP",
    "PropagationChain",
    "PropagationState",
    "SegmentCache",
    "UnusedOptionError",
    "capture_moe_inputs",
    "collect_aux",
    "config_with_used_options",
    "expert_output_similarity",
    "link_moe_layers",
    "router_z_loss",
    "set_bargaining_stats",
    "switch_balance_loss",
    "update_router_biases",
]
