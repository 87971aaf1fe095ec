"""The reference experiment: initialisation, configuration checks and the step-1 physics."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from transformers import TrainerCallback

from zarrec import CheckpointError, ConfigError
from zarrec.reference.config import TrainConfig
from zarrec.reference.model import initial_embeddings
from zarrec.reference.train import checkpoint_steps, resolve_device, train


def test_f32_to_bf16_init_puts_every_token_within_one_bf16_step():
    """The float32 noise (1e-5) is far below bf16 resolution: it can only tip a rounding by one step."""
    weights = initial_embeddings(TrainConfig())
    assert weights.dtype == torch.bfloat16 and weights.shape == (128, 64)
    values = weights.float()
    one_step = 2.0 ** (torch.floor(torch.log2(values.abs().max(0).values)) - 7)
    assert ((values - values[0]).abs() <= one_step).all()
    assert abs(values[0].norm() - 1) < 1e-2


def test_pure_bf16_and_float32_inits_differ_per_token():
    for config in (TrainConfig(init="pure_bf16"), TrainConfig(dtype="float32")):
        weights = initial_embeddings(config)
        assert not (weights == weights[0]).all()
        spread = (weights.float() - weights.float().mean(0)).norm(dim=1).mean()
        assert spread < 1e-2


def test_unavailable_device_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="not available"):
        resolve_device("cuda")
    assert resolve_device("cpu") == "cpu"


def test_step_one_logits_are_uniform_to_bf16_resolution(tmp_path, small_corpus):
    """The reference's physics check: identical bf16 embeddings and tied weights give uniform logits."""
    config = TrainConfig(steps=2, context=32, batch_size=4, device="cpu", corpus=str(small_corpus))
    train(config, tmp_path / "bf16.zarr", progress=False)
    ds = xr.open_zarr(tmp_path / "bf16.zarr")
    assert ds.attrs["dtype"] == "bfloat16" and ds.embeddings.attrs["source_dtype"] == "bfloat16"
    logits = ds.logits.values[1]
    one_bf16_step = np.spacing(np.float32(np.abs(logits).max())) * 2**16  # bf16 keeps 8 of float32's 24 bits
    assert np.ptp(logits) <= one_bf16_step
    # embeddings were bf16 values: float32 storage is exact, low 16 bits are zero
    assert (ds.embeddings.values.view(np.uint32) & 0xFFFF == 0).all()


