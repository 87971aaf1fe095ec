"""The writer process: compression and writing outside the training process.

A writer thread in the training process competes with training for its interpreter lock:
every slice of Python the writer runs (zarr's metadata, the shard assembly, the event
loop) is one the training thread waits for. Measured on the fast reference step, that costs
more than the compression itself (benchmarks/README.md, "The writer: thread or process").
So by default a recorder's chunks are written by a separate process:

- one per training process, started with the first recorder that needs it
  (``python -m zarrec.writer_process``: it imports zarr and numpy, never torch, and never
  re-runs the training script), and shared by that process's recorders;
- staging slabs are anonymous shared memory (``memfd``), handed over once as file
  descriptors, so a chunk crosses as a few hundred bytes naming its slab and rows
  (:class:`~zarrec.chunk.Chunk`), never as values;
- inside, each store is written by a :class:`~zarrec.writer.ThreadWriter` opened on it
  (:meth:`zarrec.store.RunStore.attach`), in the order the chunks came; each written chunk's
  slab is released back to the recorder with the writer's rates and its first error;
- the training process keeps the store's lock and writes its final status after the
  writer process has written the last chunk.

It ignores SIGINT and SIGTERM: those stop the training process, whose recorders then hand
over their staged steps and close. It exits when the training process closes the connection
or dies, at once: as ``kill -9`` of a training process with a writer thread, the steps not
yet committed are lost, and every committed one stays.
"""

from __future__ import annotations

import itertools
import mmap
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from pathlib import Path

import numpy as np

from zarrec import shutdown
from zarrec.chunk import Chunk
from zarrec.errors import WriterError
from zarrec.store import RunStore
from zarrec.writer import ThreadWriter


def available() -> bool:
    """Whether this platform has what the writer process needs (anonymous shared memory that
    can be handed to another process: Linux)."""
    return hasattr(os, "memfd_create")


def shared_memory(nbytes: int) -> tuple[mmap.mmap, int]:
    """``nbytes`` of anonymous shared memory: its mapping, and a file descriptor to hand to
    :meth:`ProcessWriter.add_slab` (then close)."""
    fd = os.memfd_create("zarrec-slab", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, nbytes)
        return mmap.mmap(fd, nbytes), fd
    except BaseException:
        os.close(fd)
        raise


class ProcessWriter:
    """The training process's side of one store's writer in the writer process: the
    interface of :class:`~zarrec.writer.ThreadWriter`."""

    def __init__(self, store: RunStore, path: str) -> None:
        self.store = store
        self.error: BaseException | None = None
        self.written_bytes = 0
        self.writing_seconds = 0.0
        self._connection = _WriterProcess.shared()
        self._id = next(_ids)
        self._slabs = 0
        self._pending: dict[int, Callable[[], None]] = {}  # releases of chunks sent, by number
        self._sent = 0
        self._changed = threading.Condition()
        self._closed = False
        self._connection.writers[self._id] = self
        self._connection.send((self._id, "open", path, store.rows, store.last_step))

    def add_slab(self, memory: np.ndarray, fd: int | None = None) -> int:
        """Hand the slab's shared memory (``fd``, from :func:`shared_memory`) to the writer process."""
        assert fd is not None, "a writer process needs the slab's shared memory"
        self._slabs += 1
        self._connection.send((self._id, "slab", self._slabs - 1, memory.size), fd=fd)
        return self._slabs - 1

    def submit(self, chunk: Chunk, release: Callable[[], None]) -> None:
        """Send a chunk (a description of slab rows) for writing; ``release`` runs once it is written."""
        with self._changed:
            number, self._sent = self._sent, self._sent + 1
            if not self._closed:  # (closed: the writer process is gone)
                self._pending[number] = release
        if self._closed:
            release()
            return
        self._connection.send((self._id, "chunk", number, chunk))

    def wait(self) -> None:
        """Block until every chunk sent so far is written (or has failed)."""
        with self._changed:
            self._changed.wait_for(lambda: not self._pending)

    def close(self) -> None:
        """Write everything sent, close the store in the writer process, and pick up its
        committed rows in this process's :class:`RunStore`."""
        self._connection.send((self._id, "close"))
        with self._changed:
            self._changed.wait_for(lambda: self._closed)
        self._connection.writers.pop(self._id, None)
        try:
            self.store.reattach()
        except Exception as exc:  # the store is gone or unreadable: the recorder reports it as a writer error
            self.error = self.error or exc

    def written(self, number: int, bytes_: int, seconds: float, last_step: int | None, error: BaseException | None) -> None:
        """(The listener thread) chunk ``number`` is written, or failed."""
        self.written_bytes, self.writing_seconds = bytes_, seconds
        self.store.last_step = last_step
        if error is not None and self.error is None:
            self.error = error
        with self._changed:
            release = self._pending.pop(number)
        release()
        with self._changed:
            self._changed.notify_all()

    def failed(self, error: BaseException) -> None:
        """(The listener thread) the writer process could not open the store."""
        if self.error is None:
            self.error = error

    def closed(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def lost(self, why: str) -> None:
        """(The listener thread) the writer process is gone: what was sent is lost, not waited for."""
        if self.error is None:
            self.error = WriterError(why)
        with self._changed:
            releases, self._pending = list(self._pending.values()), {}
        for release in releases:
            release()
        self.closed()


_ids = itertools.count()


class _WriterProcess:
    """The writer process of this training process, and the connection to it."""

    _current: _WriterProcess | None = None
    _starting = threading.Lock()

    @classmethod
    def shared(cls) -> _WriterProcess:
        """The running writer process, started if there is none (or the last one died)."""
        with cls._starting:
            if cls._current is None or cls._current.gone:
                cls._current = cls()
            return cls._current

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        package_root = str(Path(__file__).resolve().parents[1])  # zarrec importable however this process found it
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "zarrec.writer_process", str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=environment,
            )
        self.connection = Connection(ours.detach())
        self.writers: dict[int, ProcessWriter] = {}
        self.gone = False
        self._sending = threading.Lock()
        with shutdown.signals_stay_with_the_main_thread():
            threading.Thread(target=self._listen, name="zarrec-writer-process", daemon=True).start()

    def send(self, message: tuple, fd: int | None = None) -> None:
        with self._sending:
            try:
                self.connection.send(message)
                if fd is not None:
                    send_handle(self.connection, fd, self.process.pid)
            except OSError:  # it died; the listener tells the writers
                pass

    def _listen(self) -> None:
        try:
            while True:
                writer_id, kind, *details = self.connection.recv()
                writer = self.writers[writer_id]
                if kind == "written":
                    writer.written(*details)
                elif kind == "failed":
                    writer.failed(*details)
                else:
                    writer.closed()
        except (EOFError, OSError):
            pass
        self.gone = True
        code = self.process.wait()
        for writer in list(self.writers.values()):
            writer.lost(f"the writer process exited unexpectedly (exit status {code})")


