"""``merge_weights`` (Nash weights in the merge line, the NAMEx reviewers' ablation) and EP-CAMEx
with NAMEx's step length, against the naive reference; validation of both options."""

from __future__ import annotations

import pytest
import torch

from nashmoe.moe import MoEConfig, MoEFeedForward, UnusedOptionError

from .test_reference import D, compare, make_stack


@pytest.mark.parametrize("mode", ["router", "nash", "product"])
@pytest.mark.parametrize("method", ["namex", "namex-full-mom"])
def test_merge_weights_match_reference(method, mode):
    compare(
        make_stack(method, num_layers=3, merge_weights=mode),
        torch.randn(2, 8, D, dtype=torch.float64),
    )


def test_merge_weights_top_k_matches_reference():
    compare(
        make_stack("namex-full", num_layers=2, merge_weights="product", merge_top_k=2),
        torch.randn(2, 8, D, dtype=torch.float64),
    )


def test_ep_camex_nash_step_matches_reference():
    compare(
        make_stack("ep-camex", num_layers=3, step_norm="nash", curvature_rank=1),
        torch.randn(2, 8, D, dtype=torch.float64),
    )


def test_nash_merge_weights_ignore_the_router():
    """With merge_weights="nash" every unit gets the same merged expert."""
    layers = make_stack("namex", num_layers=1, merge_weights="nash")
    x = torch.randn(2, 8, D, dtype=torch.float64)
    out = layers[0](x)
    with torch.no_grad():
        layers[0].router.mul_(5.0)
        layers[0].prior_logits.add_(1.0)
    torch.testing.assert_close(layers[0](x), out)


def test_merge_weights_at_the_last_layer_uses_alpha():
    """The last layer of a chain skips its step, but not the α its merge line needs."""
    layer = make_stack("namex", num_layers=1, merge_weights="product")[0]
    layer.last_in_chain = True
    _, aux = layer(torch.randn(1, 8, D, dtype=torch.float64), return_aux=True)
    assert aux.state is None and aux.alpha is not None and aux.solved


@pytest.mark.parametrize(
    ("fields", "match", "error"),
    [
        (dict(method="namex", merge_weights="alpha"), "merge_weights must be one of", ValueError),
        (dict(method="camex", merge_weights="nash"), "merge_weights is only", UnusedOptionError),
        (dict(method="ep-camex", merge_weights="nash"), "merge_weights is only", UnusedOptionError),
        (dict(method="camex", step_norm="nash"), "step_norm is only used by", UnusedOptionError),
        (dict(method="ep-camex", step_norm="max"), "step_norm must be", ValueError),
    ],
)
def test_validation(fields, match, error):
    with pytest.raises(error, match=match):
        MoEConfig(d_model=4, d_ff=4, num_experts=2, **fields)


def test_defaults():
    assert MoEConfig(method="namex", d_model=4, d_ff=4).merge_weights == "router"
    assert MoEConfig(method="namex", d_model=4, d_ff=4).step_norm == "nash"
    assert MoEConfig(method="ep-camex", d_model=4, d_ff=4).step_norm == "mean"
    assert MoEConfig(method="camex", d_model=4, d_ff=4).step_norm is None
    MoEFeedForward(MoEConfig(method="namex-full", d_model=4, d_ff=4, merge_weights="product"))
