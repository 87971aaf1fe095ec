"""The ranks of a sharded (FSDP2) run: which rows each one records, and their agreement.

Under FSDP2 a parameter, its gradient and its optimizer state are DTensors sharded on dim 0
over a one-dimensional mesh of every rank: rank ``r`` of ``W`` holds rows
``r·⌈N/W⌉ … min((r+1)·⌈N/W⌉, N)`` (``torch.chunk``'s split; the last ranks may hold fewer, or
none). Each rank records its own rows into the store's shards of those rows, so no rank
ever holds a whole matrix and no two ranks write one shard object. Values that every rank
has whole (the loss, the learning rate, logits, an unsharded tensor) are written by rank 0.

The ranks talk once per committed chunk, never per step: :meth:`Ranks.agree`, an all-reduce
on a gloo group of their own (a CPU group apart from the training's, so the writer threads can
use it while training runs), after which rank 0 commits; and twice at the start, as rank 0
opens the store and creates its arrays. The same all-reduce sums what each rank records as its
addend of a sum over every rank's rows (:class:`SumsOverRanks`): the global gradient norms
(each rank records ``‖x_r‖²`` of its own part, rank 0 stores ``√Σ_r``), the health statistics.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from zarrec.errors import ConfigError, RankError, RecordError

try:  # DTensor is public from torch 2.5
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # pragma: no cover - a torch built without distributed support
    DTensor = Replicate = Shard = None


def is_dtensor(value: object) -> bool:
    """Whether ``value`` is a DTensor (a tensor laid out over ranks, as FSDP2's parameters are)."""
    return DTensor is not None and isinstance(value, DTensor)


def process_group_size() -> int:
    """The processes of this torch.distributed run (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@dataclass(frozen=True)
class SumsOverRanks:
    """Variables whose value on each rank is its addend of a sum over the ranks (a sum over its
    own part of something sharded), and the values stored from those sums: each rank records
    its addends, the chunk's all-reduce sums them, rank 0 writes ``finish(sums)`` (same names)."""

    names: tuple[str, ...]
    finish: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def norms_over_ranks(*names: str) -> SumsOverRanks:
    """Norms over the ranks: each rank's addend is ``‖x_r‖²``, the store holds ``√Σ_r ‖x_r‖²``."""
    return SumsOverRanks(tuple(sorted(names)), lambda sums: {name: np.sqrt(total) for name, total in sums.items()})


def rank_rows(rows: int, world: int) -> int:
    """The rows of every rank's shard but the last ones: ``⌈rows / world⌉``."""
    return -(-rows // world)


def even_split(rows: int, world: int) -> tuple[int, ...]:
    """Where FSDP2 splits ``rows`` rows over ``world`` ranks (``torch.chunk``): rank ``r``
    holds rows ``bounds[r]:bounds[r + 1]``."""
    per_rank = rank_rows(rows, world)
    return tuple(min(r * per_rank, rows) for r in range(world + 1))


def chosen_split(chosen: Sequence[int], bounds: Sequence[int]) -> tuple[int, ...]:
    """Where the ranks split a variable of the ``chosen`` rows (ascending) of one split at
    ``bounds``: each rank holds the chosen rows among its own."""
    return tuple(int(i) for i in np.searchsorted(np.asarray(chosen), bounds))


def split_shard_rows(bounds: Sequence[int]) -> int:
    """The most rows a shard may hold so that none spans two ranks' parts of a variable split at
    ``bounds``: the greatest common divisor of the bounds inside the variable (every rank's
    rows in one shard when split evenly)."""
    inside = [b for b in bounds if 0 < b < bounds[-1]]
    return math.gcd(*inside) if inside else max(bounds[-1], 1)


class Ranks:
    """This process's place among the ranks of the default process group, and a gloo group of
    the recorders' own for agreeing on each chunk. Every rank must create one, in the same order
    relative to other process groups (it creates one)."""

    def __init__(self) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise ConfigError(
                "distributed=True records every rank's own rows, but torch.distributed is not initialized; "
                "call torch.distributed.init_process_group() first (torchrun), or drop distributed=True"
            )
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self._group = dist.new_group(backend="gloo")  # CPU collectives from the writer thread, whatever the training uses

    @property
    def on_this_host(self) -> int:
        """How many ranks run on this host (torchrun's ``LOCAL_WORLD_SIZE``; else all of them):
        they share its memory, so each stages a part of the default budget."""
        return int(os.environ.get("LOCAL_WORLD_SIZE", self.world))

    @property
    def writes_whole_values(self) -> bool:
        """Whether this rank writes the values every rank has whole (rank 0)."""
        return self.rank == 0

    def agree(self, ok: bool) -> bool:
        """Whether every rank is ``ok``; every rank must call it, in the same order."""
        return self.agree_summing(ok, np.zeros(0))[0]

    def agree_summing(self, ok: bool, addends: np.ndarray) -> tuple[bool, np.ndarray]:
        """Whether every rank is ``ok``, and the sum over ranks of each rank's ``addends`` (of
        one shape on every rank), in float64, in one all-reduce; every rank must call it, in the same order."""
        addends = np.asarray(addends, dtype=np.float64)
        summed = torch.from_numpy(np.concatenate([[0.0 if ok else 1.0], addends.ravel()]))
        try:
            dist.all_reduce(summed, op=dist.ReduceOp.SUM, group=self._group)
        except RuntimeError as error:  # gloo: a peer closed its connection
            raise RankError(
                f"rank {self.rank} lost the other ranks ({str(error).splitlines()[0][:200]}); the store keeps every "
                "committed step: see the failed rank's error, then resume"
            ) from error
        return bool(summed[0] == 0), summed[1:].numpy().reshape(addends.shape)

    def own_rows(self, bounds: Sequence[int]) -> tuple[int, int]:
        """The rows ``(start, stop)`` this rank holds of a variable split at ``bounds``."""
        return bounds[self.rank], bounds[self.rank + 1]

    def own_parts(self, step: int, values: Mapping[str, Any], splits: Mapping[str, Sequence[int]]) -> dict[str, Any]:
        """This rank's part of each value: its own rows of a variable in ``splits`` (of a
        DTensor, its local tensor; of a whole tensor, a view of its rows), anything else as it is."""
        own = {}
        for name, value in values.items():
            if is_dtensor(value):
                if sharded(value) != (name in splits):
                    raise RecordError(
                        f"{name} is {'' if sharded(value) else 'not '}sharded on its rows at step {step} but "
                        f"{'is' if name in splits else 'was not'} in the first step; record each variable in one layout"
                    )
                value = value.to_local()
            elif name in splits and isinstance(value, (torch.Tensor, np.ndarray)):
                start, stop = self.own_rows(splits[name])
                value = value[start:stop]
            own[name] = value
        return own

    def checked_bounds(self, name: str, bounds: Sequence[int]) -> tuple[int, ...]:
        """``bounds`` of :meth:`Recorder.split_rows`, refused unless one ascending bound per rank and one more, from 0."""
        if len(bounds) != self.world + 1 or list(bounds) != sorted(bounds) or bounds[0]:
            raise RecordError(f"split_rows({name!r}, {tuple(bounds)}) needs one ascending bound per rank and one "
                              "more, from 0 (rank r holds rows bounds[r]:bounds[r + 1])")
        return tuple(int(b) for b in bounds)

    def splits(self, values: Mapping[str, Any], chosen: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Where the ranks split each value sharded on its rows (``chosen``, else evenly as FSDP2
        does), each DTensor checked against its split (:meth:`check`)."""
        splits = {name: chosen.get(name) or even_split(value.shape[0], self.world)
                  for name, value in values.items() if sharded(value)}
        for name, value in values.items():
            if is_dtensor(value):
                self.check(name, value, splits.get(name, ()))
        return splits

    def check(self, name: str, value: DTensor, bounds: Sequence[int]) -> None:
        """Refuse a DTensor whose part on this rank is not its own rows of a Shard(0) layout
        split at ``bounds`` (evenly, as FSDP2 splits a parameter, unless the recorder was told
        otherwise) or the whole of a replicated one (:func:`check_layout`); then its local tensor
        is the part to record."""
        check_layout(name, value, self.world)
        if sharded(value):
            start, stop = self.own_rows(bounds)
            if value.to_local().shape[0] != stop - start:
                raise RecordError(
                    f"{name} holds {value.to_local().shape[0]} of its {value.shape[0]} rows on rank {self.rank}, not the "
                    f"{stop - start} of its split at rows {tuple(bounds)} (an even split: torch.chunk, as FSDP2 "
                    "shards; else Recorder.split_rows); zarrec records that layout only"
                )


def rows_part(local: torch.Tensor, like: DTensor, rows: int) -> DTensor:
    """This rank's ``local`` part of a tensor of ``rows`` rows split over the ranks like the
    sharded ``like`` (its mesh, Shard(0)): its values are recorded as this rank's rows."""
    shape = torch.Size((rows, *local.shape[1:]))
    return DTensor.from_local(local, like.device_mesh, [Shard(0)], run_check=False, shape=shape,
                              stride=torch.empty(shape, device="meta").stride())


def sharded(value: object) -> bool:
    """Whether ``value`` is a DTensor sharded on its rows (dim 0)."""
    return is_dtensor(value) and isinstance(value.placements[0], Shard) and value.placements[0].dim == 0


def check_layout(name: str, value: DTensor, world: int | None) -> None:
    """Refuse a DTensor that zarrec cannot record as a whole array from its ranks' parts: one
    on a mesh of more than one dim (HSDP, tensor with data parallel), on fewer ranks than the
    run's, or sharded on a dim other than 0 (tensor parallel's row-wise split, say)."""
    mesh, placements = value.device_mesh, value.placements
    if mesh.ndim != 1:
        raise ConfigError(
            f"{name} is a DTensor on a {mesh.ndim}-dimensional device mesh {tuple(mesh.shape)} (HSDP or tensor "
            "parallel); zarrec records FSDP2's layout only (a 1-D mesh of every rank, Shard(0)): leave it out of params=[...]"
        )
    placement = placements[0]
    if isinstance(placement, Shard) and placement.dim != 0:
        raise ConfigError(
            f"{name} is a DTensor sharded on dim {placement.dim} (tensor parallel); zarrec records tensors sharded on "
            "their rows (dim 0, FSDP2) only: leave it out of params=[...]"
        )
    if not isinstance(placement, (Shard, Replicate)):
        raise ConfigError(
            f"{name} is a DTensor placed {placement} (a partial sum, not yet reduced); record it after the reduction"
        )
    if world is not None and math.prod(mesh.shape) != world:
        raise ConfigError(
            f"{name} is a DTensor on {math.prod(mesh.shape)} of the run's {world} ranks; zarrec records tensors "
            "sharded over every rank (FSDP2 on the whole world) only: leave it out of params=[...]"
        )
