"""Staging within a byte budget: large steps staged and written a part at a time, bit for bit."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import torch
import xarray as xr
import zarr
from foreign_readers import tensorstore_read

from zarrec import Recorder
from zarrec.record.staging import plan_parts


def test_a_variable_larger_than_a_part_is_cut_at_its_shards_and_small_ones_share_a_part():
    variables = {
        "W": ((100, 8), torch.float32, 30),  # 3,200 bytes a step, shards of 30 rows
        "b": ((8,), torch.bfloat16, 8),
        "loss": ((), torch.float32, 1),
    }
    parts = plan_parts(variables, chunk_steps=1, part_bytes=1000)
    assert [[(p.name, p.start, p.stop) for p in part] for part in parts] == [
        [("W", 0, 30)], [("W", 30, 60)], [("W", 60, 90)], [("W", 90, 100), ("b", 0, None), ("loss", 0, None)],
    ]
    whole = plan_parts({**variables, "W": ((100, 8), torch.float32, 100)}, chunk_steps=4, part_bytes=10**6)
    assert [[p.name for p in part] for part in whole] == [["W", "b", "loss"]]


def large_steps(n: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "W": torch.randn(1000, 16, generator=generator),  # 64 KB a step
            "W.grad": torch.randn(1000, 16, generator=generator).to(torch.bfloat16),
            "logits": torch.randn(50, generator=generator),
            "loss": torch.rand((), generator=generator),
        }
        for _ in range(n)
    ]


def test_steps_larger_than_the_budget_are_written_a_part_at_a_time_bit_for_bit(tmp_path):
    steps = large_steps(6)
    path = tmp_path / "r.zarr"
    with Recorder(path, staging_bytes=3 * 20_000) as recorder:
        for t, values in enumerate(steps[:4]):
            recorder.record(t, **values) if t != 2 else recorder.record(t, loss=values["loss"])
        assert recorder.staging_bytes <= 3 * 20_000
    with Recorder(path, resume_from=2, staging_bytes=3 * 20_000) as recorder:  # the store's shards decide the parts
        for t in (3, 4, 5):
            recorder.record(t, **steps[t])
    shards = zarr.open_group(path, mode="r")["W"].shards
    assert shards[1] < 1000  # the rows are split into shards that a part holds
    ds = xr.open_zarr(path)
    np.testing.assert_array_equal(ds.step, np.arange(6))
    for name in ("W", "W.grad", "logits", "loss"):
        expected = np.stack([s[name].float().numpy() for s in steps])
        expected[2] = np.nan if name != "loss" else expected[2]  # step 2 passed only the loss
        np.testing.assert_array_equal(ds[name].values, expected)
        np.testing.assert_array_equal(tensorstore_read(path, name), expected)


def test_peak_memory_of_recording_stays_within_the_staging_budget(tmp_path):
    """A child process records three 96 MB variables (288 MB a step) with a 48 MiB budget; its
    peak resident memory (VmHWM) grows by the budget and the writer's part, not by steps."""
    script = textwrap.dedent(f"""
        import torch, zarrec

        def peak():
            return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024

        values = {{name: torch.arange(24_000_000, dtype=torch.float32).view(6000, 4000) for name in "abc"}}
        with zarrec.Recorder({str(tmp_path / "warm.zarr")!r}) as warm:  # the libraries' own memory, loaded
            warm.record(0, x=torch.zeros(4000))
        before = peak()
        with zarrec.Recorder({str(tmp_path / "r.zarr")!r}, staging_bytes=48 * 2**20) as recorder:
            for t in range(4):
                for v in values.values():
                    v.add_(1.0)
                recorder.record(t, **values)
            staged = recorder.staging_bytes
        print(peak() - before, staged)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True)
    grown, staged = map(int, out.stdout.split())
    print(f"peak memory grew by {grown / 2**20:.0f} MiB, staging {staged / 2**20:.0f} MiB")
    assert staged <= 48 * 2**20
    step_bytes = 3 * 96_000_000
    # Staging (at most 48 MiB), one part as the writer compresses it (16 MiB) and some slack;
    # three whole steps were staged before the budget (864 MB).
    assert grown < 48 * 2**20 + 2 * 16 * 2**20 + 48 * 2**20 < step_bytes / 2, grown
    ds = xr.open_zarr(tmp_path / "r.zarr")
    first_column = np.arange(24_000_000, dtype=np.float32)[[0, 23_996_000]]
    expected = [first_column := first_column + np.float32(1) for _ in range(4)]  # as add_ did, in float32
    np.testing.assert_array_equal(ds.a.isel(a_dim0=[0, 5999]).values[:, :, 0], expected)
