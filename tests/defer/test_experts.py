"""Synthetic experts and simulated annotators."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from nashmoe.defer.experts import (
    ExpertSpec,
    sample_synthetic_experts,
    sample_vote_annotators,
    synthetic_expert_specs,
)


@pytest.mark.parametrize("num_experts", [1, 2, 4, 8, 16, 64])
def test_overlapped_round_robin_covers_classes_equally(num_experts: int) -> None:
    specs = synthetic_expert_specs(num_experts, 10, family="overlapped", specialty_size=3, seed=5)
    assert len(specs) == num_experts
    assert all(len(s.specialty) == 3 for s in specs)
    cover = Counter(c for s in specs for c in s.specialty)
    counts = [cover.get(c, 0) for c in range(10)]
    assert max(counts) - min(counts) <= 1
    assert sum(counts) == 3 * num_experts


def test_specs_are_seeded() -> None:
    a = synthetic_expert_specs(4, 10, seed=1)
    assert a == synthetic_expert_specs(4, 10, seed=1)
    assert a != synthetic_expert_specs(4, 10, seed=2)


def test_specialist_and_varying() -> None:
    specs = synthetic_expert_specs(4, 10, family="specialist", seed=0)
    union = set().union(*(s.specialty for s in specs))
    assert union == set(range(10))
    assert sum(len(s.specialty) for s in specs) == 10  # disjoint
    assert sorted(len(s.specialty) for s in specs) == [2, 2, 3, 3]
    with pytest.raises(ValueError, match="disjoint"):
        synthetic_expert_specs(11, 10, family="specialist")
    varying = synthetic_expert_specs(5, 10, family="varying", p_in=0.9, p_in_min=0.5)
    assert [s.p_in for s in varying] == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5])
    assert all(s.specialty == frozenset(range(10)) for s in varying)


def test_sampled_accuracy_matches_spec() -> None:
    k = 10
    rng = np.random.default_rng(0)
    labels = rng.integers(0, k, 40_000)
    specs = [ExpertSpec(frozenset({0, 1, 2}), 0.9, 0.2), ExpertSpec(frozenset({5}), 1.0, 0.0)]
    preds = sample_synthetic_experts(labels, specs, k, seed=3)
    assert preds.shape == (40_000, 2) and preds.dtype == np.int64
    assert preds.min() >= 0 and preds.max() < k
    for j, spec in enumerate(specs):
        for c in range(k):
            rows = labels == c
            acc = (preds[rows, j] == c).mean()
            assert acc == pytest.approx(spec.accuracy(c, k), abs=0.025)
    # Fixed per seed, different across seeds.
    np.testing.assert_array_equal(preds, sample_synthetic_experts(labels, specs, k, seed=3))
    assert (preds != sample_synthetic_experts(labels, specs, k, seed=4)).any()
    # The CIFAR-K expert (p_in = 1, p_out = 0) is exactly right on its class.
    assert (preds[labels == 5, 1] == 5).all()


def test_vote_annotators() -> None:
    votes = np.array([[1.0, 0.0, 0.0], [0.0, 1 / 3, 2 / 3]] * 5000)
    preds = sample_vote_annotators(votes, 3, seed=0)
    assert preds.shape == (10_000, 3)
    assert (preds[0::2] == 0).all()
    frac_neither = (preds[1::2] == 2).mean()
    assert frac_neither == pytest.approx(2 / 3, abs=0.02)
    # Swapping hate (0) and offensive (1) with probability 1 for expert 1 only.
    swapped = sample_vote_annotators(votes, 2, seed=0, swap=[0.0, 1.0])
    assert (swapped[0::2, 0] == 0).all() and (swapped[0::2, 1] == 1).all()
    # 'neither' (2) is never swapped; offensive (1) always becomes hate (0) for expert 1.
    assert ((swapped[1::2, 1] == 0) | (swapped[1::2, 1] == 2)).all()


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="family"):
        synthetic_expert_specs(2, 10, family="animal")
    with pytest.raises(ValueError, match="p_in"):
        synthetic_expert_specs(2, 10, p_in=1.5)
    with pytest.raises(ValueError, match="specialty_size"):
        synthetic_expert_specs(2, 10, specialty_size=11)
    with pytest.raises(ValueError, match="labels"):
        sample_synthetic_experts(np.array([10]), synthetic_expert_specs(1, 10), 10, seed=0)
    with pytest.raises(ValueError, match="vote_probs"):
        sample_vote_annotators(np.array([[0.5, 0.4]]), 1, seed=0)
    with pytest.raises(ValueError, match="swap"):
        sample_vote_annotators(np.array([[0.5, 0.5]]), 2, seed=0, swap=[0.1])
