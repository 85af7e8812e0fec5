"""The Brown corpus (Francis & Kučera 1964/1979), word level, split by file over its 15 genres.

Read directly from NLTK's ``brown.zip`` (``<data_dir>/brown/brown.zip``): 500 files
``brown/c[a-r][0-9][0-9]`` of about 2,000 words each, one sentence per line as ``word/TAG``
tokens, and ``brown/cats.txt`` mapping each file to one of 15 genres.

Normalisation: the part-of-speech tag after the last ``/`` of each token is dropped, words are
lowercased (the vocabulary then counts "The" and "the" once), and each sentence becomes one line
of words joined by single spaces; the word tokenizer turns every line end into one ``<eos>``.
Files are concatenated in name order within a split.

Split (deterministic, by file, stratified by genre): within each genre the files are sorted by
name and numbered ``i = 0 .. n-1``; ``k = max(1, floor(n/10 + 1/2))`` files go to test and ``k``
to valid: the genre is cut into ``k`` equal stretches, test takes the last file of each stretch
(``i = floor((j+1) n / k) - 1`` for ``j = 0 .. k-1``), valid takes the file just before it, and
all other files are train. Every genre thus has files in all three splits, spread over the
genre's sub-sources, about 80% / 10% / 10%.

Resulting sizes (lowercased; tokens count words plus one ``<eos>`` per sentence):

========  =====  =========  =======  =======  =========
split     files  sentences  words    tokens   chars
========  =====  =========  =======  =======  =========
train       396     45,570  920,444  966,014  4,865,359
validation   52      6,008  120,613  126,621    629,100
test         52      5,762  120,135  125,897    632,615
========  =====  =========  =======  =======  =========

Per genre, train / valid / test files: news 36/4/4, editorial 21/3/3, reviews 13/2/2, religion
13/2/2, hobbies 28/4/4, lore 38/5/5, belles_lettres 59/8/8, government 24/3/3, learned 64/8/8,
fiction 23/3/3, mystery 20/2/2, science_fiction 4/1/1, adventure 23/3/3, romance 23/3/3,
humor 7/1/1. Valid files: ca10 ca21 ca32 ca43 cb08 cb17 cb26 cc07 cc16 cd07 cd16 ce08 ce17 ce26
ce35 cf08 cf18 cf27 cf37 cf47 cg08 cg17 cg27 cg36 cg45 cg55 cg64 cg74 ch09 ch19 ch29 cj09 cj19
cj29 cj39 cj49 cj59 cj69 cj79 ck08 ck18 ck28 cl11 cl23 cm05 cn08 cn18 cn28 cp08 cp18 cp28 cr08;
each test file is the file after a valid file (ca11, ca22, ..., cr09).

With the word vocabulary of the training split at the default ``min_freq=4`` (words seen at
least 4 times, following Bengio et al., JMLR 2003, who merged words of frequency <= 3 on Brown):
14,500 ids (``<unk>``, ``<eos>`` and 14,498 words); out-of-vocabulary rate (share of words,
``<eos>`` excluded, that map to ``<unk>``): train 4.66%, valid 6.98%, test 7.20%. Other
cut-offs (vocabulary / valid OOV / test OOV): ``min_freq=1`` 43,845 / 3.69% / 3.82%,
``2`` 24,503 / 5.03% / 5.24%, ``3`` 18,069 / 6.10% / 6.23%, ``5`` 12,309 / 7.72% / 8.01%.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nashmoe.data._files import require_data_file

__all__ = [
    "BROWN_GENRES",
    "BROWN_ZIP",
    "BrownDocument",
    "brown_split",
    "brown_splits",
    "brown_text",
    "read_brown",
]

BROWN_ZIP = "brown/brown.zip"
# The 15 genres in the order of their file letters (a, b, c, d, e, f, g, h, j, k, l, m, n, p, r).
BROWN_GENRES = (
    "news",
    "editorial",
    "reviews",
    "religion",
    "hobbies",
    "lore",
    "belles_lettres",
    "government",
    "learned",
    "fiction",
    "mystery",
    "science_fiction",
    "adventure",
    "romance",
    "humor",
)
SPLITS = ("train", "validation", "test")
_FILE_RE = re.compile(r"brown/(c[a-r]\d\d)")


@dataclass(frozen=True)
class BrownDocument:
    """One Brown file: its id (``"ca01"``), genre and sentences (tuples of words)."""

    fileid: str
    genre: str
    sentences: tuple[tuple[str, ...], ...]

    @property
    def num_words(self) -> int:
        return sum(len(s) for s in self.sentences)


def brown_split(genres: Mapping[str, str]) -> dict[str, str]:
    """The split (``"train"``, ``"validation"`` or ``"test"``) of each file, given file → genre.

    See the module docstring for the rule. Raises ValueError for a genre with fewer than 3 files.
    """
    by_genre: dict[str, list[str]] = defaultdict(list)
    for fileid, genre in genres.items():
        by_genre[genre].append(fileid)
    out: dict[str, str] = {}
    for genre, files in sorted(by_genre.items()):
        files.sort()
        n = len(files)
        if n < 3:
            raise ValueError(f"genre {genre!r} has {n} file(s); a split by file needs at least 3")
        k = max(1, math.floor(n / 10 + 0.5))
        test = {math.floor((j + 1) * n / k) - 1 for j in range(k)}
        valid = {i - 1 for i in test}
        for i, fileid in enumerate(files):
            out[fileid] = "test" if i in test else "validation" if i in valid else "train"
    return out


def _parse(raw: str, *, lowercase: bool) -> tuple[tuple[str, ...], ...]:
    sentences = []
    for line in raw.split("\n"):
        tokens = line.split()
        if not tokens:
            continue
        words = tuple(t.rsplit("/", 1)[0] for t in tokens)
        if lowercase:
            words = tuple(w.lower() for w in words)
        sentences.append(words)
    return tuple(sentences)


def read_brown(
    data_dir: str | os.PathLike[str] | None = None, *, lowercase: bool = True
) -> list[BrownDocument]:
    """All 500 Brown files, sorted by file id, from ``<data_dir>/brown/brown.zip``."""
    path = require_data_file(BROWN_ZIP, data_dir, what="the Brown corpus")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{str(path)!r} is not a zip file: {e}") from e
    with zf:
        names = set(zf.namelist())
        if "brown/cats.txt" not in names:
            raise ValueError(f"{str(path)!r} has no brown/cats.txt: not NLTK's Brown corpus zip")
        genres: dict[str, str] = {}
        for line in zf.read("brown/cats.txt").decode("utf-8").splitlines():
            parts = line.split()
            if parts:
                genres[parts[0]] = parts[1]
        docs = []
        for name in sorted(names):
            m = _FILE_RE.fullmatch(name)
            if m is None:
                continue
            fileid = m.group(1)
            if fileid not in genres:
                raise ValueError(f"{name!r} has no genre in brown/cats.txt")
            raw = zf.read(name).decode("utf-8")
            docs.append(BrownDocument(fileid, genres[fileid], _parse(raw, lowercase=lowercase)))
    if not docs:
        raise ValueError(f"{str(path)!r} holds no brown/c[a-r]NN files")
    return docs


def brown_splits(
    data_dir: str | os.PathLike[str] | None = None, *, lowercase: bool = True
) -> dict[str, list[BrownDocument]]:
    """The documents of each split (``train``, ``validation``, ``test``), in file-name order."""
    docs = read_brown(data_dir, lowercase=lowercase)
    assignment = brown_split({d.fileid: d.genre for d in docs})
    out: dict[str, list[BrownDocument]] = {s: [] for s in SPLITS}
    for d in docs:
        out[assignment[d.fileid]].append(d)
    return out


def brown_text(docs: Sequence[BrownDocument]) -> str:
    """The documents as text: one sentence per line, words joined by single spaces."""
    return "".join(" ".join(s) + "\n" for d in docs for s in d.sentences)
