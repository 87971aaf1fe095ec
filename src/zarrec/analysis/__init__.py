"""The analysis of a recorded run: plain functions from an xarray Dataset to xarray objects,
the ``ds.zarrec`` accessor over them, figures, and what a store holds (``zarrec info``).

It reads stores only (:mod:`zarrec.store`), never the recording side: a store opens and is
analysed without torch.
"""

from zarrec.analysis.updates import (
    adam_update,
    by_parameter,
    centroid,
    dead,
    find_parameter,
    force_decomposition,
    intended_update,
    live,
    live_mask,
    logit_stats,
    norms,
    parameter,
    parameters,
    pca,
    realized_fraction,
    recorded_parameters,
    row_statistics,
    speed,
    spread,
    update_residual,
    velocity,
)

__all__ = [
    "adam_update",
    "by_parameter",
    "centroid",
    "dead",
    "find_parameter",
    "force_decomposition",
    "intended_update",
    "live",
    "live_mask",
    "logit_stats",
    "norms",
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
