"""The HF callback writes the store contract, with values bitwise equal to the live tensors."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import LAYER_PARAMS, check_health, record_run
from transformers import TrainerCallback

from zarrec import ConfigError, Recorder, ZarrecCallback, ZarrecWarning
from zarrec.store import contract
from zarrec.store.contract import HEALTH_STATISTICS
from zarrec.capture.resume import first_unrecorded_step
from zarrec.reference.train import make_trainer, train

SCALARS = {"grad_norm", "grad_norm_before_clipping"}  # recorded with the loss and lr at every step


@pytest.fixture(scope="module")
def ds(float32_run) -> xr.Dataset:
    return xr.open_zarr(float32_run.path)


def test_store_opens_without_warnings(float32_run):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xr.open_zarr(float32_run.path).load()


def test_store_contract(ds, float32_run):
    config = float32_run.config
    shapes = {"token": config.vocab_size, "dim": config.n_embd}
    for name in (contract.EMBEDDINGS, contract.GRADS, contract.MOMENTUM, contract.VARIANCE):
        assert ds[name].dims == ("step", "token", "dim")
        assert ds[name].dtype == np.float32
    assert ds[contract.LOGITS].dims == ("step", "token")
    assert ds[contract.LOSS].dims == ("step",)
    assert ds[contract.LR].dims == ("step",)
    assert dict(ds.sizes) == {"step": config.steps + 1, **shapes}
    assert ds.step.dtype == np.int64
    np.testing.assert_array_equal(ds.step, np.arange(config.steps + 1))
    np.testing.assert_array_equal(ds.token, np.arange(config.vocab_size))
    np.testing.assert_array_equal(ds.dim, np.arange(config.n_embd))
    assert set(ds.coords) == {"step", "token", "dim", "live", "char", "count"}
    assert ds.live.dtype == bool and ds["count"].dtype == np.int64
    assert ds.char.values[ord("a")] == "a" and ds.char.values[10] == "\\n"
    np.testing.assert_array_equal(ds.live, ds["count"] > 0)
    assert int(ds["count"].sum()) == ds.attrs["corpus_tokens"]
    for key in ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
                "batch_size", "steps", "init_sigma", "init_method", "seed", "dtype", "device", "model_config",
                "corpus_name", "corpus_sha256", "versions"):
        assert key in ds.attrs, key
    assert ds.attrs["max_grad_norm"] == 0.05 and ds.attrs["steps"] == config.steps
    assert ds.embeddings.attrs["source_dtype"] == "float32"


def test_step_zero_is_the_initial_state(ds, float32_run):
    from zarrec.reference.model import initial_embeddings

    np.testing.assert_array_equal(ds.embeddings[0], initial_embeddings(float32_run.config).numpy())
    assert (ds.momentum[0] == 0).all() and (ds.variance[0] == 0).all()
    for name in ("grads", "logits", "loss", "lr"):
        assert ds[name][0].isnull().all(), name
    for name in ("grads", "logits", "loss", "lr"):
        assert ds[name][1:].notnull().all(), name


def test_values_bitwise_equal_to_live_tensors(ds, float32_run):
    live = float32_run.live
    assert live.steps == list(range(1, float32_run.config.steps + 1))
    for name in ("embeddings", "grads", "momentum", "variance"):
        expected = torch.stack(getattr(live, name)).float().numpy()
        np.testing.assert_array_equal(ds[name][1:].values, expected, err_msg=name)
    np.testing.assert_array_equal(ds.lr[1:].values, np.float32(live.lr))


def test_steps_are_global_steps_across_epoch_boundaries(ds, float32_run):
    from zarrec.reference.corpus import ByteDataset, load_corpus

    config = float32_run.config
    steps_per_epoch = -(-len(ByteDataset(load_corpus(config.corpus), config.context)) // config.batch_size)
    assert steps_per_epoch < config.steps  # the run crosses an epoch boundary
    np.testing.assert_array_equal(ds.step, np.arange(config.steps + 1))
    # every step, including the ones either side of the boundary, moved the embeddings
    moved = np.abs(ds.embeddings.diff("step")).max(["token", "dim"])
    assert (moved > 0).all()


def test_lr_follows_the_linear_schedule(ds, float32_run):
    config = float32_run.config
    t = np.arange(1, config.steps + 1)
    expected = config.learning_rate * (1 - (t - 1) / config.steps)
    np.testing.assert_allclose(ds.lr[1:], expected, rtol=1e-6)


def test_adamw_identity_holds_to_float32_precision(ds):
    """W[t] = W[t-1]·(1 − lr·wd) − lr·m̂/(√v̂ + eps), with m̂, v̂ bias-corrected for step t."""
    a = ds.attrs
    t = ds.step.values[1:, None, None]
    W = ds.embeddings.values
    m_hat = ds.momentum.values[1:] / (1 - a["adam_beta1"] ** t)
    v_hat = ds.variance.values[1:] / (1 - a["adam_beta2"] ** t)
    lr = ds.lr.values[1:, None, None]
    predicted = W[:-1] * (1 - lr * a["weight_decay"]) - lr * m_hat / (np.sqrt(v_hat) + a["adam_epsilon"])
    assert np.abs(W[1:] - predicted).max() <= 4e-7 * np.abs(W).max()


def test_moment_recursions_prove_grads_are_after_clipping(ds):
    """momentum[t] = β1·m[t−1] + (1−β1)·g[t]; variance[t] = β2·v[t−1] + (1−β2)·g[t]²."""
    a = ds.attrs
    g = ds.grads.values[1:]
    m, m_prev = ds.momentum.values[1:], ds.momentum.values[:-1]
    v, v_prev = ds.variance.values[1:], ds.variance.values[:-1]
    np.testing.assert_allclose(m, a["adam_beta1"] * m_prev + (1 - a["adam_beta1"]) * g, rtol=1e-5, atol=1e-6 * np.abs(m).max())
    np.testing.assert_allclose(v, a["adam_beta2"] * v_prev + (1 - a["adam_beta2"]) * g**2, rtol=1e-5, atol=1e-6 * np.abs(v).max())
    # clipping was active: the embedding gradient is part of the clipped total norm
    grad_norms = np.sqrt((g.astype(np.float64) ** 2).sum(axis=(1, 2)))
    assert (grad_norms <= a["max_grad_norm"] * (1 + 1e-5)).all()


def test_loss_and_logits_come_from_the_training_batch(ds):
    assert ds.loss[1:].notnull().all() and (ds.loss[1:] > 0).all()
    # untrained near-identical embeddings: the first loss is close to ln(V)
    assert abs(float(ds.loss[1]) - np.log(ds.sizes["token"])) < 0.1
    assert ds.logits[1:].notnull().all()


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tiny_config):
    """2 accumulated batches of 4 give the loss and gradient of one batch of 8, labelled by optimizer step."""
    config = dataclasses.replace(tiny_config, steps=6)
    big = record_run(tmp_path / "big.zarr", dataclasses.replace(config, batch_size=8))
    accumulated = record_run(tmp_path / "acc.zarr", dataclasses.replace(config, batch_size=4, gradient_accumulation=2))
    one, two = xr.open_zarr(big.path).load(), xr.open_zarr(accumulated.path).load()
    np.testing.assert_array_equal(two.step, np.arange(7))
    assert accumulated.live.steps == list(range(1, 7))
    np.testing.assert_allclose(two.loss[1:], one.loss[1:], rtol=1e-5)
    np.testing.assert_allclose(two.grads[1], one.grads[1], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(two.embeddings, one.embeddings, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(two.grads[1:].values, torch.stack(accumulated.live.grads).numpy())


def test_every_n_records_only_those_steps(tmp_path, tiny_config):
    run = record_run(tmp_path / "every.zarr", dataclasses.replace(tiny_config, steps=10, every=3))
    ds = xr.open_zarr(run.path)
    np.testing.assert_array_equal(ds.step, [0, 3, 6, 9])
    recorded = [run.live.steps.index(s) for s in (3, 6, 9)]
    expected = torch.stack([run.live.grads[i] for i in recorded]).numpy()
    np.testing.assert_array_equal(ds.grads[1:].values, expected)


def _trainer(tmp_path, config, callback, **arguments):
    from transformers import Trainer, TrainingArguments

    from zarrec.reference.corpus import ByteDataset, load_corpus
    from zarrec.reference.model import build_model

    arguments = {"max_steps": 3, **arguments}
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=4,
                             report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, **arguments)
    dataset = ByteDataset(load_corpus(config.corpus), config.context)
    return Trainer(model=build_model(config), args=args, train_dataset=dataset, callbacks=[callback])


def test_plain_trainer_with_sgd_records_without_adam_moments(tmp_path, tiny_config):

    _trainer(tmp_path, tiny_config, ZarrecCallback(tmp_path / "sgd.zarr"), optim="sgd").train()
    ds = xr.open_zarr(tmp_path / "sgd.zarr")
    assert set(ds.data_vars) == {"embeddings", "grads", "logits", "loss", "lr", *SCALARS}
    np.testing.assert_array_equal(ds.step, [0, 1, 2, 3])
    # plain SGD with weight decay 0: W[t] = W[t-1] - lr[t]·g[t]
    W, g, lr = ds.embeddings.values, ds.grads.values, ds.lr.values
    np.testing.assert_allclose(W[1:], W[:-1] - lr[1:, None, None] * g[1:], atol=1e-7)


def test_a_frozen_embedding_records_its_value_and_refuses_its_gradient(tmp_path, tiny_config):
    trainer = _trainer(tmp_path, tiny_config, ZarrecCallback(tmp_path / "frozen.zarr"))
    trainer.model.get_input_embeddings().weight.requires_grad_(False)
    trainer.train()
    ds = xr.open_zarr(tmp_path / "frozen.zarr")
    assert set(ds.data_vars) == {"embeddings", "logits", "loss", "lr", *SCALARS}
    assert (ds.embeddings == ds.embeddings[0]).all()

    trainer = _trainer(tmp_path, tiny_config, ZarrecCallback(tmp_path / "grad.zarr", quantities=["grad"]))
    trainer.model.get_input_embeddings().weight.requires_grad_(False)
    with pytest.raises(ConfigError, match="transformer.wte.weight is not trained by the optimizer"):
        trainer.train()


class LiveState(TrainerCallback):
    """Clones, after every optimizer step, the parameters matching ``prefix`` and their optimizer state."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        values = {}
        for name, p in model.named_parameters():
            if name.startswith(self.prefix):
                values[name] = p.detach().clone()
                values.update({f"{name}.{key}": v.clone() for key, v in optimizer.optimizer.state[p].items()
                               if isinstance(v, torch.Tensor) and v.ndim})
        self.steps.append(values)


