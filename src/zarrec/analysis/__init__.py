"""The analysis of a recorded run: plain functions from an xarray Dataset to xarray objects,
the ``ds.zarrec`` accessor over them, figures, and what a store holds (``zarrec info``).

The functions, by what they answer: :mod:`~zarrec.analysis.parameters` (what the store holds
of each parameter; :func:`parameter`, its quantities under plain names),
:mod:`~zarrec.analysis.motion` (how its rows move), :mod:`~zarrec.analysis.updates` (what the
optimizer intended and what landed; the whole model at a glance) and
:mod:`~zarrec.analysis.logits`; :mod:`~zarrec.analysis.runs` puts a run and its branches side by
side. Each returns a lazy (dask-backed) result and states its formula.

It reads stores only (:mod:`zarrec.store`), never the recording side: a store opens and is
analysed without torch.
"""

from zarrec.analysis.logits import logit_stats
from zarrec.analysis.motion import centroid, norms, pca, speed, spread, velocity
from zarrec.analysis.parameters import (
    COMPONENT,
    PARAM_DIM,
    POPULATION,
    dead,
    find_parameter,
    live,
    live_mask,
    parameter,
    parameters,
    recorded_parameters,
)
from zarrec.analysis.runs import compare_runs, open_runs
from zarrec.analysis.updates import (
    adam_update,
    by_parameter,
    force_decomposition,
    intended_update,
    realized_fraction,
    row_statistics,
    update_residual,
)

__all__ = [
    "COMPONENT",
    "PARAM_DIM",
    "POPULATION",
    "adam_update",
    "by_parameter",
    "centroid",
    "compare_runs",
    "dead",
    "find_parameter",
    "force_decomposition",
    "intended_update",
    "live",
    "live_mask",
    "logit_stats",
    "norms",
    "open_runs",
    "parameter",
    "parameters",
    "pca",
    "realized_fraction",
    "recorded_parameters",
    "row_statistics",
    "speed",
    "spread",
    "update_residual",
    "velocity",
]
