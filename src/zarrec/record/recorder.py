"""The framework-free recorder: ``record(step, **tensors)`` into step-chunked Zarr arrays.

A facade over the recording's parts, each in its own module: opening the store
(:mod:`~zarrec.record.opening`), the variables' layout (:mod:`~zarrec.record.variables`),
planning the staging memory (:mod:`~zarrec.record.staging`), the per-step path
(:mod:`~zarrec.record.stager`), the background writer (:mod:`~zarrec.record.writer`) and its
pace (:mod:`~zarrec.record.pace`). A value's way to the disk: :meth:`Recorder.record` →
:class:`~zarrec.record.stager.ChunkStager` (a copy into a slab) →
:class:`~zarrec.record.writer.ChunkWriter` (its thread) → :class:`~zarrec.store.run_store.RunStore`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from zarrec.errors import RecordError, WriterError, ZarrecWarning
from zarrec.record import shutdown
from zarrec.record.device_queue import accelerator_of
from zarrec.record.opening import (
    OpenedStore,
    attach_store,
    open_store,
    recorded_layout,
    telling_the_other_ranks,
    writing,
)
from zarrec.record.pace import WriterPace
from zarrec.record.ranks import Ranks, SumsOverRanks
from zarrec.record.stager import ChunkStager
from zarrec.record.staging import SLABS, human_size, plan_staging
from zarrec.record.variables import (
    Value,
    check_rank_shards,
    check_resumed,
    check_step,
    create_variables,
    layout_of,
)
from zarrec.record.writer import ChunkWriter
from zarrec.store import contract
from zarrec.store.location import StoreLike


class Recorder:
    """Streams named tensors, one row per training step, into a Zarr v3 store.

    The first :meth:`record` call fixes the variables and their shapes; later calls
    may pass any subset of them (the rest are stored as NaN for that step). Values
    are stored as float32 exactly as given: NaN and Inf included. The store opens
    with ``xr.open_zarr(out)``.

    Args:
        out: path, fsspec URL or Zarr store to create (or, with ``resume_from``, to continue).
        chunk_steps: steps per chunk along ``step``; by default chosen from the first step
            (:func:`zarrec.store.contract.auto_chunk_steps`: about 16 MB per chunk, at most 512 steps).
        dims: non-step dimension names per variable; defaults come from
            :data:`zarrec.store.contract.VARIABLE_DIMS`, else ``<name>_dim<i>``, and ``W.grad``,
            ``W.exp_avg``, ... share the dims of ``W`` when their shapes are equal.
        coords: static coordinates, ``{name: (dim, values)}``, e.g. ``{"live": ("token", mask)}``.
        attrs: run attributes (hyperparameters) stored on the group.
        compressor: a Zarr v3 bytes-to-bytes codec; default Blosc zstd-3 + bit-shuffle.
        staging_bytes: the host memory the training thread stages steps in (pinned for an accelerator),
            at most; default :data:`zarrec.store.contract.STAGING_BYTES`, shared by the ranks of one
            host in a sharded run (each gets its part: ``LOCAL_WORLD_SIZE``). A chunk that does not fit a
            third of it is staged a part at a time (the store's large arrays are then sharded
            along their rows to match), each written as soon as it is copied.
        overwrite: replace an existing store at ``out``.
        resume_from: continue the existing store at ``out`` after this step (a checkpoint's
            step): steps recorded after it are dropped first. Its ``attrs``, ``coords`` and
            variables must equal the store's; a difference is refused, naming it.
        mantissa_bits: round every recorded tensor (not the per-step scalars) to this many
            mantissa bits before compression (:func:`~zarrec.record.rounding.round_mantissa`; 7 is bfloat16's
            precision, 1..22), stored as plain float32 with the bits in its
            ``mantissa_bits`` attribute; default: exact.
        flush_every: also commit after this many recorded steps, bounding what a crash can
            lose below a chunk (partial chunks are re-written when the rest arrives).
        on_error: ``"raise"``: a failed write raises :class:`~zarrec.errors.WriterError` in
            :meth:`record`; ``"warn"``: it warns once, recording stops, training goes on.
        distributed: a sharded run (FSDP2): every rank creates this Recorder with the same
            arguments and records the same steps; each stages and writes only its own rows of
            a DTensor sharded on dim 0 (:mod:`zarrec.record.ranks`), rank 0 writes every other value
            whole, creates the store and commits each chunk once every rank has written it
            (one collective a chunk). Without it a DTensor is refused.
        over_ranks: with ``distributed``, variables whose value on each rank is its addend of a
            sum over the ranks (:class:`~zarrec.record.ranks.SumsOverRanks`, e.g.
            :func:`~zarrec.record.ranks.norms_over_ranks`: each rank's ``‖x_r‖²``, the store
            holds ``√Σ_r``), summed in the same collective.

    Memory is bounded, however long the run: ``staging_bytes`` of staging (three slabs of a
    chunk, or of a part of one, in the source dtype), and the writer's one part as float32
    and compressed; when every slab is still being written, :meth:`record` waits for one
    (back-pressure).

    What survives a crash: every committed chunk. ``kill -9`` loses the steps not yet
    committed: the chunk being filled and any chunk still queued for the writer (in
    steady state less than two chunks; ``flush_every`` bounds it further). On SIGTERM,
    SIGINT (``KeyboardInterrupt``), an exception through the ``with`` block, or an
    interpreter exit without :meth:`close`, every staged step is written and the store's
    ``zarrec_status`` attribute says why and where the recording stopped; in a sharded run a
    rank that stops early writes no partial chunk (the other ranks could not agree on it), so
    the steps after the last commit are lost, as after ``kill -9``. One writer at a time: a
    local store is locked while open.

    Use it as a context manager, or call :meth:`close` to write the last partial chunk.
    """

    def __init__(
        self,
        out: StoreLike,
        *,
        chunk_steps: int | None = None,
        dims: Mapping[str, tuple[str, ...]] | None = None,
        coords: Mapping[str, tuple[str, Any]] | None = None,
        attrs: Mapping[str, Any] | None = None,
        compressor: Any = None,
        staging_bytes: int | None = None,
        overwrite: bool = False,
        resume_from: int | None = None,
        mantissa_bits: int | None = None,
        flush_every: int | None = None,
        on_error: str = "raise",
        distributed: bool = False,
        over_ranks: SumsOverRanks | None = None,
    ) -> None:
        _check_options(chunk_steps, staging_bytes, overwrite, resume_from, mantissa_bits, flush_every, on_error,
                       distributed, over_ranks)
        self._dims = dict(dims or {})
        self._variable_attrs: dict[str, dict[str, Any]] = {}
        self._compressor = compressor or contract.default_compressor()
        self._ranks = Ranks() if distributed else None
        self._staging_bytes = staging_bytes or contract.STAGING_BYTES // (self._ranks.on_this_host if self._ranks else 1)
        self._flush_every = flush_every
        self._mantissa_bits = mantissa_bits
        self._on_error = on_error
        self._over_ranks = over_ranks
        self._splits: dict[str, tuple[int, ...]] = {}  # where the ranks split each variable recorded from DTensors sharded on their rows
        self._staged_dtypes: dict[str, torch.dtype] = {}
        self._writer: ChunkWriter | None = None  # these three from the first step on
        self._stager: ChunkStager | None = None
        self._pace: WriterPace | None = None
        self._stopped = False  # on_error="warn" after a failure
        self._closed = False
        if self._ranks is None or self._ranks.writes_whole_values:
            opened = open_store(out, attrs or {}, coords or {}, overwrite=overwrite, resume_from=resume_from,
                                chunk_steps=chunk_steps, ranks=self._ranks)
        else:
            opened = attach_store(out, chunk_steps, self._ranks)
        self._opened: OpenedStore = opened
        self._store = opened.store
        self.chunk_steps = opened.chunk_steps
        self._shapes = opened.shapes
        self._last_step = opened.last_step
        shutdown.register(self)

    @property
    def store_name(self) -> str:
        return self._store.name

    @property
    def last_step(self) -> int | None:
        """The last step passed to :meth:`record` (after resuming: the step resumed from), or None."""
        return self._last_step

    @property
    def committed_step(self) -> int | None:
        """The last step committed to the store (readable there), or None."""
        return self._store.last_step

    @property
    def recorded_rows(self) -> int:
        """Steps recorded so far: committed, being written, and staged."""
        if self._stager is None:
            return self._opened.rows
        return self._stager.handed_rows + self._stager.staged_rows

    @property
    def staged_rows(self) -> int:
        """Steps staged and not yet handed to the writer (0 right after a chunk was handed over)."""
        return self._stager.staged_rows if self._stager is not None else 0

    @property
    def staging_bytes(self) -> int:
        """Host memory allocated for staging so far (slabs are made as they are first needed)."""
        return sum(slab.memory.nbytes for slab in self._stager.slabs) if self._stager is not None else 0

    def cost_line(self, recorded_steps: int | None = None) -> str:
        """One line saying what a recorded step costs (after the first :meth:`record`) and, for
        ``recorded_steps`` recorded steps, the store's size before compression and its files."""
        return _cost_line(self._shapes, self.chunk_steps, recorded_steps)

    def label(self, name: str, dims: tuple[str, ...] | None = None, **attrs: Any) -> None:
        """Name the dimensions of variable ``name`` and give it attributes, before the first
        :meth:`record` creates it (a resumed store keeps the labels it was recorded with)."""
        if self._writer is not None:
            raise RecordError(f"label {name!r} before the first record() call; the variables of {self.store_name} exist")
        if dims is not None:
            self._dims[name] = tuple(dims)
        self._variable_attrs.setdefault(name, {}).update(attrs)

    def split_rows(self, name: str, bounds: Sequence[int]) -> None:
        """In a sharded run, before the first :meth:`record`: the ranks split variable
        ``name``'s rows at ``bounds`` (rank ``r`` gives rows ``bounds[r]:bounds[r + 1]`` as its
        DTensor's local part), not evenly as FSDP2 splits a parameter: the chosen rows of a
        sharded parameter, say, each rank holding those among its own rows."""
        if self._ranks is None or self._writer is not None:
            raise RecordError(f"split_rows({name!r}) needs distributed=True, before the first record() call")
        self._splits[name] = self._ranks.checked_bounds(name, bounds)

    def record(self, step: int, /, **values: Value) -> None:
        """Stage the values of one step; cheap, never writes on the calling thread.

        Raises :class:`~zarrec.errors.WriterError` if the background writer has failed
        (with ``on_error="warn"``: warns once, then ignores every later step),
        :class:`~zarrec.errors.RecordError` for a step or value that does not fit.
        """
        if self._writer_failed() or self._stopped:
            return
        if self._closed:
            raise RecordError(f"the recorder for {self.store_name} is closed; create a new Recorder to record more")
        if not values:
            raise RecordError("record() needs at least one named value, e.g. record(step, loss=loss)")
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise RecordError(f"step must be a whole number from 0 up (the optimizer step), got {step!r}")
        if self._last_step is not None and step <= self._last_step:
            raise RecordError(
                f"step {step} is not after the last recorded step {self._last_step}; steps must increase"
            )
        if self._writer is None:
            with writing(self.store_name):
                self._start(values)
        check_step(step, values, self._shapes, self._staged_dtypes)
        if self._ranks is not None:
            values = self._ranks.own_parts(step, values, self._splits)
        ended = self._stager.stage(step, values)
        if ended is None:
            self._writer_failed()  # while the training thread waited for a slab: raises, or warns and stops
            return
        self._last_step = step
        if ended:
            self._pace.check(ended, self._writer)

    def flush(self, wait: bool = False) -> None:
        """Hand the partial chunk to the writer now; with ``wait``, return once it is committed."""
        if self._writer_failed():
            return
        if self._stager is not None:
            self._stager.submit_partial_chunk()
        if wait and self._writer is not None:
            self._writer.wait()
            self._writer_failed()

    def close(self, reason: str | None = None) -> None:
        """Write every staged step, stop the writer, and mark the store: complete, or
        interrupted with ``reason``; raise any writer error (with ``on_error="raise"``)."""
        if self._closed:
            return
        self._closed = True
        with shutdown.closing(self):
            try:
                if self._writer is not None:
                    # A rank of a sharded run that stops early writes no partial chunk: the other
                    # ranks, at other steps or still training, would never agree on it.
                    if self._writer.error is None and (self._ranks is None or reason is None):
                        self._stager.submit_partial_chunk()
                    self._writer.close()
            finally:
                self._finish_store(reason)
        if self._on_error == "raise":
            self._writer_failed()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close(reason=shutdown.stop_reason(exc))
        except WriterError:
            pass  # the exception in flight is the one to see; the store's status names the writer's

    def _start(self, values: Mapping[str, Value]) -> None:
        """From the first step's values: create one array per variable (or check them against
        the store being resumed), the staging plan, the writer and the per-step path."""
        layout = layout_of(values, self._dims, distributed=self._ranks is not None)
        if self._ranks is not None:  # (once: a variable keeps its layout, refused if not)
            self._splits = self._ranks.splits(values, self._splits)
        if self._shapes:
            check_resumed(self._store, layout, self._shapes)
            check_rank_shards(self._store, self._shapes, self._splits)
        elif self._ranks is None or self._ranks.writes_whole_values:
            with telling_the_other_ranks(self._ranks):
                self.chunk_steps = create_variables(
                    self._store, layout, chunk_steps=self.chunk_steps, staging_bytes=self._staging_bytes,
                    part_bytes=self._staging_bytes // SLABS, splits=self._splits,
                    attrs=self._variable_attrs, mantissa_bits=self._mantissa_bits, compressor=self._compressor,
                )
                self._shapes = {name: variable.shape for name, variable in layout.items()}
        else:
            if not self._ranks.agree(True):
                raise RecordError(f"rank 0 could not create the variables of {self.store_name} (its error says why)")
            self._shapes, self.chunk_steps = recorded_layout(self._store, self.chunk_steps)
        self._staged_dtypes = {name: layout[name].staged_dtype if name in layout else torch.float32 for name in self._shapes}
        shard_rows = {name: array.shards[1] if array.ndim > 1 else 1 for name, array in self._store.variables().items()}
        parts = plan_staging(self._shapes, self._staged_dtypes, shard_rows, self.chunk_steps, self._staging_bytes // SLABS,
                             self._ranks, self._splits, self._over_ranks.names if self._over_ranks else ())
        self._pace = WriterPace(self.store_name, sum(4 * math.prod(shape) for shape in self._shapes.values()) + 8)
        with shutdown.signals_stay_with_the_main_thread():
            self._writer = ChunkWriter(self._store, self._ranks, self._over_ranks, self._shapes)
        self._stager = ChunkStager(
            parts, self.chunk_steps, self._writer, self._pace, rows=self._opened.rows,
            device=accelerator_of(values.values()),
            flush_every=self._flush_every, mantissa_bits=self._mantissa_bits,
            rounded={name for name, shape in self._shapes.items() if shape},
        )

    def _finish_store(self, reason: str | None) -> None:
        error = self._writer.error if self._writer is not None else None
        try:
            self._store.finish(*_final_state(error, reason))
        except Exception as exc:
            if error is None:
                raise self._writer_error(exc) from exc

    def _writer_failed(self) -> bool:
        """Whether the writer has failed: raises its error (on_error="raise"), or warns once and stops recording."""
        if self._writer is None or self._writer.error is None:
            return False
        failure = self._writer_error(self._writer.error)
        if self._on_error == "raise":
            raise failure from self._writer.error
        if not self._stopped:
            self._stopped = True
            warnings.warn(f"{failure}; recording has stopped, training goes on", ZarrecWarning, stacklevel=3)
        return True

    def _writer_error(self, cause: BaseException) -> WriterError:
        last = self._store.last_step
        kept = f"steps up to {last} are in the store" if last is not None else "no step was committed"
        return WriterError(f"writing to {self.store_name} failed ({type(cause).__name__}: {cause}); {kept}; fix the cause and resume")