def test_any_parameters_with_factored_optimizer_state(tmp_path, tiny_config):
    """Adafactor keeps factored second moments: each is recorded with its own dims, bitwise."""
    config = dataclasses.replace(tiny_config, steps=5, optimizer="adafactor", params=("*.attn.c_attn.*",))
    live = LiveState("transformer.h.0.attn.c_attn.")
    train(config, tmp_path / "run.zarr", progress=False, callbacks=[live])
    ds = xr.open_zarr(tmp_path / "run.zarr")
    weight = "transformer.h.0.attn.c_attn.weight"
    assert set(ds.data_vars) == {
        weight, f"{weight}.grad", f"{weight}.exp_avg_sq_row", f"{weight}.exp_avg_sq_col",
        "transformer.h.0.attn.c_attn.bias", "transformer.h.0.attn.c_attn.bias.grad",
        "transformer.h.0.attn.c_attn.bias.exp_avg_sq", "logits", "loss", "lr", *SCALARS}
    dims = ("step", "transformer_h_0_attn_c_attn_weight_row", "transformer_h_0_attn_c_attn_weight_col")
    assert ds[weight].dims == dims == ds[f"{weight}.grad"].dims
    assert ds[f"{weight}.exp_avg_sq_row"].dims == ("step", "transformer_h_0_attn_c_attn_weight_exp_avg_sq_row_dim0")
    assert ds.sel(transformer_h_0_attn_c_attn_weight_row=3)[weight].dims == ("step", dims[2])  # index coordinates
    assert ds[f"{weight}.exp_avg_sq_col"].attrs["quantity"] == "exp_avg_sq_col"
    assert ds[f"{weight}.exp_avg_sq_col"].attrs["param"] == weight
    assert ds.attrs["recorded_params"] == [weight, "transformer.h.0.attn.c_attn.bias"]
    for name in live.steps[0]:
        np.testing.assert_array_equal(ds[name][1:].values, torch.stack([s[name] for s in live.steps]).numpy(), name)
    assert (ds[f"{weight}.exp_avg_sq_row"][0] == 0).all() and ds[f"{weight}.grad"][0].isnull().all()


