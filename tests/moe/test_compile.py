"""``torch.compile``: every method compiles to one graph (``fullgraph=True``), the compiled
forward equals the eager one, and training steps match eager training.

The tests use the ``aot_eager`` backend (the graph capture and the autograd tracing of
``torch.compile`` without Inductor's code generation, which takes tens of seconds per model on
a small CPU); ``benchmarks/bench_compile.py`` times the Inductor version.
"""

from __future__ import annotations

import copy

import pytest
import torch

from nashmoe.models import GPT, GPTConfig
from nashmoe.moe import METHODS, MoEFeedForward
from nashmoe.moe.layer import _nash_solve_op

BACKEND = "aot_eager"

# Raised by dynamo itself while it traces an autograd.Function (torch 2.13), not by our code.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:<class 'torch.autograd.function.Function'> should not be instantiated"
        ":DeprecationWarning"
    ),
    pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf"),
]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _tiny_gpt(method: str, **kw) -> GPT:
    torch.manual_seed(0)
    fields = dict(
        vocab_size=19,
        block_size=16,
        n_layer=2,
        n_head=2,
        d_model=16,
        d_ff=32,
        num_experts=3,
        segment_len=4,
        method=method,
        init_std=0.2,
    )
    fields.update(kw)
    return GPT(GPTConfig(**fields))


def _train(model, step_fn, batches, lr=3e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for idx, targets in batches:
        out = step_fn(idx, targets)
        loss = out.loss + out.aux_loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    return torch.stack(losses)


@pytest.mark.parametrize("method", METHODS)
def test_gpt_compiles_to_one_graph_and_trains_like_eager(method):
    eager = _tiny_gpt(method)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend=BACKEND, fullgraph=True)
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randint(0, 19, (2, 16), generator=gen), torch.randint(0, 19, (2, 16), generator=gen))
        for _ in range(2)
    ]
    # one forward: outputs and auxiliary diagnostics equal
    idx, targets = batches[0]
    a, b = eager(idx, targets), compiled(idx, targets)
    torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.aux_loss, a.aux_loss, rtol=0, atol=1e-6)
    for x, y in zip(a.aux, b.aux):
        if x.alpha is not None:
            torch.testing.assert_close(y.alpha, x.alpha, rtol=1e-6, atol=0)
        if x.fallbacks is not None:
            assert torch.equal(y.fallbacks, x.fallbacks)
    # gradients of a backward pass equal
    (a.loss + a.aux_loss).backward()
    (b.loss + b.aux_loss).backward()
    for (name, p), q in zip(eager.named_parameters(), compiled_model.parameters()):
        if p.grad is None:
            assert q.grad is None, name
        else:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    eager.zero_grad(set_to_none=True)
    compiled_model.zero_grad(set_to_none=True)
    # a few optimizer steps: the same loss curve, and the loss goes down
    eager_losses = _train(eager, lambda i, t: eager(i, t), batches * 2)
    compiled_losses = _train(compiled_model, lambda i, t: compiled(i, t), batches * 2)
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-4, atol=1e-5)
    assert compiled_losses[2:].sum() < compiled_losses[:2].sum()


