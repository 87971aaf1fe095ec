"""The health statistics a run recorded at every optimizer step (:mod:`zarrec.capture.health`),
read back: the whole-run answers that need no full state.

A store recorded with statistics (the default) holds, in its ``statistics`` group, per step
``t`` and trained parameter ``p``: ``param_norm = ‖W[t]‖``, ``grad_norm = ‖g[t]‖``,
``update_norm = ‖a[t]‖`` with ``a[t] = W[t] − W[t−1]``, ``intended_norm = ‖u[t]‖`` (the update
the optimizer intended), ``update_dot_intended = ⟨a[t], u[t]⟩``, ``residual_norm = ‖a[t] − u[t]‖``,
``momentum_norm = ‖m[t]‖`` and ``cos_grad_momentum``; and the same per row of the recorded parameters. The functions of
:mod:`zarrec.analysis.updates` read them first: they are there at every step, whatever the
run's ``every`` kept of the full state, and they are small (a 10,000-step run of a GPT-2 reads
in well under a second).
"""

from __future__ import annotations

import xarray as xr
import zarr

from zarrec.analysis.parameters import ROW, at_previous_step, find_parameter, safe_ratio
from zarrec.errors import ConfigError
from zarrec.store import contract


def open_statistics(ds: xr.Dataset) -> xr.Dataset | None:
    """The run's ``statistics`` group, opened lazily, or None: a run recorded without them, or a
    dataset not opened from a store (``xr.open_zarr(path)`` is)."""
    source = ds.encoding.get("source")
    if source is None:
        return None
    try:
        found = xr.open_zarr(f"{str(source).rstrip('/')}/{contract.STATISTICS_GROUP}")
    except (FileNotFoundError, KeyError, ValueError, OSError, zarr.errors.GroupNotFoundError):
        return None
    return found if contract.PARAM_DIM in found.dims else None


def parameter_name(ds: xr.Dataset, stats: xr.Dataset, param: str | None) -> str | None:
    """The name in ``stats`` of parameter ``param`` (as for :func:`~zarrec.analysis.find_parameter`:
    its name in the model or its store variable; default the input embedding), or None."""
    if param is not None and param in stats[contract.PARAM_DIM].values:
        return param
    if param is None and contract.EMBEDDING_ATTR in stats.attrs:
        return stats.attrs[contract.EMBEDDING_ATTR]
    try:
        name = find_parameter(ds, param).name
    except ConfigError:
        if param is None:
            raise
        raise ConfigError(
            f"{param!r} is not a trained parameter of this run; its statistics name "
            f"{', '.join(map(str, stats[contract.PARAM_DIM].values))}"
        ) from None
    return name if name in stats[contract.PARAM_DIM].values else None


def overview(stats: xr.Dataset, names: list[str]) -> xr.Dataset:
    """:func:`~zarrec.analysis.by_parameter` from the statistics, per step after step 0
    and parameter: ``realized_fraction = ⟨a, u⟩ / ‖u‖²``, ``update_to_weight = ‖a[t]‖ / ‖W[t−1]‖``
    (NaN where step t − 1 is not in the statistics), ``grad_norm = ‖g[t]‖``."""
    chosen = stats.sel({contract.PARAM_DIM: names})
    before = at_previous_step(chosen["param_norm"])
    result = xr.Dataset({
        "realized_fraction": safe_ratio(chosen["update_dot_intended"], chosen["intended_norm"] ** 2),
        "update_to_weight": safe_ratio(chosen["update_norm"], before),
        "grad_norm": chosen["grad_norm"],
    }).pipe(_updates_only)
    intended = str(stats.attrs.get("intended_update", ""))
    unknown = {f"realized_fraction of {name}": intended for name in names} if not intended.startswith("u =") else {}
    result.attrs["not_computed"] = unknown
    return result.transpose(contract.STEP, contract.PARAM_DIM)


def realized_fraction(stats: xr.Dataset, name: str) -> xr.Dataset:
    """:func:`~zarrec.analysis.realized_fraction` of ``name`` from the statistics, at every
    step after step 0: ``overall``, and ``per_row`` where its rows were kept (else the attribute
    ``not_computed`` says so). Refuses an optimizer whose update zarrec does not know."""
    intended = str(stats.attrs.get("intended_update", ""))
    if not intended.startswith("u ="):
        raise ConfigError(f"no realized fraction of {name}: {intended}")
    one = stats.sel({contract.PARAM_DIM: name}, drop=True)
    fractions = xr.Dataset({"overall": safe_ratio(one["update_dot_intended"], one["intended_norm"] ** 2)})
    per_row = row_statistics(stats, name)
    if per_row is not None:
        fractions["per_row"] = safe_ratio(per_row["update_dot_intended"], per_row["intended_norm"] ** 2)
    else:
        fractions.attrs["not_computed"] = {
            "per_row": f"the rows of {name} were not kept: record it (params=[...]) for its fraction per row"
        }
    return _updates_only(fractions)


def _updates_only(ds: xr.Dataset) -> xr.Dataset:
    """Without step 0, the initial state (no update yet). A store that begins later (a branch,
    a recording started mid-run) keeps its first step: the recorder had ``W[t−1]`` live."""
    return ds.sel({contract.STEP: ds[contract.STEP] > 0})


def row_statistics(stats: xr.Dataset, name: str) -> xr.Dataset | None:
    """The per-row statistics of ``name`` under their plain names, along ``token`` (the input
    embedding) or ``row``; None where its rows were not kept."""
    variables = {contract.row_statistic(name, s): s for s in contract.HEALTH_STATISTICS}
    if not all(v in stats for v in variables):
        return None
    found = stats[list(variables)].rename(variables)
    dim = found[contract.HEALTH_STATISTICS[0]].dims[1]
    return found.rename({dim: ROW}) if dim != contract.TOKEN else found
