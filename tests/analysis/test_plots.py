"""Figures: each one is drawn from a real run, labelled, and saved; a missing matplotlib is a clear error."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import xarray as xr
from conftest import LAYER_PARAMS, full_state_only

import zarrec
from zarrec import ConfigError, MissingDependencyError
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


def test_the_realized_fraction_figure_draws_the_rows_quantiles_and_the_whole(ds):
    """Its lines are numpy's nanquantile of the per-row fraction, and the overall fraction; the
    quantiles skip NaN as nanquantile does."""
    import warnings

    fraction = ds.zarrec.realized_fraction().compute()
    per_row = fraction.per_row.transpose("step", ...).values
    lines = {line.get_label(): line.get_ydata() for line in plots.realized_fraction(ds).axes[0].lines}
    np.testing.assert_allclose(lines["tokens, median"], np.nanquantile(per_row, 0.5, axis=1), rtol=1e-6)  # (float32)
    np.testing.assert_allclose(lines["all tokens"], fraction.overall.values, rtol=1e-12)
    with_gaps = per_row.copy()
    with_gaps[:, ::3] = np.nan
    with_gaps[0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (a step without values: NaN)
        expected = [np.nanquantile(with_gaps, q, axis=1) for q in (0.1, 0.5, 0.9)]
    for got, want in zip(plots._quantiles(with_gaps, (0.1, 0.5, 0.9)), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)


def test_save_all_writes_pngs(ds, tmp_path):
    written, skipped = plots.save_all(ds, tmp_path / "figures", progress=False)
    assert skipped == []
    assert sorted(path.name for path in written) == sorted(f"{name}.png" for name in plots.FIGURES)
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_figures_without_their_variables_are_skipped_with_a_reason(ds, tmp_path):
    written, skipped = plots.save_all(ds.drop_vars(["momentum", "variance"]), tmp_path / "statistics", progress=False)
    assert len(written) == len(plots.FIGURES) and skipped == []  # the health statistics need no moments
    written, skipped = plots.save_all(full_state_only(ds.drop_vars(["momentum", "variance"])), tmp_path, progress=False)
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
    trained = list(xr.open_zarr(layers_run / "statistics").param.values)  # every trained parameter, in model order
    assert labels == trained and set(ds.attrs["recorded_params"]) < set(trained)
    labels = [label.get_text() for label in full_state_only(ds).zarrec.plot.parameters().axes[0].get_yticklabels()]
    assert labels == ds.attrs["recorded_params"]  # from the full state: the recorded ones
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


def heat_maps(figure) -> list[np.ma.MaskedArray]:
    """The values drawn by each panel of the whole-model figure (masked: drawn grey)."""
    return [np.ma.asarray(axis.collections[0].get_array()) for axis in figure.axes if axis.get_ylabel() == "parameter"]


def test_the_whole_model_figure_draws_a_single_parameter(ds):
    """The full state of the default recording, one parameter: a row of coloured cells in each
    panel, not blank axes."""
    fraction, ratio = heat_maps(full_state_only(ds).zarrec.plot.parameters())
    assert fraction.shape == ratio.shape == (1, ds.sizes["step"] - 1)
    assert fraction.count() == fraction.size and ratio.count() == ratio.size  # every cell coloured


def test_steps_not_recorded_are_drawn_as_missing(ds):
    """Steps 5 and 6 dropped: their cells, and step 7's (no predecessor), are grey, not 'no motion'."""
    figure = full_state_only(ds.drop_sel(step=[5, 6])).zarrec.plot.parameters()
    fraction, ratio = heat_maps(figure)
    steps = np.arange(1, ds.sizes["step"])  # one column per step, recorded or not
    assert fraction.shape == (1, steps.size)
    for values in (fraction, ratio):
        np.testing.assert_array_equal(np.flatnonzero(values.mask[0]), np.flatnonzero(np.isin(steps, [5, 6, 7])))
    assert "grey: not recorded" in figure.axes[1].get_xlabel()


def test_a_store_of_plain_values_draws_its_loss_and_names_every_figure_it_skips(tmp_path):
    with zarrec.Recorder(tmp_path / "plain.zarr") as recorder:
        for step in range(5):
            recorder.record(step, weight=np.full((3, 2), step, dtype=np.float32), loss=1.0 / (step + 1))
    written, skipped = plots.save_all(xr.open_zarr(tmp_path / "plain.zarr"), tmp_path / "figures", progress=False)
    assert [path.name for path in written] == ["loss_lr.png"]
    assert [line.split(":")[0] for line in skipped] == ["trajectories", "norms_speed", "logits", "realized_fraction",
                                                         "parameters"]
    assert all("records no parameter" in line for line in skipped if not line.startswith("logits"))


def test_a_store_of_one_step_skips_every_figure_saying_so(tmp_path):
    with zarrec.Recorder(tmp_path / "one.zarr") as recorder:
        recorder.record(0, loss=1.0)
    written, skipped = plots.save_all(xr.open_zarr(tmp_path / "one.zarr"), tmp_path / "figures", progress=False)
    assert written == []
    assert skipped == [f"{name}: the store holds 1 recorded step; a figure over steps needs two" for name in plots.FIGURES]


def test_chosen_parameters_get_their_own_figures(layers_run, tmp_path):
    ds = xr.open_zarr(layers_run)
    chosen = [LAYER_PARAMS[0], LAYER_PARAMS[2]]
    written, skipped = plots.save_all(ds, tmp_path, params=chosen, progress=False)
    names = {path.stem for path in written}
    assert {f"{figure}-{param}" for figure in ("trajectories", "norms_speed", "realized_fraction") for param in chosen} \
        - {f"trajectories-{LAYER_PARAMS[2]}"} <= names  # a vector has no principal-axes plane
    labels = [label.get_text() for label in ds.zarrec.plot.parameters(chosen).axes[0].get_yticklabels()]
    assert labels == chosen
    with pytest.raises(ConfigError, match="'nope' is not a recorded parameter"):
        plots.save_all(ds, tmp_path, params=["nope"], progress=False)
