"""The framework-free recorder: ``record(step, **tensors)`` into step-chunked Zarr arrays.

On the training thread a step costs one copy per tensor into a preallocated
host staging buffer (non-blocking from a CUDA device, into pinned memory). When a
buffer holds ``chunk_steps`` steps it goes to the background
:class:`~zarrec.writer.ChunkWriter`; the training thread continues in the next
free buffer, and waits only if all ``buffers`` are still being written
(back-pressure, so memory stays bounded).
"""

from __future__ import annotations

import math
import queue
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from zarrec import contract
from zarrec.errors import RecordError, WriterError
from zarrec.store import RunStore, StoreLike
from zarrec.writer import Chunk, ChunkWriter

Value = torch.Tensor | np.ndarray | float | int
_MISSING = float("nan")  # what a step that does not pass a variable records for it


class _Staging:
    """Host memory for one chunk: ``chunk_steps`` rows of every variable, in its source dtype.

    The training thread only copies (a bf16 tensor into bf16 memory); the conversion to
    float32 happens once per chunk, in the writer thread. Every row of every variable is
    written by :meth:`Recorder.record` (NaN for a variable a step does not pass), so a
    recycled buffer needs no clearing.
    """

    def __init__(self, chunk_steps: int, layout: Mapping[str, tuple[tuple[int, ...], torch.dtype]], pinned: bool) -> None:
        self.steps = np.full(chunk_steps, -1, dtype=np.int64)
        self.tensors = {
            name: torch.empty((chunk_steps, *shape), dtype=dtype, pin_memory=pinned)
            for name, (shape, dtype) in layout.items()
        }
        # One view per row and variable, made once: indexing costs more than the copy itself.
        self.row_views = [[tensor[row] for tensor in self.tensors.values()] for row in range(chunk_steps)]
        self.rows = 0

    def as_float32(self, rows: int) -> dict[str, np.ndarray]:
        """The first ``rows`` rows of every variable as float32 numpy arrays (exact for bf16/fp16)."""
        return {name: _to_float32(tensor[:rows]) for name, tensor in self.tensors.items()}


