"""The reference experiment: initialisation, configuration checks and the step-1 physics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from zarrec import ConfigError
from zarrec.config import TrainConfig
from zarrec.experiment import initial_embeddings, resolve_device, train


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
