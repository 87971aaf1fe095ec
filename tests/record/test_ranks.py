"""Sharded (FSDP2) recording: every rank writes its own rows; layouts zarrec cannot record are refused.

The runs are real: torchrun starts 2 CPU processes (gloo) of ``sharded_loop.py``, a plain loop
over a model wrapped with ``fully_shard``; the refusals use a one-process gloo group.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import xarray as xr
import zarr
from conftest import check_health
from foreign_readers import tensorstore_read

import zarrec
from zarrec.errors import ConfigError, RecordError
from zarrec.record.ranks import norms_over_ranks
from zarrec.store import contract

LOOP = Path(__file__).with_name("sharded_loop.py")
STEPS = 12


def run_loop(out: Path, *args: str, ranks: int = 2, check: bool = True) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--standalone"] if ranks else [sys.executable]
    result = subprocess.run([*launch, str(LOOP), str(out), "--steps", str(STEPS), *args],
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sharded") / "two_ranks.zarr"
    run_loop(out)
    return out


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    """The same loop in one process, whose batch is both ranks' batches."""
    out = tmp_path_factory.mktemp("single") / "one.zarr"
    run_loop(out, ranks=0)
    return out


def test_two_fsdp2_ranks_record_the_store_of_one_process_with_their_batch(sharded_run, single_run):
    """Every rank records parameters, gradients and AdamW moments of its own rows (65 and 64 of
    129), no rank writes another's shard, and the store is that of one process whose batch is
    both ranks' batches: bitwise at step 0, then within 1e-5 of each variable's largest value
    (FSDP2 averages the ranks' gradients in another order than one process sums them)."""
    two, one = xr.open_zarr(sharded_run).load(), xr.open_zarr(single_run).load()
    assert two.attrs["zarrec_status"]["state"] == "complete"
    np.testing.assert_array_equal(two.step, np.arange(STEPS + 1))
    # (one process's store of every parameter holds its random state too, for zarrec.restore: not the ranks')
    assert set(two.data_vars) == set(one.data_vars) - {"random_state"}
    tensors = [name for name in two.data_vars if two[name].ndim > 1]
    assert {"embeddings", "grads", "momentum", "variance", "1.weight", "1.weight.grad", "1.bias.exp_avg_sq"} <= set(tensors)
    for name in tensors:
        assert two[name].sizes[two[name].dims[1]] == 129, name
        assert zarr.open_array(sharded_run / name, mode="r").shards[1] == 65, name  # a shard per rank's rows
        np.testing.assert_array_equal(two[name][0], one[name][0], err_msg=name)
        recorded = two[name][1:].values
        assert np.isfinite(recorded).all(), name  # both ranks' rows at every step
        scale = np.abs(one[name][1:].values).max()
        assert np.abs(recorded - one[name][1:].values).max() <= 1e-5 * scale, name
        np.testing.assert_array_equal(tensorstore_read(sharded_run, name), two[name].values, err_msg=name)
    np.testing.assert_array_equal(two.lr, one.lr)
    assert np.isfinite(two.loss[1:]).all()  # rank 0's share of the batch, as under DDP
    for name in ("grad_norm", "grad_norm_before_clipping"):  # summed over the ranks once a chunk
        np.testing.assert_allclose(two[name][1:], one[name][1:], rtol=1e-5, err_msg=name)
    assert (two.grad_norm_before_clipping[1:] > 0.5).any() and (two.grad_norm[1:] <= 0.5 * (1 + 1e-5)).all()


def test_two_fsdp2_ranks_record_the_health_statistics_of_one_process(sharded_run, single_run):
    """Each rank reduces its own rows (65 and 64 of 129): its rows' statistics are its part of
    the row dim, and its sums of each parameter ride the chunk's all-reduce. The statistics are
    one process's (to the 1e-5 the gradients differ by), and their formulas on the full state."""
    two, one = xr.open_zarr(sharded_run / "statistics").load(), xr.open_zarr(single_run / "statistics").load()
    assert two.attrs["zarrec_status"]["state"] == "complete"
    assert set(two.data_vars) == set(one.data_vars) >= {f"{p}.{s}" for p in ("0.weight", "1.weight")
                                                         for s in contract.HEALTH_STATISTICS}
    assert list(two.param.values) == ["0.weight", "1.weight", "1.bias"]
    for name in two.data_vars:
        assert two[name].dims == one[name].dims, name
        np.testing.assert_array_equal(np.isnan(two[name]), np.isnan(one[name]), err_msg=name)
        assert np.isfinite(two[name][1:].values).any(), name
        # (the residual is float32 rounding of the update, differences of equal terms: to the intended update's norm)
        scale = np.nanmax(np.abs(one[name.replace("residual_norm", "intended_norm")].values))
        np.testing.assert_array_less(np.nan_to_num(np.abs(two[name] - one[name]).values), 1e-4 * scale + 1e-12, err_msg=name)
    for param in ("0.weight", "1.weight"):
        check_health(sharded_run, param)
    check_health(sharded_run, "1.bias", per_row=False)


