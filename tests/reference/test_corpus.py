"""Corpus loading (built-in and files), token statistics and the byte dataset."""

from __future__ import annotations

import numpy as np
import pytest

from zarrec import ConfigError
from zarrec.reference.corpus import BUILTIN_CORPUS, ByteDataset, byte_label, load_corpus


def test_builtin_corpus_ships_with_python():
    corpus = load_corpus()
    assert corpus.name == BUILTIN_CORPUS
    assert corpus.tokens.size > 400_000 and corpus.tokens.max() < 128
    assert len(corpus.sha256) == 64


def test_non_ascii_bytes_are_dropped(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("café ab", encoding="utf-8")
    corpus = load_corpus(path)
    assert bytes(corpus.tokens).decode("ascii") == "caf ab"
    counts = corpus.counts(128)
    assert counts[ord("a")] == 2 and counts[ord("é") % 128] == 0 and counts.sum() == 6


def test_token_coords(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("aab\n", encoding="ascii")
    coords = load_corpus(path).token_coords(128)
    dim, live = coords["live"]
    assert dim == "token" and live.sum() == 3 and live[ord("a")] and not live[ord("z")]
    assert coords["count"][1][ord("a")] == 2
    assert coords["char"][1][ord("a")] == "a" and coords["char"][1][10] == "\\n"


def test_byte_labels_are_printable():
    assert byte_label(ord("A")) == "A" and byte_label(0) == "\\x00" and byte_label(9) == "\\t"
    assert byte_label(127) == "\\x7f" and byte_label(32) == " "


@pytest.mark.parametrize("content", [None, b"", "é".encode()])
def test_missing_or_empty_corpus_is_a_clear_error(tmp_path, content):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match="corpus"):
        load_corpus(path)


def test_dataset_windows_are_labelled_for_causal_lm(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefgh", encoding="ascii")
    dataset = ByteDataset(load_corpus(path), context=4)
    assert len(dataset) == 5
    item = dataset[4]
    assert bytes(item["input_ids"].numpy().astype(np.uint8)) == b"efgh"
    assert (item["labels"] == item["input_ids"]).all()
    with pytest.raises(ConfigError, match="fewer than one window"):
        ByteDataset(load_corpus(path), context=9)
