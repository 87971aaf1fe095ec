"""Shared fixtures: tiny corpora, tiny configurations and one recorded float32 run."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import itertools
import os
import warnings
from pathlib import Path

import dask.array
import numpy as np
import pytest
import torch
import xarray as xr
from transformers import TrainerCallback
from zarr.storage import LocalStore, WrapperStore

from zarrec.reference.config import TrainConfig
from zarrec.reference.train import train
from zarrec.store import contract

# ~100 bytes: with context 16 and batch 4 an epoch is 22 steps, so short runs cross epoch boundaries.
SMALL_TEXT = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs! 0123456789\n"


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(SMALL_TEXT, encoding="ascii")
    return path


@pytest.fixture(scope="session")
def tiny_config(small_corpus) -> TrainConfig:
    """A float32 model small enough to train dozens of steps in a second or two."""
    return TrainConfig(
        n_embd=16, n_layer=1, n_head=2, context=16, batch_size=4, steps=30, dtype="float32",
        device="cpu", corpus=str(small_corpus), chunk_steps=8,
    )


class LiveTensors(TrainerCallback):
    """Clones, at every optimizer step, the same live tensors the recorder reads (for bitwise checks)."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.embeddings: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []
        self.momentum: list[torch.Tensor] = []
        self.variance: list[torch.Tensor] = []
        self.lr: list[float] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append(model.get_input_embeddings().weight.grad.detach().clone())

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        weight = model.get_input_embeddings().weight
        moments = optimizer.optimizer.state[weight]
        self.steps.append(state.global_step + 1)
        self.embeddings.append(weight.detach().clone())
        self.momentum.append(moments["exp_avg"].clone())
        self.variance.append(moments["exp_avg_sq"].clone())
        self.lr.append(next(g["lr"] for g in optimizer.param_groups if any(p is weight for p in g["params"])))


@dataclasses.dataclass
class RecordedRun:
    path: Path
    config: TrainConfig
    live: LiveTensors


def record_run(path: Path, config: TrainConfig) -> RecordedRun:
    live = LiveTensors()
    train(config, path, progress=False, callbacks=[live])
    return RecordedRun(path, config, live)


@pytest.fixture(scope="session")
def float32_run(tmp_path_factory, tiny_config) -> RecordedRun:
    """30 float32 steps over an epoch boundary, with clipping active on every step (max_grad_norm 0.05)."""
    config = dataclasses.replace(tiny_config, max_grad_norm=0.05)
    return record_run(tmp_path_factory.mktemp("runs") / "float32.zarr", config)


# Parameters other than the input embedding: a matrix (decayed) and two vectors the Trainer
# exempts from weight decay (a bias and a LayerNorm weight).
LAYER = "transformer.h.0.attn.c_attn.weight"
LAYER_PARAMS = (LAYER, "transformer.h.0.attn.c_attn.bias", "transformer.h.0.ln_1.weight")


@pytest.fixture(scope="session")
def layers_run(tmp_path_factory, tiny_config) -> Path:
    """12 float32 AdamW steps of the Trainer recording :data:`LAYER_PARAMS`, not the embedding."""
    path = tmp_path_factory.mktemp("runs") / "layers.zarr"
    train(dataclasses.replace(tiny_config, steps=12, chunk_steps=4, params=LAYER_PARAMS), path, progress=False)
    return path


@pytest.fixture(scope="session")
def sgd_run(tmp_path_factory, tiny_config) -> Path:
    """12 float32 steps of SGD with momentum 0.9 and weight decay, recording the embedding and :data:`LAYER_PARAMS`."""
    path = tmp_path_factory.mktemp("runs") / "sgd.zarr"
    config = dataclasses.replace(tiny_config, steps=12, chunk_steps=4, optimizer="sgd", learning_rate=0.05,
                                 params=("transformer.wte.weight", *LAYER_PARAMS))
    train(config, path, progress=False)
    return path


