"""Versions of the libraries that shape a recording, stored with every run."""

from __future__ import annotations

import platform
import sys
from importlib.metadata import PackageNotFoundError, version

_PACKAGES = ("zarrec", "torch", "transformers", "accelerate", "zarr", "numcodecs", "numpy", "xarray")


def library_versions() -> dict[str, str]:
    """``{package: version}`` for Python and the packages zarrec's results depend on."""
    return {"python": platform.python_version(), **{package: _version(package) for package in _PACKAGES}}


def _version(package: str) -> str:
    # A module's own __version__ is instant; the installed metadata takes a scan of
    # site-packages (about 0.1 s a package), a cost paid when training starts.
    module = sys.modules.get(package)
    if module is not None and hasattr(module, "__version__"):
        return str(module.__version__)
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"
