"""zarrec: record every optimizer step of neural-network training into Zarr, analyse it with xarray.

Importing zarrec registers the ``ds.zarrec`` xarray accessor. ``Recorder`` and
``ModelRecorder`` (torch) and ``ZarrecCallback`` (transformers) load on first use, so reading a
store stays quick.
"""

from zarrec import accessor as _accessor  # noqa: F401  (registers ds.zarrec)
from zarrec.errors import (
    ConfigError,
    MissingDependencyError,
    RankError,
    RecordError,
    StoreExistsError,
    StoreLockedError,
    WriterError,
    ZarrecError,
    ZarrecWarning,
)

__all__ = [
    "ConfigError",
    "MissingDependencyError",
    "ModelRecorder",
    "RankError",
    "RecordError",
    "Recorder",
    "StoreExistsError",
    "StoreLockedError",
    "WriterError",
    "ZarrecCallback",
    "ZarrecError",
    "ZarrecWarning",
]


def __getattr__(name: str):
    if name == "Recorder":
        from zarrec.recorder import Recorder

        return Recorder
    if name == "ModelRecorder":
        from zarrec.capture import ModelRecorder

        return ModelRecorder
    if name == "ZarrecCallback":
        from zarrec.callback import ZarrecCallback

        return ZarrecCallback
    raise AttributeError(f"module 'zarrec' has no attribute {name!r}")
