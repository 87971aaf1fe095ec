"""What a store holds, in numbers: steps and gaps, variables, sizes raw and on disk, tokens, loss.

Reads only metadata and the small arrays (``step``, ``loss``, ``live``), so it answers in
well under a second however long the run.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from zarrec.store import contract
from zarrec.store.location import StoreLike, describe, open_run
from zarrec.store.schedule import StepSchedule
from zarrec.store.verify import missing_shards


@dataclass(frozen=True)
class VariableSummary:
    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    source_dtype: str | None
    raw_bytes: int
    stored_bytes: int


@dataclass(frozen=True)
class StoreSummary:
    """Steps, variables and bytes (uncompressed vs stored) of a zarrec store."""

    path: str
    steps: int
    first_step: int | None
    last_step: int | None
    stride: int | None  # the usual distance between recorded steps (``every``)
    gaps: list[tuple[int, int]]  # ranges of steps missing from the schedule (else the usual stride), inclusive
    variables: list[VariableSummary]
    raw_bytes: int
    stored_bytes: int
    live_tokens: int | None = None
    dead_tokens: int | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    schedule: str | None = None  # the recorded step schedule (``every``), if the store says
    statistics_steps: int | None = None  # steps of health statistics in its statistics group, if it has one
    missing_shards: list[str] = field(default_factory=list)  # committed shards not in the store, a line each

    @property
    def compression_ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, plus the compression ratio and the status."""
        return {**dataclasses.asdict(self), "compression_ratio": self.compression_ratio, "status": self.status}

    def lines(self) -> list[str]:
        """The short report printed after ``zarrec train``."""
        span = f"steps {self.first_step}..{self.last_step}" if self.steps else "no steps"
        return [
            f"recorded {self.steps} steps ({span}) in {self.path}",
            f"{self.raw_bytes / 1e6:.1f} MB raw, {self.stored_bytes / 1e6:.1f} MB on disk "
            f"(compression {self.compression_ratio:.1f}x)",
            f'open it with: xarray.open_zarr("{self.path}")',
        ]

    @property
    def status(self) -> str:
        """How the recording stands, from its ``zarrec_status`` attribute and its shards' listing."""
        if self.missing_shards:
            return (
                f"damaged: {len(self.missing_shards)} committed shards are missing ({self.missing_shards[0]}); "
                "zarrec verify checks every byte"
            )
        status = self.attrs.get(contract.STATUS_ATTR)
        if not isinstance(status, dict):
            return "unknown (written before zarrec recorded its status)"
        if status.get("state") == contract.RECORDING:
            return (
                "recording: being written, or its writer was killed (the committed steps are complete; "
                "continue with zarrec train --resume)"
            )
        if status.get("state") == contract.COMPLETE:
            return contract.COMPLETE
        return f"{status.get('state')}: {status.get('reason')} (last step {status.get('last_step')})"

    def report(self) -> str:
        """The full human-readable report of ``zarrec info``."""
        out = [f"store      {self.path}", f"status     {self.status}"]
        if self.steps:
            every = self.schedule if self.schedule is not None else self.stride
            every = f", every {every}" if every not in (None, 1, "1") else ""
            out.append(f"steps      {self.steps} recorded, {self.first_step}..{self.last_step}{every}")
        else:
            out.append("steps      none recorded")
        gaps = ", ".join(f"{a}..{b}" if a != b else f"{a}" for a, b in self.gaps) or "none"
        out.append(f"gaps       {gaps}")
        branched = self.attrs.get(contract.BRANCHED_FROM_ATTR)
        if isinstance(branched, dict):  # (zarrec train --branch-from)
            changed = ", ".join(f"{name} {was} → {now}" for name, (was, now) in branched.get("changed", {}).items())
            out.append(f"branch     of {branched.get('store')} after step {branched.get('step')}; changed: {changed or 'nothing'}")
        if self.live_tokens is not None:
            out.append(f"tokens     {self.live_tokens} live, {self.dead_tokens} dead")
        if self.first_loss is not None:
            out.append(f"loss       {self.first_loss:.4f} first, {self.last_loss:.4f} last")
        if self.statistics_steps is not None:
            out.append(f"health     {self.statistics_steps} steps of statistics of every trained parameter: "
                       f'ds.zarrec.by_parameter(), or xarray.open_zarr("{self.path}/{contract.STATISTICS_GROUP}")')
        out.append(
            f"size       {_megabytes(self.raw_bytes)} raw, {_megabytes(self.stored_bytes)} on disk "
            f"({self.compression_ratio:.1f}x)"
        )
        out.append("variables")
        width = max((len(v.name) for v in self.variables), default=0)
        for v in self.variables:
            # A parameter's long dim names (model_layers_0_mlp_weight_row) would wrap every line: sizes say enough.
            shape = ", ".join(f"{d}: {n}" if len(d) <= 16 else str(n) for d, n in zip(v.dims, v.shape))
            source = f" (from {v.source_dtype})" if v.source_dtype and v.source_dtype != v.dtype else ""
            ratio = v.raw_bytes / v.stored_bytes if v.stored_bytes else math.nan
            out.append(
                f"  {v.name:<{width}}  ({shape})  {v.dtype}{source}  "
                f"{_megabytes(v.raw_bytes)} raw, {_megabytes(v.stored_bytes)} stored ({ratio:.1f}x)"
            )
        if self.attrs:
            out.append("attributes")
            width = max(len(key) for key in self.attrs)
            for key, value in self.attrs.items():
                text = str(value) if not isinstance(value, dict) else f"{{{len(value)} entries}}"
                out.append(f"  {key:<{width}}  {text}")
        return "\n".join(out)


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _gaps(steps: np.ndarray) -> tuple[int | None, list[tuple[int, int]]]:
    """The usual stride between steps and the ranges missing from it."""
    if steps.size < 2:
        return None, []
    differences = np.diff(steps)
    values, counts = np.unique(differences, return_counts=True)
    stride = int(values[counts.argmax()])
    gaps = [
        (int(before + stride), int(after - stride))
        for before, after, step in zip(steps[:-1], steps[1:], differences)
        if step > stride
    ]
    return stride, gaps


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def summarize(out: StoreLike) -> StoreSummary:
    """Summarise a store from its metadata and its small arrays."""
    group = open_run(out)
    steps = group[contract.STEP][:]
    arrays = dict(group.arrays())
    stored = {name: array.nbytes_stored() for name, array in arrays.items()}
    variables = [
        VariableSummary(
            name=name,
            dims=tuple(array.metadata.dimension_names or ()),
            shape=tuple(array.shape),
            dtype=str(array.dtype),
            source_dtype=array.attrs.get(contract.SOURCE_DTYPE_ATTR),
            raw_bytes=array.nbytes,
            stored_bytes=stored[name],
        )
        for name, array in sorted(arrays.items())
        if contract.along_step(array.metadata.dimension_names) and name != contract.STEP
    ]
    stride, gaps = _gaps(steps)
    schedule = group.attrs.get(contract.SCHEDULE_ATTR)
    if schedule is not None and steps.size:
        gaps = StepSchedule.parse(schedule).gaps(steps.tolist())  # a schedule's changes of stride are no gaps
    live = arrays[contract.LIVE][:] if contract.LIVE in arrays else None
    losses = _finite(arrays[contract.LOSS][:]) if contract.LOSS in arrays else np.array([])
    return StoreSummary(
        path=describe(out),
        steps=int(steps.size),
        first_step=int(steps[0]) if steps.size else None,
        last_step=int(steps[-1]) if steps.size else None,
        stride=stride,
        gaps=gaps,
        variables=variables,
        raw_bytes=sum(array.nbytes for array in arrays.values()),
        stored_bytes=sum(stored.values()),
        live_tokens=int(live.sum()) if live is not None else None,
        dead_tokens=int((~live).sum()) if live is not None else None,
        first_loss=float(losses[0]) if losses.size else None,
        last_loss=float(losses[-1]) if losses.size else None,
        attrs=dict(group.attrs),
        schedule=schedule,
        statistics_steps=_statistics_steps(out),
        missing_shards=[problem.line() for problem in missing_shards(group)],
    )


def _statistics_steps(out: StoreLike) -> int | None:
    """The number of steps in the store's statistics group (a store of its own inside it), or None."""
    if not isinstance(out, (str, os.PathLike)):
        return None
    try:
        statistics = zarr.open_group(f"{os.fspath(out).rstrip('/')}/{contract.STATISTICS_GROUP}", mode="r")
        return int(statistics[contract.STEP].shape[0])
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return None
