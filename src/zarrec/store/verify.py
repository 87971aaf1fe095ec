"""Every byte of a store checked: ``zarrec verify``.

:func:`verify` reads each committed shard of each array, one at a time (memory: one shard),
and checks what the Zarr ``sharding_indexed`` codec says it holds: the shard is there and
long enough for its index; the index matches its CRC32C and points inside the shard at
every inner chunk; each inner chunk matches its own CRC32C (stores written since inner
chunks have one) and decompresses to its full size. Of the ``step`` coordinate it also
checks the values: no fill value (a row with no step), strictly increasing, and, where the
store records its schedule, no scheduled step missing between the first and the last.

:func:`missing_shards` answers the cheap half from a listing alone (``zarrec info``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import google_crc32c
import numpy as np
import zarr
from tqdm.auto import tqdm
from zarr.codecs import Crc32cCodec, ShardingCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from zarrec.store import contract
from zarrec.store.location import StoreLike, open_run
from zarrec.store.schedule import StepSchedule
from zarrec.store.shards import numcodecs_compressor

_EMPTY = 2**64 - 1  # the index's offset and length of an inner chunk that was never written


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store: the array, the rows (and steps) of the shard, what is wrong."""

    array: str
    rows: tuple[int, int] | None  # first and last row of the shard, inclusive; None: the array as a whole
    steps: tuple[int, int] | None  # the steps those rows hold, where the step coordinate says
    what: str

    def line(self) -> str:
        where = (
            f"steps {self.steps[0]}..{self.steps[1]}" if self.steps is not None
            else f"rows {self.rows[0]}..{self.rows[1]}" if self.rows is not None else "whole array"
        )
        return f"{self.array}: {where}: {self.what}"

    def to_dict(self) -> dict:
        return {"array": self.array, "rows": self.rows, "steps": self.steps, "what": self.what}


def verify(out: StoreLike, *, progress: bool = False) -> list[Problem]:
    """Every problem of the store at ``out``, in the order of its arrays; empty when it is whole."""
    root = open_run(out)
    groups = [("", root), *((f"{name}/", group) for name, group in root.groups())]
    arrays = [(prefix, name, array) for prefix, group in groups for name, array in sorted(group.arrays())]
    problems: list[Problem] = []
    with tqdm(total=sum(_shard_count(array) for _, _, array in arrays), unit="shard", disable=not progress,
              desc="verifying") as bar:
        for prefix, group in groups:
            steps, step_problems = _read_steps(prefix, group, bar)
            problems += step_problems
            for name, array in sorted(group.arrays()):
                if name != contract.STEP:
                    problems += _check_array(f"{prefix}{name}", array, steps, bar)
            problems += _check_step_values(prefix, group, steps)
    return problems


def missing_shards(group: zarr.Group) -> list[Problem]:
    """The committed shards of ``group``'s arrays along ``step`` that are not in the store (one
    listing; no data read). zarrec writes every shard of those; a static coordinate's chunk that
    equals its fill value is not written, so its absence says nothing."""
    present = set(sync(_keys(group)))
    problems = []
    for name, array in sorted(group.arrays()):
        if not contract.along_step(array.metadata.dimension_names):
            continue
        for coords, rows in _shards(array):
            if f"{array.store_path.path}/{array.metadata.encode_chunk_key(coords)}" not in present:
                problems.append(Problem(name, rows, None, "missing: the shard is not in the store"))
    return problems


async def _keys(group: zarr.Group) -> list[str]:
    prefix = group.store_path.path
    return [key async for key in group.store_path.store.list_prefix(f"{prefix}/" if prefix else "")]


def _shards(array: zarr.Array) -> Iterator[tuple[tuple[int, ...], tuple[int, int] | None]]:
    """Each committed chunk (shard) of ``array``: its grid coordinates and, along ``step``, its rows."""
    chunk = array.metadata.chunk_grid.chunk_shape
    grid = [range(math.ceil(n / c)) for n, c in zip(array.shape, chunk)]
    for coords in itertools.product(*grid):
        if contract.along_step(array.metadata.dimension_names):
            first = coords[0] * chunk[0]
            yield coords, (first, min(first + chunk[0], array.shape[0]) - 1)
        else:
            yield coords, None


def _shard_count(array: zarr.Array) -> int:
    return math.prod(math.ceil(n / c) for n, c in zip(array.shape, array.metadata.chunk_grid.chunk_shape))


def _read_steps(prefix: str, group: zarr.Group, bar) -> tuple[np.ndarray | None, list[Problem]]:
    """The group's step coordinate (None where any of its shards is damaged), and its problems."""
    if contract.STEP not in group:
        return None, []
    array = group[contract.STEP]
    problems = _check_array(f"{prefix}{contract.STEP}", array, None, bar)
    return (None if problems else array[:]), problems


