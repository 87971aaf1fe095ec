"""The baselines zarrec is measured against, as Trainer callbacks doing the same work per step.

- ``InRamReference``: the reference notebook's recorder: every tensor cloned to the CPU as
  float32 each step (``.item()`` for the loss), kept in Python lists, stacked and written
  as one safetensors file when training ends.
- ``NaiveAppend``: the obvious streaming design: each step, each tensor copied to the host
  and appended to its Zarr array (``zarr.Array.append``: a resize and a partial-chunk write).
"""

from __future__ import annotations

import numpy as np
import torch
import zarr
from transformers import TrainerCallback

from zarrec.store import contract

NAMES = ("embeddings", "grads", "momentum", "variance", "logits", "loss")
NAIVE_CHUNK_STEPS = 128  # each append re-writes the growing chunk; bigger chunks make it slower still


class _Capture(TrainerCallback):
    """Finds the embedding, its optimizer state and the batch's loss and logits, like ZarrecCallback."""

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.weight = model.get_input_embeddings().weight
        self.optimizer_state = optimizer.optimizer.state
        self.loss, self.logits, self.grad = None, None, None
        model.register_forward_hook(self._forward)

    def _forward(self, module, inputs, output):
        if module.training:
            self.loss, self.logits = output.loss, output.logits

    def tensors(self) -> dict[str, torch.Tensor]:
        moments = self.optimizer_state[self.weight]
        return {"embeddings": self.weight, "grads": self.grad, "momentum": moments["exp_avg"],
                "variance": moments["exp_avg_sq"], "logits": self.logits[0, -1]}


class InRamReference(_Capture):
    def __init__(self, out: str) -> None:
        self.out = out
        self.history: dict[str, list[torch.Tensor]] = {name: [] for name in NAMES}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grad = self.weight.grad.clone().cpu().float()

    def on_optimizer_step(self, args, state, control, **kwargs):
        for name, value in self.tensors().items():
            self.history[name].append(value.detach().clone().cpu().float())
        self.history["loss"].append(torch.tensor(self.loss.item()))

    def on_train_end(self, args, state, control, **kwargs):
        from safetensors.torch import save_file

        save_file({name: torch.stack(values) for name, values in self.history.items()}, self.out)


class NaiveAppend(_Capture):
    def __init__(self, out: str) -> None:
        self.group = zarr.open_group(out, mode="w", zarr_format=3)
        self.arrays: dict[str, zarr.Array] = {}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grad = self.weight.grad.detach().clone()

    def on_optimizer_step(self, args, state, control, **kwargs):
        rows = {name: value.detach().cpu().float().numpy() for name, value in self.tensors().items()}
        rows["loss"] = np.float32(self.loss.item())
        for name, row in rows.items():
            if name not in self.arrays:
                self.arrays[name] = self.group.create_array(
                    name, shape=(0, *np.shape(row)), chunks=(NAIVE_CHUNK_STEPS, *np.shape(row)),
                    dtype="float32", compressors=contract.default_compressor())
            self.arrays[name].append(np.asarray(row)[None])
