"""Opening the store a :class:`~zarrec.Recorder` writes: created new, reopened and rolled back
to resume, or attached to by another rank of a sharded run.

What the store already holds comes back with it (:class:`OpenedStore`): the variables and
their shapes, the steps a chunk holds, the rows committed and the step recording continues
after. A resumed run must be the recorded one: a difference in its attributes or coordinates
is refused, naming each.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from zarrec.errors import ConfigError, StoreExistsError, StoreLockedError, WriterError
from zarrec.record import shutdown
from zarrec.record.ranks import Ranks, process_group_size
from zarrec.store import contract
from zarrec.store.location import StoreLike, describe
from zarrec.store.run_store import RunStore


@dataclass
class OpenedStore:
    """A store open for writing, and what it already holds."""

    store: RunStore
    chunk_steps: int | None  # as recorded (a resumed store), else as asked (None: chosen at the first step)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # one step's shape per variable; empty: none yet
    rows: int = 0  # committed rows
    last_step: int | None = None  # the step recording continues after (resuming: the step resumed from)


def open_store(
    out: StoreLike,
    attrs: Mapping[str, Any],
    coords: Mapping[str, tuple[str, Any]],
    *,
    overwrite: bool,
    resume_from: int | None,
    chunk_steps: int | None,
    ranks: Ranks | None,
) -> OpenedStore:
    """Create the store, or reopen it and roll it back to ``resume_from`` (rank 0 of a sharded
    run, telling the other ranks whether it could)."""
    with telling_the_other_ranks(ranks):
        with writing(describe(out)), shutdown.signals_stay_with_the_main_thread(), naming_a_forgotten_distributed(ranks, out):
            store = RunStore.create(out, attrs=attrs, overwrite=overwrite) if resume_from is None else RunStore.reopen(out)
        try:
            with writing(store.name):
                if resume_from is None:
                    for name, (dim, values) in coords.items():
                        store.write_coordinate(name, dim, np.asarray(values), contract.COORD_DESCRIPTIONS.get(name, ""))
                    return OpenedStore(store, chunk_steps)
                return _continue(store, resume_from, attrs, coords, chunk_steps)
        except BaseException:
            store.release()
            raise


def attach_store(out: StoreLike, chunk_steps: int | None, ranks: Ranks) -> OpenedStore:
    """Another rank than 0 of a sharded run: once rank 0 has the store, open it to write this
    rank's rows. Whether the recording resumes, and after which step, is rank 0's to say (a
    rank that looked for the store itself might have seen the one rank 0 had just created)."""
    if not ranks.agree(True):
        raise ConfigError(f"rank 0 could not open {describe(out)} (its error says why); fix that and start every rank again")
    try:
        store = RunStore.attach(out)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as error:
        raise ConfigError(
            f"rank {ranks.rank} cannot see {describe(out)}, which rank 0 created: every rank must record into "
            "one store (a shared file system, or S3)"
        ) from error
    resumed = store.group.attrs.get(contract.RESUMED_ATTR)
    if contract.STEP in store.group and resumed:  # rank 0 reopened it (a new one has no steps yet)
        shapes, chunk_steps = recorded_layout(store, chunk_steps)
        return OpenedStore(store, chunk_steps, shapes, store.rows, resumed[-1])
    return OpenedStore(store, chunk_steps)


def recorded_layout(store: RunStore, chunk_steps: int | None) -> tuple[dict[str, tuple[int, ...]], int]:
    """The variables' shapes and the steps a chunk holds, as the store recorded them;
    ``chunk_steps`` asked for must be the recorded one."""
    shapes = {name: array.shape[1:] for name, array in store.variables().items()}
    steps = store.group[contract.STEP]
    recorded = steps.attrs.get(contract.CHUNK_STEPS_ATTR, steps.chunks[0])  # (earlier stores: one shard a chunk)
    if chunk_steps not in (None, recorded):
        raise ConfigError(f"{store.name} has {recorded} steps per chunk, not {chunk_steps}; omit chunk_steps")
    return shapes, recorded


@contextlib.contextmanager
def naming_a_forgotten_distributed(ranks: Ranks | None, out: StoreLike) -> Iterator[None]:
    """Two processes of one torch.distributed run that open the same store without
    ``distributed=True`` find it created or locked by the other: say so, and the fix."""
    try:
        yield
    except (StoreExistsError, StoreLockedError) as error:
        if ranks is not None or (world := process_group_size()) < 2:
            raise
        raise ConfigError(
            f"{describe(out)} is being created by another of this torch.distributed run's {world} processes; pass "
            "distributed=True to every rank's Recorder (each records its rows into one store), or record on rank 0 only"
        ) from error


@contextlib.contextmanager
def telling_the_other_ranks(ranks: Ranks | None) -> Iterator[None]:
    """Rank 0 of a sharded run: tell the other ranks, which wait for it, whether what the
    block does succeeded (nothing to tell without ranks)."""
    try:
        yield
    except BaseException:
        if ranks is not None:
            ranks.agree(False)
        raise
    if ranks is not None:
        ranks.agree(True)


@contextlib.contextmanager
def writing(store_name: str) -> Iterator[None]:
    """An I/O error while creating or opening the store is a :class:`WriterError` naming it."""
    try:
        yield
    except OSError as exc:
        raise WriterError(f"could not write to {store_name} ({type(exc).__name__}: {exc})") from exc


def _continue(
    store: RunStore, resume_from: int, attrs: Mapping[str, Any], coords: Mapping[str, tuple[str, Any]], chunk_steps: int | None
) -> OpenedStore:
    """Check that the run being resumed is the one recorded, pick up its layout, and drop the
    steps after ``resume_from``."""
    differences = _attribute_differences(store.attrs, attrs)
    for name, (_, values) in coords.items():
        if name not in store.group or not np.array_equal(store.group[name][:], np.asarray(values)):
            differences.append(f"coordinate {name}")
    if differences:
        raise ConfigError(
            f"{store.name} was recorded with a different configuration; it differs in "
            f"{'; '.join(differences)}; resume with the recorded configuration or record into a new store"
        )
    shapes, chunk_steps = recorded_layout(store, chunk_steps)
    store.drop_after(resume_from)
    return OpenedStore(store, chunk_steps, shapes, store.rows, resume_from)


def _flatten(attrs: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in attrs.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _attribute_differences(stored: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """``"key: recorded X, now Y"`` for each attribute given that differs from the store's (as
    JSON); one the store never recorded (written by an earlier zarrec) cannot differ."""
    recorded = _flatten(stored)
    now = _flatten(json.loads(json.dumps(dict(given), default=str)))
    ignored = contract.RESUME_MAY_DIFFER
    return [
        f"{key}: recorded {recorded.get(key)!r}, now {value!r}"
        for key, value in now.items()
        if recorded.get(key) != value and key.split(".")[0] in stored and not any(key == i or key.startswith(f"{i}.") for i in ignored)
    ]
