"""One writer per store: a lock file beside a local store, recognised as stale once its writer is gone.

The file ``<store>.lock`` (``run.zarr.lock`` beside ``run.zarr``) holds the writer's host,
process id and start time. It lies outside the store, so no Zarr reader that lists the
hierarchy finds an object it does not know. It is created atomically (``O_EXCL``) and
removed when the writer closes. After a crash it stays behind; the next writer on the same
host finds its process gone and takes the lock over. Stores that are not local directories
(fsspec URLs, in-memory stores) are not locked: an object store has no atomic create-if-absent
that every one of them offers.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from zarrec.errors import StoreLockedError

LOCK_SUFFIX = ".lock"

_FILLING_SECONDS = 5.0  # an empty lock file younger than this may be being written by its creator
_held_here: set[Path] = set()  # locks held by writers in this process


def lock_path(store_dir: str | os.PathLike) -> Path:
    """The lock file of the local store ``store_dir``: beside it, named after it. A store inside
    another (a run's ``statistics`` group) has its lock beside the outermost one, named after
    both (``run.zarr.statistics.lock``): inside, it would be an object the outer store's readers
    do not know."""
    store = Path(store_dir).absolute()
    inside: list[str] = []
    while (store.parent / "zarr.json").is_file():
        inside.insert(0, store.name)
        store = store.parent
    return store.with_name(".".join([store.name, *inside]) + LOCK_SUFFIX)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class StoreLock:
    """The lock of one local store, held from :meth:`acquire` until :meth:`release`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def acquire(cls, store_dir: str | os.PathLike, store_name: str) -> StoreLock:
        """Take the lock of ``store_dir``, replacing a stale one; raise :class:`StoreLockedError` if it is held."""
        path = lock_path(store_dir)
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(2):  # a second try after removing a stale lock
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                cls._remove_if_stale(path, store_name)
                continue
            with os.fdopen(descriptor, "w") as file:
                json.dump(holder, file)
            _held_here.add(path.resolve())
            return cls(path)
        raise StoreLockedError(f"could not lock {store_name}: its lock file {path} keeps reappearing; is another writer starting?")

    @staticmethod
    def _remove_if_stale(path: Path, store_name: str) -> None:
        """Remove a lock whose writer is gone; raise if its writer may still be running."""
        try:
            holder = json.loads(path.read_text())
            host, pid, since = holder["host"], int(holder["pid"]), holder.get("since", "?")
        except FileNotFoundError:
            return  # released meanwhile
        except (ValueError, KeyError, TypeError, OSError):
            # Unreadable: its writer was killed between creating and filling it, or is filling it now.
            if time.time() - path.stat().st_mtime < _FILLING_SECONDS:
                raise StoreLockedError(f"{store_name} is being locked by another writer right now; try again") from None
            host, pid, since = None, None, "?"
        if host is not None and host != socket.gethostname():
            raise StoreLockedError(
                f"{store_name} is locked by process {pid} on host {host} (since {since}); wait for that run to end, "
                f"or if it is gone, delete {path}"
            )
        if pid is not None and (path.resolve() in _held_here or (pid != os.getpid() and _process_alive(pid))):
            raise StoreLockedError(
                f"{store_name} is being written by process {pid} (since {since}); two writers would corrupt it: "
                "wait for that run to end or record into another store"
            )
        path.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock file (once)."""
        _held_here.discard(self.path.resolve())
        self.path.unlink(missing_ok=True)

