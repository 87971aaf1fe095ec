"""``ds.zarrec``: the analysis of :mod:`zarrec.analysis` and the figures of :mod:`zarrec.analysis.plots`, as methods.

A thin facade: every method forwards to the plain function of the same name, whose
docstring states the formula. Registered when ``zarrec`` is imported::

    import xarray as xr, zarrec
    ds = xr.open_zarr("run.zarr")
    ds.zarrec.speed().sel(token=ord("e")).plot()              # the input embedding
    ds.zarrec.realized_fraction("transformer.h.0.attn.c_attn.weight").overall.plot()
    ds.zarrec.plot.loss()
"""

from __future__ import annotations

from collections.abc import Sequence

import xarray as xr

from zarrec import analysis
from zarrec.analysis import plots


@xr.register_dataset_accessor("zarrec")
class ZarrecAccessor:
    """Analysis of a zarrec run; see :mod:`zarrec.analysis` for each formula."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    def parameters(self) -> xr.Dataset:
        return analysis.parameters(self._ds)

    def parameter(self, param: str | None = None) -> xr.Dataset:
        return analysis.parameter(self._ds, param)

    def by_parameter(self, params: Sequence[str] | None = None) -> xr.Dataset:
        return analysis.by_parameter(self._ds, params)

    def row_statistics(self, param: str | None = None) -> xr.Dataset:
        return analysis.row_statistics(self._ds, param)

    def live(self) -> xr.Dataset:
        return analysis.live(self._ds)

    def dead(self) -> xr.Dataset:
        return analysis.dead(self._ds)

    def velocity(self, param: str | None = None) -> xr.DataArray:
        return analysis.velocity(self._ds, param)

    def speed(self, param: str | None = None) -> xr.DataArray:
        return analysis.speed(self._ds, param)

    def centroid(self, param: str | None = None, split: bool = False) -> xr.DataArray:
        return analysis.centroid(self._ds, param, split)

    def spread(self, param: str | None = None, split: bool = False) -> xr.DataArray:
        return analysis.spread(self._ds, param, split)

    def norms(self, param: str | None = None, split: bool = False) -> xr.DataArray:
        return analysis.norms(self._ds, param, split)

    def intended_update(self, param: str | None = None) -> xr.Dataset:
        return analysis.intended_update(self._ds, param)

    def adam_update(self, param: str | None = None) -> xr.Dataset:
        return analysis.adam_update(self._ds, param)

    def update_residual(self, param: str | None = None) -> xr.DataArray:
        return analysis.update_residual(self._ds, param)

    def realized_fraction(self, param: str | None = None) -> xr.Dataset:
        return analysis.realized_fraction(self._ds, param)

    def force_decomposition(self, param: str | None = None) -> xr.Dataset:
        return analysis.force_decomposition(self._ds, param)

    def logit_stats(self) -> xr.Dataset:
        return analysis.logit_stats(self._ds)

    def pca(self, param: str | None = None, n: int = 2) -> xr.Dataset:
        return analysis.pca(self._ds, param, n)

    @property
    def plot(self) -> PlotAccessor:
        """The figures of :mod:`zarrec.analysis.plots`, each returning a matplotlib Figure."""
        return PlotAccessor(self._ds)


class PlotAccessor:
    """``ds.zarrec.plot.<name>()``: one matplotlib Figure per question."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    def loss(self):
        return plots.loss(self._ds)

    def trajectories(self, param: str | None = None):
        return plots.trajectories(self._ds, param)

    def norms(self, param: str | None = None):
        return plots.norms(self._ds, param)

    def logits(self):
        return plots.logits(self._ds)

    def realized_fraction(self, param: str | None = None):
        return plots.realized_fraction(self._ds, param)

    def parameters(self, params: Sequence[str] | None = None):
        return plots.parameters(self._ds, params)