class CrashAt(TrainerCallback):
    """Raises in the middle of training, as a diverging run or a failing data loader would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"crashed after step {self.step}")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_crashed_run_resumes_from_its_checkpoint_to_the_uninterrupted_result(tmp_path, tiny_config, dtype):
    """An exception at step 13: every recorded step is kept and the store says why; resuming from
    the step-10 checkpoint drops 11..13 and gives, bitwise, the store of a run never interrupted."""
    config = dataclasses.replace(tiny_config, steps=20, dtype=dtype)
    uninterrupted = tmp_path / "uninterrupted.zarr"
    train(config, uninterrupted, progress=False)
    out, checkpoints = tmp_path / "run.zarr", tmp_path / "checkpoints"
    with pytest.raises(RuntimeError, match="crashed after step 13"):
        train(config, out, checkpoint_dir=checkpoints, save_steps=5, progress=False, callbacks=[CrashAt(13)])
    crashed = xr.open_zarr(out)
    np.testing.assert_array_equal(crashed.step, np.arange(14))
    assert crashed.attrs["zarrec_status"] == {**crashed.attrs["zarrec_status"], "state": "interrupted",
                                              "reason": "RuntimeError: crashed after step 13", "last_step": 13}
    assert checkpoint_steps(checkpoints) == [5, 10]

    train(config, out, resume=True, checkpoint_dir=checkpoints, save_steps=5, progress=False)
    ds, expected = xr.open_zarr(out), xr.open_zarr(uninterrupted)
    assert ds.attrs["zarrec_resumed_after"] == [10]
    np.testing.assert_array_equal(ds.step, expected.step)
    for name in expected.data_vars:
        np.testing.assert_array_equal(ds[name].values, expected[name].values, err_msg=name)


def test_a_branch_with_the_runs_settings_is_the_run_and_one_with_another_rate_differs_from_its_first_step(tmp_path, tiny_config):
    """`zarrec train --steps 60 --params '*'` (bf16, the default dtype), then branches from step 30:
    unchanged, steps 31..60 equal the run's bit for bit in every variable and statistic; with
    twice the learning rate, every step differs, and the attributes say what changed."""
    config = dataclasses.replace(tiny_config, steps=60, dtype="bfloat16", params=("*",))
    train(config, tmp_path / "run.zarr", progress=False)
    train(config, tmp_path / "same.zarr", progress=False, branch_from=tmp_path / "run.zarr", branch_step=30)
    faster = dataclasses.replace(config, learning_rate=2 * config.learning_rate)
    train(faster, tmp_path / "faster.zarr", progress=False, branch_from=tmp_path / "run.zarr", branch_step=30)
    for group in ("", "statistics"):
        run = xr.open_zarr(tmp_path / "run.zarr" / group).sel(step=slice(31, 60)).load()
        same, other = (xr.open_zarr(tmp_path / name / group).load() for name in ("same.zarr", "faster.zarr"))
        np.testing.assert_array_equal(same.step, np.arange(31, 61))
        np.testing.assert_array_equal(other.step, np.arange(31, 61))
        for name in run.data_vars:  # parameters, gradients, optimizer state, loss, logits, lr, norms
            np.testing.assert_array_equal(same[name].values, run[name].values, err_msg=name)
    run = xr.open_zarr(tmp_path / "run.zarr").sel(step=slice(31, 60))
    other = xr.open_zarr(tmp_path / "faster.zarr")
    assert (other.lr.values == 2 * run.lr.values).all()
    assert (other.embeddings != run.embeddings).any(["token", "dim"]).all()  # from step 31 on
    assert other.loss[0] == run.loss[0] and (other.loss.values[1:] != run.loss.values[1:]).all()  # (step 31's forward: step 30's weights)
    assert xr.open_zarr(tmp_path / "same.zarr").attrs["branched_from"] == {"store": str(tmp_path / "run.zarr"), "step": 30, "changed": {}}
    assert other.attrs["branched_from"]["changed"] == {"learning_rate": [config.learning_rate, 2 * config.learning_rate]}


class FullDiskAt(TrainerCallback):
    """The disk fills up while the Trainer writes the checkpoint of ``step``: its optimizer file
    is a link to /dev/full, where every write fails with ENOSPC (the store's disk has room)."""

    def __init__(self, checkpoints: Path, step: int) -> None:
        self.optimizer_file = checkpoints / f"checkpoint-{step}" / "optimizer.pt"
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.optimizer_file.parent.mkdir(parents=True)
            self.optimizer_file.symlink_to("/dev/full")


def test_a_failed_checkpoint_write_commits_every_step_and_resume_passes_over_it(tmp_path, tiny_config, caplog):
    config = dataclasses.replace(tiny_config, steps=15)
    uninterrupted = tmp_path / "uninterrupted.zarr"
    train(config, uninterrupted, progress=False)
    out, checkpoints = tmp_path / "run.zarr", tmp_path / "checkpoints"
    full = FullDiskAt(checkpoints, 10)
    with pytest.raises(CheckpointError, match=f"the Trainer could not write {checkpoints}/checkpoint-10 ") as failed:
        train(config, out, checkpoint_dir=checkpoints, save_steps=5, progress=False, callbacks=[full])
    assert "every recorded step is committed" in str(failed.value) and "--resume" in str(failed.value)
    stopped = xr.open_zarr(out)
    np.testing.assert_array_equal(stopped.step, np.arange(11))
    status = stopped.attrs["zarrec_status"]
    assert status["state"] == "interrupted" and status["reason"].startswith("the Trainer could not write")

    full.optimizer_file.unlink()  # room again; checkpoint-10 stays behind, written in part
    with caplog.at_level(logging.WARNING, logger="zarrec"):
        train(config, out, resume=True, checkpoint_dir=checkpoints, save_steps=5, progress=False)
    assert "passing over checkpoint-10" in caplog.text
    ds, expected = xr.open_zarr(out), xr.open_zarr(uninterrupted)
    assert ds.attrs["zarrec_resumed_after"] == [5]
    for name in expected.data_vars:
        np.testing.assert_array_equal(ds[name].values, expected[name].values, err_msg=name)


def test_a_new_run_refuses_an_earlier_runs_checkpoints(tmp_path, tiny_config):
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "checkpoint-5").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"holds checkpoints of an earlier run \(steps \[5\]\); pass --resume"):
        train(tiny_config, tmp_path / "run.zarr", checkpoint_dir=checkpoints, save_steps=5, progress=False)