def test_chosen_rows_of_a_sharded_embedding_are_recorded_by_the_ranks_that_hold_them(tmp_path):
    """rows= of an embedding sharded 65/64: rank 0 records the 3 chosen rows among its own, rank 1
    the other 2, in shards no two ranks write, with their per-row statistics; the store is that of
    one process recording the same rows (to the 1e-5 the gradients differ by)."""
    rows = "1,2,64,70,128"
    two, one = tmp_path / "two.zarr", tmp_path / "one.zarr"
    run_loop(two, "--rows", rows)
    run_loop(one, "--rows", rows, ranks=0)
    for group in ("", "statistics"):
        sharded, single = xr.open_zarr(two / group).load(), xr.open_zarr(one / group).load()
        assert sharded.attrs["zarrec_status"]["state"] == "complete"
        assert set(sharded.data_vars) == set(single.data_vars)
        np.testing.assert_array_equal(sharded.token, [1, 2, 64, 70, 128])
        for name in set(sharded.data_vars) - {"loss", "logits"}:  # (those are rank 0's share of the batch)
            assert sharded[name].dims == single[name].dims, name
            np.testing.assert_array_equal(np.isnan(sharded[name]), np.isnan(single[name]), err_msg=name)
            scale = np.nanmax(np.abs(single[name.replace("residual_norm", "intended_norm")].values))
            np.testing.assert_array_less(np.nan_to_num(np.abs(sharded[name] - single[name]).values), 1e-4 * scale + 1e-12,
                                         err_msg=name)
    recorded = ["embeddings", "grads", "momentum", "variance", "0.weight.param_norm"]
    for name in recorded:
        where = two / ("statistics" if name.startswith("0.") else "") / name
        assert zarr.open_array(where, mode="r").shards[1] == 3, name  # the gcd of the ranks' 3 and 2 rows
    assert xr.open_zarr(two / "statistics")["0.weight.param_norm"].dims == ("step", "token")


def test_a_rank_whose_rows_exceed_its_staging_budget_writes_them_a_shard_at_a_time(sharded_run, tmp_path):
    """With staging for 31 embedding rows a part, each rank's 65 (or 64) rows go in shards of 13, a
    divisor of 65, so no shard spans two ranks; the store is the one written a rank's rows at once."""
    out = tmp_path / "parts.zarr"
    run_loop(out, "--chunk-steps", "1", "--staging-bytes", str(3 * 2048))
    parts, whole = xr.open_zarr(out).load(), xr.open_zarr(sharded_run).load()
    assert zarr.open_array(out / "embeddings", mode="r").shards[1:] == (13, 16)
    xr.testing.assert_identical(parts.drop_attrs(), whole.drop_attrs())


def test_two_ranks_record_into_one_s3_store(sharded_run, s3_bucket):
    """Every rank writes its shards straight to S3 (the loopback server); no lock, no shared disk."""
    url = f"{s3_bucket}/two_ranks.zarr"
    run_loop(url)
    remote, local = xr.open_zarr(url).load(), xr.open_zarr(sharded_run).load()
    assert remote.attrs["zarrec_status"]["state"] == "complete"
    xr.testing.assert_identical(remote.drop_attrs(), local.drop_attrs())


@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_killed_leaves_a_contiguous_prefix_and_a_resume_continues_it_bitwise(sharded_run, tmp_path, rank):
    """kill -9 of a rank mid-run (rank 0 commits, rank 1 only writes its rows): the store holds a
    contiguous prefix of complete steps; resumed from the last checkpoint it has recorded, the
    store equals the uninterrupted run's, bit for bit."""
    out, checkpoints = tmp_path / "killed.zarr", tmp_path / "checkpoints"
    killed = run_loop(out, "--checkpoints", str(checkpoints), "--die-at", "7", "--die-rank", str(rank), check=False)
    assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stderr
    prefix = xr.open_zarr(out).load()
    committed = prefix.sizes["step"]
    assert 4 <= committed <= 8  # whole chunks of 4 steps, none after the kill
    np.testing.assert_array_equal(prefix.step, np.arange(committed))
    assert np.isfinite(prefix.embeddings).all() and np.isfinite(prefix["1.weight.grad"][1:]).all()
    assert prefix.attrs["zarrec_status"]["state"] != "complete"

    run_loop(out, "--checkpoints", str(checkpoints), "--resume")
    resumed, uninterrupted = xr.open_zarr(out).load(), xr.open_zarr(sharded_run).load()
    assert resumed.attrs["zarrec_status"]["state"] == "complete" and len(resumed.attrs["zarrec_resumed_after"]) == 1
    xr.testing.assert_identical(resumed.drop_attrs(), uninterrupted.drop_attrs())


