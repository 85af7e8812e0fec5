"""Batching: reproducible random training blocks (DDP aware) and exact evaluation coverage."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nashmoe.data import IGNORE_INDEX, get_batch, iter_eval_batches, num_eval_blocks


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- get_batch
def test_get_batch_shapes_and_shift():
    data = torch.arange(1000)
    x, y = get_batch(data, batch_size=5, block_size=16, generator=_gen(0))
    assert x.shape == y.shape == (5, 16) and x.dtype == y.dtype == torch.long
    assert torch.equal(y, x + 1)  # y is x shifted by one token
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)  # contiguous blocks
    assert int(x.min()) >= 0 and int(y.max()) <= 999


def test_get_batch_reproducible_from_generator():
    data = torch.randint(0, 50, (5000,), generator=_gen(1))
    a = [get_batch(data, batch_size=4, block_size=8, generator=g) for g in [_gen(7)] * 3]
    g = _gen(7)
    b = [get_batch(data, batch_size=4, block_size=8, generator=g) for _ in range(3)]
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    g1, g2 = _gen(7), _gen(7)
    for _ in range(3):
        x1, y1 = get_batch(data, batch_size=4, block_size=8, generator=g1)
        x2, y2 = get_batch(data, batch_size=4, block_size=8, generator=g2)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, _ = get_batch(data, batch_size=4, block_size=8, generator=_gen(8))
    assert not torch.equal(x3, a[0][0])


def test_get_batch_ranks_partition_the_global_batch():
    data = torch.arange(10_000)
    single = _gen(3)
    ranks = [_gen(3) for _ in range(4)]  # every rank seeds its generator identically
    for _ in range(3):  # the ranks stay in step over several steps
        x_all, y_all = get_batch(data, batch_size=4 * 2, block_size=12, generator=single)
        parts = [
            get_batch(data, batch_size=2, block_size=12, generator=g, rank=r, world_size=4)
            for r, g in enumerate(ranks)
        ]
        assert torch.equal(torch.cat([p[0] for p in parts]), x_all)
        assert torch.equal(torch.cat([p[1] for p in parts]), y_all)


def test_get_batch_covers_both_ends():
    data = torch.arange(11)
    x, y = get_batch(data, batch_size=3, block_size=10, generator=_gen(0))
    assert torch.equal(x, torch.arange(10).expand(3, 10)) and int(y[0, -1]) == 10
    seen = set()
    g = _gen(0)
    for _ in range(50):
        x, _ = get_batch(torch.arange(13), batch_size=8, block_size=10, generator=g)
        seen.update(x[:, 0].tolist())
    assert seen == {0, 1, 2}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"block_size": 100}, r"block_size=100 is larger than the split.*has 50"),
        ({"block_size": 50}, r"block_size\+1=51 tokens"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"block_size": 2.5}, "block_size must be a positive integer"),
        ({"rank": 2, "world_size": 2}, r"rank must be an integer in \[0, world_size=2\)"),
        ({"world_size": 0}, "world_size must be a positive integer"),
    ],
)
def test_batch_errors(kwargs, match):
    args = {"batch_size": 2, "block_size": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        get_batch(torch.arange(50), **args)
    with pytest.raises(ValueError, match=match):
        next(iter_eval_batches(torch.arange(50), **args))


def test_batch_rejects_bad_data():
    with pytest.raises(ValueError, match="1-D"):
        get_batch(torch.zeros(4, 4, dtype=torch.long), batch_size=1, block_size=2)
    with pytest.raises(ValueError, match="integer token ids"):
        get_batch(torch.zeros(40), batch_size=1, block_size=2)


# ---------------------------------------------------------------- iter_eval_batches
def _scored_positions(batches) -> list[int]:
    """Positions (values of data = arange) of every scored target; checks x/y alignment."""
    out = []
    for x, y in batches:
        mask = y != IGNORE_INDEX
        assert torch.equal(x[:, 1:], x[:, :-1] + 1)  # every row is a contiguous window
        assert torch.equal(y[mask], (x + 1)[mask])  # targets are the next tokens
        out.extend(y[mask].tolist())
    return out


@pytest.mark.parametrize(
    ("n", "block", "batch"),
    [(101, 10, 3), (100, 10, 4), (11, 10, 1), (12, 10, 2), (57, 7, 100), (1000, 64, 5)],
)
def test_eval_batches_score_every_token_exactly_once(n, block, batch):
    data = torch.arange(n)
    batches = list(iter_eval_batches(data, batch_size=batch, block_size=block))
    assert _scored_positions(batches) == list(range(1, n))
    assert sum(x.shape[0] for x, _ in batches) == num_eval_blocks(n, block)
    assert all(x.shape[1] == block and x.shape[0] <= batch for x, _ in batches)
    assert all(x.shape[0] == batch for x, _ in batches[:-1])
    again = list(iter_eval_batches(data, batch_size=batch, block_size=block))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))


def test_eval_last_partial_block_keeps_full_context():
    data = torch.arange(26)  # 25 targets, blocks of 10: two full blocks and 5 more targets
    blocks = [
        row for x, y in iter_eval_batches(data, batch_size=1, block_size=10) for row in zip(x, y)
    ]
    assert len(blocks) == 3
    x, y = blocks[-1]
    assert torch.equal(x, torch.arange(15, 25))
    assert y[:5].eq(IGNORE_INDEX).all() and torch.equal(y[5:], torch.arange(21, 26))


@pytest.mark.parametrize(("n", "world"), [(101, 2), (100, 3), (203, 4), (12, 3)])
def test_eval_ranks_cover_every_token_once_with_equal_batches(n, world):
    data = torch.arange(n)
    per_rank = [
        list(iter_eval_batches(data, batch_size=2, block_size=10, rank=r, world_size=world))
        for r in range(world)
    ]
    scored = sorted(p for batches in per_rank for p in _scored_positions(batches))
    assert scored == list(range(1, n))
    shapes = [[tuple(x.shape) for x, _ in batches] for batches in per_rank]
    assert all(s == shapes[0] for s in shapes)  # collectives inside the model stay matched


def test_eval_perplexity_is_exact_for_a_bigram_model():
    """With a context-free (bigram) model, the exact mean NLL over the split is a plain loop."""
    torch.manual_seed(0)
    vocab, n = 7, 233
    data = torch.randint(0, vocab, (n,))
    table = torch.randn(vocab, vocab)  # logits of the next token given the current one
    naive = sum(-torch.log_softmax(table[data[i]], -1)[data[i + 1]] for i in range(n - 1)) / (n - 1)
    total, count = 0.0, 0
    for x, y in iter_eval_batches(data, batch_size=3, block_size=16):
        logits = table[x]
        total += float(F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1), reduction="sum"))
        count += int((y != IGNORE_INDEX).sum())
    assert count == n - 1
    assert total / count == pytest.approx(float(naive), rel=1e-5)


def test_eval_batches_on_device_argument():
    x, _ = next(iter_eval_batches(torch.arange(30), batch_size=2, block_size=4, device="cpu"))
    assert x.device.type == "cpu" and x.shape == (2, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_with_data_on_cuda():
    data = torch.arange(500)
    x_cpu, y_cpu = get_batch(data, batch_size=4, block_size=16, generator=_gen(5))
    x, y = get_batch(data.cuda(), batch_size=4, block_size=16, generator=_gen(5))
    assert x.is_cuda and torch.equal(x.cpu(), x_cpu) and torch.equal(y.cpu(), y_cpu)
    x, _ = get_batch(data, batch_size=4, block_size=16, generator=_gen(5), device="cuda")
    assert x.is_cuda and torch.equal(x.cpu(), x_cpu)
    cpu = list(iter_eval_batches(data, batch_size=3, block_size=16))
    gpu = list(iter_eval_batches(data.cuda(), batch_size=3, block_size=16))
    assert all(torch.equal(a[1], b[1].cpu()) for a, b in zip(cpu, gpu))
