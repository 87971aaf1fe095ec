"""Reading a local store as readers other than xarray-with-consolidated-metadata do.

tensorstore opens each array by its own ``zarr.json``; zarr-python with ``use_consolidated=False``
lists the hierarchy and does the same. Neither knows anything of zarrec.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorstore as ts
import zarr


def tensorstore_read(path: Path, name: str) -> np.ndarray:
    """Every element of array ``name`` of the store at ``path``, as tensorstore reads it."""
    array = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(Path(path) / name)}}, open=True).result()
    return array.read().result()


def tensorstore_view(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    return {name: tensorstore_read(path, name) for name in names}


def zarr_unconsolidated_view(path: Path) -> dict[str, np.ndarray]:
    """Every step-indexed array of the store, through the arrays' own metadata (listing the hierarchy)."""
    group = zarr.open_group(path, mode="r", use_consolidated=False)
    return {name: array[:] for name, array in group.arrays() if (array.metadata.dimension_names or ("",))[0] == "step"}
