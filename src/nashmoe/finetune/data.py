"""Sentence-classification tasks read from local TSV files (GLUE layout).

``sst2`` (Socher et al. 2013, as packaged by GLUE, Wang et al. 2019): ``sst2/train.tsv`` (the
training phrases), ``sst2/dev.tsv`` (held-out training phrases, used here to pick the epoch) and
``sst2/test.tsv`` (the 872-sentence GLUE dev set, whose labels are public: reported once), each a
TSV file with the header ``sentence<TAB>label``. The data folder comes from ``data_dir`` or
``$NASHMOE_DATA`` (:mod:`nashmoe._paths`); GLUE's public download (``SST-2.zip``) unpacks to the
same files, with GLUE's ``dev.tsv`` to be saved as ``test.tsv`` here.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np

from nashmoe._paths import data_file

__all__ = ["SPLITS", "TASKS", "TaskSpec", "TextSplit", "load_task", "stratified_indices"]

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's files live and what their columns mean."""

    name: str
    folder: str
    num_labels: int
    text_column: str = "sentence"
    label_column: str = "label"
    label_names: tuple[str, ...] = ()


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", "sst2", 2, label_names=("negative", "positive")),
}
"""Tasks :func:`load_task` reads (name → spec)."""


@dataclass
class TextSplit:
    """Sentences and their integer labels."""

    sentences: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.sentences)

    def subset(self, indices: np.ndarray) -> TextSplit:
        return TextSplit([self.sentences[i] for i in indices], self.labels[indices])


def _read_tsv(path: os.PathLike[str], spec: TaskSpec) -> TextSplit:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file (expected a header and rows)")
        header = [h.strip() for h in header]
        missing = [c for c in (spec.text_column, spec.label_column) if c not in header]
        if missing:
            raise ValueError(
                f"{path}: no column {', '.join(map(repr, missing))} in the header {header}"
            )
        ti, li = header.index(spec.text_column), header.index(spec.label_column)
        sentences, labels = [], []
        for line, row in enumerate(reader, start=2):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) <= max(ti, li):
                raise ValueError(
                    f"{path}, line {line}: {len(row)} field(s), expected {len(header)}"
                )
            try:
                label = int(row[li])
            except ValueError:
                raise ValueError(
                    f"{path}, line {line}: label {row[li]!r} is not an integer"
                ) from None
            if not 0 <= label < spec.num_labels:
                raise ValueError(
                    f"{path}, line {line}: label {label} outside 0..{spec.num_labels - 1}"
                )
            sentences.append(row[ti].strip())
            labels.append(label)
    if not sentences:
        raise ValueError(f"{path}: no rows")
    return TextSplit(sentences, np.asarray(labels, dtype=np.int64))


def load_task(task: str, *, data_dir: str | os.PathLike[str] | None = None) -> dict[str, TextSplit]:
    """``{"train", "dev", "test"}`` splits of ``task`` (see the module docstring).

    Raises:
        ValueError: an unknown task, or a malformed file (the message names file and line).
        FileNotFoundError: the data folder or a split file is missing.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose from {', '.join(TASKS)}")
    spec = TASKS[task]
    return {s: _read_tsv(data_file(f"{spec.folder}/{s}.tsv", data_dir), spec) for s in SPLITS}


def stratified_indices(labels: np.ndarray, size: int, *, seed: int) -> np.ndarray:
    """Sorted indices of ``size`` items drawn without replacement, in proportion to the class
    sizes (largest-remainder rounding); all indices when ``size`` ≥ the number of items."""
    labels = np.asarray(labels)
    if size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    share = np.array([len(p) for p in per_class], dtype=np.float64) / len(labels) * size
    take = np.floor(share).astype(int)
    for c in np.argsort(-(share - take), kind="stable")[: size - int(take.sum())]:
        take[c] += 1
    return np.sort(np.concatenate([p[:k] for p, k in zip(per_class, take)])).astype(np.int64)
