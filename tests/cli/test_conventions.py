"""One command-line convention across the subcommands: ``--seeds`` (a count or a list), defaults
on every help page, ``python -m nashmoe``, one error style (``nashmoe <cmd>: error: ...``, exit
status 2) with missing optional packages named before any work, the same flag spellings."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import subprocess
import sys

import pytest

from nashmoe._argtypes import HelpFormatter, parse_seeds
from nashmoe.cli import SUBCOMMANDS, main

# --set keys every method of these tests accepts (dense and smoe do not use segment_len)
TINY = ["--set", "n_layer=1", "--set", "d_model=16", "--set", "d_ff=32", "--set", "n_head=2",
        "--set", "block_size=32"]  # fmt: skip
QUICK = ["--steps", "1", "--batch-size", "2", "--log-interval", "1", "--tensorboard", "off",
         "--no-progress", "--threads", "1", *TINY]  # fmt: skip


def _parser(command: str) -> argparse.ArgumentParser:
    module = importlib.import_module(SUBCOMMANDS[command][0])
    parser = argparse.ArgumentParser(prog=f"nashmoe {command}", formatter_class=HelpFormatter)
    module.add_arguments(parser)
    return parser


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"nashmoe {command}: error: "), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("text", "seeds"),
    [
        ("3", [0, 1, 2]),
        ("1", [0]),
        ("0,4,7", [0, 4, 7]),
        ("5,", [5]),
        ("0-3", [0, 1, 2, 3]),
        (["0", "4", "7"], [0, 4, 7]),
        (["3"], [0, 1, 2]),
        (2, [0, 1]),
        ([4, 2], [4, 2]),
    ],
)
def test_seeds_are_a_count_or_a_list(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "a seed count must be >= 1"),
        ("a", "must be an integer"),
        ("1,1", "distinct"),
        ("3-1", "empty seed range"),
        (",", "no seeds"),
    ],
)
def test_bad_seeds(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse_seeds(text)


@pytest.mark.parametrize("command", ["compare", "fair", "defer", "vision"])
def test_seeds_mean_the_same_in_every_subcommand(command):
    parser = _parser(command)
    assert parser.parse_args(["--seeds", "3"]).seeds == [0, 1, 2]  # a count, everywhere
    assert parser.parse_args(["--seeds", "0,4,7"]).seeds == [0, 4, 7]
    assert parser.parse_args(["--seeds", "0", "4"]).seeds == [0, 4]  # defer's old spelling
    assert parser.parse_args(["--seeds", "5,"]).seeds == [5]


def test_train_keeps_seed():
    assert _parser("train").parse_args(["--seed", "4"]).seed == 4


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_help_page_shows_its_defaults(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "(default: " in out, out


def test_help_shows_defaults_of_options_without_help(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--corpus NAME|PATH" in out and "(default: shakespeare)" in out
    assert "--weight-decay WEIGHT_DECAY (default: 0.1)" in out


def test_python_dash_m_nashmoe():
    proc = subprocess.run(
        [sys.executable, "-m", "nashmoe", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.startswith("nashmoe "), proc.stderr


@pytest.mark.parametrize("command", ["compare", "fair", "vision"])
def test_no_plots_is_spelled_the_same_everywhere(command):
    parser = _parser(command)
    assert parser.parse_args(["--no-plots"]).no_plots is True
    assert parser.parse_args([]).no_plots is False
    if command != "compare":  # the old documented spelling still works, hidden from the help
        assert parser.parse_args(["--no-plot"]).no_plots is True
        assert "--no-plot " not in parser.format_help()


def test_bad_seeds_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--seeds", "0"])
    assert exc.value.code == 2
    assert "argument --seeds: a seed count must be >= 1" in capsys.readouterr().err


def _hide(monkeypatch, *names):
    """Make ``find_spec`` report these top-level packages as not installed."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kw):
        if name.split(".")[0] in names:
            return None
        return real(name, *args, **kw)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command loads its corpus (the check must come before any work)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the corpus was loaded before the options were checked")

    for module in ("nashmoe.train.cli.train", "nashmoe.train.compare", "nashmoe.train.trainer"):
        monkeypatch.setattr(importlib.import_module(module), "corpus_for", refuse, raising=False)


