"""RunStore: refusing to clobber, the commit order of an append, coordinates; memory, Store objects and S3."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from zarrec import ConfigError, StoreExistsError, StoreLockedError, contract
from zarrec.store import RunStore, ensure_new


def test_existing_store_is_refused_unless_overwrite(tmp_path):
    first = RunStore.create(tmp_path / "run.zarr")
    with pytest.raises(StoreExistsError, match="already exists; pass --resume to continue it, --overwrite"):
        RunStore.create(tmp_path / "run.zarr")
    with pytest.raises(StoreLockedError, match="is being written by process"):
        RunStore.create(tmp_path / "run.zarr", overwrite=True)  # not while its writer has it open
    first.release()
    RunStore.create(tmp_path / "run.zarr", overwrite=True)


def test_never_deletes_a_directory_that_is_not_a_store(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "precious.txt").write_text("data")
    with pytest.raises(ConfigError, match="not a Zarr store; zarrec never deletes it"):
        ensure_new(folder, overwrite=True)
    assert (folder / "precious.txt").read_text() == "data"


def test_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        ensure_new(tmp_path / "file")


def test_empty_directory_is_accepted(tmp_path):
    (tmp_path / "empty").mkdir()
    RunStore.create(tmp_path / "empty")


def test_consolidated_metadata_is_the_commit(tmp_path):
    """Arrays reserve rows ahead; readers of consolidated metadata see exactly the committed rows."""
    store = RunStore.create(tmp_path / "run.zarr")
    store.create_variable("x", (2,), ("dim",), 4, {}, contract.default_compressor())
    store.link_coordinates(["x"])
    store.append(np.array([0, 1, 2]), {"x": np.ones((3, 2), np.float32)})
    store.append(np.array([5]), {"x": np.zeros((1, 2), np.float32)})
    reserved = zarr.open_array(tmp_path / "run.zarr" / "x")  # the array's own metadata
    assert reserved.shape[0] >= 4 and np.isnan(reserved[4:]).all()
    group = zarr.open_group(tmp_path / "run.zarr", mode="r")  # through consolidated metadata
    assert group["x"].shape == (4, 2) and group[contract.STEP][:].tolist() == [0, 1, 2, 5]
    ds = xr.open_zarr(tmp_path / "run.zarr")
    assert ds.sizes == {"step": 4, "dim": 2}
    store.finish()
    assert zarr.open_array(tmp_path / "run.zarr" / "x").shape == (4, 2)  # a clean close agrees


def test_codec_is_standard_blosc_zstd_bitshuffle(tmp_path):
    store = RunStore.create(tmp_path / "run.zarr")
    store.create_variable("x", (2,), ("dim",), 8, {}, contract.default_compressor())
    codecs = zarr.open_array(tmp_path / "run.zarr" / "x").metadata.to_dict()["codecs"]
    blosc = next(codec for codec in codecs if codec["name"] == "blosc")
    assert blosc["configuration"]["cname"] == "zstd" and blosc["configuration"]["shuffle"] == "bitshuffle"


def test_a_variable_name_cannot_be_used_twice(tmp_path):
    store = RunStore.create(tmp_path / "run.zarr")
    store.create_variable("x", (2,), ("dim",), 8, {}, contract.default_compressor())
    with pytest.raises(ConfigError, match="already has an array named 'x'"):
        store.create_variable("x", (2,), ("dim",), 8, {}, contract.default_compressor())


def test_a_dimension_keeps_one_size(tmp_path):
    store = RunStore.create(tmp_path / "run.zarr")
    store.write_coordinate("live", "token", np.ones(4, bool))
    with pytest.raises(ConfigError, match="has 3 entries along 'token', but 'token' already has 4"):
        store.create_variable("w", (3, 2), ("token", "dim"), 8, {}, contract.default_compressor())
    store.create_variable("w", (4, 2), ("token", "dim"), 8, {}, contract.default_compressor())
    assert store.dim_sizes() == {"token": 4, "dim": 2}


WRITER = """
import sys, torch
from zarrec import Recorder
recorder = Recorder(sys.argv[1], chunk_steps=2)
for step in range(10_000):
    recorder.record(step, w=torch.full((3, 2), float(step)))
    if recorder.committed_step is not None:
        print(recorder.committed_step, flush=True)
"""


def assert_consistent_prefix(url: str) -> np.ndarray:
    """Steps 0..k, every row holding its step's values."""
    ds = xr.open_zarr(url)
    steps = ds.step.values
    np.testing.assert_array_equal(steps, np.arange(steps.size))
    np.testing.assert_array_equal(ds.w.values, np.broadcast_to(steps[:, None, None], (steps.size, 3, 2)))
    return steps


@pytest.mark.parametrize("url", ["memory://runs/run.zarr", "store object"])
def test_memory_urls_and_store_objects_record_and_resume(url):
    from zarrec import Recorder

    out = zarr.storage.MemoryStore() if url == "store object" else url
    with Recorder(out, chunk_steps=3) as recorder:
        for step in range(8):
            recorder.record(step, w=torch.full((3, 2), float(step)))
    with Recorder(out, resume_from=4) as recorder:
        recorder.record(5, w=torch.full((3, 2), 5.0))
    assert assert_consistent_prefix(out).tolist() == list(range(6))
    assert xr.open_zarr(out).attrs["zarrec_status"]["state"] == "complete"
    with pytest.raises(StoreExistsError):
        Recorder(out)


def test_s3_records_reads_and_resumes(s3_bucket):
    from zarrec import Recorder

    url = f"{s3_bucket}/run.zarr"
    with Recorder(url, chunk_steps=4, attrs={"lr": 1e-3}) as recorder:
        for step in range(10):
            recorder.record(step, w=torch.full((3, 2), float(step)))
    assert assert_consistent_prefix(url).tolist() == list(range(10))
    with Recorder(url, resume_from=6, attrs={"lr": 1e-3}) as recorder:
        for step in range(7, 12):
            recorder.record(step, w=torch.full((3, 2), float(step)))
    assert assert_consistent_prefix(url).tolist() == list(range(12))
    ds = xr.open_zarr(url)
    assert ds.attrs["zarrec_status"]["state"] == "complete" and ds.attrs["zarrec_resumed_after"] == [6]


def test_kill_9_on_s3_leaves_a_consistent_prefix_that_resumes(s3_bucket):
    """A real writer process on the S3 server, killed with SIGKILL at whatever moment of its writing."""
    from zarrec import Recorder

    url = f"{s3_bucket}/run.zarr"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url], stdout=subprocess.PIPE, text=True)
    while int(writer.stdout.readline()) < 9:
        pass
    writer.send_signal(signal.SIGKILL)
    assert writer.wait(timeout=60) == -signal.SIGKILL
    steps = assert_consistent_prefix(url)
    assert steps.size >= 10
    assert xr.open_zarr(url).attrs["zarrec_status"]["state"] == "recording"  # nobody could say otherwise
    last = int(steps[-1])
    with Recorder(url, resume_from=last) as recorder:
        for step in range(last + 1, last + 6):
            recorder.record(step, w=torch.full((3, 2), float(step)))
    assert assert_consistent_prefix(url).tolist() == list(range(last + 6))
