"""TrainConfig: the reference defaults and the checks on every setting."""

from __future__ import annotations

import dataclasses

import pytest

from zarrec import ConfigError
from zarrec.reference.config import TrainConfig


def test_defaults_are_the_reference_experiment():
    config = TrainConfig()
    assert (config.vocab_size, config.n_embd, config.n_layer, config.n_head, config.context) == (128, 64, 2, 2, 128)
    assert (config.batch_size, config.steps, config.learning_rate, config.weight_decay) == (32, 10_000, 1e-3, 0.01)
    assert (config.adam_beta1, config.adam_beta2, config.adam_epsilon, config.seed) == (0.9, 0.999, 1e-8, 42)
    assert (config.dtype, config.init, config.init_sigma) == ("bfloat16", "f32_to_bf16", 1e-5)
    config.validate()


@pytest.mark.parametrize(
    "change, message",
    [({"dtype": "float16"}, "dtype"), ({"init": "xavier"}, "init"), ({"steps": 0}, "steps"),
     ({"n_embd": 10, "n_head": 4}, "divisible"), ({"device": "tpu"}, "device"), ({"rows": "a:b"}, "rows must be")],
)
def test_bad_configs_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(TrainConfig(), **change).validate()


def test_rows_are_the_live_tokens_a_range_or_ids():
    live = [False, True, True, False]
    assert dataclasses.replace(TrainConfig(), rows="live").token_rows(live) == [1, 2]
    assert dataclasses.replace(TrainConfig(), rows="2:").token_rows(live) == slice(2, None)
    assert dataclasses.replace(TrainConfig(), rows="3,1").token_rows(live) == [3, 1]
    assert TrainConfig().token_rows(live) is None
