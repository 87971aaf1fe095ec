"""Every byte checked: damaged shards are refused by every reader and named by ``zarrec verify``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorstore
import xarray as xr
import zarr

from zarrec.analysis.summary import summarize
from zarrec.store.verify import verify


@pytest.fixture
def store(tmp_path, float32_run) -> Path:
    """A copy of a recorded run, free to damage."""
    copy = tmp_path / "run.zarr"
    shutil.copytree(float32_run.path, copy)
    return copy


def zarrec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zarrec.cli", *map(str, args)], capture_output=True, text=True, timeout=120)


def shard_of(store: Path, name: str) -> Path:
    """The first shard of array ``name``."""
    return next(path for path in sorted((store / name / "c").rglob("*")) if path.is_file())


def test_an_intact_store_verifies_clean(store):
    assert verify(store) == []
    result = zarrec("verify", store, "--quiet")
    assert (result.returncode, result.stdout.strip()) == (0, f"{store}: whole, every committed shard checked")


def test_a_byte_flipped_inside_an_inner_chunk_is_refused_by_every_reader_and_named(store):
    shard = shard_of(store, "embeddings")
    data = bytearray(shard.read_bytes())
    metadata = zarr.open_array(store / "embeddings").metadata
    inner_chunks = np.prod(np.divide(metadata.chunk_grid.chunk_shape, metadata.codecs[0].chunk_shape))
    flipped = int(len(data) * 0.3)
    assert flipped < len(data) - 16 * inner_chunks - 4  # inside the data, not the index
    data[flipped] ^= 0xFF
    shard.write_bytes(bytes(data))

    with pytest.raises(ValueError, match="checksum"):
        xr.open_zarr(store).embeddings.compute()
    array = tensorstore.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(store / "embeddings")}}).result()
    with pytest.raises(ValueError, match="DATA_LOSS"):
        array.read().result()

    (problem,) = verify(store)
    assert (problem.array, problem.what.split(":")[0]) == ("embeddings", "checksum")
    steps = zarr.open_array(store / "step")[:]
    assert problem.steps == (steps[0], steps[-1])  # the one shard holds every step of this short run
    result = zarrec("verify", store, "--quiet")
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == problem.line()
    assert result.stdout.startswith(f"embeddings: steps {steps[0]}..{steps[-1]}: checksum: inner chunk ")


@pytest.mark.parametrize("damage, what", [
    ("truncated", "truncated or damaged"), ("emptied", "truncated"), ("deleted", "missing"),
])
def test_truncated_empty_and_deleted_shards_are_each_reported(store, damage, what):
    shard = shard_of(store, "grads")
    if damage == "deleted":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2] if damage == "truncated" else b"")
    (problem,) = verify(store)
    assert (problem.array, problem.what.split(":")[0]) == ("grads", what)
    result = zarrec("verify", store, "--json", "--quiet")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert not report["whole"] and [p["array"] for p in report["problems"]] == ["grads"]
    # info reads no data: it finds a deleted shard from the listing, and says so in its status.
    assert summarize(store).status.startswith("damaged") == (damage == "deleted")


def test_a_deleted_step_shard_and_a_fill_value_in_step_are_reported(store, tmp_path):
    other = tmp_path / "other.zarr"
    shutil.copytree(store, other)
    shard_of(store, "step").unlink()
    problems = verify(store)
    assert [(p.array, p.what.split(":")[0]) for p in problems] == [("step", "missing")]
    assert "damaged" in zarrec("info", store).stdout.splitlines()[1]

    steps = zarr.open_array(other / "step", mode="r+")
    steps[3] = -1  # as a step shard written without its row would read
    (problem,) = verify(other)
    assert (problem.array, problem.rows, problem.what.split(":")[0]) == ("step", (3, 3), "fill value")


def test_a_store_written_before_inner_checksums_still_verifies(tmp_path):
    store = tmp_path / "format1.zarr"
    shutil.copytree(Path(__file__).parents[1] / "data" / "format1_store", store)
    assert verify(store) == []
    assert np.isfinite(xr.open_zarr(store).embeddings.values).all()
