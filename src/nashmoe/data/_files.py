"""The external data files the corpora and tokenizers read, where they come from, and fetching
them into a data directory.

The library only reads files from a data directory given explicitly (``data_dir``) or by
``$NASHMOE_DATA`` (see :mod:`nashmoe._paths`). ``download_data`` fetches a file from its usual
public source into that directory and checks its SHA-256, for machines that can reach it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nashmoe._paths import DATA_ENV_VAR, data_file

__all__ = ["DATA_SOURCES", "DataSource", "download_data", "require_data_file"]


@dataclass(frozen=True)
class DataSource:
    """Where a data file usually comes from and its expected SHA-256."""

    url: str
    sha256: str
    licence: str


DATA_SOURCES: dict[str, DataSource] = {
    "brown/brown.zip": DataSource(
        url="https://raw.githubusercontent.com/nltk/nltk_data/gh-pages/packages/corpora/brown.zip",
        sha256="9b275f9b3b95d7bd66ccfb7cd259f445a13bbe5d1f4107aba09fd3e8364bafa6",
        licence="Brown corpus (Francis & Kucera 1964/1979), NLTK data; research use",
    ),
    "gpt2-bpe/encoder.json": DataSource(
        url="https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        sha256="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        licence="OpenAI GPT-2, MIT",
    ),
    "gpt2-bpe/vocab.bpe": DataSource(
        url="https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        sha256="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        licence="OpenAI GPT-2, MIT",
    ),
    "tinyshakespeare/input.txt": DataSource(
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        licence="public domain text (char-rnn)",
    ),
}


def require_data_file(
    relative: str, data_dir: str | os.PathLike[str] | None = None, *, what: str
) -> Path:
    """``nashmoe._paths.data_file`` with a message saying what needs the file and how to get it."""
    try:
        return data_file(relative, data_dir)
    except FileNotFoundError as e:
        hint = ""
        if relative in DATA_SOURCES:
            hint = (
                f"; fetch it with nashmoe.data.download_data({relative!r}, data_dir=...) "
                f"or from {DATA_SOURCES[relative].url}"
            )
        raise FileNotFoundError(f"{what} needs the data file {relative!r}: {e}{hint}") from e


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_data(
    relative: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    url: str | None = None,
    sha256: str | None = "default",
    force: bool = False,
) -> Path:
    """Fetch ``relative`` (a key of :data:`DATA_SOURCES`) into the data directory.

    Args:
        relative: the file's path inside the data directory, e.g. ``"brown/brown.zip"``.
        data_dir: the data directory (created if missing); default ``$NASHMOE_DATA``.
        url: where to fetch from (any URL ``urllib`` opens, ``file://`` included); default the
            file's usual public source.
        sha256: expected checksum; ``"default"`` uses the known one, ``None`` skips the check.
        force: fetch even when the file is already there.

    Returns:
        The path of the file. An existing file is kept (and checked) unless ``force``.

    Raises:
        ValueError: unknown file without ``url``, or a checksum mismatch (nothing is written).
    """
    source = DATA_SOURCES.get(relative)
    if source is None and url is None:
        raise ValueError(
            f"no known source for {relative!r} (known: {sorted(DATA_SOURCES)}); pass url=..."
        )
    if sha256 == "default":
        sha256 = source.sha256 if source is not None else None
    if data_dir is None:
        data_dir = os.environ.get(DATA_ENV_VAR)
        if not data_dir:
            raise FileNotFoundError(
                f"no data directory given: pass data_dir=... or set {DATA_ENV_VAR}"
            )
    target = Path(data_dir).expanduser() / relative
    if target.exists() and not force:
        if sha256 is not None and _sha256(target) != sha256:
            raise ValueError(
                f"{str(target)!r} exists but its SHA-256 is not {sha256}; "
                "pass force=True to fetch it again"
            )
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(url or source.url, timeout=120) as resp,
        ):  # type: ignore[union-attr]
            shutil.copyfileobj(resp, out)
        got = _sha256(tmp)
        if sha256 is not None and got != sha256:
            raise ValueError(
                f"checksum mismatch for {relative!r} from {url or source.url}: "  # type: ignore[union-attr]
                f"got {got}, expected {sha256}"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
