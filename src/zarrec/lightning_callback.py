"""The PyTorch Lightning callback: a thin adapter from Lightning events to a training session.

Events, per optimizer step (``pip install lightning``):

- ``on_before_optimizer_step`` keeps the learning rate the step uses (Lightning steps its
  schedulers before the batch ends) and marks the batch as the one whose step runs;
- ``on_train_batch_end`` adds the batch's loss; after the stepping batch it hands the
  step to the :class:`~zarrec.session.TrainingSession`, labelled by ``trainer.global_step``.
  The gradients are still those the optimizer used: Lightning clips them after
  ``on_before_optimizer_step`` and zeroes them only during the next step.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from zarrec import contract, shutdown
from zarrec.errors import ConfigError, MissingDependencyError
from zarrec.recorder import Recorder
from zarrec.schedule import StepSchedule
from zarrec.selection import ParameterSelection
from zarrec.session import TrainingSession, selection_attributes
from zarrec.store import StoreLike
from zarrec.versions import library_versions

try:
    from lightning.pytorch import Callback
except ImportError as exc:  # an optional dependency
    raise MissingDependencyError("zarrec.lightning_callback needs Lightning: pip install 'lightning>=2.4'") from exc


class ZarrecLightningCallback(Callback):
    """Record parameters and their training state into a Zarr store from a Lightning ``Trainer``.

    ``Trainer(callbacks=[ZarrecLightningCallback("run.zarr")])`` records, per optimizer step,
    the selected parameters (default: the module's ``get_input_embeddings()``, as
    ``embeddings``), their gradients, the optimizer's state, the mean loss of the step's
    batches and the learning rate; step 0 is the initial state. Only global rank 0 writes.

    Args:
        out: path, fsspec URL or Zarr store to create.
        params, quantities, every: as for :class:`zarrec.ZarrecCallback`.
        attrs: extra run attributes; the module's ``hparams`` are stored as ``hparams``.
        recorder_options: passed to :class:`~zarrec.Recorder` (``chunk_steps``, ``overwrite``,
            ``flush_every``, ``on_error``).
    """

    def __init__(
        self,
        out: StoreLike,
        *,
        params: Sequence[str] | None = None,
        quantities: Sequence[str] | None = None,
        every: int | str | StepSchedule = 1,
        attrs: Mapping[str, Any] | None = None,
        **recorder_options: Any,
    ) -> None:
        self.out = out
        self.params = params
        self.quantities = quantities
        self.schedule = StepSchedule.parse(every)
        self.attrs = dict(attrs or {})
        self.recorder_options = recorder_options
        self.session: TrainingSession | None = None
        self._lr: float | None = None  # set when the batch's optimizer step runs
        self._loss_sum: torch.Tensor | None = None
        self._batches = 0

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return  # every other event returns at once while self.session is None
        if len(trainer.optimizers) != 1:
            raise ConfigError(f"{type(self).__name__} records a module with one optimizer; this one has {len(trainer.optimizers)}")
        selection = ParameterSelection(pl_module, trainer.optimizers[0], self.params, self.quantities)
        attrs = {
            **selection_attributes(selection, self.schedule),
            "framework": "lightning",
            "optimizer": type(selection.optimizer).__name__,
            "optimizer_defaults": json.loads(json.dumps(selection.optimizer.defaults, default=str)),
            "hparams": json.loads(json.dumps(dict(getattr(pl_module, "hparams", {})), default=str)),
            "max_steps": trainer.max_steps,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "gradient_clip_val": trainer.gradient_clip_val,
            "world_size": trainer.world_size,
            "versions": library_versions(),
            **self.attrs,
        }
        self.session = TrainingSession(Recorder(self.out, attrs=attrs, **self.recorder_options), selection, self.schedule)
        if trainer.global_step == 0:
            self.session.keep_initial_state()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.session is not None:
            self._lr = self.session.selection.group["lr"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.session is None:
            return
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._batches += 1
        if self._lr is None:
            return  # gradients are still accumulating
        step = trainer.global_step
        if self.session.wants(step):
            grads = {name: p.grad for name, p in self.session.selection.parameters.items()}  # copied when recorded
            loss = self._loss_sum / self._batches if self._loss_sum is not None else torch.tensor(float("nan"))
            self.session.after_step(step, grads, **{contract.LOSS: loss, contract.LR: self._lr})
        self._lr, self._loss_sum, self._batches = None, None, 0

    def on_train_end(self, trainer, pl_module) -> None:
        if self.session is not None:
            self.session.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.session is not None:
            self.session.close(shutdown.stop_reason(exception))
