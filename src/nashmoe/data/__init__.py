"""Data for language modelling: corpora, tokenizers and batching.

- :func:`load_corpus` gives a :class:`Corpus` (``train`` / ``validation`` / ``test`` token
  tensors, the tokenizer, and a JSON-serialisable ``info``) for ``"shakespeare"``
  (tiny-shakespeare, shipped in the package; the default), ``"brown"`` (the Brown corpus, split by
  file over its 15 genres) or your own text (a text file, a directory of split files, or
  ``"datasets:PATH"``), with a ``"char"``, ``"word"``, ``"bpe"`` or ``"gpt2"`` tokenizer or a
  ``tokenizer.json`` / ``AutoTokenizer`` directory.
- Tokenizers share the :class:`Tokenizer` interface (``encode``, ``decode``, ``vocab_size``,
  ``name``, ``to_dict``); :func:`tokenizer_from_dict` restores one from a checkpoint.
- :func:`get_batch` draws reproducible random blocks for training (DDP aware);
  :func:`iter_eval_batches` covers a split exactly once for exact perplexity.
- :func:`download_data` fetches a data file from its public source into the data directory.
- Images: :mod:`nashmoe.data.cifar` decodes CIFAR-10 (shared by :mod:`nashmoe.defer` and
  :mod:`nashmoe.vision`; import it from there, it is not re-exported here).
"""

from nashmoe.data._batching import IGNORE_INDEX, get_batch, iter_eval_batches, num_eval_blocks
from nashmoe.data._bpe import BPETokenizer, cached_bpe, load_gpt2_tokenizer, train_bpe
from nashmoe.data._brown import BROWN_GENRES, BrownDocument, brown_split, brown_splits, read_brown
from nashmoe.data._cache import CACHE_ENV_VAR, resolve_cache_dir
from nashmoe.data._char import CharTokenizer
from nashmoe.data._corpus import (
    CORPORA,
    CORPUS_DEFAULTS,
    SPLIT_ALIASES,
    SPLITS,
    TOKENIZERS,
    Corpus,
    CorpusDefaults,
    build_tokenizer,
    canonical_split,
    check_tokenizer_spec,
    corpus_texts,
    load_corpus,
)
from nashmoe.data._files import DATA_SOURCES, download_data
from nashmoe.data._pretrained import PretrainedTokenizer, load_pretrained_tokenizer
from nashmoe.data._shakespeare import shakespeare_split_bounds, shakespeare_text
from nashmoe.data._textfiles import check_corpus_spec, corpus_label
from nashmoe.data._tokenizer import Tokenizer, tokenizer_from_dict
from nashmoe.data._word import WordTokenizer

__all__ = [
    "BROWN_GENRES",
    "CACHE_ENV_VAR",
    "CORPORA",
    "CORPUS_DEFAULTS",
    "DATA_SOURCES",
    "IGNORE_INDEX",
    "SPLITS",
    "SPLIT_ALIASES",
    "TOKENIZERS",
    "BPETokenizer",
    "BrownDocument",
    "CharTokenizer",
    "Corpus",
    "CorpusDefaults",
    "PretrainedTokenizer",
    "Tokenizer",
    "WordTokenizer",
    "brown_split",
    "brown_splits",
    "build_tokenizer",
    "cached_bpe",
    "canonical_split",
    "check_corpus_spec",
    "check_tokenizer_spec",
    "corpus_label",
    "corpus_texts",
    "download_data",
    "get_batch",
    "iter_eval_batches",
    "load_corpus",
    "load_gpt2_tokenizer",
    "load_pretrained_tokenizer",
    "num_eval_blocks",
    "read_brown",
    "resolve_cache_dir",
    "shakespeare_split_bounds",
    "shakespeare_text",
    "tokenizer_from_dict",
    "train_bpe",
]
