"""nashmoe.bargaining.torchjd: our solver as a TorchJD Weighting / Aggregator.

Cross-checks against TorchJD's own NashMTL (cvxpy/ECOS) on TorchJD's API (the aggregator call,
``autojac.backward`` / ``mtl_backward`` + ``jac_to_grad``, the autogram engine), then property
tests in TorchJD's style (docs: conventions.md, section 5).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("torchjd")

from torchjd import Stateful
from torchjd.aggregation import NashMTL as TorchJDNashMTL
from torchjd.autogram import Engine
from torchjd.autojac import backward, jac_to_grad, mtl_backward

from nashmoe.bargaining import NashMTL as CoreNashMTL
from nashmoe.bargaining import NashStatus
from nashmoe.bargaining.torchjd import NashMTL, NashMTLWeighting

from . import _matrix_samplers as ms
from ._asserts import gram_of, residual

# TorchJD's NashMTL builds a cvxpy problem that is not DPP (it warns on every first solve).
_CVXPY_WARNINGS = pytest.mark.filterwarnings(
    "ignore:You are solving a parameterized problem that is not DPP",
    "ignore:Solution may be inaccurate",
)


def _cosine(a: Tensor, b: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def _assert_same_vector(ours: Tensor, theirs: Tensor, rtol: float = 1e-3) -> None:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert _cosine(ours, theirs) >= 0.9999, _cosine(ours, theirs)
    assert math.isclose(float(ours.norm()), float(theirs.norm()), rel_tol=rtol)


# Matrices on which TorchJD's solver converges (its residual ‖Kα − 1/α‖/‖1/α‖ below 1e-5).
# It does not on rank-deficient and widely scaled ones (see test_converges_where_torchjd_does_not)
# and fails on single rows (cvxpy raises).
AGREEMENT = {
    "two_tasks_f32": lambda: ms.well_conditioned(2, p=6, seed=1).float(),
    "three_tasks_p10": lambda: ms.well_conditioned(3, p=10, seed=2),
    "five_tasks": lambda: ms.well_conditioned(5, seed=3),
    "ill_conditioned": lambda: ms.ill_conditioned(4, seed=5),
    "scaled_one_decade": lambda: ms.scaled(4, seed=6, decades=1.0),
    "orthogonal": lambda: ms.orthogonal(3, seed=8)[0],
    "duplicated_row": lambda: ms.duplicated(4, seed=9),
    "large": lambda: 100 * ms.well_conditioned(3, seed=11),
}


# ---------------------------------------------------------------------------------------------
# Agreement with TorchJD's NashMTL
# ---------------------------------------------------------------------------------------------


@_CVXPY_WARNINGS
@pytest.mark.parametrize("name", list(AGREEMENT))
@pytest.mark.parametrize("max_norm", [1.0, 0.0])
def test_aggregator_matches_torchjd(name: str, max_norm: float) -> None:
    matrix = AGREEMENT[name]()
    m = matrix.shape[0]
    theirs = TorchJDNashMTL(n_tasks=m, max_norm=max_norm)(matrix)
    ours = NashMTL(n_tasks=m, max_norm=max_norm)(matrix)
    _assert_same_vector(ours, theirs)
    expected_norm = min(max_norm, math.sqrt(m)) if max_norm > 0 else math.sqrt(m)
    assert math.isclose(float(ours.norm()), expected_norm, rel_tol=1e-5)


@_CVXPY_WARNINGS
def test_update_weights_every_matches_torchjd() -> None:
    matrices = [ms.well_conditioned(3, p=8, seed=20 + i) for i in range(4)]
    theirs = TorchJDNashMTL(n_tasks=3, update_weights_every=2)
    ours = NashMTL(n_tasks=3, update_weights_every=2)
    for i, matrix in enumerate(matrices):
        _assert_same_vector(ours(matrix), theirs(matrix))
        assert (ours.last_solution is None) == (i % 2 == 1)


def _two_task_model(seed: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    torch.manual_seed(seed)
    shared = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4), nn.Tanh())
    return shared, nn.Linear(4, 1), nn.Linear(4, 1)


def _grads(module: nn.Module) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in module.parameters()])


def _losses(models: tuple[nn.Module, nn.Module, nn.Module], x: Tensor, y: Tensor):
    shared, head1, head2 = models
    features = shared(x)
    losses = [
        (head1(features)[:, 0] - y[:, 0]).square().mean(),
        (head2(features)[:, 0] - y[:, 1]).abs().mean(),
    ]
    return features, losses


@_CVXPY_WARNINGS
@pytest.mark.parametrize("api", ["backward", "mtl_backward"])
def test_autojac_grads_match_torchjd(api: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 5, generator=gen)
    y = torch.randn(16, 2, generator=gen)
    grads = {}
    for name, aggregator in (("theirs", TorchJDNashMTL(n_tasks=2)), ("ours", NashMTL(n_tasks=2))):
        models = _two_task_model(seed=1)
        features, losses = _losses(models, x, y)
        if api == "backward":
            params = [p for mod in models for p in mod.parameters()]
            backward(losses)
        else:
            params = list(models[0].parameters())
            mtl_backward(losses, features=features)
        weights = jac_to_grad(params, aggregator)
        assert weights is not None and weights.shape == (2,)
        grads[name] = [_grads(mod) for mod in models]
    # The shared parameters get the aggregated vector (clipped to norm 1 here)...
    _assert_same_vector(grads["ours"][0], grads["theirs"][0])
    # ...and with mtl_backward each head gets its own task's gradient, untouched.
    for ours, theirs in zip(grads["ours"][1:], grads["theirs"][1:]):
        if api == "mtl_backward":
            torch.testing.assert_close(ours, theirs)
        else:
            _assert_same_vector(ours, theirs, rtol=1e-3)


def test_gramian_paths_agree_with_the_jacobian_path() -> None:
    """jac_to_grad(optimize_gramian_computation=True) and the autogram engine use only our
    Weighting (no Jacobian matrix): same .grad as the plain aggregator."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 5, generator=gen)
    y = torch.randn(16, 2, generator=gen)

    def run(mode: str) -> Tensor:
        models = _two_task_model(seed=2)
        model = nn.ModuleList(models)
        engine = Engine(model, batch_dim=None) if mode == "autogram" else None
        _, losses = _losses(models, x, y)
        if engine is not None:
            stacked = torch.stack(losses)
            weights = NashMTLWeighting(max_norm=1.0)(engine.compute_gramian(stacked))
            stacked.backward(weights)
        else:
            backward(losses)
            jac_to_grad(
                model.parameters(), NashMTL(), optimize_gramian_computation=mode == "gramian"
            )
        return torch.cat([_grads(mod) for mod in models])

    jacobian = run("jacobian")
    assert math.isclose(float(jacobian.norm()), 1.0, rel_tol=1e-5)
    torch.testing.assert_close(run("gramian"), jacobian)
    torch.testing.assert_close(run("autogram"), jacobian, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "matrix",
    [ms.rank_deficient(6, rank=3, seed=4), ms.scaled(4, seed=6), ms.well_conditioned(1, seed=7)],
    ids=["rank_deficient", "scaled_three_decades", "single_row"],
)
def test_converges_where_torchjd_does_not(matrix: Tensor) -> None:
    """TorchJD's sequential cvxpy solve stops far from K α = 1/α on these (relative residual 2.8
    and 6e-4; cvxpy raises on a single row); ours converges."""
    weighting = NashMTLWeighting(max_norm=0.0)
    weights = weighting(gram_of(matrix))
    assert weighting.last_solution is not None
    assert int(weighting.last_solution.status) == NashStatus.OK
    assert float(residual(gram_of(matrix), weights)) <= 1e-6
    gains = matrix @ (weights @ matrix)
    assert bool((gains > 0).all())


