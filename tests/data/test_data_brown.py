"""The Brown corpus: the split by file, its determinism, stratification and the word vocabulary."""

from __future__ import annotations

import hashlib
import zipfile
from collections import Counter

import pytest

from nashmoe._paths import data_file
from nashmoe.data import BROWN_GENRES, brown_split, load_corpus, read_brown

# Per genre: (files in train, valid, test), from the rule k = max(1, floor(n/10 + 1/2)).
EXPECTED_COUNTS = {
    "news": (36, 4, 4),
    "editorial": (21, 3, 3),
    "reviews": (13, 2, 2),
    "religion": (13, 2, 2),
    "hobbies": (28, 4, 4),
    "lore": (38, 5, 5),
    "belles_lettres": (59, 8, 8),
    "government": (24, 3, 3),
    "learned": (64, 8, 8),
    "fiction": (23, 3, 3),
    "mystery": (20, 2, 2),
    "science_fiction": (4, 1, 1),
    "adventure": (23, 3, 3),
    "romance": (23, 3, 3),
    "humor": (7, 1, 1),
}
# sha256 of "".join(f"{fileid} {split}\n" for fileid in sorted(files)): pins the whole assignment.
EXPECTED_ASSIGNMENT_SHA256 = "fd1caeef41d9ec19e92ea3e6779a5d7f15a600d6e24063f86887a5e08063d9c9"


def _synthetic(genre: str, n: int, letter: str = "x") -> dict[str, str]:
    return {f"c{letter}{i + 1:02d}": genre for i in range(n)}


def test_split_rule_on_synthetic_genres():
    # n = 6: k = 1, the genre is one stretch: test = its last file, valid = the one before.
    a = brown_split(_synthetic("g", 6))
    assert [a[f"cx{i:02d}"] for i in range(1, 7)] == ["train"] * 4 + ["validation", "test"]
    # n = 44: k = 4 stretches of 11: test = indices 10, 21, 32, 43; valid = 9, 20, 31, 42.
    a = brown_split(_synthetic("g", 44))
    by = {s: sorted(int(f[2:]) - 1 for f, v in a.items() if v == s) for s in ("validation", "test")}
    assert by == {"validation": [9, 20, 31, 42], "test": [10, 21, 32, 43]}
    # n = 75: k = floor(7.5 + 0.5) = 8; test = floor((j+1)*75/8) - 1.
    a = brown_split(_synthetic("g", 75))
    test = sorted(int(f[2:]) - 1 for f, v in a.items() if v == "test")
    assert test == [8, 17, 27, 36, 45, 55, 64, 74]
    # genres are split independently of each other and of the input order
    two = {**_synthetic("g1", 9, "a"), **_synthetic("g2", 12, "b")}
    rev = dict(reversed(list(two.items())))
    assert brown_split(two) == brown_split(rev)
    assert Counter(brown_split(two).values()) == {"train": 17, "validation": 2, "test": 2}


def test_split_rule_needs_three_files_per_genre():
    with pytest.raises(ValueError, match="genre 'tiny' has 2 file"):
        brown_split(_synthetic("tiny", 2))


def test_split_is_deterministic_and_pinned(brown_texts, need_data):
    need_data("brown/brown.zip")
    docs = read_brown()
    assert len(docs) == 500 and [d.fileid for d in docs] == sorted(d.fileid for d in docs)
    genres = {d.fileid: d.genre for d in docs}
    a1, a2 = brown_split(genres), brown_split(dict(sorted(genres.items(), reverse=True)))
    assert a1 == a2
    # pinned when the split was named "valid": the same assignment under the new name
    old = {"validation": "valid"}
    summary = "".join(f"{f} {old.get(a1[f], a1[f])}\n" for f in sorted(a1))
    assert hashlib.sha256(summary.encode()).hexdigest() == EXPECTED_ASSIGNMENT_SHA256
    # a few hand-checked files: news has 44 files, k = 4 -> valid ca10, test ca11, ...
    assert [a1[f] for f in ("ca01", "ca10", "ca11", "ca43", "ca44")] == [
        "train",
        "validation",
        "test",
        "validation",
        "test",
    ]
    assert (a1["cm05"], a1["cm06"], a1["cr08"], a1["cr09"]) == (
        "validation",
        "test",
        "validation",
        "test",
    )
    # stratification: the counts per genre follow the rule, every genre is in every split
    assert set(genres.values()) == set(BROWN_GENRES)
    for genre, expected in EXPECTED_COUNTS.items():
        got = Counter(a1[f] for f, g in genres.items() if g == genre)
        assert (got["train"], got["validation"], got["test"]) == expected, genre
    _, details = brown_texts
    assert details["splits"]["train"]["files"] == 396
    assert details["files"]["validation"] == sorted(f for f, s in a1.items() if s == "validation")