def test_sgd_momentum_buffer_follows_its_recursion(tmp_path, tiny_config):
    """buf[t] = μ·buf[t−1] + g[t] (buf[0] = 0), and W[t] = W[t−1] − lr[t]·buf[t]."""
    config = dataclasses.replace(tiny_config, steps=6, optimizer="sgd", sgd_momentum=0.9, weight_decay=0.0)
    train(config, tmp_path / "sgd.zarr", progress=False)
    ds = xr.open_zarr(tmp_path / "sgd.zarr").load()
    assert set(ds.data_vars) == {"embeddings", "grads", "embeddings.momentum_buffer", "logits", "loss", "lr", *SCALARS}
    buf, g, W, lr = ds["embeddings.momentum_buffer"].values, ds.grads.values, ds.embeddings.values, ds.lr.values
    np.testing.assert_allclose(buf[1:], 0.9 * buf[:-1] + g[1:], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(W[1:], W[:-1] - lr[1:, None, None] * buf[1:], rtol=1e-6, atol=1e-7)


def test_a_step_schedule_keeps_exactly_its_steps(tmp_path, tiny_config):
    run = record_run(tmp_path / "schedule.zarr", dataclasses.replace(tiny_config, steps=11, every="1:4,3"))
    ds = xr.open_zarr(run.path)
    np.testing.assert_array_equal(ds.step, [0, 1, 2, 3, 4, 6, 9])
    assert ds.attrs["recorded_every"] == "1:4,3"
    expected = torch.stack([run.live.embeddings[s - 1] for s in (1, 2, 3, 4, 6, 9)]).numpy()
    np.testing.assert_array_equal(ds.embeddings[1:].values, expected)


def test_probe_logits_are_the_current_weights_on_a_fixed_input(tmp_path, tiny_config):
    """Evaluated at steps 0, 3, 6 with the weights of that step; the training logits are untouched."""
    from zarrec.reference.model import build_model
    from zarrec.capture.probe import Probe

    config = dataclasses.replace(tiny_config, steps=6)
    callback = ZarrecCallback(tmp_path / "probe.zarr", probe="lazy dog", probe_positions=[-1, 0], probe_every=3)
    trainer = make_trainer(config, str(tmp_path / "trainer"), [callback], progress=False)
    trainer.train()
    ds = xr.open_zarr(tmp_path / "probe.zarr").load()
    assert ds.probe_logits.dims == ("step", "probe_position", "token")
    np.testing.assert_array_equal(ds.probe_position, [7, 0])
    np.testing.assert_array_equal(ds.probe_input, [ord("g"), ord("l")])
    evaluated = ds.probe_logits.notnull().all(["probe_position", "token"])
    assert ds.step[evaluated].values.tolist() == [0, 3, 6] and ds.probe_logits[~evaluated].isnull().all()
    probe = Probe("lazy dog", positions=[-1, 0])
    np.testing.assert_array_equal(ds.probe_logits.sel(step=6), probe.logits(trainer.model).numpy())
    np.testing.assert_array_equal(ds.probe_logits.sel(step=0), probe.logits(build_model(config)).numpy())
    assert ds.attrs["probe_text"] == "lazy dog" and ds.attrs["probe_every"] == 3
    without = record_run(tmp_path / "plain.zarr", config)
    np.testing.assert_array_equal(ds.logits.values, xr.open_zarr(without.path).logits.values)
    np.testing.assert_array_equal(ds.embeddings.values, xr.open_zarr(without.path).embeddings.values)


def test_a_text_probe_for_a_model_that_is_not_byte_level_needs_a_tokenizer(tmp_path, tiny_config):
    config = dataclasses.replace(tiny_config, vocab_size=256, steps=2)
    trainer = make_trainer(config, str(tmp_path / "trainer"), [ZarrecCallback(tmp_path / "p.zarr", probe="x")],
                           progress=False)
    trainer.model.resize_token_embeddings(300)
    with pytest.raises(ConfigError, match=r"there is no tokenizer and the model.s vocabulary \(300\) is not bytes; pass the tokenizer"):
        trainer.train()


def test_state_the_optimizer_lacks_is_refused_before_anything_is_recorded(tmp_path, tiny_config):
    callback = ZarrecCallback(tmp_path / "run.zarr", quantities=["param", "momentum_buffer"])
    with pytest.raises(ConfigError, match="AdamW keeps no 'momentum_buffer' for transformer.wte.weight; its state "
                                          "holds 'step', 'exp_avg', 'exp_avg_sq'"):
        _trainer(tmp_path, tiny_config, callback).train()
    ds = xr.open_zarr(tmp_path / "run.zarr")
    assert ds.sizes.get("step", 0) == 0
    assert ds.attrs["zarrec_status"]["state"] == "interrupted"  # closed, its lock released
    assert "momentum_buffer" in ds.attrs["zarrec_status"]["reason"]


def test_resuming_after_a_checkpoint_newer_than_the_store_is_refused(tmp_path, tiny_config):
    """Steps between the store's last commit and the checkpoint would be missing for ever."""
    out, checkpoints = tmp_path / "run.zarr", tmp_path / "checkpoints"
    config = dataclasses.replace(tiny_config, steps=12)
    train(config, out, checkpoint_dir=checkpoints, save_steps=10, progress=False)
    with Recorder(out, resume_from=7):  # as if the steps after 7 had been lost in a crash
        pass
    trainer = make_trainer(config, str(checkpoints), [ZarrecCallback(out, resume=True)], progress=False)
    with pytest.raises(ConfigError, match="holds steps up to 7, but training resumes after step 10: step 8 would never"):
        trainer.train(resume_from_checkpoint=str(checkpoints / "checkpoint-10"))
    assert xr.open_zarr(out).step.values.tolist() == list(range(8))


def test_resuming_after_a_checkpoint_newer_than_the_statistics_continues_them_after_a_gap(tmp_path, tiny_config):
    """The statistics commit apart from the run's arrays; a crash between the two commits loses
    some of them: the resumed run continues them after the gap, saying which steps it lacks."""
    out, checkpoints = tmp_path / "run.zarr", tmp_path / "checkpoints"
    config = dataclasses.replace(tiny_config, steps=12)
    make_trainer(config, str(checkpoints), [ZarrecCallback(out)], progress=False, save_steps=10).train()
    with Recorder(out / "statistics", resume_from=7):  # as if the statistics after 7 had been lost in a crash
        pass
    trainer = make_trainer(config, str(checkpoints), [ZarrecCallback(out, resume=True)], progress=False)
    with pytest.warns(ZarrecWarning, match="holds no statistics of steps 8..10 .lost when the run stopped.; they continue after step 10"):
        trainer.train(resume_from_checkpoint=str(checkpoints / "checkpoint-10"))
    assert xr.open_zarr(out).step.values.tolist() == list(range(13))
    statistics = xr.open_zarr(out / "statistics")
    assert statistics.step.values.tolist() == [*range(8), 11, 12]
    assert statistics.update_norm.sel(step=11).notnull().all()  # W[10], copied at the resume, is W[t − 1]


@pytest.mark.parametrize(("committed", "resume", "every", "missing"),
                         [(7, 7, 1, None), (7, 10, 1, 8), (8, 10, 4, None), (8, 12, 4, 12), (None, 3, 1, 0)])
def test_first_unrecorded_step(committed, resume, every, missing):
    assert first_unrecorded_step(committed, resume, every) == missing


def test_gradient_norms_before_and_after_clipping_and_what_the_loss_is(tmp_path, tiny_config):
    """The norm before clipping is the one the Trainer logs (clip_grad_norm_'s return); after it, max_grad_norm."""
    config = dataclasses.replace(tiny_config, steps=6, max_grad_norm=0.05, gradient_accumulation=2)
    trainer = make_trainer(config, str(tmp_path / "trainer"), [ZarrecCallback(tmp_path / "run.zarr")], progress=False)
    trainer.args.logging_steps = 1
    trainer.train()
    logged = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]
    ds = xr.open_zarr(tmp_path / "run.zarr")
    assert len(logged) == 6
    np.testing.assert_allclose(ds.grad_norm_before_clipping[1:], logged, rtol=1e-5)
    np.testing.assert_allclose(ds.grad_norm[1:], 0.05, rtol=1e-4)
    assert ds.grad_norm.attrs["description"].startswith("global norm")
    assert ds.loss.attrs["description"].startswith("sum over step t's 2 micro-batches of the model's loss")
    assert ds.attrs["framework"] == "transformers" and ds.attrs["autocast_dtype"] is None
    assert ds.attrs["optimizer_class"] == "AdamW" and ds.attrs["adam_beta2"] == config.adam_beta2


