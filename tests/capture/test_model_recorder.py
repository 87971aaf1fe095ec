"""The one per-step capture, driven by a plain loop: step 0, the schedule, the gradient norms, the loss."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import full_state_only

import zarrec
from zarrec import ConfigError
from zarrec.record.device_queue import OnAWorkerThread
from zarrec.store import contract


def test_a_plain_loop_records_step_zero_its_schedule_and_the_gradient_norms(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    initial = model[0].weight.detach().clone()
    live = {}
    with zarrec.ModelRecorder(tmp_path / "run.zarr", model, optimizer, params=["0.weight"], every=2) as recorder:
        for step in range(1, 6):
            loss = model(torch.randn(4, 3)).square().mean() * 100
            loss.backward()
            recorder.before_clipping()
            before = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # returns the norm before clipping
            grad = model[0].weight.grad.clone()
            optimizer.step()
            recorder.step(loss=loss.detach())
            momentum = optimizer.state[model[0].weight]["momentum_buffer"].clone()
            live[step] = (model[0].weight.detach().clone(), grad, momentum, loss.item(), before.item())
            optimizer.zero_grad()
    ds = xr.open_zarr(tmp_path / "run.zarr").load()
    np.testing.assert_array_equal(ds.step, [0, 2, 4])
    np.testing.assert_array_equal(ds["0.weight"][0], initial.numpy())
    assert ds["0.weight.grad"][0].isnull().all() and (ds["0.weight.momentum_buffer"][0] == 0).all()
    assert np.isnan(ds.loss[0]) and np.isnan(ds.grad_norm[0]) and ds.loss.attrs["source_dtype"] == "float32"
    assert ds["0.weight"].dims == ds["0.weight.grad"].dims  # one naming scheme: shared dims
    for row, step in ((1, 2), (2, 4)):
        weight, grad, momentum, loss, before = live[step]
        for name, value in (("0.weight", weight), ("0.weight.grad", grad), ("0.weight.momentum_buffer", momentum)):
            np.testing.assert_array_equal(ds[name][row], value.numpy(), err_msg=f"{name} at step {step}")
        assert float(ds.loss[row]) == np.float32(loss) and float(ds.lr[row]) == np.float32(0.1)
        assert float(ds.grad_norm_before_clipping[row]) == pytest.approx(before, rel=1e-6)
        assert before > 1 and float(ds.grad_norm[row]) == pytest.approx(1.0, rel=1e-5)  # clipped to 1
    assert ds.loss.attrs["description"] == "training loss of step t's batch, as the model computed it"
    assert ds["0.weight"].attrs["optimizer"] == "SGD" and ds["0.weight"].attrs["optimizer_hyperparameters"]["momentum"] == 0.9
    buffers = ds["0.weight.momentum_buffer"].values[1:]
    np.testing.assert_allclose(ds.zarrec.intended_update("0.weight").total, -0.1 * buffers, rtol=1e-6)
    # every other step has the full state, every step the health statistics: the realized fraction is there
    np.testing.assert_allclose(ds.zarrec.realized_fraction("0.weight").overall, np.ones(5), rtol=1e-5)
    np.testing.assert_array_equal(ds.zarrec.by_parameter().param, ["0.weight", "0.bias", "1.weight", "1.bias"])
    without_statistics = ds.copy()
    without_statistics.encoding = {}  # not opened from the store: only its full state is at hand
    with pytest.raises(ConfigError, match=r"full state at steps 0, 2, 4, no two consecutive; read the health statistics"):
        without_statistics.zarrec.realized_fraction("0.weight")


def test_a_loop_without_before_clipping_records_nan_for_it_and_values_as_given(tmp_path):
    model = torch.nn.Embedding(5, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    with zarrec.ModelRecorder(tmp_path / "run.zarr", model, optimizer, params=["weight"]) as recorder:
        for _ in range(3):
            model(torch.tensor([1, 2])).sum().backward()
            optimizer.step()
            recorder.step(loss=2.5, temperature=torch.tensor(0.7))
            optimizer.zero_grad()
    ds = xr.open_zarr(tmp_path / "run.zarr")
    assert ds.grad_norm_before_clipping.isnull().all() and ds.grad_norm[1:].notnull().all()
    np.testing.assert_array_equal(ds.loss[1:], 2.5)
    np.testing.assert_allclose(ds.temperature[1:], 0.7)
    assert ds["weight"].dims == ("step", "weight_row", "weight_col") == ds["weight.exp_avg"].dims


def test_the_norm_clipping_returned_handed_to_step_is_the_norm_before_clipping(tmp_path):
    """The README's loop: no before_clipping() (no copy of the gradients for it); the norm
    clip_grad_norm_ returned is recorded bit for bit, beside the norm after clipping."""
    model = _small_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    returned = []
    with zarrec.ModelRecorder(tmp_path / "run.zarr", model, optimizer, params=["0.weight"]) as recorder:
        for _ in range(4):
            model(torch.randint(0, 11, (5,))).logsumexp(-1).mean().backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
            optimizer.step()
            recorder.step(loss=torch.tensor(1.0), grad_norm_before_clipping=norm)
            returned.append(float(norm))
            optimizer.zero_grad()
    ds = xr.open_zarr(tmp_path / "run.zarr")
    np.testing.assert_array_equal(ds.grad_norm_before_clipping[1:], np.float32(returned))
    assert min(returned) > 0.01 and np.allclose(ds.grad_norm[1:], 0.01, rtol=1e-4)


def test_a_model_without_an_input_embedding_names_what_to_record(tmp_path):
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ConfigError, match=r"Linear has no input embedding .* choose parameters by name with params"):
        zarrec.ModelRecorder(tmp_path / "run.zarr", model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_the_cost_line_at_the_first_recorded_step_projects_the_store(tmp_path, caplog):
    """One line, logged once: the projected recorded steps and shard files are what the run then writes."""
    model = torch.nn.Sequential(torch.nn.Linear(300, 256), torch.nn.Linear(256, 3))  # 0.weight: 300 KB a step
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    with caplog.at_level(logging.INFO, logger="zarrec"):
        with zarrec.ModelRecorder(tmp_path / "run.zarr", model, optimizer, params=["*.weight"], every="1:4,3", steps=20,
                                  chunk_steps=2) as recorder:
            for _ in range(20):
                model(torch.randn(2, 300)).sum().backward()
                optimizer.step()
                recorder.step(loss=1.0)
                optimizer.zero_grad()
    (line,) = [record.message for record in caplog.records if record.name == "zarrec"]
    ds = xr.open_zarr(tmp_path / "run.zarr")
    shard_files = sum(1 for name in ds.variables for f in (tmp_path / "run.zarr" / str(name) / "c").rglob("*")
                      if f.is_file() and contract.along_step(ds[name].dims))
    assert line.startswith("zarrec: 12 variables, ") and "2 steps a chunk" in line  # 2 × (W, grad, 2 moments), 4 scalars
    assert f"; {ds.step.size} recorded steps: " in line and f", {shard_files} shard files" in line
    assert ds.step.size == 10 and shard_files > 9  # the big arrays: a shard a chunk; the small ones: one


class TinyLanguageModel(torch.nn.Module):
    def __init__(self, vocab: int = 16, width: int = 4) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.head = torch.nn.Linear(width, vocab)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.embed

    def forward(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.head(self.embed(ids[:, :-1]))
        return {"loss": torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()), "logits": logits}


def test_rows_record_the_chosen_rows_of_the_live_tensors_and_label_them(tmp_path):
    torch.manual_seed(0)
    model = TinyLanguageModel()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    live_mask = np.arange(16) % 2 == 1
    chosen = [11, 3, 7, 3]  # any order, repeats: recorded sorted, once
    live = {}
    with zarrec.ModelRecorder(
        tmp_path / "run.zarr", model, optimizer, params=["embed.weight", "head.weight"],
        rows={"embed.weight": chosen, "head.weight": slice(2, 5)}, coords={"live": ("token", live_mask)},
    ) as recorder:
        for step in range(1, 4):
            output = model(torch.randint(0, 16, (2, 6)))
            recorder.add_output(output)
            output["loss"].backward()
            grads = {name: p.grad.clone() for name, p in model.named_parameters()}
            optimizer.step()
            recorder.step()
            state = {name: {k: v.clone() for k, v in optimizer.state[p].items()} for name, p in model.named_parameters()}
            live[step] = ({n: p.detach().clone() for n, p in model.named_parameters()}, grads, state,
                          output["logits"].detach()[0, -1].clone())
            optimizer.zero_grad()
    ds = xr.open_zarr(tmp_path / "run.zarr")
    np.testing.assert_array_equal(ds.token, [3, 7, 11])
    np.testing.assert_array_equal(ds.live, live_mask[[3, 7, 11]])
    np.testing.assert_array_equal(ds.head_weight_row, [2, 3, 4])
    assert ds.attrs[contract.ROWS_ATTR] == {"token": 16, "head_weight_row": 16}
    for step in (1, 2, 3):
        params, grads, state, logits = live[step]
        row = ds.sel(step=step)
        for name, rows in (("embed.weight", [3, 7, 11]), ("head.weight", [2, 3, 4])):
            stored = "embeddings" if name == "embed.weight" else name
            np.testing.assert_array_equal(row[stored].values, params[name][rows].numpy())
            grad = "grads" if name == "embed.weight" else f"{name}.grad"
            np.testing.assert_array_equal(row[grad].values, grads[name][rows].numpy())
            moment = "momentum" if name == "embed.weight" else f"{name}.exp_avg"
            np.testing.assert_array_equal(row[moment].values, state[name]["exp_avg"][rows].numpy())
        np.testing.assert_array_equal(row.embeddings.sel(token=7).values, params["embed.weight"][7].numpy())
        np.testing.assert_array_equal(row.logits.values, logits[[3, 7, 11]].numpy())
    assert float(ds.zarrec.update_residual().max()) < 1e-6 * float(abs(ds.embeddings).max())  # the identity holds row by row
    with pytest.raises(ConfigError, match="3 of 16 tokens"):
        ds.zarrec.logit_stats()


@pytest.mark.parametrize(("rows", "message"), [
    ([16], "row ids in 0..15"), ([], "non-empty"), ({"nothing.*": [1]}, "names no recorded parameter"),
])
def test_rows_that_do_not_fit_are_refused_with_the_fix(tmp_path, rows, message):
    model = TinyLanguageModel()
    with pytest.raises(ConfigError, match=message):
        zarrec.ModelRecorder(tmp_path / "run.zarr", model, torch.optim.AdamW(model.parameters()), rows=rows)


def train_tiny(path, steps: int = 6, **options) -> None:
    torch.manual_seed(0)
    model = TinyLanguageModel()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    with zarrec.ModelRecorder(path, model, optimizer, params=["embed.weight", "head.*"], **options) as recorder:
        for _ in range(steps):
            output = model(torch.randint(0, 16, (2, 6)))
            recorder.add_output(output)
            output["loss"].backward()
            optimizer.step()
            recorder.step()
            optimizer.zero_grad()


def assert_statistics_agree(recorded: xr.Dataset, computed: xr.Dataset) -> None:
    """Statistics and full-state formulas agree to float32 rounding (the residual, a difference
    of nearly equal updates, to 1e-5 of the intended update's norm)."""
    assert set(recorded.data_vars) == set(computed.data_vars) == set(contract.HEALTH_STATISTICS)
    for name in recorded.data_vars:
        if name == "momentum_norm":  # (the full state's step 0 holds Adam's zeros; the statistics start at step 1)
            xr.testing.assert_allclose(recorded[name][1:], computed[name][1:], rtol=1e-5, atol=1e-7)
        elif name == "residual_norm":
            assert float(abs(recorded[name] - computed[name]).max()) <= 1e-5 * float(computed.intended_norm.max())
        else:
            xr.testing.assert_allclose(recorded[name], computed[name], rtol=1e-5, atol=1e-7)


def test_row_statistics_of_every_step_equal_their_formula_on_the_full_state(tmp_path):
    train_tiny(tmp_path / "run.zarr")
    ds = xr.open_zarr(tmp_path / "run.zarr")
    statistics = xr.open_zarr(tmp_path / "run.zarr" / "statistics")
    np.testing.assert_array_equal(statistics.step, np.arange(7))
    assert statistics["embed.weight.param_norm"].dims == ("step", "token")
    assert "head.bias.param_norm" not in statistics  # a vector's rows are its entries: per parameter only
    for param in ("embed.weight", "head.weight"):
        recorded, computed = ds.zarrec.row_statistics(param), full_state_only(ds).zarrec.row_statistics(param)
        assert recorded.param_norm.dims == computed.param_norm.dims
        assert all(recorded[name].notnull().sum() > 0 for name in recorded.data_vars)
        assert_statistics_agree(recorded, computed)


def test_row_statistics_every_step_while_the_full_state_follows_every(tmp_path):
    train_tiny(tmp_path / "run.zarr", every=3, rows=[1, 4, 9])
    ds = xr.open_zarr(tmp_path / "run.zarr")
    np.testing.assert_array_equal(ds.step, [0, 3, 6])
    recorded = ds.zarrec.row_statistics()  # the input embedding's, from the statistics group
    np.testing.assert_array_equal(recorded.step, np.arange(7))
    np.testing.assert_array_equal(recorded.token, [1, 4, 9])
    computed = full_state_only(ds).zarrec.row_statistics()
    assert computed.update_norm.isnull().all()  # the full state has no consecutive steps
    for name in ("param_norm", "grad_norm", "cos_grad_momentum"):
        xr.testing.assert_allclose(recorded[name].sel(step=[3, 6]), computed[name].sel(step=[3, 6]), rtol=1e-5, atol=1e-7)
    assert recorded.update_norm.sel(step=slice(1, None)).notnull().all()


def test_resuming_a_run_recorded_without_statistics_starts_them_where_it_resumes(tmp_path):
    model = TinyLanguageModel()
    optimizer = torch.optim.AdamW(model.parameters())

    def one_step(recorder):
        model(torch.randint(0, 16, (2, 6)))["loss"].backward()
        optimizer.step()
        recorder.step()
        optimizer.zero_grad()

    with zarrec.ModelRecorder(tmp_path / "run.zarr", model, optimizer, statistics=False) as recorder:
        one_step(recorder)
    with zarrec.ModelRecorder(tmp_path / "run.zarr", model, optimizer, resume_from=1) as recorder:
        one_step(recorder)
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "run.zarr").step, [0, 1, 2])
    statistics = xr.open_zarr(tmp_path / "run.zarr" / "statistics")
    np.testing.assert_array_equal(statistics.step, [2])
    assert statistics.update_norm.notnull().all()  # W[1], copied when the recorder was made, is W[t − 1]


