"""The per-step capture on the path an accelerator's work takes: queued where the values live,
waited for once per part, never by the training thread once per step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import zarrec
from zarrec.record.device_queue import OnAWorkerThread


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(11, 4), torch.nn.Linear(4, 3), torch.nn.Linear(3, 11))


def test_queued_work_records_the_live_tensors_bit_for_bit_while_the_loop_zeroes_gradients_in_place(tmp_path):
    """On a CPU a small model's work runs on a worker thread (a device's stream): the training
    thread copies the gradients and queues the rest. A loop that zeroes the gradients in place
    and changes the parameters right after step() still records what the step had."""
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    live = []
    with zarrec.ModelRecorder(tmp_path / "run.zarr", model, optimizer, params=["*"]) as recorder:
        assert isinstance(recorder.health.queue, OnAWorkerThread)
        for step in range(1, 9):
            tokens = torch.randint(0, 11, (5,))
            loss = model(tokens).logsumexp(-1).mean()
            loss.backward()
            recorder.before_clipping()
            before = [p.grad.clone() for p in model.parameters()]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
            used = [p.grad.clone() for p in model.parameters()]
            optimizer.step()
            recorder.step(loss=loss)
            state = {name: p.detach().clone() for name, p in model.named_parameters()}
            moments = {name: optimizer.state[p]["exp_avg"].clone() for name, p in model.named_parameters()}
            optimizer.zero_grad(set_to_none=False)  # in place, while the queued work may be reading
            live.append((state, moments, used, before, loss.detach().clone()))
    ds = xr.open_zarr(tmp_path / "run.zarr").load()
    statistics = xr.open_zarr(tmp_path / "run.zarr" / "statistics").load()
    names = [name for name, _ in model.named_parameters()]
    for row, (state, moments, used, before, loss) in enumerate(live, start=1):
        for name, grad in zip(names, used):
            np.testing.assert_array_equal(ds[name][row], state[name].numpy(), err_msg=f"{name} at step {row}")
            np.testing.assert_array_equal(ds[f"{name}.exp_avg"][row], moments[name].numpy())
            np.testing.assert_array_equal(ds[f"{name}.grad"][row], grad.numpy())
            assert float(statistics.grad_norm.sel(param=name)[row]) == pytest.approx(float(grad.norm()), rel=1e-6)
        assert float(ds.loss[row]) == float(loss)
        assert float(ds.grad_norm_before_clipping[row]) == pytest.approx(float(torch.cat([g.flatten() for g in before]).norm()), rel=1e-6)
        assert float(ds.grad_norm[row]) == pytest.approx(0.01, rel=1e-4)  # (clipped)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (runs where a GPU is lent)")
@pytest.mark.parametrize("options", [{}, {"params": ["*"]}, {"params": [], "every": 1000}], ids=["default", "every_parameter", "recipe"])
def test_the_whole_per_step_capture_never_synchronises_with_cuda(tmp_path, options):
    """The default, every parameter and the large-model recipe (the statistics, no full state),
    under torch.cuda.set_sync_debug_mode("error"): any synchronisation in a per-step path raises."""
    model = _model().cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    tokens = torch.randint(0, 11, (6, 5), device="cuda")
    with zarrec.ModelRecorder(tmp_path / "run.zarr", model, optimizer, chunk_steps=4, **options) as recorder:
        for step in range(6):  # (the first step creates the store's arrays: its setup may synchronise)
            if step == 1:
                torch.cuda.set_sync_debug_mode("error")
            try:
                loss = model(tokens[step]).logsumexp(-1).mean()
                loss.backward()
                recorder.before_clipping()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
                optimizer.step()
                recorder.step(loss=loss)
                optimizer.zero_grad()
            finally:
                torch.cuda.set_sync_debug_mode("default")
    ds = xr.open_zarr(tmp_path / "run.zarr")
    assert ds.sizes["step"] == 7 and np.isfinite(ds.loss[1:].values).all()
