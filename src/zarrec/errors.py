"""Every error zarrec raises on purpose.

One hierarchy, rooted at :class:`ZarrecError`, so a caller (and the CLI) can catch
everything zarrec reports with a single ``except``. Each message names the problem
and the fix; the CLI prints it as one line and exits with status 2.
"""


class ZarrecError(Exception):
    """Base class of every error zarrec raises on purpose."""


class ConfigError(ZarrecError, ValueError):
    """An argument, a file or a configuration that zarrec cannot use as given."""


class StoreExistsError(ConfigError):
    """The output store already exists and overwriting was not asked for."""


class RecordError(ZarrecError, ValueError):
    """A call to ``Recorder.record`` that does not fit the recording so far."""


class WriterError(ZarrecError, RuntimeError):
    """The background writer failed to write to the store; the cause is chained."""


class RankError(ZarrecError, RuntimeError):
    """Another rank of a sharded run has failed or gone, so this one cannot go on recording with it."""


class MissingDependencyError(ZarrecError, ImportError):
    """An optional dependency (such as matplotlib) is needed for what was asked."""


class StoreLockedError(ZarrecError, RuntimeError):
    """Another writer has the store open; two writers would corrupt it."""


class CheckpointError(ZarrecError, RuntimeError):
    """The training framework could not write a checkpoint; every recorded step is committed."""


class ZarrecWarning(UserWarning):
    """Something went wrong that zarrec works around, such as recording stopped by on_error="warn"."""
