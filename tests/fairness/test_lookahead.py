"""One-step look-ahead hypergradients: finite differences, closed form, backends."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nashmoe.fairness.lookahead import Lookahead, VirtualSGD, meta_jacobian, momentum_buffers
from nashmoe.fairness.model import fair_mlp
from nashmoe.fairness.objectives import per_example_cross_entropy, validation_losses


def _problem(seed: int = 0, b: int = 5, v: int = 4, d: int = 3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (b,), generator=gen)
    xm = torch.randn(v, d, generator=gen, dtype=torch.float64)
    ym = torch.randint(0, 2, (v,), generator=gen)
    torch.manual_seed(seed)
    model = fair_mlp(d, hidden=(4, 3), dropout=0.0).double()
    return model, x, y, xm, ym


def _warm_optimizer(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sgd: VirtualSGD):
    """A real SGD optimizer after one step, so that momentum buffers exist."""
    opt = torch.optim.SGD(
        model.parameters(), lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay
    )
    per_example_cross_entropy(model(x), y).mean().backward()
    opt.step()
    opt.zero_grad()
    return opt


def _val_after_real_step(model, opt, x, y, xm, ym, eps, kind):
    """ℓ^val after a *real* torch.optim.SGD step on Σ ε_j ℓ_j, on copies of model and optimizer."""
    m2 = copy.deepcopy(model)
    o2 = torch.optim.SGD(
        m2.parameters(), **{k: opt.defaults[k] for k in ("lr", "momentum", "weight_decay")}
    )
    o2.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict shares tensors
    (eps * per_example_cross_entropy(m2(x), y)).sum().backward()
    o2.step()
    with torch.no_grad():
        return validation_losses(m2(xm), ym, kind)


@pytest.mark.parametrize("backend", ["func", "ghost"])
@pytest.mark.parametrize("kind", ["ce+soft_f1", "ce"])
def test_hypergradient_matches_finite_differences(backend: str, kind: str) -> None:
    model, x, y, xm, ym = _problem()
    sgd = VirtualSGD(lr=0.3, momentum=0.9, weight_decay=0.05)
    opt = _warm_optimizer(model, x, y, sgd)
    model.eval()
    mj = meta_jacobian(
        model,
        x=x,
        y=y,
        x_meta=xm,
        y_meta=ym,
        step=sgd,
        buffers=momentum_buffers(model, opt),
        val_loss=kind,
        backend=backend,
    )
    h = 1e-5
    fd = torch.zeros_like(mj.jacobian)
    for j in range(x.shape[0]):
        e = torch.zeros(x.shape[0], dtype=torch.float64)
        e[j] = h
        plus = _val_after_real_step(model, opt, x, y, xm, ym, e, kind)
        minus = _val_after_real_step(model, opt, x, y, xm, ym, -e, kind)
        fd[:, j] = (plus - minus) / (2 * h)
    assert torch.allclose(mj.jacobian, fd, rtol=1e-5, atol=1e-9)
    base = _val_after_real_step(
        model, opt, x, y, xm, ym, torch.zeros(x.shape[0], dtype=torch.float64), kind
    )
    assert torch.allclose(mj.val_losses, base, atol=1e-12)


@pytest.mark.parametrize("backend", ["func", "ghost"])
def test_plain_sgd_hypergradient_is_minus_lr_inner_product(backend: str) -> None:
    model, x, y, xm, ym = _problem(seed=1)
    lr = 0.1
    mj = meta_jacobian(
        model,
        x=x,
        y=y,
        x_meta=xm,
        y_meta=ym,
        step=VirtualSGD(lr, momentum=0.0, weight_decay=0.0),
        val_loss="ce",
        backend=backend,
    )
    params = list(model.parameters())

    def flat_grad(loss: torch.Tensor) -> torch.Tensor:
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

    for v in range(xm.shape[0]):
        gv = flat_grad(per_example_cross_entropy(model(xm[v : v + 1]), ym[v : v + 1]).sum())
        for j in range(x.shape[0]):
            gj = flat_grad(per_example_cross_entropy(model(x[j : j + 1]), y[j : j + 1]).sum())
            assert mj.jacobian[v, j].item() == pytest.approx(
                -lr * float(gj @ gv), rel=1e-9, abs=1e-14
            )


def test_backends_agree_on_the_reference_mlp_and_leave_state_untouched() -> None:
    torch.manual_seed(0)
    model = fair_mlp(7, dropout=0.3)
    x, y = torch.randn(16, 7), torch.randint(0, 2, (16,))
    xm, ym = torch.randn(6, 7), torch.randint(0, 2, (6,))
    sgd = VirtualSGD(1e-2)
    opt = _warm_optimizer(model, x, y, sgd)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bufs = momentum_buffers(model, opt)
    bufs_before = {k: v.clone() for k, v in bufs.items()}
    model.eval()  # no dropout: both backends see the same function
    a = meta_jacobian(model, x=x, y=y, x_meta=xm, y_meta=ym, step=sgd, buffers=bufs, backend="func")
    b = meta_jacobian(
        model, x=x, y=y, x_meta=xm, y_meta=ym, step=sgd, buffers=bufs, backend="ghost"
    )
    assert torch.allclose(a.jacobian, b.jacobian, rtol=1e-4, atol=1e-9)
    assert torch.allclose(a.val_losses, b.val_losses)
    assert torch.allclose(a.train_losses, b.train_losses)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    for k, v in bufs.items():
        assert torch.equal(v, bufs_before[k])


def test_weighted_gradients_equal_autograd_under_dropout() -> None:
    torch.manual_seed(0)
    model = fair_mlp(5, dropout=0.5).train()
    x, y = torch.randn(12, 5), torch.randint(0, 2, (12,))
    look = Lookahead(model, step=VirtualSGD(0.1), backend="ghost")
    torch.manual_seed(7)
    mj = look(x, y, x[:4], y[:4])
    w = torch.rand(12)
    grads = look.weighted_gradients(mj, w)
    torch.manual_seed(7)  # same dropout mask as the look-ahead's batch forward
    loss = (w * per_example_cross_entropy(model(x), y)).sum()
    expected = torch.autograd.grad(loss, list(model.parameters()))
    for (name, _), g in zip(model.named_parameters(), expected):
        assert torch.allclose(grads[name], g, rtol=1e-5, atol=1e-7), name


def test_virtual_sgd_matches_torch_sgd() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    sgd = VirtualSGD(0.05, momentum=0.9, weight_decay=0.01)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    for step in range(3):
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        bufs = momentum_buffers(model, opt)
        assert all((b is None) == (step == 0) for b in bufs.values())
        model(torch.randn(4, 3)).pow(2).sum().backward()
        grads = {k: v.grad.clone() for k, v in model.named_parameters()}
        expected = sgd.step(params, grads, bufs)
        opt.step()
        opt.zero_grad()
        for k, v in model.named_parameters():
            assert torch.allclose(v, expected[k], atol=1e-7)


def test_auto_backend_and_unsupported_models() -> None:
    norm_model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    assert Lookahead(norm_model, step=VirtualSGD(0.1)).backend == "func"
    assert Lookahead(fair_mlp(3), step=VirtualSGD(0.1)).backend == "ghost"
    with pytest.raises(ValueError, match=r"nn\.Linear"):
        Lookahead(norm_model, step=VirtualSGD(0.1), backend="ghost")
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    mj = meta_jacobian(norm_model, x=x, y=y, x_meta=x, y_meta=y, step=VirtualSGD(0.1))
    assert mj.jacobian.shape == (4, 4) and mj.batch_terms is None

    class Twice(nn.Module):  # weight sharing: the ghost decomposition does not apply
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.lin(torch.relu(self.lin(z)))

    x2 = torch.randn(4, 2)
    with pytest.raises(ValueError, match="exactly once"):
        meta_jacobian(
            Twice(), x=x2, y=y, x_meta=x2, y_meta=y, step=VirtualSGD(0.1), backend="ghost"
        )


def test_bad_arguments() -> None:
    model = fair_mlp(3)
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    with pytest.raises(ValueError, match="backend"):
        meta_jacobian(model, x=x, y=y, x_meta=x, y_meta=y, step=VirtualSGD(0.1), backend="x")
    with pytest.raises(ValueError, match="val_loss"):
        meta_jacobian(model, x=x, y=y, x_meta=x, y_meta=y, step=VirtualSGD(0.1), val_loss="mse")
    with pytest.raises(ValueError, match="expected x"):
        meta_jacobian(model, x=x, y=y[:3], x_meta=x, y_meta=y, step=VirtualSGD(0.1))
    with pytest.raises(ValueError, match="non-empty"):
        meta_jacobian(model, x=x, y=y, x_meta=x[:0], y_meta=y[:0], step=VirtualSGD(0.1))
    with pytest.raises(ValueError, match="lr"):
        VirtualSGD(0.0)
    with pytest.raises(ValueError, match="momentum"):
        VirtualSGD(0.1, momentum=1.0)