def test_an_exception_on_one_rank_ends_every_rank_with_the_committed_steps(tmp_path):
    """Rank 1 raises mid-chunk while rank 0 trains on: no rank waits forever for the others to
    agree on a partial chunk; the store keeps the committed steps and says why it stopped."""
    out = tmp_path / "failed.zarr"
    failed = run_loop(out, "--raise-at", "6", check=False)
    assert failed.returncode != 0 and "rank 1 fails after step 6" in failed.stderr
    store = xr.open_zarr(out).load()
    np.testing.assert_array_equal(store.step, np.arange(4))  # the chunk of steps 0..3; 4..6 were not all agreed on
    assert np.isfinite(store.embeddings).all()
    assert store.attrs["zarrec_status"]["state"] == "interrupted"


def test_resuming_on_another_number_of_ranks_is_refused(tmp_path):
    """A store recorded by one process has shards of all 129 rows; two ranks cannot each write
    their rows of them, so resuming it sharded is refused, naming the number of ranks, and the
    recorded steps stay."""
    out, checkpoints = tmp_path / "one.zarr", tmp_path / "checkpoints"
    run_loop(out, "--checkpoints", str(checkpoints), "--steps", "8", ranks=0)  # then resumed to STEPS
    recorded = xr.open_zarr(out).load()
    refused = run_loop(out, "--checkpoints", str(checkpoints), "--resume", check=False)
    assert refused.returncode != 0
    assert "which do not split it where this run's 2 ranks do (at rows (65,)): resume it on as many ranks as recorded it" in refused.stderr
    resumed = xr.open_zarr(out).load()
    assert resumed.sizes["step"] == 9  # rolled back to the checkpoint at step 8: nothing lost
    xr.testing.assert_identical(resumed.drop_attrs(), recorded.drop_attrs().isel(step=slice(0, resumed.sizes["step"])))


def test_the_lightning_callback_records_fsdp2_ranks_like_one_process(tmp_path):
    """ModelParallelStrategy (FSDP2) on 2 CPU processes, started by Lightning: the callback records
    on every rank, and the store is that of one process whose batch is both ranks' batches."""
    script = Path(__file__).with_name("sharded_lightning.py")
    for devices in (2, 1):
        result = subprocess.run([sys.executable, str(script), str(tmp_path / f"{devices}.zarr"), "--devices", str(devices)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    two, one = xr.open_zarr(tmp_path / "2.zarr").load(), xr.open_zarr(tmp_path / "1.zarr").load()
    assert two.attrs["world_size"] == 2 and two.attrs["zarrec_status"]["state"] == "complete"
    np.testing.assert_array_equal(two.step, np.arange(7))
    for name in ("embeddings", "grads", "momentum", "variance"):
        assert zarr.open_array(tmp_path / "2.zarr" / name, mode="r").shards[1] == 65, name
        np.testing.assert_array_equal(two[name][0], one[name][0], err_msg=name)
        assert np.isfinite(two[name][1:]).all(), name
        scale = np.abs(one[name][1:].values).max()
        assert np.abs(two[name][1:].values - one[name][1:].values).max() <= 1e-5 * scale, name


def test_ranks_that_do_not_share_the_store_are_refused_in_one_line_each(tmp_path):
    """A rank that cannot see the store rank 0 created is told to use one store; rank 0, left
    alone, raises a RankError instead of waiting forever; the store says why it stopped."""
    script = tmp_path / "apart.py"
    script.write_text(
        "import sys, torch.distributed as dist, zarrec\n"
        "dist.init_process_group('gloo')\n"
        "rank = dist.get_rank()\n"
        "try:\n"
        "    with zarrec.Recorder(sys.argv[1] + f'/rank{rank}/run.zarr', distributed=True) as recorder:\n"
        "        recorder.record(1, loss=1.0)\n"
        "except zarrec.ZarrecError as error:\n"
        "    print(f'rank {rank}: {type(error).__name__}: {error}')\n"
    )
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                             str(script), str(tmp_path)], capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("rank ")]
    assert any(line.startswith("rank 1: ConfigError: rank 1 cannot see") and "one store" in line for line in lines), result.stdout
    assert any(line.startswith("rank 0: RankError: rank 0 lost the other ranks") for line in lines), result.stdout
    status = xr.open_zarr(tmp_path / "rank0" / "run.zarr").attrs["zarrec_status"]
    assert status["state"] == "interrupted" and "RankError" in status["reason"]


