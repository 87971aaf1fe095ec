"""zarrec.restore: a fresh model and optimizer set to a recorded step continue the recorded run bit for bit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import xarray as xr

import zarrec
from zarrec import ConfigError

BATCHES = [torch.randint(0, 11, (5,), generator=torch.Generator().manual_seed(step)) for step in range(61)]


def _run(dtype: torch.dtype = torch.float32, optimizer: str = "adamw", dropout: float = 0.0):
    """The model, optimizer and scheduler of the recorded run, as made before step 1."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 4), torch.nn.Dropout(dropout), torch.nn.Linear(4, 3),
                                torch.nn.Linear(3, 11)).to(dtype)
    if optimizer == "adamw":
        made = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    else:
        made = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    return model, made, torch.optim.lr_scheduler.LambdaLR(made, lambda step: 1 - step / 100)


def _train(model, optimizer, scheduler, steps: range, recorder=None) -> None:
    for step in steps:
        loss = model(BATCHES[step]).float().logsumexp(-1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        if recorder is not None:
            recorder.step(loss=loss)
        scheduler.step()
        optimizer.zero_grad()


def _record(path, dtype=torch.float32, optimizer="adamw", steps=60, dropout=0.0, **options):
    model, made, scheduler = _run(dtype, optimizer, dropout)
    with zarrec.ModelRecorder(path, model, made, **{"params": ["*"], **options}) as recorder:
        _train(model, made, scheduler, range(1, steps + 1), recorder)
    return model, made


@pytest.mark.parametrize(("dtype", "optimizer", "dropout"),
                         [(torch.float32, "adamw", 0.0), (torch.bfloat16, "adamw", 0.0), (torch.float32, "sgd", 0.0),
                          (torch.float32, "adamw", 0.3)],
                         ids=["float32", "bfloat16", "sgd_nesterov", "dropout"])
def test_a_run_restored_at_step_30_continues_as_the_recorded_run_bit_for_bit(tmp_path, dtype, optimizer, dropout):
    """With dropout too: the store holds torch's random state after each step, which restore sets."""
    original, original_optimizer = _record(tmp_path / "run.zarr", dtype, optimizer, dropout=dropout)
    model, made, scheduler = _run(dtype, optimizer, dropout)
    torch.manual_seed(1234)  # (another random state than the run's at step 30: restore sets it)
    zarrec.restore(tmp_path / "run.zarr", 30, model, made, scheduler)
    with zarrec.ModelRecorder(tmp_path / "branch.zarr", model, made, params=["*"], initial_step=30) as recorder:
        _train(model, made, scheduler, range(31, 61), recorder)
    recorded = xr.open_zarr(tmp_path / "run.zarr").sel(step=slice(31, 60)).load()
    branch = xr.open_zarr(tmp_path / "branch.zarr").sel(step=slice(31, 60)).load()
    np.testing.assert_array_equal(branch.step, np.arange(31, 61))
    for name in recorded.data_vars:  # parameters, gradients, optimizer state, loss, lr, norms: every step
        np.testing.assert_array_equal(branch[name].values, recorded[name].values, err_msg=name)
    for (name, parameter), (_, restored) in zip(original.named_parameters(), model.named_parameters()):
        assert torch.equal(parameter, restored), name
        for key, value in original_optimizer.state[parameter].items():
            assert torch.equal(value, made.state[restored][key]), f"{key} of {name}"


def test_restoring_step_0_is_the_model_as_made_with_no_optimizer_state(tmp_path):
    _record(tmp_path / "run.zarr", steps=3)
    model, made, _ = _run()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    zarrec.restore(tmp_path / "run.zarr", 0, model, made)
    for parameter, initial in zip(model.parameters(), _run()[0].parameters()):
        assert torch.equal(parameter, initial)
    assert not made.state


def _refused(store, step, model, optimizer, scheduler=None, message=""):
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ConfigError, match=message) as refused:
        zarrec.restore(store, step, model, optimizer, scheduler)
    assert "\n" not in str(refused.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())) and not optimizer.state  # nothing changed


def test_each_store_that_lacks_what_a_restore_needs_is_refused_in_one_line(tmp_path):
    _record(tmp_path / "every.zarr", steps=12, every=5)
    _refused(tmp_path / "every.zarr", 7, *_run()[:2], message=r"did not record step 7 \(it records every=5, steps 0..10\); "
             r"restore at a recorded step such as 5 or 10")
    _record(tmp_path / "default.zarr", steps=2, params=["0.weight"])
    _refused(tmp_path / "default.zarr", 2, *_run()[:2], message=r"did not record 2.weight; a store to restore from records "
             r"every parameter and its optimizer state \(params='\*'")
    _record(tmp_path / "params_only.zarr", steps=2, quantities=["param", "grad"])
    _refused(tmp_path / "params_only.zarr", 2, *_run()[:2], message=r"did not record 'exp_avg' of 0.weight")
    _record(tmp_path / "rows.zarr", steps=2, rows={"0.weight": [1, 3]})
    _refused(tmp_path / "rows.zarr", 2, *_run()[:2], message=r"recorded 0.weight at chosen rows only \(2 of 11: rows=\)")
    _record(tmp_path / "rounded.zarr", steps=2, mantissa_bits=7)
    _refused(tmp_path / "rounded.zarr", 2, *_run()[:2], message=r"rounded 0.weight to 7 mantissa bits")
    _record(tmp_path / "run.zarr", steps=3)
    _refused(tmp_path / "run.zarr", 3, *_run(optimizer="sgd")[:2], message=r"did not record 'momentum_buffer' of 0.weight")


def test_a_model_or_optimizer_unlike_the_recorded_one_is_refused_in_one_line(tmp_path):
    _record(tmp_path / "run.zarr", steps=3)
    wider = torch.nn.Sequential(torch.nn.Embedding(11, 5), torch.nn.Dropout(0.0), torch.nn.Linear(5, 3), torch.nn.Linear(3, 11))
    _refused(tmp_path / "run.zarr", 3, wider, torch.optim.AdamW(wider.parameters()),
             message=r"0.weight has shape \[11, 5\] in the model and \[11, 4\] in .*restore into a model built as the recorded one was")
    other = torch.nn.Sequential(torch.nn.Embedding(11, 4), torch.nn.Linear(4, 11))
    _refused(tmp_path / "run.zarr", 3, other, torch.optim.AdamW(other.parameters()), message=r"recorded 2.bias, 2.weight, 3.bias ..., which the model has not")
    model, made, scheduler = _run()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # (stepped before any optimizer step, on purpose)
        scheduler.step()
    _refused(tmp_path / "run.zarr", 3, model, made, scheduler, message=r"the scheduler has taken 1 steps; pass a fresh one")
    model = _run()[0]
    _refused(tmp_path / "run.zarr", 3, model, torch.optim.ASGD(model.parameters()), message=r"ASGD keeps 'eta' per parameter, which no store records")
    normalised = torch.nn.Sequential(torch.nn.Embedding(11, 4), torch.nn.BatchNorm1d(4))
    _refused(tmp_path / "run.zarr", 3, normalised, torch.optim.AdamW(normalised.parameters()),
             message=r"buffer 1.running_mean changes in training and no store records it")
