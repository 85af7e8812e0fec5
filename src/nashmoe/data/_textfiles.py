"""Your own text as a corpus: a text file, a directory of split files, or a dataset read with the
``datasets`` package (local files only).

``--corpus`` (and :func:`nashmoe.data.load_corpus`) accepts, besides the built-in names:

- a text file: split contiguously by characters, 90 % / 5 % / 5 % (as tiny-shakespeare);
- a directory with one text file per split, recognised by a name part ``train``, ``validation``
  (or ``valid``, ``val``, ``dev``) and ``test`` (``train.txt``, ``wiki.valid.raw``,
  ``test-00.txt``; several files of one split are joined in name order);
- ``datasets:PATH``: a dataset saved with ``save_to_disk`` or data files (``.jsonl``, ``.json``,
  ``.csv``, ``.parquet``, ``.txt``, a directory of them) read with ``datasets`` (the ``data``
  extra); the ``text`` column (or the only string column), rows joined by newlines. A dataset with
  a ``train`` split only is split 90 / 5 / 5 like a text file.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from nashmoe._optional import require

__all__ = [
    "DATASETS_PREFIX",
    "check_corpus_spec",
    "corpus_label",
    "is_builtin_corpus",
    "user_corpus_texts",
]

DATASETS_PREFIX = "datasets:"
SPLIT_ALIASES = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}
_TEXT_SUFFIXES = ("", ".txt", ".raw", ".text", ".tokens")
_DATA_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def is_builtin_corpus(spec: str) -> bool:
    from nashmoe.data._corpus import CORPORA

    return spec in CORPORA


def corpus_label(spec: str) -> str:
    """A short name for run directories and caches: the built-in name, or the file's stem."""
    if is_builtin_corpus(spec):
        return spec
    path = spec[len(DATASETS_PREFIX) :] if spec.startswith(DATASETS_PREFIX) else spec
    p = Path(path)
    stem = p.name if p.is_dir() else p.stem
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "corpus"
    return label


def check_corpus_spec(spec: str) -> None:
    """Raise a one-line error before any work for a corpus that cannot be loaded: an unknown name,
    a missing path, or ``datasets:`` without the datasets package.

    Raises:
        ValueError, FileNotFoundError, ImportError.
    """
    from nashmoe.data._corpus import CORPORA

    if not isinstance(spec, str) or not spec:
        raise ValueError(f"corpus must be a name or a path, got {spec!r}")
    if spec in CORPORA:
        return
    if spec.startswith(DATASETS_PREFIX):
        from nashmoe._argtypes import check_installed

        check_installed("datasets", extra="data", purpose=f"--corpus {spec}")
        path = spec[len(DATASETS_PREFIX) :]
        if not Path(path).exists():
            raise FileNotFoundError(f"--corpus {spec}: no such file or directory {path!r}")
        return
    if not Path(spec).exists():
        raise ValueError(
            f"unknown corpus {spec!r} (choose from {', '.join(CORPORA)}, or give an existing "
            "text file, a directory with train/validation/test files, or datasets:PATH)"
        )


def _split_of(name: str) -> str | None:
    parts = set(re.split(r"[._\-]", name.lower()))
    found = [s for s, aliases in SPLIT_ALIASES.items() if parts & set(aliases)]
    return found[0] if len(found) == 1 else None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _contiguous(text: str) -> dict[str, str]:
    from nashmoe.data._shakespeare import shakespeare_split_bounds

    bounds = shakespeare_split_bounds(len(text))
    return {k: text[s:e] for k, (s, e) in bounds.items()}


_CONTIGUOUS_RULE = (
    "contiguous by characters: with n characters, train = [0, n*9//10), "
    "validation = [n*9//10, n*19//20), test = [n*19//20, n)  (90% / 5% / 5%)"
)


