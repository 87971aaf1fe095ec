"""The framework-free recorder: ``record(step, **tensors)`` into step-chunked Zarr arrays.

On the training thread a step costs one copy per tensor into host staging memory
(non-blocking from a CUDA device, into pinned memory), bounded by a byte budget
(:mod:`zarrec.record.staging`). When a slab of it holds ``chunk_steps`` steps (or, for a large
step, its part of one) it goes to the background :class:`~zarrec.record.writer.ChunkWriter`; the
training thread continues in a free slab, and waits only if every slab is still being
written (back-pressure, so memory stays bounded).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import queue
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import zarr

from zarrec.store import contract
from zarrec.record import shutdown
from zarrec.errors import ConfigError, RecordError, WriterError, ZarrecWarning
from zarrec.record.ranks import Ranks, is_dtensor, rank_rows, sharded
from zarrec.record.staging import (
    ALIGNMENT,
    SLABS,
    Float32Scratch,
    Piece,
    Slab,
    aligned,
    copy_row,
    plan_parts,
    slab_bytes,
)
from zarrec.store.run_store import RunStore, StoreLike, describe
from zarrec.record.writer import Chunk, ChunkWriter

Value = torch.Tensor | np.ndarray | float | int
_MISSING = float("nan")  # what a step that does not pass a variable records for it


def round_mantissa(values: np.ndarray, bits: int) -> np.ndarray:
    """Round float32 ``values`` in place to ``bits`` explicit mantissa bits (of float32's 23),
    to nearest, ties to even, as a cast to a narrower float does (``bits=7``: bfloat16's
    precision, so ``|rounded − x| ≤ 2^−(bits+1) · |x|``); NaN and Inf stay. The dropped bits
    become zeros, which compress to almost nothing; the result is still plain float32."""
    if not values.flags.c_contiguous:
        values[...] = round_mantissa(np.ascontiguousarray(values), bits)
        return values
    dropped = 23 - bits
    flat = values.reshape(-1)  # a view of the contiguous values
    for start in range(0, flat.size, _ROUNDING_BLOCK):  # temporaries of a block, not of the array
        block = flat[start:start + _ROUNDING_BLOCK]
        nan = np.isnan(block)
        raw = block.view(np.uint32)
        raw += np.uint32((1 << (dropped - 1)) - 1) + ((raw >> np.uint32(dropped)) & np.uint32(1))
        raw &= np.uint32(~((1 << dropped) - 1) & 0xFFFFFFFF)
        block[nan] = np.nan  # a NaN whose payload lay in the dropped bits would have become Inf
    return values


_ROUNDING_BLOCK = 1 << 20  # elements


def _staging_dtype(value: Value) -> torch.dtype:
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
        staging_bytes: the host memory the training thread stages steps in (pinned on CUDA),
            at most; default :data:`zarrec.store.contract.STAGING_BYTES`, shared by the ranks of one
            host in a sharded run (each gets its part: ``LOCAL_WORLD_SIZE``). A chunk that does not fit a
            third of it is staged a part at a time (the store's large arrays are then sharded
            along their rows to match), each written as soon as it is copied.
        overwrite: replace an existing store at ``out``.
        resume_from: continue the existing store at ``out`` after this step (a checkpoint's
            step): steps recorded after it are dropped first. Its ``attrs``, ``coords`` and
            variables must equal the store's; a difference is refused, naming it.
        mantissa_bits: round every recorded tensor (not the per-step scalars) to this many
            mantissa bits before compression (:func:`round_mantissa`; 7 is bfloat16's
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
        norms_over_ranks: with ``distributed``, variables whose value on each rank is the sum
            of squares of that rank's part of something sharded (``Σ‖x_r‖²``); the store holds
            the norm over every rank, ``√Σ_r``, summed in the same collective.

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
        norms_over_ranks: tuple[str, ...] = (),
    ) -> None:
        if mantissa_bits is not None and not 1 <= mantissa_bits <= 22:
            raise RecordError(f"mantissa_bits must be between 1 and 22 (float32 keeps 23), got {mantissa_bits}")
        for name, value in (("chunk_steps", chunk_steps), ("flush_every", flush_every)):
            if value is not None and value < 1:
                raise RecordError(f"{name} must be at least 1, got {value}")
        if staging_bytes is not None and staging_bytes < 1:
            raise RecordError(f"staging_bytes must be positive, got {staging_bytes}")
        if on_error not in ("raise", "warn"):
            raise RecordError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
        if norms_over_ranks and not distributed:
            raise RecordError("norms_over_ranks sums over the ranks of a sharded run: pass distributed=True too")
        if overwrite and resume_from is not None:
            raise RecordError("overwrite and resume_from exclude each other: replace the store or continue it")
        self.chunk_steps = chunk_steps
        self._dims = dict(dims or {})
        self._variable_attrs: dict[str, dict[str, Any]] = {}
        self._compressor = compressor or contract.default_compressor()
        self._ranks = Ranks() if distributed else None
        self._staging_bytes = staging_bytes or contract.STAGING_BYTES // (self._ranks.on_this_host if self._ranks else 1)
        self._flush_every = flush_every
        self._mantissa_bits = mantissa_bits
        self._on_error = on_error
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._staged_dtypes: dict[str, torch.dtype] = {}
        self._parts: list[list[Piece]] = []  # how a chunk is staged
        self._filling: list[Slab | None] = []  # per part, the slab being filled
        self._free: queue.Queue[Slab] = queue.Queue()
        self._slabs: list[Slab] = []
        self._writer: ChunkWriter | None = None
        self._uses_cuda = False
        self._last_step: int | None = None
        self._handed_rows = 0  # rows given to the writer so far (committed ones included)
        self._scratch = Float32Scratch()  # float32 conversions, used by the writer thread only
        self._unflushed = 0
        self._waited = 0.0  # seconds record() waited for a free buffer since the last chunk was handed over
        self._chunk_began: float | None = None  # when the chunk being filled began
        self._warned_slow = False
        self._stopped = False  # on_error="warn" after a failure
        self._closed = False
        self._sharded: set[str] = set()  # variables recorded from DTensors sharded on their rows
        self._norms_over_ranks = tuple(sorted(norms_over_ranks))  # (in one order on every rank)
        if self._ranks is None or self._ranks.writes_whole_values:
            self._open(out, attrs or {}, coords or {}, overwrite, resume_from)
        else:
            self._attach(out)
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
        return self._handed_rows + (self._filling[0].rows if self._filling and self._filling[0] is not None else 0)

    @property
    def staging_bytes(self) -> int:
        """Host memory allocated for staging so far (slabs are made as they are first needed)."""
        return sum(slab.memory.nbytes for slab in self._slabs)

    def cost_line(self, recorded_steps: int | None = None) -> str:
        """One line saying what a recorded step costs (after the first :meth:`record`) and, for
        ``recorded_steps`` recorded steps, the store's size before compression and its files."""
        sizes = {name: 4 * math.prod(shape) for name, shape in self._shapes.items()}
        step_bytes = sum(sizes.values()) + 8
        line = (f"zarrec: {len(sizes)} variables, {_size(step_bytes)} a recorded step as float32, "
                f"{self.chunk_steps} steps a chunk")
        if recorded_steps is not None:
            shards = sum(-(-recorded_steps // contract.shard_steps(self.chunk_steps, size)) for size in [*sizes.values(), 8])
            line += (f"; {recorded_steps:,} recorded steps: {_size(step_bytes * recorded_steps)} before compression "
                     f"(float32 training state compresses ~1.1x, bf16 values ~6x), {shards:,} shard files")
        return line

    def label(self, name: str, dims: tuple[str, ...] | None = None, **attrs: Any) -> None:
        """Name the dimensions of variable ``name`` and give it attributes, before the first
        :meth:`record` creates it (a resumed store keeps the labels it was recorded with)."""
        if self._writer is not None:
            raise RecordError(f"label {name!r} before the first record() call; the variables of {self.store_name} exist")
        if dims is not None:
            self._dims[name] = tuple(dims)
        self._variable_attrs.setdefault(name, {}).update(attrs)

    def record(self, step: int, **values: Value) -> None:
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
        if self._last_step is not None and step <= self._last_step:
            raise RecordError(
                f"step {step} is not after the last recorded step {self._last_step}; steps must increase"
            )
        if self._writer is None:
            if self._ranks is None and (dtensors := [name for name, value in values.items() if is_dtensor(value)]):
                raise RecordError(
                    f"{', '.join(dtensors)} {'is a DTensor' if len(dtensors) == 1 else 'are DTensors'} (one rank's part of "
                    "a sharded tensor); create the Recorder with distributed=True on every rank to record each rank's rows"
                )
            with _writing(self.store_name):
                self._start(values)
        for name, value in values.items():
            if getattr(value, "shape", ()) != self._shapes.get(name):  # torch.Size and numpy shapes are tuples
                self._refuse(step, name, value)
            if isinstance(value, torch.Tensor) and value.dtype is not self._staged_dtypes[name]:
                self._refuse_narrowing(step, name, value.dtype)
        if self._ranks is not None:
            values = self._own_parts(step, values)
        # Chunks end on chunk boundaries of the store, also after a flush or a resume.
        rows = self.recorded_rows - self._handed_rows + 1  # in the chunk, with this step
        self._unflushed += 1
        ends = (self._handed_rows + rows) % self.chunk_steps == 0 or self._unflushed == self._flush_every
        for index, part in enumerate(self._parts):
            slab = self._filling[index] or self._take_slab(index)
            if slab is None:
                return  # the writer failed while we waited (on_error="warn")
            copy_row(slab.row_views[slab.rows], [piece.of(values.get(piece.name, _MISSING)) for piece in part], self._uses_cuda)
            slab.steps[slab.rows] = step
            slab.rows += 1
            if ends:  # a large step's parts go to the writer one by one, as soon as each is copied
                self._submit(index)
        self._last_step = step
        if ends:
            self._check_the_writers_pace(rows)

    def flush(self, wait: bool = False) -> None:
        """Hand the partial chunk to the writer now; with ``wait``, return once it is committed."""
        if self._writer_failed():
            return
        self._submit_partial_chunk()
        if wait and self._writer is not None:
            self._writer.wait()
            self._writer_failed()

    def close(self, reason: str | None = None) -> None:
        """Write every staged step, stop the writer, and mark the store: complete, or
        interrupted with ``reason``; raise any writer error (with ``on_error="raise"``)."""
        if self._closed:
            return
        self._closed = True
        shutdown.unregister(self)
        try:
            if self._writer is not None:
                # A rank of a sharded run that stops early writes no partial chunk: the other
                # ranks, at other steps or still training, would never agree on it.
                if self._writer.error is None and (self._ranks is None or reason is None):
                    self._submit_partial_chunk()
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

    def _open(self, out: StoreLike, attrs: Mapping[str, Any], coords: Mapping[str, tuple[str, Any]],
              overwrite: bool, resume_from: int | None) -> None:
        """Create the store, or reopen it and roll it back to ``resume_from`` (rank 0 of a
        sharded run, telling the other ranks whether it could)."""
        with self._telling_the_other_ranks():
            with _writing(describe(out)), shutdown.signals_stay_with_the_main_thread():
                if resume_from is None:
                    self._store = RunStore.create(out, attrs=attrs, overwrite=overwrite)
                else:
                    self._store = RunStore.reopen(out)
            try:
                with _writing(self.store_name):
                    if resume_from is None:
                        for name, (dim, values) in coords.items():
                            description = contract.COORD_DESCRIPTIONS.get(name, "")
                            self._store.write_coordinate(name, dim, np.asarray(values), description)
                    else:
                        self._continue(resume_from, attrs, coords)
            except BaseException:
                self._store.release()
                raise

    @contextlib.contextmanager
    def _telling_the_other_ranks(self) -> Iterator[None]:
        """Rank 0 of a sharded run: tell the other ranks, which wait for it, whether what the
        block does succeeded (nothing to tell without ranks)."""
        try:
            yield
        except BaseException:
            if self._ranks is not None:
                self._ranks.agree(False)
            raise
        if self._ranks is not None:
            self._ranks.agree(True)

    def _attach(self, out: StoreLike) -> None:
        """Another rank than 0 of a sharded run: once rank 0 has the store, open it to write this
        rank's rows. Whether the recording resumes, and after which step, is rank 0's to say (a
        rank that looked for the store itself might have seen the one rank 0 had just created)."""
        if not self._ranks.agree(True):
            raise ConfigError(f"rank 0 could not open {describe(out)} (its error says why); fix that and start every rank again")
        try:
            self._store = RunStore.attach(out)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as error:
            raise ConfigError(
                f"rank {self._ranks.rank} cannot see {describe(out)}, which rank 0 created: every rank must record into "
                "one store (a shared file system, or S3)"
            ) from error
        resumed = self._store.group.attrs.get(contract.RESUMED_ATTR)
        if contract.STEP in self._store.group and resumed:  # rank 0 reopened it (a new one has no steps yet)
            self._pick_up_layout()
            self._handed_rows = self._store.rows
            self._last_step = resumed[-1]

    def _pick_up_layout(self) -> None:
        """The variables, their shapes and the chunk length of the store, as recorded."""
        variables = self._store.variables()
        self._shapes = {name: array.shape[1:] for name, array in variables.items()}
        steps = self._store.group[contract.STEP]
        chunk_steps = steps.attrs.get(contract.CHUNK_STEPS_ATTR, steps.chunks[0])  # (earlier stores: one shard a chunk)
        if self.chunk_steps not in (None, chunk_steps):
            raise ConfigError(f"{self.store_name} has {chunk_steps} steps per chunk, not {self.chunk_steps}; omit chunk_steps")
        self.chunk_steps = chunk_steps

    def _continue(self, resume_from: int, attrs: Mapping[str, Any], coords: Mapping[str, tuple[str, Any]]) -> None:
        """Check that the run being resumed is the one recorded, and pick up its layout."""
        differences = _attribute_differences(self._store.attrs, attrs)
        stored = self._store.group
        for name, (_, values) in coords.items():
            if name not in stored or not np.array_equal(stored[name][:], np.asarray(values)):
                differences.append(f"coordinate {name}")
        if differences:
            raise ConfigError(
                f"{self.store_name} was recorded with a different configuration; it differs in "
                f"{'; '.join(differences)}; resume with the recorded configuration or record into a new store"
            )
        self._pick_up_layout()
        self._store.drop_after(resume_from)
        self._handed_rows = self._store.rows
        self._last_step = resume_from

    def _start(self, values: Mapping[str, Value]) -> None:
        """From the first step's values: create one array per variable (or check them against
        the store being resumed), the staging buffers and the writer."""
        layout = {}
        for name, value in values.items():  # validate everything before creating anything
            if not isinstance(value, (torch.Tensor, np.ndarray, float, int)):
                raise RecordError(f"{name} is a {type(value).__name__}; record tensors, arrays or numbers")
        shapes = {name: _shape_of(value) for name, value in values.items()}
        for name, value in values.items():
            shape = shapes[name]
            dims = self._default_dims(name, shapes)
            if len(dims) != len(shape):
                raise RecordError(f"{name} has shape {shape} but dims {dims}; give one dim name per axis")
            layout[name] = (shape, dims, _dtype_name(value), _staging_dtype(value))
        self._sharded = {name for name, value in values.items() if sharded(value)}
        for name, value in values.items():  # (once: a variable keeps its layout, refused if not)
            if is_dtensor(value):
                self._ranks.check(name, value)
        if self._shapes:
            self._check_resumed(layout)
            self._check_rank_shards()
        elif self._ranks is None or self._ranks.writes_whole_values:
            with self._telling_the_other_ranks():
                self._create_variables(layout)
        else:
            if not self._ranks.agree(True):
                raise RecordError(f"rank 0 could not create the variables of {self.store_name} (its error says why)")
            self._pick_up_layout()
        self._uses_cuda = any(isinstance(v, torch.Tensor) and v.is_cuda for v in values.values())
        self._staged_dtypes = {name: layout[name][3] if name in layout else torch.float32 for name in self._shapes}
        self._parts = self._plan_staging()
        self._filling = [None] * len(self._parts)
        self._slab_bytes = slab_bytes(self._parts, self.chunk_steps)
        with shutdown.signals_stay_with_the_main_thread():
            self._writer = ChunkWriter(self._store, self._ranks, self._norms_over_ranks)

    def _plan_staging(self) -> list[list[Piece]]:
        """How a chunk is staged: every variable (in a sharded run, this rank's rows of the
        sharded ones, and on rank 0 the others), in parts of at most a slab where it can."""
        shard_rows = {name: array.shards[1] if array.ndim > 1 else 1 for name, array in self._store.variables().items()}
        whole_values = self._ranks is None or self._ranks.writes_whole_values
        own, staged = {}, {}
        for name, shape in self._shapes.items():
            if name in self._sharded:
                own[name] = self._ranks.own_rows(shape[0])
                start, stop = own[name]
                if stop > start:  # (a rank beyond the last row holds none)
                    staged[name] = ((stop - start, *shape[1:]), self._staged_dtypes[name], shard_rows[name])
            elif whole_values or name in self._norms_over_ranks:
                staged[name] = (shape, self._staged_dtypes[name], shard_rows[name])
        parts = plan_parts(staged, self.chunk_steps, self._part_bytes) or [[]]  # every rank takes part in each commit
        return [[self._own_piece(piece, own.get(piece.name)) for piece in part] for part in parts]

    @staticmethod
    def _own_piece(piece: Piece, own: tuple[int, int] | None) -> Piece:
        """A piece planned over this rank's rows, ``own``, placed at them in the variable (its
        values come as the rank's local tensor, which begins at ``own[0]``)."""
        if own is None:
            return piece
        first, last = own
        stop = first + piece.stop if piece.stop is not None else last
        return dataclasses.replace(piece, start=first + piece.start, stop=stop, offset=first)

    def _own_parts(self, step: int, values: Mapping[str, Value]) -> dict[str, Value]:
        """This rank's part of each value: its own rows of a sharded variable (of a DTensor, its
        local tensor; of a whole tensor, a view of its rows), anything else as it is."""
        own = {}
        for name, value in values.items():
            if is_dtensor(value):
                if sharded(value) != (name in self._sharded):
                    raise RecordError(
                        f"{name} is {'' if sharded(value) else 'not '}sharded on its rows at step {step} but "
                        f"{'is' if name in self._sharded else 'was not'} in the first step; record each variable in one layout"
                    )
                value = value.to_local()
            elif name in self._sharded and isinstance(value, (torch.Tensor, np.ndarray)):
                start, stop = self._ranks.own_rows(value.shape[0])
                value = value[start:stop]
            own[name] = value
        return own

    def _default_dims(self, name: str, shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, ...]:
        """The dims given for ``name``; else those of the variable it belongs to, ``W`` for
        ``W.grad`` or ``W.exp_avg`` of the same shape (so that ``W - W.grad`` never broadcasts);
        else :func:`zarrec.store.contract.dims_of`."""
        if name in self._dims:
            return self._dims[name]
        owner = name
        while "." in owner:
            owner = owner.rsplit(".", 1)[0]
            if shapes.get(owner) == shapes[name]:
                return self._default_dims(owner, shapes)
        return contract.dims_of(name, len(shapes[name]))

    @property
    def _part_bytes(self) -> int:
        """The most a part of a chunk may stage: a slab is a third of the budget."""
        return self._staging_bytes // SLABS

    def _create_variables(self, layout: Mapping[str, tuple]) -> None:
        """Create the arrays; one whose chunk does not fit a slab gets shards of as many rows as fit one.
        In a sharded run a sharded variable gets shards of each rank's rows (of a divisor of
        them, when those do not fit a slab), and the sizes are rank 0's share: the most any rank stages."""
        world = self._ranks.world if self._ranks is not None else 1
        rows_of = {name: rank_rows(shape[0], world) for name, (shape, *_) in layout.items() if name in self._sharded}
        sizes = [
            rows_of[name] * math.prod(shape[1:]) if name in rows_of else math.prod(shape) for name, (shape, *_) in layout.items()
        ]
        itemsizes = [dtype.itemsize for *_, dtype in layout.values()]
        if self.chunk_steps is None:
            self.chunk_steps = contract.auto_chunk_steps(sizes, itemsizes, self._part_bytes)
        chunk_bytes = sum(aligned(self.chunk_steps * n * i) for n, i in zip(sizes, itemsizes))
        if self.chunk_steps > 1 and chunk_bytes > self._part_bytes:
            raise RecordError(
                f"chunk_steps={self.chunk_steps} makes a chunk of {_size(chunk_bytes)}, more than a third of "
                f"staging_bytes ({_size(self._staging_bytes)}); lower chunk_steps (or omit it) or raise staging_bytes"
            )
        for name, (shape, dims, source_dtype, dtype) in layout.items():
            shard_rows, exact_rows = None, rows_of.get(name)
            if shape and chunk_bytes > self._part_bytes:
                fit = max(1, (self._part_bytes - ALIGNMENT) // (math.prod(shape[1:]) * dtype.itemsize))
                if name in rows_of:  # shards that split each rank's rows evenly
                    exact_rows = contract.divisor_at_most(rows_of[name], fit)
                else:
                    shard_rows = fit
            attrs = {contract.SOURCE_DTYPE_ATTR: source_dtype}
            if self._mantissa_bits is not None and shape:
                attrs[contract.MANTISSA_BITS_ATTR] = self._mantissa_bits
            if name in contract.DESCRIPTIONS:
                attrs["description"] = contract.DESCRIPTIONS[name]
            attrs.update(self._variable_attrs.get(name, {}))
            self._store.create_variable(
                name, shape, dims, self.chunk_steps, attrs, self._compressor, shard_rows, exact_shard_rows=exact_rows
            )
            self._shapes[name] = shape
        self._store.link_coordinates(list(self._shapes))

    def _check_resumed(self, layout: Mapping[str, tuple]) -> None:
        variables = self._store.variables()
        for name, (shape, _, source_dtype, _) in layout.items():
            if name not in variables:
                raise ConfigError(f"{name} is not in {self.store_name} being resumed; it records {sorted(variables)}")
            recorded = variables[name].attrs.get(contract.SOURCE_DTYPE_ATTR)
            if shape != self._shapes[name] or source_dtype != recorded:
                raise ConfigError(
                    f"{name} is {source_dtype} {shape} but {self.store_name} recorded it as {recorded} "
                    f"{self._shapes[name]}; resume with the recorded model and dtype"
                )

    def _check_rank_shards(self) -> None:
        """Refuse to resume a store whose shards do not split a sharded variable at this run's
        rank boundaries (recorded on another number of ranks): two ranks would write one shard."""
        world = self._ranks.world if self._ranks is not None else 1
        variables = self._store.variables()
        for name in self._sharded:
            rows, recorded = self._shapes[name][0], variables[name].shards[1]
            if rank_rows(rows, world) % recorded:
                raise ConfigError(
                    f"{self.store_name} stores {name} in shards of {recorded} of its {rows} rows, which do not split the "
                    f"{rank_rows(rows, world)} each of this run's {world} ranks holds: resume it on as many ranks as "
                    f"recorded it ({-(-rows // recorded)}), or record into a new store"
                )

    def _refuse(self, step: int, name: str, value: Value) -> None:
        if name not in self._shapes:
            raise RecordError(f"{name!r} was not in the first record() call; this recording has {sorted(self._shapes)}")
        raise RecordError(
            f"{name} has shape {_shape_of(value)} at step {step}, expected {self._shapes[name]} as in the first step"
        )

    def _refuse_narrowing(self, step: int, name: str, dtype: torch.dtype) -> None:
        staged = self._staged_dtypes[name]
        if torch.promote_types(dtype, staged) is not staged:  # a wider dtype would be rounded when staged
            raise RecordError(
                f"{name} is {str(dtype).removeprefix('torch.')} at step {step} but "
                f"{str(staged).removeprefix('torch.')} in the first step; record each variable in one dtype"
            )

    def _take_slab(self, index: int) -> Slab | None:
        """A slab for part ``index`` of the chunk: a new one while there are fewer than
        :data:`~zarrec.record.staging.SLABS`, else the next the writer frees (waiting for it)."""
        start = time.perf_counter()
        if self._chunk_began is None:
            self._chunk_began = start
        if self._free.empty() and len(self._slabs) < SLABS:
            slab = Slab(self._slab_bytes, self.chunk_steps, pinned=self._uses_cuda)
            self._slabs.append(slab)
        else:
            slab = self._free.get()  # blocks while every slab is being written
            self._waited += time.perf_counter() - start
        if self._writer_failed():
            return None
        slab.hold(index, self._parts[index])
        self._filling[index] = slab
        return slab

    def _submit_partial_chunk(self) -> None:
        if self._filling and self._filling[0] is not None and self._filling[0].rows:
            for index in range(len(self._parts)):
                self._submit(index)

    def _submit(self, index: int) -> None:
        """Hand part ``index`` of the chunk to the writer; the last part commits the chunk."""
        slab, self._filling[index] = self._filling[index], None
        assert slab is not None and self._writer is not None
        rows = slab.rows
        commits = index == len(self._parts) - 1
        if commits:
            self._handed_rows += rows
            self._unflushed = 0
        wait = _cuda_wait() if self._uses_cuda else (lambda: None)

        def values() -> dict[str, np.ndarray]:  # runs in the writer thread
            wait()
            arrays = slab.as_float32(rows, self._scratch)
            if self._mantissa_bits is not None:
                for name, array in arrays.items():
                    if self._shapes[name]:  # a tensor, not a per-step scalar
                        round_mantissa(array, self._mantissa_bits)
            return arrays

        starts = {piece.name: piece.start for piece in slab.part if piece.start}
        chunk = Chunk(slab.steps[:rows].copy(), values, lambda: self._release(slab), starts=starts, commits=commits)
        self._writer.submit(chunk)

    def _check_the_writers_pace(self, rows: int) -> None:
        """Warn once when, over the chunk just handed over, record() waited for the writer more
        than :data:`~zarrec.store.contract.SLOW_WRITER_FRACTION` of the time: the writer cannot keep up."""
        now = time.perf_counter()
        elapsed, waited = now - (self._chunk_began or now), self._waited
        self._chunk_began, self._waited = None, 0.0
        if self._warned_slow or elapsed <= 0 or waited <= contract.SLOW_WRITER_FRACTION * elapsed:
            return
        self._warned_slow = True
        produced = rows * (sum(4 * math.prod(shape) for shape in self._shapes.values()) + 8)
        writer = self._writer
        rate = writer.written_bytes / writer.writing_seconds if writer.writing_seconds else float("nan")
        warnings.warn(
            f"zarrec: training waited for the writer of {self.store_name} {waited / elapsed:.0%} of the last chunk's "
            f"time: it writes {_size(rate)}/s, the run makes {_size(produced / max(elapsed - waited, 1e-9))}/s of "
            "recorded values. Record less: every=N (a step in N), fewer params (params=[...]), or mantissa_bits=7 "
            "(bfloat16's precision, smaller on disk)",
            ZarrecWarning, stacklevel=4,
        )

    def _release(self, slab: Slab) -> None:
        slab.rows = 0
        self._free.put(slab)

    def _finish_store(self, reason: str | None) -> None:
        error = self._writer.error if self._writer is not None else None
        if error is not None:
            state, why = contract.FAILED, f"writing failed: {type(error).__name__}: {error}"
        elif reason is not None:
            state, why = contract.INTERRUPTED, reason
        else:
            state, why = contract.COMPLETE, "closed normally"
        try:
            self._store.finish(state, why)
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


def _size(n: float) -> str:
    """Bytes as a human reads them: 618.4 MB, 5.04 TB."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:,.3g} TB"


@contextlib.contextmanager
def _writing(store_name: str) -> Iterator[None]:
    """An I/O error while creating or opening the store is a :class:`WriterError` naming it."""
    try:
        yield
    except OSError as exc:
        raise WriterError(f"could not write to {store_name} ({type(exc).__name__}: {exc})") from exc


def _flatten(attrs: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in attrs.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _attribute_differences(stored: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """``"key: recorded X, now Y"`` for each attribute given that differs from the store's (as JSON)."""
    recorded = _flatten(stored)
    now = _flatten(json.loads(json.dumps(dict(given), default=str)))
    ignored = contract.RESUME_MAY_DIFFER
    return [
        f"{key}: recorded {recorded.get(key)!r}, now {value!r}"
        for key, value in now.items()
        if recorded.get(key) != value and not any(key == i or key.startswith(f"{i}.") for i in ignored)
    ]


def _cuda_wait():
    """Record an event after this chunk's non-blocking copies; the writer thread waits on it."""
    event = torch.cuda.Event()
    event.record()
    return event.synchronize