def test_two_ranks_that_forget_distributed_are_told_the_fix(tmp_path):
    """Both ranks of a torch.distributed run open one store without distributed=True: whichever
    comes second is told to pass it (or to record on rank 0 only), not that the store exists."""
    script = tmp_path / "forgot.py"
    script.write_text(
        "import sys, torch.distributed as dist, zarrec\n"
        "dist.init_process_group('gloo')\n"
        "rank = dist.get_rank()\n"
        "try:\n"
        "    with zarrec.Recorder(sys.argv[1]) as recorder:\n"
        "        dist.barrier()\n"
        "        recorder.record(1, loss=1.0)\n"
        "except zarrec.ZarrecError as error:\n"
        "    print(f'rank {rank}: {type(error).__name__}: {error}')\n"
        "    dist.barrier()\n"
    )
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                             str(script), str(tmp_path / "run.zarr")], capture_output=True, text=True, timeout=300)
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("rank ")]
    assert "ConfigError: " in line and "pass distributed=True to every rank's Recorder" in line, result.stdout


@pytest.fixture
def one_rank():
    """A one-process gloo group and its 1-D device mesh."""
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def model_and_optimizer(layer: torch.nn.Module | None = None):
    model = torch.nn.Sequential(torch.nn.Embedding(9, 4), layer or torch.nn.Linear(4, 9))
    model.get_input_embeddings = lambda: model[0]
    return model, torch.optim.AdamW(model.parameters())


def test_a_dtensor_without_distributed_is_refused(one_rank, tmp_path):
    from torch.distributed.tensor import Shard, distribute_tensor

    value = distribute_tensor(torch.ones(9, 4), one_rank, [Shard(0)])
    with zarrec.Recorder(tmp_path / "r.zarr") as recorder, pytest.raises(RecordError, match="distributed=True on every rank"):
        recorder.record(1, w=value)


def test_distributed_without_a_process_group_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="torch.distributed is not initialized"):
        zarrec.Recorder(tmp_path / "r.zarr", distributed=True)
    assert not (tmp_path / "r.zarr").exists()


def test_sums_over_ranks_without_distributed_are_refused(tmp_path):
    with pytest.raises(RecordError, match="pass distributed=True too"):
        zarrec.Recorder(tmp_path / "r.zarr", over_ranks=norms_over_ranks("grad_norm"))
    assert not (tmp_path / "r.zarr").exists()


def test_tensor_parallel_sharding_on_another_dim_is_refused(one_rank, tmp_path):
    from torch.distributed.tensor.parallel import RowwiseParallel, parallelize_module

    model, optimizer = model_and_optimizer()
    parallelize_module(model, one_rank, {"1": RowwiseParallel()})  # the weight is sharded on dim 1
    with pytest.raises(ConfigError, match="sharded on dim 1 \\(tensor parallel\\)"):
        zarrec.ModelRecorder(tmp_path / "r.zarr", model, optimizer, params=["1.weight"])
    assert not (tmp_path / "r.zarr").exists()


def test_a_two_dimensional_mesh_is_refused(one_rank, tmp_path):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model, optimizer = model_and_optimizer()
    fully_shard(model, mesh=init_device_mesh("cpu", (1, 1), mesh_dim_names=("replicate", "shard")))  # HSDP
    with pytest.raises(ConfigError, match="2-dimensional device mesh"):
        zarrec.ModelRecorder(tmp_path / "r.zarr", model, optimizer)


def test_fsdp1_flat_parameters_are_refused(one_rank, tmp_path):
    from torch.distributed.fsdp import FullyShardedDataParallel

    model, _ = model_and_optimizer()
    wrapped = FullyShardedDataParallel(model, device_id=torch.device("cpu"))
    with pytest.raises(ConfigError, match="FSDP1 .*fully_shard"):
        zarrec.ModelRecorder(tmp_path / "r.zarr", wrapped, torch.optim.AdamW(wrapped.parameters()), params=["*"])


def test_zero3_partitioned_parameters_are_refused(tmp_path):
    """DeepSpeed does not run on this machine; a ZeRO-3 parameter is what it leaves on a rank: an
    empty tensor carrying the partition's attributes (``ds_id``, ``ds_shape``)."""
    model, optimizer = model_and_optimizer()
    model[1].weight.data = torch.empty(0)
    model[1].weight.ds_id, model[1].weight.ds_shape = 1, (9, 4)
    with pytest.raises(ConfigError, match="1.weight is partitioned by DeepSpeed ZeRO-3"):
        zarrec.ModelRecorder(tmp_path / "r.zarr", model, optimizer)

