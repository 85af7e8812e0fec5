"""Shared argparse helpers of every ``nashmoe`` subcommand.

- ``type=`` helpers for numeric options: NaN, infinities and out-of-range values are rejected when
  the command line is parsed (``nashmoe <cmd>: error: argument --x: ...``, exit status 2) instead
  of being silently misread later.
- :func:`add_seeds_argument`: ``--seeds`` means the same in every subcommand, a count
  (``--seeds 3``: seeds 0, 1, 2) or a list (``--seeds 0,4,7``, ``--seeds 0 4 7``, ``--seeds 0-4``).
- :class:`HelpFormatter`: every help page shows the defaults.
- :func:`report_error` and :func:`check_installed`: one error style, ``nashmoe <cmd>: error: ...``
  with exit status 2, and a missing optional package named before any work starts.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shlex
import sys
from collections.abc import Sequence

__all__ = [
    "HelpFormatter",
    "SeedsAction",
    "add_seeds_argument",
    "check_installed",
    "command_line",
    "finite_float",
    "nonneg_float",
    "nonneg_int",
    "parse_seeds",
    "positive_float",
    "positive_int",
    "probability",
    "report_error",
]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """Any finite number (no NaN, no infinity)."""
    return _float(text)


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def nonneg_float(text: str) -> float:
    """A finite number >= 0."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1]."""
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return value


# -- seeds ---------------------------------------------------------------------------------------

_SEEDS_HELP = "a count (3: seeds 0, 1, 2) or a list (0,4,7 or 0 4 7 or 0-4)"


def _seed_items(text: str) -> list[int]:
    """Seeds written out: ``"0,4,7"``, ``"5,"``, ``"0-4"`` (inclusive), or a mix."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            a, b = part.split("-", 1)
            lo, hi = _int(a), _int(b)
            if hi < lo:
                raise argparse.ArgumentTypeError(f"empty seed range {part!r}")
            seeds.extend(range(lo, hi + 1))
        else:
            seeds.append(_int(part))
    return seeds


def parse_seeds(value: str | int | Sequence[str | int]) -> list[int]:
    """The seeds of ``--seeds``, the same in every subcommand.

    One token that is a plain integer is a count (``"3"``: 0, 1, 2); a token with a comma or a
    range (``"0,4,7"``, ``"5,"``, ``"0-4"``) or several tokens (``["0", "4", "7"]``) list the seeds.
    An ``int`` is a count; a sequence of ints is a list.

    Raises:
        argparse.ArgumentTypeError (a ``ValueError``): no seeds, a count below 1, a negative or
            repeated seed, or text that is not a number.
    """
    if isinstance(value, bool):
        raise argparse.ArgumentTypeError(f"seeds must be a count or a list, got {value!r}")
    if isinstance(value, int):
        count = value
        seeds = None
    elif isinstance(value, str):
        text = value.strip()
        if "," in text or "-" in text[1:]:
            count, seeds = None, _seed_items(text)
        else:
            count, seeds = _int(text), None
    else:
        items = list(value)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            count, seeds = None, [int(v) for v in items]
        elif len(items) == 1:
            return parse_seeds(str(items[0]))
        else:
            count, seeds = None, [s for v in items for s in _seed_items(str(v))]
    if count is not None:
        if count < 1:
            raise argparse.ArgumentTypeError(
                f"a seed count must be >= 1, got {count} (for seed {count} alone write {count},)"
            )
        return list(range(count))
    assert seeds is not None
    if not seeds:
        raise argparse.ArgumentTypeError(f"no seeds in {value!r}")
    if any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be >= 0, got {value!r}")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct, got {value!r}")
    return seeds


class SeedsAction(argparse.Action):
    """``--seeds`` (one or more tokens) parsed by :func:`parse_seeds` into a list of ints."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            seeds = parse_seeds(values if isinstance(values, list) else [values])
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentError(self, str(err)) from None
        setattr(namespace, self.dest, seeds)


def add_seeds_argument(parser, *, default: int | str | Sequence[int], help: str = "") -> None:
    """Add ``--seeds`` (see :func:`parse_seeds`); ``default`` is parsed the same way."""
    parser.add_argument(
        "--seeds",
        nargs="+",
        action=SeedsAction,
        default=parse_seeds(default),
        metavar="SEEDS",
        help=(help + "; " if help else "") + _SEEDS_HELP,
    )


# -- help pages -----------------------------------------------------------------------------------


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and appends ``(default: X)`` to every option that has a
    meaningful default (not None, not a flag's False) and whose help does not already say it."""

    def _format_action(self, action: argparse.Action) -> str:
        if self._shows_default(action):
            if action.help is None:
                action.help = "(default: %(default)s)"
            elif "default" not in action.help:
                action.help = action.help + " (default: %(default)s)"
        return super()._format_action(action)

    @staticmethod
    def _shows_default(action: argparse.Action) -> bool:
        default = action.default
        return (
            bool(action.option_strings)
            and default is not None
            and default is not argparse.SUPPRESS
            and not isinstance(default, bool)
            and default != []
        )

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        if "%(default)" in help_ or not self._shows_default(action):
            return help_
        default = action.default
        if isinstance(default, (list, tuple)):
            shown = " ".join(map(str, default))
            return f"{help_} (default: {shown})"
        return help_ + " (default: %(default)s)"


# -- reproducing a run ---------------------------------------------------------------------------


def command_line(args: argparse.Namespace, words: Sequence[str]) -> str:
    """The shell command that reproduces a run: ``words`` (``["nashmoe", "vision"]``), then every
    option whose value differs from its default, in the parser's order. The parser comes from
    ``args._parser`` (``parser.set_defaults(_parser=parser)``); hidden spellings are skipped."""
    parts = list(words)
    parser = getattr(args, "_parser", None)
    if parser is None:
        return shlex.join(parts)
    defaults = vars(parser.parse_args([]))
    for action in parser._actions:
        dest = action.dest
        if (
            dest in ("help", "_parser")
            or not action.option_strings
            or action.help == argparse.SUPPRESS
        ):
            continue
        value = getattr(args, dest, None)
        if value == defaults.get(dest):
            continue
        flag = action.option_strings[-1]
        if isinstance(value, bool):
            parts.append(flag)
        elif dest == "seeds":
            parts += [flag, ",".join(map(str, value)) + ("," if len(value) == 1 else "")]
        elif isinstance(value, list):
            parts += [x for v in value for x in (flag, str(v))]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


# -- errors ---------------------------------------------------------------------------------------


def report_error(command: str, err: BaseException | str) -> int:
    """Print a user error as one line on stderr (``nashmoe <command>: error: ...``); returns the
    exit status of usage errors, 2."""
    text = str(err)
    if isinstance(err, OSError) and err.strerror:  # not "[Errno 28] ..."
        text = err.strerror
        if err.filename is not None and os.fspath(err.filename) not in text:
            text = f"{err.filename}: {text}"
    text = " ".join(text.split())
    print(f"nashmoe {command}: error: {text}", file=sys.stderr)
    return 2


def check_installed(
    module: str, *, extra: str, purpose: str, package: str | None = None, hint: str = ""
) -> None:
    """Raise the ``ImportError`` of :func:`nashmoe._optional.require` when ``module`` cannot be
    found, without importing it (cheap: for checks at argument-validation time)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        name = package or module.split(".")[0]
        raise ImportError(
            f"{purpose} needs {name}: pip install 'nashmoe[{extra}]'"
            + (f" ({hint})" if hint else "")
        )