@pytest.mark.parametrize(
    ("argv", "package", "message"),
    [
        (["train", "--tensorboard", "on"], "tensorboard",
         "--tensorboard on needs tensorboard: pip install 'nashmoe[tensorboard]'"),
        (["train"], "safetensors", "checkpoints needs safetensors: pip install 'nashmoe[train]'"),
        (["train", "--tokenizer", "bpe"], "tokenizers",
         "--tokenizer bpe needs tokenizers: pip install 'nashmoe[train]'"),
        (["compare", "--methods", "smoe"], "matplotlib",
         "plots needs matplotlib: pip install 'nashmoe[plot]' (or pass --no-plots)"),
        (["compare", "--methods", "smoe", "--no-plots", "--tensorboard", "on"], "tensorboard",
         "pip install 'nashmoe[tensorboard]'"),
    ],
)  # fmt: skip
def test_missing_optional_package_is_named_before_any_work(
    argv, package, message, monkeypatch, capsys, tmp_path, no_work
):
    _hide(monkeypatch, package)
    assert main([argv[0], *QUICK, *argv[1:], "--out", str(tmp_path / "o")]) == 2
    assert message in _one_line_error(capsys, argv[0])


def test_fair_benchmark_without_matplotlib(monkeypatch, capsys, tmp_path):
    _hide(monkeypatch, "matplotlib")
    assert main(["fair", "--benchmark", "--out", str(tmp_path)]) == 2
    assert "pip install 'nashmoe[plot]'" in _one_line_error(capsys, "fair")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fair", "--benchmark", "--methods", "erm,nope"], "--methods: unknown ['nope']"),
        (["fair", "--benchmark", "--tasks", "adult"], "--tasks: unknown task 'adult'"),
        (["defer", "--dataset", "hatespeech", "--experts", "human"],
         "--dataset hatespeech has annotators experts, not human"),
        (["defer", "--dataset", "hatespeech", "--model", "cnn"], "--model cnn does not fit"),
    ],
)  # fmt: skip
def test_fair_and_defer_errors_have_the_same_style(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert message in _one_line_error(capsys, argv[0])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--method", "smoe", "--set", "gamma=0.5"],
         "method 'smoe' does not use gamma (only used by propagating methods"),
        (["train", "--method", "camex", "--set", "momentum=0.5"],
         "method 'camex' does not use momentum"),
        (["train", "--method", "dense", "--set", "eta=2.0"], "dense has no MoE layer"),
        (["compare", "--methods", "smoe,camex", "--set", "gamma=0.5"],
         "no method of this comparison (smoe, camex) uses gamma"),
        (["train", "--corpus", "no/such/file.txt"], "unknown corpus 'no/such/file.txt'"),
        (["train", "--tokenizer", "no/such/tokenizer.json"],
         "--tokenizer no/such/tokenizer.json: no such file or directory"),
    ],
)  # fmt: skip
def test_options_the_method_does_not_use_are_errors_before_any_work(
    argv, message, capsys, tmp_path, no_work
):
    assert main([*argv, "--out", str(tmp_path / "o"), *QUICK]) == 2
    assert message in _one_line_error(capsys, argv[0])


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_usage_errors_are_one_line_with_status_2(command, capsys):
    positional = {
        "eval": ["run-dir"],
        "generate": ["run-dir"],
        "convert": ["src", "--method", "smoe", "--out", "dst"],
        "upcycle": ["src", "--method", "smoe", "--out", "dst", "--num-experts", "4"],
    }.get(command, [])
    with pytest.raises(SystemExit) as exc:
        main([command, *positional, "--no-such-option"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nashmoe {command}: error: unrecognized arguments: --no-such-option")
    assert len(err.strip().splitlines()) == 1, err
