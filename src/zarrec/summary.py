"""What a store holds, in numbers: steps, sizes raw and on disk."""

from __future__ import annotations

from dataclasses import dataclass

import zarr

from zarrec import contract
from zarrec.store import StoreLike, describe


@dataclass(frozen=True)
class StoreSummary:
    """Steps recorded and bytes (uncompressed vs stored) of a zarrec store."""

    path: str
    steps: int
    first_step: int | None
    last_step: int | None
    raw_bytes: int
    stored_bytes: int

    @property
    def compression_ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else float("nan")

    def lines(self) -> list[str]:
        """A short human-readable report, one fact per line."""
        span = f"steps {self.first_step}..{self.last_step}" if self.steps else "no steps"
        return [
            f"recorded {self.steps} steps ({span}) in {self.path}",
            f"{self.raw_bytes / 1e6:.1f} MB raw, {self.stored_bytes / 1e6:.1f} MB on disk "
            f"(compression {self.compression_ratio:.1f}x)",
            f'open it with: xarray.open_zarr("{self.path}")',
        ]


def summarize(out: StoreLike) -> StoreSummary:
    """Count the steps and the raw and stored bytes of every array in a store."""
    group = zarr.open_group(out, mode="r")
    steps = group[contract.STEP][:]
    arrays = [array for _, array in group.arrays()]
    return StoreSummary(
        path=describe(out),
        steps=int(steps.size),
        first_step=int(steps[0]) if steps.size else None,
        last_step=int(steps[-1]) if steps.size else None,
        raw_bytes=sum(array.nbytes for array in arrays),
        stored_bytes=sum(array.nbytes_stored() for array in arrays),
    )
