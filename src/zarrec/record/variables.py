"""The recorded variables: their layout, fixed by the first step's values; created in a new
store (with the shards that fit the staging budget), or checked against the store being
resumed; and each later step's values checked against it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zarrec.errors import ConfigError, RecordError
from zarrec.record.ranks import is_dtensor, split_shard_rows
from zarrec.record.staging import ALIGNMENT, aligned, human_size
from zarrec.store import contract
from zarrec.store.run_store import RunStore

Value = torch.Tensor | np.ndarray | float | int


@dataclass(frozen=True)
class Variable:
    """One variable as its first step gave it."""

    shape: tuple[int, ...]  # of one step
    dims: tuple[str, ...]
    source_dtype: str  # the dtype it was given in (stored as float32)
    staged_dtype: torch.dtype  # the dtype it is staged in


def check_name(name: str) -> None:
    """Refuse a variable name the store cannot hold as an array of its own."""
    if name == contract.STEP:
        raise RecordError(f"{contract.STEP!r} is the store's index coordinate, not a variable; name the value otherwise")
    if not name or "/" in name or name.startswith(("__", ".")):
        raise RecordError(
            f"{name!r} cannot name a variable: Zarr names hold no '/' and begin with neither '.' nor '__'; "
            "name it otherwise, e.g. with '.' between parts as 'layer.0.weight'"
        )


def layout_of(values: Mapping[str, Value], dims: Mapping[str, tuple[str, ...]], distributed: bool) -> dict[str, Variable]:
    """The variables of the first step's ``values``, each with the ``dims`` given for it or its
    default (:func:`default_dims`); refuses what cannot be recorded, before anything is created."""
    if not distributed and (dtensors := [name for name, value in values.items() if is_dtensor(value)]):
        raise RecordError(
            f"{', '.join(dtensors)} {'is a DTensor' if len(dtensors) == 1 else 'are DTensors'} (one rank's part of "
            "a sharded tensor); create the Recorder with distributed=True on every rank to record each rank's rows"
        )
    for name, value in values.items():
        check_name(name)
        if not isinstance(value, (torch.Tensor, np.ndarray, float, int)):
            raise RecordError(f"{name} is a {type(value).__name__}; record tensors, arrays or numbers")
    shapes = {name: _shape_of(value) for name, value in values.items()}
    layout = {}
    for name, value in values.items():
        shape, named = shapes[name], default_dims(name, shapes, dims)
        if len(named) != len(shape):
            raise RecordError(f"{name} has shape {shape} but dims {named}; give one dim name per axis")
        layout[name] = Variable(shape, named, _dtype_name(value), _staged_dtype(value))
    return layout


def default_dims(name: str, shapes: Mapping[str, tuple[int, ...]], dims: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The dims given for ``name``; else those of the variable it belongs to, ``W`` for
    ``W.grad`` or ``W.exp_avg`` of the same shape (so that ``W - W.grad`` never broadcasts);
    else :func:`zarrec.store.contract.dims_of`."""
    if name in dims:
        return dims[name]
    owner = name
    while "." in owner:
        owner = owner.rsplit(".", 1)[0]
        if shapes.get(owner) == shapes[name]:
            return default_dims(owner, shapes, dims)
    return contract.dims_of(name, len(shapes[name]))


