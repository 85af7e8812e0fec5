"""The MoE ViT: image routing (one merged expert per image), the propagation state, batch
invariance in eval mode, augmentation."""

from __future__ import annotations

import pytest
import torch

from nashmoe.moe import PROPAGATING_METHODS
from nashmoe.moe.ffn import activation_fn, dense_ffn
from nashmoe.vision import ViT, ViTConfig, random_crop_flip, to_input

TINY = dict(depth=3, d_model=16, d_ff=32, n_head=2, patch_size=8, num_experts=3)


def images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g)


def model(method: str, pool: str = "mean", **kw) -> ViT:
    torch.manual_seed(0)
    m = ViT(ViTConfig(method=method, pool=pool, **{**TINY, **kw}))
    with torch.no_grad():  # the zero-initialised head would make every logit 0
        m.head.weight.normal_(0, 0.5)
    return m.eval()


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_one_merged_expert_per_image(pool: str) -> None:
    """The first MoE block of CAMEx applies, to every token of image b, the single expert
    E_m + η Σ_i s_{b,i} (E_i − E_m), s_b routed by the mean of image b's patch tokens."""
    vit = model("camex", pool)
    ffn = vit.blocks[0].ffn
    assert ffn.config.unit == ("image" if pool == "mean" else "sequence")
    seen = {}
    ffn.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], y=out[0]))
    with torch.no_grad():
        vit(to_input(images(3)))
        x, y = seen["x"], seen["y"]
        patches = x[:, 1:] if pool == "cls" else x
        scores = torch.softmax(patches.mean(dim=1) @ ffn.router.T, dim=-1)  # [B, N]
        assert scores.shape == (3, ffn.config.num_experts)
        act = activation_fn(ffn.config.activation)
        for b in range(3):
            w = {}
            for name in ffn.layout.names:
                base, experts = getattr(ffn, "base_" + name), getattr(ffn, name)
                tau = experts - base
                w[name] = base + ffn.eta * torch.einsum("n,n...->...", scores[b], tau)
            torch.testing.assert_close(dense_ffn(x[b], w, act), y[b], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["smear", "namex-full-mom"])
def test_routing_units_are_images(method: str) -> None:
    """Each MoE layer makes one routing decision per image: its load is a multiple of 1/B."""
    vit = model(method)
    with torch.no_grad():
        out = vit(to_input(images(5)))
    assert out.logits.shape == (5, 10) and len(out.aux) == TINY["depth"]
    for aux in out.aux:
        counts = aux.load * 5
        torch.testing.assert_close(counts, counts.round())


def test_smoe_routes_tokens() -> None:
    vit = model("smoe")
    with torch.no_grad():
        out = vit(to_input(images(2)))
    tokens = 2 * 16  # 16 patches of 8 × 8
    counts = out.aux[0].load * tokens * 2  # top-2 assignments per token
    torch.testing.assert_close(counts, counts.round())


@pytest.mark.parametrize("method", sorted(PROPAGATING_METHODS))
def test_propagation_state_runs_through_the_blocks(method: str) -> None:
    vit = model(method)
    assert [b.ffn.owns_base for b in vit.blocks] == [True, False, False]
    with torch.no_grad():
        out = vit(to_input(images(2)))
    # The last MoE layer skips its propagation step: nothing after it uses the next base.
    assert vit.moe_layers[-1].last_in_chain
    assert out.aux[-1].state is None
    assert [a.state.layer for a in out.aux[:-1]] == [1, 2]


@pytest.mark.parametrize(
    ("method", "pool"),
    [("dense", "mean"), ("smoe", "mean"), ("camex", "cls"), ("namex-full-mom", "mean")],
)
def test_eval_logits_do_not_depend_on_the_batch(method: str, pool: str) -> None:
    vit = model(method, pool)
    x = to_input(images(6))
    with torch.no_grad():
        full = vit(x).logits
        alone = torch.cat([vit(x[i : i + 1]).logits for i in range(6)])
        other = vit(torch.cat([x[:2], to_input(images(4, seed=9))])).logits[:2]
    torch.testing.assert_close(full, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full[:2], other, atol=1e-5, rtol=1e-5)


def test_train_step_and_parameter_count() -> None:
    vit = model("namex-mom").train()
    out = vit(to_input(images(4)))
    loss = torch.nn.functional.cross_entropy(out.logits, torch.arange(4)) + out.aux_loss
    loss.backward()
    assert vit.blocks[0].ffn.base_w_in.grad is not None  # gradients reach the propagated base
    counts = vit.num_parameters()
    assert counts["active"] < counts["total"]


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        ViTConfig(method="moe")
    with pytest.raises(ValueError, match="patch_size"):
        ViTConfig(patch_size=5)
    with pytest.raises(ValueError, match="pool"):
        ViTConfig(pool="max")
    with pytest.raises(ValueError, match="unknown MoE option"):
        ViTConfig(moe_options={"colour": 1})
    ViTConfig(method="camex", moe_options={"gamma": 0.5})  # unused options are dropped
    with pytest.raises(ValueError, match="expected images"):
        model("dense")(torch.zeros(1, 3, 16, 16))


def test_random_crop_flip() -> None:
    x = images(16)
    g = torch.Generator().manual_seed(0)
    y = random_crop_flip(x, generator=g)
    assert y.shape == x.shape and y.dtype == torch.uint8
    torch.testing.assert_close(random_crop_flip(x, generator=torch.Generator().manual_seed(0)), y)
    assert torch.equal(random_crop_flip(x, padding=0, flip=False), x)
    flipped = random_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(1))
    same = [torch.equal(a, b) for a, b in zip(flipped, x)]
    mirrored = [torch.equal(a, b.flip(1)) for a, b in zip(flipped, x)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(mirrored) and any(same)
    shifted = random_crop_flip(x, padding=4, flip=False, generator=g)
    assert (shifted == 0).any()  # zero padding shows up at some border
