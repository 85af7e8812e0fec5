"""Fixtures for the fairness tests: a tiny synthetic FairDataset (no data files needed)."""

from __future__ import annotations

import pytest
import torch

from nashmoe.fairness.datasets import FairDataset, FairSplit


def make_split(n: int, d: int, n_groups: int, gen: torch.Generator) -> FairSplit:
    group = torch.arange(n) % n_groups
    x = torch.randn(n, d, generator=gen)
    x[:, 0] += 0.5 * group
    logits = x[:, 1] + 0.5 * x[:, 2] - 0.3 * group
    y = (logits + 0.5 * torch.randn(n, generator=gen) > 0).long()
    # every (group, label) cell non-empty
    y[:n_groups] = 0
    y[n_groups : 2 * n_groups] = 1
    return FairSplit(x=x, y=y, group=group)


def make_dataset(
    *, n_train: int = 96, n_meta: int = 8, n_eval: int = 60, d: int = 6, n_groups: int = 2
) -> FairDataset:
    gen = torch.Generator().manual_seed(123)
    names = tuple(f"g{i}" for i in range(n_groups))
    return FairDataset(
        name="synthetic",
        sensitive="s",
        group_names=names,
        feature_names=tuple(f"f{i}" for i in range(d)),
        label_description="synthetic",
        train=make_split(n_train, d, n_groups, gen),
        meta=make_split(n_meta, d, n_groups, gen),
        val=make_split(n_eval, d, n_groups, gen),
        test=make_split(n_eval, d, n_groups, gen),
        seed=0,
    )


@pytest.fixture
def tiny_dataset() -> FairDataset:
    return make_dataset()


@pytest.fixture
def dataset_factory():
    """``make_dataset`` itself, for tests that need other sizes."""
    return make_dataset
