"""The Lightning callback records what the optimizer used, step by step, like the HF one."""

from __future__ import annotations

import lightning.pytorch as lightning
import numpy as np
import pytest
import torch
import xarray as xr

from conftest import check_health
from lightning_module import DECAY, LR, TinyLMWithLogits, fit
from zarrec import ConfigError
from zarrec.adapters.lightning import ZarrecLightningCallback

SCALARS = {"grad_norm", "grad_norm_before_clipping"}  # recorded with the loss and lr at every step


def test_records_clipped_gradients_moments_and_the_lr_each_step_used(tmp_path):
    """momentum[t] = β1·m[t−1] + (1−β1)·g[t] proves g is what AdamW used (after clipping at 0.05)."""
    module = fit(ZarrecLightningCallback(tmp_path / "run.zarr"), gradient_clip_val=0.05, accumulate_grad_batches=2)
    ds = xr.open_zarr(tmp_path / "run.zarr").load()
    np.testing.assert_array_equal(ds.step, np.arange(7))
    assert set(ds.data_vars) == {"embeddings", "grads", "momentum", "variance", "loss", "lr", *SCALARS}
    assert ds.embeddings.dims == ("step", "token", "dim")
    g, m = ds.grads.values[1:], ds.momentum.values
    np.testing.assert_allclose(m[1:], 0.9 * m[:-1] + 0.1 * g, rtol=1e-5, atol=1e-8)
    assert (np.sqrt((g.astype(np.float64) ** 2).sum(axis=(1, 2))) <= 0.05 * (1 + 1e-5)).all()  # clipped
    np.testing.assert_allclose(ds.lr[1:], LR * DECAY ** np.arange(6), rtol=1e-6)
    np.testing.assert_array_equal(ds.embeddings[-1], module.embed.weight.detach().numpy())
    assert ds.grads[0].isnull().all() and (ds.momentum[0] == 0).all() and ds.loss[1:].notnull().all()
    assert ds.attrs["hparams"] == {"lr": LR} and ds.attrs["gradient_accumulation_steps"] == 2
    assert ds.attrs["framework"] == "lightning" and ds.attrs["optimizer_class"] == "AdamW"
    before, after = ds.grad_norm_before_clipping.values[1:], ds.grad_norm.values[1:]
    assert (before > 0.05).all() and np.allclose(after, 0.05, rtol=1e-4)  # every step was clipped to 0.05
    assert ds.attrs["zarrec_status"]["state"] == "complete"


def test_any_parameters_and_a_schedule(tmp_path):
    fit(ZarrecLightningCallback(tmp_path / "run.zarr", params=["out.*"], quantities=["param", "exp_avg"], every="1:2,2"))
    ds = xr.open_zarr(tmp_path / "run.zarr")
    np.testing.assert_array_equal(ds.step, [0, 1, 2, 4, 6])
    assert set(ds.data_vars) == {"out.weight", "out.weight.exp_avg", "out.bias", "out.bias.exp_avg", "loss", "lr", *SCALARS}
    assert ds["out.weight"].dims == ("step", "out_weight_row", "out_weight_col") == ds["out.weight.exp_avg"].dims


def test_state_the_optimizer_lacks_is_refused_and_the_store_closed(tmp_path):
    with pytest.raises(ConfigError, match="AdamW keeps no 'momentum_buffer' for embed.weight"):
        fit(ZarrecLightningCallback(tmp_path / "run.zarr", quantities=["momentum_buffer"]))
    assert xr.open_zarr(tmp_path / "run.zarr").attrs["zarrec_status"]["state"] == "interrupted"


