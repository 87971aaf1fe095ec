"""The training text as bytes, its per-token statistics, and the byte-level dataset.

The default corpus is CPython's own ``pydoc_data.topics`` (about 460 KB of English
prose that ships with every Python), so the reference experiment runs offline.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from zarrec.errors import ConfigError
from zarrec.store import contract

BUILTIN_CORPUS = "pydoc_data.topics"


@dataclass(frozen=True)
class Corpus:
    """Token ids (bytes below ``vocab_size``) of a text, with where it came from."""

    name: str
    tokens: np.ndarray  # uint8 or int64 token ids

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.tokens.astype(np.uint8).tobytes()).hexdigest()

    def counts(self, vocab_size: int) -> np.ndarray:
        """Occurrences of each token id ``0..vocab_size-1``."""
        return np.bincount(self.tokens, minlength=vocab_size).astype(np.int64)

    def token_coords(self, vocab_size: int) -> dict[str, tuple[str, np.ndarray]]:
        """The ``live``, ``char`` and ``count`` coordinates along ``token`` (store contract)."""
        counts = self.counts(vocab_size)
        return {
            contract.LIVE: (contract.TOKEN, counts > 0),
            contract.CHAR: (contract.TOKEN, byte_labels(vocab_size)),
            contract.COUNT: (contract.TOKEN, counts),
        }


def byte_labels(vocab_size: int) -> np.ndarray:
    """:func:`byte_label` of every token id ``0..vocab_size-1`` (the ``char`` coordinate)."""
    return np.array([byte_label(i) for i in range(vocab_size)], dtype=object)


def byte_label(byte: int) -> str:
    """A printable label for a byte: the character itself, or an escape such as ``\\n`` or ``\\x00``."""
    char = chr(byte)
    return char if char.isprintable() and byte < 128 else repr(char)[1:-1]


def load_corpus(path: str | os.PathLike | None = None, vocab_size: int = 128) -> Corpus:
    """Read a text file (or the built-in corpus) as bytes, keeping only bytes below ``vocab_size``.

    As in the reference notebook, bytes outside the vocabulary (non-ASCII for 128) are dropped.
    """
    if path is None:
        from pydoc_data.topics import topics

        raw = "".join(topics[key] for key in sorted(topics)).encode("utf-8")
        name = BUILTIN_CORPUS
    else:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"corpus {file} does not exist or is not a file; pass --corpus with a text file")
        raw = file.read_bytes()
        name = file.name
    tokens = np.frombuffer(raw, dtype=np.uint8)
    _refuse_binary(tokens, name)
    tokens = tokens[tokens < vocab_size]
    if tokens.size == 0:
        raise ConfigError(f"corpus {name} has no bytes below {vocab_size} (it is empty or not ASCII text); pass a text file")
    return Corpus(name=name, tokens=tokens.copy())


# Control bytes other than whitespace; text has (almost) none, binary files are full of them.
_CONTROL = np.array([b < 32 and chr(b) not in "\t\n\r\f\v" or b == 127 for b in range(256)])
_MAX_CONTROL_SHARE = 0.01


def _refuse_binary(data: np.ndarray, name: str) -> None:
    share = _CONTROL[data].mean() if data.size else 0.0
    if share > _MAX_CONTROL_SHARE:
        raise ConfigError(
            f"corpus {name} looks binary ({share:.0%} of its bytes are control characters); pass a text file"
        )


class ByteDataset(Dataset):
    """Every window of ``context`` consecutive bytes, as a causal language-modelling example.

    ``labels`` equal ``input_ids``: Hugging Face causal LMs shift labels themselves. (The
    reference notebook passed labels already shifted by one, which the model shifted
    again, so it trained to predict the byte after next.)
    """

    def __init__(self, corpus: Corpus, context: int) -> None:
        if corpus.tokens.size < context:
            raise ConfigError(
                f"corpus {corpus.name} has {corpus.tokens.size} usable bytes, fewer than one window of "
                f"{context}; use a longer corpus or a shorter context"
            )
        self.tokens = torch.from_numpy(corpus.tokens.astype(np.int64))
        self.context = context

    def __len__(self) -> int:
        return self.tokens.numel() - self.context + 1

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        window = self.tokens[index : index + self.context]
        return {"input_ids": window, "labels": window}
