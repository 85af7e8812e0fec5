"""Shared pieces of the nashmoe.train tests: a small slice of tiny-shakespeare and tiny shapes."""

from __future__ import annotations

import pytest
import torch

from nashmoe.data import Corpus, load_corpus
from nashmoe.train import TrainConfig
from nashmoe.train.config import options_for_method

#: A model small enough for many short trainings on a 2-core CPU.
TINY_MODEL = {
    "n_layer": 2,
    "n_head": 2,
    "d_model": 32,
    "d_ff": 64,
    "block_size": 32,
    "segment_len": 8,
}


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a busy 2-core machine, two OpenMP threads per process make these
    tiny trainings several times slower (threads spin waiting for a core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def full_corpus() -> Corpus:
    return load_corpus("shakespeare")


@pytest.fixture(scope="session")
def small_corpus(full_corpus: Corpus) -> Corpus:
    """20k training characters, 2k validation and test characters (same tokenizer)."""
    c = full_corpus
    return Corpus(
        name=c.name,
        train=c.train[:20000].clone(),
        validation=c.validation[:2001].clone(),
        test=c.test[:1500].clone(),
        tokenizer=c.tokenizer,
        info=dict(c.info),
    )


def tiny_config(out_dir, **overrides) -> TrainConfig:
    """A quick run: 2 layers of width 32, batches of 4 blocks of 32 tokens."""
    model = {**TINY_MODEL, **overrides.pop("model", {})}
    kw = dict(
        method="namex-full-mom",
        steps=8,
        batch_size=4,
        lr=3e-3,
        log_interval=1,
        eval_batch_size=64,
        tensorboard="off",
        progress=False,
        out_dir=str(out_dir),
        model=model,
    )
    kw.update(overrides)
    # the shared tiny shape sets segment_len, which dense and smoe do not use (an error there)
    kw["model"] = options_for_method(kw["model"], kw["method"])
    return TrainConfig(**kw)
