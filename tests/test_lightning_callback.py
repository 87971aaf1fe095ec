"""The Lightning callback records what the optimizer used, step by step, like the HF one."""

from __future__ import annotations

import lightning.pytorch as lightning
import numpy as np
import pytest
import torch
import xarray as xr

from zarrec import ConfigError
from zarrec.lightning_callback import ZarrecLightningCallback

LR, DECAY = 1e-2, 0.9  # the scheduler multiplies the learning rate by DECAY after every step


class TinyLM(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters({"lr": LR})
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(12, 4)
        self.out = torch.nn.Linear(4, 12)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.embed

    def training_step(self, batch, batch_idx):
        (tokens,) = batch
        return torch.nn.functional.cross_entropy(self.out(self.embed(tokens[:, :-1])).flatten(0, 1), tokens[:, 1:].flatten())

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=DECAY)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def fit(callback, steps: int = 6, **trainer_options) -> TinyLM:
    data = torch.utils.data.TensorDataset(torch.randint(0, 12, (64, 9), generator=torch.Generator().manual_seed(1)))
    module = TinyLM()
    trainer = lightning.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[callback], **trainer_options,
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    return module


def test_records_clipped_gradients_moments_and_the_lr_each_step_used(tmp_path):
    """momentum[t] = β1·m[t−1] + (1−β1)·g[t] proves g is what AdamW used (after clipping at 0.05)."""
    module = fit(ZarrecLightningCallback(tmp_path / "run.zarr"), gradient_clip_val=0.05, accumulate_grad_batches=2)
    ds = xr.open_zarr(tmp_path / "run.zarr").load()
    np.testing.assert_array_equal(ds.step, np.arange(7))
    assert set(ds.data_vars) == {"embeddings", "grads", "momentum", "variance", "loss", "lr"}
    assert ds.embeddings.dims == ("step", "token", "dim")
    g, m = ds.grads.values[1:], ds.momentum.values
    np.testing.assert_allclose(m[1:], 0.9 * m[:-1] + 0.1 * g, rtol=1e-5, atol=1e-8)
    assert (np.sqrt((g.astype(np.float64) ** 2).sum(axis=(1, 2))) <= 0.05 * (1 + 1e-5)).all()  # clipped
    np.testing.assert_allclose(ds.lr[1:], LR * DECAY ** np.arange(6), rtol=1e-6)
    np.testing.assert_array_equal(ds.embeddings[-1], module.embed.weight.detach().numpy())
    assert ds.grads[0].isnull().all() and (ds.momentum[0] == 0).all() and ds.loss[1:].notnull().all()
    assert ds.attrs["hparams"] == {"lr": LR} and ds.attrs["accumulate_grad_batches"] == 2
    assert ds.attrs["zarrec_status"]["state"] == "complete"


def test_any_parameters_and_a_schedule(tmp_path):
    fit(ZarrecLightningCallback(tmp_path / "run.zarr", params=["out.*"], quantities=["param", "exp_avg"], every="1:2,2"))
    ds = xr.open_zarr(tmp_path / "run.zarr")
    np.testing.assert_array_equal(ds.step, [0, 1, 2, 4, 6])
    assert set(ds.data_vars) == {"out.weight", "out.weight.exp_avg", "out.bias", "out.bias.exp_avg", "loss", "lr"}
    assert ds["out.weight"].dims == ("step", "out_weight_row", "out_weight_col") == ds["out.weight.exp_avg"].dims


def test_state_the_optimizer_lacks_is_refused_and_the_store_closed(tmp_path):
    with pytest.raises(ConfigError, match="AdamW keeps no 'momentum_buffer' for embed.weight"):
        fit(ZarrecLightningCallback(tmp_path / "run.zarr", quantities=["momentum_buffer"]))
    assert xr.open_zarr(tmp_path / "run.zarr").attrs["zarrec_status"]["state"] == "interrupted"
