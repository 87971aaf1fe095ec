"""A training session: variables fixed at the first step, step 0 recorded then, the schedule kept."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from zarrec import Recorder
from zarrec.schedule import StepSchedule
from zarrec.selection import ParameterSelection
from zarrec.session import TrainingSession


def test_a_plain_loop_records_step_zero_at_the_first_step_then_its_schedule(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    selection = ParameterSelection(model, optimizer, params=["weight"])
    session = TrainingSession(Recorder(tmp_path / "run.zarr"), selection, StepSchedule.parse(2))
    initial = model.weight.detach().clone()
    session.keep_initial_state()
    live = {}
    for step in range(1, 6):
        loss = model(torch.randn(4, 3)).square().mean()
        loss.backward()
        grads = selection.grads()
        optimizer.step()
        if session.wants(step):
            session.after_step(step, grads, loss=loss.detach(), lr=0.1)
        live[step] = (model.weight.detach().clone(), grads["weight"], optimizer.state[model.weight]["momentum_buffer"].clone())
        optimizer.zero_grad()
    session.close()
    ds = xr.open_zarr(tmp_path / "run.zarr").load()
    np.testing.assert_array_equal(ds.step, [0, 2, 4])
    np.testing.assert_array_equal(ds.weight[0], initial.numpy())
    assert ds["weight.grad"][0].isnull().all() and (ds["weight.momentum_buffer"][0] == 0).all()
    assert np.isnan(ds.loss[0]) and np.isnan(ds.lr[0]) and ds.loss.attrs["source_dtype"] == "float32"
    for row, step in ((1, 2), (2, 4)):
        for name, value in zip(("weight", "weight.grad", "weight.momentum_buffer"), live[step]):
            np.testing.assert_array_equal(ds[name][row], value.numpy(), err_msg=f"{name} at step {step}")