@pytest.mark.parametrize(
    ("method", "unit"),
    [("namex-full-mom", "token"), ("namex", "sequence"), ("ep-camex", "image"), ("smoe", None)],
)
def test_layer_compiles_to_one_graph(method, unit):
    torch.manual_seed(0)
    kw = dict(method=method, d_model=16, d_ff=32, num_experts=4, init_std=0.2)
    if unit is not None:
        kw["unit"] = unit
    layer = MoEFeedForward(**kw)
    twin = copy.deepcopy(layer)
    compiled = torch.compile(twin, backend=BACKEND, fullgraph=True)
    x = torch.randn(3, 8, 16, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    out, aux = layer(x, return_aux=True)
    out_c, aux_c = compiled(x2, return_aux=True)
    torch.testing.assert_close(out_c, out, rtol=0, atol=1e-5)
    torch.testing.assert_close(aux_c.loss, aux.loss, rtol=0, atol=1e-6)
    (out.square().sum() + aux.loss).backward()
    (out_c.square().sum() + aux_c.loss).backward()
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(layer.named_parameters(), twin.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert twin.last_aux is aux_c  # the side effect on the module is kept


def test_differentiable_alpha_compiles_with_one_deliberate_break():
    """Implicit differentiation through α keeps the solve outside the graph
    (``torch.compiler.disable``): the layer compiles, with graph breaks only there."""
    torch.manual_seed(0)
    layer = MoEFeedForward(
        method="namex", d_model=8, d_ff=16, num_experts=3, segment_len=4,
        differentiable_alpha=True, init_std=0.2,
    )  # fmt: skip
    twin = copy.deepcopy(layer)
    x = torch.randn(2, 8, 8)
    explained = torch._dynamo.explain(copy.deepcopy(layer))(x)
    assert explained.graph_break_count >= 1
    assert all("_solve_nash_differentiable" in str(r.reason) for r in explained.break_reasons)
    torch._dynamo.reset()
    out_c = torch.compile(twin, backend=BACKEND)(x)
    out = layer(x)
    torch.testing.assert_close(out_c, out, rtol=0, atol=1e-5)
    out.sum().backward()
    out_c.sum().backward()
    torch.testing.assert_close(twin.router.grad, layer.router.grad, rtol=1e-4, atol=1e-6)


def test_nash_solve_op_matches_its_fake_implementation():
    torch.manual_seed(0)
    v = torch.randn(4, 30, dtype=torch.float64)
    gram = v @ v.T
    init = torch.zeros(4, dtype=torch.float64)
    torch.library.opcheck(_nash_solve_op, (gram, init, 20, 1e-9))


def test_sequence_units_with_a_mask_compile_to_one_graph():
    torch.manual_seed(0)
    layer = MoEFeedForward(method="namex-full", d_model=8, d_ff=16, num_experts=3, unit="sequence")
    x = torch.randn(3, 5, 8)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 3:] = False
    twin = copy.deepcopy(layer)
    out_c = torch.compile(twin, backend=BACKEND, fullgraph=True)(x, attention_mask=mask)
    torch.testing.assert_close(out_c, layer(x, attention_mask=mask), rtol=0, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_forward_never_synchronises_with_the_host(method):
    """The training forward of the GPT (every MoE method) runs under
    ``torch.cuda.set_sync_debug_mode("error")``: no ``.item()``, no data-dependent sizes."""
    model = _tiny_gpt(method).cuda()
    idx = torch.randint(0, 19, (2, 16), device="cuda")
    model(idx, idx)  # warm-up (lazy CUDA initialisation may synchronise)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = model(idx, idx)
        loss = out.loss + out.aux_loss
    finally:
        torch.cuda.set_sync_debug_mode("default")
    loss.backward()


@pytest.mark.parametrize("bias_balancing", [False, True])
def test_smoe_with_a_mask_compiles_to_one_graph(bias_balancing):
    """The masked router losses and the load counts use static shapes (no boolean indexing,
    no bincount): one graph, equal outputs, losses and counts."""
    torch.manual_seed(0)
    layer = MoEFeedForward(
        method="smoe", d_model=8, d_ff=16, num_experts=4, bias_balancing=bias_balancing
    )
    x = torch.randn(3, 5, 8)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 2:] = False
    twin = copy.deepcopy(layer)
    compiled = torch.compile(twin, backend=BACKEND, fullgraph=True)
    out_c, aux_c = compiled(x, attention_mask=mask, return_aux=True)
    out, aux = layer(x, attention_mask=mask, return_aux=True)
    torch.testing.assert_close(out_c, out, rtol=0, atol=1e-5)
    torch.testing.assert_close(aux_c.loss, aux.loss, rtol=1e-5, atol=1e-6)
    if bias_balancing:
        torch.testing.assert_close(twin.expert_load, layer.expert_load)