def test_mantissa_bits_reach_the_store_from_the_trainer(tmp_path, tiny_config):
    train(dataclasses.replace(tiny_config, steps=3, mantissa_bits=7), tmp_path / "run.zarr", progress=False)
    ds = xr.open_zarr(tmp_path / "run.zarr")
    assert ds.embeddings.attrs["mantissa_bits"] == 7 and ds.grads.attrs["mantissa_bits"] == 7
    assert (ds.momentum.values.view(np.uint32) & 0xFFFF == 0).all() and "mantissa_bits" not in ds.loss.attrs


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, tiny_config) -> Path:
    """8 AdamW steps of a bf16 model, recording the embedding and :data:`LAYER_PARAMS`."""
    path = tmp_path_factory.mktemp("runs") / "bf16.zarr"
    train(dataclasses.replace(tiny_config, dtype="bfloat16", steps=8, chunk_steps=4,
                              params=("transformer.wte.weight", *LAYER_PARAMS)), path, progress=False)
    return path


@pytest.mark.parametrize(("run", "params"), [
    ("float32_run", ("transformer.wte.weight",)),  # clipped every step: the statistics use the clipped gradient
    ("layers_run", LAYER_PARAMS),  # AdamW with and without weight decay (the Trainer's two param groups)
    ("sgd_run", ("transformer.wte.weight", *LAYER_PARAMS)),  # SGD with momentum and weight decay
    ("bf16_run", ("transformer.wte.weight", *LAYER_PARAMS)),  # a bf16 model (the reference run's default dtype)
])
def test_the_trainers_health_statistics_equal_their_formulas_on_the_full_state(run, params, request):
    store = request.getfixturevalue(run)
    path = getattr(store, "path", store)
    ds = xr.open_zarr(path)
    for param in params:
        check_health(path, param, per_row=ds.zarrec.parameter(param).param.ndim == 3)