def _to_float32(tensor: torch.Tensor) -> np.ndarray:
    """Exact float32 copy in numpy, on this thread only.

    torch would split the conversion over its intra-op threads, whose spin-waiting takes
    a core from the codec and the training loop. A bfloat16 is the upper half of the
    float32 with the same value, so its bits shifted left by 16 are that float32.
    """
    if tensor.dtype == torch.bfloat16:
        bits = tensor.view(torch.int16).numpy().astype(np.int32) << 16
        return bits.view(np.float32)
    return tensor.numpy().astype(np.float32)


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
    """Streams named tensors, one row per training step, into a new Zarr v3 store.

    The first :meth:`record` call fixes the variables and their shapes; later calls
    may pass any subset of them (the rest are stored as NaN for that step). Values
    are stored as float32 exactly as given: NaN and Inf included. The store opens
    with ``xr.open_zarr(out)``.

    Args:
        out: path, fsspec URL or Zarr store to create.
        chunk_steps: steps per chunk along ``step``; by default chosen from the first step
            (:func:`zarrec.contract.auto_chunk_steps`: about 16 MB per chunk, at most 512 steps).
        dims: non-step dimension names per variable; defaults come from
            :data:`zarrec.contract.VARIABLE_DIMS`, else ``<name>_dim<i>``.
        coords: static coordinates, ``{name: (dim, values)}``, e.g. ``{"live": ("token", mask)}``.
        attrs: run attributes (hyperparameters) stored on the group.
        compressor: a Zarr v3 bytes-to-bytes codec; default Blosc zstd-3 + bit-shuffle.
        buffers: staging chunks in host memory (one filling, the rest being written).
        overwrite: replace an existing store at ``out``.

    Memory is bounded: ``buffers × chunk_steps`` steps in their source dtype (pinned on
    CUDA), however long the run; when every buffer is still being written, :meth:`record`
    waits for one (back-pressure). A crash loses at most the steps not yet written: up to
    ``buffers × chunk_steps`` (see :meth:`flush`).

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
        buffers: int = 3,
        overwrite: bool = False,
    ) -> None:
        if chunk_steps is not None and chunk_steps < 1:
            raise RecordError(f"chunk_steps must be at least 1, got {chunk_steps}")
        if buffers < 2:
            raise RecordError(f"buffers must be at least 2 (one filling, one writing), got {buffers}")
        self.chunk_steps = chunk_steps
        self._dims = dict(dims or {})
        self._compressor = compressor or contract.default_compressor()
        self._buffer_count = buffers
        self._store = RunStore.create(out, overwrite=overwrite)
        self._store.update_attrs(attrs or {})
        for name, (dim, values) in (coords or {}).items():
            self._store.write_coordinate(name, dim, np.asarray(values), contract.TOKEN_COORD_DESCRIPTIONS.get(name, ""))
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._free: queue.Queue[_Staging] = queue.Queue()
        self._current: _Staging | None = None
        self._writer: ChunkWriter | None = None
        self._uses_cuda = False
        self._last_step: int | None = None
        self._closed = False

    @property
    def store_name(self) -> str:
        return self._store.name

    @property
    def last_step(self) -> int | None:
        """The last step passed to :meth:`record`, or None."""
        return self._last_step

    def record(self, step: int, **values: Value) -> None:
        """Stage the values of one step; cheap, never writes on the calling thread.

        Raises :class:`~zarrec.errors.WriterError` if the background writer has failed,
        :class:`~zarrec.errors.RecordError` for a step or value that does not fit.
        """
        self._raise_if_failed()
        if self._closed:
            raise RecordError(f"the recorder for {self.store_name} is closed; create a new Recorder to record more")
        if not values:
            raise RecordError("record() needs at least one named value, e.g. record(step, loss=loss)")
        if self._last_step is not None and step <= self._last_step:
            raise RecordError(
                f"step {step} is not after the last recorded step {self._last_step}; steps must increase"
            )
        if not self._shapes:
            self._start(values)
        for name, value in values.items():
            if getattr(value, "shape", ()) != self._shapes.get(name):  # torch.Size and numpy shapes are tuples
                self._refuse(step, name, value)
        staging = self._current or self._take_free_buffer()
        row = staging.rows
        _copy_row(staging.row_views[row], [values.get(name, _MISSING) for name in self._shapes], self._uses_cuda)
        staging.steps[row] = step
        staging.rows = row + 1
        self._last_step = step
        if staging.rows == self.chunk_steps:
            self._submit()

    def flush(self, wait: bool = False) -> None:
        """Hand the partial chunk to the writer now; with ``wait``, return once it is on disk."""
        self._raise_if_failed()
        if self._current is not None and self._current.rows:
            self._submit()
        if wait and self._writer is not None:
            self._writer.wait()
            self._raise_if_failed()

    def close(self) -> None:
        """Write every staged step, stop the writer, and raise any writer error."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            if self._current is not None and self._current.rows:
                self._submit()
            self._writer.close()
        self._raise_if_failed()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start(self, values: Mapping[str, Value]) -> None:
        """Create one array per variable from the first step's values, and the writer."""
        layout = {}
        for name, value in values.items():  # validate everything before creating anything
            if not isinstance(value, (torch.Tensor, np.ndarray, float, int)):
                raise RecordError(f"{name} is a {type(value).__name__}; record tensors, arrays or numbers")
            shape = _shape_of(value)
            dims = self._dims.get(name) or contract.dims_of(name, len(shape))
            if len(dims) != len(shape):
                raise RecordError(f"{name} has shape {shape} but dims {dims}; give one dim name per axis")
            layout[name] = (shape, dims, _dtype_name(value), _staging_dtype(value))
        if self.chunk_steps is None:
            self.chunk_steps = contract.auto_chunk_steps(
                [math.prod(shape) for shape, *_ in layout.values()], [dtype.itemsize for *_, dtype in layout.values()]
            )
        for name, (shape, dims, source_dtype, _) in layout.items():
            attrs = {contract.SOURCE_DTYPE_ATTR: source_dtype}
            if name in contract.DESCRIPTIONS:
                attrs["description"] = contract.DESCRIPTIONS[name]
            self._store.create_variable(name, shape, dims, self.chunk_steps, attrs, self._compressor)
            self._shapes[name] = shape
        self._store.link_coordinates(list(self._shapes))
        self._uses_cuda = any(isinstance(v, torch.Tensor) and v.is_cuda for v in values.values())
        staged = {name: (shape, dtype) for name, (shape, _, _, dtype) in layout.items()}
        for _ in range(self._buffer_count):
            self._free.put(_Staging(self.chunk_steps, staged, pinned=self._uses_cuda))
        self._writer = ChunkWriter(self._store)

    def _refuse(self, step: int, name: str, value: Value) -> None:
        if name not in self._shapes:
            raise RecordError(f"{name!r} was not in the first record() call; this recording has {sorted(self._shapes)}")
        raise RecordError(
            f"{name} has shape {_shape_of(value)} at step {step}, expected {self._shapes[name]} as in the first step"
        )

    def _take_free_buffer(self) -> _Staging:
        self._current = self._free.get()  # blocks while every buffer is being written
        self._raise_if_failed()
        return self._current

    def _submit(self) -> None:
        staging, self._current = self._current, None
        assert staging is not None and self._writer is not None
        rows = staging.rows
        wait = _cuda_wait() if self._uses_cuda else (lambda: None)

        def values() -> dict[str, np.ndarray]:  # runs in the writer thread
            wait()
            return staging.as_float32(rows)

        chunk = Chunk(steps=staging.steps[:rows].copy(), values=values, release=lambda: self._release(staging))
        self._writer.submit(chunk)

    def _release(self, staging: _Staging) -> None:
        staging.rows = 0
        self._free.put(staging)

    def _raise_if_failed(self) -> None:
        if self._writer is not None and self._writer.error is not None:
            cause = self._writer.error
            raise WriterError(
                f"writing to {self.store_name} failed ({type(cause).__name__}: {cause}); "
                f"steps up to the last complete chunk are in the store; fix the cause and record again"
            ) from cause


@torch.no_grad()
def _copy_row(targets: list[torch.Tensor], values: list[Value], from_cuda: bool) -> None:
    """Copy one step's values into its staging row: tensors in one fused call, the rest one by one."""
    tensor_targets, tensors = [], []
    for target, value in zip(targets, values):
        if isinstance(value, torch.Tensor):
            tensor_targets.append(target)
            tensors.append(value)
        elif isinstance(value, np.ndarray):
            target.copy_(torch.from_numpy(value))
        else:
            target.fill_(value)
    if tensors:
        # The fused copy the optimizers use: a third of the per-call overhead of separate copy_ calls.
        # Non-blocking from CUDA into pinned memory: the writer waits on one event per chunk (_cuda_wait).
        torch._foreach_copy_(tensor_targets, tensors, non_blocking=from_cuda)


def _cuda_wait():
    """Record an event after this chunk's non-blocking copies; the writer thread waits on it."""
    event = torch.cuda.Event()
    event.record()
    return event.synchronize
