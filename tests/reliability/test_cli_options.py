"""Edge inputs: NaN, negative and zero option values are rejected by the parsers; GPT.generate
rejects invalid arguments with a ValueError naming the argument; a prompt longer than the block
size is kept whole and cropped as context, with a note."""

from __future__ import annotations

import math

import pytest
import torch

from nashmoe.cli import main
from nashmoe.models import GPT, GPTConfig


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--grad-clip", "nan"], "argument --grad-clip: must be a finite number, got"),
        (["train", "--grad-clip", "-1"], "argument --grad-clip: must be a finite number >= 0"),
        (["train", "--threads", "-3"], "argument --threads: must be an integer >= 0, got '-3'"),
        (["train", "--lr", "nan"], "argument --lr: must be a finite number, got 'nan'"),
        (["train", "--lr", "0"], "argument --lr: must be a finite number > 0"),
        (["train", "--lr", "inf"], "argument --lr: must be a finite number, got 'inf'"),
        (["train", "--min-lr", "-0.001"], "argument --min-lr: must be a finite number >= 0"),
        (["train", "--weight-decay", "nan"], "argument --weight-decay: must be a finite number"),
        (["train", "--steps", "0"], "argument --steps: must be a positive integer, got '0'"),
        (["train", "--batch-size", "-4"], "argument --batch-size: must be a positive integer"),
        (["train", "--grad-accum", "0"], "argument --grad-accum: must be a positive integer"),
        (["train", "--warmup", "-1"], "argument --warmup: must be an integer >= 0"),
        (["train", "--eval-interval", "0"], "argument --eval-interval: must be a positive"),
        (["train", "--eval-batch-size", "0"], "argument --eval-batch-size: must be a positive"),
        (["train", "--log-interval", "0"], "argument --log-interval: must be a positive"),
        (["train", "--ckpt-interval", "-10"], "argument --ckpt-interval: must be a positive"),
        (["train", "--min-freq", "0"], "argument --min-freq: must be a positive integer"),
        (["train", "--bpe-vocab-size", "0"], "argument --bpe-vocab-size: must be a positive"),
        (["train", "--steps", "ten"], "argument --steps: must be an integer, got 'ten'"),
        (["compare", "--jobs", "0"], "argument --jobs: must be a positive integer, got '0'"),
        (["compare", "--grad-clip", "nan"], "argument --grad-clip: must be a finite number"),
        (["eval", "x", "--batch-size", "0"], "argument --batch-size: must be a positive integer"),
        (["generate", "x", "--temperature", "nan"],
         "argument --temperature: must be a finite number, got 'nan'"),
        (["generate", "x", "--temperature", "-1"],
         "argument --temperature: must be a finite number >= 0, got '-1'"),
        (["defer", "--num-experts", "0"], "argument --num-experts: must be a positive integer"),
        (["defer", "--p-in", "1.5"], "argument --p-in: must be in [0, 1], got '1.5'"),
        (["defer", "--lr", "nan"], "argument --lr: must be a finite number, got 'nan'"),
        (["defer", "--threads", "-3"], "argument --threads: must be a positive integer"),
        (["defer", "--split-sizes", "10", "0", "5"], "argument --split-sizes: must be a positive"),
        (["fair", "--lr", "nan"], "argument --lr: must be a finite number, got 'nan'"),
        (["fair", "--dropout", "2"], "argument --dropout: must be in [0, 1], got '2'"),
        (["fair", "--epochs", "0"], "argument --epochs: must be a positive integer"),
        (["fair", "--jobs", "-1"], "argument --jobs: must be a positive integer"),
    ],
)  # fmt: skip
def test_bad_numeric_options_are_parser_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"nashmoe {argv[0]}: error: {message}" in err


def test_threads_zero_means_auto():
    import argparse

    from nashmoe.train.cli import train as train_cli
    from nashmoe.train.cli.common import auto_threads

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    assert parser.parse_args(["--threads", "0"]).threads == 0  # documented: auto
    assert auto_threads(0) >= 1 and auto_threads(3) == 3


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, method="dense", n_layer=1, n_head=2, d_model=16, d_ff=32,
                         block_size=8))  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": -1}, "max_new_tokens must be >= 0, got -1"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be an integer"),
        ({"temperature": -1.0}, "temperature must be finite and >= 0"),
        ({"temperature": math.nan}, "temperature must be finite and >= 0"),
        ({"temperature": math.inf}, "temperature must be finite and >= 0"),
        ({"top_k": 0}, "top_k must be an integer >= 1 or None, got 0"),
        ({"top_k": -5}, "top_k must be an integer >= 1 or None"),
    ],
)
def test_generate_rejects_invalid_arguments(kwargs, message):
    kw = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        _model().generate(torch.zeros(1, 2, dtype=torch.long), **kw)


@pytest.mark.parametrize("shape", [(1, 0), (0,), (3,)])
def test_generate_rejects_an_empty_or_one_dimensional_prompt(shape):
    with pytest.raises(ValueError, match="idx must be \\[batch, length\\] with length >= 1"):
        _model().generate(torch.zeros(shape, dtype=torch.long), 2)


def test_generate_edge_values_that_are_valid():
    model = _model()
    idx = torch.tensor([[1, 2]])
    assert torch.equal(model.generate(idx, 0), idx)  # nothing to add
    greedy = model.generate(idx, 5, temperature=0.0)
    assert torch.equal(greedy, model.generate(idx, 5, temperature=0.0, use_cache=False))
    assert model.generate(idx, 3, top_k=1000).shape == (1, 5)  # k beyond the vocabulary
    # a prompt longer than the block size: kept whole, the last block_size tokens are the context
    long = torch.randint(0, 11, (1, 20), generator=torch.Generator().manual_seed(1))
    out = model.generate(long, 4, temperature=0.0)
    assert out.shape == (1, 24) and torch.equal(out[:, :20], long)
    cropped = model.generate(long[:, -8:], 4, temperature=0.0)
    assert torch.equal(out[:, 20:], cropped[:, 8:])


def test_cli_generate_keeps_a_long_prompt_and_says_it_was_cropped(trained_run, capsys):
    prompt = "ROMEO: " + "a" * 993  # 1000 characters, block size 32
    assert main(["generate", str(trained_run), "--prompt", prompt, "--tokens", "5",
                 "--temperature", "0"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert captured.out.startswith(prompt) and len(captured.out.rstrip("\n")) == 1005
    assert "note: the prompt is 1000 tokens; the model sees only its last 32" in captured.err


def test_cli_generate_empty_prompt_starts_from_a_fallback_or_errors(trained_run, capsys):
    # characters have no <eos>: an empty prompt is a one-line error, not a traceback
    assert main(["generate", str(trained_run), "--prompt", "", "--tokens", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nashmoe generate: error: the prompt encodes to no tokens")
