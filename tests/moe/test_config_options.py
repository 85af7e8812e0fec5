"""Options a method does not use: a typed error, and the model-wide filter built on it."""

from __future__ import annotations

import pytest

from nashmoe.moe import MoEConfig, UnusedOptionError, config_with_used_options

BASE = {"d_model": 8, "d_ff": 16, "num_experts": 4}


def test_unused_option_error_names_the_field_and_its_users():
    with pytest.raises(UnusedOptionError) as err:
        MoEConfig(method="smoe", gamma=0.5, **BASE)
    assert err.value.field == "gamma" and err.value.method == "smoe"
    assert "gamma is only used by" in str(err.value)
    assert isinstance(err.value, ValueError)  # callers catching ValueError keep working
    with pytest.raises(UnusedOptionError):
        MoEConfig(method="dense", router_bias=True, **BASE)


def test_model_wide_options_apply_where_used_and_are_dropped_elsewhere():
    options = {"gamma": 0.25, "segment_len": 8}
    namex = config_with_used_options({"method": "namex", **BASE}, options)
    assert namex.gamma == 0.25 and namex.segment_len == 8
    smoe = config_with_used_options({"method": "smoe", **BASE}, options)
    assert smoe == MoEConfig(method="smoe", **BASE)


def test_invalid_options_still_raise():
    with pytest.raises(ValueError, match="gamma") as err:
        config_with_used_options({"method": "namex", **BASE}, {"gamma": float("nan")})
    assert not isinstance(err.value, UnusedOptionError)
