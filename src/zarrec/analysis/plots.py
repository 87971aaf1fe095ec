"""Figures of a recorded run, each answering one question; every function returns a matplotlib Figure.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot state, no display needed);
a notebook shows a returned Figure inline. Long runs are thinned to at most
``MAX_POINTS`` steps per line where a line would otherwise be unreadable.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import dask
import numpy as np
import xarray as xr

from zarrec import analysis
from zarrec.analysis.parameters import W, rows_and_features
from zarrec.errors import ConfigError, MissingDependencyError
from zarrec.store import contract
from zarrec.store.location import ensure_creatable

MAX_POINTS = 2000
# The figures of one parameter read its values several times (norms, speed, the principal axes,
# the projection): :func:`save_all` holds them in memory when they fit, so the store is read once.
HELD_BYTES = 1 << 30
LIVE_COLOR, DEAD_COLOR = "tab:blue", "tab:red"


def _figure(rows: int, height: float = 3.0):
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError(
            "plots need matplotlib, which is not installed: pip install 'zarrec[plot]'"
        ) from exc
    figure = Figure(figsize=(8, height * rows), layout="constrained")
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    return figure, axes


def _thin(da: xr.DataArray) -> xr.DataArray:
    stride = max(1, -(-da.sizes[contract.STEP] // MAX_POINTS))
    return da.isel({contract.STEP: slice(None, None, stride)})


def _plain_tick_labels(axis) -> None:
    """Label a log axis 3.25, 4 rather than 3.25×10⁰, 4×10⁰ (a loss spans less than a decade)."""
    from matplotlib.ticker import FormatStrFormatter

    axis.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    axis.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))


def _title(figure, ds: xr.Dataset, question: str) -> None:
    run = ds.attrs.get("corpus_name", "")
    dtype = ds.attrs.get("dtype", "")
    figure.suptitle(f"{question}\n{run} · {dtype} · {ds.sizes[contract.STEP]} recorded steps", fontsize=10)


def _require(ds: xr.Dataset, *names: str) -> None:
    missing = [name for name in names if name not in ds.variables]
    if missing:
        raise ConfigError(f"the store has no {', '.join(missing)}")


def loss(ds: xr.Dataset):
    """Training loss (log scale, with a running mean) and, where recorded, the learning rate against step."""
    _require(ds, contract.LOSS)
    figure, axes = _figure(2 if contract.LR in ds.variables else 1)
    loss_axis = axes[0]
    values = ds[contract.LOSS].compute()
    loss_axis.plot(values[contract.STEP], values, lw=0.6, alpha=0.5, color="tab:gray", label="loss per step")
    window = max(1, values.sizes[contract.STEP] // 50)
    smooth = values.rolling({contract.STEP: window}, center=True, min_periods=1).mean()
    loss_axis.plot(smooth[contract.STEP], smooth, color="tab:blue", label=f"running mean ({window} steps)")
    loss_axis.set_yscale("log")
    _plain_tick_labels(loss_axis)
    loss_axis.set_ylabel("loss (nats)")
    loss_axis.legend()
    if contract.LR in ds.variables:
        lr = ds[contract.LR].compute()
        axes[1].plot(lr[contract.STEP], lr, color="tab:orange")
        axes[1].set_ylabel("learning rate")
    axes[-1].set_xlabel("optimizer step")
    _title(figure, ds, "Loss and learning rate" if contract.LR in ds.variables else "Loss")
    return figure


def trajectories(ds: xr.Dataset, param: str | None = None):
    """Every row's path (by default the input embedding's tokens) in the plane of the first two
    principal axes, live vs dead tokens where the store says which are which."""
    result = analysis.pca(_thin(ds), param, n=2)
    figure, (axis,) = _figure(1, height=6.0)
    path = result["projection"].compute()
    rows = path.dims[1]
    has_live = rows == contract.TOKEN and contract.LIVE in ds.coords
    live = analysis.live_mask(ds) if has_live else np.ones(path.sizes[rows], bool)
    for index in np.argsort(~live, kind="stable"):  # dead tokens last, drawn on top
        color = LIVE_COLOR if live[index] else DEAD_COLOR
        xy = path.isel({rows: index}).values
        axis.plot(xy[:, 0], xy[:, 1], color=color, lw=0.6, alpha=0.6)
        axis.plot(*xy[-1], "o", color=color, ms=3)
    start = path.isel({contract.STEP: 0}).values
    axis.plot(start[:, 0], start[:, 1], "k+", ms=8, label="start")
    if has_live:
        axis.plot([], [], color=LIVE_COLOR, label=f"live tokens ({int(live.sum())}), ● = end")
        axis.plot([], [], color=DEAD_COLOR, label=f"dead tokens ({int((~live).sum())}), ● = end")
    else:
        axis.plot([], [], color=LIVE_COLOR, label=f"{rows}s ({live.size}), ● = end")
    ratio = result["explained_variance_ratio"].values
    axis.set_xlabel(f"PC 1 ({ratio[0]:.0%} of variance)")
    axis.set_ylabel(f"PC 2 ({ratio[1]:.0%} of variance)")
    axis.legend(loc="best")
    _title(figure, ds, f"Trajectories of {analysis.find_parameter(ds, param).name}'s {rows}s on shared principal axes")
    return figure


def norms(ds: xr.Dataset, param: str | None = None):
    """Mean row norm and mean row speed of a parameter (by default the input embedding, its
    live vs dead tokens where the store says which are which) against step."""
    rows = rows_and_features(analysis.parameter(ds, param))[0]
    norm, speed = analysis.norms(ds, param), analysis.speed(ds, param)  # (step, row)
    if rows == contract.TOKEN and contract.LIVE in ds.variables:
        live = xr.DataArray(analysis.live_mask(ds), dims=contract.TOKEN)
        populations = [(f"live {rows}s", LIVE_COLOR, live), (f"dead {rows}s", DEAD_COLOR, ~live)]
    else:
        populations = [(f"all {rows}s", LIVE_COLOR, True)]
    lines = dask.compute(*[(norm.where(members).mean(rows), speed.where(members).mean(rows))
                           for _, _, members in populations])  # (one pass over the values)
    figure, (norm_axis, speed_axis) = _figure(2)
    for (label, color, _), (n, v) in zip(populations, lines):
        norm_axis.plot(n[contract.STEP], n, color=color, label=label)
        speed_axis.plot(v[contract.STEP], v, color=color, lw=0.8, label=label)
    norm_axis.set_ylabel(f"mean ‖W[{rows}]‖")
    norm_axis.legend()
    speed_axis.set_yscale("log")
    speed_axis.set_ylabel("mean ‖W[t] − W[t−1]‖")
    speed_axis.set_xlabel("optimizer step")
    speed_axis.legend()
    name = analysis.find_parameter(ds, param).name
    _title(figure, ds, f"How far {name}'s {rows}s are from the origin, and how fast they move")
    return figure


def logits(ds: xr.Dataset):
    """Range, standard deviation and entropy of the recorded logits, and the probability on dead tokens."""
    stats = analysis.logit_stats(ds).compute()
    figure, (spread_axis, entropy_axis, mass_axis) = _figure(3)
    steps = stats[contract.STEP]
    spread_axis.plot(steps, stats["range"], label="range (max − min)")
    spread_axis.plot(steps, stats["std"], label="std over tokens")
    spread_axis.set_yscale("symlog", linthresh=1e-2)
    spread_axis.set_ylabel("logit spread")
    spread_axis.legend()
    entropy_axis.plot(steps, stats["entropy"], color="tab:green", label="entropy of softmax")
    entropy_axis.axhline(stats["entropy"].attrs["max_entropy"], color="k", ls="--", lw=0.8, label="uniform (ln V)")
    entropy_axis.set_ylabel("entropy (nats)")
    entropy_axis.legend()
    if "dead_mass" in stats:
        mass_axis.plot(steps, stats["dead_mass"], color=DEAD_COLOR, label="probability on dead tokens")
        mass_axis.set_yscale("log")
        mass_axis.legend()
    mass_axis.set_ylabel("probability")
    mass_axis.set_xlabel("optimizer step")
    _title(figure, ds, "Are the logits uniform? Predictions over training")
    return figure


def realized_fraction(ds: xr.Dataset, param: str | None = None):
    """The fraction of the intended update that reached one parameter, overall and per row."""
    fraction = analysis.realized_fraction(ds, param).compute()
    overall = fraction["overall"]
    figure, (axis,) = _figure(1, height=4.0)
    rows = "row"
    if "per_row" in fraction:
        per_row = fraction["per_row"]
        rows = per_row.dims[1]
        low, median, high = _quantiles(per_row.transpose(contract.STEP, rows).values, (0.1, 0.5, 0.9))
        axis.fill_between(per_row[contract.STEP], low, high, color="tab:blue", alpha=0.2, label=f"{rows}s, 10–90%")
        axis.plot(per_row[contract.STEP], median, color="tab:blue", lw=0.8, label=f"{rows}s, median")
    axis.plot(overall[contract.STEP], overall, color="k", lw=1, label=f"all {rows}s")
    axis.axhline(1, color="tab:green", ls="--", lw=0.8, label="every update landed")
    axis.set_ylabel("⟨actual, intended⟩ / ⟨intended, intended⟩")
    axis.set_xlabel("optimizer step")
    axis.legend()
    name = param if param is not None else analysis.find_parameter(ds).name
    _title(figure, ds, f"How much of the intended update of {name} landed")
    return figure


def _quantiles(values: np.ndarray, qs: Sequence[float]) -> list[np.ndarray]:
    """Each row's quantiles ``qs`` of its non-NaN values (numpy's linear method), NaN where it
    has none: ``np.nanquantile(values, q, axis=1)`` at the cost of one sort, not a Python call per row."""
    ordered = np.sort(values, axis=1)  # (NaN last)
    valid = (~np.isnan(values)).sum(axis=1)
    quantiles = []
    for q in qs:
        position = q * np.maximum(valid - 1, 0)
        below = np.floor(position).astype(int)
        above = np.minimum(below + 1, np.maximum(valid - 1, 0))
        low, high = (np.take_along_axis(ordered, i[:, None], axis=1)[:, 0] for i in (below, above))
        quantiles.append(np.where(valid > 0, low + (position - below) * (high - low), np.nan))
    return quantiles


def parameters(ds: xr.Dataset, params: Sequence[str] | None = None):
    """Per parameter (every trained one, from the health statistics; or those in ``params``) and
    step: the realized fraction of the intended update, and the update-to-weight ratio
    ``‖ΔW‖ / ‖W‖`` (:func:`zarrec.analysis.by_parameter`).

    Grey cells are steps with nothing to show: not recorded (or their predecessor not), or
    lacking what the formula needs; white cells in the ratio are steps where nothing moved.
    """
    overview = _consecutive(analysis.by_parameter(ds, params))
    overview = _thin(overview).compute()
    fraction = overview["realized_fraction"]
    if fraction.isnull().all():
        reasons = overview.attrs["not_computed"]
        raise ConfigError(f"no parameter has a realized fraction: {next(iter(reasons.values()), 'none recorded')}")
    from matplotlib import colormaps

    names = [str(name) for name in overview[analysis.PARAM_DIM].values]
    figure, (fraction_axis, ratio_axis) = _figure(2, height=max(2.5, 0.25 * len(names) + 1.5))
    steps = overview[contract.STEP].values
    ratio = overview["update_to_weight"]
    log_ratio = np.log10(ratio.where(ratio > 0))
    floor = float(log_ratio.min()) - 1 if log_ratio.notnull().any() else -1.0
    fraction_colors = colormaps["RdYlGn"]  # beyond 0 and 1: its ends (white means no motion, below)
    for axis, values, label, colors, limits in (
        (fraction_axis, fraction, "realized fraction",
         fraction_colors.with_extremes(bad="lightgrey", under=fraction_colors(0.0), over=fraction_colors(1.0)), (0, 1)),
        (ratio_axis, log_ratio.where(ratio != 0, floor), "log₁₀ ‖ΔW‖ / ‖W‖",
         colormaps["viridis"].with_extremes(bad="lightgrey", under="white"), (floor + 1, None)),
    ):
        mesh = axis.pcolormesh(_edges(steps), _edges(np.arange(len(names))),
                               values.transpose(analysis.PARAM_DIM, contract.STEP).values,
                               cmap=colors, vmin=limits[0], vmax=limits[1])
        axis.set_yticks(np.arange(len(names)), names, fontsize=7)
        axis.invert_yaxis()  # model order, top to bottom
        axis.set_ylabel("parameter")
        figure.colorbar(mesh, ax=axis, label=label)
    ratio_axis.set_xlabel("optimizer step   (grey: not recorded, or not computable; white: no motion)")
    _title(figure, ds, "Every parameter: how much of its intended update landed, and how far it moved")
    return figure


def _held(ds: xr.Dataset, params: Sequence[str | None]) -> xr.Dataset:
    """``ds`` with the values of ``params`` (their ``W``) read into memory where they fit
    :data:`HELD_BYTES` together; as it is where they do not, or are not recorded."""
    try:
        names = list(dict.fromkeys(analysis.find_parameter(ds, param).variables[W] for param in params))
    except (ConfigError, KeyError):
        return ds  # (the figures say what is missing)
    if sum(ds[name].nbytes for name in names) > HELD_BYTES:
        return ds
    return ds.assign({name: ds[name].compute() for name in names})


def _consecutive(overview: xr.Dataset) -> xr.Dataset:
    """``overview`` at every step from its first to its last, NaN at those not recorded, so that
    a heat map shows them as missing rather than stretching their neighbours over them."""
    steps = overview[contract.STEP].values
    if steps.size < 2 or np.all(np.diff(steps) == 1) or steps[-1] - steps[0] > 100 * MAX_POINTS:
        return overview
    return overview.reindex({contract.STEP: np.arange(steps[0], steps[-1] + 1)})


def _edges(centers: np.ndarray) -> np.ndarray:
    """Cell edges around ``centers`` (ascending): midway between neighbours, half a step beyond the ends."""
    centers = np.asarray(centers, dtype=float)
    if centers.size == 1:
        return np.array([centers[0] - 0.5, centers[0] + 0.5])
    middle = (centers[1:] + centers[:-1]) / 2
    return np.concatenate([[2 * centers[0] - middle[0]], middle, [2 * centers[-1] - middle[-1]]])


FIGURES = {
    "loss_lr": loss,
    "trajectories": trajectories,
    "norms_speed": norms,
    "logits": logits,
    "realized_fraction": realized_fraction,
    "parameters": parameters,
}
# Figures of one parameter: drawn once for each parameter chosen (by default the input embedding).
PER_PARAMETER = {"trajectories", "norms_speed", "realized_fraction"}


def save_all(
    ds: xr.Dataset, out_dir: str | Path, params: Sequence[str] | None = None, progress: bool = True
) -> tuple[list[Path], list[str]]:
    """Write every figure the dataset has the variables for as ``<out_dir>/<name>.png``: the
    figures of one parameter for each of ``params`` (``<name>-<param>.png`` when there are
    several), the whole-model figure over them.

    Returns the paths written and, for each figure skipped, why.
    """
    from tqdm.auto import tqdm

    chosen = list(dict.fromkeys(analysis.find_parameter(ds, param).name for param in params)) if params else [None]
    directory = Path(out_dir)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} exists and is not a directory; pass another directory for the figures (--out)")
    ensure_creatable(directory, "the figures' directory")
    if (steps := ds.sizes.get(contract.STEP, 0)) < 2:
        return [], [f"{name}: the store holds {steps} recorded step{'s' * (steps != 1)}; a figure over steps needs two"
                    for name in FIGURES]
    directory.mkdir(parents=True, exist_ok=True)
    ds = _held(ds, chosen)
    jobs = []
    for name, make in FIGURES.items():
        if name in PER_PARAMETER:
            jobs += [(name if len(chosen) == 1 else f"{name}-{param}", functools.partial(make, ds, param)) for param in chosen]
        else:
            jobs.append((name, functools.partial(make, ds, params) if name == "parameters" else functools.partial(make, ds)))
    written, skipped = [], []
    for name, make in tqdm(jobs, desc="figures", disable=not progress):
        try:
            figure = make()
        except MissingDependencyError:
            raise
        except ConfigError as reason:
            skipped.append(f"{name}: {reason}")
            continue
        path = directory / f"{name}.png"
        figure.savefig(path, dpi=120)
        written.append(path)
    return written, skipped
