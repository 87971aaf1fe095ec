"""Import of the reference notebook's safetensors files, and export back to them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from zarrec import ConfigError, StoreExistsError, ZarrecWarning
from zarrec.legacy import export_legacy, import_legacy


def assert_same_tensors(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    """The same keys, dtypes, shapes and bytes (so NaN equals NaN)."""
    assert sorted(actual) == sorted(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype and actual[key].shape == tensor.shape, key
        assert torch.equal(actual[key].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), key


def test_the_notebook_labels_run_ahead_after_an_epoch_end(legacy_file):
    steps = load_file(legacy_file)["recorded_steps"].tolist()
    assert steps[:22] == list(range(22)) and steps[22:] == list(range(23, 32))  # its counter skipped 22


def test_import_satisfies_the_contract_and_keeps_every_value(tmp_path, legacy_file, tiny_config):
    import_legacy(legacy_file, tmp_path / "run.zarr", progress=False)
    ds = xr.open_zarr(tmp_path / "run.zarr").load()
    legacy = load_file(legacy_file)
    np.testing.assert_array_equal(ds.step, legacy["recorded_steps"])
    for key, name in (("embeddings", "embeddings"), ("momentum", "momentum"), ("variance", "variance")):
        assert ds[name].dims == ("step", "token", "dim")
        np.testing.assert_array_equal(ds[name].values, legacy[key].numpy(), err_msg=key)
    for key, name in (("grads", "grads"), ("logits", "logits"), ("losses", "loss")):
        np.testing.assert_array_equal(ds[name][1:].values, legacy[key][1:].numpy(), err_msg=key)
        assert ds[name][0].isnull().all(), name  # did not exist yet: NaN, as the contract says
    assert ds.logits.dims == ("step", "token") and ds.loss.dims == ("step",)
    np.testing.assert_array_equal(np.flatnonzero(ds.live), legacy["live_token_ids"])
    assert ds.char.values[ord("a")] == "a"
    assert ds.attrs["learning_rate"] == tiny_config.learning_rate and ds.attrs["init_sigma"] == tiny_config.init_sigma
    assert ds.attrs["adam_beta2"] == 0.999 and ds.attrs["init_method"] == "f32_to_bf16"
    assert "BEFORE clipping" in ds.grads.attrs["description"]
    assert ds.attrs["zarrec_status"]["state"] == "complete"


def test_export_gives_the_notebooks_file_back(tmp_path, legacy_file):
    import_legacy(legacy_file, tmp_path / "run.zarr", progress=False)
    export_legacy(tmp_path / "run.zarr", tmp_path / "back.safetensors", progress=False)
    assert_same_tensors(load_file(legacy_file), load_file(tmp_path / "back.safetensors"))
    with safe_open(tmp_path / "back.safetensors", "np") as back:  # slices read lazily, as large files are
        np.testing.assert_array_equal(back.get_slice("embeddings")[3:5], load_file(legacy_file)["embeddings"][3:5])
    assert not (tmp_path / "back.safetensors.partial").exists()
    with pytest.raises(StoreExistsError, match="back.safetensors already exists; pass --overwrite"):
        export_legacy(tmp_path / "run.zarr", tmp_path / "back.safetensors", progress=False)


def test_a_zarrec_recording_exports_and_imports_to_the_same_values(tmp_path, float32_run):
    export_legacy(float32_run.path, tmp_path / "run.safetensors", progress=False)
    exported = load_file(tmp_path / "run.safetensors")
    assert not exported["grads"][0].any() and not exported["logits"][0].any()  # the notebook's zeros at step 0
    import_legacy(tmp_path / "run.safetensors", tmp_path / "again.zarr", progress=False)
    original, again = xr.open_zarr(float32_run.path), xr.open_zarr(tmp_path / "again.zarr")
    for name in ("embeddings", "grads", "momentum", "variance", "logits", "loss", "step", "live"):
        np.testing.assert_array_equal(again[name].values, original[name].values, err_msg=name)


def test_renumber_labels_rows_by_position(tmp_path, legacy_file):
    import_legacy(legacy_file, tmp_path / "run.zarr", renumber=True, progress=False)
    ds = xr.open_zarr(tmp_path / "run.zarr")
    np.testing.assert_array_equal(ds.step, np.arange(31))
    assert ds.attrs["legacy_steps"].startswith("renumbered")


def test_bad_files_are_refused_naming_the_problem(tmp_path, legacy_file):
    (tmp_path / "text.safetensors").write_text("not a safetensors file")
    with pytest.raises(ConfigError, match="is not a safetensors file"):
        import_legacy(tmp_path / "text.safetensors", tmp_path / "a.zarr")
    with pytest.raises(ConfigError, match="does not exist or is not a file"):
        import_legacy(tmp_path / "missing.safetensors", tmp_path / "a.zarr")
    tensors = load_file(legacy_file)
    save_file({k: v for k, v in tensors.items() if k not in ("momentum", "variance")}, tmp_path / "partial.safetensors")
    with pytest.raises(ConfigError, match="lacks momentum, variance, so it is not a reference-notebook recording"):
        import_legacy(tmp_path / "partial.safetensors", tmp_path / "a.zarr")
    save_file({**tensors, "losses": tensors["losses"][:5]}, tmp_path / "short.safetensors")
    with pytest.raises(ConfigError, match=r"has 31 recorded steps but losses \[5\]; the file is damaged"):
        import_legacy(tmp_path / "short.safetensors", tmp_path / "a.zarr")
    save_file({**tensors, "extra": torch.zeros(2)}, tmp_path / "extra.safetensors")
    with pytest.warns(ZarrecWarning, match="also holds extra, which the reference layout does not have"):
        import_legacy(tmp_path / "extra.safetensors", tmp_path / "extra.zarr", progress=False)
    assert not (tmp_path / "a.zarr").exists()


def test_a_store_without_the_embedding_recording_cannot_be_exported(tmp_path, tiny_config):
    from zarrec.reference.train import train

    train(dataclasses.replace(tiny_config, steps=2, params=("transformer.ln_f.*",)), tmp_path / "ln.zarr", progress=False)
    with pytest.raises(ConfigError, match="has no embeddings, grads, momentum, variance; the reference layout needs"):
        export_legacy(tmp_path / "ln.zarr", tmp_path / "ln.safetensors")
