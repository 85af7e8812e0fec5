"""Fixtures of the fine-tuning tests: a small SST-2-layout data folder."""

from __future__ import annotations

import pytest

POSITIVE = [
    "a gorgeous , witty , seductive movie",
    "the performances are uniformly excellent",
    "one of the best films of the year",
    "a charming and funny story",
    "warm , moving and beautifully acted",
    "an exhilarating experience",
    "smart , sassy and surprisingly touching",
    'the "kids" will love it',
    "a triumph",
    "delightful from start to finish , with a wonderful cast and a clever , generous script",
    "it 's a lovely film",
    "great fun",
]
NEGATIVE = [
    "a dull , lifeless mess",
    "the plot is a disaster",
    "boring and far too long",
    "one of the worst films of the year",
    "painfully unfunny",
    "a tedious , pointless exercise",
    "the acting is wooden and the dialogue is worse",
    "it never comes together",
    "a waste of time",
    "flat , tired and predictable , the film drags on long after its ideas have run out",
    "unwatchable",
    "sloppy",
]


def write_task(folder, train: int = 16, dev: int = 8, test: int = 8) -> None:
    """``folder/sst2/{train,dev,test}.tsv`` cut from the sentences above (label 1 / 0)."""
    rows = [(s, 1) for s in POSITIVE] + [(s, 0) for s in NEGATIVE]
    rows = [rows[i] for i in range(0, len(rows), 2)] + [rows[i] for i in range(1, len(rows), 2)]
    sst = folder / "sst2"
    sst.mkdir(parents=True, exist_ok=True)
    start = 0
    for name, n in (("train", train), ("dev", dev), ("test", test)):
        chunk = [rows[(start + i) % len(rows)] for i in range(n)]
        start += n
        text = "sentence\tlabel\n" + "".join(f"{s} \t{y}\n" for s, y in chunk)
        (sst / f"{name}.tsv").write_text(text, encoding="utf-8")


@pytest.fixture
def task_dir(tmp_path):
    write_task(tmp_path / "data")
    return tmp_path / "data"