# ---------------------------------------------------------------------------------------------
# Properties (TorchJD style)
# ---------------------------------------------------------------------------------------------

FEASIBLE = {
    "well_conditioned": ms.well_conditioned(4, seed=30),
    "ill_conditioned": ms.ill_conditioned(4, seed=31),
    "rank_deficient": ms.rank_deficient(8, rank=3, seed=32),
    "scaled": ms.scaled(5, seed=33),
    "single_row": ms.well_conditioned(1, seed=34),
    "float32": ms.well_conditioned(3, seed=35).float(),
}
EDGE = {
    "zero_row": ms.with_zero_row(3, seed=36),
    "torchjd_edge_case": torch.tensor([[0.0, 0.0], [0.0, 1.0]]),
    "all_zero": torch.zeros(3, 4),
    "opposing": ms.opposing(5, seed=37),
    "three_at_120": ms.three_at_120(),
    "near_opposing": ms.near_opposing(1e-9),
    "no_rows": torch.zeros(0, 4),
}


@pytest.mark.parametrize("name", list(FEASIBLE) + list(EDGE))
def test_expected_structure(name: str) -> None:
    matrix = {**FEASIBLE, **EDGE}[name]
    for max_norm in (1.0, 0.0):
        vector = NashMTL(max_norm=max_norm)(matrix)
        assert vector.shape == matrix.shape[1:] and vector.dtype == matrix.dtype
        assert bool(vector.isfinite().all())
        weights = NashMTLWeighting(max_norm=max_norm)(gram_of(matrix))
        assert weights.shape == matrix.shape[:1] and bool(weights.isfinite().all())


