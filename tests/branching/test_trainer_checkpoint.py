"""zarrec.trainer_checkpoint: an HF Trainer run of a model of the user's own continues from a recorded step bit for bit."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import xarray as xr
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

import zarrec
from zarrec import ConfigError, ZarrecCallback

TOKENS = torch.randint(0, 32, (40, 8), generator=torch.Generator().manual_seed(1))
DATA = [{"input_ids": row, "labels": row} for row in TOKENS]


def _trainer(tmp_path, out, steps=12) -> Trainer:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
                                         attention_dropout=0.3))  # (the random state matters)
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-2,
        lr_scheduler_type="cosine", warmup_steps=2, max_grad_norm=0.5, weight_decay=0.1, seed=3, use_cpu=True,
        report_to="none", save_strategy="no", logging_steps=100, disable_tqdm=True,
    )
    return Trainer(model=model, args=args, train_dataset=DATA, callbacks=[ZarrecCallback(str(out), params="*")])


def test_a_trainer_resumed_from_a_checkpoint_of_a_recorded_step_continues_bit_for_bit(tmp_path):
    """12 steps over an epoch boundary (10 steps an epoch), a cosine schedule with warm-up,
    dropout; branched at step 6 into a new Trainer: steps 7..12 equal the recorded ones in every
    variable."""
    original = _trainer(tmp_path, tmp_path / "run.zarr")
    original.train()
    branch = _trainer(tmp_path, tmp_path / "branch.zarr")
    checkpoint = zarrec.trainer_checkpoint(tmp_path / "run.zarr", 6, branch, tmp_path / "at-6")
    branch.train(resume_from_checkpoint=checkpoint)
    for group in ("", "statistics"):
        run = xr.open_zarr(tmp_path / "run.zarr" / group).sel(step=slice(7, 12)).load()
        continued = xr.open_zarr(tmp_path / "branch.zarr" / group).load()
        np.testing.assert_array_equal(continued.step, np.arange(7, 13))
        for name in run.data_vars:
            np.testing.assert_array_equal(continued[name].values, run[name].values, err_msg=name)
    for (name, parameter), (_, continued) in zip(original.model.named_parameters(), branch.model.named_parameters()):
        assert torch.equal(parameter, continued), name


def test_a_checkpoint_the_trainer_could_not_continue_from_is_refused_in_one_line(tmp_path):
    _trainer(tmp_path, tmp_path / "run.zarr", steps=3).train()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a-file").write_text("x")
    cases = {
        "the trainer stops at step 3 (max_steps), not after the branch's step 3: pass a larger max_steps": (3, "new"),
        "full exists and is not an empty directory; pass a new directory for the checkpoint": (2, "full"),
    }
    for message, (step, directory) in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            zarrec.trainer_checkpoint(tmp_path / "run.zarr", step, _trainer(tmp_path, tmp_path / "b.zarr", steps=3), tmp_path / directory)
    assert not (tmp_path / "new").exists()