def create_variables(
    store: RunStore,
    layout: Mapping[str, Variable],
    *,
    chunk_steps: int | None,
    staging_bytes: int,
    part_bytes: int,
    splits: Mapping[str, tuple[int, ...]],
    attrs: Mapping[str, Mapping[str, Any]],
    mantissa_bits: int | None,
    compressor: Any,
) -> int:
    """Create the arrays and return the steps a chunk holds (``chunk_steps``, or chosen to fit
    ``part_bytes``). One whose chunk does not fit a slab gets shards of as many rows as fit one.
    In a sharded run a variable whose rows the ranks split (``splits``: where) gets shards that
    no two ranks write (:func:`~zarrec.record.ranks.split_shard_rows`, or a divisor of it that
    fits a slab), and the sizes are the largest rank's share: the most any rank stages."""
    rows_of = {name: max(np.diff(bounds)) for name, bounds in splits.items()}
    sizes = [rows_of[name] * math.prod(v.shape[1:]) if name in rows_of else math.prod(v.shape) for name, v in layout.items()]
    itemsizes = [v.staged_dtype.itemsize for v in layout.values()]
    if chunk_steps is None:
        chunk_steps = contract.auto_chunk_steps(sizes, itemsizes, part_bytes)
    chunk_bytes = sum(aligned(chunk_steps * n * i) for n, i in zip(sizes, itemsizes))
    if chunk_steps > 1 and chunk_bytes > part_bytes:
        raise RecordError(
            f"chunk_steps={chunk_steps} makes a chunk of {human_size(chunk_bytes)}, more than a third of "
            f"staging_bytes ({human_size(staging_bytes)}); lower chunk_steps (or omit it) or raise staging_bytes"
        )
    for name, variable in layout.items():
        shape, shard_rows = variable.shape, None
        exact_rows = split_shard_rows(splits[name]) if name in splits else None
        if shape and chunk_bytes > part_bytes:
            fit = max(1, (part_bytes - ALIGNMENT) // (math.prod(shape[1:]) * variable.staged_dtype.itemsize))
            if name in rows_of:  # (shards that no two ranks write)
                exact_rows = contract.divisor_at_most(split_shard_rows(splits[name]), fit)
            else:
                shard_rows = fit
        array_attrs = {contract.SOURCE_DTYPE_ATTR: variable.source_dtype}
        if mantissa_bits is not None and shape:
            array_attrs[contract.MANTISSA_BITS_ATTR] = mantissa_bits
        if name in contract.DESCRIPTIONS:
            array_attrs["description"] = contract.DESCRIPTIONS[name]
        array_attrs.update(attrs.get(name, {}))
        store.create_variable(
            name, shape, variable.dims, chunk_steps, array_attrs, compressor, shard_rows, exact_shard_rows=exact_rows
        )
    store.link_coordinates(list(layout))
    return chunk_steps


def check_resumed(store: RunStore, layout: Mapping[str, Variable], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse a first step whose variables differ from those of the store being resumed."""
    variables = store.variables()
    for name, variable in layout.items():
        if name not in variables:
            raise ConfigError(f"{name} is not in {store.name} being resumed; it records {sorted(variables)}")
        recorded = variables[name].attrs.get(contract.SOURCE_DTYPE_ATTR)
        if variable.shape != shapes[name] or variable.source_dtype != recorded:
            raise ConfigError(
                f"{name} is {variable.source_dtype} {variable.shape} but {store.name} recorded it as {recorded} "
                f"{shapes[name]}; resume with the recorded model and dtype"
            )


def check_rank_shards(store: RunStore, shapes: Mapping[str, tuple[int, ...]], splits: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse to resume a store whose shards do not split a sharded variable at this run's
    rank boundaries (recorded on another number of ranks): two ranks would write one shard."""
    variables = store.variables()
    for name, bounds in splits.items():
        rows, recorded = shapes[name][0], variables[name].shards[1]
        if split_shard_rows(bounds) % recorded:
            raise ConfigError(
                f"{store.name} stores {name} in shards of {recorded} of its {rows} rows, which do not split it where "
                f"this run's {len(bounds) - 1} ranks do (at rows {bounds[1:-1]}): resume it on as many ranks as "
                "recorded it, or record into a new store"
            )


def check_step(
    step: int, values: Mapping[str, Value], shapes: Mapping[str, tuple[int, ...]], staged_dtypes: Mapping[str, torch.dtype]
) -> None:
    """Refuse a value of a variable the first step did not have, of another shape, or of a
    dtype wider than the first step's (it would be rounded when staged)."""
    for name, value in values.items():
        if getattr(value, "shape", ()) != shapes.get(name):  # torch.Size and numpy shapes are tuples
            if name not in shapes:
                raise RecordError(f"{name!r} was not in the first record() call; this recording has {sorted(shapes)}")
            raise RecordError(f"{name} has shape {_shape_of(value)} at step {step}, expected {shapes[name]} as in the first step")
        if isinstance(value, torch.Tensor) and value.dtype is not staged_dtypes[name]:
            staged = staged_dtypes[name]
            if torch.promote_types(value.dtype, staged) is not staged:
                raise RecordError(
                    f"{name} is {str(value.dtype).removeprefix('torch.')} at step {step} but "
                    f"{str(staged).removeprefix('torch.')} in the first step; record each variable in one dtype"
                )


def _staged_dtype(value: Value) -> torch.dtype:
    """A floating tensor keeps its dtype while staged; anything else is staged as float32."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.dtype
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return torch.from_numpy(value[:0]).dtype
    return torch.float32


def _dtype_name(value: Value) -> str:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return str(value.dtype).removeprefix("torch.")
    return str(np.asarray(value).dtype)  # a Python float is a float64


def _shape_of(value: Value) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, (torch.Tensor, np.ndarray)) else ()