# The writer process itself.


def _serve(connection: Connection) -> None:
    """Open stores, take slabs, write chunks, close stores, as the training process says."""
    sending = threading.Lock()
    writers: dict[int, ThreadWriter | BaseException] = {}
    slabs: dict[int, list[mmap.mmap]] = {}

    def reply(message: tuple) -> None:
        with sending:
            connection.send(message)

    def written(writer_id: int, number: int) -> Callable[[], None]:
        def release() -> None:
            writer = writers[writer_id]
            if isinstance(writer, BaseException):  # its store could not be opened (reported)
                reply((writer_id, "written", number, 0, 0.0, None, None))
            else:
                error = _portable(writer.error)
                reply((writer_id, "written", number, writer.written_bytes, writer.writing_seconds, writer.store.last_step, error))
        return release

    def close(writer_id: int) -> None:
        writer = writers[writer_id]
        if isinstance(writer, ThreadWriter):
            writer.close()
        del writers[writer_id], slabs[writer_id]  # (the slabs are unmapped with the last view of them)
        reply((writer_id, "closed"))

    while True:
        try:
            writer_id, kind, *details = connection.recv()
        except EOFError:  # the training process is gone, or has closed every recorder
            os._exit(0)
        if kind == "open":
            path, rows, last_step = details
            try:
                writers[writer_id] = ThreadWriter(RunStore.attach(path, rows, last_step))
            except Exception as exc:
                writers[writer_id] = exc
                reply((writer_id, "failed", _portable(exc)))
            slabs[writer_id] = []
        elif kind == "slab":
            (_, nbytes), fd = details, recv_handle(connection)
            with os.fdopen(fd, "rb", buffering=0) as file:
                memory = mmap.mmap(file.fileno(), nbytes)
            slabs[writer_id].append(memory)
            if isinstance(writers[writer_id], ThreadWriter):
                writers[writer_id].add_slab(np.frombuffer(memory, dtype=np.uint8))
        elif kind == "chunk":
            number, chunk = details
            writer = writers[writer_id]
            if isinstance(writer, ThreadWriter):
                writer.submit(chunk, written(writer_id, number))
            else:
                written(writer_id, number)()
        elif kind == "close":
            threading.Thread(target=close, args=(writer_id,), daemon=True).start()  # others go on meanwhile


def _portable(error: BaseException | None) -> BaseException | None:
    """``error`` if it crosses a pickle intact, else a RuntimeError naming it."""
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _exit_when_orphaned(training_pid: int) -> None:
    """Exit at once if the training process dies while something else keeps the connection
    open (a forked data-loader worker inherits it)."""
    while os.getppid() == training_pid:
        time.sleep(0.2)
    os._exit(1)


def main(argv: list[str]) -> None:
    fd, training_pid = int(argv[0]), int(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(training_pid,), daemon=True).start()
    _serve(Connection(fd))


if __name__ == "__main__":
    main(sys.argv[1:])
