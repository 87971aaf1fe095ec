"""Where a store is, and what is there: its name for messages, whether it exists, its last
committed step, and the checks before one is created or resumed. Opens nothing for writing."""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zarr

from zarrec.errors import ConfigError, StoreExistsError
from zarrec.store import contract

StoreLike = str | os.PathLike | zarr.abc.store.Store

def describe(out: StoreLike) -> str:
    """A store's name for messages: its path or URL."""
    return os.fspath(out) if isinstance(out, (str, os.PathLike)) else repr(out)


@contextlib.contextmanager
def quiet_zarr() -> Iterator[None]:
    """Silence zarr's user warning where we know better: consolidated metadata is not (yet)
    in the v3 spec, but xarray reads it (readers without it use the per-array metadata)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
        yield


def exists_message(name: str) -> str:
    return (
        f"{name} already exists; pass --resume to continue it, --overwrite (overwrite=True) to replace it, "
        "or choose another output path"
    )


def ensure_creatable(path: str | os.PathLike, what: str) -> None:
    """Refuse a local ``path`` that cannot be created: empty, under a file, or in a directory
    that takes no new files (tried with a temporary file, removed at once). ``what`` names the
    option in the message."""
    if not os.fspath(path):
        raise ConfigError(f"{what} is an empty path; pass a path")
    parent = Path(path).absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{what} {os.fspath(path)} lies under {parent}, a file; choose another path")
    try:
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as exc:
        raise ConfigError(
            f"{what} {os.fspath(path)} cannot be created: {parent} takes no new files ({exc.strerror}); choose another path"
        ) from exc


def ensure_known_protocol(out: StoreLike) -> None:
    """Refuse an fsspec URL whose protocol fsspec does not know, naming the fix."""
    if isinstance(out, (str, os.PathLike)) and "://" in os.fspath(out):
        import fsspec

        protocol = os.fspath(out).split("://", 1)[0]
        try:
            fsspec.get_filesystem_class(protocol)
        except (ValueError, ImportError) as exc:
            raise ConfigError(
                f"{os.fspath(out)}: {_first_line(exc)}; pass a local path or a URL fsspec opens (s3://, gs://, "
                "memory://, ...; the protocol's package installed)"
            ) from exc


def local_directory(out: StoreLike) -> Path | None:
    """The directory of a store on the local file system, or None (an fsspec URL, a Store object)."""
    if isinstance(out, (str, os.PathLike)) and "://" not in os.fspath(out):
        return Path(out)
    return None


def store_exists(out: StoreLike) -> bool:
    """Whether ``out`` holds a Zarr group (a recording to resume)."""
    if (path := local_directory(out)) is not None:
        return (path / "zarr.json").is_file()
    try:
        zarr.open_group(out, mode="r")
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        return False
    return True


def open_run(out: StoreLike) -> zarr.Group:
    """Open a zarrec store read-only, or raise a :class:`ConfigError` saying why it is not one
    (missing, an array rather than the store's root, unreadable metadata, an unknown URL)."""
    try:
        group = zarr.open_group(out, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError) as exc:
        raise ConfigError(f"{describe(out)} is not a Zarr store; pass the path of a store written by zarrec") from exc
    except zarr.errors.ContainsArrayError as exc:
        raise ConfigError(f"{describe(out)} is an array, not a store; pass the store's root, the directory above it") from exc
    except (ValueError, TypeError, KeyError, OSError) as exc:  # bad JSON, an unknown protocol, no permission
        raise ConfigError(f"{describe(out)} cannot be opened as a Zarr store ({_first_line(exc)}); check the path") from exc
    if contract.STEP not in group:
        raise ConfigError(f"{describe(out)} has no {contract.STEP!r} array; it was not written by zarrec")
    return group


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def committed_step(out: StoreLike) -> int | None:
    """The last step committed to the zarrec store at ``out``, or None (none yet)."""
    return last_of(committed_steps(zarr.open_group(out, mode="r")))


def committed_steps(group: zarr.Group) -> np.ndarray:
    """The steps committed to a zarrec group, as its metadata has them (none before the first commit)."""
    return group[contract.STEP][:] if contract.STEP in group else np.empty(0, dtype=np.int64)


def last_of(steps: np.ndarray) -> int | None:
    return int(steps[-1]) if steps.size else None


def ensure_resumable(out: StoreLike) -> None:
    """Refuse to resume a recording that is not there, or one of another format."""
    if not store_exists(out):
        raise ConfigError(f"there is no recording to resume at {describe(out)}; drop --resume to start one")
    recorded = zarr.open_group(out, mode="r").attrs.get(contract.FORMAT_ATTR)
    if recorded is None:
        raise ConfigError(f"{describe(out)} is not a zarrec recording; it cannot be resumed")
    if recorded != contract.FORMAT_VERSION:
        raise ConfigError(
            f"{describe(out)} is a zarrec format {recorded} store; this zarrec resumes format "
            f"{contract.FORMAT_VERSION} only (it still reads, analyses and exports it): record the rest into a new store"
        )


def ensure_new(out: StoreLike, *, overwrite: bool = False) -> None:
    """Refuse a local ``out`` that is a file, a non-empty non-Zarr directory, or a store unless
    ``overwrite``; one that cannot be created; a URL of an unknown protocol; any other object
    than a path, a URL or a zarr Store."""
    if not isinstance(out, (str, os.PathLike, zarr.abc.store.Store)):
        raise ConfigError(f"cannot record into {out!r} ({type(out).__name__}); pass a path, an fsspec URL or a zarr Store")
    ensure_known_protocol(out)
    if (path := local_directory(out)) is not None:
        ensure_creatable(path, "the store")
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{describe(out)} exists and is not a directory; choose another output path")
        if path.is_dir() and any(path.iterdir()):
            if not (path / "zarr.json").exists():
                raise ConfigError(
                    f"{describe(out)} is a non-empty directory but not a Zarr store; "
                    "zarrec never deletes it: choose another output path"
                )
            if not overwrite:
                raise StoreExistsError(exists_message(describe(out)))