def train_tiny_lm(path: Path, *, rows: int, width: int, steps: int, lr: float = 0.05, **options) -> None:
    """A plain loop recorded by a :class:`zarrec.ModelRecorder` with ``options``: an embedding of
    ``rows`` tokens × ``width`` and a linear head, AdamW (weight decay 0.1), ``steps`` steps of
    fixed random batches of 3 × 4 tokens."""
    import zarrec

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(rows, width), torch.nn.Linear(width, rows))
    model.get_input_embeddings = lambda: model[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    with zarrec.ModelRecorder(path, model, optimizer, **options) as recorder:
        for step in range(1, steps + 1):
            tokens = torch.randint(0, rows, (3, 4), generator=torch.Generator().manual_seed(step))
            loss = torch.nn.functional.cross_entropy(model(tokens).reshape(-1, rows), tokens.reshape(-1))
            loss.backward()
            optimizer.step()
            recorder.step(loss=loss)
            optimizer.zero_grad()


@pytest.fixture(scope="session")
def one_step_chunks(tmp_path_factory):
    """12 steps of an embedding stored as a large model's are: one step a shard, rows in blocks
    (the layout's byte thresholds lowered to this model's size)."""
    path = tmp_path_factory.mktemp("one_step_chunks") / "run.zarr"
    import zarrec

    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore", zarrec.ZarrecWarning)  # (the slow writer of a one-step-chunk store)
        patch.setattr(contract, "SMALL_SHARD_BYTES", 1)
        patch.setattr(contract, "TARGET_INNER_CHUNK_BYTES", 16 * 16 * 4)  # 16 rows a block
        train_tiny_lm(path, rows=64, width=16, steps=12, lr=0.01, chunk_steps=1)
    return path


def readme_python(heading: str) -> str:
    """The Python blocks of the README's section ``heading``, joined: the code a reader runs."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split(f"\n{heading}\n", 1)[1].split("\n#", 1)[0]
    return "\n".join(block.split("\n```", 1)[0] for block in section.split("```python\n")[1:])


@pytest.fixture(scope="session")
def readme_stores(tmp_path_factory) -> Path:
    """A directory with ``run.zarr`` and ``values.zarr``, made by the README's plain-loop examples as written."""
    import subprocess
    import sys

    directory = tmp_path_factory.mktemp("readme")
    code = readme_python("### Any training loop: `zarrec.ModelRecorder`")
    subprocess.run([sys.executable, "-c", code], cwd=directory, check=True, timeout=300)
    return directory


@pytest.fixture(scope="session")
def lightning_run(tmp_path_factory) -> Path:
    """6 Lightning steps of a tiny LM (AdamW, an exponential lr schedule) that returns its logits."""
    from lightning_module import TinyLMWithLogits, fit

    from zarrec.adapters.lightning import ZarrecLightningCallback

    path = tmp_path_factory.mktemp("runs") / "lightning.zarr"
    fit(ZarrecLightningCallback(path, params=["embed.weight", "out.*"]), module=TinyLMWithLogits())
    return path


def synthetic_dataset(steps=(0, 1, 2, 3, 4, 5, 6), tokens: int = 6, dims: int = 4, seed: int = 0):
    """A small run in the store contract's layout, with random values and known hyperparameters."""
    rng = np.random.default_rng(seed)
    shape = (len(steps), tokens, dims)
    lr = np.linspace(1e-3, 5e-4, len(steps))
    lr[0] = np.nan
    live = np.arange(tokens) % 3 != 2
    three = ("step", "token", "dim")
    return xr.Dataset(
        {
            "embeddings": (three, rng.normal(size=shape).astype(np.float32)),
            "grads": (three, rng.normal(size=shape).astype(np.float32)),
            "momentum": (three, rng.normal(scale=0.1, size=shape).astype(np.float32)),
            "variance": (three, rng.uniform(1e-4, 1e-2, size=shape).astype(np.float32)),
            "logits": (("step", "token"), rng.normal(size=shape[:2]).astype(np.float32)),
            "loss": ("step", rng.uniform(1, 5, size=len(steps)).astype(np.float32)),
            "lr": ("step", lr.astype(np.float32)),
        },
        coords={"step": np.array(steps, dtype=np.int64), "token": np.arange(tokens), "dim": np.arange(dims),
                "live": ("token", live), "char": ("token", [chr(97 + i) for i in range(tokens)]),
                "count": ("token", live.astype(np.int64) * 10)},
        attrs={"adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8, "weight_decay": 0.01},
    ).chunk({"step": 3})


@pytest.fixture(scope="session")
def legacy_file(tmp_path_factory, tiny_config) -> Path:
    """30 steps recorded by the reference notebook's own recorder, over an epoch boundary (22 steps an epoch)."""
    from legacy_notebook import write_legacy_file

    from zarrec.reference.corpus import load_corpus

    path = tmp_path_factory.mktemp("legacy") / "legacy.safetensors"
    return write_legacy_file(path, tiny_config, load_corpus(tiny_config.corpus))


class FullDisk(WrapperStore):
    """A real local store on a disk that fills up: every write after the first ``writes`` fails
    with ENOSPC, as a full disk does (what was written stays written). Views of the store that
    zarr opens share the one disk."""

    def __init__(self, path: Path, writes: int, store: LocalStore | None = None, disk: dict | None = None) -> None:
        super().__init__(store or LocalStore(path))
        self.path = path
        self.disk = disk if disk is not None else {"writes": 0, "capacity": writes, "refused": None}

    @property
    def writes(self) -> int:
        """Writes made so far."""
        return self.disk["writes"]

    @property
    def refused(self) -> str | None:
        """The first key the full disk refused."""
        return self.disk["refused"]

    def _with_store(self, store: LocalStore) -> FullDisk:
        return FullDisk(self.path, 0, store, self.disk)

    def __repr__(self) -> str:
        return f"FullDisk({self.path})"

    async def set(self, key: str, value) -> None:
        if self.disk["writes"] >= self.disk["capacity"]:
            self.disk["refused"] = self.disk["refused"] or key
            raise OSError(errno.ENOSPC, "No space left on device", key)
        self.disk["writes"] += 1
        await self._store.set(key, value)


class SlowDisk(WrapperStore):
    """A real local store whose every write takes ``delay`` seconds longer, as a slow disk's does."""

    def __init__(self, path: Path, delay: float, store: LocalStore | None = None) -> None:
        super().__init__(store or LocalStore(path))
        self.path = path
        self.delay = delay

    def _with_store(self, store: LocalStore) -> SlowDisk:
        return SlowDisk(self.path, self.delay, store)

    def __repr__(self) -> str:
        return f"SlowDisk({self.path})"

    async def set(self, key: str, value) -> None:
        await asyncio.sleep(self.delay)
        await self._store.set(key, value)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on loopback, with credentials for it in the environment
    (inherited by subprocesses), as a deployment with ``AWS_ENDPOINT_URL`` set would have."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    environment = {"AWS_ACCESS_KEY_ID": "zarrec", "AWS_SECRET_ACCESS_KEY": "zarrec", "AWS_DEFAULT_REGION": "us-east-1",
                   "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    yield environment["AWS_ENDPOINT_URL"]
    server.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


_buckets = itertools.count()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A new, empty bucket on the loopback S3 server: its ``s3://`` URL."""
    import s3fs

    name = f"zarrec-{next(_buckets)}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"


@pytest.fixture
def ds() -> xr.Dataset:
    """The synthetic dataset of :func:`synthetic_dataset`."""
    return synthetic_dataset()


def arrays(ds):
    a = ds.attrs
    return (ds.embeddings.values.astype(np.float64), ds.grads.values.astype(np.float64), ds.momentum.values.astype(np.float64),
            ds.variance.values.astype(np.float64), ds.lr.values.astype(np.float64), ds.step.values, ds.live.values, a)


def close(actual: xr.DataArray, expected: np.ndarray, rtol=1e-5, atol=1e-7):
    assert isinstance(actual.data, dask.array.Array), "results stay lazy"
    np.testing.assert_allclose(actual.values, expected, rtol=rtol, atol=atol)


def full_state_only(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` as if not opened from its store: the analysis sees its full state, not the run's
    health statistics (which it finds through ``ds.encoding["source"]``)."""
    copy = ds.copy()
    copy.encoding = {}
    return copy


def expected_health(ds: xr.Dataset, param: str) -> dict[str, np.ndarray]:
    """The health statistics of ``param`` at each step after the first of a store with its full
    state at consecutive steps, by their formulas in float64 numpy (independent of zarrec's
    code): per parameter under each statistic's name, per row under ``row.<statistic>``."""
    view = full_state_only(ds).zarrec.parameter(param)
    W = view.param.values.astype(np.float64)
    shape = (-1,) + (1,) * (W.ndim - 1)
    lr, t = view.lr.values[1:].reshape(shape), view.step.values[1:].astype(np.float64).reshape(shape)
    previous, g = W[:-1], view.grad.values[1:].astype(np.float64)
    a = W[1:] - previous
    optimizer, h = view.attrs["optimizer"], view.attrs["hyperparameters"]
    if optimizer in ("Adam", "AdamW"):
        m, v = view.exp_avg.values[1:].astype(np.float64), view.exp_avg_sq.values[1:].astype(np.float64)
        (beta1, beta2), decay = h["betas"], h["weight_decay"] if optimizer == "AdamW" else 0.0
        u = -lr * (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + h["eps"]) - lr * decay * previous
    else:
        m = view.momentum_buffer.values[1:].astype(np.float64) if "momentum_buffer" in view else None
        if h["momentum"] and not h["nesterov"]:
            u = -lr * m
        else:
            u = -lr * (g + h["weight_decay"] * previous) - (lr * h["momentum"] * m if m is not None else 0)
    expected = {}
    with np.errstate(invalid="ignore", divide="ignore"):  # (0 / 0: a row without gradient has no cosine, NaN)
        for prefix, axes in (("", tuple(range(1, W.ndim))), ("row.", tuple(range(2, W.ndim)))):
            def total(x: np.ndarray, axes: tuple[int, ...] = axes) -> np.ndarray:
                return x.sum(axis=axes)

            expected |= {
                f"{prefix}param_norm": np.sqrt(total(W[1:] ** 2)), f"{prefix}grad_norm": np.sqrt(total(g**2)),
                f"{prefix}update_norm": np.sqrt(total(a**2)), f"{prefix}intended_norm": np.sqrt(total(u**2)),
                f"{prefix}update_dot_intended": total(a * u), f"{prefix}residual_norm": np.sqrt(total((a - u) ** 2)),
                f"{prefix}momentum_norm": np.sqrt(total(m**2)) if m is not None else np.full(total(g).shape, np.nan),
                f"{prefix}cos_grad_momentum": (
                    total(g * m) / np.sqrt(total(g**2) * total(m**2)) if m is not None else np.full(total(g).shape, np.nan)
                ),
            }
    return expected


def check_health(path: Path, param: str, per_row: bool = True) -> None:
    """The statistics the run at ``path`` recorded of ``param`` equal :func:`expected_health` at
    every step where the store holds the full state at steps t − 1 and t, to float32 rounding:
    norms to 1e-5 of themselves, the product and the residual to 1e-5 of ‖a‖ ‖u‖ and ‖u‖, the
    cosine to 1e-5."""
    ds = xr.open_zarr(path)
    stats = xr.open_zarr(Path(path) / "statistics")
    steps = ds.step.values
    consecutive = np.flatnonzero(np.diff(steps) == 1)  # index of t − 1 in the full state's steps
    assert consecutive.size, "no two consecutive steps of full state to check against"
    expected = expected_health(ds, param)
    for prefix in ("", "row.") if per_row else ("",):
        recorded = (stats.sel(param=param) if not prefix else
                    stats[[f"{param}.{s}" for s in contract.HEALTH_STATISTICS]].rename(
                        {f"{param}.{s}": s for s in contract.HEALTH_STATISTICS}))
        recorded = recorded.sel(step=steps[consecutive + 1]).load()
        want = {s: expected[f"{prefix}{s}"][consecutive] for s in contract.HEALTH_STATISTICS}
        scale = want["update_norm"] * want["intended_norm"]
        for statistic in contract.HEALTH_STATISTICS:
            got, exact = recorded[statistic].values.astype(np.float64), want[statistic]
            if statistic == "update_dot_intended":
                tolerance = 1e-5 * scale + 1e-20
            elif statistic == "residual_norm":
                tolerance = 1e-5 * want["intended_norm"] + 1e-12
            elif statistic == "cos_grad_momentum":  # (⟨g, m⟩ rounds to ‖g‖ ‖m‖, so the cosine to 1)
                tolerance = 1e-5
            else:
                tolerance = 1e-5 * np.abs(exact) + 1e-12
            np.testing.assert_array_equal(np.isnan(got), np.isnan(exact), err_msg=f"{prefix}{statistic} of {param}: NaN")
            known = ~np.isnan(exact)
            np.testing.assert_array_less(np.abs(got - exact)[known], np.broadcast_to(tolerance, exact.shape)[known],
                                         err_msg=f"{prefix}{statistic} of {param}")
