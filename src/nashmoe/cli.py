"""The ``nashmoe`` command line.

Subcommands live in their own modules and are imported only when invoked, so ``nashmoe --help``
stays fast and optional dependencies are never imported for commands that do not need them.
Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

from nashmoe._argtypes import HelpFormatter
from nashmoe._version import __version__
from nashmoe._warnings import NashmoeWarning

# name -> (module, one-line help). Keep alphabetical within each group.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "ablate": (
        "nashmoe.train.cli.ablate",
        "what the bargaining contributes: paired ablations over seeds (NAMEx reviewers)",
    ),
    "compare": ("nashmoe.train.cli.compare", "the main job: train and compare every MoE method"),
    "convert": (
        "nashmoe._cli_hf.convert",
        "replace the MoE blocks of a transformers checkpoint (Mixtral, Qwen-MoE, ...)",
    ),
    "data": ("nashmoe.data._cli", "corpus split statistics: sizes, vocabulary, OOV rates"),
    "defer": ("nashmoe.defer.cli", "multi-expert learning to defer (PiCCE)"),
    "eval": ("nashmoe.train.cli.eval", "validation / test perplexity of a trained checkpoint"),
    "fair": ("nashmoe.fairness.cli", "fairness-aware meta-learning via Nash bargaining"),
    "finetune-cls": (
        "nashmoe.finetune.cli",
        "upcycle a pretrained encoder (MiniLM) and fine-tune it on SST-2 with each method",
    ),
    "generate": ("nashmoe.train.cli.generate", "sample text from a trained checkpoint"),
    "train": ("nashmoe.train.cli.train", "train one MoE language model (torchrun for DDP)"),
    "upcycle": (
        "nashmoe._cli_hf.upcycle",
        "turn a dense transformers checkpoint (BERT, Llama, GPT-2) into a MoE model",
    ),
    "vision": (
        "nashmoe.vision.cli",
        "MoE ViT on CIFAR-10: clean and corrupted (CIFAR-10-C) accuracy",
    ),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<14} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    parser = argparse.ArgumentParser(
        prog="nashmoe",
        description="Nash-bargaining expert merging for sparse Mixture-of-Experts (NAMEx).",
        epilog="subcommands:\n"
        + "\n".join(lines)
        + "\n\nRun `nashmoe <subcommand> --help` for its options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nashmoe {__version__}")
    parser.add_argument("subcommand", nargs="?", choices=sorted(SUBCOMMANDS), metavar="subcommand")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nashmoe`` console script.

    Run as a program (``argv`` None) inside a multi-process ``torchrun`` job, a command that
    returns ends the process itself, without interpreter finalisation
    (:func:`nashmoe.train.distributed.exit_worker`).
    """
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0].startswith("-"):
        top.parse_args(argv)  # handles --help / --version, errors on anything else
        top.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        top.error(f"unknown subcommand {name!r} (choose from {', '.join(sorted(SUBCOMMANDS))})")
    module_name, help_ = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"nashmoe {name}",
        description=(module.__doc__ or help_).strip(),
        formatter_class=HelpFormatter,
    )
    parser.error = _one_line_error(parser)  # type: ignore[method-assign]
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    with warnings.catch_warnings():
        warnings.simplefilter("always", NashmoeWarning)  # shown, never turned into errors
        warnings.showwarning = _one_line_warnings(name, warnings.showwarning)
        code = int(module.run(args) or 0)
    if from_command_line:  # in a torchrun worker: end without interpreter finalisation
        from nashmoe.train.distributed import exit_worker

        exit_worker(code)
    return code


def _one_line_error(parser: argparse.ArgumentParser):
    """``parser.error`` that prints the same one line as every other user error,
    ``nashmoe <cmd>: error: ...``, and exits with status 2 (argparse would print the usage
    first; ``--help`` shows it)."""

    def error(message: str):
        text = " ".join(message.split())
        parser.exit(2, f"{parser.prog}: error: {text} (see {parser.prog} --help)\n")

    return error


def _one_line_warnings(command: str, default):
    """A ``warnings.showwarning`` that prints nashmoe's own warnings (e.g. a damaged checkpoint
    that was skipped) as ``nashmoe <command>: warning: ...`` and leaves the others alone."""

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, NashmoeWarning):
            print(f"nashmoe {command}: warning: {message}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
