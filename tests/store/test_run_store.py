"""RunStore: refusing to clobber, the commit order of an append, coordinates; memory, Store objects and S3."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from zarrec import ConfigError, StoreExistsError, StoreLockedError
from zarrec.store import contract
from zarrec.store.location import ensure_new
from zarrec.store.run_store import RunStore
from conftest import FullDisk
from foreign_readers import tensorstore_read, tensorstore_view, zarr_unconsolidated_view


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


def test_every_reader_sees_exactly_the_committed_rows(tmp_path):
    """No rows reserved ahead: each array's own zarr.json, its consolidated copy and tensorstore agree."""
    path = tmp_path / "run.zarr"
    store = RunStore.create(path)
    store.create_variable("x", (2,), ("dim",), 4, {}, contract.default_compressor())
    store.link_coordinates(["x"])
    store.append(np.array([0, 1, 2]), {"x": np.ones((3, 2), np.float32)})
    store.append(np.array([5]), {"x": np.zeros((1, 2), np.float32)})  # completes the first shard
    store.append(np.array([6]), {"x": np.full((1, 2), 6, np.float32)})  # the first row of the second
    expected = np.array([[1, 1]] * 3 + [[0, 0], [6, 6]], np.float32)
    ds = xr.open_zarr(path)
    assert ds.step.values.tolist() == [0, 1, 2, 5, 6]
    np.testing.assert_array_equal(ds.x.values, expected)
    for view in (zarr_unconsolidated_view(path), tensorstore_view(path, ["step", "x"])):
        assert view["step"].tolist() == [0, 1, 2, 5, 6]
        np.testing.assert_array_equal(view["x"], expected)
    store.finish()


def test_arrays_are_sharded_along_step_with_inner_chunks_along_rows(tmp_path):
    store = RunStore.create(tmp_path / "run.zarr")
    store.create_variable("w", (5000, 16), ("token", "dim"), 512, {}, contract.default_compressor())
    store.create_variable("loss", (), (), 512, {}, contract.default_compressor())
    w = zarr.open_array(tmp_path / "run.zarr" / "w")
    assert w.chunks == (512, 32, 16)  # 1 MiB: 512 steps × 32 rows × 64 bytes
    assert w.shards == (512, 5024, 16)  # 157 inner chunks of 32 rows: the array's edge lies inside the shard
    (sharding,) = w.metadata.to_dict()["codecs"]
    assert sharding["name"] == "sharding_indexed"
    blosc = sharding["configuration"]["codecs"][1]
    assert blosc["name"] == "blosc" and blosc["configuration"]["cname"] == "zstd"
    assert blosc["configuration"]["shuffle"] == "bitshuffle" and blosc["configuration"]["typesize"] == 4
    assert zarr.open_array(tmp_path / "run.zarr" / "loss").shards == (2**18,)  # small: 512 chunks in 1 MiB, one file
    step_array = zarr.open_array(tmp_path / "run.zarr" / "step")
    assert step_array.shards == (2**17,) and step_array.attrs["chunk_steps"] == 512
    step = step_array.metadata.to_dict()["codecs"][0]["configuration"]
    assert step["codecs"][1]["configuration"]["typesize"] == 8  # int64


@pytest.mark.parametrize(
    ("chunk_steps", "row_bytes", "expected"),
    [(512, 32768, 512), (1, 154_389_504, 1), (1, 4, 2**18), (1, 201_028, 4), (512, 512, 2048), (3, 8, 3 * 2**15)],
)
def test_small_arrays_get_shards_of_their_own_size(chunk_steps, row_bytes, expected):
    """The reference embedding and a GPT-2 one keep one shard a chunk; a loss, a step, a logits
    vector hold as many chunks as fit in 1 MiB."""
    assert contract.shard_steps(chunk_steps, row_bytes) == expected
    assert expected * row_bytes <= max(2**20, chunk_steps * row_bytes) and expected % chunk_steps == 0


@pytest.mark.parametrize(
    ("chunk_steps", "rows", "row_bytes", "expected"),
    [(512, 128, 256, 8), (1, 50257, 3072, 340), (4, 10, 8, 10), (1, 3, 2**22, 1), (2, 5000, 256, 1667)],
)
def test_inner_chunks_are_about_a_megabyte(chunk_steps, rows, row_bytes, expected):
    """The reference run (128×64, 512 steps a shard), a GPT-2 embedding (50257×768, 1 step), tiny,
    huge rows, rows split evenly (3 × 1667 rather than 3 × 2048 for 5000)."""
    assert contract.inner_chunk_rows(chunk_steps, rows, row_bytes) == expected


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


def record_then_resume(out) -> None:
    """A recording (history A: w = t) with a flush, then a resume after step 4 (history B: w = 100 + t)."""
    from zarrec import Recorder

    with Recorder(out, chunk_steps=3) as recorder:
        for step in range(8):
            recorder.record(step, w=torch.full((5, 2), float(step)))
            if step == 4:
                recorder.flush(wait=True)  # the shard of steps 3..5 is written twice, whole
    with Recorder(out, resume_from=4) as recorder:
        for step in range(5, 10):
            recorder.record(step, w=torch.full((5, 2), 100.0 + step))