def sgd_loop(out, steps: range, lr: float = 1e-3, **options) -> torch.nn.Module:
    """A plain loop over ``steps`` (the optimizer steps it takes), recording each; the model."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    with zarrec.ModelRecorder(out, model, optimizer, params=["weight"], **options) as recorder:
        for _ in steps:
            model(torch.randn(4, 3)).square().mean().backward()
            optimizer.step()
            recorder.step()
            optimizer.zero_grad()
    return model


def test_a_plain_loop_resumed_from_a_step_continues_after_it(tmp_path):
    out = tmp_path / "run.zarr"
    sgd_loop(out, range(1, 11))
    sgd_loop(out, range(6, 11), resume_from=5)  # no initial_step: it follows resume_from
    ds = xr.open_zarr(out)
    np.testing.assert_array_equal(ds.step, np.arange(11))
    assert ds.attrs["zarrec_status"]["state"] == "complete"
    with pytest.raises(ConfigError, match="resume_from=5 but initial_step=0"):
        zarrec.ModelRecorder(out, torch.nn.Linear(3, 2), torch.optim.SGD(torch.nn.Linear(3, 2).parameters()),
                             resume_from=5, initial_step=0)


def test_a_plain_loop_resumed_with_another_learning_rate_is_refused_and_changes_nothing(tmp_path):
    out = tmp_path / "run.zarr"
    sgd_loop(out, range(1, 11))
    before = xr.open_zarr(out).load()
    with pytest.raises(ConfigError) as refused:
        sgd_loop(out, range(6, 11), lr=2e-3, resume_from=5)
    assert "optimizer_param_groups.0.lr: recorded 0.001, now 0.002" in str(refused.value)
    xr.testing.assert_identical(xr.open_zarr(out).load(), before)


# The per-step capture on the path an accelerator's work takes: queued where the values live,
# waited for once per part, never by the training thread once per step.

def _small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(11, 4), torch.nn.Linear(4, 3), torch.nn.Linear(3, 11))


def test_queued_work_records_the_live_tensors_bit_for_bit_while_the_loop_zeroes_gradients_in_place(tmp_path):
    """On a CPU a small model's work runs on a worker thread (a device's stream): the training
    thread copies the gradients and queues the rest. A loop that zeroes the gradients in place
    and changes the parameters right after step() still records what the step had."""
    model = _small_model()
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
def test_the_whole_per_step_capture_never_synchronises_with_cuda_and_records_the_live_tensors(tmp_path, options):
    """The default, every parameter and the large-model recipe (the statistics, no full state),
    under torch.cuda.set_sync_debug_mode("error"): any synchronisation in a per-step path raises.
    The pinned, non-blocking staging then holds the live parameters bit for bit."""
    model = _small_model().cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    tokens = torch.randint(0, 11, (6, 5), device="cuda")
    live = []
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
                live.append({name: p.detach().clone() for name, p in model.named_parameters()})
                optimizer.zero_grad()
            finally:
                torch.cuda.set_sync_debug_mode("default")
    ds = xr.open_zarr(tmp_path / "run.zarr").load()
    statistics = xr.open_zarr(tmp_path / "run.zarr" / "statistics").load()
    assert ds.sizes["step"] == (2 if "every" in options else 7)  # (every=1000: step 0 and the first)
    for row, values in enumerate(live, start=1):
        for name, value in values.items():
            assert float(statistics.param_norm.sel(param=name)[row]) == pytest.approx(float(value.float().norm()), rel=1e-6)
        for variable in ds.data_vars:
            if ds[variable].attrs.get("quantity") == "param" and row in ds.step:
                np.testing.assert_array_equal(ds[variable].sel(step=row), values[ds[variable].attrs["param"]].cpu().numpy())