@pytest.mark.parametrize("name", list(FEASIBLE))
def test_non_conflicting_improves_every_task(name: str) -> None:
    matrix = FEASIBLE[name].double()
    aggregator = NashMTL(max_norm=0.0, tol=1e-10)
    vector = aggregator(matrix)
    solution = aggregator.last_solution
    assert solution is not None and int(solution.status) == NashStatus.OK
    gains = matrix @ vector
    assert bool((gains > 0).all())
    torch.testing.assert_close(gains, 1.0 / solution.alpha, rtol=1e-6, atol=0.0)  # ⟨g_i, d⟩ = 1/α_i
    assert math.isclose(float(vector.norm()), math.sqrt(matrix.shape[0]), rel_tol=1e-8)
    # Clipping only rescales.
    clipped = NashMTL(max_norm=0.5, tol=1e-10)(matrix)
    torch.testing.assert_close(clipped, vector * (0.5 / float(vector.norm())))


@pytest.mark.parametrize("name", ["well_conditioned", "rank_deficient", "scaled"])
def test_permutation_invariant(name: str) -> None:
    matrix = FEASIBLE[name]
    aggregator = NashMTL()  # one stateful aggregator across calls, as TorchJD's assert does
    weighting = NashMTLWeighting()
    vector = aggregator(matrix)
    weights = weighting(gram_of(matrix))
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        perm = torch.randperm(matrix.shape[0], generator=gen)
        torch.testing.assert_close(aggregator(matrix[perm]), vector, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(
            weighting(gram_of(matrix[perm])), weights[perm], rtol=1e-4, atol=0
        )


def test_scale_invariant_not_linear() -> None:
    """The Nash direction is invariant to per-task scaling (not linear under scaling, unlike
    most TorchJD aggregators): weights scale by 1/c."""
    matrix = FEASIBLE["well_conditioned"]
    scales = torch.tensor([1e-3, 0.5, 7.0, 1e3], dtype=matrix.dtype)
    weighting = NashMTLWeighting(max_norm=0.0, tol=1e-10)
    weights = weighting(gram_of(matrix))
    scaled = scales[:, None] * matrix
    torch.testing.assert_close(weighting(gram_of(scaled)), weights / scales, rtol=1e-6, atol=0)
    torch.testing.assert_close(NashMTL()(scaled), NashMTL()(matrix), rtol=1e-6, atol=1e-9)


def test_non_differentiable() -> None:
    matrix = torch.ones(3, 5, requires_grad=True)
    vector = NashMTL(n_tasks=3)(matrix)
    assert not vector.requires_grad
    with pytest.raises(RuntimeError):
        vector.backward(torch.ones_like(vector))
    gram = gram_of(FEASIBLE["well_conditioned"]).requires_grad_(True)
    assert not NashMTLWeighting()(gram).requires_grad


def test_stateful_and_reset_reproducibility() -> None:
    aggregator = NashMTL(n_tasks=3, update_weights_every=3)
    assert isinstance(aggregator, Stateful) and isinstance(aggregator.gramian_weighting, Stateful)
    matrices = [ms.well_conditioned(3, p=5, seed=40 + i) for i in range(4)]
    matrices.insert(3, ms.opposing(5, seed=44)[[0, 1, 0]])  # solved at step 3, infeasible
    first = [aggregator(m) for m in matrices]
    assert aggregator.num_fallbacks == 1
    aggregator.reset()
    assert aggregator.num_fallbacks == 0 and aggregator.last_solution is None
    second = [aggregator(m) for m in matrices]
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_weights_are_those_of_our_nash_mtl() -> None:
    matrix = ms.rank_deficient(6, rank=4, seed=50)
    core = CoreNashMTL()(matrix)
    weighting = NashMTLWeighting(max_norm=0.0)
    torch.testing.assert_close(weighting(gram_of(matrix)), core.weights)
    torch.testing.assert_close(NashMTL(max_norm=0.0)(matrix), core.gradient)


@pytest.mark.parametrize("bad", [ms.opposing(6, seed=51), ms.with_zero_row(2, seed=51)[:, :6]])
def test_fallback_to_last_weights_is_counted(bad: Tensor) -> None:
    aggregator = NashMTL(max_norm=0.0)
    aggregator(ms.well_conditioned(2, p=6, seed=52))
    good_weights = aggregator.gramian_weighting.core.alpha.clone()
    vector = aggregator(bad)
    solution = aggregator.last_solution
    assert solution is not None
    assert int(solution.status) in (NashStatus.INFEASIBLE, NashStatus.DEGENERATE)
    assert aggregator.last_fallback and aggregator.num_fallbacks == 1
    torch.testing.assert_close(vector, good_weights @ bad)
    uniform = NashMTL(max_norm=0.0, fallback="uniform")(bad)
    torch.testing.assert_close(uniform, bad.mean(dim=0))


def test_state_dict_round_trip() -> None:
    matrices = [ms.well_conditioned(3, seed=60 + i) for i in range(3)]
    a = NashMTL(update_weights_every=2)
    a(matrices[0])
    b = NashMTL(update_weights_every=2)
    b.load_state_dict(a.state_dict())
    for m in matrices[1:]:
        torch.testing.assert_close(a(m), b(m), rtol=0, atol=0)


def test_settings_mirror_torchjd() -> None:
    aggregator = NashMTL(2, 1.5, 2, optim_niter=5)
    assert (aggregator.n_tasks, aggregator.max_norm) == (2, 1.5)
    assert aggregator.update_weights_every == 2
    assert aggregator.max_iter == aggregator.optim_niter == 5
    aggregator.optim_niter = 7
    aggregator.max_norm = 0
    aggregator.update_weights_every = 1
    weighting = aggregator.gramian_weighting
    assert (weighting.max_iter, weighting.max_norm, weighting.update_weights_every) == (7, 0.0, 1)
    assert NashMTLWeighting(max_norm=None).max_norm == 0.0
    assert repr(NashMTL(n_tasks=2, max_norm=1.5, update_weights_every=2, optim_niter=5)) == (
        "NashMTL(n_tasks=2, max_norm=1.5, update_weights_every=2, max_iter=5, tol=1e-06, "
        "warm_start=True, fallback='last')"
    )
    assert str(aggregator) == "NashMTL"
    assert repr(NashMTLWeighting()).startswith("NashMTLWeighting(n_tasks=None, max_norm=1.0")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_tasks": 0}, "n_tasks"),
        ({"max_norm": -1.0}, "max_norm"),
        ({"max_norm": math.inf}, "max_norm"),
        ({"update_weights_every": 0}, "update_weights_every"),
        ({"max_iter": 0}, "max_iter"),
        ({"max_iter": 5, "optim_niter": 6}, "disagree"),
        ({"fallback": "zero"}, "fallback"),
        ({"tol": -1.0}, "tol"),
    ],
)
def test_bad_settings_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NashMTL(**kwargs)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="n_tasks"):
        NashMTL(n_tasks=3)(torch.ones(2, 4))
    with pytest.raises(ValueError, match="NaN or inf"):
        NashMTL()(torch.tensor([[1.0, math.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="floating-point"):
        NashMTL()(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="square"):
        NashMTLWeighting()(torch.ones(2, 3))
    with pytest.raises(ValueError):
        NashMTL()(torch.ones(3))  # TorchJD's own check: not a matrix
    aggregator = NashMTL()
    aggregator(torch.ones(3, 4))
    with pytest.raises(ValueError, match="reset"):
        aggregator(torch.ones(2, 4))


def test_import_without_torchjd_names_the_extra_and_no_cvxpy_needed() -> None:
    code = (
        "import sys\n"
        "sys.modules['torchjd'] = None\n"
        "import nashmoe.bargaining\n"
        "try:\n"
        "    import nashmoe.bargaining.torchjd\n"
        "except ImportError as err:\n"
        "    print(err)\n"
        "del sys.modules['torchjd']\n"
        "sys.modules['cvxpy'] = sys.modules['ecos'] = None\n"
        "import torch\n"
        "from nashmoe.bargaining.torchjd import NashMTL\n"
        "print('norm', round(float(NashMTL()(torch.eye(3)).norm()), 5))\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert "pip install 'nashmoe[torchjd]'" in out.stdout, out.stdout + out.stderr
    assert "norm 1.0" in out.stdout, out.stdout + out.stderr
