"""Population results: the vanilla CE optimum, Lemma 4, the Theorem 6 counterexample."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch

from nashmoe.defer.theory import (
    expert_accuracies,
    first_correct_probs,
    label_margin,
    picce_ce_optimum,
    picce_ce_readout,
    picce_ce_risk,
    union_coverage,
    vanilla_ce_optimum,
    vanilla_ce_risk,
)

DT = torch.float64


def minimise(risk, dim: int, init: torch.Tensor | None = None, steps: int = 200) -> torch.Tensor:
    theta = (torch.zeros(dim, dtype=DT) if init is None else init.clone()).requires_grad_(True)
    opt = torch.optim.LBFGS(
        [theta],
        lr=1,
        max_iter=steps,
        tolerance_grad=1e-13,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        value = risk(theta)
        value.backward()
        return value

    opt.step(closure)
    return theta.detach()


@pytest.mark.parametrize("seed", range(4))
def test_vanilla_ce_optimum_matches_closed_form(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, num_experts = 4, 3
    eta = rng.dirichlet(np.ones(k))
    acc = rng.uniform(0.1, 0.95, num_experts)
    theta = minimise(
        lambda t: vanilla_ce_risk(t, torch.tensor(eta), torch.tensor(acc)), k + num_experts
    )
    psi = torch.softmax(theta, 0).numpy()
    np.testing.assert_allclose(psi, vanilla_ce_optimum(eta, acc), atol=1e-7)
    np.testing.assert_allclose(psi[:k].sum(), 1 / (1 + acc.sum()), atol=1e-7)


def test_margin_table() -> None:
    """η = (1/2, 3/10, 1/5), every expert 3/4 accurate: margin (η1 − η2) / (1 + 3J/4)."""
    eta = np.array([0.5, 0.3, 0.2])
    table = {
        1: Fraction(4, 35),
        2: Fraction(2, 25),
        4: Fraction(1, 20),
        8: Fraction(1, 35),
        16: Fraction(1, 65),
        32: Fraction(1, 125),
        64: Fraction(1, 245),
    }
    for num_experts, want in table.items():
        got = label_margin(eta, np.full(num_experts, 0.75))
        assert got == pytest.approx(float(want), abs=1e-12)
        assert Fraction(1, 5) / (1 + Fraction(3, 4) * num_experts) == want
    margins = [label_margin(eta, np.full(j, 0.75)) for j in table]
    assert all(a > b for a, b in itertools.pairwise(margins))


def test_margin_logit_gap_is_constant() -> None:
    """Remark: ψ*_1/ψ*_2 = η1/η2 for every J; only the probability mass shrinks."""
    eta = np.array([0.5, 0.3, 0.2])
    for j in (1, 4, 64):
        psi = vanilla_ce_optimum(eta, np.full(j, 0.75))
        assert psi[0] / psi[1] == pytest.approx(5 / 3)


def random_table(num_experts: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    patterns = np.array(list(itertools.product([False, True], repeat=num_experts)))
    probs = rng.dirichlet(np.full(len(patterns), 0.5))
    return patterns, probs


@pytest.mark.parametrize("num_experts", [1, 2, 3, 4, 5])
def test_lemma4_partition_all_orderings(num_experts: int) -> None:
    rng = np.random.default_rng(100 + num_experts)
    for _ in range(3):
        patterns, probs = random_table(num_experts, rng)
        v = union_coverage(patterns, probs)
        naive_v = sum(p for pat, p in zip(patterns, probs) if pat.any())
        assert v == pytest.approx(naive_v)
        for order in itertools.permutations(range(num_experts)):
            a = first_correct_probs(patterns, probs, order)
            assert a.sum() == pytest.approx(v, abs=1e-12)
            assert (a >= -1e-15).all() and a.sum() <= 1 + 1e-12
            # The first expert of the ordering keeps its whole accuracy.
            assert a[order[0]] == pytest.approx(expert_accuracies(patterns, probs)[order[0]])


# Theorem 6 counterexample (spec section 5): accuracies (3/4, 1/2), η = (3/5, 2/5).
PATTERNS = np.array([[False, False], [False, True], [True, False], [True, True]])
PROBS = np.array([1 / 8, 1 / 8, 3 / 8, 3 / 8])
ETA = np.array([0.6, 0.4])


def _risk(theta: torch.Tensor) -> torch.Tensor:
    return picce_ce_risk(theta, torch.tensor(ETA), torch.tensor(PATTERNS), torch.tensor(PROBS))


def test_counterexample_setup() -> None:
    np.testing.assert_allclose(expert_accuracies(PATTERNS, PROBS), [0.75, 0.5])
    assert union_coverage(PATTERNS, PROBS) == pytest.approx(7 / 8)


def test_theorem6_counterexample_population_optimum() -> None:
    """Expert 1 ranked first: ψ_{K+1} = (3/4)/(15/8) = 2/5 = Acc·(1 − Ṽ), not Acc·Ṽ = 7/20."""
    init = torch.tensor([0.0, 0.0, 1.0, -1.0], dtype=DT)
    psi = torch.softmax(minimise(_risk, 4, init), 0).numpy()
    assert psi[2] == pytest.approx(2 / 5, abs=1e-7)
    assert psi[3] == pytest.approx(1 / 15, abs=1e-7)
    np.testing.assert_allclose(psi[:2], ETA / (15 / 8), atol=1e-7)
    np.testing.assert_allclose(psi, picce_ce_optimum(ETA, PATTERNS, PROBS, [0, 1]), atol=1e-7)
    v = 7 / 8
    v_tilde = v / (1 + v)
    assert psi[2] == pytest.approx(0.75 * (1 - v_tilde), abs=1e-7)  # the proof's formula
    assert abs(psi[2] - 0.75 * v_tilde) > 0.04  # the printed formula gives 7/20
    # Reading estimates off the optimum (spec section 6).
    readout = picce_ce_readout(torch.log(torch.tensor(psi))[None], 2)
    assert float(readout["union_coverage"][0]) == pytest.approx(v, abs=1e-6)
    assert int(readout["top_expert"][0]) == 0
    assert float(readout["top_expert_acc"][0]) == pytest.approx(0.75, abs=1e-6)
    # The top expert is the most accurate one (Condition 1 holds here).
    assert psi[2] > psi[3]


def test_theorem6_second_stationary_configuration() -> None:
    """Ranking expert 2 first gives another stationary point, ψ_{K+2} = 4/15 > ψ_{K+1} = 1/5, with a
    higher risk: the PiCCE risk is not convex."""
    init = torch.tensor([0.0, 0.0, -1.0, 1.0], dtype=DT)
    theta2 = minimise(_risk, 4, init)
    psi2 = torch.softmax(theta2, 0).numpy()
    assert psi2[3] == pytest.approx(4 / 15, abs=1e-7)
    assert psi2[2] == pytest.approx(1 / 5, abs=1e-7)
    np.testing.assert_allclose(psi2, picce_ce_optimum(ETA, PATTERNS, PROBS, [1, 0]), atol=1e-7)
    t2 = theta2.clone().requires_grad_(True)
    _risk(t2).backward()
    assert t2.grad.abs().max() < 1e-6  # stationary
    theta1 = torch.log(torch.tensor(picce_ce_optimum(ETA, PATTERNS, PROBS, [0, 1])))
    assert float(_risk(theta2)) > float(_risk(theta1)) + 1e-3


def test_picce_risk_matches_sample_average_of_the_loss() -> None:
    """The population risk equals the batch loss over an exactly weighted sample."""
    from nashmoe.defer.losses import picce_ce

    theta = torch.tensor([0.3, -0.1, 0.7, 0.2], dtype=DT)
    rows, weights = [], []
    for y, py in enumerate(ETA):
        for pattern, pp in zip(PATTERNS, PROBS):
            preds = [y if c else 1 - y for c in pattern]
            rows.append((y, preds))
            weights.append(py * pp)
    labels = torch.tensor([r[0] for r in rows])
    preds = torch.tensor([r[1] for r in rows])
    scores = theta.expand(len(rows), -1)
    loss = picce_ce(scores, labels, preds, weights=torch.tensor(weights, dtype=DT))
    torch.testing.assert_close(loss, _risk(theta))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="probability"):
        union_coverage(PATTERNS, PROBS * 2)
    with pytest.raises(ValueError, match="permutation"):
        first_correct_probs(PATTERNS, PROBS, [0, 0])
    with pytest.raises(ValueError, match="eta"):
        vanilla_ce_optimum(np.array([0.5, 0.6]), np.array([0.5]))
    with pytest.raises(ValueError, match="accuracies"):
        vanilla_ce_optimum(np.array([0.5, 0.5]), np.array([1.5]))
    with pytest.raises(ValueError, match="scores must be"):
        picce_ce_readout(torch.zeros(2, 3), 3)