def test_no_file_in_two_splits(brown_word):
    info = brown_word.info
    valid, test = set(info["files"]["validation"]), set(info["files"]["test"])
    assert not valid & test
    assert len(valid) == len(test) == 52
    assert info["splits"]["train"]["files"] + len(valid) + len(test) == 500
    with zipfile.ZipFile(data_file("brown/brown.zip")) as zf:
        all_files = {n.split("/")[1] for n in zf.namelist() if n[6:7] == "c" and len(n) == 10}
    assert valid | test <= all_files and len(all_files) == 500


def test_split_sizes_and_info(brown_word):
    info = brown_word.info
    assert info["corpus"] == "brown" and info["tokenizer"] == "word"
    assert info["vocab_size"] == 14_500 and info["min_freq"] == 4
    sizes = {
        k: (v["files"], v["sentences"], v["words"], v["tokens"]) for k, v in info["splits"].items()
    }
    assert sizes == {
        "train": (396, 45_570, 920_444, 966_014),
        "validation": (52, 6_008, 120_613, 126_621),
        "test": (52, 5_762, 120_135, 125_897),
    }
    assert brown_word.train.numel() == 966_014
    assert sum(v["words"] for v in info["splits"].values()) == 1_161_192  # the whole corpus
    assert info["oov_rate"]["validation"] == pytest.approx(0.0698, abs=1e-4)
    assert info["oov_rate"]["test"] == pytest.approx(0.0720, abs=1e-4)
    for split in ("train", "validation", "test"):
        ids = brown_word.split(split)
        assert int((ids == brown_word.tokenizer.eos_id).sum()) == info["splits"][split]["sentences"]


def test_vocabulary_is_built_on_train_only(brown_word, brown_texts):
    texts, _ = brown_texts
    tok = brown_word.tokenizer
    train_counts = Counter(texts["train"].split())
    expected = {w for w, n in train_counts.items() if n >= 4}
    assert set(tok.words[2:]) == expected  # naive recount of the training text
    test_words = Counter(texts["test"].split())
    only_in_test = [w for w in test_words if w not in train_counts]
    assert len(only_in_test) > 100
    for w in only_in_test[:200]:
        assert tok.encode(w) == [tok.unk_id]
    # the OOV rate of the test split is exactly the share of its words outside the vocabulary
    n_oov = sum(n for w, n in test_words.items() if w not in expected)
    assert brown_word.info["oov_rate"]["test"] == pytest.approx(n_oov / sum(test_words.values()))


def test_normalisation_strips_tags_and_lowercases(brown_texts):
    texts, _ = brown_texts
    first = texts["train"].split("\n", 1)[0]
    assert first.startswith("the fulton county grand jury said friday an investigation of")
    assert "/" not in first and first == first.lower()


def test_token_stream_is_the_normalised_text(brown_word, brown_texts):
    texts, _ = brown_texts
    tok = brown_word.tokenizer
    vocab = set(tok.words)
    lines = texts["validation"].split("\n")[:500]
    expected = "".join(
        " ".join(w if w in vocab else "<unk>" for w in line.split(" ")) + "\n" for line in lines
    )
    n = sum(len(line.split(" ")) + 1 for line in lines)
    assert tok.decode(brown_word.validation[:n]) == expected


def test_bpe_line_batching_equals_whole_text(gpt2_tokenizer, brown_texts):
    texts, _ = brown_texts
    part = "".join(texts["validation"].splitlines(keepends=True)[:2000])
    assert gpt2_tokenizer.encode_lines(part.splitlines(keepends=True)) == gpt2_tokenizer.encode(
        part
    )


def test_missing_brown_zip_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_corpus("brown", data_dir=tmp_path)
    msg = str(err.value)
    assert "brown/brown.zip" in msg and str(tmp_path / "brown" / "brown.zip") in msg


def test_missing_data_dir_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv("NASHMOE_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="NASHMOE_DATA"):
        load_corpus("brown")


def test_not_a_brown_zip(tmp_path):
    (tmp_path / "brown").mkdir()
    with zipfile.ZipFile(tmp_path / "brown" / "brown.zip", "w") as zf:
        zf.writestr("brown/README", "nothing")
    with pytest.raises(ValueError, match=r"no brown/cats\.txt"):
        read_brown(tmp_path)
    (tmp_path / "brown" / "brown.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a zip file"):
        read_brown(tmp_path)
