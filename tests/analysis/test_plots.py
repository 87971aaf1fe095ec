"""Figures: each one is drawn from a real run, labelled, and saved; a missing matplotlib is a clear error."""

from __future__ import annotations

import sys

import pytest
import xarray as xr

import zarrec  # noqa: F401  (registers ds.zarrec)
from zarrec import MissingDependencyError
from zarrec.analysis import plots


@pytest.fixture(scope="module")
def ds(float32_run) -> xr.Dataset:
    return xr.open_zarr(float32_run.path)


@pytest.mark.parametrize("name", ["loss", "trajectories", "norms", "logits", "realized_fraction", "parameters"])
def test_every_figure_is_labelled(ds, name):
    figure = getattr(ds.zarrec.plot, name)()
    assert figure._suptitle is not None and figure._suptitle.get_text()
    for axis in figure.axes:
        assert axis.get_ylabel(), f"{name}: an axis has no y label"
        assert axis.lines or axis.collections, f"{name}: an axis is empty"
    assert any(axis.get_xlabel() for axis in figure.axes)
    assert any(axis.get_legend() for axis in figure.axes) or name == "parameters"  # a heatmap, with colour bars


def test_save_all_writes_pngs(ds, tmp_path):
    written, skipped = plots.save_all(ds, tmp_path / "figures", progress=False)
    assert skipped == []
    assert sorted(path.name for path in written) == sorted(f"{name}.png" for name in plots.FIGURES)
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_figures_without_their_variables_are_skipped_with_a_reason(ds, tmp_path):
    written, skipped = plots.save_all(ds.drop_vars(["momentum", "variance"]), tmp_path, progress=False)
    assert len(written) == len(plots.FIGURES) - 2
    assert skipped == [
        "realized_fraction: the store has no exp_avg, exp_avg_sq of transformer.wte.weight (recorded with AdamW: it has "
        "param, grad); record them (quantities=...) with an optimizer that keeps them",
        "parameters: no parameter has a realized fraction: the store has no exp_avg, exp_avg_sq of transformer.wte.weight "
        "(recorded with AdamW: it has param, grad); record them (quantities=...) with an optimizer that keeps them",
    ]


def test_the_whole_model_figure_of_a_run_without_the_embedding(layers_run, tmp_path):
    """Every recorded parameter is a row of the figure; figures about the embedding are skipped, saying why."""
    ds = xr.open_zarr(layers_run)
    figure = ds.zarrec.plot.parameters()
    labels = [label.get_text() for label in figure.axes[0].get_yticklabels()]
    assert labels == ds.attrs["recorded_params"]
    written, skipped = plots.save_all(ds, tmp_path, progress=False)
    assert sorted(path.stem for path in written) == ["logits", "loss_lr", "parameters"]
    assert [line.split(":")[0] for line in skipped] == ["trajectories", "norms_speed", "realized_fraction"]
    assert all("records 3 parameters and no input embedding; name one" in line for line in skipped)


def test_missing_matplotlib_is_a_clear_error(ds, monkeypatch):
    for module in [name for name in sys.modules if name.startswith("matplotlib")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what Python does for an uninstalled package
    with pytest.raises(MissingDependencyError, match=r"pip install 'zarrec\[plot\]'"):
        ds.zarrec.plot.loss()