def _cost_line(shapes: Mapping[str, tuple[int, ...]], chunk_steps: int, recorded_steps: int | None) -> str:
    sizes = {name: 4 * math.prod(shape) for name, shape in shapes.items()}
    step_bytes = sum(sizes.values()) + 8
    line = f"zarrec: {len(sizes)} variables, {human_size(step_bytes)} a recorded step as float32, {chunk_steps} steps a chunk"
    if recorded_steps is not None:
        shards = sum(-(-recorded_steps // contract.shard_steps(chunk_steps, size)) for size in [*sizes.values(), 8])
        line += (f"; {recorded_steps:,} recorded steps: {human_size(step_bytes * recorded_steps)} before compression "
                 f"(float32 training state compresses ~1.1x, bf16 values ~6x), {shards:,} shard files")
    return line


def _final_state(error: BaseException | None, reason: str | None) -> tuple[str, str]:
    """The store's final state and why: the writer failed, the run was interrupted, or it closed normally."""
    if error is not None:
        return contract.FAILED, f"writing failed: {type(error).__name__}: {error}"
    if reason is not None:
        return contract.INTERRUPTED, reason
    return contract.COMPLETE, "closed normally"


def _check_options(
    chunk_steps: int | None, staging_bytes: int | None, overwrite: bool, resume_from: int | None, mantissa_bits: int | None,
    flush_every: int | None, on_error: str, distributed: bool, over_ranks: SumsOverRanks | None,
) -> None:
    """Refuse options that cannot work, before anything is opened."""
    if mantissa_bits is not None and not 1 <= mantissa_bits <= 22:
        raise RecordError(f"mantissa_bits must be between 1 and 22 (float32 keeps 23), got {mantissa_bits}")
    for name, value in (("chunk_steps", chunk_steps), ("flush_every", flush_every)):
        if value is not None and value < 1:
            raise RecordError(f"{name} must be at least 1, got {value}")
    if staging_bytes is not None and staging_bytes < 1:
        raise RecordError(f"staging_bytes must be positive, got {staging_bytes}")
    if on_error not in ("raise", "warn"):
        raise RecordError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
    if over_ranks is not None and not distributed:
        raise RecordError("over_ranks sums over the ranks of a sharded run: pass distributed=True too")
    if overwrite and resume_from is not None:
        raise RecordError("overwrite and resume_from exclude each other: replace the store or continue it")