def _check_step_values(prefix: str, group: zarr.Group, steps: np.ndarray | None) -> list[Problem]:
    """Problems of the step coordinate's values: a fill value, a step not after the one before,
    a scheduled step missing."""
    if steps is None or not steps.size:
        return []
    name = f"{prefix}{contract.STEP}"
    fill = group[contract.STEP].metadata.fill_value
    problems = []
    if (holes := np.flatnonzero(steps == fill)).size:
        problems.append(Problem(name, (int(holes[0]), int(holes[-1])), None,
                                f"fill value: {holes.size} rows hold {fill}, no step (a shard written without its data)"))
    elif (back := np.flatnonzero(np.diff(steps) <= 0)).size:
        row = int(back[0]) + 1
        problems.append(Problem(name, (row, row), None, f"order: step {steps[row]} does not follow step {steps[row - 1]}"))
    elif (schedule := group.attrs.get(contract.SCHEDULE_ATTR)) is not None:
        for first, last in StepSchedule.parse(schedule).gaps(steps.tolist()):
            problems.append(Problem(name, None, (first, last), f"gap: steps {first}..{last} of the schedule {schedule} are missing"))
    return problems


def _check_array(name: str, array: zarr.Array, steps: np.ndarray | None, bar) -> list[Problem]:
    problems = []
    sharding = array.metadata.codecs[0]
    for coords, rows in _shards(array):
        labelled = steps is not None and rows is not None and rows[1] < len(steps)  # (step commits last)
        labels = (int(steps[rows[0]]), int(steps[rows[1]])) if labelled else None
        if not isinstance(sharding, ShardingCodec):  # a static coordinate, as zarr-python wrote it
            what = _check_chunk(array, coords)
        elif (data := sync(_get(array, coords))) is None:
            what = "missing: the shard is not in the store"
        else:
            what = _check_shard(data.to_bytes(), array)
        if what is not None:
            problems.append(Problem(name, rows, labels, what))
        bar.update()
    return problems


async def _get(array: zarr.Array, coords: tuple[int, ...]):
    return await (array.store_path / array.metadata.encode_chunk_key(coords)).get(default_buffer_prototype())


def _check_shard(shard: bytes, array: zarr.Array) -> str | None:
    """What is wrong with one shard object of ``array``, or None."""
    sharding = array.metadata.codecs[0]
    inner = sharding.chunk_shape
    count = math.prod(s // i for s, i in zip(array.metadata.chunk_grid.chunk_shape, inner))
    index_bytes = 16 * count
    if len(shard) < index_bytes + 4:
        return f"truncated: {len(shard)} bytes, shorter than its index ({index_bytes + 4} bytes)"
    body, index, checksum = shard[:-index_bytes - 4], shard[-index_bytes - 4:-4], shard[-4:]
    if google_crc32c.value(index) != int.from_bytes(checksum, "little"):
        return f"truncated or damaged: the shard's index (its last {index_bytes + 4} bytes) does not match its CRC32C"
    compressor = numcodecs_compressor(sharding.codecs[1])
    checked = isinstance(sharding.codecs[-1], Crc32cCodec)
    size = math.prod(inner) * array.metadata.data_type.to_native_dtype().itemsize
    for number, (offset, length) in enumerate(np.frombuffer(index, dtype="<u8").reshape(count, 2).tolist()):
        if offset == _EMPTY and length == _EMPTY:
            return f"index: inner chunk {number} was never written"
        if offset + length > len(body):
            return f"truncated: inner chunk {number} ends at byte {offset + length}, past the data ({len(body)} bytes)"
        chunk = body[offset:offset + length]
        if checked:
            chunk, stored = chunk[:-4], chunk[-4:]
            if google_crc32c.value(chunk) != int.from_bytes(stored, "little"):
                return f"checksum: inner chunk {number} (bytes {offset}..{offset + length - 1}) does not match its CRC32C"
        try:
            decoded = len(compressor.decode(chunk))
        except Exception as error:  # noqa: BLE001 - whatever the decompressor raises, the chunk is damaged
            return f"undecodable: inner chunk {number} does not decompress ({error})"
        if decoded != size:
            return f"undecodable: inner chunk {number} decompresses to {decoded} bytes, not {size}"
    return None


def _check_chunk(array: zarr.Array, coords: tuple[int, ...]) -> str | None:
    """What is wrong with one chunk of an unsharded array (zarr-python decodes it), or None; an
    absent one is the fill value (zarr-python does not write a chunk that equals it)."""
    chunk = array.metadata.chunk_grid.chunk_shape
    region = tuple(slice(c * n, (c + 1) * n) for c, n in zip(coords, chunk))
    try:
        array[region]
    except Exception as error:  # noqa: BLE001 - whatever the codecs raise, the chunk cannot be read
        return f"unreadable: {error}"
    return None
