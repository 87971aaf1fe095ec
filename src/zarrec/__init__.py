"""zarrec: record every optimizer step of neural-network training into Zarr, analyse it with xarray.

Importing zarrec registers the ``ds.zarrec`` xarray accessor. ``Recorder`` and
``ModelRecorder`` (torch), ``ZarrecCallback`` (transformers) and ``ZarrecLightningCallback``
(Lightning, ``pip install 'zarrec[lightning]'``) load on first use, so reading a store stays quick.

The package, by role (layers only import downwards; README, "Development"):
:mod:`zarrec.store` (the store and its contract), :mod:`zarrec.record` (``Recorder``),
:mod:`zarrec.capture` (``ModelRecorder``), :mod:`zarrec.adapters` (the callbacks) and, reading
stores only, :mod:`zarrec.analysis`; the CLI, the reference experiment and the legacy format
use them.
"""

import importlib

from zarrec.analysis import accessor as _accessor  # noqa: F401  (registers ds.zarrec)
from zarrec.analysis.runs import compare_runs, open_runs
from zarrec.errors import (
    CheckpointError,
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

# Loaded on first use: each needs torch (and a framework), which reading a store does not.
_LAZY = {
    "Recorder": "zarrec.record.recorder",
    "ModelRecorder": "zarrec.capture.model_recorder",
    "ZarrecCallback": "zarrec.adapters.huggingface",
    "ZarrecLightningCallback": "zarrec.adapters.lightning",
    "close_open_recorders": "zarrec.record.shutdown",
    "restore": "zarrec.branching.restore",
    "trainer_checkpoint": "zarrec.branching.trainer_checkpoint",
}

__all__ = [
    "CheckpointError",
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
    "close_open_recorders",
    "compare_runs",
    "open_runs",
    "restore",
    "trainer_checkpoint",
]  # (ZarrecLightningCallback is public too, but needs its extra: ``import *`` must not fail without it)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zarrec' has no attribute {name!r}")