def assert_complete_rows_of_one_history(steps: np.ndarray, w: np.ndarray) -> None:
    assert steps.tolist() == list(range(steps.size))
    history = 100.0 if steps.size > 8 or (steps.size > 5 and w[5, 0, 0] >= 100) else 0.0
    expected = [float(t) if t <= 4 else history + t for t in steps.tolist()]
    np.testing.assert_array_equal(w, np.broadcast_to(np.array(expected, np.float32)[:, None, None], (steps.size, 5, 2)))


def test_at_every_moment_every_reader_sees_complete_rows_of_one_history(tmp_path):
    """The store as it stands after each write of a recording, a rollback and a resumed recording
    (the writer dies there: the disk refuses every later write). tensorstore and zarr-python
    without consolidated metadata see complete rows of one history, never a reserved row or
    one of the abandoned history, and exactly xarray's rows except inside a commit's metadata writes."""
    from zarrec.errors import ZarrecError

    counting = FullDisk(tmp_path / "count.zarr", writes=10**6)
    record_then_resume(counting)
    total = counting.writes
    differing = []
    for writes in range(total + 1):
        path = tmp_path / f"crash{writes}.zarr"
        disk = FullDisk(path, writes)
        with contextlib.suppress(ZarrecError):
            record_then_resume(disk)
        if not (path / "w" / "zarr.json").exists():
            continue  # the arrays are not created yet
        ds = xr.open_zarr(path)
        if "step" not in ds:  # created, not yet consolidated: no row anywhere
            assert tensorstore_view(path, ["step", "w"])["w"].shape[0] == 0
            continue
        assert_complete_rows_of_one_history(ds.step.values, ds.w.values)
        own = tensorstore_view(path, ["step", "w"])
        assert_complete_rows_of_one_history(own["step"], own["w"][: own["step"].size])  # step is never the longer
        assert own["step"].size >= own["w"].shape[0] - 3  # they differ by at most the commit's rows
        unconsolidated = zarr_unconsolidated_view(path)
        for name in ("step", "w"):
            np.testing.assert_array_equal(unconsolidated[name], own[name])
        if own["step"].size != ds.step.size or own["w"].shape[0] != ds.step.size:
            differing.append(disk.refused)
    assert differing and all(key.endswith("zarr.json") for key in differing), differing


W_SHAPE = (512, 128)  # 256 KB a step: 4 steps fill the 1 MiB of a shard, so each chunk is a shard of its own

SLOW_WRITER = f"""
import sys, time, torch
from zarrec import Recorder
recorder = Recorder(sys.argv[1], chunk_steps=4)
for step in range(11):
    recorder.record(step, w=torch.full({W_SHAPE}, float(step)))
recorder.flush(wait=True)  # steps 0..10 committed, the last shard partly filled
print(recorder.committed_step, flush=True)
recorder.record(11, w=torch.full({W_SHAPE}, -1.0))  # staged, never committed
time.sleep(60)  # a long training step, during which it is killed
"""


def assert_every_reader_sees(path, steps: list[int]) -> None:
    """xarray, tensorstore and zarr-python without consolidated metadata see exactly ``steps``, w = step."""
    expected = np.broadcast_to(np.array(steps, np.float32)[:, None, None], (len(steps), *W_SHAPE))
    ds = xr.open_zarr(path, consolidated=False)
    for view in (
        {"step": xr.open_zarr(path).step.values, "w": xr.open_zarr(path).w.values},
        {"step": ds.step.values, "w": ds.w.values},
        tensorstore_view(path, ["step", "w"]),
        zarr_unconsolidated_view(path),
    ):
        assert view["step"].tolist() == steps
        np.testing.assert_array_equal(view["w"], expected)


def test_after_kill_9_and_after_the_resume_every_reader_sees_the_same_rows(tmp_path):
    from zarrec import Recorder

    path = tmp_path / "run.zarr"
    writer = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert int(writer.stdout.readline()) == 10
    writer.send_signal(signal.SIGKILL)
    assert writer.wait(timeout=60) == -signal.SIGKILL
    assert_every_reader_sees(path, list(range(11)))
    with Recorder(path, resume_from=7) as recorder:  # drops 8..10, rewrites the shard of 4..7 whole
        assert_every_reader_sees(path, list(range(8)))
        for step in range(8, 14):
            recorder.record(step, w=torch.full(W_SHAPE, float(step)))
    assert_every_reader_sees(path, list(range(14)))
    assert sorted(p.name for p in (path / "w" / "c").iterdir()) == ["0", "1", "2", "3"]  # 14 steps in shards of 4


def test_every_array_of_a_run_reads_the_same_in_tensorstore_but_the_string_labels(float32_run):
    """Every array of a zarrec train run, bit for bit; ``char`` (Zarr's string extension type) is
    refused by tensorstore with the message the README quotes."""
    path = float32_run.path
    group = zarr.open_group(path, mode="r", use_consolidated=False)
    names = sorted(name for name, _ in group.arrays())
    assert {"embeddings", "grads", "momentum", "variance", "logits", "loss", "lr", "step", "token", "dim"} <= set(names)
    for name in names:
        if name == "char":
            with pytest.raises(ValueError, match="string data type is not one of the supported data types"):
                tensorstore_read(path, name)
            continue
        np.testing.assert_array_equal(tensorstore_read(path, name), group[name][:], err_msg=name)
