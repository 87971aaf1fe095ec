"""zarrec: record every optimizer step of neural-network training into Zarr, analyse it with xarray."""

from zarrec import accessor as _accessor  # noqa: F401  (registers ds.zarrec)
from zarrec.errors import ConfigError, RecordError, StoreExistsError, WriterError, ZarrecError
from zarrec.recorder import Recorder

__all__ = ["ConfigError", "RecordError", "Recorder", "StoreExistsError", "WriterError", "ZarrecError", "ZarrecCallback"]


def __getattr__(name: str):
    # transformers is heavy to import; load the callback only when asked for.
    if name == "ZarrecCallback":
        from zarrec.callback import ZarrecCallback

        return ZarrecCallback
    raise AttributeError(f"module 'zarrec' has no attribute {name!r}")
