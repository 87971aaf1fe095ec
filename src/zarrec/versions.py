"""Versions of the libraries that shape a recording, stored with every run."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

_PACKAGES = ("zarrec", "torch", "transformers", "accelerate", "zarr", "numcodecs", "numpy", "xarray")


def library_versions() -> dict[str, str]:
    """``{package: version}`` for Python and the packages zarrec's results depend on."""
    versions = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions
