"""The fixed probe: its input, positions, and logits with the current weights in evaluation mode."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from zarrec import ConfigError
from zarrec.reference.model import build_model
from zarrec.capture.probe import Probe


@pytest.fixture(scope="module")
def model(tiny_config):
    return build_model(dataclasses.replace(tiny_config, n_embd=8))


def test_text_is_bytes_and_positions_count_from_either_end():
    probe = Probe("abc", positions=[0, -1])
    assert probe.ids == [97, 98, 99] and probe.positions == [0, 2]
    coords = probe.coords()
    np.testing.assert_array_equal(coords["probe_position"][1], [0, 2])
    np.testing.assert_array_equal(coords["probe_input"][1], [97, 99])
    assert coords["probe_input"][0] == "probe_position"


@pytest.mark.parametrize(("arguments", "message"), [
    (("",), "the probe is empty"),
    (("abc", [3]), r"probe positions \[3\] lie outside its 3 tokens"),
    (("abc", [-4]), r"probe positions \[-4\] lie outside"),
    (("abc", None, 0), "every must be a positive number"),
])
def test_bad_probes_are_refused(arguments, message):
    with pytest.raises(ConfigError, match=message):
        Probe(*arguments)


def test_ids_beyond_the_vocabulary_are_refused():
    with pytest.raises(ConfigError, match=r"token ids \[200\] outside the model's vocabulary of 128"):
        Probe([1, 200]).check_vocabulary(128)


def test_logits_are_the_models_in_evaluation_mode_and_its_mode_is_restored(model):
    probe = Probe("fox", positions=[-1])
    model.train()
    logits = probe.logits(model)
    assert model.training and logits.shape == (1, 128) and not logits.requires_grad
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([list(b"fox")])).logits[0, [2]]
    assert torch.equal(logits, expected)