def _directory_texts(root: Path) -> tuple[dict[str, str], dict[str, Any]]:
    files: dict[str, list[Path]] = {s: [] for s in SPLIT_ALIASES}
    for f in sorted(root.iterdir()):
        if not f.is_file() or f.name.startswith(".") or f.suffix.lower() not in _TEXT_SUFFIXES:
            continue
        split = _split_of(f.name)
        if split:
            files[split].append(f)
    missing = [s for s, fs in files.items() if not fs]
    if missing:
        data_files = [f.name for f in root.iterdir() if f.suffix.lower() in _DATA_SUFFIXES]
        hint = (
            f"; for {', '.join(data_files[:3])} use --corpus datasets:{root}" if data_files else ""
        )
        raise ValueError(
            f"--corpus {root}: no text file for the {'/'.join(missing)} split(s) (expected names "
            f"such as train.txt, validation.txt or valid.txt, test.txt){hint}"
        )
    texts = {s: "".join(_read(f) for f in fs) for s, fs in files.items()}
    details = {
        "split_rule": "one file per split, by file name ("
        + ", ".join(f"{s}: {', '.join(f.name for f in fs)}" for s, fs in files.items())
        + ")",
    }
    return texts, details


def _column(ds: Any, spec: str) -> str:
    features = getattr(ds, "features", {}) or {}
    if "text" in features:
        return "text"
    strings = [
        k for k, v in features.items() if getattr(v, "dtype", None) in ("string", "large_string")
    ]
    if len(strings) == 1:
        return strings[0]
    raise ValueError(
        f"--corpus {spec}: no 'text' column and not exactly one string column "
        f"(columns: {', '.join(features) or 'none'})"
    )


def _datasets_texts(spec: str) -> tuple[dict[str, str], dict[str, Any]]:
    datasets = require("datasets", extra="data", purpose=f"--corpus {spec}")
    path = Path(spec[len(DATASETS_PREFIX) :])
    if not path.exists():
        raise FileNotFoundError(f"--corpus {spec}: no such file or directory {str(path)!r}")
    try:
        if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        elif path.is_file():
            builder = _DATA_SUFFIXES.get(path.suffix.lower(), "text")
            loaded = datasets.load_dataset(builder, data_files=str(path))
        else:
            loaded = datasets.load_dataset(str(path))
    except (OSError, ValueError) as e:
        raise ValueError(f"--corpus {spec}: datasets cannot read it ({e})") from None
    except Exception as e:  # datasets raises its own exception types
        raise ValueError(
            f"--corpus {spec}: datasets cannot read it ({type(e).__name__}: {e})"
        ) from None
    if not hasattr(loaded, "keys"):  # a single Dataset
        loaded = {"train": loaded}
    names: dict[str, str] = {}
    for split, aliases in SPLIT_ALIASES.items():
        for a in aliases:
            if a in loaded:
                names[split] = a
                break
    if "train" not in names:
        raise ValueError(f"--corpus {spec}: no train split (splits: {', '.join(loaded.keys())})")

    def joined(name: str) -> str:
        ds = loaded[name]
        col = _column(ds, spec)
        return "\n".join(str(t) for t in ds[col] if t is not None) + "\n"

    if set(names) == set(SPLIT_ALIASES):
        texts = {s: joined(n) for s, n in names.items()}
        rule = "the dataset's own splits (" + ", ".join(f"{s}: {n}" for s, n in names.items()) + ")"
    elif set(names) == {"train"}:
        texts = _contiguous(joined("train"))
        rule = "the dataset's train split, " + _CONTIGUOUS_RULE
    else:
        raise ValueError(
            f"--corpus {spec}: has {', '.join(loaded.keys())}; needs train, validation and test "
            "splits, or train only (then split 90/5/5)"
        )
    return texts, {"split_rule": rule}


def user_corpus_texts(spec: str) -> tuple[dict[str, str], dict[str, Any]]:
    """The text of each split of a user corpus, and facts about it (see the module docstring)."""
    check_corpus_spec(spec)
    if spec.startswith(DATASETS_PREFIX):
        texts, details = _datasets_texts(spec)
        details["source"] = spec
    else:
        p = Path(spec)
        if p.is_dir():
            texts, details = _directory_texts(p)
        else:
            texts = _contiguous(_read(p))
            details = {"split_rule": _CONTIGUOUS_RULE}
        details["source"] = os.fspath(p)
    details["normalisation"] = "raw text as read (UTF-8)"
    details["splits"] = {k: {"chars": len(v)} for k, v in texts.items()}
    empty = [k for k, v in texts.items() if not v]
    if empty:
        raise ValueError(f"--corpus {spec}: the {'/'.join(empty)} split(s) are empty")
    details["sha256"] = hashlib.sha256("".join(texts.values()).encode("utf-8")).hexdigest()
    return texts, details
