"""The reference notebook's files: import a legacy safetensors recording, export a store back.

The notebook (``shared/seed``) saved one safetensors file holding ``recorded_steps``,
``embeddings``, ``grads``, ``momentum``, ``variance`` (``(n, V, D)`` float32), ``logits``
(``(n, V)``), ``losses`` (``(n,)``), ``live_token_ids``, ``dead_token_ids`` and scalar
hyperparameters. Import streams it block by block (memory-mapped slices, never the whole
file) through a :class:`~zarrec.Recorder`; export streams a store into that layout.

What the conversion changes, and undoes on export: at step 0 the notebook stored zeros for
the gradient and the logits, which did not exist yet; the store contract says NaN. What it
keeps as it was: the notebook's step labels (its counter also counted each epoch end, so
after the first epoch boundary the labels run ahead of the optimizer step; ``renumber``
relabels the rows 0, 1, 2, ..., right when the notebook recorded every step) and its
gradients, taken before clipping (each array's ``description`` says so).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from zarrec.errors import ConfigError, StoreExistsError, ZarrecWarning
from zarrec.store import contract
from zarrec.store.location import StoreLike, describe, ensure_creatable, store_exists

# Legacy key -> store variable, for the arrays with one row per recorded step.
VARIABLES = {
    "embeddings": contract.EMBEDDINGS,
    "grads": contract.GRADS,
    "momentum": contract.MOMENTUM,
    "variance": contract.VARIANCE,
    "logits": contract.LOGITS,
    "losses": contract.LOSS,
}
SCALARS = ("init_sigma", "learning_rate", "weight_decay", "adam_beta1", "adam_beta2")
INIT_METHODS = {0: "f32_to_bf16", 1: "pure_bf16"}
REQUIRED = ("recorded_steps", "live_token_ids", "dead_token_ids", *VARIABLES)
# Variables the notebook filled with zeros at step 0, where the contract has NaN.
ZERO_AT_STEP_0 = (contract.GRADS, contract.LOGITS)
DESCRIPTIONS = {
    contract.GRADS: "embedding gradient of step t's last micro-batch, BEFORE clipping (as the reference notebook "
                    "captured it)",
}
BLOCK_STEPS = 256  # rows read and written at a time: ~8 MB per variable for the reference run

_SAFETENSORS_DTYPES = {np.dtype("float32"): "F32", np.dtype("int64"): "I64", np.dtype("int32"): "I32"}


def import_legacy(
    source: str | os.PathLike,
    out: StoreLike,
    *,
    overwrite: bool = False,
    renumber: bool = False,
    progress: bool = True,
) -> None:
    """Convert a legacy safetensors file into a zarrec store at ``out`` (see the module docstring)."""
    import torch
    from safetensors import SafetensorError, safe_open

    from zarrec.record.recorder import Recorder
    from zarrec.reference.corpus import byte_labels

    path = Path(source)
    if store_exists(out) and not overwrite:
        raise StoreExistsError(f"{describe(out)} already exists; pass --overwrite to replace it or choose another output path")
    if not path.is_file():
        raise ConfigError(f"{path} does not exist or is not a file; give the notebook's .safetensors file")
    try:
        legacy = safe_open(path, framework="pt")
    except SafetensorError as exc:
        raise ConfigError(f"{path} is not a safetensors file ({exc}); give the notebook's .safetensors file") from exc
    with legacy:
        keys = set(legacy.keys())
        missing = [key for key in REQUIRED if key not in keys]
        if missing:
            raise ConfigError(
                f"{path} lacks {', '.join(missing)}, so it is not a reference-notebook recording; "
                f"it has {', '.join(sorted(keys))}"
            )
        steps = legacy.get_tensor("recorded_steps").numpy()
        live = _live_mask(legacy, path)
        shapes = {key: legacy.get_slice(key).get_shape() for key in VARIABLES}
        short = [f"{key} {shape}" for key, shape in shapes.items() if not shape or shape[0] != steps.size]
        if short:
            raise ConfigError(f"{path} has {steps.size} recorded steps but {', '.join(short)}; the file is damaged")
        if shapes["embeddings"][1] != live.size:
            raise ConfigError(f"{path} has {live.size} token ids but embeddings for {shapes['embeddings'][1]} tokens")
        if renumber:
            steps = np.arange(steps.size)
        elif np.any(np.diff(steps) <= 0):
            raise ConfigError(f"{path} has recorded_steps that do not increase; pass --renumber to number the rows 0, 1, 2, ...")
        attrs = {
            "experiment": "imported from the reference notebook's safetensors recording",
            "legacy_file": path.name,
            "legacy_steps": "renumbered 0, 1, 2, ..." if renumber else "the notebook's counter (runs ahead after an epoch end)",
            **{key: _scalar(legacy, key) for key in SCALARS if key in keys},
        }
        if "init_method_code" in keys:
            code = int(legacy.get_tensor("init_method_code"))
            attrs["init_method"] = INIT_METHODS.get(code, f"code {code}")
        unplaced = sorted(keys - set(REQUIRED) - set(SCALARS) - {"init_method_code"})
        if unplaced:
            warnings.warn(f"{path} also holds {', '.join(unplaced)}, which the reference layout does not have; "
                          "they are not imported", ZarrecWarning, stacklevel=2)
        coords = {
            contract.LIVE: (contract.TOKEN, live),
            contract.CHAR: (contract.TOKEN, byte_labels(live.size)),
        }
        with Recorder(out, coords=coords, attrs=attrs, overwrite=overwrite) as recorder:
            for name, description in DESCRIPTIONS.items():
                recorder.label(name, description=description)
            for start, rows in _blocks(steps.size, progress, f"importing {path.name}"):
                # Mapped afresh for each block: the pages read are unmapped after it, so the
                # process never holds more of the file than one block.
                with safe_open(path, framework="pt") as mapped:
                    block = {name: mapped.get_slice(key)[start:start + rows] for key, name in VARIABLES.items()}
                for row in range(rows):
                    step = int(steps[start + row])
                    values = {name: block[name][row] for name in block}
                    if step == 0:
                        for name in ZERO_AT_STEP_0:
                            if not values[name].any():
                                values[name] = torch.full_like(values[name], float("nan"))
                    recorder.record(step, **values)


def export_legacy(store: StoreLike, target: str | os.PathLike, *, overwrite: bool = False, progress: bool = True) -> None:
    """Write a store in the reference notebook's safetensors layout, streaming it block by block.

    safetensors has no streaming writer (its header lists every tensor's offsets, and
    ``save_file`` takes every tensor in memory), so the file is written here: the header first,
    computed from the shapes, then each tensor's rows in blocks. It goes to ``<target>.partial``
    and is renamed when complete.
    """
    import xarray as xr

    from zarrec.store.location import open_run

    target = Path(target)
    if target.is_dir():
        raise ConfigError(f"{target} is a directory; pass the path of the .safetensors file to write")
    if not target.absolute().parent.is_dir():
        raise ConfigError(f"{target.parent} is not a directory; create it first or write the file elsewhere")
    ensure_creatable(target, "the target")
    if target.exists() and not overwrite:
        raise StoreExistsError(f"{target} already exists; pass --overwrite to replace it or choose another file")
    open_run(store)  # a clear error for a path that is not a zarrec store
    ds = xr.open_zarr(store)
    missing = [name for name in (*VARIABLES.values(), contract.LIVE) if name not in ds.variables]
    if missing:
        raise ConfigError(
            f"{describe(store)} has no {', '.join(missing)}; the reference layout needs the embedding recording "
            f"(embeddings, grads, momentum, variance, logits, loss, live)"
        )
    live = ds[contract.LIVE].values.astype(bool)
    steps = ds[contract.STEP].values
    tensors: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
        "recorded_steps": (np.dtype("int64"), steps.shape),
        "dead_token_ids": (np.dtype("int64"), (int((~live).sum()),)),
        "live_token_ids": (np.dtype("int64"), (int(live.sum()),)),
        **{key: (np.dtype("float32"), ds[name].shape) for key, name in VARIABLES.items()},
    }
    scalars: dict[str, np.ndarray] = {key: np.float32(ds.attrs[key]) for key in SCALARS if key in ds.attrs}
    codes = {method: code for code, method in INIT_METHODS.items()}
    if ds.attrs.get("init_method") in codes:
        scalars["init_method_code"] = np.int32(codes[ds.attrs["init_method"]])
    absent = [key for key in (*SCALARS, "init_method_code") if key not in scalars]
    if absent:
        warnings.warn(f"{describe(store)} has no {', '.join(absent)} attribute; the file leaves them out",
                      ZarrecWarning, stacklevel=2)
    tensors.update({key: (value.dtype, ()) for key, value in scalars.items()})

    partial = target.with_name(target.name + ".partial")
    with open(partial, "wb") as file:
        file.write(_header(tensors))
        file.write(steps.astype("<i8").tobytes())
        file.write(np.flatnonzero(~live).astype("<i8").tobytes())
        file.write(np.flatnonzero(live).astype("<i8").tobytes())
        for name in VARIABLES.values():
            for start, rows in _blocks(steps.size, progress, f"exporting {name} to {target.name}"):
                block = np.asarray(ds[name][start:start + rows].values, dtype="<f4")
                if name in ZERO_AT_STEP_0:
                    block[(steps[start:start + rows] == 0) & np.isnan(block).all(axis=tuple(range(1, block.ndim)))] = 0
                file.write(block.tobytes())
        for value in scalars.values():
            file.write(value.tobytes())
    partial.replace(target)


def _header(tensors: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> bytes:
    """The safetensors header for tensors written in this order, back to back: an 8-byte
    little-endian length, then JSON padded with spaces to a multiple of 8 bytes."""
    entries: dict[str, Any] = {}
    offset = 0
    for key, (dtype, shape) in tensors.items():
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        entries[key] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def _live_mask(legacy, path: Path) -> np.ndarray:
    live_ids = legacy.get_tensor("live_token_ids").numpy()
    dead_ids = legacy.get_tensor("dead_token_ids").numpy()
    vocab = live_ids.size + dead_ids.size
    if sorted([*live_ids.tolist(), *dead_ids.tolist()]) != list(range(vocab)):
        raise ConfigError(f"{path}: live_token_ids and dead_token_ids do not split the tokens 0..{vocab - 1}; the file is damaged")
    live = np.zeros(vocab, dtype=bool)
    live[live_ids] = True
    return live


def _scalar(legacy, key: str) -> float:
    """A float32 hyperparameter as the shortest decimal that is that float32 (1e-3, not 0.0010000000474974513)."""
    return float(str(np.float32(legacy.get_tensor(key).item())))


def _blocks(total: int, progress: bool, description: str) -> Iterator[tuple[int, int]]:
    """``(start, rows)`` of each block of ``BLOCK_STEPS`` rows, with a progress bar."""
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=description, unit="step", leave=False, disable=not progress) as bar:
        for start in range(0, total, BLOCK_STEPS):
            rows = min(BLOCK_STEPS, total - start)
            yield start, rows
            bar.update(rows)