def test_log_statistics_reach_the_trainers_reporters_at_its_logging_steps(tmp_path, tiny_config):
    """A reporter (any callback with on_log, as W&B's and TensorBoard's are) gets, at each logging
    step, each parameter's statistics of that step as the store has them, in a call of its own:
    the Trainer's own log lines stay as they were."""
    class Reporter(TrainerCallback):
        def __init__(self):
            self.calls = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.calls.append((state.global_step, dict(logs)))

    path, reporter = tmp_path / "run.zarr", Reporter()
    trainer = _trainer(tmp_path, tiny_config, ZarrecCallback(path, log_statistics=True), logging_steps=2, max_steps=4)
    trainer.add_callback(reporter)
    trainer.train()
    stats = xr.open_zarr(f"{path}/statistics")
    logged = {step: logs for step, logs in reporter.calls if "grad_norm/transformer.wte.weight" in logs}
    assert sorted(logged) == [2, 4]
    for step, logs in logged.items():
        assert len(logs) == stats.sizes["param"] * len(HEALTH_STATISTICS)
        for name, value in logs.items():
            statistic, param = name.split("/", 1)
            np.testing.assert_equal(np.float32(value), stats[statistic].sel(step=step, param=param).values)
    trainer_logs = [logs for _, logs in reporter.calls if "loss" in logs]
    assert len(trainer_logs) == 2 and not any("/" in key for logs in trainer_logs for key in logs)
    assert not any("/" in key for entry in trainer.state.log_history for key in entry)


def test_log_statistics_without_statistics_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="log_statistics=True logs the health statistics, which statistics=False"):
        ZarrecCallback(tmp_path / "run.zarr", log_statistics=True, statistics=False)
