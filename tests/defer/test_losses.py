"""The multi-expert surrogates against naive per-sample references, equivalences, continuity."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from nashmoe.defer.losses import (
    LOSSES,
    correct_mask,
    loss_family,
    multi_expert_ce,
    multi_expert_ova,
    picce_ce,
    picce_ova,
)

DT = torch.float64


def phi(z: float) -> float:
    """Logistic loss log(1 + e^{-z}), naively but stably."""
    return math.log1p(math.exp(-z)) if z > -30 else -z + math.log1p(math.exp(z))


def log_softmax_row(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def naive(name: str, scores, labels, preds, mask=None) -> list[float]:
    """Per-sample losses written straight from the definitions (spec sections 2 and 4)."""
    out = []
    n, total = scores.shape
    num_experts = preds.shape[1]
    k = total - num_experts
    for i in range(n):
        th = [float(v) for v in scores[i]]
        y = int(labels[i])
        present = [True] * num_experts if mask is None else [bool(v) for v in mask[i]]
        corr = [present[j] and int(preds[i, j]) == y for j in range(num_experts)]
        logp = log_softmax_row(th)
        if name == "ce":
            val = -logp[y] - sum(logp[k + j] for j in range(num_experts) if corr[j])
        elif name == "picce_ce":
            val = -logp[y]
            cs = [j for j in range(num_experts) if corr[j]]
            if cs:
                jhat = max(cs, key=lambda j: th[k + j])
                val += -logp[k + jhat]
        else:
            val = phi(th[y]) + sum(phi(-th[c]) for c in range(k) if c != y)
            if name == "ova":
                for j in range(num_experts):
                    if present[j]:
                        val += phi(th[k + j]) if corr[j] else phi(-th[k + j])
            else:  # picce_ova
                cs = [j for j in range(num_experts) if corr[j]]
                jhat = max(cs, key=lambda j: th[k + j]) if cs else None
                for j in range(num_experts):
                    if not present[j]:
                        continue
                    val += phi(th[k + j]) if j == jhat else phi(-th[k + j])
        out.append(val)
    return out


def random_batch(n: int, k: int, num_experts: int, seed: int, p_correct: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, k + num_experts, generator=g, dtype=DT) * 2
    labels = torch.randint(0, k, (n,), generator=g)
    wrong = (labels[:, None] + torch.randint(1, k, (n, num_experts), generator=g)) % k
    right = torch.rand(n, num_experts, generator=g) < p_correct
    preds = torch.where(right, labels[:, None].expand(-1, num_experts), wrong)
    return scores, labels, preds


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("num_experts", [1, 3, 6])
def test_against_naive(name: str, num_experts: int) -> None:
    scores, labels, preds = random_batch(40, 5, num_experts, seed=num_experts)
    got = LOSSES[name](scores, labels, preds, reduction="none")
    want = torch.tensor(naive(name, scores, labels, preds), dtype=DT)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(LOSSES[name](scores, labels, preds), want.mean())


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_against_naive_with_mask_and_weights(name: str) -> None:
    scores, labels, preds = random_batch(30, 4, 5, seed=11, p_correct=0.6)
    mask = torch.rand(30, 5, generator=torch.Generator().manual_seed(3)) < 0.6
    mask[0] = False  # a row with every expert missing
    got = LOSSES[name](scores, labels, preds, expert_mask=mask, reduction="none")
    want = torch.tensor(naive(name, scores, labels, preds, mask), dtype=DT)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    w = torch.rand(30, dtype=DT, generator=torch.Generator().manual_seed(4))
    weighted = LOSSES[name](scores, labels, preds, expert_mask=mask, weights=w)
    torch.testing.assert_close(weighted, (w * want).sum() / w.sum())
    summed = LOSSES[name](scores, labels, preds, expert_mask=mask, reduction="sum")
    torch.testing.assert_close(summed, want.sum())


@pytest.mark.parametrize(
    ("picce", "vanilla"), [(picce_ce, multi_expert_ce), (picce_ova, multi_expert_ova)]
)
def test_single_expert_picce_equals_vanilla(picce, vanilla) -> None:
    scores, labels, preds = random_batch(64, 6, 1, seed=5)
    torch.testing.assert_close(
        picce(scores, labels, preds, reduction="none"),
        vanilla(scores, labels, preds, reduction="none"),
    )


def test_picce_ce_min_form() -> None:
    """PiCCE-CE = −log ψ_y + min_{j∈C} (−log ψ_{K+j}) (0 when C is empty)."""
    k = 4
    scores, labels, preds = random_batch(50, k, 5, seed=8)
    logp = torch.log_softmax(scores, 1)
    corr = correct_mask(labels, preds)
    expert_nll = (-logp[:, k:]).masked_fill(~corr, math.inf).min(1).values
    expert_nll = torch.where(corr.any(1), expert_nll, torch.zeros_like(expert_nll))
    want = -logp.gather(1, labels[:, None]).squeeze(1) + expert_nll
    torch.testing.assert_close(picce_ce(scores, labels, preds, reduction="none"), want)


def test_picce_ova_closed_form() -> None:
    """PiCCE-OvA = Σ_{a≠y} softplus(θ_a) + softplus(−θ_y) − 1[C≠∅]·max_{j∈C} θ_{K+j}."""
    k = 3
    scores, labels, preds = random_batch(50, k, 4, seed=9)
    corr = correct_mask(labels, preds)
    sp = torch.nn.functional.softplus
    not_y = torch.ones_like(scores, dtype=torch.bool)
    not_y[torch.arange(50), labels] = False
    base = (sp(scores) * not_y).sum(1) + sp(-scores.gather(1, labels[:, None]).squeeze(1))
    best = scores[:, k:].masked_fill(~corr, -math.inf).max(1).values
    best = torch.where(corr.any(1), best, torch.zeros_like(best))
    torch.testing.assert_close(picce_ova(scores, labels, preds, reduction="none"), base - best)


@pytest.mark.parametrize("fn", [picce_ce, picce_ova])
def test_gradient_reaches_only_the_highest_scoring_correct_expert(fn) -> None:
    k = 3
    scores = torch.tensor([[0.1, 0.2, 0.3, 2.0, 1.0, 3.0, 0.5]], dtype=DT, requires_grad=True)
    labels = torch.tensor([1])
    preds = torch.tensor([[1, 1, 0, 1]])  # experts 0, 1, 3 correct; expert 2 (highest) is wrong
    fn(scores, labels, preds).backward()
    grad = scores.grad[0, k:]
    if fn is picce_ce:
        # Only the selected expert (0, score 2.0) gets the −1 of its own term; the others only the
        # softmax part, which is positive.
        assert grad[0] < 0 < grad[1] and grad[2] > 0 and grad[3] > 0
    else:
        # OvA: selected expert pulled up, correct non-selected experts pushed down like wrong ones.
        assert grad[0] < 0
        for j in (1, 2, 3):
            torch.testing.assert_close(grad[j], torch.sigmoid(scores[0, k + j].detach()))


@pytest.mark.parametrize("fn", [picce_ce, picce_ova])
def test_tie_gives_the_same_value_whichever_expert(fn) -> None:
    k = 3
    labels = torch.tensor([0])
    preds = torch.tensor([[0, 0, 2]])
    base = torch.tensor([[0.3, -0.2, 0.1, 1.5, 1.5, 0.7]], dtype=DT)
    swapped = base.clone()
    swapped[0, k : k + 2] = swapped[0, k : k + 2].flip(0)
    torch.testing.assert_close(fn(base, labels, preds), fn(swapped, labels, preds))
    # Nudging either tied expert up by ε changes the loss by O(ε) (no jump).
    for j in (0, 1):
        bumped = base.clone()
        bumped[0, k + j] += 1e-7
        assert abs(float(fn(bumped, labels, preds) - fn(base, labels, preds))) < 1e-6


@pytest.mark.parametrize("fn", [picce_ce, picce_ova])
def test_finite_differences_along_a_path_crossing_a_tie(fn) -> None:
    """θ(t): expert 0's score rises through expert 1's at t = 0; the loss is continuous and its
    one-sided slopes match the autograd gradient of whichever expert is selected."""
    labels = torch.tensor([1])
    preds = torch.tensor([[1, 1]])

    def theta(t: float) -> torch.Tensor:
        return torch.tensor([[0.2, -0.4, 1.0 + t, 1.0 - 0.5 * t]], dtype=DT)

    def f(t: float) -> float:
        return float(fn(theta(t), labels, preds))

    ts = torch.linspace(-0.2, 0.2, 81, dtype=DT).tolist()
    vals = [f(t) for t in ts]
    jumps = [abs(a - b) for a, b in itertools.pairwise(vals)]
    assert max(jumps) < 0.05  # step 0.005, slopes O(1): no discontinuity
    h = 1e-6
    direction = torch.tensor([[0.0, 0.0, 1.0, -0.5]], dtype=DT)
    for t0 in (-0.1, 0.1):
        x = theta(t0).requires_grad_(True)
        fn(x, labels, preds).backward()
        analytic = float((x.grad * direction).sum())
        numeric = (f(t0 + h) - f(t0 - h)) / (2 * h)
        assert abs(analytic - numeric) < 1e-6
    assert abs(f(h) - f(-h)) < 1e-5  # continuous at the tie itself


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("case", ["none_correct", "all_missing", "all_correct", "extreme"])
def test_degenerate_rows_finite(name: str, case: str) -> None:
    k, num_experts, n = 3, 4, 5
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(n, k + num_experts, dtype=torch.float32, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1])
    mask = None
    if case == "none_correct":
        preds = ((labels + 1) % k)[:, None].expand(-1, num_experts).clone()
    elif case == "all_missing":
        preds = labels[:, None].expand(-1, num_experts).clone()
        mask = torch.zeros(n, num_experts, dtype=torch.bool)
    elif case == "all_correct":
        preds = labels[:, None].expand(-1, num_experts).clone()
    else:
        preds = labels[:, None].expand(-1, num_experts).clone()
        preds[:, ::2] = (labels[:, None] + 1) % k
        scores = scores * 1e4
    scores.requires_grad_(True)
    loss = LOSSES[name](scores, labels, preds, expert_mask=mask)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(scores.grad).all()
    if case == "all_missing" and name.startswith("picce"):
        base = "ce" if name == "picce_ce" else "ova"
        # No expert present: PiCCE has no expert term, like the vanilla loss with every mask off.
        torch.testing.assert_close(loss, LOSSES[base](scores, labels, preds, expert_mask=mask))


def test_empty_correct_set_has_no_expert_term_in_picce_ce() -> None:
    scores = torch.tensor([[1.0, 0.0, 2.0, 3.0]], dtype=DT)
    labels = torch.tensor([0])
    preds = torch.tensor([[1, 1]])
    torch.testing.assert_close(picce_ce(scores, labels, preds), -torch.log_softmax(scores, 1)[0, 0])


def test_bad_inputs() -> None:
    scores, labels, preds = random_batch(4, 3, 2, seed=0)
    with pytest.raises(ValueError, match="scores must be"):
        multi_expert_ce(scores[0], labels, preds)
    with pytest.raises(ValueError, match="expert_preds must be"):
        picce_ce(scores, labels, preds[:2])
    with pytest.raises(ValueError, match="labels must"):
        picce_ova(scores, labels[:3], preds)
    with pytest.raises(ValueError, match="labels must lie"):
        multi_expert_ova(scores, labels + 3, preds)
    with pytest.raises(ValueError, match="expert_mask"):
        picce_ce(scores, labels, preds, expert_mask=torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="floating"):
        picce_ce(scores.long(), labels, preds)
    with pytest.raises(ValueError, match="reduction"):
        picce_ce(scores, labels, preds, reduction="avg")
    with pytest.raises(ValueError, match="weights"):
        picce_ce(scores, labels, preds, weights=torch.ones(3, dtype=DT))
    with pytest.raises(ValueError, match="K >= 2"):
        picce_ce(scores[:, :3], labels, preds)
    with pytest.raises(ValueError, match="unknown loss"):
        loss_family("hinge")
    assert loss_family("picce_ova") == "ova" and loss_family("ce") == "ce"