@pytest.mark.filterwarnings("ignore:Checkpoint directory", "ignore:You're resuming from a checkpoint")
def test_logits_a_probe_and_a_resume_as_the_hf_callback_records_them(tmp_path):
    """Lightning reaches parity: training logits, probe logits, and a resume from a checkpoint
    that drops the steps after it and continues the store."""
    data = torch.utils.data.TensorDataset(torch.randint(0, 12, (64, 9), generator=torch.Generator().manual_seed(1)))

    class Crash(lightning.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 5:
                raise RuntimeError("the machine went down")

    def run(*extra, **options):
        trainer = lightning.Trainer(max_steps=7, accelerator="cpu", logger=False, enable_progress_bar=False,
                                    enable_model_summary=False, default_root_dir=tmp_path, callbacks=[
                                        ZarrecLightningCallback(tmp_path / "run.zarr", probe=[1, 2, 3], chunk_steps=2,
                                                                resume=True),
                                        lightning.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3,
                                                                            save_top_k=-1), *extra])
        trainer.fit(TinyLMWithLogits(), torch.utils.data.DataLoader(data, batch_size=4), **options)

    with pytest.raises(RuntimeError, match="the machine went down"):
        run(Crash())
    first = xr.open_zarr(tmp_path / "run.zarr").load()
    assert first.logits.dims == ("step", "token") and first.logits[1:].notnull().all()
    assert first.probe_logits.dims == ("step", "probe_position", "token") and first.probe_logits.notnull().all()
    assert first.attrs["zarrec_status"]["state"] == "interrupted" and first.step.values[-1] == 5
    run(ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=3.ckpt"))
    resumed = xr.open_zarr(tmp_path / "run.zarr").load()
    np.testing.assert_array_equal(resumed.step, np.arange(8))
    xr.testing.assert_equal(resumed.isel(step=slice(0, 4)).embeddings, first.isel(step=slice(0, 4)).embeddings)
    assert resumed.attrs["zarrec_resumed_after"] == [3]


def test_the_health_statistics_equal_their_formulas_on_the_full_state(lightning_run):
    """With an exponential learning-rate schedule: the statistics use each step's rate."""
    for param, per_row in (("embed.weight", True), ("out.weight", True), ("out.bias", False)):
        check_health(lightning_run, param, per_row)


def test_the_statistics_of_steps_not_recorded_use_the_rate_the_step_used(tmp_path):
    """every=3: the full state every third step, the statistics at every step, each with the
    learning rate before the scheduler's step (a rate off by DECAY would show as a fraction of 0.9)."""
    path = tmp_path / "run.zarr"
    fit(ZarrecLightningCallback(path, params=["embed.weight", "out.*"], every=3))
    ds = xr.open_zarr(path)
    np.testing.assert_array_equal(ds.step, [0, 3, 6])
    overview = ds.zarrec.by_parameter()
    np.testing.assert_array_equal(overview.step, np.arange(1, 7))
    np.testing.assert_allclose(overview.realized_fraction, 1, rtol=1e-4)


def test_log_statistics_reach_lightnings_logger_at_its_logging_steps(tmp_path):
    """A real CSVLogger, logging every 2nd step: its rows hold each parameter's statistics of
    that step, as the store has them."""
    import pandas as pd
    from lightning.pytorch.loggers import CSVLogger

    path = tmp_path / "run.zarr"
    fit(ZarrecLightningCallback(path, log_statistics=True), logger=CSVLogger(tmp_path / "logs", name="run"), log_every_n_steps=2)
    logged = pd.read_csv(next((tmp_path / "logs").rglob("metrics.csv"))).set_index("step")
    stats = xr.open_zarr(f"{path}/statistics")
    names = [f"{statistic}/{param}" for statistic in ("grad_norm", "update_norm", "cos_grad_momentum")
             for param in stats.param.values]
    assert set(names) <= set(logged.columns)
    # (Lightning's logged "step" counts optimizer steps from 0: its step s is zarrec's step s + 1)
    assert list(logged.index) == [1, 3, 5]
    for step in logged.index:
        for name in names:
            statistic, param = name.split("/", 1)
            assert np.float32(logged.at[step, name]) == stats[statistic].sel(step=step + 1, param=param).values


def test_log_statistics_without_statistics_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="log_statistics=True logs the health statistics, which statistics=False"):
        ZarrecLightningCallback(tmp_path / "run.zarr", log_statistics=True, statistics=False)
