"""The merge-and-apply tiled over the hidden dimension against plain autograd and the
unit-chunked function (src/nashmoe/moe/tiled.py)."""

from __future__ import annotations

import pytest
import torch

import nashmoe.moe.tiled as tiled
from nashmoe.moe import MoEConfig, MoEFeedForward
from nashmoe.moe.ffn import activation_fn, merged_ffn
from nashmoe.moe.fused import merge_and_apply
from nashmoe.moe.layout import ExpertLayout
from nashmoe.moe.tiled import MIN_TILE_ROWS, TILE_BYTES, plan_tiles, tiled_merge_and_apply

D = torch.float64


def _operands(d, f, n, u, t, *, glu, bias, with_base, with_beta, dtype=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    layout = ExpertLayout(d, f, glu=glu, bias=bias)
    vectors = {
        k: (torch.randn(n, *s, generator=g, dtype=dtype) / d**0.5).requires_grad_()
        for k, s in layout.shapes.items()
    }
    base = (
        {
            k: (torch.randn(*s, generator=g, dtype=dtype) / d**0.5).requires_grad_()
            for k, s in layout.shapes.items()
        }
        if with_base
        else None
    )
    coeff = torch.rand(u, n, generator=g, dtype=dtype).requires_grad_()
    beta = torch.randn(u, generator=g, dtype=dtype).requires_grad_() if with_beta else None
    x = torch.randn(u, t, d, generator=g, dtype=dtype).requires_grad_()
    return x, coeff, beta, base, vectors


def _plain(x, coeff, beta, base, vectors, activation):
    """Every unit's merged expert materialised, plain autograd (the reference)."""
    n, u = coeff.shape[1], coeff.shape[0]
    w = {}
    for k, v in vectors.items():
        merged = coeff @ v.reshape(n, -1)
        if base is not None:
            b = base[k].reshape(1, -1)
            merged = merged + (b if beta is None else beta[:, None] * b)
        w[k] = merged.view(u, *v.shape[1:])
    return merged_ffn(x, w, activation_fn(activation))


def _inputs(x, coeff, beta, base, vectors):
    return [
        x,
        coeff,
        *([] if beta is None else [beta]),
        *vectors.values(),
        *([] if base is None else base.values()),
    ]


def _check(out, ref, inputs, **tol):
    torch.testing.assert_close(out, ref, **tol)
    weight = torch.randn_like(ref)
    got = torch.autograd.grad((out * weight).sum(), inputs)
    want = torch.autograd.grad((ref * weight).sum(), inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)


# ---------------------------------------------------------------- the tile plan
@pytest.mark.parametrize(
    "units, hidden, row_bytes, budget",
    [
        (16, 1024, 2048, 4 * 2**20),
        (64, 1024, 2048, 4 * 2**20),
        (4096, 512, 1024, 2**20),
        (7, 10, 96, 1),
        (3, 200, 64, 10**9),
        (1, 1, 8, 1),
    ],
)
def test_plan_tiles_covers_and_respects_the_budget(units, hidden, row_bytes, budget):
    chunk, rows = plan_tiles(units, hidden, row_bytes, budget)
    assert 1 <= chunk <= units and 1 <= rows <= hidden
    floor = min(hidden, MIN_TILE_ROWS)
    tile = chunk * rows * row_bytes
    # within the budget, or within twice it at the floor of rows, or the smallest tile there is
    assert tile <= budget or (rows <= floor and tile <= 2 * budget) or (chunk == 1 and rows == 1)
    if chunk == units:
        assert rows >= floor


def test_plan_tiles_at_the_benchmark_shapes():
    """The plans the layer benchmark runs (4 MiB, at least 256 rows, float32, w_in + w_out):
    16 units (T=256) in one chunk of 256-row tiles; 64 units (T=64) in chunks of 16 (d=256) or
    32 (d=128) units."""
    assert (TILE_BYTES, MIN_TILE_ROWS) == (4 * 2**20, 256)
    assert plan_tiles(16, 1024, 2 * 256 * 4, TILE_BYTES) == (16, 256)
    assert plan_tiles(64, 1024, 2 * 256 * 4, TILE_BYTES) == (16, 256)
    assert plan_tiles(16, 512, 2 * 128 * 4, TILE_BYTES) == (16, 256)
    assert plan_tiles(64, 512, 2 * 128 * 4, TILE_BYTES) == (32, 256)
    assert plan_tiles(4096, 1024, 2 * 256 * 4, TILE_BYTES) == (16, 256)


# ---------------------------------------------------------------- against plain autograd
@pytest.mark.parametrize("glu, bias", [(False, False), (True, True), (False, True)])
@pytest.mark.parametrize("with_base, with_beta", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize(
    "budget, plan",
    [(None, (5, 150)), (1, (1, 1)), (5 * 64 * 64, (5, 64)), (2 * 64 * 64, (4, 64))],
    ids=["one-tile", "tiny", "all-units-3-tiles", "unit-chunks"],
)
@pytest.mark.parametrize("keep", [False, True], ids=["rebuilt", "kept"])
def test_tiled_matches_plain_autograd(
    glu, bias, with_base, with_beta, budget, plan, keep, monkeypatch
):
    """With tiles of at least 64 rows and f = 150: the budgets give one tile, one row per tile
    and unit, three f-tiles of all five units (64, 64, 22 rows: a remainder), and chunks of 4
    and 1 units (the plans are for w_in/w_out only, 64 bytes per unit and row; GLU and biases
    give other plans); the merged weights rebuilt in the backward pass or kept from the
    forward."""
    monkeypatch.setattr(tiled, "MIN_TILE_ROWS", 64)
    d, f, n, u, t = 4, 150, 3, 5, 3
    ops = _operands(d, f, n, u, t, glu=glu, bias=bias, with_base=with_base, with_beta=with_beta)
    x, coeff, beta, base, vectors = ops
    if not glu and not bias:
        assert plan_tiles(u, f, 2 * d * 8, TILE_BYTES if budget is None else budget) == plan
    out = tiled_merge_and_apply(
        x,
        coeff,
        base,
        vectors,
        activation="gelu",
        max_chunk_bytes=budget,
        base_coeff=beta,
        keep=keep,
    )
    _check(out, _plain(*ops, "gelu"), _inputs(*ops))


def _plain_direction(alpha, base, vectors):
    return {
        k: torch.einsum("n,n...->...", alpha, v) - alpha.sum() * base[k] for k, v in vectors.items()
    }


@pytest.mark.parametrize("glu, bias", [(False, False), (True, True)])
@pytest.mark.parametrize(
    "budget", [None, 1, 5 * 64 * 64, 2 * 64 * 64], ids=["one-tile", "tiny", "3-tiles", "chunks"]
)
@pytest.mark.parametrize("tile_hidden", [True, False])
@pytest.mark.parametrize("keep_bytes", [0, None], ids=["rebuilt", "kept"])
def test_direction_matches_plain_autograd(glu, bias, budget, tile_hidden, keep_bytes, monkeypatch):
    """merge_and_apply(direction=a): the output and Σ_i a_i (V_i − B) per tensor, and every
    gradient through both (the direction's folded into the merge's gradient tiles on the tiled
    path, over remainder tiles and unit chunks; a plain expression on the unit-chunked path),
    equal plain autograd, with the merged weights rebuilt or kept (the CPU default at this
    size); a gets no gradient."""
    monkeypatch.setattr(tiled, "MIN_TILE_ROWS", 64)
    d, f, n, u, t = 4, 150, 3, 5, 3
    ops = _operands(d, f, n, u, t, glu=glu, bias=bias, with_base=True, with_beta=True)
    x, coeff, beta, base, vectors = ops
    alpha = torch.rand(n, dtype=D, generator=torch.Generator().manual_seed(3))
    out, delta = merge_and_apply(
        x,
        coeff,
        base,
        vectors,
        activation="gelu",
        max_chunk_bytes=budget if tile_hidden else None,
        base_coeff=beta,
        direction=alpha,
        tile_hidden=tile_hidden,
        keep_merged_bytes=keep_bytes,
    )
    ref = _plain(*ops, "gelu")
    ref_delta = _plain_direction(alpha, base, vectors)
    torch.testing.assert_close(out, ref)
    assert list(delta) == list(vectors)
    for k in vectors:
        torch.testing.assert_close(delta[k], ref_delta[k])
    inputs = _inputs(*ops)
    gen = torch.Generator().manual_seed(4)
    weights = [torch.randn(r.shape, dtype=D, generator=gen) for r in [ref, *ref_delta.values()]]

    def loss(o, dl):
        return sum((a * w).sum() for a, w in zip([o, *dl.values()], weights))

    got = torch.autograd.grad(loss(out, delta), inputs)
    want = torch.autograd.grad(loss(ref, ref_delta), inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_direction_unused_gradient_and_bad_input():
    """A direction nobody uses leaves the other gradients as without it; a direction without a
    base, or of the wrong length, is refused by name."""
    ops = _operands(4, 40, 3, 2, 3, glu=False, bias=True, with_base=True, with_beta=True)
    x, coeff, beta, base, vectors = ops
    alpha = torch.rand(3, dtype=D)
    out, _ = merge_and_apply(
        x, coeff, base, vectors, activation="gelu", base_coeff=beta, direction=alpha
    )
    _check(out, _plain(*ops, "gelu"), _inputs(*ops))
    with pytest.raises(ValueError, match=r"direction .* needs a base"):
        merge_and_apply(x, coeff, None, vectors, activation="gelu", direction=alpha)
    with pytest.raises(ValueError, match=r"direction must have shape \[N\] = \[3\]"):
        merge_and_apply(x, coeff, base, vectors, activation="gelu", direction=alpha[:2])


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "silu"])
def test_tiled_activations(activation):
    ops = _operands(
        5, 70, 2, 3, 4, glu=activation == "silu", bias=True, with_base=True, with_beta=False
    )
    out = tiled_merge_and_apply(
        *ops[:2], ops[3], ops[4], activation=activation, max_chunk_bytes=3 * 32 * 11 * 8
    )
    _check(out, _plain(*ops, activation), _inputs(*ops))


def test_tiled_gradcheck():
    x, coeff, beta, base, vectors = _operands(
        3, 5, 2, 3, 2, glu=True, bias=True, with_base=True, with_beta=True
    )
    names = list(vectors)

    def f(x, coeff, beta, *tensors):
        vec = dict(zip(names, tensors[: len(names)]))
        b = dict(zip(names, tensors[len(names) :]))
        return tiled_merge_and_apply(
            x, coeff, b, vec, activation="gelu", max_chunk_bytes=1, base_coeff=beta
        )

    assert torch.autograd.gradcheck(f, (x, coeff, beta, *vectors.values(), *base.values()))


def test_tiled_without_input_or_coefficient_gradients():
    """Frozen router / no input gradient: the other gradients are unchanged."""
    x, coeff, _, base, vectors = _operands(
        4, 80, 3, 4, 3, glu=False, bias=True, with_base=True, with_beta=False
    )
    x, coeff = x.detach(), coeff.detach()
    out = tiled_merge_and_apply(x, coeff, base, vectors, activation="gelu", max_chunk_bytes=1)
    ref = _plain(x, coeff, None, base, vectors, "gelu")
    _check(out, ref, [*vectors.values(), *base.values()])


# ---------------------------------------------------------------- against the unit-chunked path
@pytest.mark.parametrize("with_beta", [False, True])
def test_tiled_equals_unit_chunked_in_float32(with_beta):
    """merge_and_apply's default (tiled) against ``tile_hidden=False``, merged weights rebuilt
    and kept, float32, several tiles and chunks (with base_coeff: ``[c | beta] [V; B]`` in the
    unit-chunked function)."""
    ops = _operands(
        16,
        96,
        4,
        9,
        8,
        glu=True,
        bias=True,
        with_base=True,
        with_beta=with_beta,
        dtype=torch.float32,
    )
    x, coeff, beta, base, vectors = ops
    weight = torch.randn(9, 8, 16)
    results = []
    for tile, keep in ((None, None), (False, 0), (False, 2**30)):
        out = merge_and_apply(
            x,
            coeff,
            base,
            vectors,
            activation="silu",
            base_coeff=beta,
            max_chunk_bytes=20_000,
            tile_hidden=tile,
            keep_merged_bytes=keep,
        )
        results.append([out, *torch.autograd.grad((out * weight).sum(), _inputs(*ops))])
    # float32, different summation orders: a coefficient gradient sums over all 4,720 weights
    # of a unit (measured 3.2e-5 apart at |g| ≈ 0.2, over the default atol of 1e-5)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("keep", [0, 2**30], ids=["rebuild", "keep"])
def test_unit_chunked_base_coeff_matches_plain_autograd(keep):
    """The unit-chunked function with a dense merge and base_coeff (float64)."""
    ops = _operands(5, 12, 3, 7, 3, glu=False, bias=True, with_base=True, with_beta=True)
    x, coeff, beta, base, vectors = ops
    out = merge_and_apply(
        x,
        coeff,
        base,
        vectors,
        activation="gelu",
        base_coeff=beta,
        max_chunk_bytes=1,
        tile_hidden=False,
        keep_merged_bytes=keep,
    )
    _check(out, _plain(*ops, "gelu"), _inputs(*ops))


def test_merge_and_apply_routes_to_the_tiled_path(monkeypatch):
    """Dense float merges on the CPU go tiled, keeping the merged weights within the budget
    (16 MiB by default); sparse merges and bf16 do not."""
    import nashmoe.moe.fused as fused

    calls = []
    real = fused.tiled_merge_and_apply
    monkeypatch.setattr(
        fused, "tiled_merge_and_apply", lambda *a, **k: calls.append(k["keep"]) or real(*a, **k)
    )
    x, coeff, _, base, vectors = _operands(
        4, 8, 3, 2, 2, glu=False, bias=False, with_base=True, with_beta=False, dtype=torch.float32
    )
    assert fused.keep_merged_budget("cpu") == 16 * 2**20
    assert fused.keep_merged_budget("cuda") == 2 * 2**30
    merge_and_apply(x, coeff, base, vectors, activation="gelu")
    merge_and_apply(x, coeff, base, vectors, activation="gelu", keep_merged_bytes=0)
    per_call = 2 * (2 * 4 * 8) * 4  # two units' w_in and w_out, float32
    merge_and_apply(x, coeff, base, vectors, activation="gelu", keep_merged_bytes=per_call)
    merge_and_apply(x, coeff, base, vectors, activation="gelu", keep_merged_bytes=per_call - 1)
    assert calls == [True, False, True, False]
    merge_and_apply(
        x, coeff[:, :2], base, vectors, activation="gelu", index=torch.tensor([[0, 1], [1, 2]])
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        merge_and_apply(x, coeff, base, vectors, activation="gelu")
    assert len(calls) == 4
    # the unit-chunked function keeps on the CPU only when given a budget
    kept = []
    real_apply = fused._MergeAndApply.apply
    monkeypatch.setattr(
        fused._MergeAndApply, "apply", lambda *a: kept.append(a[7]) or real_apply(*a)
    )
    merge_and_apply(x, coeff, base, vectors, activation="gelu", tile_hidden=False)
    merge_and_apply(
        x, coeff, base, vectors, activation="gelu", tile_hidden=False, keep_merged_bytes=2**30
    )
    alpha = torch.rand(3)
    merge_and_apply(x, coeff, base, vectors, activation="gelu", tile_hidden=False, direction=alpha)
    assert kept == [False, True, False]


def test_merge_plan():
    """The path and the keep decision by device, dtype and budget (merge_and_apply's and the
    benchmark's cost model's): the CPU keeps within 16 MiB on the tiled path only; off the CPU
    kept weights take the unit-chunked path (one product), unkept float ones the tiled path."""
    from nashmoe.moe.fused import merge_plan

    mib, f32, bf16 = 2**20, torch.float32, torch.bfloat16
    assert merge_plan(8 * mib, "cpu", f32) == (True, True)
    assert merge_plan(32 * mib, "cpu", f32) == (True, False)
    assert merge_plan(8 * mib, "cpu", f32, keep_merged_bytes=0) == (True, False)
    assert merge_plan(8 * mib, "cpu", f32, tile_hidden=False) == (False, False)
    assert merge_plan(8 * mib, "cpu", f32, tile_hidden=False, keep_merged_bytes=mib * 8) == (
        False,
        True,
    )
    assert merge_plan(8 * mib, "cpu", bf16) == (False, False)
    assert merge_plan(8 * mib, "cpu", f32, sparse=True) == (False, False)
    assert merge_plan(8 * mib, "cuda", f32) == (False, True)
    assert merge_plan(8 * mib, "cuda", f32, keep_merged_bytes=0) == (True, False)
    assert merge_plan(8 * mib, "cuda", bf16) == (False, True)
    with pytest.raises(ValueError, match="tile_hidden=True needs a dense merge"):
        merge_plan(8 * mib, "cuda", f32, tile_hidden=True)


@pytest.mark.parametrize("keep", [False, True])
def test_units_without_tokens(keep):
    """Units of zero tokens (``[U, 0, d]``): an empty output and zero gradients, kept or not."""
    ops = _operands(4, 40, 3, 3, 0, glu=True, bias=True, with_base=True, with_beta=True)
    x, coeff, beta, base, vectors = ops
    out = tiled_merge_and_apply(
        x, coeff, base, vectors, activation="gelu", base_coeff=beta, keep=keep
    )
    assert out.shape == (3, 0, 4)
    grads = torch.autograd.grad(out.sum(), _inputs(*ops), allow_unused=True)
    assert all(g is None or not g.any() for g in grads)
    out = merge_and_apply(x, coeff, base, vectors, activation="gelu", base_coeff=beta)
    assert out.shape == (3, 0, 4)


def _saved_bytes(fn) -> int:
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("glu", [False, True])
def test_kept_weights_skip_the_rebuild(glu, monkeypatch):
    """keep=True saves the merged w_in, w_gate, w_out (U·f·d numbers each, no biases) and the
    backward pass runs no merge product for them; the gradients are the rebuilt ones exactly
    (the same products in the same order); without any input that needs a gradient nothing is
    kept."""
    monkeypatch.setattr(tiled, "MIN_TILE_ROWS", 64)
    d, f, n, u, t = 4, 150, 3, 5, 3
    ops = _operands(d, f, n, u, t, glu=glu, bias=True, with_base=True, with_beta=True)
    x, coeff, beta, base, vectors = ops
    merges = []  # merge products: c [u, K] (not its transpose) times a tile
    real_rows, real_mm = tiled._merge_rows, torch.mm
    monkeypatch.setattr(tiled, "_merge_rows", lambda *a: merges.append(1) or real_rows(*a))

    def mm(a, b, **kw):
        if a.is_contiguous() and a.shape[1] == n + 1:  # w_out's merge (cᵀ g is transposed)
            merges.append(1)
        return real_mm(a, b, **kw)

    monkeypatch.setattr(torch, "mm", mm)

    def run(keep):
        return tiled_merge_and_apply(
            x,
            coeff,
            base,
            vectors,
            activation="silu",
            max_chunk_bytes=2 * 64 * 64,
            base_coeff=beta,
            keep=keep,
        )

    kept_numbers = (3 if glu else 2) * u * f * d
    extra = _saved_bytes(lambda: run(True)) - _saved_bytes(lambda: run(False))
    assert extra == kept_numbers * 8  # float64
    results = {}
    for keep in (False, True):
        out = run(keep)
        merges.clear()
        results[keep] = torch.autograd.grad(out.square().sum(), _inputs(*ops))
        backward_merges = len(merges)
        per_row = d * (3 if glu else 2) + 1  # w_in, w_gate?, w_out, b_in: numbers per f-row
        tiles = len(list(tiled._tiles(u, f, *plan_tiles(u, f, per_row * 8, 2 * 64 * 64))))
        assert tiles > 1
        assert backward_merges == (0 if keep else tiles * (3 if glu else 2))
    for a, b in zip(results[False], results[True]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():
        assert _saved_bytes(lambda: run(True)) == 0


def test_kept_weights_survive_retain_graph_and_interleaved_calls():
    """Two forward passes before either backward, and a second backward of a retained graph:
    every call keeps its own weights, so all gradients are those of a fresh call."""
    ops = _operands(4, 40, 3, 3, 2, glu=True, bias=False, with_base=True, with_beta=False)
    x, coeff, _, base, vectors = ops
    inputs = _inputs(*ops)

    def run():
        return tiled_merge_and_apply(x, coeff, base, vectors, activation="gelu", keep=True)

    want = torch.autograd.grad(run().square().sum(), inputs)
    first, second = run(), run().mul(2)
    got_second = torch.autograd.grad(second.square().sum(), inputs, retain_graph=True)
    got_first = torch.autograd.grad(first.square().sum(), inputs, retain_graph=True)
    again = torch.autograd.grad(first.square().sum(), inputs)
    for w, a, b, c in zip(want, got_first, again, got_second):
        torch.testing.assert_close(a, w)
        torch.testing.assert_close(b, w)
        torch.testing.assert_close(c, 4 * w)


@pytest.mark.parametrize("method", ["camex", "namex-full-mom"])
def test_layer_kept_and_rebuilt_agree(method, monkeypatch):
    """A CAMEx / NAMEx-Full-Mom layer stack on the CPU (float32, kept by default at this size)
    gives the outputs and parameter gradients of the same stack with the weights rebuilt."""
    import nashmoe.moe.fused as fused

    torch.manual_seed(0)
    cfg = MoEConfig(method=method, d_model=16, d_ff=64, num_experts=4, segment_len=8)
    layers = torch.nn.ModuleList(MoEFeedForward(cfg, owns_base=(i == 0)) for i in range(2))
    layers[-1].last_in_chain = True
    x = torch.randn(2, 32, 16)
    results = []
    for keep_bytes in (None, 0):
        monkeypatch.setitem(fused.merge_and_apply.__kwdefaults__, "keep_merged_bytes", keep_bytes)
        layers.zero_grad(set_to_none=True)
        h, state = x, None
        for layer in layers:
            y, aux = layer(h, state=state, return_aux=True)
            h, state = h + y, aux.state
        h.square().mean().backward()
        results.append([h.detach()] + [p.grad.clone() for p in layers.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- bad input
def test_clear_errors():
    x, coeff, beta, base, vectors = _operands(
        4, 8, 3, 2, 2, glu=False, bias=False, with_base=True, with_beta=True, dtype=torch.float32
    )
    with pytest.raises(ValueError, match="tile_hidden=True needs a dense merge"):
        merge_and_apply(
            x,
            coeff[:, :2],
            base,
            vectors,
            activation="gelu",
            index=torch.tensor([[0, 1], [1, 2]]),
            tile_hidden=True,
        )
    with pytest.raises(ValueError, match="float32/float64"):
        tiled_merge_and_apply(x.bfloat16(), coeff, base, vectors, activation="gelu")
    with pytest.raises(ValueError, match="needs a base"):
        merge_and_apply(x, coeff, None, vectors, activation="gelu", base_coeff=beta)
    with pytest.raises(ValueError, match="'w_in' and 'w_out'"):
        tiled_merge_and_apply(x, coeff, None, {"w_in": vectors["w_in"]}, activation="gelu")


# ---------------------------------------------------------------- the layer's raw merge
def test_camex_raw_merge_equals_the_domain_vector_merge():
    """CAMEx merges the raw experts, (1 − Σc) E_m + Σ c_i E_i (no τ_i formed): outputs and
    every parameter's gradient equal the spec's E_m + Σ c_i (E_i − E_m), materialised."""
    torch.manual_seed(0)
    cfg = MoEConfig(method="camex", d_model=8, d_ff=80, num_experts=4, unit="sequence")
    layer = MoEFeedForward(cfg).double()
    x = torch.randn(3, 5, 8, dtype=D)
    out = layer(x)
    _, scores = layer._unit_scores(x, None)
    coeff = layer._coefficients(scores, D)
    base, experts = layer.base_tensors(), layer.expert_tensors()
    w = {k: base[k] + torch.einsum("un,n...->u...", coeff, e - base[k]) for k, e in experts.items()}
    ref = merged_ffn(x, w, activation_fn(cfg.activation))
    params = list(layer.parameters())
    _check(out, ref, params)
